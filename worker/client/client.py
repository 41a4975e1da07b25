"""``Client``: one worker's connection to the whole cluster.

>>> with Client(["127.0.0.1:50051", "127.0.0.1:50052"]) as ps:     # doctest: +SKIP
...     ps.create("w", shape=(64, 10), init="zeros", optimizer="sgd", lr=0.1)
...     params = ps.pull(["w"])          # dict[str, np.ndarray]
...     ps.push({"w": grad})             # exactly once, even when retried

The client knows where every block lives (stable hashing, :mod:`ps.tables.placement`), so it
sends each shard only that shard's blocks, one call per shard (more for transfers past
``part_bytes``), all shards at once. Arrays in and out are NumPy; errors are
:mod:`ps.errors` exceptions, never ``grpc.RpcError``.

A ``Client`` is one worker. It is not thread-safe: use one per thread (several may live
in one process, each with its own worker id).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ps._proto import ps_pb2
from ps.errors import AbortedError
from ps.protocol.channel import DEFAULT_MAX_MESSAGE_BYTES
from ps.tables.optim import OptimizerSpec
from ps.tables.sparse_spec import SparseTableSpec
from ps.tables.spec import AUTO_BLOCK_ELEMS, InitSpec, TableSpec
from worker.client.cluster import Cluster
from worker.client.membership import Membership
from worker.client.pull_cache import PullCache
from worker.client.shard_status import shard_status
from worker.client.step_engine import StepEngine
from worker.client.step_plan import StepPlanner
from worker.client.table_directory import TableDirectory
from worker.client.transport import RetryPolicy
from worker.planes.grpc_plane import GrpcPlane
from worker.planes.local_plane import LocalPlane
from worker.planes.stream_plane import StreamPlane

log = logging.getLogger(__name__)

#: tries of a cluster checkpoint when a shard had already passed the chosen sync version
CHECKPOINT_TRIES = 4


class Client:
    """A worker of the cluster at ``servers`` (the same ordered list on every worker).

    The constructor does no I/O; :meth:`connect` (or ``with``) connects and registers.

    Args:
        servers: ``"host:port"`` addresses, or one comma-separated string.
        worker_id: ask for this id (e.g. the worker's rank); None: the cluster assigns one.
        timeout_s: deadline of each call that does not wait on other workers.
        wait_timeout_s: deadline of each pull or push (seconds), which may wait on other
            workers in sync and ssp modes: overall, its retries on every shard included.
            The servers bound their own waits too (``--sync-timeout``); a wait that ran out
            raises DeadlineExceededError (reason WAIT_EXPIRED) naming the workers waited for.
        connect_timeout_s: how long :meth:`connect` waits for every server to answer.
        part_bytes: transfers to one shard larger than this go as several concurrent calls
            (bytes; at most ``max_message_bytes / 2``). In async mode parts over gRPC and TCP
            are also at most 2 MiB (``worker.client.step_plan.PIPELINE_PART_BYTES``), so that
            the shard updates one while the next arrives.
        observer: read-only client that does not join the quorum (evaluation, tools).
        local: move tensors through shared memory with shards on this machine
            (loopback or ``unix:`` addresses) when they offer it; gRPC otherwise.
        local_part_bytes: like ``part_bytes`` for that same-host path (smaller parts
            pipeline the worker's copies with the shard's work).
        stream: move dense tensors over a raw TCP connection (``ps.serving.stream_plane``, one
            kernel copy per side) with shards not on the same-host path (other
            machines, other network namespaces) when they offer it; parts as over gRPC.
            Any failure there sends the call, with the same sequence number, and that
            shard's later calls over gRPC. Not used with TLS.
            False: gRPC only.
        cache_pulls: keep the last pulled values (one more copy of the pulled tables)
            so that gRPC pulls skip blocks that did not change. The same-host path
            skips unchanged blocks without it.
        token: shared secret sent as ``authorization: Bearer <token>`` on every call
            (servers started with ``--token-file``). Never logged.
        tls_ca: PEM file of the CA that signed the servers' certificates: use TLS.
        tls_cert, tls_key: PEM files of this client's certificate and key (mutual TLS).
        tls_server_name: the name the servers' certificates carry, when it is not the
            host of the addresses.
        heartbeat_s: seconds between heartbeats that keep this worker's lease alive;
            None: a third of the shortest lease the servers announce; 0: none.
        num_workers: the cluster size this worker expects (``ps-worker --num-workers``);
            servers started with another non-zero ``--num-workers`` refuse to register
            it (FailedPreconditionError naming both). 0: not stated, not checked.

    Failures (docs/failure-semantics.md): calls that fail with UNAVAILABLE or
    DEADLINE_EXCEEDED are retried with capped exponential backoff (``retry``) and the
    same sequence numbers; a shard that restarted, or that let this worker's lease
    expire, is joined again under the same id, transparently. In sync mode, when a shard
    came back from a checkpoint the cluster rolls back to the newest cluster checkpoint
    every shard holds, and the step in flight is retried from a fresh pull.

    Parts: :class:`~worker.client.cluster.Cluster` (the channels),
    :class:`~worker.client.table_directory.TableDirectory` (tables and placement),
    :class:`~worker.client.membership.Membership` (registration, heartbeats, rejoins,
    rollbacks), :class:`~worker.client.pull_cache.PullCache` (``cache_pulls``) and
    :class:`~worker.client.step_engine.StepEngine` (steps over the data planes of
    :mod:`worker.planes`).
    """

    def __init__(
        self,
        servers: Sequence[str] | str,
        *,
        worker_id: int | None = None,
        timeout_s: float = 30.0,
        wait_timeout_s: float = 300.0,
        connect_timeout_s: float = 30.0,
        part_bytes: int = 16 << 20,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        retry: RetryPolicy = RetryPolicy(),
        observer: bool = False,
        local: bool = True,
        local_part_bytes: int = 4 << 20,
        stream: bool = True,
        cache_pulls: bool = False,
        token: str | None = None,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        tls_server_name: str | None = None,
        heartbeat_s: float | None = None,
        num_workers: int = 0,
    ) -> None:
        addresses = [a.strip() for a in servers.split(",")] if isinstance(servers, str) else list(servers)
        if not addresses or not all(addresses):
            raise ValueError(f"need at least one server address, got {servers!r}")
        if part_bytes < 1 or part_bytes > max_message_bytes // 2:
            raise ValueError(f"part_bytes must be in [1, max_message_bytes/2], got {part_bytes}")
        if local_part_bytes < 1:
            raise ValueError(f"local_part_bytes must be >= 1, got {local_part_bytes}")
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("give both tls_cert and tls_key, or neither")
        if heartbeat_s is not None and heartbeat_s < 0:
            raise ValueError(f"heartbeat_s must be >= 0, got {heartbeat_s}")
        self.addresses = addresses
        self.timeout_s, self.wait_timeout_s, self.connect_timeout_s = timeout_s, wait_timeout_s, connect_timeout_s
        self.part_bytes, self.local_part_bytes, self.max_message_bytes = part_bytes, local_part_bytes, max_message_bytes
        self.retry, self.observer, self.heartbeat_s = retry, observer, heartbeat_s
        self.local, self.stream, self.cache_pulls = local, stream, cache_pulls
        self.token = token
        self.tls_ca, self.tls_cert, self.tls_key, self.tls_server_name = tls_ca, tls_cert, tls_key, tls_server_name
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        # the parts (no I/O until connect): channels, tables, membership, the data planes, steps
        self._cluster = Cluster(addresses, timeout_s=timeout_s, wait_timeout_s=wait_timeout_s, retry=retry,
                                max_message_bytes=max_message_bytes, token=token, tls_ca=tls_ca, tls_cert=tls_cert,
                                tls_key=tls_key, tls_server_name=tls_server_name)
        self._directory = TableDirectory(self._cluster)
        self._membership = Membership(self._cluster, self._directory, requested_id=worker_id, observer=observer,
                                      heartbeat_s=heartbeat_s, num_workers=num_workers)
        cache = PullCache(self._directory.specs) if cache_pulls else None
        self._local_plane = LocalPlane(wait_timeout_s)
        # TCP payloads: not with TLS (they stay on gRPC's TLS), and little-endian hosts only
        self._stream_plane = (StreamPlane(token, timeout_s, wait_timeout_s, cache)
                              if stream and not tls_ca and sys.byteorder == "little" else None)
        self._planner = planner = StepPlanner(self._directory, len(addresses), part_bytes, local_part_bytes)
        self._engine = StepEngine(self._directory, planner, GrpcPlane(self._cluster, cache), timeout_s=wait_timeout_s,
                                  shared=self._local_plane, reconcile=self._membership.reconcile, observer=observer)
        self._state = "new"

    @property
    def worker_id(self) -> int:
        """This worker's id in the cluster (-1 before connecting, and for an observer)."""
        return self._membership.worker_id

    @property
    def session(self) -> int:
        """Identifies this Client to the shards (kept across its re-registrations): a second
        Client registering under the same worker id fences this one (ps.shard.membership)."""
        return self._membership.session

    @property
    def mode(self) -> str:
        """The cluster's consistency mode: "sync", "async" or "ssp" ("" before connecting)."""
        return self._membership.mode

    @property
    def clock(self) -> int:
        """This worker's step: the one its next push counts for."""
        return self._engine.clock

    @property
    def stats(self) -> dict[str, int]:
        """Counts of push outcomes (applied, accumulated, duplicate, stale) and recoveries
        (rolled_back, rejoined). A fresh dict."""
        rejoined = self._membership.rejoins
        return {**self._engine.stats, **({"rejoined": rejoined} if rejoined else {})}

    def __repr__(self) -> str:  # never shows the token
        return f"Client({self.addresses!r}, worker_id={self.worker_id}, state={self._state!r})"

    # -- lifecycle ----------------------------------------------------------------------

    def connect(self) -> Client:
        """Connect to every server and register as a worker. Blocks (bounded).

        Raises UnavailableError when a server does not answer within
        ``connect_timeout_s``, FailedPreconditionError when the servers disagree about
        the topology or the mode.
        """
        if self._state != "new":
            raise RuntimeError("Client cannot be reconnected; make a new one")
        self._state = "open"
        try:
            self._cluster.open()
            clock, next_seqs = self._membership.join(self.connect_timeout_s)
            planes = self._open_planes()
        except BaseException:
            self.close()
            raise
        self._engine.start(self.worker_id, self.session, self.mode, clock, next_seqs, planes)
        self._directory.on_reshard = self._reshard
        log.info("worker %d moves tensors over: %s", self.worker_id,
                 ", ".join(f"{a} {plane}" for a, plane in zip(self.addresses, self.data_planes())))
        return self

    def _reshard(self, placement) -> None:
        """A resize (a placement map listing other shards): channels to the new shard list,
        registration with the new shards, sequence numbers carried over by address, and the
        fast data planes (shared memory, TCP) offered again for the new list (gRPC for a shard
        that offers neither). Comes between calls, none in flight. Blocks (registration, a
        Status and a connect per shard); raises PSError."""
        old = list(self._cluster.addresses)
        seqs = dict(zip(old, self._engine.next_seqs()))
        self._cluster.retarget(list(placement.addresses))
        fresh = self._membership.reshard(old)
        self.addresses = list(self._cluster.addresses)
        if self._stream_plane is not None:  # it knows shards by their places: forget the old ones
            for shard in range(len(old)):
                self._stream_plane.drop(shard)
        self._local_plane.forget_shards()  # the same, keeping its region and the caller's buffers
        planes = self._open_planes()
        self._engine.reshard([seqs.get(a) or fresh.get(a, 1) for a in self.addresses], planes)
        self._planner.reshard(len(self.addresses))

    def _open_planes(self, offers: list | None = None) -> list:
        """Per shard, the fast data plane that serves it (None: gRPC), among ``offers`` (None:
        every plane this Client may use). Best effort: blocks for one round of Status calls and
        a connect per shard; never raises."""
        if offers is None:
            offers = [p for p in (self._local_plane if self.local else None, self._stream_plane) if p is not None]
        if not offers:
            return []
        try:
            statuses = self._cluster.fan_out("status", [ps_pb2.StatusRequest()] * len(self.addresses))
        except Exception as exc:  # noqa: BLE001 - the fast planes are an optimisation
            log.info("no fast data plane (%s); using gRPC", exc)
            return []
        return [next((p for p in offers if p.offer(i, a, r)), None)
                for i, (a, r) in enumerate(zip(self.addresses, statuses))]

    def data_planes(self) -> list[str]:
        """How each shard's tensors travel, in server order: ``"shared memory"``, ``"tcp"``
        (the TCP data plane beside gRPC) or ``"grpc"``. Does not block."""
        return self._engine.planes()

    def close(self) -> None:
        """Leave the quorum (so sync steps stop waiting for this worker) and disconnect.

        Best effort: a server that cannot be reached is skipped. Idempotent.
        """
        if self._state != "open":
            self._state = "closed"
            return
        self._state = "closed"
        self._membership.leave()  # joins the heartbeat thread first
        self._engine.close()
        self._cluster.close()

    def leave_now(self, timeout_s: float = 3.0) -> list[str]:
        """Leave the cluster from another thread while this client's own thread may be
        blocked in a call, which then fails and unwinds (for signal handlers: ``ps-worker``'s
        first Ctrl-C). The one thread-safe verb; :meth:`close` afterwards is harmless.
        Blocks at most about ``timeout_s``; returns ``"ADDRESS: why"`` per shard that did
        not confirm."""
        return self._membership.leave_now(timeout_s)

    def __enter__(self) -> Client:
        return self.connect()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _require_open(self) -> None:
        if self._state != "open":
            raise RuntimeError("Client is not connected: use connect() or a with-block")

    # -- tables -------------------------------------------------------------------------

    def create(
        self,
        name: str,
        shape: Sequence[int] | int,
        *,
        dtype: str = "float32",
        init: str = "zeros",
        init_scale: float = 0.0,
        seed: int = 0,
        optimizer: str = "sgd",
        lr: float = 0.01,
        block_elems: int = AUTO_BLOCK_ELEMS,
        **optimizer_options: Any,
    ) -> None:
        """Create a dense table on the cluster, or check an existing one is the same.

        ``optimizer`` is sgd | momentum | adagrad | adam, with options such as
        ``momentum=0.9, nesterov=True, beta1, beta2, eps, weight_decay``. ``block_elems`` 0
        (the default) cuts the table into blocks that deal evenly over the shards
        (``ps.tables.spec.balanced_block_elems``; ``docs/placement.md``), or, when the table
        exists alike with another block size, keeps that one. Idempotent.
        Blocks. Raises InvalidArgumentError for a bad spec and AlreadyExistsError when
        the table exists with another spec.
        """
        self._require_open()
        spec = TableSpec(
            name=name,
            shape=(int(shape),) if np.isscalar(shape) else tuple(int(d) for d in shape),
            dtype=np.dtype(dtype).name,
            block_elems=int(block_elems),
            optimizer=OptimizerSpec.from_options(optimizer, lr, **optimizer_options),
            init=InitSpec(kind=init, scale=float(init_scale), seed=int(seed)),
        )
        self._directory.create(spec, any_block_size=int(block_elems) == AUTO_BLOCK_ELEMS)

    def spec(self, name: str) -> TableSpec:
        """The spec of table ``name``, asking the cluster if this client has not seen it.

        Raises NotFoundError for a table that does not exist.
        """
        return self._directory.spec(name)

    # -- pull and push ------------------------------------------------------------------

    def pull(self, names: Iterable[str] | str,
             out: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Current values of the named tables, as arrays of their shape and dtype.

        The arrays are fresh, or the caller's own ``out[name]`` (writable, C-contiguous,
        the table's shape and dtype) filled in place: reusing them each step saves the
        cost of fresh large allocations. In sync mode waits until this worker's step is
        applied; in ssp mode waits while the slowest worker is more than the staleness
        bound behind. Blocks; bounded by ``wait_timeout_s``. Raises NotFoundError,
        InvalidArgumentError (a bad ``out``), DeadlineExceededError (naming the workers
        waited for), UnavailableError.
        """
        self._require_open()
        return self._engine.pull(names, out)

    def push_pull(self, grads: Mapping[str, np.ndarray], names: Iterable[str] | str | None = None,
                  out: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """One training step in one round trip per part: :meth:`push`, then :meth:`pull`.

        ``names`` defaults to the tables in ``grads``. Same semantics, errors and
        exactly-once guarantee as ``push(grads)`` followed by ``pull(names, out)``; each
        part pulls the blocks it pushed, so the values include this worker's update.
        """
        self._require_open()
        return self._engine.push_pull(grads, names, out)

    def buffers(self, names: Iterable[str] | str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """``(grads, weights)``: arrays for a step that copies nothing on the worker side.

        ``grads[name]`` is a writable array of the table's shape to compute gradients
        into (e.g. ``np.matmul(..., out=grads["w"])``); ``push(grads)`` and
        ``push_pull(grads)`` then send it without copying it. ``weights[name]`` is a
        read-only array that ``pull(names, out=weights)`` and ``push_pull(grads, names,
        out=weights)`` refresh in place: with shards on this machine they write straight
        into it through shared memory, and blocks that did not change are not copied at
        all. Both live in this worker's shared-memory region; with remote shards they
        are ordinary memory and the same calls copy. Call once and reuse every step.
        """
        self._require_open()
        return self._engine.buffers(names)

    def push(self, grads: Mapping[str, np.ndarray],
             rows: Mapping[str, tuple[Any, np.ndarray]] | None = None) -> None:
        """Send gradients; each shard gets its blocks. Exactly once, even when retried.

        Advances this worker's clock by one. In sync mode the gradient counts towards
        the current step (a gradient for a step already applied is dropped and counted
        in ``stats["stale"]``; the clock then jumps to the cluster's). Blocks until every
        shard acknowledged. Raises InvalidArgumentError for a wrong shape or dtype
        (checked before anything is sent), NotFoundError, DeadlineExceededError, and
        FailedPreconditionError with reason FENCED once a newer Client took this worker id
        over: its ``applied_shards`` names the shards that applied the push all the same (it
        reached them before the takeover did; empty: applied on no shard).
        ``rows`` (``{sparse table: (ids, grads)}``) go in the same step as ``grads``:
        one clock tick for the whole model (see :meth:`push_rows`).
        """
        self._require_open()
        self._engine.push(grads, rows)

    # -- checkpoints ----------------------------------------------------------------------

    def checkpoint(self, tag: str | None = None) -> dict[str, Any]:
        """Checkpoint the whole cluster under one ``tag`` (default ``ckpt-<UTC time>``).

        Every shard writes its state into its checkpoint directory. In sync mode all
        shards write the same step: the highest version over the shards, each shard
        writing when it reaches it (pushes for later steps wait meanwhile). Such a
        checkpoint restores onto any number of shards. Blocks, bounded by
        ``wait_timeout_s``. Returns ``{"tag", "version" (sync; None otherwise),
        "paths", "versions"}``. Raises FailedPreconditionError when a server has no
        checkpoint directory, InvalidArgumentError for a bad tag, DeadlineExceededError.
        """
        self._require_open()
        # the servers check the tag; the default names the time, to the millisecond
        tag = tag or f"ckpt-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}.{int(time.time() * 1000) % 1000:03d}Z"
        for attempt in range(CHECKPOINT_TRIES):
            at = max(s["version"] for s in self.status()) if self.mode == "sync" else 0
            try:
                replies = self._cluster.fan_out("checkpoint", [ps_pb2.CheckpointRequest(at_version=at, tag=tag)]
                                                * len(self.addresses), wait=True)
            except AbortedError as exc:  # a shard moved past `at` meanwhile: choose again
                if attempt == CHECKPOINT_TRIES - 1:
                    raise
                log.info("checkpoint %s at version %d missed (%s); trying again", tag, at, exc)
                continue
            return {"tag": tag, "version": at if at else None, "paths": [r.path for r in replies],
                    "versions": [r.version for r in replies]}
        raise AssertionError("unreachable")

    # -- status -------------------------------------------------------------------------

    def status(self) -> list[dict[str, Any]]:
        """Each shard's status, in server order: mode, version, workers, tables, counters.

        Blocks (bounded by ``timeout_s``).
        """
        self._require_open()
        replies = self._cluster.fan_out("status", [ps_pb2.StatusRequest()] * len(self.addresses))
        return [shard_status(a, r) for a, r in zip(self.addresses, replies)]

    # -- sparse tables --------------------------------------------------------------------

    def create_sparse(self, name: str, dim: int, *, dtype: str = "float32", init: str = "zeros",
                      init_scale: float = 0.0, seed: int = 0, optimizer: str = "sgd", lr: float = 0.01,
                      max_rows: int = 0, eviction: str = "lru", admit_after: int = 0, num_rows: int = 0,
                      **optimizer_options: Any) -> None:
        """Create a sparse table of rows of width ``dim`` keyed by int64 ids (idempotent).

        Rows are created on their first push, initialised from ``init`` (zeros | normal
        with std ``init_scale`` | uniform on [-init_scale, init_scale]) as a function of
        ``(seed, name, id)`` only. ``optimizer`` is sgd | momentum | adagrad | adam (per-row
        state). ``max_rows`` > 0 bounds the rows each shard stores, evicting ``eviction``
        (lru | lfu) victims; ``admit_after`` > 1 stores a row only from its
        ``admit_after``-th push (earlier pushes to it are dropped and counted). ``num_rows``
        > 0 declares the ids to lie in ``[0, num_rows)`` (an embedding of that many rows:
        other ids are refused, and an export writes the table as one dense array). Blocks.
        Raises InvalidArgumentError for a bad spec, AlreadyExistsError when the name
        exists with another spec or as a dense table.
        """
        self._require_open()
        self._directory.create(SparseTableSpec(
            name=name, dim=int(dim), dtype=np.dtype(dtype).name,
            optimizer=OptimizerSpec.from_options(optimizer, lr, **optimizer_options),
            init=InitSpec(kind=init, scale=float(init_scale), seed=int(seed)),
            max_rows=int(max_rows), eviction=eviction, admit_after=int(admit_after), num_rows=int(num_rows),
        ))

    def pull_rows(self, name: str, ids: Any) -> np.ndarray:
        """Rows ``ids`` (1-D integers, any order, repeats allowed) as a new ``(len(ids), dim)`` array.

        Rows never pushed read as their initial values. In sync mode waits for this
        worker's step like :meth:`pull`. Blocks; bounded by ``wait_timeout_s``. Raises
        InvalidArgumentError (non-integer ids), NotFoundError (unknown table),
        FailedPreconditionError (a dense table), DeadlineExceededError.
        """
        self._require_open()
        return self._engine.pull_rows(name, ids)

    def push_rows(self, name: str, ids: Any, grads: np.ndarray) -> None:
        """Push row gradients ``grads`` of shape ``(len(ids), dim)`` for rows ``ids``: one step.

        Repeated ids are summed first; only these rows change. Exactly once; advances the
        clock like :meth:`push` (use ``push(grads, rows=...)`` to push dense and sparse
        gradients as one step). Blocks until every shard acknowledged. Raises
        InvalidArgumentError (row width, dtype, lengths, non-integer ids; checked before
        anything is sent), NotFoundError, FailedPreconditionError, DeadlineExceededError.
        """
        self._require_open()
        self._engine.push(None, {name: (ids, grads)})
