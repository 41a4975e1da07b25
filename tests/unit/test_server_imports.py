"""The server's modules import each other without cycles, and a worker loads none of them."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
SERVER_ONLY = ("ps.serving", "ps.shard", "ps.checkpoint", "ps.metrics", "ps.config")


def _graph() -> dict[str, set[str]]:
    """Module -> the ps modules it imports, TYPE_CHECKING imports included (every import node)."""
    modules = {}
    for path in (ROOT / "ps").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if "_proto" not in parts:
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                deps.update([node.module, *(f"{node.module}.{a.name}" for a in node.names)])
        graph[name] = {d for d in deps if d in modules and d != name and not name.startswith(d + ".")}
    return graph


def test_no_import_cycle_in_ps():
    graph, done, path = _graph(), set(), []

    def visit(name: str) -> None:
        assert name not in path, " -> ".join([*path[path.index(name):], name])
        if name in done:
            return
        path.append(name)
        for dep in sorted(graph[name]):
            visit(dep)
        path.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)


def test_the_client_loads_no_server_module():
    code = "import sys; from worker import Client; print(' '.join(sorted(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT,
                            check=True).stdout.split()
    assert [m for m in loaded if m.startswith(SERVER_ONLY)] == []


def test_the_consistency_gate_loads_no_grpc():
    """The consistency logic is a pure object (issue 11): importing it, with the errors it
    raises, loads no gRPC module (``ps.errors`` names status codes as strings)."""
    code = "import sys; import ps.shard.consistency, ps.errors; print(' '.join(sorted(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT,
                            check=True).stdout.split()
    assert "ps.shard.consistency" in loaded
    assert [m for m in loaded if m.split(".")[0] in ("grpc", "grpc_tools", "grpc_health", "grpc_reflection")] == []
