"""``TableDirectory``: the tables a worker knows, and which shard owns each dense block (the placement map)."""

from __future__ import annotations

import dataclasses
import logging
from types import MappingProxyType
from typing import TYPE_CHECKING

from ps._proto import ps_pb2
from ps.errors import AlreadyExistsError, FailedPreconditionError, NotFoundError
from ps.tables.placement_map import PlacementMap
from ps.tables.sparse_spec import SparseTableSpec
from ps.tables.spec import TableSpec

if TYPE_CHECKING:
    from worker.client.cluster import Cluster

log = logging.getLogger("worker.client")  # the client's logger: these lines are the client's


class TableDirectory:
    """Dense specs with their placement (the shards' :class:`~ps.tables.placement_map.PlacementMap`),
    sparse specs.

    Learns tables from register replies and from creating them; asks shard 0 (one Status
    call, bounded by the cluster's ``timeout_s``) about a name it does not know. A known
    table is never forgotten. Learns the placement map from register replies and, when a
    shard redirects a call (reason MOVED), from that shard (:meth:`refresh_placement`); a map
    is only ever replaced by a newer one. The constructor does no I/O. Thread-safe for one
    writer (the Client) beside readers (the heartbeat thread's rejoin).
    """

    def __init__(self, cluster: Cluster) -> None:
        self._cluster = cluster
        self._dense: dict[str, TableSpec] = {}
        self._sparse: dict[str, SparseTableSpec] = {}
        self._owned: dict[str, list[list[int]]] = {}   # table -> shard -> its blocks
        #: the placement map calls are planned with (the default rule until a shard tells another)
        self.placement = PlacementMap.initial(len(cluster))
        #: called with a newer map that lists other shards than the cluster's (a resize), before it is
        #: adopted: retargets the client (the Client sets it once started); None: such a map is refused
        self.on_reshard = None
        #: read-only view of the dense specs by name
        self.specs = MappingProxyType(self._dense)

    def learn(self, spec: TableSpec | SparseTableSpec) -> None:
        """Remember ``spec`` (and where a dense table's blocks live). No I/O."""
        if isinstance(spec, SparseTableSpec):
            self._sparse.setdefault(spec.name, spec)
            return
        if spec.name in self._dense:
            return
        self._owned[spec.name] = self.placement.owners(spec.name, spec.num_blocks)
        self._dense[spec.name] = spec

    def adopt_placement(self, placement: PlacementMap) -> bool:
        """Plan with ``placement`` from now on if it is newer than the map held; returns whether
        it was. A map listing other shards (a resize) goes through :attr:`on_reshard` first
        (which blocks while the client registers with new shards). Raises
        FailedPreconditionError for a map of another shard count, or listing other shards
        while :attr:`on_reshard` is None (e.g. while joining)."""
        if placement.version <= self.placement.version:
            return False
        listed = list(placement.addresses) or self._cluster.addresses
        if listed != self._cluster.addresses:
            if self.on_reshard is None:
                raise FailedPreconditionError(f"the servers are now {', '.join(listed)} (placement map "
                                              f"{placement.describe()}): start this worker with --servers "
                                              f"{','.join(listed)}")
            self.on_reshard(placement)
        elif placement.num_shards != len(self._cluster):
            raise FailedPreconditionError(f"the servers' placement map {placement.describe()} is for another "
                                          f"number of shards than this worker's {len(self._cluster)}")
        self.placement = placement
        self._owned = {name: placement.owners(name, spec.num_blocks) for name, spec in self._dense.items()}
        log.info("placement map %s adopted", placement.describe())
        return True

    def refresh_placement(self, shards: set[int]) -> int:
        """Ask ``shards`` (one Status call each, bounded by the cluster's ``timeout_s``) for
        their placement maps and adopt the newest; returns the version now held. Blocks;
        raises PSError."""
        replies = self._cluster.fan_out("status", {i: ps_pb2.StatusRequest() for i in sorted(shards)})
        for reply in replies:
            if reply.HasField("placement"):
                self.adopt_placement(PlacementMap.from_proto(reply.placement))
        return self.placement.version

    def blocks(self, name: str, shard: int) -> list[int]:
        """The blocks of known dense table ``name`` that ``shard`` owns. Raises KeyError."""
        return self._owned[name][shard]

    def create(self, spec: TableSpec | SparseTableSpec, any_block_size: bool = False) -> None:
        """Create the table on every shard (shard 0 first: of two racing, conflicting creates,
        exactly one wins everywhere), or check it exists alike. ``any_block_size``: the caller
        did not choose the dense block size, so a table that exists alike but for its block
        size (created with another one, such as the fixed default of older versions) is used
        as it is. Blocks. Raises InvalidArgumentError, AlreadyExistsError."""
        spec.validate()
        try:
            self._create_everywhere(spec)
        except AlreadyExistsError:
            existing = self._existing_dense(spec.name) if any_block_size and isinstance(spec, TableSpec) else None
            if existing is None or dataclasses.replace(spec, block_elems=existing.block_elems) != existing:
                raise
            log.info("table %r exists with %d elements a block (not the automatic %d): using it as it is",
                     spec.name, existing.block_elems, spec.block_elems)
            self._create_everywhere(existing)

    def _create_everywhere(self, spec: TableSpec | SparseTableSpec) -> None:
        requests = [self._create_request(i, spec) for i in range(len(self._cluster))]
        self._cluster.call(0, "create_table", requests[0])
        self._cluster.fan_out("create_table", {i: r for i, r in enumerate(requests) if i})
        self.learn(spec)

    def _existing_dense(self, name: str) -> TableSpec | None:
        """Shard 0's spec of dense table ``name``, or None. Blocks (one Status)."""
        reply = self._cluster.call(0, "status", ps_pb2.StatusRequest())
        return next((TableSpec.from_proto(t.spec) for t in reply.tables if t.spec.name == name), None)

    def recreate(self, shard: int, held: set[str]) -> None:
        """Create on ``shard`` (which restarted) every known table it may have lost: dense
        ones not in ``held``, every sparse one. Blocks; raises PSError."""
        lost = [s for s in list(self._dense.values()) if s.name not in held] + list(self._sparse.values())
        for spec in lost:
            if self._cluster.call(shard, "create_table", self._create_request(shard, spec)).created:
                log.warning("shard %d (%s) had lost table %r (it restarted without it): created it again at "
                            "its initial values", shard, self._cluster.addresses[shard], spec.name)

    def spec(self, name: str) -> TableSpec:
        """The dense spec of ``name``, asking shard 0 if unknown. Raises NotFoundError,
        FailedPreconditionError (a sparse table)."""
        return self._dense.get(name) or self._fetch(name, self._dense, "is sparse: use pull_rows/push_rows")

    def sparse_spec(self, name: str) -> SparseTableSpec:
        """The sparse spec of ``name``, asking shard 0 if unknown. Raises NotFoundError,
        FailedPreconditionError (a dense table)."""
        return self._sparse.get(name) or self._fetch(name, self._sparse, "is dense: use pull/push, not the row verbs")

    def _fetch(self, name: str, kind: dict, otherwise: str):
        if name not in self._dense and name not in self._sparse:
            reply = self._cluster.call(0, "status", ps_pb2.StatusRequest())
            for t in reply.tables:
                self.learn(TableSpec.from_proto(t.spec))
            for t in reply.sparse_tables:
                self.learn(SparseTableSpec.from_proto(t.spec))
        if name in kind:
            return kind[name]
        if name in self._dense or name in self._sparse:
            raise FailedPreconditionError(f"table {name!r} {otherwise}")
        raise NotFoundError(f"unknown table {name!r}")

    def _create_request(self, shard: int, spec: TableSpec | SparseTableSpec) -> ps_pb2.CreateTableRequest:
        req = ps_pb2.CreateTableRequest(spec=spec.to_proto())
        req.topology.shard_index, req.topology.num_shards = shard, len(self._cluster)
        return req
