"""``Checkpointer``: when a shard writes checkpoints, and keeping the newest K.

A shard checkpoints on request (the Checkpoint call, possibly at a given sync version),
every ``checkpoint_every_s`` seconds (a background thread this object owns), and once
more when the server stops (:meth:`Checkpointer.final`). Checkpoints are serialized by
one lock; each captures a consistent state (``Recovery.capture``), writes it atomically
(:mod:`ps.checkpoint`) and deletes this shard's checkpoints beyond the newest
``keep_checkpoints``. The constructor does no I/O; :meth:`start` / :meth:`stop`.
Thread-safe.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from ps.checkpoint import state as checkpoint
from ps.checkpoint.files import why_none
from ps.config import ServerConfig
from ps.shard.consistency import Mode
from ps.errors import DeadlineExceededError, FailedPreconditionError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Written:
    """A checkpoint just written: its manifest path, the shard version and epoch it holds."""

    path: str
    version: int
    epoch: int
    tag: str


class Checkpointer:
    def __init__(self, shard, config: ServerConfig, hook: checkpoint.WriteHook | None = None) -> None:
        self.shard = shard
        self.config = config
        self._hook = hook
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last: Written | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.config.checkpoint_dir)

    def start(self) -> Checkpointer:
        """Start the periodic thread when ``checkpoint_every_s`` > 0. Does not block."""
        if self.enabled and self.config.checkpoint_every_s > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ps-checkpoint", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.config.checkpoint_every_s):
            try:
                self.checkpoint(self._own_tag("auto"))
            except FailedPreconditionError as exc:
                log.info("periodic checkpoint skipped: %s", exc)
            except Exception:  # noqa: BLE001 - the next period tries again; the old checkpoints stay
                log.exception("periodic checkpoint failed; the previous checkpoints are intact")

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the periodic thread (waits for a checkpoint being written). Idempotent."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

    def _own_tag(self, prefix: str) -> str:
        topology = self.shard.topology
        return checkpoint.new_tag(prefix) + (f"-s{topology[0]}" if topology else "")

    def checkpoint(self, tag: str | None = None, at_version: int = 0, timeout_s: float | None = None,
                   cluster: bool = False) -> Written:
        """Write one checkpoint now (sync, ``at_version`` > 0: when the shard reaches it).

        ``cluster``: the tag is shared by every shard (a cluster checkpoint, see
        ``Client.checkpoint``); sync rollbacks return only to such checkpoints.

        Blocks: waits for a checkpoint in progress, captures, writes. ``timeout_s`` bounds
        the waits (default ``sync_timeout_s``). Raises FailedPreconditionError without a
        checkpoint directory, before the topology is known or when values are non-finite;
        AbortedError when the shard is past ``at_version``; DeadlineExceededError;
        InvalidArgumentError for a bad tag; OSError when the disk fails.
        """
        if not self.enabled:
            raise FailedPreconditionError("this server has no checkpoint directory (--checkpoint-dir)")
        tag = checkpoint.check_tag(tag) if tag else self._own_tag("ckpt")
        timeout_s = self.config.sync_timeout_s if timeout_s is None else min(timeout_s, self.config.sync_timeout_s)
        start = time.monotonic()
        if not self._lock.acquire(timeout=timeout_s):
            raise DeadlineExceededError(f"another checkpoint is still being written after {timeout_s:g} s")
        try:
            left = max(0.0, timeout_s - (time.monotonic() - start))
            state = checkpoint.capture(self.shard, tag, at_version, left)
            state.cluster = cluster
            path = checkpoint.write(self.config.checkpoint_dir, state, self._hook)
            removed = checkpoint.prune(self.config.checkpoint_dir, state.shard_index, state.num_shards,
                                       self.config.keep_checkpoints)
            self.last = Written(path, state.version, state.epoch, tag)
            log.info("checkpoint %s written at version %d (%.2f s)%s", path, state.version,
                     time.monotonic() - start, f"; removed {', '.join(removed)}" if removed else "")
            return self.last
        finally:
            self._lock.release()

    def final(self) -> Written | None:
        """The checkpoint written when the server stops (its calls already finished).

        None when checkpoints are off or there is nothing to save yet. Raises what
        :meth:`checkpoint` raises otherwise.
        """
        if not self.enabled or self.shard.topology is None:
            return None
        return self.checkpoint(self._own_tag("final"))

    def rollback(self, rollback_id: str, tag: str | None, version: int, timeout_s: float) -> bool:
        """Sync rollback while serving (the Restore call): load checkpoint ``tag`` and make it
        the shard's state (``Recovery.rollback``), once per ``rollback_id``. ``tag`` None: no
        rollback, only stop awaiting one. Returns whether the state was replaced.

        Blocks on disk I/O and (bounded) on pushes being applied; serialized with
        checkpoints. Raises FailedPreconditionError when the checkpoint is missing, invalid
        or holds another version; DeadlineExceededError.
        """
        if self.shard.recovery.handled(rollback_id):
            return False
        start = time.monotonic()
        if not self._lock.acquire(timeout=timeout_s):
            raise DeadlineExceededError(f"a checkpoint is still being written after {timeout_s:g} s")
        try:
            if tag is None:
                return self.shard.recovery.rollback(rollback_id, timeout_s)
            cfg = self.config
            topology = self.shard.topology
            if not self.enabled or topology is None:
                raise FailedPreconditionError("this shard has no checkpoints to roll back to")
            state = checkpoint.load(cfg.checkpoint_dir, topology[0], topology[1], checkpoint.check_tag(tag))
            if state is None or state.version != version:
                raise FailedPreconditionError(f"shard {topology[0]} has no valid checkpoint {tag!r} at version "
                                              f"{version}")

            left = max(0.0, timeout_s - (time.monotonic() - start))
            done = self.shard.recovery.rollback(rollback_id, left, state,
                                                lambda: checkpoint.install_tables(self.shard, state))
            if done:
                log.warning("rolled back to checkpoint %s (version %d, epoch %d) for %s", tag, version,
                            self.shard.epoch, rollback_id)
            return done
        finally:
            self._lock.release()

    def restore(self) -> checkpoint.ShardState | None:
        """Load the newest valid checkpoint (or ``restore_tag``) into the shard, before
        serving. Blocks on I/O. Returns what was restored, or None (with a warning) when
        nothing valid exists and ``allow_empty_restore`` says to start empty. Raises
        FailedPreconditionError when nothing valid exists otherwise (serving an empty
        shard would silently reset the model: workers re-create its tables at their
        initial values), and when ``restore_tag`` is not there or not valid (a named
        checkpoint is never silently replaced by another).
        """
        cfg = self.config
        state = checkpoint.load(cfg.checkpoint_dir, cfg.shard_index, cfg.num_shards, cfg.restore_tag)
        if state is None and cfg.restore_tag:
            raise FailedPreconditionError(f"no valid checkpoint {cfg.restore_tag!r} for shard {cfg.shard_index} "
                                          f"of {cfg.num_shards} in {cfg.checkpoint_dir}")
        if state is None and not cfg.allow_empty_restore:
            raise FailedPreconditionError(
                f"--restore: no valid checkpoint for shard {cfg.shard_index} of {cfg.num_shards} in "
                f"{cfg.checkpoint_dir} ({why_none(cfg.checkpoint_dir)}); refusing to start with an empty "
                "shard (that would reset the model). To start empty on purpose (a first start), add "
                "--allow-empty-restore (PS_ALLOW_EMPTY_RESTORE=1)")
        if state is None:
            log.warning("no valid checkpoint in %s: starting with an empty shard (allow-empty-restore)",
                        cfg.checkpoint_dir)
            return None
        checkpoint.install(self.shard, state)
        # in sync mode the other shards may be at another step: the first worker to call decides
        # whether the cluster rolls back (docs/failure-semantics.md section 3)
        self.shard.recovery.restored(state.tag, state.version, cfg.mode is Mode.SYNC and not cfg.restore_tag)
        if state.mode not in (cfg.mode.value, "mixed"):
            log.warning("checkpoint %s was taken in %s mode; this server runs %s", state.tag, state.mode,
                        cfg.mode.value)
        log.info("restored checkpoint %s (version %d, epoch %d -> %d) from %s", state.tag, state.version,
                 state.epoch, self.shard.epoch, ", ".join(state.sources))
        return state
