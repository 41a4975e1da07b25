"""``Client``: one worker's connection to the whole cluster.

>>> with Client(["127.0.0.1:50051", "127.0.0.1:50052"]) as ps:     # doctest: +SKIP
...     ps.create("w", shape=(64, 10), init="zeros", optimizer="sgd", lr=0.1)
...     params = ps.pull(["w"])          # dict[str, np.ndarray]
...     ps.push({"w": grad})             # exactly once, even when retried

The client knows where every block lives (stable hashing, :mod:`ps.placement`), so it
sends each shard only that shard's blocks, one call per shard (more for transfers past
``part_bytes``), all shards at once. Arrays in and out are NumPy; errors are
:mod:`ps.errors` exceptions, never ``grpc.RpcError``.

A ``Client`` is one worker. It is not thread-safe: use one per thread (several may live
in one process, each with its own worker id).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ps._proto import ps_pb2
from ps.config import DEFAULT_MAX_MESSAGE_BYTES
from ps.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from ps.optim import OptimizerSpec
from ps.placement import block_shard
from ps.spec import DEFAULT_BLOCK_ELEMS, InitSpec, TableSpec
from ps.wire import encode_framed, split_payload, wire_dtype
from worker.transport import RetryPolicy, ShardChannel, call, fan_out

log = logging.getLogger(__name__)

_MODES = {ps_pb2.ASYNC: "async", ps_pb2.SYNC: "sync", ps_pb2.SSP: "ssp"}


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
        self._requested_id = worker_id
        self._channels: list[ShardChannel] = []
        self._specs: dict[str, TableSpec] = {}
        self._placement: dict[str, list[list[int]]] = {}  # table -> shard -> owned blocks
        self._next_seq: list[int] = []
        self.worker_id: int = -1
        self.mode: str = ""
        self.clock: int = 0
        self.stats = {"applied": 0, "accumulated": 0, "duplicate": 0, "stale": 0}
        self._state = "new"

    # -- lifecycle ----------------------------------------------------------------------

    def connect(self) -> Client:
        """Connect to every server and register as a worker. Blocks (bounded).

        Raises UnavailableError when a server does not answer within
        ``connect_timeout_s``, FailedPreconditionError when the servers disagree about
        the topology or the mode.
        """
        if self._state != "new":
            raise RuntimeError("Client cannot be reconnected; make a new one")
        self._channels = [ShardChannel(a, self.max_message_bytes) for a in self.addresses]
        self._state = "open"
        try:
            for ch in self._channels:
                ch.wait_ready(self.connect_timeout_s)
            n = len(self._channels)
            first = self._register(0, -1 if self._requested_id is None else self._requested_id)
            replies = [first] + fan_out(
                [(self._channels[i], self._channels[i].register, self._register_request(i, first.worker_id))
                 for i in range(1, n)],
                self.timeout_s, self.retry,
            )
        except BaseException:
            self.close()
            raise
        modes = {r.mode for r in replies}
        if len(modes) != 1:
            self.close()
            raise FailedPreconditionError(f"servers disagree on the mode: {sorted(_MODES[m] for m in modes)}")
        self.worker_id = first.worker_id
        self.mode = _MODES[first.mode]
        self.clock = max(r.clock for r in replies)
        self._next_seq = [r.next_seq for r in replies]
        for r in replies:
            for spec in r.tables:
                self._learn(TableSpec.from_proto(spec))
        log.info("worker %d joined %d shard(s) in %s mode at clock %d", self.worker_id, n, self.mode, self.clock)
        return self

    def _register_request(self, shard: int, worker_id: int) -> ps_pb2.RegisterRequest:
        req = ps_pb2.RegisterRequest(worker_id=worker_id if not self.observer else -1)
        req.topology.shard_index, req.topology.num_shards = shard, len(self._channels)
        return req

    def _register(self, shard: int, worker_id: int) -> ps_pb2.RegisterReply:
        ch = self._channels[shard]
        if self.observer:
            reply = call(ch, ch.status, ps_pb2.StatusRequest(), self.timeout_s, self.retry)
            return ps_pb2.RegisterReply(worker_id=-1, mode=reply.mode, tables=[t.spec for t in reply.tables])
        return call(ch, ch.register, self._register_request(shard, worker_id), self.timeout_s, self.retry)

    def close(self) -> None:
        """Leave the quorum (so sync steps stop waiting for this worker) and disconnect.

        Best effort: a server that cannot be reached is skipped. Idempotent.
        """
        if self._state != "open":
            self._state = "closed"
            return
        self._state = "closed"
        if self.worker_id >= 0 and not self.observer:
            try:
                fan_out([(ch, ch.leave, ps_pb2.LeaveRequest(worker_id=self.worker_id)) for ch in self._channels],
                        min(self.timeout_s, 5.0))
            except Exception as exc:  # leaving is a courtesy; the lease covers the rest
                log.warning("worker %d could not leave cleanly: %s", self.worker_id, exc)
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
            ch = self._channels[0]
            reply = call(ch, ch.status, ps_pb2.StatusRequest(), self.timeout_s, self.retry)
            for t in reply.tables:
                self._learn(TableSpec.from_proto(t.spec))
            if name not in self._specs:
                raise NotFoundError(f"unknown table {name!r}")
        return self._specs[name]

    def _learn(self, spec: TableSpec) -> None:
        if spec.name in self._specs:
            return
        n = len(self._channels)
        owned: list[list[int]] = [[] for _ in range(n)]
        for b in range(spec.num_blocks):
            owned[block_shard(spec.name, b, n)].append(b)
        self._specs[spec.name] = spec
        self._placement[spec.name] = owned

    # -- pull and push ------------------------------------------------------------------

    def pull(self, names: Iterable[str] | str) -> dict[str, np.ndarray]:
        """Current values of the named tables, as fresh arrays of their shape and dtype.

        In sync mode waits until this worker's step is applied; in ssp mode waits while
        the slowest worker is more than the staleness bound behind. Blocks; bounded by
        ``wait_timeout_s``. Raises NotFoundError, DeadlineExceededError (naming the
        workers waited for), UnavailableError.
        """
        self._require_open()
        names = [names] if isinstance(names, str) else list(names)
        specs = [self.spec(n) for n in names]
        out = {s.name: np.empty(s.size, dtype=s.dtype) for s in specs}
        calls = []
        for shard, ch in enumerate(self._channels):
            nbytes = sum(len(self._placement[s.name][shard]) * s.block_elems * np.dtype(s.dtype).itemsize
                         for s in specs)
            if nbytes == 0:
                continue
            parts = max(1, -(-nbytes // self.part_bytes))
            for part in range(parts):
                header = ps_pb2.PullHeader(worker_id=self.worker_id, step=self.clock, tables=names,
                                           part=part, num_parts=parts)
                calls.append((ch, ch.pull, ps_pb2.PullRequest(header=header)))
        for header, payload in fan_out(calls, self.wait_timeout_s, self.retry):
            for ref, values in zip(header.blocks, split_payload(header.blocks, payload)):
                spec = self._specs.get(ref.table)
                if spec is None or ref.table not in out:
                    raise InvalidArgumentError(f"server sent unrequested table {ref.table!r}")
                start, stop = spec.block_range(ref.block)
                if values.size != stop - start:
                    raise InvalidArgumentError(f"server sent {values.size} elements for {ref.table}[{ref.block}]")
                out[ref.table][start:stop] = values
        return {s.name: out[s.name].reshape(s.shape) for s in specs}

    def push(self, grads: Mapping[str, np.ndarray]) -> None:
        """Send gradients; each shard gets its blocks. Exactly once, even when retried.

        Advances this worker's clock by one. In sync mode the gradient counts towards
        the current step (a gradient for a step already applied is dropped and counted
        in ``stats["stale"]``; the clock then jumps to the cluster's). Blocks until every
        shard acknowledged. Raises InvalidArgumentError for a wrong shape or dtype
        (checked before anything is sent), NotFoundError, DeadlineExceededError.
        """
        self._require_open()
        if self.observer:
            raise FailedPreconditionError("an observer client cannot push")
        flat: dict[str, np.ndarray] = {}
        for name, grad in grads.items():
            spec = self.spec(name)
            arr = np.asarray(grad)
            if arr.shape != spec.shape:
                raise InvalidArgumentError(f"{name}: gradient shape {arr.shape}, table shape {spec.shape}")
            if arr.dtype != np.dtype(spec.dtype):
                raise InvalidArgumentError(f"{name}: gradient dtype {arr.dtype.name}, table dtype {spec.dtype}")
            flat[name] = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).reshape(-1)
        calls = []
        shards = []
        for shard, ch in enumerate(self._channels):
            pieces = [(name, b) for name in flat for b in self._placement[name][shard]]
            if not pieces and self.mode == "async":
                continue  # sync and ssp need every shard to hear from every worker each step
            groups = self._group(pieces)
            for part, group in enumerate(groups):
                seq = self._next_seq[shard]
                self._next_seq[shard] += 1
                calls.append((ch, ch.push, self._encode_push(group, flat, seq, part, len(groups))))
                shards.append(shard)
        replies = fan_out(calls, self.wait_timeout_s, self.retry)
        stale_version = None
        for reply in replies:
            outcome = ps_pb2.Outcome.Name(reply.outcome).lower()
            self.stats[outcome] = self.stats.get(outcome, 0) + 1
            if reply.outcome == ps_pb2.STALE:
                stale_version = max(stale_version or 0, reply.version)
        if stale_version is not None:
            log.warning("worker %d's gradient for step %d was stale; resuming at step %d",
                        self.worker_id, self.clock, stale_version)
            self.clock = max(self.clock + 1, stale_version)
        else:
            self.clock += 1

    def _group(self, pieces: list[tuple[str, int]]) -> list[list[tuple[str, int]]]:
        """Split one shard's blocks into messages of at most ``part_bytes`` (at least one)."""
        groups: list[list[tuple[str, int]]] = [[]]
        size = 0
        for name, b in pieces:
            spec = self._specs[name]
            nbytes = spec.block_elems * np.dtype(spec.dtype).itemsize
            if groups[-1] and size + nbytes > self.part_bytes:
                groups.append([])
                size = 0
            groups[-1].append((name, b))
            size += nbytes
        return groups

    def _encode_push(self, group, flat, seq: int, part: int, num_parts: int) -> bytes:
        header = ps_pb2.PushHeader(worker_id=self.worker_id, seq=seq, step=self.clock, part=part,
                                   num_parts=num_parts)
        buffers = []
        for name, b in group:
            spec = self._specs[name]
            start, stop = spec.block_range(b)
            header.blocks.add(table=name, block=b, dtype=wire_dtype(spec.dtype), count=stop - start)
            buffers.append(flat[name][start:stop])
        return encode_framed(header.SerializeToString(), buffers)

    # -- status -------------------------------------------------------------------------

    def status(self) -> list[dict[str, Any]]:
        """Each shard's status, in server order: mode, version, workers, tables, counters.

        Blocks (bounded by ``timeout_s``).
        """
        self._require_open()
        replies = fan_out([(ch, ch.status, ps_pb2.StatusRequest()) for ch in self._channels],
                          self.timeout_s, self.retry)
        return [
            {
                "address": ch.address,
                "mode": _MODES.get(r.mode, "unknown"),
                "version": r.version,
                "server_id": r.server_id,
                "workers": [
                    {"id": w.worker_id, "clock": w.clock, "live": w.live, "last_contact_age_s": w.last_contact_age_s}
                    for w in r.workers
                ],
                "tables": [
                    {"name": t.spec.name, "shape": tuple(t.spec.shape), "blocks": t.blocks, "bytes": t.bytes}
                    for t in r.tables
                ],
                "waiting_for": list(r.waiting_for),
                "counters": dict(r.counters),
            }
            for ch, r in zip(self._channels, replies)
        ]
