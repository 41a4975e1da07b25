"""Configuration of one server shard, as a frozen dataclass.

Only the command line (``launcher/``) reads argv and ``PS_*`` environment variables; it
builds a :class:`ServerConfig` and hands it to :class:`ps.serving.server.ShardServer`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from ps.protocol.channel import DEFAULT_MAX_MESSAGE_BYTES
from ps.shard.consistency import Mode


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"          # loopback unless told otherwise
    port: int = 0                    # 0: the OS picks; ShardServer.port tells which
    mode: Mode = Mode.ASYNC
    staleness: int = 0               # ssp only: how many clocks a worker may run ahead
    num_workers: int = 0             # sync/ssp: steps wait until this many registered; 0 = no wait
    sync_timeout_s: float = 60.0     # the longest a push or pull waits on other workers
    shard_index: int | None = None   # None: adopt what the first client says
    num_shards: int | None = None
    nonfinite: str = "refuse"        # refuse | skip | allow: NaN/Inf gradients (skip: drop the push, warn)
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    threads: int = 16                # gRPC handler threads (concurrent calls in flight)
    grace_s: float = 5.0             # on stop, how long in-flight calls may finish
    uds: str | None = None           # also serve gRPC on this unix socket path ("unix:PATH" for clients)
    local_plane: bool = True         # same-host workers may move tensors through shared memory
    stream_plane: bool = True        # other hosts may move tensors over raw TCP (ps.serving.stream_plane); not with TLS
    stream_port: int = 0             # the stream plane's TCP port on host; 0: the OS picks
    metrics_port: int = 0            # > 0: serve Prometheus metrics on this HTTP port (ps.metrics.shard_metrics); 0 = off
    metrics_host: str | None = None  # address for the metrics port; None: the same as host
    # -- fault tolerance and safety (docs/failure-semantics.md) --
    clip_norm: float = 0.0           # > 0: scale each pushed block's gradient to L2 norm <= this
    replicas_to_aggregate: int = 0   # sync: apply a step once this many workers contributed; 0 = all live
    lease_s: float = 30.0            # a worker silent this long (no call, no heartbeat) leaves; 0 = never
    max_workers: int = 4096          # worker ids a shard keeps track of; more registrations: RESOURCE_EXHAUSTED
    max_memory_bytes: int | None = None  # bytes of tables (with optimizer state) a shard may hold; None: half
    #                                      the machine's memory (ps.shard.memory_budget); more: RESOURCE_EXHAUSTED
    checkpoint_dir: str | None = None   # where checkpoints go (one sub-directory per checkpoint tag)
    checkpoint_every_s: float = 0.0  # > 0: also checkpoint periodically, in seconds
    keep_checkpoints: int = 3        # this shard keeps its newest K checkpoints
    restore: bool = False            # on start, load the newest valid checkpoint from checkpoint_dir
    allow_empty_restore: bool = False  # restore: start empty when no valid checkpoint exists (else refuse)
    restore_tag: str | None = None   # ... or exactly this one (every shard the same: a consistent rollback)
    auth_token: str = field(default="", repr=False)  # non-empty: every call but health needs it
    tls_cert: str | None = None      # PEM files: serve TLS with this certificate chain and key
    tls_key: str | None = None
    tls_client_ca: str | None = None  # PEM file: require client certificates signed by this CA
    faults: str = ""                 # test only: injected faults, see ps.serving.faults

    def __post_init__(self) -> None:
        # a mode given by name ("sync") is the Mode: compared by identity everywhere, a string
        # would match none of them and give a shard that follows no mode's rules
        if not isinstance(self.mode, Mode):
            try:
                object.__setattr__(self, "mode", Mode(self.mode))
            except ValueError:
                raise ValueError(f"mode must be one of {', '.join(m.value for m in Mode)}, got {self.mode!r}") from None

    def validate(self) -> None:
        """Raises ValueError naming the first bad field."""
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if self.staleness < 0 or self.num_workers < 0:
            raise ValueError("staleness and num-workers must be >= 0")
        if self.sync_timeout_s <= 0:
            raise ValueError(f"sync-timeout must be > 0 seconds, got {self.sync_timeout_s}")
        if (self.shard_index is None) != (self.num_shards is None):
            raise ValueError("give both shard-index and num-shards, or neither")
        if self.num_shards is not None and not 0 <= self.shard_index < self.num_shards:
            raise ValueError(f"shard-index {self.shard_index} out of range for {self.num_shards} shards")
        if self.nonfinite not in ("refuse", "skip", "allow"):
            raise ValueError(f"nonfinite must be refuse, skip or allow, got {self.nonfinite!r}")
        self._validate_fault_tolerance()
        if self.max_message_bytes < 1 << 20:
            raise ValueError("max-message-bytes must be at least 1 MiB")
        if not 0 <= self.metrics_port <= 65535 or (self.metrics_port and self.metrics_port == self.port):
            raise ValueError(f"metrics-port must be in [0, 65535] and not the gRPC port, got {self.metrics_port}")
        if not 0 <= self.stream_port <= 65535 or (self.stream_port and
                                                  self.stream_port in (self.port, self.metrics_port)):
            raise ValueError(f"stream-port must be in [0, 65535] and not another port of the server, "
                             f"got {self.stream_port}")
        if self.threads < 2:
            raise ValueError("threads must be >= 2")

    def _validate_fault_tolerance(self) -> None:
        """The checkpoint, lease, auth, TLS and fault fields; raises ValueError."""
        if not (math.isfinite(self.clip_norm) and self.clip_norm >= 0):
            raise ValueError(f"clip-norm must be finite and >= 0, got {self.clip_norm}")
        if self.replicas_to_aggregate < 0:
            raise ValueError("replicas-to-aggregate must be >= 0")
        if self.num_workers and self.replicas_to_aggregate > self.num_workers:
            raise ValueError(f"replicas-to-aggregate {self.replicas_to_aggregate} exceeds num-workers {self.num_workers}")
        if self.max_workers < 1:
            raise ValueError(f"max-workers must be >= 1, got {self.max_workers}")
        if self.max_memory_bytes is not None and self.max_memory_bytes < 1:
            raise ValueError(f"max-memory must be at least one byte, got {self.max_memory_bytes}")
        if not (math.isfinite(self.lease_s) and self.lease_s >= 0):
            raise ValueError(f"lease must be finite and >= 0 seconds, got {self.lease_s}")
        if not (math.isfinite(self.checkpoint_every_s) and self.checkpoint_every_s >= 0):
            raise ValueError(f"checkpoint-every must be finite and >= 0 seconds, got {self.checkpoint_every_s}")
        if self.keep_checkpoints < 1:
            raise ValueError(f"keep-checkpoints must be >= 1, got {self.keep_checkpoints}")
        if (self.checkpoint_every_s or self.restore) and not self.checkpoint_dir:
            raise ValueError("checkpoint-every and restore need a checkpoint-dir")
        if self.restore_tag and not self.restore:
            raise ValueError("restore-tag needs restore")
        if self.restore_tag and not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$", self.restore_tag):
            raise ValueError(f"restore-tag {self.restore_tag!r} is not a checkpoint tag")
        if self.restore and self.num_shards is None:
            raise ValueError("restore needs shard-index and num-shards: the blocks a shard owns depend on them")
        if self.auth_token and (len(self.auth_token) > 4096 or not self.auth_token.isprintable()
                                or any(c.isspace() for c in self.auth_token)):
            raise ValueError("the auth token must be at most 4096 printable characters without spaces")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("give both tls-cert and tls-key, or neither")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls-client-ca needs tls-cert and tls-key")
        from ps.serving.faults import FaultPlan  # local import: faults is test machinery

        FaultPlan.parse(self.faults)
