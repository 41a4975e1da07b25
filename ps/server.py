"""``ShardServer``: one parameter-server shard served over gRPC.

The constructor only stores its config; :meth:`ShardServer.start` binds the port,
registers the parameter-server, health (``grpc.health.v1``) and reflection services, and
marks the shard SERVING; :meth:`ShardServer.stop` marks it NOT_SERVING and lets in-flight
calls finish within the grace period. Usable as a context manager. Thread-safe.
"""

from __future__ import annotations

import logging
import threading
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ps._proto import ps_pb2
from ps.config import ServerConfig
from ps.errors import UnavailableError
from ps.service import SERVICE_NAME, ParameterServerService
from ps.shard import Shard

log = logging.getLogger(__name__)


def channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    """gRPC options shared by servers and clients: the message size limit both ways."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]


class ShardServer:
    def __init__(self, config: ServerConfig) -> None:
        config.validate()
        self.config = config
        self.shard = Shard(config)
        self._server: grpc.Server | None = None
        self._health: health.HealthServicer | None = None
        self._port: int | None = None
        self._stopped = threading.Event()
        self._state = "new"

    @property
    def port(self) -> int:
        """The bound port (the OS's choice when the config said 0). Raises before start."""
        if self._port is None:
            raise RuntimeError("ShardServer is not started")
        return self._port

    @property
    def address(self) -> str:
        host = self.config.host
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    def start(self) -> ShardServer:
        """Bind and serve. Does not block. Raises UnavailableError if the port cannot be bound."""
        if self._state != "new":
            raise RuntimeError("ShardServer cannot be restarted; make a new one")
        cfg = self.config
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=cfg.threads, thread_name_prefix="ps-shard"),
            options=channel_options(cfg.max_message_bytes) + [("grpc.so_reuseport", 0)],
            maximum_concurrent_rpcs=cfg.threads * 4,
        )
        server.add_generic_rpc_handlers((ParameterServerService(self.shard).handler(),))
        self._health = health.HealthServicer(experimental_non_blocking=True)
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
            port = server.add_insecure_port(target)
        except RuntimeError as exc:
            raise UnavailableError(f"cannot bind {target}: {exc}") from exc
        if port == 0:
            raise UnavailableError(f"cannot bind {target}")
        server.start()
        self._server, self._port, self._state = server, port, "serving"
        for service in ("", SERVICE_NAME):
            self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        log.info("shard serving on %s (mode %s)", self.address, cfg.mode.value)
        return self

    def stop(self, grace_s: float | None = None) -> None:
        """Go NOT_SERVING, finish in-flight calls within the grace period, release the port.

        Blocks until stopped. Idempotent.
        """
        if self._state != "serving":
            self._state = "stopped"
            self._stopped.set()
            return
        self._state = "stopping"
        assert self._health is not None and self._server is not None
        self._health.enter_graceful_shutdown()
        self._server.stop(self.config.grace_s if grace_s is None else grace_s).wait()
        self._state = "stopped"
        self._stopped.set()
        log.info("shard on %s stopped", self.address)

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until :meth:`stop` finished; returns False if ``timeout_s`` passed first."""
        return self._stopped.wait(timeout_s)

    def __enter__(self) -> ShardServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
