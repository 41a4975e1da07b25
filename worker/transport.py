"""gRPC transport to the shards: channels, method stubs, retries, and the error mapping.

Everything that touches ``grpc`` on the worker side lives here; :func:`rpc_errors` is the
one place where a ``grpc.RpcError`` becomes a project exception (:mod:`ps.errors`).
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc

from ps._proto import ps_pb2
from ps.errors import PSError, TransientError, UnavailableError, from_status
from ps.server import channel_options
from ps.service import SERVICE_NAME
from ps.wire import decode_framed

log = logging.getLogger(__name__)


@contextlib.contextmanager
def rpc_errors(address: str) -> Iterator[None]:
    """Re-raise any ``grpc.RpcError`` inside the block as the matching :class:`PSError`."""
    try:
        yield
    except grpc.RpcError as exc:
        code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
        details = exc.details() if hasattr(exc, "details") else str(exc)
        raise from_status(code, f"{address}: {details}") from exc


def _decode_pull_reply(data: bytes):
    return decode_framed(data, ps_pb2.PullReplyHeader)


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff with jitter for transient failures (UNAVAILABLE, DEADLINE_EXCEEDED)."""

    attempts: int = 6             # tries in all, the first included
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 2.0
    multiplier: float = 2.0

    def backoffs(self) -> Iterator[float]:
        delay = self.initial_backoff_s
        for _ in range(self.attempts - 1):
            yield delay * random.uniform(0.5, 1.0)
            delay = min(self.max_backoff_s, delay * self.multiplier)


class ShardChannel:
    """One channel to one shard and its method callables. Thread-safe; no I/O until used."""

    def __init__(self, address: str, max_message_bytes: int) -> None:
        self.address = address
        self._channel = grpc.insecure_channel(
            address,
            options=channel_options(max_message_bytes)
            + [
                # a restarted shard is found again quickly, not after the 20 s default backoff
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 2000),
            ],
        )
        unary = self._channel.unary_unary
        p = f"/{SERVICE_NAME}/"
        self.register = unary(p + "Register", ps_pb2.RegisterRequest.SerializeToString, ps_pb2.RegisterReply.FromString)
        self.leave = unary(p + "Leave", ps_pb2.LeaveRequest.SerializeToString, ps_pb2.LeaveReply.FromString)
        self.create_table = unary(
            p + "CreateTable", ps_pb2.CreateTableRequest.SerializeToString, ps_pb2.CreateTableReply.FromString
        )
        self.push = unary(p + "Push", None, ps_pb2.PushReply.FromString)  # request already bytes
        self.pull = unary(p + "Pull", ps_pb2.PullRequest.SerializeToString, _decode_pull_reply)
        self.status = unary(p + "Status", ps_pb2.StatusRequest.SerializeToString, ps_pb2.StatusReply.FromString)

    def wait_ready(self, timeout_s: float) -> None:
        """Block until the channel connects. Raises UnavailableError after ``timeout_s``."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout_s)
        except grpc.FutureTimeoutError:
            raise UnavailableError(f"{self.address}: no server answered within {timeout_s:g} s") from None

    def close(self) -> None:
        self._channel.close()


def call(channel: ShardChannel, method: Callable, request: Any, timeout_s: float,
         retry: RetryPolicy | None = None) -> Any:
    """Call ``method(request)`` with a deadline; retry transient failures per ``retry``.

    Blocks. Raises the project exception for the final status.
    """
    backoffs = retry.backoffs() if retry else iter(())
    while True:
        try:
            with rpc_errors(channel.address):
                return method(request, timeout=timeout_s)
        except TransientError as exc:
            delay = next(backoffs, None)
            if delay is None:
                raise
            log.debug("retrying after %s (in %.2f s)", exc, delay)
            time.sleep(delay)


def fan_out(calls: list[tuple[ShardChannel, Callable, Any]], timeout_s: float,
            retry: RetryPolicy | None = None) -> list[Any]:
    """Issue all calls concurrently; return their replies in order.

    Calls that fail transiently are retried (one at a time, with backoff). Blocks until
    every call answered. Raises the first non-transient (or finally failed) error.
    """
    pending = [method.future(request, timeout=timeout_s) for _, method, request in calls]
    results: list[Any] = []
    first_error: PSError | None = None
    for (channel, method, request), future in zip(calls, pending):
        try:
            with rpc_errors(channel.address):
                results.append(future.result())
                continue
        except TransientError:
            pass
        except PSError as exc:
            first_error = first_error or exc
            results.append(None)
            continue
        try:
            results.append(call(channel, method, request, timeout_s, retry))
        except PSError as exc:
            first_error = first_error or exc
            results.append(None)
    if first_error is not None:
        raise first_error
    return results
