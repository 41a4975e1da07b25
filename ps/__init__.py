"""The parameter-server side: shards that hold blocks of tables and apply updates.

Public API (pinned by tests/unit/test_public_api.py)::

    from ps import ShardServer, ServerConfig, Mode
    with ShardServer(ServerConfig(port=0, mode=Mode.SYNC, num_workers=2)) as server:
        print(server.address)
        server.wait()

Errors are in :mod:`ps.errors`; the wire protocol is ``protos/ps.proto``. The names
above are imported on first use, so that a worker importing the shared parts (``ps.errors``,
``ps.protocol``, ``ps.tables``) does not load the server's modules.
"""

from __future__ import annotations

import importlib

from ps import errors

__all__ = ["Mode", "ServerConfig", "ShardServer", "errors"]
_LAZY = {"Mode": "ps.shard.consistency", "ServerConfig": "ps.config", "ShardServer": "ps.serving.server"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ps' has no attribute {name!r}")
