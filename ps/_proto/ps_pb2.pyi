from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    FLOAT32: _ClassVar[DType]
    FLOAT64: _ClassVar[DType]

class Mode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODE_UNSPECIFIED: _ClassVar[Mode]
    ASYNC: _ClassVar[Mode]
    SYNC: _ClassVar[Mode]
    SSP: _ClassVar[Mode]

class TableKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DENSE: _ClassVar[TableKind]
    SPARSE: _ClassVar[TableKind]

class Outcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTCOME_UNSPECIFIED: _ClassVar[Outcome]
    APPLIED: _ClassVar[Outcome]
    ACCUMULATED: _ClassVar[Outcome]
    DUPLICATE: _ClassVar[Outcome]
    STALE: _ClassVar[Outcome]
DTYPE_UNSPECIFIED: DType
FLOAT32: DType
FLOAT64: DType
MODE_UNSPECIFIED: Mode
ASYNC: Mode
SYNC: Mode
SSP: Mode
DENSE: TableKind
SPARSE: TableKind
OUTCOME_UNSPECIFIED: Outcome
APPLIED: Outcome
ACCUMULATED: Outcome
DUPLICATE: Outcome
STALE: Outcome

class Topology(_message.Message):
    __slots__ = ("shard_index", "num_shards")
    SHARD_INDEX_FIELD_NUMBER: _ClassVar[int]
    NUM_SHARDS_FIELD_NUMBER: _ClassVar[int]
    shard_index: int
    num_shards: int
    def __init__(self, shard_index: _Optional[int] = ..., num_shards: _Optional[int] = ...) -> None: ...

class OptimizerSpec(_message.Message):
    __slots__ = ("name", "lr", "momentum", "nesterov", "beta1", "beta2", "eps", "weight_decay", "initial_accumulator", "l1", "l2", "beta")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LR_FIELD_NUMBER: _ClassVar[int]
    MOMENTUM_FIELD_NUMBER: _ClassVar[int]
    NESTEROV_FIELD_NUMBER: _ClassVar[int]
    BETA1_FIELD_NUMBER: _ClassVar[int]
    BETA2_FIELD_NUMBER: _ClassVar[int]
    EPS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    INITIAL_ACCUMULATOR_FIELD_NUMBER: _ClassVar[int]
    L1_FIELD_NUMBER: _ClassVar[int]
    L2_FIELD_NUMBER: _ClassVar[int]
    BETA_FIELD_NUMBER: _ClassVar[int]
    name: str
    lr: float
    momentum: float
    nesterov: bool
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    initial_accumulator: float
    l1: float
    l2: float
    beta: float
    def __init__(self, name: _Optional[str] = ..., lr: _Optional[float] = ..., momentum: _Optional[float] = ..., nesterov: _Optional[bool] = ..., beta1: _Optional[float] = ..., beta2: _Optional[float] = ..., eps: _Optional[float] = ..., weight_decay: _Optional[float] = ..., initial_accumulator: _Optional[float] = ..., l1: _Optional[float] = ..., l2: _Optional[float] = ..., beta: _Optional[float] = ...) -> None: ...

class InitSpec(_message.Message):
    __slots__ = ("kind", "scale", "seed")
    KIND_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    kind: str
    scale: float
    seed: int
    def __init__(self, kind: _Optional[str] = ..., scale: _Optional[float] = ..., seed: _Optional[int] = ...) -> None: ...

class TableSpec(_message.Message):
    __slots__ = ("name", "shape", "dtype", "block_elems", "optimizer", "init", "kind", "dim", "max_rows", "eviction", "admit_after", "num_rows")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    BLOCK_ELEMS_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    INIT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    MAX_ROWS_FIELD_NUMBER: _ClassVar[int]
    EVICTION_FIELD_NUMBER: _ClassVar[int]
    ADMIT_AFTER_FIELD_NUMBER: _ClassVar[int]
    NUM_ROWS_FIELD_NUMBER: _ClassVar[int]
    name: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: DType
    block_elems: int
    optimizer: OptimizerSpec
    init: InitSpec
    kind: TableKind
    dim: int
    max_rows: int
    eviction: str
    admit_after: int
    num_rows: int
    def __init__(self, name: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[_Union[DType, str]] = ..., block_elems: _Optional[int] = ..., optimizer: _Optional[_Union[OptimizerSpec, _Mapping]] = ..., init: _Optional[_Union[InitSpec, _Mapping]] = ..., kind: _Optional[_Union[TableKind, str]] = ..., dim: _Optional[int] = ..., max_rows: _Optional[int] = ..., eviction: _Optional[str] = ..., admit_after: _Optional[int] = ..., num_rows: _Optional[int] = ...) -> None: ...

