"""gRPC status codes by name and by number: where :mod:`ps.errors`' status names meet gRPC.

:mod:`ps.errors` names each error's status as a plain string (``"INVALID_ARGUMENT"``) so that
the server's logic (the consistency gate, the shard) never loads gRPC; the servicers, the data
planes and the client turn those names into ``grpc.StatusCode`` values (and numbers, the data
planes' frames) here. Pure functions; thread-safe.
"""

from __future__ import annotations

import grpc

_BY_NUMBER = {c.value[0]: c for c in grpc.StatusCode}


def code_of(name: str) -> grpc.StatusCode:
    """The ``grpc.StatusCode`` called ``name`` (``"UNAVAILABLE"``); UNKNOWN for any other name."""
    return grpc.StatusCode.__members__.get(name, grpc.StatusCode.UNKNOWN)


def name_of_number(number: int) -> str:
    """The name of the status code sent as ``number`` (a data plane's frame); ``"UNKNOWN"``
    for a number gRPC does not define."""
    return _BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN).name
