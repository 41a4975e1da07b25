"""Generate ``docs/configuration.md``: every flag of every command line and its variable.

The tables are read from the parsers themselves (``build_parser(environ={})`` of each
CLI, and ``EnvArgumentParser.env_vars``), so the document cannot drift from the code; a
test regenerates it and compares::

    python -m launcher.config_doc            # writes docs/configuration.md (from the repository root)
    python -m launcher.config_doc --check    # exit 1 when the file is out of date
    python -m launcher.config_doc -o -       # print it

Defaults are those of an empty environment.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

DEFAULT_OUTPUT = Path("docs") / "configuration.md"

#: (command, module) of every console script with flags, in the order of the document
COMMANDS: tuple[tuple[str, str], ...] = (
    ("ps-server", "launcher.server_cli"),
    ("ps-worker", "launcher.worker_cli"),
    ("ps-launch", "launcher.launch_cli"),
    ("ps-admin", "launcher.admin_cli"),
    ("ps-health", "launcher.health_cli"),
)

#: variables read directly (not flags), with who reads them and what they mean
EXTRA_VARIABLES: tuple[tuple[str, str, str], ...] = (
    ("PS_TOKEN", "ps-server, ps-worker, ps-admin",
     "the shared token, when `--token-file` is not given; never printed or logged"),
)

INTRO = """\
# Configuration

Every flag of every command line can also be set by an environment variable: `--num-workers`
is `PS_NUM_WORKERS`, the flag's name upper-cased with dashes as underscores and a `PS_`
prefix. A flag given on the command line wins over its variable, which wins over the
default. Switches (flags without a value) take `1`/`0`, `true`/`false`, `yes`/`no` or
`on`/`off` from their variable. A flag with two names reads the variable of the first:
`ps-launch --num-servers` (also `--servers`), a count, reads `PS_NUM_SERVERS`, while
`PS_SERVERS` is the address list of `ps-worker` and `ps-admin`. An error in a value says
which variable it came from (`(from PS_MODE='fast')`); usage errors exit with status 2.
`docker-compose.yml` and `deploy/kubernetes/` set most of their configuration this way.

This file is generated from the parsers by `python -m launcher.config_doc`; do not edit it
by hand (a test regenerates it and fails when it differs).
"""


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", r"\|")


def _default(action: argparse.Action) -> str:
    if isinstance(action, argparse._StoreTrueAction):
        return "`false`"
    if action.default is None or action.default == argparse.SUPPRESS:
        return "none"
    if action.default == "":
        return '`""`'
    return f"`{action.default}`"


def _help(action: argparse.Action, variable: str | None) -> str:
    text = (action.help or "").replace("%%", "%")
    if variable:
        text = text.replace(f"[env {variable}]", "")
    if action.choices and not isinstance(action, argparse._SubParsersAction):
        text += f" (one of: {', '.join(str(c) for c in action.choices)})"
    return _cell(text)


def _flag(action: argparse.Action) -> str:
    name = max(action.option_strings, key=len) if action.option_strings else action.metavar or action.dest
    if action.option_strings and action.nargs != 0:
        name += f" {action.metavar or action.dest.upper()}"
    aliases = [o for o in action.option_strings if o.startswith("--") and o != name.split()[0]]
    return f"`{name}`" + "".join(f" (also `{a}`)" for a in aliases)


def _parsers(command: str, parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """``(heading, parser)``: the parser or, for commands with subcommands, each subcommand's
    (aliases named in its heading)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield f"`{command}`", parser
        return
    seen: dict[int, list[str]] = {}
    parsers: dict[int, argparse.ArgumentParser] = {}
    for name, sub in subs[0].choices.items():
        seen.setdefault(id(sub), []).append(name)
        parsers[id(sub)] = sub
    for key, names in seen.items():
        aliases = f" (also `{'`, `'.join(names[1:])}`)" if names[1:] else ""
        yield f"`{command} {names[0]}`{aliases}", parsers[key]


def _table(parser: argparse.ArgumentParser) -> list[str]:
    env_vars: dict[str, str] = getattr(parser, "env_vars", {})
    lines = ["| flag | variable | default | meaning |", "|---|---|---|---|"]
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        variable = env_vars.get(action.dest) if action.option_strings else None
        lines.append(f"| {_flag(action)} | {f'`{variable}`' if variable else '(argument)'} | {_default(action)} | "
                     f"{_help(action, variable)} |")
    return lines


def render(builders: dict[str, Callable[..., argparse.ArgumentParser]] | None = None) -> str:
    """The whole document. ``builders`` maps a command to its ``build_parser`` (default: COMMANDS)."""
    if builders is None:
        import importlib

        builders = {cmd: importlib.import_module(module).build_parser for cmd, module in COMMANDS}
    out = [INTRO]
    for command, build in builders.items():
        parser = build(environ={})
        for title, sub in _parsers(command, parser):
            out.append(f"## {title}\n")
            if sub.description:
                out.append(_cell(sub.description) + "\n")
            out += _table(sub)
            out.append("")
    out.append("## Other variables\n")
    out += ["| variable | read by | meaning |", "|---|---|---|"]
    out += [f"| `{name}` | {who} | {_cell(meaning)} |" for name, who, meaning in EXTRA_VARIABLES]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m launcher.config_doc", description=__doc__.splitlines()[0])
    p.add_argument("-o", "--output", default=str(DEFAULT_OUTPUT), help="file to write, '-' for stdout")
    p.add_argument("--check", action="store_true", help="exit 1 if the file differs from what would be written")
    args = p.parse_args(argv)
    text = render()
    if args.output == "-":
        sys.stdout.write(text)
        return 0
    path = Path(args.output)
    if args.check:
        current = path.read_text(encoding="utf-8") if path.exists() else ""
        if current != text:
            print(f"{path} is out of date: run python -m launcher.config_doc", file=sys.stderr)
            return 1
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
