"""Errors are matched by their Reason, read from gRPC trailing metadata and from data-plane frames."""

from __future__ import annotations

import socket

import grpc
import pytest

from ps.errors import (
    REASON_METADATA_KEY,
    AbortedError,
    FailedPreconditionError,
    PSError,
    Reason,
    UnavailableError,
)
from ps.protocol.wire import LOCAL_PUSH, pack_local_reply
from worker.client.transport import REJOIN_REASONS, call, rpc_errors, status_error
from worker.planes.frame_connection import FrameConnection


class FakeRpcError(grpc.RpcError):
    def __init__(self, code, details, metadata=()):
        self._code, self._details, self._metadata = code, details, metadata

    def code(self):
        return self._code

    def details(self):
        return self._details

    def trailing_metadata(self):
        return self._metadata


@pytest.mark.parametrize("reason", list(Reason))
def test_the_grpc_mapping_reads_the_reason_from_trailing_metadata(reason):
    error = FakeRpcError(grpc.StatusCode.FAILED_PRECONDITION, "any words at all",
                         ((REASON_METADATA_KEY, reason.name), ("other", "x")))
    with pytest.raises(FailedPreconditionError) as caught, rpc_errors("shard:1"):
        raise error
    assert caught.value.reason is reason and str(caught.value) == "shard:1: any words at all"


def test_a_frame_error_reply_carries_the_reason_number():
    mine, theirs = socket.socketpair()
    try:
        conn = FrameConnection(mine, "shard")
        theirs.sendall(pack_local_reply(LOCAL_PUSH, b"reworded", status=grpc.StatusCode.ABORTED.value[0],
                                        reason=Reason.ROLLED_BACK))
        with pytest.raises(AbortedError) as caught:
            conn.receive()
        assert caught.value.reason is Reason.ROLLED_BACK and not conn.closed   # the stream stays in step
        theirs.close()
        with pytest.raises(UnavailableError):
            conn.receive()
        assert conn.closed                                                    # out of step: never reused
    finally:
        mine.close()


def test_a_reason_decides_whatever_the_message_says():
    assert status_error(grpc.StatusCode.NOT_FOUND, "no such worker", "UNKNOWN_TABLE").reason in REJOIN_REASONS
    assert status_error(5, "no such worker", 2).reason is Reason.UNKNOWN_TABLE          # numbers, as in frames
    fenced = status_error(grpc.StatusCode.FAILED_PRECONDITION, "is not registered", "FENCED")
    assert fenced.reason is Reason.FENCED
    assert status_error(grpc.StatusCode.ABORTED, "x", "NO_SUCH_REASON").reason is Reason.NONE


class Channel:
    """A ShardChannel stand-in: ``method`` fails with each of ``errors`` in turn, then answers."""

    address = "shard:1"

    def __init__(self, *errors: PSError) -> None:
        self.errors = list(errors)
        self.rejoined = 0
        self.rejoin = self._rejoin

    def _rejoin(self) -> None:
        self.rejoined += 1

    def method(self, request, timeout):
        if self.errors:
            error = self.errors.pop(0)
            code = grpc.StatusCode.FAILED_PRECONDITION
            raise FakeRpcError(code, str(error), ((REASON_METADATA_KEY, error.reason.name),))
        return "reply"


def test_a_call_rejoins_on_the_reason_not_on_the_words():
    ch = Channel(FailedPreconditionError("reworded entirely", reason=Reason.NOT_REGISTERED))
    assert call(ch, ch.method, None, 1.0) == "reply" and ch.rejoined == 1
    ch = Channel(FailedPreconditionError("reworded entirely", reason=Reason.FENCED))
    with pytest.raises(FailedPreconditionError):
        call(ch, ch.method, None, 1.0)
    assert ch.rejoined == 0
