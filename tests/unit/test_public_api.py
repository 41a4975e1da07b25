"""The public surface of ps and worker is small and pinned: names, verbs, their parameters,
and every name the README and the examples import."""

import ast
import importlib
import inspect
from pathlib import Path

import ps
import worker

ROOT = Path(__file__).resolve().parents[2]

#: every verb of Client and its parameters, in order (keyword-only ones after "*")
CLIENT_VERBS = {
    "__init__": "servers * worker_id timeout_s wait_timeout_s connect_timeout_s part_bytes max_message_bytes retry "
                "observer local local_part_bytes stream cache_pulls token tls_ca tls_cert tls_key tls_server_name "
                "heartbeat_s num_workers",
    "connect": "", "close": "", "__enter__": "", "__exit__": "*exc",
    "create": "name shape * dtype init init_scale seed optimizer lr block_elems **optimizer_options",
    "spec": "name",
    "pull": "names out",
    "push": "grads rows",
    "push_pull": "grads names out",
    "buffers": "names",
    "checkpoint": "tag",
    "status": "",
    "data_planes": "",
    "create_sparse": "name dim * dtype init init_scale seed optimizer lr max_rows eviction admit_after "
                     "num_rows **optimizer_options",
    "pull_rows": "name ids",
    "push_rows": "name ids grads",
    "leave_now": "timeout_s",
}
CLIENT_PROPERTIES = {"worker_id", "mode", "clock", "stats", "session"}
CLIENT_ATTRIBUTES = ("addresses", "timeout_s", "wait_timeout_s", "part_bytes", "observer", "local", "stream", "token")


def signature_of(function) -> str:
    """The parameter names after ``self``, e.g. ``"name shape * dtype **options"``."""
    out, starred = [], False
    for p in list(inspect.signature(function).parameters.values())[1:]:
        if p.kind is p.KEYWORD_ONLY and not starred:
            out.append("*")
        starred = starred or p.kind in (p.KEYWORD_ONLY, p.VAR_POSITIONAL)
        out.append({p.VAR_POSITIONAL: "*", p.VAR_KEYWORD: "**"}.get(p.kind, "") + p.name)
    return " ".join(out)


def test_ps_public_api():
    assert sorted(ps.__all__) == ["Mode", "ServerConfig", "ShardServer", "errors"]
    for name in ps.__all__:
        assert getattr(ps, name) is not None


def test_worker_public_api():
    assert sorted(worker.__all__) == ["Client", "PSError"]
    client = worker.Client(["127.0.0.1:1"])       # the constructor does no I/O
    public = {n for n in dir(worker.Client) if not n.startswith("_")}
    assert public == {v for v in CLIENT_VERBS if not v.startswith("_")} | CLIENT_PROPERTIES
    for verb, params in CLIENT_VERBS.items():
        assert signature_of(getattr(worker.Client, verb)) == params, verb
    for name in (*CLIENT_PROPERTIES, *CLIENT_ATTRIBUTES):
        assert hasattr(client, name), name
    assert (client.worker_id, client.clock, client.mode) == (-1, 0, "")


def imported_names(source: str) -> set[tuple[str, str]]:
    """``(module, name)`` for every ``from module import name`` in Python ``source``."""
    return {(node.module, alias.name) for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("ps", "worker")
            for alias in node.names}


def test_every_name_the_readme_and_the_examples_import_exists():
    blocks = (ROOT / "README.md").read_text().split("```")
    sources = [b.removeprefix("python\n") for b in blocks[1::2] if b.startswith("python\n")]
    sources += [p.read_text() for p in sorted((ROOT / "examples").glob("*.py"))]
    names = set().union(*(imported_names(s) for s in sources))
    assert ("worker", "Client") in names and ("worker.training.loop", "train") in names
    for module, name in sorted(names):
        assert hasattr(importlib.import_module(module), name), f"from {module} import {name}"


def test_errors_map_both_ways():
    import grpc

    from ps.errors import PSError, RemoteError, from_status, status_code_of

    for code in grpc.StatusCode:
        err = from_status(code, "x")
        assert isinstance(err, PSError)
        if not isinstance(err, RemoteError):
            assert status_code_of(err) == code
