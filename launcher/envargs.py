"""``argparse`` whose every flag can also come from a ``PS_<FLAG>`` environment variable.

``--num-workers`` reads ``PS_NUM_WORKERS`` when not given on the command line; the
command line wins. ``--help`` shows the variable beside each flag, so compose and
Kubernetes files can stay short and still be read against the docs.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_name(option: str) -> str:
    """``--num-workers`` -> ``PS_NUM_WORKERS``."""
    return "PS_" + option.lstrip("-").replace("-", "_").upper()


class EnvArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser reading defaults from ``environ`` (``os.environ`` by default)."""

    def __init__(self, *args, environ: Mapping[str, str] | None = None, **kwargs) -> None:
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        self._environ = os.environ if environ is None else environ
        self.env_vars: dict[str, str] = {}  # dest -> variable, for generated docs
        super().__init__(*args, **kwargs)

    def add_argument(self, *names, **kwargs):
        longs = [n for n in names if n.startswith("--")]
        if not longs or longs[0] == "--help":
            return super().add_argument(*names, **kwargs)
        var = env_name(longs[0])
        kwargs["help"] = f"{kwargs.get('help', '')} [env {var}]".strip()
        raw = self._environ.get(var)
        if raw is not None:
            if kwargs.get("action") == "store_true":
                value = raw.strip().lower()
                if value not in _TRUE | _FALSE:
                    self.error(f"{var}={raw!r} is not a boolean (use 1/0, true/false)")
                kwargs["default"] = value in _TRUE
            else:
                kwargs["default"] = raw  # argparse applies `type` to string defaults
                kwargs.pop("required", None)
        action = super().add_argument(*names, **kwargs)
        self.env_vars[action.dest] = var
        return action
