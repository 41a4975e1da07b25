"""``argparse`` whose every flag can also come from a ``PS_<FLAG>`` environment variable.

``--num-workers`` reads ``PS_NUM_WORKERS`` when not given on the command line; the
command line wins. A flag with several names reads the variable of its first name
(``ps-launch --num-servers``/``--servers``: ``PS_NUM_SERVERS``). ``--help`` shows the
variable beside each flag, so compose and Kubernetes files can stay short and still be
read against the docs.

Every flag error names the variable a value came from: a value the environment gave
that does not convert or is not one of the choices says ``(from PS_MODE='fast')``, and
:meth:`EnvArgumentParser.error` (also what the commands call for a bad combination
found after parsing) adds ``(from the environment: PS_PORT='70000')`` for the
variables it used whose flags the message names. Usage errors exit 2.
"""

from __future__ import annotations

import argparse
import os
import re
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
        self._from_env: dict[str, tuple[str, str]] = {}  # dest -> (variable, value) the environment set
        self._env_used: dict[str, tuple[str, str]] = {}  # ... those the last parse kept (not overridden)
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
        if raw is not None:
            self._from_env[action.dest] = (var, raw)
        return action

    def parse_known_args(self, args=None, namespace=None):
        self._env_used = {}
        namespace, extras = super().parse_known_args(args, namespace)
        for action in self._actions:  # switches: kept when the command line did not flip them
            source = self._from_env.get(action.dest)
            if source and isinstance(action, argparse._StoreTrueAction) and \
                    getattr(namespace, action.dest, None) == (source[1].strip().lower() in _TRUE):
                self._env_used[action.dest] = source
        return namespace, extras

    def _get_value(self, action, arg_string):
        """argparse's conversion; for the value a variable gave (the default object itself,
        which argparse converts only when the command line did not give the flag), errors
        name the variable, and choices are checked (argparse skips them for defaults)."""
        source = self._from_env.get(action.dest)
        if source is None or arg_string is not source[1]:
            return super()._get_value(action, arg_string)
        var, raw = source
        try:
            value = super()._get_value(action, arg_string)
        except argparse.ArgumentError as exc:
            raise argparse.ArgumentError(action, f"{exc.message} (from {var}={raw!r})") from None
        if action.choices is not None and value not in action.choices:
            choices = ", ".join(map(repr, action.choices))
            raise argparse.ArgumentError(action, f"invalid choice: {raw!r} (choose from {choices}) "
                                                 f"(from {var}={raw!r})")
        self._env_used[action.dest] = source
        return value

    def error(self, message: str):
        """Print the usage and ``PROG: error: MESSAGE`` and exit 2; the message gains the
        variables this parse took values from whose flags it names."""
        notes = [f"{var}={raw!r}" for dest, (var, raw) in self._env_used.items()
                 if var not in message and self._names_flag(dest, message)]
        if notes:
            message = f"{message} (from the environment: {', '.join(notes)})"
        super().error(message)

    def _names_flag(self, dest: str, message: str) -> bool:
        for action in self._actions:
            if action.dest == dest:
                for option in action.option_strings:
                    name = re.escape(option.lstrip("-"))
                    if re.search(rf"(?<![\w-])(?:--)?{name}(?![\w-])", message):
                        return True
        return False
