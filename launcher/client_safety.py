"""Connection-security flags shared by the client CLIs (``ps-worker``, ``ps-admin``).

``--token-file`` (or the ``PS_TOKEN`` variable) and ``--tls-ca`` / ``--tls-cert`` /
``--tls-key`` / ``--tls-server-name`` become the matching :class:`worker.Client`
arguments. Only the launcher reads files named on the command line and the environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ps.protocol.auth import read_token


def add_arguments(p) -> None:
    p.add_argument("--token-file", default=None, metavar="FILE",
                   help="shared token the servers require (also PS_TOKEN)")
    p.add_argument("--tls-ca", default=None, metavar="PEM", help="CA of the servers' certificates: connect with TLS")
    p.add_argument("--tls-cert", default=None, metavar="PEM", help="this client's certificate (mutual TLS)")
    p.add_argument("--tls-key", default=None, metavar="PEM", help="the key of --tls-cert")
    p.add_argument("--tls-server-name", default=None, help="name in the servers' certificates, if not their host")


def client_kwargs(args, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``Client`` keyword arguments from the flags. Raises ValueError for an unreadable token file."""
    environ = os.environ if environ is None else environ
    try:
        token = read_token(args.token_file) if args.token_file else (environ.get("PS_TOKEN", "").strip() or None)
    except OSError as exc:
        raise ValueError(f"--token-file {args.token_file}: {exc.strerror or exc}") from None
    return dict(token=token, tls_ca=args.tls_ca or None, tls_cert=args.tls_cert or None,
                tls_key=args.tls_key or None, tls_server_name=args.tls_server_name or None)
