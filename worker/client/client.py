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
import secrets
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ps._proto import ps_pb2
from ps.protocol.channel import DEFAULT_MAX_MESSAGE_BYTES
from ps.tables.optim import OptimizerSpec
from ps.tables.spec import DEFAULT_BLOCK_ELEMS, InitSpec, TableSpec
from ps.tables.sparse_spec import SparseTableSpec
from worker.client import dense_step, recovery, registration, sparse_client, table_directory
from worker.planes import stream_step
from worker.client.shard_status import shard_status
from worker.client.transport import RetryPolicy, ShardChannel, call, fan_out

log = logging.getLogger(__name__)


class Client:
    """A worker of the cluster at ``servers`` (the same ordered list on every worker).

    The constructor does no I/O; :meth:`connect` (or ``with``) connects and registers.

    Args:
        servers: ``"host:port"`` addresses, or one comma-separated string.
        worker_id: ask for this id (e.g. the worker's rank); None: the cluster assigns one.
        timeout_s: deadline of each call that does not wait on other workers.
        wait_timeout_s: deadline of pulls and pushes, which may wait on other workers
            in sync and ssp modes (the servers bound their own waits too).
        connect_timeout_s: how long :meth:`connect` waits for every server to answer.
        part_bytes: transfers to one shard larger than this go as several concurrent calls.
        observer: read-only client that does not join the quorum (evaluation, tools).
        local: move tensors through shared memory with shards on this machine
            (loopback or ``unix:`` addresses) when they offer it; gRPC otherwise.
        local_part_bytes: like ``part_bytes`` for that same-host path (smaller parts
            pipeline the worker's copies with the shard's work).
        stream: move dense tensors over a raw TCP connection (``ps.serving.stream_plane``, one
            kernel copy per side) with shards not on the same-host path (other
            machines, other network namespaces) when they offer it; parts are
            ``part_bytes`` big. Any failure there sends the call, with the same
            sequence number, and that shard's later calls over gRPC. Not used with TLS.
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

    Failures (docs/failure-semantics.md): calls that fail with UNAVAILABLE or
    DEADLINE_EXCEEDED are retried with capped exponential backoff (``retry``) and the
    same sequence numbers; a shard that restarted, or that let this worker's lease
    expire, is joined again under the same id, transparently. In sync mode, when a shard
    came back from a checkpoint the cluster rolls back to the newest cluster checkpoint
    every shard holds, and the step in flight is retried from a fresh pull
    (``worker.client.recovery.run_step``).
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
    ) -> None:
        addresses = [a.strip() for a in servers.split(",")] if isinstance(servers, str) else list(servers)
        if not addresses or not all(addresses):
            raise ValueError(f"need at least one server address, got {servers!r}")
        if part_bytes < 1 or part_bytes > max_message_bytes // 2:
            raise ValueError(f"part_bytes must be in [1, max_message_bytes/2], got {part_bytes}")
        self.addresses = addresses
        self.timeout_s = timeout_s
        self.wait_timeout_s = wait_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.part_bytes = part_bytes
        self.max_message_bytes = max_message_bytes
        self.retry = retry
        self.observer = observer
        if local_part_bytes < 1:
            raise ValueError(f"local_part_bytes must be >= 1, got {local_part_bytes}")
        self.local = local
        self.local_part_bytes = local_part_bytes
        self.stream = stream
        self._stream: list = []                     # per shard: worker.planes.stream_plane.StreamChannel or None
        self.cache_pulls = cache_pulls
        self._local: list = []                      # per shard: worker.planes.local_plane.LocalChannel or None
        self._known_values: dict[str, np.ndarray] = {}   # cache_pulls: last pulled values per table
        self._known_versions: dict[tuple[str, int], int] = {}  # ... and their block versions
        self._known_tokens: dict[int, str] = {}     # ... and the shard state they belong to
        self._region = None                         # worker.planes.local_plane.LocalRegion (shared memory)
        self._region_generation = 0
        self._local_tokens: dict[int, str] = {}     # per shard: state token of its last data-plane pull
        self._weights: dict[tuple[str, int], np.ndarray] = {}  # buffers() weights: writable aliases
        self._requested_id = worker_id
        #: identifies this Client to the shards (kept across its re-registrations): a second
        #: Client registering under the same worker id fences this one (ps.shard.membership)
        self.session = secrets.randbits(63) | 1
        self._channels: list[ShardChannel] = []
        self._specs: dict[str, TableSpec] = {}
        self._placement: dict[str, list[list[int]]] = {}  # table -> shard -> owned blocks
        self._sparse_specs: dict[str, SparseTableSpec] = {}  # sparse tables (worker.client.sparse_client)
        self._next_seq: list[int] = []
        self.worker_id: int = -1
        self.mode: str = ""
        self.clock: int = 0
        self.stats = {"applied": 0, "accumulated": 0, "duplicate": 0, "stale": 0}
        self._state = "new"
        # safety and recovery (worker.client.recovery): token, TLS, heartbeats
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("give both tls_cert and tls_key, or neither")
        if heartbeat_s is not None and heartbeat_s < 0:
            raise ValueError(f"heartbeat_s must be >= 0, got {heartbeat_s}")
        self.token = token
        self.tls_ca, self.tls_cert, self.tls_key, self.tls_server_name = tls_ca, tls_cert, tls_key, tls_server_name
        self.heartbeat_s = heartbeat_s

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
        self._channels = recovery.make_channels(self)
        self._state = "open"
        try:
            replies = registration.register_everywhere(self)
        except BaseException:
            self.close()
            raise
        registration.adopt(self, replies)
        recovery.after_connect(self, replies)
        dense_step.attach_local(self)
        stream_step.attach_stream(self)
        log.info("worker %d moves tensors over: %s", self.worker_id,
                 ", ".join(f"{ch.address} {plane}" for ch, plane in zip(self._channels, dense_step.data_planes(self))))
        return self

    def close(self) -> None:
        """Leave the quorum (so sync steps stop waiting for this worker) and disconnect.

        Best effort: a server that cannot be reached is skipped. Idempotent.
        """
        if self._state != "open":
            self._state = "closed"
            return
        self._state = "closed"
        recovery.before_close(self)  # joins the heartbeat thread first
        if self.worker_id >= 0 and not self.observer:
            try:
                leave = ps_pb2.LeaveRequest(worker_id=self.worker_id, session=self.session)
                fan_out([(ch, ch.leave, leave) for ch in self._channels], min(self.timeout_s, 5.0))
            except Exception as exc:  # leaving is a courtesy; the lease covers the rest
                log.warning("worker %d could not leave cleanly: %s", self.worker_id, exc)
        dense_step.close_local(self)
        stream_step.close_stream(self)
        for ch in self._channels:
            ch.close()

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
        block_elems: int = DEFAULT_BLOCK_ELEMS,
        **optimizer_options: Any,
    ) -> None:
        """Create a dense table on the cluster, or check an existing one is the same.

        ``optimizer`` is sgd | momentum | adagrad | adam, with options such as
        ``momentum=0.9, nesterov=True, beta1, beta2, eps, weight_decay``. Idempotent.
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
        spec.validate()
        proto = spec.to_proto()

        def request(i: int) -> ps_pb2.CreateTableRequest:
            req = ps_pb2.CreateTableRequest(spec=proto)
            req.topology.shard_index, req.topology.num_shards = i, len(self._channels)
            return req

        # shard 0 first: of two racing, conflicting creates, exactly one wins everywhere
        ch0 = self._channels[0]
        call(ch0, ch0.create_table, request(0), self.timeout_s, self.retry)
        fan_out([(self._channels[i], self._channels[i].create_table, request(i)) for i in range(1, len(self._channels))],
                self.timeout_s, self.retry)
        self._learn(spec)

    def spec(self, name: str) -> TableSpec:
        """The spec of table ``name``, asking the cluster if this client has not seen it.

        Raises NotFoundError for a table that does not exist.
        """
        if name not in self._specs:
            table_directory.fetch_spec(self, name)
        return self._specs[name]

    def _learn(self, spec: TableSpec) -> None:
        table_directory.learn(self, spec)  # where its blocks live

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
        return recovery.run_step(self, lambda: dense_step.run(self, None, names, out))

    def push_pull(self, grads: Mapping[str, np.ndarray], names: Iterable[str] | str | None = None,
                  out: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """One training step in one round trip per part: :meth:`push`, then :meth:`pull`.

        ``names`` defaults to the tables in ``grads``. Same semantics, errors and
        exactly-once guarantee as ``push(grads)`` followed by ``pull(names, out)``; each
        part pulls the blocks it pushed, so the values include this worker's update.
        """
        if names is None:
            names = list(grads)
        return recovery.run_step(self, lambda: dense_step.run(self, grads, names, out), pushes=True,
                                 pull_again=lambda: dense_step.run(self, None, names, out))

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
        return dense_step.buffers(self, names)

    def push(self, grads: Mapping[str, np.ndarray],
             rows: Mapping[str, tuple[Any, np.ndarray]] | None = None) -> None:
        """Send gradients; each shard gets its blocks. Exactly once, even when retried.

        Advances this worker's clock by one. In sync mode the gradient counts towards
        the current step (a gradient for a step already applied is dropped and counted
        in ``stats["stale"]``; the clock then jumps to the cluster's). Blocks until every
        shard acknowledged. Raises InvalidArgumentError for a wrong shape or dtype
        (checked before anything is sent), NotFoundError, DeadlineExceededError.
        ``rows`` (``{sparse table: (ids, grads)}``) go in the same step as ``grads``:
        one clock tick for the whole model (see :meth:`push_rows`).
        """
        if rows:
            return recovery.run_step(self, lambda: sparse_client.push_step(self, grads, rows), pushes=True)
        # same-host shared memory or gRPC; see worker.client.dense_step
        recovery.run_step(self, lambda: dense_step.run(self, grads, None), pushes=True)

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
        return recovery.checkpoint(self, tag)

    # -- status -------------------------------------------------------------------------

    def status(self) -> list[dict[str, Any]]:
        """Each shard's status, in server order: mode, version, workers, tables, counters.

        Blocks (bounded by ``timeout_s``).
        """
        self._require_open()
        replies = fan_out([(ch, ch.status, ps_pb2.StatusRequest()) for ch in self._channels],
                          self.timeout_s, self.retry)
        return [shard_status(ch.address, r) for ch, r in zip(self._channels, replies)]

    # -- sparse tables (worker.client.sparse_client) ---------------------------------------------

    def create_sparse(self, name: str, dim: int, *, dtype: str = "float32", init: str = "zeros",
                      init_scale: float = 0.0, seed: int = 0, optimizer: str = "sgd", lr: float = 0.01,
                      max_rows: int = 0, eviction: str = "lru", admit_after: int = 0,
                      **optimizer_options: Any) -> None:
        """Create a sparse table of rows of width ``dim`` keyed by int64 ids (idempotent).

        Rows are created on their first push, initialised from ``init`` (zeros | normal
        with std ``init_scale`` | uniform on [-init_scale, init_scale]) as a function of
        ``(seed, name, id)`` only. ``optimizer`` is sgd | momentum | adagrad | adam (per-row
        state). ``max_rows`` > 0 bounds the rows each shard stores, evicting ``eviction``
        (lru | lfu) victims; ``admit_after`` > 1 stores a row only from its
        ``admit_after``-th push (earlier pushes to it are dropped and counted). Blocks.
        Raises InvalidArgumentError for a bad spec, AlreadyExistsError when the name
        exists with another spec or as a dense table.
        """
        sparse_client.create_sparse(self, name, dim, dtype=dtype, init=init, init_scale=init_scale, seed=seed,
                                    optimizer=optimizer, lr=lr, max_rows=max_rows, eviction=eviction,
                                    admit_after=admit_after, **optimizer_options)

    def pull_rows(self, name: str, ids: Any) -> np.ndarray:
        """Rows ``ids`` (1-D integers, any order, repeats allowed) as a new ``(len(ids), dim)`` array.

        Rows never pushed read as their initial values. In sync mode waits for this
        worker's step like :meth:`pull`. Blocks; bounded by ``wait_timeout_s``. Raises
        InvalidArgumentError (non-integer ids), NotFoundError (unknown table),
        FailedPreconditionError (a dense table), DeadlineExceededError.
        """
        return recovery.run_step(self, lambda: sparse_client.pull_rows(self, name, ids))

    def push_rows(self, name: str, ids: Any, grads: np.ndarray) -> None:
        """Push row gradients ``grads`` of shape ``(len(ids), dim)`` for rows ``ids``: one step.

        Repeated ids are summed first; only these rows change. Exactly once; advances the
        clock like :meth:`push` (use ``push(grads, rows=...)`` to push dense and sparse
        gradients as one step). Blocks until every shard acknowledged. Raises
        InvalidArgumentError (row width, dtype, lengths, non-integer ids; checked before
        anything is sent), NotFoundError, FailedPreconditionError, DeadlineExceededError.
        """
        recovery.run_step(self, lambda: sparse_client.push_step(self, None, {name: (ids, grads)}), pushes=True)
