"""The worker side: the :class:`Client` that user code trains through.

Public API (pinned by tests/unit/test_public_api.py)::

    from worker import Client
    with Client(["127.0.0.1:50051", "127.0.0.1:50052"]) as ps:
        ps.create("w", shape=(64, 10), init="zeros", optimizer="sgd", lr=0.1)
        params = ps.pull(["w"])
        ps.push({"w": grad})
"""

from ps.errors import PSError
from worker.client.client import Client

__all__ = ["Client", "PSError"]