class RegisterRequest(_message.Message):
    __slots__ = ("worker_id", "topology", "resync", "session", "num_workers")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    TOPOLOGY_FIELD_NUMBER: _ClassVar[int]
    RESYNC_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    NUM_WORKERS_FIELD_NUMBER: _ClassVar[int]
    worker_id: int
    topology: Topology
    resync: bool
    session: int
    num_workers: int
    def __init__(self, worker_id: _Optional[int] = ..., topology: _Optional[_Union[Topology, _Mapping]] = ..., resync: _Optional[bool] = ..., session: _Optional[int] = ..., num_workers: _Optional[int] = ...) -> None: ...

class RegisterReply(_message.Message):
    __slots__ = ("worker_id", "next_seq", "mode", "staleness", "clock", "num_workers", "tables", "server_id", "epoch", "lease_s", "fenced", "placement")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    NEXT_SEQ_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    STALENESS_FIELD_NUMBER: _ClassVar[int]
    CLOCK_FIELD_NUMBER: _ClassVar[int]
    NUM_WORKERS_FIELD_NUMBER: _ClassVar[int]
    TABLES_FIELD_NUMBER: _ClassVar[int]
    SERVER_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    LEASE_S_FIELD_NUMBER: _ClassVar[int]
    FENCED_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    worker_id: int
    next_seq: int
    mode: Mode
    staleness: int
    clock: int
    num_workers: int
    tables: _containers.RepeatedCompositeFieldContainer[TableSpec]
    server_id: str
    epoch: int
    lease_s: float
    fenced: bool
    placement: PlacementMap
    def __init__(self, worker_id: _Optional[int] = ..., next_seq: _Optional[int] = ..., mode: _Optional[_Union[Mode, str]] = ..., staleness: _Optional[int] = ..., clock: _Optional[int] = ..., num_workers: _Optional[int] = ..., tables: _Optional[_Iterable[_Union[TableSpec, _Mapping]]] = ..., server_id: _Optional[str] = ..., epoch: _Optional[int] = ..., lease_s: _Optional[float] = ..., fenced: _Optional[bool] = ..., placement: _Optional[_Union[PlacementMap, _Mapping]] = ...) -> None: ...

class PlacementMap(_message.Message):
    __slots__ = ("version", "num_shards", "addresses", "moved")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NUM_SHARDS_FIELD_NUMBER: _ClassVar[int]
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    MOVED_FIELD_NUMBER: _ClassVar[int]
    version: int
    num_shards: int
    addresses: _containers.RepeatedScalarFieldContainer[str]
    moved: _containers.RepeatedCompositeFieldContainer[PlacedUnit]
    def __init__(self, version: _Optional[int] = ..., num_shards: _Optional[int] = ..., addresses: _Optional[_Iterable[str]] = ..., moved: _Optional[_Iterable[_Union[PlacedUnit, _Mapping]]] = ...) -> None: ...

class PlacedUnit(_message.Message):
    __slots__ = ("table", "rows", "index", "shard")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    table: str
    rows: bool
    index: int
    shard: int
    def __init__(self, table: _Optional[str] = ..., rows: _Optional[bool] = ..., index: _Optional[int] = ..., shard: _Optional[int] = ...) -> None: ...

class LeaveRequest(_message.Message):
    __slots__ = ("worker_id", "session")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    worker_id: int
    session: int
    def __init__(self, worker_id: _Optional[int] = ..., session: _Optional[int] = ...) -> None: ...

class LeaveReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CreateTableRequest(_message.Message):
    __slots__ = ("spec", "topology")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    TOPOLOGY_FIELD_NUMBER: _ClassVar[int]
    spec: TableSpec
    topology: Topology
    def __init__(self, spec: _Optional[_Union[TableSpec, _Mapping]] = ..., topology: _Optional[_Union[Topology, _Mapping]] = ...) -> None: ...

