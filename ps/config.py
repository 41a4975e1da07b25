"""Configuration of one server shard, as a frozen dataclass.

Only the command line (``launcher/``) reads argv and ``PS_*`` environment variables; it
builds a :class:`ServerConfig` and hands it to :class:`ps.server.ShardServer`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ps.consistency import Mode

#: the largest gRPC message a server accepts or sends. Clients split bigger transfers
#: into several messages, so a table of any size moves within this limit.
DEFAULT_MAX_MESSAGE_BYTES = 64 << 20


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
    nonfinite: str = "refuse"        # refuse | allow: NaN/Inf gradients
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    threads: int = 16                # gRPC handler threads (concurrent calls in flight)
    grace_s: float = 5.0             # on stop, how long in-flight calls may finish

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
        if self.nonfinite not in ("refuse", "allow"):
            raise ValueError(f"nonfinite must be refuse or allow, got {self.nonfinite!r}")
        if self.max_message_bytes < 1 << 20:
            raise ValueError("max-message-bytes must be at least 1 MiB")
        if self.threads < 2:
            raise ValueError("threads must be >= 2")
