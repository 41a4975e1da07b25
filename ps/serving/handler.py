"""``ShardHandler``: the data calls of one shard, whatever plane carries their bytes.

Every plane (the gRPC service :mod:`ps.serving.service`, the shared-memory plane
:mod:`ps.serving.local_plane`, the TCP plane :mod:`ps.serving.stream_plane`) only moves bytes
and frames and hands each Push, Pull, PushPull, PushRows and PullRows here, where every
concern of a data call lives once:

- the whole request is validated before anything is applied (a PushPull whose pull names
  an unknown table applies nothing);
- the deadline trim (:func:`budget`); exactly-once and fencing (by the
  :class:`~ps.shard.shard.Shard`); the data planes' auth decision (:meth:`ShardHandler.hello`,
  with the comparison gRPC's :class:`~ps.protocol.auth.TokenAuth` uses);
- request metrics: ``metrics.observe_request(service, method, code, seconds)`` once per
  call on every plane (the gRPC interceptor counts only the other calls);
- injected lost replies (``--faults drop_push_reply_every=N``, :attr:`Failure.lost`);
- the mapping from errors to a status and a :class:`~ps.errors.Reason` (:func:`failure_of`).

Where tensors lie and where pulled blocks go is the plane's :class:`Payload`.
Thread-safe (no state of its own); calls block in the shard's waits, bounded by :func:`budget`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
from google.protobuf.message import DecodeError, Message

from ps._proto import ps_pb2
from ps.errors import FailedPreconditionError, PSError, Reason, UnauthenticatedError, status_code_of
from ps.protocol.auth import token_matches
from ps.protocol.channel import SERVICE_NAME
from ps.protocol.rows_wire import encode_rows, split_rows
from ps.protocol.wire import split_payload, wire_dtype
from ps.shard.shard import Shard
from ps.tables.dense_table import DenseTable

log = logging.getLogger(__name__)

#: a push's outcome on the wire
OUTCOMES = {"applied": ps_pb2.APPLIED, "accumulated": ps_pb2.ACCUMULATED, "duplicate": ps_pb2.DUPLICATE,
            "stale": ps_pb2.STALE}
#: seconds of a caller's deadline kept for the reply to travel back
REPLY_MARGIN_S = 0.05
#: the longest any call may ask the shard to wait (s); also the wait of a call without a deadline
MAX_WAIT_S = 86400.0


def budget(timeout_s: float | None) -> float:
    """Seconds the shard may wait for a call that has ``timeout_s`` left (None: no deadline)."""
    return MAX_WAIT_S if timeout_s is None else max(0.0, min(timeout_s, MAX_WAIT_S) - REPLY_MARGIN_S)


@dataclass(frozen=True)
class Failure:
    """A call's failure as every plane reports it: a status code, details and a reason.

    ``lost``: fault injection; the plane loses the reply (gRPC answers UNAVAILABLE, the
    socket planes close the connection), as a network drop after the shard acted would.
    """

    code: grpc.StatusCode
    details: str
    reason: Reason = Reason.NONE
    lost: bool = False


def failure_of(exc: BaseException, what: str) -> Failure:
    """The one mapping from an exception to a status. Unexpected ones are logged as INTERNAL."""
    if isinstance(exc, PSError):
        return Failure(status_code_of(exc), str(exc), exc.reason)
    if isinstance(exc, (DecodeError, UnicodeDecodeError)):
        return Failure(grpc.StatusCode.INVALID_ARGUMENT, f"malformed {what}: {exc}")
    log.error("internal error in %s", what, exc_info=exc)
    return Failure(grpc.StatusCode.INTERNAL, f"internal error in {what}; see the server log")


@dataclass
class DataReply:
    """A data call's answer: the push's outcome and the shard's version after it (0, 0
    without a push), and for a pull the reply header and the blocks' data in its order."""

    outcome: int = 0
    version: int = 0
    header: ps_pb2.PullReplyHeader | None = None
    blocks: Sequence[Any] = ()


class Payload:
    """Where a request's tensors lie and where a pull's blocks go: by default (gRPC) the
    payload after the header, read in place, and pulled blocks copied into new bytes.

    Planes with memory of their own override :meth:`grads` and :meth:`slots`.
    """

    def __init__(self, payload: memoryview | bytes = b"") -> None:
        self.payload = memoryview(payload)

    def grads(self, shard: Shard, header: ps_pb2.PushHeader) -> list[np.ndarray]:
        """The push's gradients, one per ``header.blocks`` entry. Raises InvalidArgumentError."""
        return split_payload(header.blocks, self.payload)

    def slots(self, shard: Shard, tables: list[DenseTable] | None, known: dict | None) -> Callable | None:
        """A pull's ``into`` (see :meth:`Shard.pull`), or None to get new bytes. Called before
        anything is applied; given ``tables`` (a push-pull's), raises InvalidArgumentError
        when it cannot hold them."""
        return None


