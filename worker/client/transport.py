"""gRPC transport to the shards: channels, method stubs, retries, and the error mapping.

Everything that touches ``grpc`` on the worker side lives here. :func:`status_error` is the
one place where a failed call's status becomes a project exception (:mod:`ps.errors`),
whether it came as a ``grpc.RpcError`` (:func:`rpc_errors`, the reason read from the
trailing metadata ``ps-reason``) or as a data plane's error frame (the reason's number in
the frame, :mod:`worker.planes.frame_connection`).
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
from ps.errors import (
    REASON_METADATA_KEY,
    PSError,
    Reason,
    TransientError,
    UnavailableError,
    from_status,
    from_status_number,
)
from ps.protocol.auth import BearerToken
from ps.protocol.rows_wire import decode_rows
from ps.protocol.channel import SERVICE_NAME, channel_options
from ps.protocol.wire import decode_framed

log = logging.getLogger(__name__)

#: reasons after which registering again under the same id and resending recovers
REJOIN_REASONS = frozenset({Reason.NOT_REGISTERED, Reason.UNKNOWN_TABLE})


def status_error(code: grpc.StatusCode | int, details: str, reason: Reason | str | int | None) -> PSError:
    """The project exception for a failed call's status ``code`` (or its number, from a data
    plane's frame), ``details`` and :class:`~ps.errors.Reason`. Pure; thread-safe."""
    return (from_status_number if isinstance(code, int) else from_status)(code, details, reason)


@contextlib.contextmanager
def rpc_errors(address: str) -> Iterator[None]:
    """Re-raise any ``grpc.RpcError`` inside the block as the matching :class:`PSError`.

    CANCELLED becomes UnavailableError: the client never cancels its calls, so the server
    cancelled it (a call that raced the server's stop), and it is retried like a dead server's."""
    try:
        yield
    except grpc.RpcError as exc:
        code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
        details = exc.details() if hasattr(exc, "details") else str(exc)
        trailing = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
        reason = next((v for k, v in trailing or () if k == REASON_METADATA_KEY), None)
        if code == grpc.StatusCode.CANCELLED:  # this client never cancels a call: the server did, as it stopped
            code, details = grpc.StatusCode.UNAVAILABLE, f"call cancelled by the server (stopping): {details}"
        raise status_error(code, f"{address}: {details}", reason) from exc


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
        self.list_rows = unary(p + "ListRows", ps_pb2.ListRowsRequest.SerializeToString, decode_rows)
        # leases, checkpoints and graceful stop (ps.serving.control)
        self.heartbeat = unary(p + "Heartbeat", ps_pb2.HeartbeatRequest.SerializeToString,
                               ps_pb2.HeartbeatReply.FromString)
        self.checkpoint = unary(p + "Checkpoint", ps_pb2.CheckpointRequest.SerializeToString,
                                ps_pb2.CheckpointReply.FromString)
        self.shutdown = unary(p + "Shutdown", ps_pb2.ShutdownRequest.SerializeToString, ps_pb2.ShutdownReply.FromString)
        self.restore = unary(p + "Restore", ps_pb2.RestoreRequest.SerializeToString, ps_pb2.RestoreReply.FromString)
        self.move = unary(p + "Move", ps_pb2.MoveRequest.SerializeToString, ps_pb2.MoveReply.FromString)

    def wait_ready(self, timeout_s: float) -> None:
        """Block until the channel connects. Raises UnavailableError after ``timeout_s``."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout_s)
        except grpc.FutureTimeoutError:
            raise UnavailableError(f"{self.address}: no server answered within {timeout_s:g} s") from None

    def close(self) -> None:
        self._channel.close()


class PendingCall:
    """One call of ``method(request)``: started now as a future (:meth:`start`), or made as a
    blocking call when its result is first asked for (cheaper in gRPC Python, so a lone
    call should not be started). Not thread-safe."""

    __slots__ = ("channel", "method", "request", "timeout_s", "retry", "future", "deadline")

    def __init__(self, channel: ShardChannel, method: Callable, request: Any, timeout_s: float,
                 retry: RetryPolicy | None = None, deadline: float | None = None) -> None:
        self.channel, self.method, self.request = channel, method, request
        self.timeout_s, self.retry = timeout_s, retry
        #: ``time.monotonic()`` past which no attempt is made and none waits (None: only ``timeout_s``)
        self.deadline = deadline
        self.future = None

    def _attempt_timeout(self) -> float:
        """Seconds the next attempt may take: ``timeout_s``, cut to what is left of ``deadline``."""
        if self.deadline is None:
            return self.timeout_s
        return max(0.0, min(self.timeout_s, self.deadline - time.monotonic()))

    def start(self) -> PendingCall:
        """Send the request now (does not block). Idempotent."""
        if self.future is None:
            self.future = self.method.future(self.request, timeout=self._attempt_timeout())
        return self

    def result(self) -> Any:
        """The reply. Transient failures are retried per ``retry`` (capped exponential
        backoff, the same request: the same sequence number); a shard that forgot this
        worker (restarted, or its lease ran out) is registered with again under the same id
        through ``channel.rejoin``, then sent the same request.

        With a ``deadline``, every attempt and every backoff fits before it: the whole call
        (retries included) ends by then. A shard's own wait on other workers that ran out
        (:attr:`~ps.errors.Reason.WAIT_EXPIRED`, naming them) is raised at once, not
        retried. Blocks. Raises PSError."""
        retry = self.retry
        backoffs = retry.backoffs() if retry else iter(())
        give_up = time.monotonic() + retry.max_elapsed_s if retry and retry.max_elapsed_s else float("inf")
        if self.deadline is not None:
            give_up = min(give_up, self.deadline)
        rejoins = 0
        while True:
            future, self.future = self.future, None
            try:
                with rpc_errors(self.channel.address):
                    return future.result() if future is not None else self.method(
                        self.request, timeout=self._attempt_timeout())
            except TransientError as exc:
                delay = next(backoffs, None)
                if exc.reason is Reason.WAIT_EXPIRED or delay is None or time.monotonic() + delay >= give_up:
                    raise
                log.debug("retrying after %s (in %.2f s)", exc, delay)
                time.sleep(delay)
            except PSError as exc:
                if rejoins >= 2 or self.channel.rejoin is None or exc.reason not in REJOIN_REASONS:
                    raise
                rejoins += 1
                self.channel.rejoin()


def call(channel: ShardChannel, method: Callable, request: Any, timeout_s: float,
         retry: RetryPolicy | None = None) -> Any:
    """Call ``method(request)`` with a deadline, retried like :meth:`PendingCall.result`.

    Blocks. Raises the project exception for the final status.
    """
    return PendingCall(channel, method, request, timeout_s, retry).result()


def fan_out(calls: list[tuple[ShardChannel, Callable, Any]], timeout_s: float,
            retry: RetryPolicy | None = None) -> list[Any]:
    """Issue all calls concurrently; return their replies in order.

    Calls that fail transiently are retried (one at a time, with backoff). Blocks until
    every call answered. Raises the first non-transient (or finally failed) error.
    """
    pending = [PendingCall(channel, method, request, timeout_s, retry).start() for channel, method, request in calls]
    results: list[Any] = []
    first_error: PSError | None = None
    for p in pending:
        try:
            results.append(p.result())
        except PSError as exc:
            first_error = first_error or exc
            results.append(None)
    if first_error is not None:
        raise first_error
    return results
