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
from ps.protocol.auth import BearerToken
from ps.errors import (
    FailedPreconditionError,
    NotFoundError,
    PSError,
    TransientError,
    UnavailableError,
    from_status,
)
from ps.protocol.rows_wire import decode_rows
from ps.protocol.channel import channel_options
from ps.protocol.channel import SERVICE_NAME
from ps.protocol.wire import decode_framed

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


def lost_registration(error: PSError) -> bool:
    """Does ``error`` say the shard lost this worker or a table? That happens after the
    shard restarted (without a checkpoint, or from one older than the table) or when the
    worker's lease ran out; registering again under the same id, which also re-creates
    the tables this client knows, and resending the same request recovers."""
    text = str(error)
    if isinstance(error, NotFoundError):
        return "unknown table" in text
    return isinstance(error, FailedPreconditionError) and ("is not registered" in text or "register again" in text)


def _decode_pull_reply(data: bytes):
    return decode_framed(data, ps_pb2.PullReplyHeader)


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff with jitter for transient failures (UNAVAILABLE, DEADLINE_EXCEEDED).

    The defaults ride out a shard restart of several seconds (about 5-9 s of backoff in
    all); retries also stop once ``max_elapsed_s`` passed since the first try (0: no cap).
    A retried push carries the same sequence number, so it is never applied twice.
    """

    attempts: int = 10            # tries in all, the first included
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 2.0
    multiplier: float = 2.0
    max_elapsed_s: float = 120.0

    def backoffs(self) -> Iterator[float]:
        delay = self.initial_backoff_s
        for _ in range(self.attempts - 1):
            yield delay * random.uniform(0.5, 1.0)
            delay = min(self.max_backoff_s, delay * self.multiplier)


class ShardChannel:
    """One channel to one shard and its method callables. Thread-safe; no I/O until used.

    ``credentials`` (``ps.protocol.tls.channel_credentials``) make it a TLS channel, whose server
    certificate must name the address's host (or ``server_name``); ``token`` is sent as
    ``authorization: Bearer <token>`` with every call (``ps.protocol.auth``).
    """

    def __init__(self, address: str, max_message_bytes: int, *, credentials: grpc.ChannelCredentials | None = None,
                 token: str | None = None, server_name: str | None = None) -> None:
        self.address = address
        options = channel_options(max_message_bytes) + [
            # a restarted shard is found again quickly, not after the 20 s default backoff
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ]
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        if credentials is not None:
            self._channel = grpc.secure_channel(address, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(address, options=options)
        if token:
            self._channel = grpc.intercept_channel(self._channel, BearerToken(token))
        #: re-registers this worker with the shard; set by the Client, used by call/fan_out
        self.rejoin: Callable[[], None] | None = None
        unary = self._channel.unary_unary
        p = f"/{SERVICE_NAME}/"
        self.register = unary(p + "Register", ps_pb2.RegisterRequest.SerializeToString, ps_pb2.RegisterReply.FromString)
        self.leave = unary(p + "Leave", ps_pb2.LeaveRequest.SerializeToString, ps_pb2.LeaveReply.FromString)
        self.create_table = unary(
            p + "CreateTable", ps_pb2.CreateTableRequest.SerializeToString, ps_pb2.CreateTableReply.FromString
        )
        self.push = unary(p + "Push", None, ps_pb2.PushReply.FromString)  # request already bytes
        self.pull = unary(p + "Pull", ps_pb2.PullRequest.SerializeToString, _decode_pull_reply)
        self.push_pull = unary(p + "PushPull", None, _decode_pull_reply)  # request already bytes
        self.status = unary(p + "Status", ps_pb2.StatusRequest.SerializeToString, ps_pb2.StatusReply.FromString)
        # sparse rows (ps.protocol.rows_wire): requests are already bytes; pull replies decode to (header, payload)
        self.push_rows = unary(p + "PushRows", None, ps_pb2.PushReply.FromString)
        self.pull_rows = unary(p + "PullRows", None, decode_rows)
        # leases, checkpoints and graceful stop (ps.serving.control)
        self.heartbeat = unary(p + "Heartbeat", ps_pb2.HeartbeatRequest.SerializeToString,
                               ps_pb2.HeartbeatReply.FromString)
        self.checkpoint = unary(p + "Checkpoint", ps_pb2.CheckpointRequest.SerializeToString,
                                ps_pb2.CheckpointReply.FromString)
        self.shutdown = unary(p + "Shutdown", ps_pb2.ShutdownRequest.SerializeToString, ps_pb2.ShutdownReply.FromString)
        self.restore = unary(p + "Restore", ps_pb2.RestoreRequest.SerializeToString, ps_pb2.RestoreReply.FromString)

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
    give_up = time.monotonic() + retry.max_elapsed_s if retry and retry.max_elapsed_s else float("inf")
    rejoins = 0
    while True:
        try:
            with rpc_errors(channel.address):
                return method(request, timeout=timeout_s)
        except TransientError as exc:
            delay = next(backoffs, None)
            if delay is None or time.monotonic() + delay > give_up:
                raise
            log.debug("retrying after %s (in %.2f s)", exc, delay)
            time.sleep(delay)
        except PSError as exc:
            # the shard forgot this worker (restarted, or its lease ran out): register
            # again under the same id, then send the same request (same sequence number)
            if rejoins >= 2 or channel.rejoin is None or not lost_registration(exc):
                raise
            rejoins += 1
            channel.rejoin()


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
            if not (channel.rejoin is not None and lost_registration(exc)):
                first_error = first_error or exc
                results.append(None)
                continue
            try:
                channel.rejoin()  # then retried below like a transient failure
            except PSError as rejoin_error:
                first_error = first_error or rejoin_error
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
