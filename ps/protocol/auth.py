"""Shared-token authentication: a server interceptor and the client's metadata.

Every call must carry the metadata ``authorization: Bearer <token>``; the server
compares it in constant time (:func:`hmac.compare_digest`) and answers anything else
with UNAUTHENTICATED before the request is even parsed. The health service
(``grpc.health.v1.Health``) stays open, so probes need no secret. The token is never
logged. Over a plaintext channel the token travels in the clear: use TLS
(:mod:`ps.protocol.tls`) beyond a trusted network. Thread-safe.
"""

from __future__ import annotations

import collections
import hmac

import grpc

HEALTH_PREFIX = "/grpc.health.v1.Health/"
METADATA_KEY = "authorization"


def read_token(path: str) -> str:
    """The token in a file (surrounding whitespace ignored). Raises ValueError if empty, OSError."""
    with open(path, encoding="utf-8") as f:
        token = f.read(8192).strip()
    if not token:
        raise ValueError(f"token file {path} is empty")
    return token


def token_matches(presented: bytes | str, expected: bytes | str) -> bool:
    """Whether a presented secret equals the expected one, compared in constant time
    (:func:`hmac.compare_digest`). The one comparison of every plane's token check."""
    as_bytes = [v.encode() if isinstance(v, str) else bytes(v) for v in (presented, expected)]
    return hmac.compare_digest(as_bytes[0], as_bytes[1])


def _deny(handler: grpc.RpcMethodHandler | None) -> grpc.RpcMethodHandler:
    """A handler of the same shape that refuses the call without parsing its request."""

    def refuse(request, context):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong token (authorization: Bearer ...)")

    if handler is not None and handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(refuse)
    if handler is not None and handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(refuse)
    if handler is not None and handler.stream_stream:
        return grpc.stream_stream_rpc_method_handler(refuse)
    return grpc.unary_unary_rpc_method_handler(refuse)


class TokenAuth(grpc.ServerInterceptor):
    """Lets through calls with the right bearer token, and health checks; refuses the rest."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("empty token")
        self._expected = f"Bearer {token}".encode()

    def __repr__(self) -> str:
        return "TokenAuth(<token hidden>)"

    def authorized(self, metadata) -> bool:
        """Exactly one ``authorization`` entry, equal to the expected one (constant time)."""
        values = [v for k, v in (metadata or ()) if k == METADATA_KEY]
        if len(values) != 1:
            return False
        return token_matches(values[0], self._expected)

    def intercept_service(self, continuation, handler_call_details):
        if handler_call_details.method.startswith(HEALTH_PREFIX):
            return continuation(handler_call_details)
        if self.authorized(handler_call_details.invocation_metadata):
            return continuation(handler_call_details)
        return _deny(continuation(handler_call_details))


class _CallDetails(
    collections.namedtuple("_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready",
                                            "compression")),
    grpc.ClientCallDetails,
):
    pass


class BearerToken(grpc.UnaryUnaryClientInterceptor):
    """Adds ``authorization: Bearer <token>`` to every unary call of a channel."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("empty token")
        self._entry = (METADATA_KEY, f"Bearer {token}")

    def __repr__(self) -> str:
        return "BearerToken(<token hidden>)"

    def intercept_unary_unary(self, continuation, client_call_details, request):
        d = client_call_details
        metadata = [*(d.metadata or ()), self._entry]
        return continuation(_CallDetails(d.method, d.timeout, metadata, d.credentials, d.wait_for_ready,
                                         d.compression), request)
