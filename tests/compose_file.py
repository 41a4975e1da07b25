"""Read ``docker-compose.yml`` the way ``docker compose`` does, for tests without Docker.

:func:`load` parses the file with PyYAML (anchors and ``<<`` merges included), reads each
service's ``env_file``, and substitutes ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``
and ``$$`` from the given environment, as compose does before anything runs.
:func:`console_scripts` maps the project's console scripts to their modules, so a
service's ``command`` can run as ``python -m MODULE ARGS`` on this machine.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
IMAGE = "grpc-ps:latest"

_VAR = re.compile(r"\$(?:\$|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?-)(?P<default>[^}]*))?\}"
                  r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """``value`` with compose's variable substitution applied (recursively in lists and dicts)."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group("braced") or m.group("bare")
        op, default = m.group("op"), m.group("default")
        if op == ":-":
            return env.get(name) or default
        if op == "-":
            return env.get(name, default)
        return env.get(name, "")

    return _VAR.sub(sub, value)


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines; blank lines and ``#`` comments skipped."""
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def load(env: dict[str, str] | None = None, path: Path = COMPOSE) -> dict[str, Any]:
    """The compose file, substituted from ``env`` (default: empty, so every default applies)."""
    import yaml

    env = env or {}
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data = {k: v for k, v in data.items() if not str(k).startswith("x-")}
    return interpolate(data, env)


def service_env(service: dict[str, Any], root: Path = ROOT) -> dict[str, str]:
    """The environment a service's container gets: its env files, then ``environment``."""
    env: dict[str, str] = {}
    files = service.get("env_file") or []
    for name in [files] if isinstance(files, str) else files:
        env.update(read_env_file(root / name))
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    env.update({k: "" if v is None else str(v) for k, v in environment.items()})
    return env


def replicas(service: dict[str, Any]) -> int:
    return int(((service.get("deploy") or {}).get("replicas")) or 1)


def console_scripts() -> dict[str, str]:
    """``{"ps-server": "launcher.server_cli", ...}`` from pyproject.toml."""
    try:
        import tomllib  # Python >= 3.11
    except ImportError:  # 3.10: the [project.scripts] table is simple enough to read by hand
        text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
        table = text.split("[project.scripts]", 1)[1].split("\n[", 1)[0]
        scripts = dict(re.findall(r'^\s*([\w.-]+)\s*=\s*"([^"]+)"', table, re.M))
    else:
        with open(ROOT / "pyproject.toml", "rb") as f:
            scripts = tomllib.load(f)["project"]["scripts"]
    return {name: target.split(":")[0] for name, target in scripts.items()}


def our_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run this project's image."""
    return {name: s for name, s in compose["services"].items() if s.get("image") == IMAGE}
