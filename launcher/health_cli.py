"""``ps-health HOST:PORT``: ask a server's standard gRPC health service, for healthchecks.

Calls ``grpc.health.v1.Health/Check`` (no token needed: servers leave health open) for
the whole server (``--service ""``, the default) or one service (``--service
ps.v1.ParameterServer``), within ``--timeout`` seconds. Prints the status and exits 0
when it is SERVING; otherwise prints why on stderr and exits 1 (NOT_SERVING, unknown
service, no answer in time). Bad usage exits 2. Made for ``docker compose``
healthchecks, which need a command that exists in the image::

    healthcheck: {test: ["CMD", "ps-health", "localhost:50051"], interval: 2s}

With TLS give ``--tls-ca`` (and ``--tls-cert``/``--tls-key`` for mutual TLS).
"""

from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from launcher.envargs import EnvArgumentParser

SERVING = health_pb2.HealthCheckResponse.SERVING


def build_parser(environ=None) -> EnvArgumentParser:
    p = EnvArgumentParser(prog="ps-health", environ=environ,
                          description="Exit 0 if the gRPC health service at ADDRESS says SERVING, 1 otherwise.")
    p.add_argument("address", metavar="HOST:PORT", help="the server to ask")
    p.add_argument("--service", default="", help="the service to ask about (empty: the whole server)")
    p.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for the answer")
    p.add_argument("--tls-ca", default=None, metavar="PEM", help="CA of the server's certificate: use TLS")
    p.add_argument("--tls-cert", default=None, metavar="PEM", help="client certificate (mutual TLS)")
    p.add_argument("--tls-key", default=None, metavar="PEM", help="key of --tls-cert")
    return p


def check(address: str, service: str = "", timeout_s: float = 2.0,
          credentials: grpc.ChannelCredentials | None = None) -> str:
    """The status name the health service gives (``"SERVING"``, ``"NOT_SERVING"``, ...).

    Blocks at most ``timeout_s``. Raises grpc.RpcError when the call fails (NOT_FOUND for
    an unknown service, UNAVAILABLE, DEADLINE_EXCEEDED).
    """
    channel = grpc.secure_channel(address, credentials) if credentials else grpc.insecure_channel(address)
    with channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                          timeout=timeout_s)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.timeout > 0:
        parser.error(f"--timeout must be > 0, got {args.timeout}")
    credentials = None
    if args.tls_ca or args.tls_cert:
        from ps.protocol import tls

        try:
            credentials = tls.channel_credentials(args.tls_ca, args.tls_cert, args.tls_key)
        except (OSError, ValueError) as exc:
            print(f"ps-health: {exc}", file=sys.stderr)
            return 1
    what = f"{args.address}{' ' + args.service if args.service else ''}"
    try:
        status = check(args.address, args.service, args.timeout, credentials)
    except grpc.RpcError as exc:
        print(f"ps-health: {what}: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    if status != "SERVING":
        print(f"ps-health: {what}: {status}", file=sys.stderr)
        return 1
    print(status)
    return 0


if __name__ == "__main__":
    sys.exit(main())
