"""The gRPC service as servers and clients both address it: its name, the message size limit
and the channel options both ends share. Constants and a pure function."""

from __future__ import annotations

#: the full name of the ``ParameterServer`` service of ``protos/ps.proto``
SERVICE_NAME = "ps.v1.ParameterServer"
#: the largest gRPC message a server accepts or sends by default (bytes); clients split bigger
#: transfers into several messages, so a table of any size moves within this limit
DEFAULT_MAX_MESSAGE_BYTES = 64 << 20


def channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    """gRPC options shared by servers and clients: the message size limit both ways."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]
