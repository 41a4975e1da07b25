"""``ShardServer``: one parameter-server shard served over gRPC.

The constructor only stores its config; :meth:`ShardServer.start` restores the newest
checkpoint when asked (``restore``), binds the port (TLS when configured), registers the
parameter-server, control (:mod:`ps.serving.control`), health (``grpc.health.v1``) and
reflection services behind the token check (:mod:`ps.protocol.auth`), starts the lease and
periodic-checkpoint threads (and, with ``metrics_port``, the Prometheus endpoint of
:mod:`ps.metrics.shard_metrics`), and only then marks the shard SERVING (NOT_SERVING before).
:meth:`ShardServer.stop` (or
:meth:`ShardServer.request_stop`, from a signal handler or the Shutdown call) marks it
NOT_SERVING, ends every call waiting inside the shard on other workers (UNAVAILABLE "server
stopping": ``Sequencer.stop_waits``), lets the other in-flight calls finish within the grace period, writes a final
checkpoint when a checkpoint directory is set, and joins its threads. Usable as a
context manager. Thread-safe.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ps.serving import faults

from ps.protocol import tls
from ps._proto import ps_pb2
from ps.protocol.auth import TokenAuth
from ps.serving.bind_probe import bind_problem
from ps.checkpoint.checkpointer import Checkpointer, Written
from ps.config import ServerConfig
from ps.serving.control import ControlService
from ps.errors import UnavailableError
from ps.shard.lease import LeaseKeeper
from ps.serving.local_plane import LocalPlane
from ps.protocol.channel import SERVICE_NAME, channel_options
from ps.serving.handler import ShardHandler
from ps.serving.service import ParameterServerService
from ps.shard.shard import Shard
from ps.metrics.shard_metrics import ShardMetrics
from ps.serving.stream_plane import StreamPlane

log = logging.getLogger(__name__)


class ShardServer:
    def __init__(self, config: ServerConfig) -> None:
        config.validate()
        self.config = config
        self.shard = Shard(config)
        self._server: grpc.Server | None = None
        self._health: health.HealthServicer | None = None
        self._port: int | None = None
        self._local: LocalPlane | None = None  # the same-host shared-memory data plane
        self._stream: StreamPlane | None = None  # the TCP data plane for other hosts
        self._stopped = threading.Event()
        self._state = "new"
        self._faults = faults.FaultPlan.parse(config.faults)
        hook = faults.CheckpointKiller(self._faults.kill_in_checkpoint) if self._faults.kill_in_checkpoint else None
        self.checkpointer = Checkpointer(self.shard, config, hook)
        self._leases = LeaseKeeper(self.shard.membership.expire_leases, config.lease_s) if config.lease_s > 0 else None
        # Prometheus series and their HTTP endpoint (ps.metrics.shard_metrics), when metrics_port > 0
        self.metrics = ShardMetrics(self.shard, config, self.checkpointer) if config.metrics_port else None
        self._stop_requested = threading.Event()
        self._stop_lock = threading.Lock()
        self._stopper: threading.Thread | None = None
        self.final_checkpoint: Written | None = None   # written by stop()
        self.stop_error: Exception | None = None       # why the final checkpoint failed

    @property
    def port(self) -> int:
        """The bound port (the OS's choice when the config said 0). Raises before start."""
        if self._port is None:
            raise RuntimeError("ShardServer is not started")
        return self._port

    @property
    def stream_port(self) -> int | None:
        """The TCP data plane's port (``ps.serving.stream_plane``), or None when it is not offered."""
        return self._stream.port if self._stream is not None and self._state == "serving" else None

    @property
    def address(self) -> str:
        host = self.config.host
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    def start(self) -> ShardServer:
        """Bind and serve. Does not block. Raises UnavailableError if the port cannot be bound."""
        if self._state != "new":
            raise RuntimeError("ShardServer cannot be restarted; make a new one")
        cfg = self.config
        if cfg.restore:
            self.checkpointer.restore()
        interceptors = [TokenAuth(cfg.auth_token)] if cfg.auth_token else []
        if self.metrics is not None:  # first: calls the token check refuses are counted too
            interceptors.insert(0, self.metrics.interceptor)
        drops = self._faults.drop_push_reply_every
        handler = ShardHandler(self.shard, token=cfg.auth_token, metrics=self.metrics,
                               drop_reply=faults.ReplyDropper(drops).drop_now if drops else None)
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=cfg.threads, thread_name_prefix="ps-shard"),
            options=channel_options(cfg.max_message_bytes) + [("grpc.so_reuseport", 0)],
            maximum_concurrent_rpcs=cfg.threads * 4,
            interceptors=interceptors,
        )
        if cfg.local_plane and (cfg.auth_token or cfg.tls_cert):
            log.info("same-host shared-memory data plane off: it has no token or TLS check")
        elif cfg.local_plane and self._local is None:
            self._local = LocalPlane(handler)  # no I/O yet: started once gRPC serves
        if cfg.stream_plane and cfg.tls_cert:
            log.info("TCP stream data plane off: payloads stay on gRPC's TLS")
        elif cfg.stream_plane and self._stream is None:  # no I/O yet: bound before gRPC serves
            self._stream = StreamPlane(handler, cfg.host, cfg.stream_port, max_message_bytes=cfg.max_message_bytes)
        service = ParameterServerService(self.shard, handler, self._local, self._stream)
        server.add_generic_rpc_handlers((service.handler(),
                                         ControlService(self.shard, self.checkpointer, self.request_stop).handler()))
        self._health = health.HealthServicer(experimental_non_blocking=True)
        for name in ("", SERVICE_NAME):  # the servicer says SERVING for "" until told otherwise
            self._health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (ps_pb2.DESCRIPTOR.services_by_name["ParameterServer"].full_name,
             health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME),
            server,
        )
        host = cfg.host
        target = f"[{host}]:{cfg.port}" if ":" in host else f"{host}:{cfg.port}"
        try:
            if cfg.tls_cert:
                port = server.add_secure_port(target, tls.server_credentials(cfg.tls_cert, cfg.tls_key,
                                                                             cfg.tls_client_ca))
            else:
                port = server.add_insecure_port(target)
        except RuntimeError:  # its text ends in gRPC's GRPC_VERBOSITY hint: ask the OS why instead
            port = 0
        if port == 0:
            raise UnavailableError(f"cannot bind {target}: {bind_problem(host, cfg.port)}")
        if cfg.uds:
            path = cfg.uds[len("unix:"):] if cfg.uds.startswith("unix:") else cfg.uds
            if os.path.exists(path) and stat.S_ISSOCK(os.stat(path).st_mode):
                os.unlink(path)  # a socket left by a previous run; grpc cannot bind over it
            try:
                if cfg.tls_cert:  # the unix socket gets the same credentials as the TCP port
                    bound = server.add_secure_port(f"unix:{path}", tls.server_credentials(
                        cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca))
                else:
                    bound = server.add_insecure_port(f"unix:{path}")
            except RuntimeError as exc:
                raise UnavailableError(f"cannot bind unix:{path}: {exc}") from exc
            if not bound:
                raise UnavailableError(f"cannot bind unix:{path}")
        if self._stream is not None:
            try:
                self._stream.start()
            except OSError as exc:
                if cfg.stream_port:
                    raise UnavailableError(f"cannot bind the stream port {cfg.stream_port}: "
                                           f"{bind_problem(host, cfg.stream_port, '--stream-port')}") from exc
                log.warning("TCP stream data plane unavailable: %s", exc)
                self._stream = service.stream_plane = None
        if self.metrics is not None:
            self.metrics.start()  # raises UnavailableError when its port is taken
        server.start()
        if self._local is not None:
            try:
                self._local.start()
            except OSError as exc:  # no unix sockets here: same-host workers use gRPC
                log.warning("same-host shared-memory data plane unavailable: %s", exc)
                self._local = service.local_plane = None
        self._server, self._port, self._state = server, port, "serving"
        for name in ("", SERVICE_NAME):
            self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self.checkpointer.start()
        if self._leases is not None:
            self._leases.start()
        self._stopper = threading.Thread(target=self._stop_when_asked, name="ps-stopper", daemon=True)
        self._stopper.start()
        log.info("shard serving on %s (mode %s%s%s)", self.address, cfg.mode.value,
                 ", TLS" if cfg.tls_cert else "", ", token auth" if cfg.auth_token else "")
        return self

    def request_stop(self) -> None:
        """Ask for a graceful :meth:`stop` from any thread or signal handler; returns at once."""
        self._stop_requested.set()

    def _stop_when_asked(self) -> None:
        self._stop_requested.wait()
        self.stop()

    def stop(self, grace_s: float | None = None) -> None:
        """Go NOT_SERVING, end the calls waiting on other workers (UNAVAILABLE "server stopping"),
        finish the other in-flight calls within the grace period, release the port,
        write the final checkpoint (when a checkpoint directory is set), join the threads.

        Blocks until stopped. Idempotent. A failed final checkpoint is logged and kept
        in :attr:`stop_error` (the previous checkpoints stay intact).
        """
        self._stop_requested.set()
        with self._stop_lock:
            if self._state != "serving":
                if self.metrics is not None:
                    self.metrics.stop()  # idempotent; running only if start() failed late
                self._state = "stopped"
                self._stopped.set()
                return
            self._state = "stopping"
            assert self._health is not None and self._server is not None
            self._health.enter_graceful_shutdown()
            self.shard.steps.stop_waits()  # first: a call waiting on a worker must not hold the stop
            self.checkpointer.stop()
            if self._leases is not None:
                self._leases.stop()
            self._server.stop(self.config.grace_s if grace_s is None else grace_s).wait()
            if self._local is not None:
                self._local.stop()
            if self._stream is not None:
                self._stream.stop()
            try:
                self.final_checkpoint = self.checkpointer.final()
            except Exception as exc:  # noqa: BLE001 - reported, the older checkpoints remain
                self.stop_error = exc
                log.error("final checkpoint failed: %s", exc)
            if self.metrics is not None:
                self.metrics.stop()
            self._state = "stopped"
            self._stopped.set()
            log.info("shard on %s stopped", self.address)
        if self._stopper is not None and self._stopper is not threading.current_thread():
            self._stopper.join(5.0)

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until :meth:`stop` finished; returns False if ``timeout_s`` passed first."""
        return self._stopped.wait(timeout_s)

    def __enter__(self) -> ShardServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