class ShardHandler:
    """The data calls of ``shard`` (see the module docstring). The constructor does no I/O.

    ``token``: the server's auth token ("" for none); ``metrics``: an object with
    ``observe_request(service, method, code, seconds)`` (None: off); ``drop_reply``: asked
    after each handled push, True loses its reply (fault injection; None: off).
    """

    def __init__(self, shard: Shard, *, token: str = "", metrics=None,
                 drop_reply: Callable[[], bool] | None = None) -> None:
        self.shard = shard
        self._token = token.encode()
        self.metrics = metrics
        self._drop_reply = drop_reply

    def hello(self, token: bytes | None, server_id: bytes) -> Failure | None:
        """A data-plane connection's first message: its token (None: the plane has none) and
        the server id the worker registered with. None when it may go on; does not block."""
        if self._token and (token is None or not token_matches(token, self._token)):
            log.warning("refused a data-plane connection: missing or wrong token")
            return failure_of(UnauthenticatedError("missing or wrong token"), "hello")
        if server_id != self.shard.server_id.encode():
            return failure_of(FailedPreconditionError("this is not the server the worker registered with"), "hello")
        return None

    # -- dense: Push, Pull, PushPull ---------------------------------------------------------

    def data(self, method: str, message: bytes | Message | Exception, tensors: Payload, timeout_s: float | None,
             known_for: str | None = None) -> DataReply | Failure:
        """Handle a ``Push``, ``Pull`` or ``PushPull``; never raises. ``message``: the PushHeader
        (with ``then_pull`` for PushPull) or PullHeader, as bytes or parsed, or the exception
        its parsing raised; ``known_for``: the state token the pull's ``known`` versions belong
        to (None: the header's). Blocks up to :func:`budget` of ``timeout_s``."""
        return self._observe(method, self._data, message, tensors, timeout_s, known_for)

    def _data(self, method: str, message, tensors: Payload, timeout_s, known_for) -> DataReply | Failure:
        shard, wait_s = self.shard, budget(timeout_s)
        push = pull = None
        if method == "Pull":
            pull = _parse(message, ps_pb2.PullHeader)
        else:
            push = _parse(message, ps_pb2.PushHeader)
            pull = push.then_pull if method == "PushPull" else None
        if pull is not None:
            names = list(pull.tables)  # decoded from the header once
            tables = None  # a push-pull is checked whole before its push is applied (who first, then what)
            if push is not None:
                tables = shard.pull_tables(push.worker_id, names, pull.part, max(1, pull.num_parts), True)
            known_for = pull.known_for if known_for is None else known_for
            known = ({(r.table, r.block): r.version for r in pull.known}
                     if pull.known and known_for == shard.state_token else None)
            into = tensors.slots(shard, tables, known)
        reply = DataReply()
        if push is not None:
            grads = tensors.grads(shard, push)
            result = shard.push(push.worker_id, push.seq, push.step, push.part, max(1, push.num_parts),
                                [(ref.table, ref.block) for ref in push.blocks], grads, wait_s, push.session,
                                push.placement_version, caller_checked=pull is not None)
            reply.outcome, reply.version = OUTCOMES[result.outcome], result.version
        if pull is not None:
            version, blocks = shard.pull(pull.worker_id, pull.step, names, pull.part,
                                         max(1, pull.num_parts), wait_s, known=known, into=into,
                                         placement_version=pull.placement_version, pushed=push is not None)
            header = reply.header = ps_pb2.PullReplyHeader(version=version, state_token=shard.state_token)
            if push is not None:
                header.push_outcome, header.push_version = reply.outcome, reply.version
            add = header.blocks.add
            for b in blocks:
                add(table=b.table, block=b.block, dtype=b.wire_dtype, count=b.count, version=b.version)
            reply.blocks = [b.data for b in blocks]
        if push is not None and self._drop_reply is not None and self._drop_reply():
            log.warning("fault injection: dropping the reply of a push that was handled")
            return Failure(grpc.StatusCode.UNAVAILABLE, "fault injection: reply lost after the push was handled",
                           lost=True)
        return reply

    # -- sparse: PushRows, PullRows ------------------------------------------------------------

    def rows(self, method: str, request: tuple[ps_pb2.RowsHeader, memoryview] | Exception,
             timeout_s: float | None) -> ps_pb2.PushReply | bytes | Failure:
        """Handle a ``PushRows`` (answer: a PushReply) or ``PullRows`` (answer: the encoded
        RowsReply); ``request``: a RowsRequest's header and payload, or the exception its
        parsing raised. Never raises; blocks up to :func:`budget` of ``timeout_s``."""
        return self._observe(method, self._rows, request, budget(timeout_s))

    def _rows(self, method: str, request, wait_s: float):
        header, payload = _parse(request)
        pushes = method == "PushRows"
        ids, grads = split_rows(header, payload, with_ids=True, with_values=pushes)
        if pushes:
            result = self.shard.rows.push(header.worker_id, header.seq, header.step, header.part,
                                          max(1, header.num_parts), header.table, ids, grads, wait_s, header.session,
                                          header.placement_version)
            return ps_pb2.PushReply(outcome=OUTCOMES[result.outcome], version=result.version)
        version, values = self.shard.rows.pull(header.worker_id, header.step, header.table, ids, wait_s,
                                               header.placement_version)
        return encode_rows(ps_pb2.RowsHeader(table=header.table, num_ids=len(ids), dim=values.shape[1],
                                             dtype=wire_dtype(values.dtype), version=version), None, values)

    # -- accounting -----------------------------------------------------------------------------

    def _observe(self, method: str, run: Callable[..., Any], *args) -> Any:
        start = time.perf_counter() if self.metrics is not None else 0.0
        try:
            result = run(method, *args)
        except Exception as exc:
            result = failure_of(exc, f"{method} request")
        if self.metrics is not None:
            code = result.code if isinstance(result, Failure) else grpc.StatusCode.OK
            self.metrics.observe_request(SERVICE_NAME, method, code.name, time.perf_counter() - start)
        return result


def _parse(message: Any, kind: type[Message] | None = None) -> Any:
    """``message`` parsed as ``kind`` (if bytes); raises the exception a plane's parsing kept."""
    if isinstance(message, Exception):
        raise message
    return kind.FromString(message) if kind is not None and not isinstance(message, kind) else message
