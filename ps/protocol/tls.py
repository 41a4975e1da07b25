"""TLS and mutual TLS from PEM files, for servers and clients.

The server presents ``cert`` (a PEM chain) with ``key``; with ``client_ca`` it also
requires every client to present a certificate signed by that CA (mutual TLS). A client
trusts ``ca`` (the server's CA) and, for mutual TLS, presents its own ``cert``/``key``.
The server certificate's subject alternative names must match the address clients dial
(or the client sets a name override). Files are read when called, never at import.
"""

from __future__ import annotations

import grpc


def read_pem(path: str) -> bytes:
    """The bytes of a PEM file. Raises OSError, ValueError when it holds no PEM block."""
    with open(path, "rb") as f:
        data = f.read(1 << 20)
    if b"-----BEGIN " not in data:
        raise ValueError(f"{path} is not a PEM file")
    return data


def server_credentials(cert: str, key: str, client_ca: str | None = None) -> grpc.ServerCredentials:
    """Credentials for ``add_secure_port``; mutual TLS when ``client_ca`` is given."""
    return grpc.ssl_server_credentials(
        [(read_pem(key), read_pem(cert))],
        root_certificates=read_pem(client_ca) if client_ca else None,
        require_client_auth=client_ca is not None,
    )


def channel_credentials(ca: str | None, cert: str | None = None, key: str | None = None) -> grpc.ChannelCredentials:
    """Credentials for ``secure_channel``: trust ``ca`` (None: the system's roots);
    present ``cert``/``key`` for mutual TLS. Raises ValueError if only one of them is given."""
    if (cert is None) != (key is None):
        raise ValueError("give both a client certificate and its key, or neither")
    return grpc.ssl_channel_credentials(
        root_certificates=read_pem(ca) if ca else None,
        private_key=read_pem(key) if key else None,
        certificate_chain=read_pem(cert) if cert else None,
    )
