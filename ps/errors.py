"""The project's one exception hierarchy, and its mapping to gRPC status codes.

::

    PSError
    ├── InvalidArgumentError       INVALID_ARGUMENT     bad shape, dtype, byte length, value
    ├── NotFoundError              NOT_FOUND            unknown table or worker
    ├── AlreadyExistsError         ALREADY_EXISTS       a table exists with another spec
    ├── FailedPreconditionError    FAILED_PRECONDITION  wrong topology, push before register, ...
    ├── AbortedError               ABORTED              the cluster moved on (e.g. rolled back)
    ├── ResourceExhaustedError     RESOURCE_EXHAUSTED   message over the size limit, overload
    ├── UnauthenticatedError       UNAUTHENTICATED      missing or wrong token
    ├── PermissionDeniedError      PERMISSION_DENIED
    ├── TransientError                                  safe to retry with the same sequence number
    │   ├── UnavailableError       UNAVAILABLE          shard down, restarting or stopping
    │   └── DeadlineExceededError  DEADLINE_EXCEEDED    a call or a bounded wait ran out of time
    └── RemoteError                anything else (INTERNAL, UNKNOWN, ...)

The server raises these from its logic and the servicer turns them into status codes
(:func:`status_code_of`); the client turns status codes back into these (:func:`from_status`).
That pair is the only place the mapping lives. Each class names its status code as a string
(``status``); this module never imports gRPC, so that the server's logic (the consistency gate,
the shard) runs without it: the names become ``grpc.StatusCode`` values in
:mod:`ps.protocol.grpc_status`, loaded only when a status is sent or read (and by ``code``).

Some errors also carry a :class:`Reason`: a name the client acts on (register again, a
fenced session, a rollback to adopt), so that recovery never depends on the wording of a
message. It travels beside the status: as the trailing metadata ``ps-reason`` (its name)
over gRPC, and as its number in the error reply frame of the data planes
(:mod:`ps.protocol.wire`).
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import grpc

#: the gRPC trailing-metadata key that carries an error's :class:`Reason` (by name)
REASON_METADATA_KEY = "ps-reason"


class Reason(enum.IntEnum):
    """Why a call failed, by name, where the client must act on it. Numbers are the wire's."""

    NONE = 0
    NOT_REGISTERED = 1    # the shard does not know this worker (restarted, lease ran out): register again
    UNKNOWN_TABLE = 2     # the shard does not hold the table (restarted from an older state): re-create it
    FENCED = 3            # another session of the same worker id took it over: this client must stop
    ROLLED_BACK = 4       # the cluster rolled back (or awaits one): adopt it, retry from a fresh pull
    WAIT_EXPIRED = 5      # the shard's own bounded wait on other workers ran out (the details name them):
                          #   not retried, unlike a transport timeout
    MOVED = 6             # the call was planned with another placement map version, or names a unit this
                          #   shard does not own: nothing of it was applied; refresh the map, plan again
    PULL_MOVED = 7        # a push-pull's push was applied (or a duplicate), but its pull was planned with
                          #   another placement map: the push is done; refresh the map, pull again

    @classmethod
    def parse(cls, value: str | int | None) -> Reason:
        """The reason for a wire name or number; NONE for anything unknown (never raises)."""
        if isinstance(value, int):
            try:
                return cls(value)
            except ValueError:
                return cls.NONE
        return cls.__members__.get(value or "", cls.NONE)


class _StatusCode:
    """``cls.code``: the ``grpc.StatusCode`` named by ``cls.status`` (loads gRPC on first use)."""

    def __get__(self, error: PSError | None, owner: type[PSError]) -> grpc.StatusCode:
        from ps.protocol import grpc_status

        return grpc_status.code_of(owner.status)


class PSError(Exception):
    """Base of every error the parameter server raises to its users.

    ``reason`` (keyword only) names what the client should do about it (:class:`Reason`).
    ``status`` is the name of the gRPC status code it is reported with; ``code`` the code.
    """

    status = "UNKNOWN"
    code = _StatusCode()

    def __init__(self, *args: object, reason: Reason = Reason.NONE) -> None:
        super().__init__(*args)
        self.reason = Reason(reason)


class InvalidArgumentError(PSError, ValueError):
    status = "INVALID_ARGUMENT"


class NotFoundError(PSError, KeyError):
    status = "NOT_FOUND"

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class AlreadyExistsError(PSError):
    status = "ALREADY_EXISTS"


class FailedPreconditionError(PSError):
    status = "FAILED_PRECONDITION"


class AbortedError(PSError):
    status = "ABORTED"


class ResourceExhaustedError(PSError):
    status = "RESOURCE_EXHAUSTED"


class UnauthenticatedError(PSError):
    status = "UNAUTHENTICATED"


class PermissionDeniedError(PSError):
    status = "PERMISSION_DENIED"


class TransientError(PSError):
    """A failure after which the same call may be retried (with the same sequence number)."""


class UnavailableError(TransientError):
    status = "UNAVAILABLE"


class DeadlineExceededError(TransientError, TimeoutError):
    status = "DEADLINE_EXCEEDED"


class RemoteError(PSError):
    """The server failed in a way the protocol does not name (INTERNAL, UNKNOWN, ...)."""


_BY_STATUS: dict[str, type[PSError]] = {
    cls.status: cls
    for cls in (
        InvalidArgumentError,
        NotFoundError,
        AlreadyExistsError,
        FailedPreconditionError,
        AbortedError,
        ResourceExhaustedError,
        UnauthenticatedError,
        PermissionDeniedError,
        UnavailableError,
        DeadlineExceededError,
    )
}


def status_code_of(error: PSError) -> grpc.StatusCode:
    """The gRPC status code a server reports for ``error`` (loads gRPC)."""
    from ps.protocol import grpc_status

    return grpc_status.code_of(error.status)


def from_status(code: grpc.StatusCode, details: str, reason: Reason | str | int | None = None) -> PSError:
    """The project exception for a gRPC status, to be raised ``from`` the ``grpc.RpcError``.

    ``reason``: the :class:`Reason` sent beside the status (a name, a number or None).
    """
    return _BY_STATUS.get(code.name, RemoteError)(details or code.name, reason=Reason.parse(reason))


def from_status_number(number: int, details: str, reason: Reason | str | int | None = None) -> PSError:
    """:func:`from_status` for a status code sent as its number (the data planes' frames)."""
    from ps.protocol import grpc_status

    name = grpc_status.name_of_number(number)
    return _BY_STATUS.get(name, RemoteError)(details or name, reason=Reason.parse(reason))