class CreateTableReply(_message.Message):
    __slots__ = ("created",)
    CREATED_FIELD_NUMBER: _ClassVar[int]
    created: bool
    def __init__(self, created: _Optional[bool] = ...) -> None: ...

class BlockRef(_message.Message):
    __slots__ = ("table", "block", "dtype", "count", "version")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    BLOCK_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    table: str
    block: int
    dtype: DType
    count: int
    version: int
    def __init__(self, table: _Optional[str] = ..., block: _Optional[int] = ..., dtype: _Optional[_Union[DType, str]] = ..., count: _Optional[int] = ..., version: _Optional[int] = ...) -> None: ...

class PushHeader(_message.Message):
    __slots__ = ("worker_id", "seq", "step", "part", "num_parts", "blocks", "then_pull", "session", "placement_version")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    PART_FIELD_NUMBER: _ClassVar[int]
    NUM_PARTS_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    THEN_PULL_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    worker_id: int
    seq: int
    step: int
    part: int
    num_parts: int
    blocks: _containers.RepeatedCompositeFieldContainer[BlockRef]
    then_pull: PullHeader
    session: int
    placement_version: int
    def __init__(self, worker_id: _Optional[int] = ..., seq: _Optional[int] = ..., step: _Optional[int] = ..., part: _Optional[int] = ..., num_parts: _Optional[int] = ..., blocks: _Optional[_Iterable[_Union[BlockRef, _Mapping]]] = ..., then_pull: _Optional[_Union[PullHeader, _Mapping]] = ..., session: _Optional[int] = ..., placement_version: _Optional[int] = ...) -> None: ...

class PushRequest(_message.Message):
    __slots__ = ("header", "payload")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    header: PushHeader
    payload: bytes
    def __init__(self, header: _Optional[_Union[PushHeader, _Mapping]] = ..., payload: _Optional[bytes] = ...) -> None: ...

class PushReply(_message.Message):
    __slots__ = ("outcome", "version")
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    outcome: Outcome
    version: int
    def __init__(self, outcome: _Optional[_Union[Outcome, str]] = ..., version: _Optional[int] = ...) -> None: ...

class PullHeader(_message.Message):
    __slots__ = ("worker_id", "step", "tables", "part", "num_parts", "known", "known_for", "placement_version")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TABLES_FIELD_NUMBER: _ClassVar[int]
    PART_FIELD_NUMBER: _ClassVar[int]
    NUM_PARTS_FIELD_NUMBER: _ClassVar[int]
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    KNOWN_FOR_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    worker_id: int
    step: int
    tables: _containers.RepeatedScalarFieldContainer[str]
    part: int
    num_parts: int
    known: _containers.RepeatedCompositeFieldContainer[BlockRef]
    known_for: str
    placement_version: int
    def __init__(self, worker_id: _Optional[int] = ..., step: _Optional[int] = ..., tables: _Optional[_Iterable[str]] = ..., part: _Optional[int] = ..., num_parts: _Optional[int] = ..., known: _Optional[_Iterable[_Union[BlockRef, _Mapping]]] = ..., known_for: _Optional[str] = ..., placement_version: _Optional[int] = ...) -> None: ...

class PullRequest(_message.Message):
    __slots__ = ("header",)
    HEADER_FIELD_NUMBER: _ClassVar[int]
    header: PullHeader
    def __init__(self, header: _Optional[_Union[PullHeader, _Mapping]] = ...) -> None: ...

class PullReplyHeader(_message.Message):
    __slots__ = ("version", "blocks", "state_token", "push_outcome", "push_version")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    STATE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    PUSH_OUTCOME_FIELD_NUMBER: _ClassVar[int]
    PUSH_VERSION_FIELD_NUMBER: _ClassVar[int]
    version: int
    blocks: _containers.RepeatedCompositeFieldContainer[BlockRef]
    state_token: str
    push_outcome: Outcome
    push_version: int
    def __init__(self, version: _Optional[int] = ..., blocks: _Optional[_Iterable[_Union[BlockRef, _Mapping]]] = ..., state_token: _Optional[str] = ..., push_outcome: _Optional[_Union[Outcome, str]] = ..., push_version: _Optional[int] = ...) -> None: ...

class PullReply(_message.Message):
    __slots__ = ("header", "payload")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    header: PullReplyHeader
    payload: bytes
    def __init__(self, header: _Optional[_Union[PullReplyHeader, _Mapping]] = ..., payload: _Optional[bytes] = ...) -> None: ...

