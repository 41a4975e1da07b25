"""The import graph of ps/, worker/ and launcher/: no cycles, and the worker never loads a server module.

Every module is read with ``ast`` (nothing is imported): top-level, function-level and
``TYPE_CHECKING`` imports all count. ``from pkg import name`` is an edge to ``pkg.name``
when that is a module, else to ``pkg``.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("ps", "worker", "launcher")
#: server modules: the worker may import only the wire format, table specs, placement and errors
SERVER = ("ps.serving", "ps.shard", "ps.checkpoint", "ps.metrics")


def modules() -> dict[str, Path]:
    """Dotted name -> file of every module in the packages (a package is its ``__init__``)."""
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports anywhere in its file."""
    is_package = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against this module's package
                anchor = name.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import a.b.c` of a name inside a module
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


@functools.cache
def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_every_kind_of_import():
    edges = graph()
    assert "worker.client.client" in edges["worker"]                      # from pkg.mod import name
    assert "worker.client.step_engine" in edges["worker.client.client"]
    assert edges["launcher.launch_cli"] >= {"worker.client.client", "worker.training.loop"}  # in a function


def test_cycle_finder_finds_a_cycle_through_a_type_checking_import(tmp_path):
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(edges) == [["a", "b", "c"]]
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ps import errors\n"
    (tmp_path / "m.py").write_text(source)
    assert imports("m", tmp_path / "m.py", {"ps": Path(), "ps.errors": Path()}) == {"ps.errors"}


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_the_worker_imports_no_server_module():
    bad = sorted((name, target) for name, targets in graph().items() if name.split(".")[0] == "worker"
                 for target in targets if target.startswith(SERVER))
    assert bad == []


def test_ps_never_imports_the_worker_or_the_launcher():
    bad = sorted((name, target) for name, targets in graph().items() if name.split(".")[0] == "ps"
                 for target in targets if target.split(".")[0] in ("worker", "launcher"))
    assert bad == []
