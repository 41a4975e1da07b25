"""``ps-server``: run one parameter-server shard until SIGTERM, SIGINT or a Shutdown call.

Prints one line ``ps-server listening on HOST:PORT`` to stdout once it serves (with
``--port 0`` that is how a launcher learns the port), then logs to stderr. Stops
gracefully (final checkpoint with ``--checkpoint-dir``) and exits 0; 1 when it could not
start or the final checkpoint failed.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading

from launcher import metrics_flags, server_safety
from launcher.cli_logging import configure_logging
from launcher.envargs import EnvArgumentParser
from ps.allocator import tune_malloc
from ps.config import DEFAULT_MAX_MESSAGE_BYTES, ServerConfig
from ps.shard.consistency import Mode
from ps.serving.server import ShardServer

log = logging.getLogger("ps-server")

#: seconds the interpreter may take to exit after a finished stop, a last resort (see _exit_unheld)
EXIT_BOUND_S = 1.0


def build_parser(environ=None) -> EnvArgumentParser:
    p = EnvArgumentParser(prog="ps-server", description="Serve one shard of the parameter server.",
                          environ=environ)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind; loopback by default, 0.0.0.0 to accept other machines")
    p.add_argument("--port", type=int, default=50051, help="port to bind; 0 lets the OS choose")
    p.add_argument("--mode", choices=[m.value for m in Mode], default="async",
                   help="consistency: async (apply on arrival), sync (BSP), ssp (bounded staleness)")
    p.add_argument("--staleness", type=int, default=0, help="ssp: clocks a worker may run ahead of the slowest")
    p.add_argument("--num-workers", type=int, default=0,
                   help="sync/ssp: steps wait until this many workers registered (0: whoever registers)")
    p.add_argument("--sync-timeout", type=float, default=60.0,
                   help="seconds a push or pull may wait on other workers before failing with who it waited for")
    p.add_argument("--shard-index", type=int, default=None,
                   help="this server's position in the workers' --servers list (default: learn it from them)")
    p.add_argument("--num-shards", type=int, default=None, help="number of servers (with --shard-index)")
    p.add_argument("--nonfinite", choices=["refuse", "skip", "allow"], default="refuse",
                   help="NaN/Inf gradients: refuse the push (INVALID_ARGUMENT), skip it (acknowledged, not "
                        "applied, warned and counted) or allow it")
    p.add_argument("--max-message-bytes", type=int, default=DEFAULT_MAX_MESSAGE_BYTES,
                   help="largest gRPC message accepted or sent, in bytes")
    p.add_argument("--threads", type=int, default=16, help="gRPC handler threads")
    p.add_argument("--grace", type=float, default=5.0, help="seconds in-flight calls get to finish on shutdown")
    p.add_argument("--uds", default=None, metavar="PATH",
                   help="also serve gRPC on this unix socket (workers give unix:PATH as the address)")
    p.add_argument("--no-local-plane", action="store_true",
                   help="do not offer same-host workers the shared-memory data plane (gRPC only)")
    p.add_argument("--no-stream-plane", action="store_true",
                   help="do not offer workers on other hosts the raw TCP data plane (payloads over gRPC); "
                        "never offered with TLS")
    p.add_argument("--stream-port", type=int, default=0,
                   help="TCP port of that data plane, on --host; 0 lets the OS choose (fix it for containers)")
    p.add_argument("--no-malloc-tuning", action="store_true",
                   help="keep glibc's default allocator settings (see ps.allocator)")
    server_safety.add_arguments(p)
    metrics_flags.add_arguments(p, host_default=None, host_help="address of the metrics port (None: --host)")
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    return p


def config_from_args(args) -> ServerConfig:
    """Build and validate the config. Raises ValueError with the flag's problem. With
    ``--restore`` and no ``--shard-index``/``--num-shards`` it reads the checkpoint
    manifests (:func:`launcher.server_safety.restore_topology`)."""
    shard_index, num_shards = server_safety.restore_topology(args)
    cfg = ServerConfig(
        host=args.host, port=args.port, mode=Mode(args.mode), staleness=args.staleness,
        num_workers=args.num_workers, sync_timeout_s=args.sync_timeout, shard_index=shard_index,
        num_shards=num_shards, nonfinite=args.nonfinite, max_message_bytes=args.max_message_bytes,
        threads=args.threads, grace_s=args.grace, uds=args.uds or None, local_plane=not args.no_local_plane,
        stream_plane=not args.no_stream_plane, stream_port=args.stream_port,
        **server_safety.config_fields(args), **metrics_flags.server_config_fields(args),
    )
    cfg.validate()
    return cfg


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    try:
        cfg = config_from_args(args)
    except (ValueError, OSError) as exc:
        parser.error(str(exc))
    if not args.no_malloc_tuning:
        tune_malloc()  # large tensor buffers stay warm between steps (ps.allocator)
    for warning in server_safety.exposure_warnings(cfg):
        log.warning("%s", warning)
    server = ShardServer(cfg)
    # SIGTERM, SIGINT and the Shutdown call all stop the same graceful way: NOT_SERVING,
    # in-flight calls finish, a final checkpoint when --checkpoint-dir is set, exit 0
    signal.signal(signal.SIGTERM, lambda *_: server.request_stop())
    signal.signal(signal.SIGINT, lambda *_: server.request_stop())
    try:
        server.start()
    except Exception as exc:
        print(f"ps-server: {exc}", file=sys.stderr)
        return 1
    print(f"ps-server listening on {server.address}", flush=True)
    while not server.wait(1.0):
        pass
    if server.stop_error is not None:
        print(f"ps-server: final checkpoint failed: {server.stop_error}", file=sys.stderr)
        return _exit_unheld(1)
    return _exit_unheld(0)


def _exit_unheld(code: int) -> int:
    """``code``, with a last-resort watchdog that ends the process ``EXIT_BOUND_S`` after a
    finished stop.

    The stop has ended every call waiting inside the shard on other workers
    (``Sequencer.stop_waits``), cancelled the rest after the grace period, written the final
    checkpoint and closed every port, so the interpreter normally exits at once. The
    interpreter joins gRPC's handler threads at exit, though, and a handler can still be
    busy where no stop reaches it (a ``Checkpoint`` or ``Restore`` call on a stalled disk):
    then the watchdog flushes the logs, says so and leaves with ``code``. For the process's
    entry point only (like the signal handlers ``main`` installs).
    """

    def leave() -> None:
        log.warning("a call is still being handled %.0f s after the stop (a checkpoint on a stalled disk?): "
                    "exiting anyway", EXIT_BOUND_S)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    watchdog = threading.Timer(EXIT_BOUND_S, leave)
    watchdog.daemon = True  # it never holds the exit itself
    watchdog.start()
    return code

if __name__ == "__main__":
    sys.exit(main())
