"""Why an address cannot be bound, in words a user can act on.

gRPC reports a failed bind as "Failed to bind to address ...; set GRPC_VERBOSITY=debug
...". :func:`bind_problem` asks the OS instead, with a probe bind of the same address
after the failure, and says "port 50051 is in use; pick another --port (0 = any free
port)" or "10.0.0.9 is not an address of this machine". Blocks briefly (a name lookup
for ``host``); thread-safe.
"""

from __future__ import annotations

import errno
import socket


def bind_problem(host: str, port: int, flag: str = "--port") -> str:
    """What stops binding ``host:port`` now; ``flag`` is the option that chose the port."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        return f"{host!r} is not a host name or address this machine can resolve ({exc})"
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC binds
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return f"port {port} is in use; pick another {flag} (0 = any free port)"
                if exc.errno == errno.EADDRNOTAVAIL:
                    return (f"{host} is not an address of this machine (bind 127.0.0.1, 0.0.0.0 for every "
                            "interface, or one of its own addresses)")
                if exc.errno == errno.EACCES:
                    return f"port {port} needs privileges; pick another {flag} above 1023 (0 = any free port)"
                return exc.strerror or str(exc)
    return "the OS allows it now; it may have been in use a moment ago (try again, or another " + flag + ")"