class RowsHeader(_message.Message):
    __slots__ = ("worker_id", "seq", "step", "part", "num_parts", "table", "num_ids", "dim", "dtype", "version", "session", "placement_version")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    PART_FIELD_NUMBER: _ClassVar[int]
    NUM_PARTS_FIELD_NUMBER: _ClassVar[int]
    TABLE_FIELD_NUMBER: _ClassVar[int]
    NUM_IDS_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    worker_id: int
    seq: int
    step: int
    part: int
    num_parts: int
    table: str
    num_ids: int
    dim: int
    dtype: DType
    version: int
    session: int
    placement_version: int
    def __init__(self, worker_id: _Optional[int] = ..., seq: _Optional[int] = ..., step: _Optional[int] = ..., part: _Optional[int] = ..., num_parts: _Optional[int] = ..., table: _Optional[str] = ..., num_ids: _Optional[int] = ..., dim: _Optional[int] = ..., dtype: _Optional[_Union[DType, str]] = ..., version: _Optional[int] = ..., session: _Optional[int] = ..., placement_version: _Optional[int] = ...) -> None: ...

class RowsRequest(_message.Message):
    __slots__ = ("header", "payload")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    header: RowsHeader
    payload: bytes
    def __init__(self, header: _Optional[_Union[RowsHeader, _Mapping]] = ..., payload: _Optional[bytes] = ...) -> None: ...

