"""The public surface of ps and worker is small and pinned."""

import ps
import worker


def test_ps_public_api():
    assert sorted(ps.__all__) == ["Mode", "ServerConfig", "ShardServer", "errors"]
    for name in ps.__all__:
        assert getattr(ps, name) is not None


def test_worker_public_api():
    assert sorted(worker.__all__) == ["Client", "PSError"]
    client = worker.Client(["127.0.0.1:1"])       # the constructor does no I/O
    for verb in ("connect", "close", "create", "pull", "push", "status", "__enter__", "__exit__"):
        assert callable(getattr(client, verb))


def test_errors_map_both_ways():
    import grpc

    from ps.errors import PSError, RemoteError, from_status, status_code_of

    for code in grpc.StatusCode:
        err = from_status(code, "x")
        assert isinstance(err, PSError)
        if not isinstance(err, RemoteError):
            assert status_code_of(err) == code