class RowsReply(_message.Message):
    __slots__ = ("header", "payload")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    header: RowsHeader
    payload: bytes
    def __init__(self, header: _Optional[_Union[RowsHeader, _Mapping]] = ..., payload: _Optional[bytes] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("worker_id", "session")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    worker_id: int
    session: int
    def __init__(self, worker_id: _Optional[int] = ..., session: _Optional[int] = ...) -> None: ...

class HeartbeatReply(_message.Message):
    __slots__ = ("epoch",)
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    def __init__(self, epoch: _Optional[int] = ...) -> None: ...

class CheckpointRequest(_message.Message):
    __slots__ = ("at_version", "tag")
    AT_VERSION_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    at_version: int
    tag: str
    def __init__(self, at_version: _Optional[int] = ..., tag: _Optional[str] = ...) -> None: ...

class CheckpointReply(_message.Message):
    __slots__ = ("path", "version", "epoch")
    PATH_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    path: str
    version: int
    epoch: int
    def __init__(self, path: _Optional[str] = ..., version: _Optional[int] = ..., epoch: _Optional[int] = ...) -> None: ...

class ShutdownRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ShutdownReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ("with_checkpoints", "with_loads")
    WITH_CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    WITH_LOADS_FIELD_NUMBER: _ClassVar[int]
    with_checkpoints: bool
    with_loads: bool
    def __init__(self, with_checkpoints: _Optional[bool] = ..., with_loads: _Optional[bool] = ...) -> None: ...

class BlockLoad(_message.Message):
    __slots__ = ("table", "block", "bytes", "accesses", "rows", "kept")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    BLOCK_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    ACCESSES_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    KEPT_FIELD_NUMBER: _ClassVar[int]
    table: str
    block: int
    bytes: int
    accesses: int
    rows: bool
    kept: bool
    def __init__(self, table: _Optional[str] = ..., block: _Optional[int] = ..., bytes: _Optional[int] = ..., accesses: _Optional[int] = ..., rows: _Optional[bool] = ..., kept: _Optional[bool] = ...) -> None: ...

class CheckpointInfo(_message.Message):
    __slots__ = ("tag", "version", "cluster", "created")
    TAG_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    tag: str
    version: int
    cluster: bool
    created: float
    def __init__(self, tag: _Optional[str] = ..., version: _Optional[int] = ..., cluster: _Optional[bool] = ..., created: _Optional[float] = ...) -> None: ...

class RestoreRequest(_message.Message):
    __slots__ = ("rollback_id", "tag", "version")
    ROLLBACK_ID_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    rollback_id: str
    tag: str
    version: int
    def __init__(self, rollback_id: _Optional[str] = ..., tag: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class RestoreReply(_message.Message):
    __slots__ = ("restored", "version", "epoch")
    RESTORED_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    restored: bool
    version: int
    epoch: int
    def __init__(self, restored: _Optional[bool] = ..., version: _Optional[int] = ..., epoch: _Optional[int] = ...) -> None: ...

class WorkerStatus(_message.Message):
    __slots__ = ("worker_id", "clock", "live", "last_contact_age_s")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    CLOCK_FIELD_NUMBER: _ClassVar[int]
    LIVE_FIELD_NUMBER: _ClassVar[int]
    LAST_CONTACT_AGE_S_FIELD_NUMBER: _ClassVar[int]
    worker_id: int
    clock: int
    live: bool
    last_contact_age_s: float
    def __init__(self, worker_id: _Optional[int] = ..., clock: _Optional[int] = ..., live: _Optional[bool] = ..., last_contact_age_s: _Optional[float] = ...) -> None: ...

class TableStatus(_message.Message):
    __slots__ = ("spec", "blocks", "bytes")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    spec: TableSpec
    blocks: int
    bytes: int
    def __init__(self, spec: _Optional[_Union[TableSpec, _Mapping]] = ..., blocks: _Optional[int] = ..., bytes: _Optional[int] = ...) -> None: ...

class StatusReply(_message.Message):
    __slots__ = ("mode", "staleness", "version", "topology", "workers", "tables", "waiting_for", "counters", "server_id", "epoch", "sparse_tables", "local_plane", "checkpoints", "awaiting_rollback", "restored_tag", "restored_version", "rollback_id", "stream_port", "placement", "loads")
    class CountersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    MODE_FIELD_NUMBER: _ClassVar[int]
    STALENESS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TOPOLOGY_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    TABLES_FIELD_NUMBER: _ClassVar[int]
    WAITING_FOR_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    SERVER_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SPARSE_TABLES_FIELD_NUMBER: _ClassVar[int]
    LOCAL_PLANE_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    AWAITING_ROLLBACK_FIELD_NUMBER: _ClassVar[int]
    RESTORED_TAG_FIELD_NUMBER: _ClassVar[int]
    RESTORED_VERSION_FIELD_NUMBER: _ClassVar[int]
    ROLLBACK_ID_FIELD_NUMBER: _ClassVar[int]
    STREAM_PORT_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    LOADS_FIELD_NUMBER: _ClassVar[int]
    mode: Mode
    staleness: int
    version: int
    topology: Topology
    workers: _containers.RepeatedCompositeFieldContainer[WorkerStatus]
    tables: _containers.RepeatedCompositeFieldContainer[TableStatus]
    waiting_for: _containers.RepeatedScalarFieldContainer[int]
    counters: _containers.ScalarMap[str, int]
    server_id: str
    epoch: int
    sparse_tables: _containers.RepeatedCompositeFieldContainer[SparseTableStatus]
    local_plane: str
    checkpoints: _containers.RepeatedCompositeFieldContainer[CheckpointInfo]
    awaiting_rollback: bool
    restored_tag: str
    restored_version: int
    rollback_id: str
    stream_port: int
    placement: PlacementMap
    loads: _containers.RepeatedCompositeFieldContainer[BlockLoad]
    def __init__(self, mode: _Optional[_Union[Mode, str]] = ..., staleness: _Optional[int] = ..., version: _Optional[int] = ..., topology: _Optional[_Union[Topology, _Mapping]] = ..., workers: _Optional[_Iterable[_Union[WorkerStatus, _Mapping]]] = ..., tables: _Optional[_Iterable[_Union[TableStatus, _Mapping]]] = ..., waiting_for: _Optional[_Iterable[int]] = ..., counters: _Optional[_Mapping[str, int]] = ..., server_id: _Optional[str] = ..., epoch: _Optional[int] = ..., sparse_tables: _Optional[_Iterable[_Union[SparseTableStatus, _Mapping]]] = ..., local_plane: _Optional[str] = ..., checkpoints: _Optional[_Iterable[_Union[CheckpointInfo, _Mapping]]] = ..., awaiting_rollback: _Optional[bool] = ..., restored_tag: _Optional[str] = ..., restored_version: _Optional[int] = ..., rollback_id: _Optional[str] = ..., stream_port: _Optional[int] = ..., placement: _Optional[_Union[PlacementMap, _Mapping]] = ..., loads: _Optional[_Iterable[_Union[BlockLoad, _Mapping]]] = ...) -> None: ...

class SparseTableStatus(_message.Message):
    __slots__ = ("spec", "rows", "bytes", "evicted")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    EVICTED_FIELD_NUMBER: _ClassVar[int]
    spec: TableSpec
    rows: int
    bytes: int
    evicted: int
    def __init__(self, spec: _Optional[_Union[TableSpec, _Mapping]] = ..., rows: _Optional[int] = ..., bytes: _Optional[int] = ..., evicted: _Optional[int] = ...) -> None: ...

class ListRowsRequest(_message.Message):
    __slots__ = ("table", "after_id", "from_start", "max_rows")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    AFTER_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_START_FIELD_NUMBER: _ClassVar[int]
    MAX_ROWS_FIELD_NUMBER: _ClassVar[int]
    table: str
    after_id: int
    from_start: bool
    max_rows: int
    def __init__(self, table: _Optional[str] = ..., after_id: _Optional[int] = ..., from_start: _Optional[bool] = ..., max_rows: _Optional[int] = ...) -> None: ...

class MoveRequest(_message.Message):
    __slots__ = ("placement", "give", "take", "payload", "release", "settle", "reshard", "shard_index", "tables", "skip", "max_bytes", "hold", "hold_from", "workers", "unhold")
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    GIVE_FIELD_NUMBER: _ClassVar[int]
    TAKE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    SETTLE_FIELD_NUMBER: _ClassVar[int]
    RESHARD_FIELD_NUMBER: _ClassVar[int]
    SHARD_INDEX_FIELD_NUMBER: _ClassVar[int]
    TABLES_FIELD_NUMBER: _ClassVar[int]
    SKIP_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    HOLD_FIELD_NUMBER: _ClassVar[int]
    HOLD_FROM_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    UNHOLD_FIELD_NUMBER: _ClassVar[int]
    placement: PlacementMap
    give: _containers.RepeatedCompositeFieldContainer[PlacedUnit]
    take: _containers.RepeatedCompositeFieldContainer[UnitState]
    payload: bytes
    release: bool
    settle: bool
    reshard: bool
    shard_index: int
    tables: _containers.RepeatedCompositeFieldContainer[TableSpec]
    skip: int
    max_bytes: int
    hold: bool
    hold_from: int
    workers: _containers.RepeatedScalarFieldContainer[int]
    unhold: bool
    def __init__(self, placement: _Optional[_Union[PlacementMap, _Mapping]] = ..., give: _Optional[_Iterable[_Union[PlacedUnit, _Mapping]]] = ..., take: _Optional[_Iterable[_Union[UnitState, _Mapping]]] = ..., payload: _Optional[bytes] = ..., release: _Optional[bool] = ..., settle: _Optional[bool] = ..., reshard: _Optional[bool] = ..., shard_index: _Optional[int] = ..., tables: _Optional[_Iterable[_Union[TableSpec, _Mapping]]] = ..., skip: _Optional[int] = ..., max_bytes: _Optional[int] = ..., hold: _Optional[bool] = ..., hold_from: _Optional[int] = ..., workers: _Optional[_Iterable[int]] = ..., unhold: _Optional[bool] = ...) -> None: ...

class UnitState(_message.Message):
    __slots__ = ("unit", "version")
    UNIT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    unit: PlacedUnit
    version: int
    def __init__(self, unit: _Optional[_Union[PlacedUnit, _Mapping]] = ..., version: _Optional[int] = ...) -> None: ...

class MoveReply(_message.Message):
    __slots__ = ("placement", "units", "payload", "more", "next_skip", "hold_from", "workers")
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    UNITS_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    NEXT_SKIP_FIELD_NUMBER: _ClassVar[int]
    HOLD_FROM_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    placement: PlacementMap
    units: _containers.RepeatedCompositeFieldContainer[UnitState]
    payload: bytes
    more: bool
    next_skip: int
    hold_from: int
    workers: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, placement: _Optional[_Union[PlacementMap, _Mapping]] = ..., units: _Optional[_Iterable[_Union[UnitState, _Mapping]]] = ..., payload: _Optional[bytes] = ..., more: _Optional[bool] = ..., next_skip: _Optional[int] = ..., hold_from: _Optional[int] = ..., workers: _Optional[_Iterable[int]] = ...) -> None: ...
