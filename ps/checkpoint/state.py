"""Checkpoints on disk: a shard's whole state, per block, atomic, checksummed, no pickle.

Layout, one sub-directory per checkpoint *tag* (a cluster checkpoint gives every shard
the same tag; periodic and final checkpoints are per shard)::

    DIR/<tag>/shard-00000-of-00002-v<version>-<nonce>.npz     the data
    DIR/<tag>/shard-00000-of-00002.manifest.json               written last

The data file is an ``.npz`` (``np.savez``, read back with ``allow_pickle=False``): a
``header`` array holding JSON (version, epoch, mode, worker clocks, which workers had left,
the dedup table and each table's metadata) and the arrays, named ``a0, a1, ...`` and
mapped by the header to ``(table, block, field)``. The manifest holds the data file's name, size and
SHA-256, and a SHA-256 of its own content. Each file is written under a temporary name,
fsynced, renamed into place, and the directory fsynced; the manifest comes last, so a
crash at any point leaves the previous checkpoint whole and the new one invisible.

Restoring (:func:`load`) takes the newest checkpoint whose files are valid and hold
every block this shard owns: its own file when the shard count is unchanged, or every
shard's file of one tag when it changed (N shards restore onto M: each reads the blocks
it owns now), or when units had moved or were moving (the manifest's ``placement_moved``).
A checkpoint taken in the middle of a move is whole too: the units a shard had given away
and kept (``Shard.kept``) are saved, marked kept, and each unit is restored from its best
copy (``ps.checkpoint.codecs.best_copies``; docs/placement.md "Checkpoints"). A file
whose checksum does not match is skipped with a warning and an older checkpoint is used;
nothing corrupt is ever served.

The files' side (names, atomic writes, manifests, listing, pruning) is
:mod:`ps.checkpoint.files`. Functions here do file I/O and block; they hold no locks of
their own.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np

from ps.checkpoint.files import (
    FORMAT,
    WriteHook,
    atomic_write,
    base_name,
    candidates,
    check_tag,
    fsync_dir,
    listing,
    manifest_checksum,
    new_tag,
    prune,
    read_manifest,
    remove_unreferenced,
    sha256_of,
    tag_manifests,
)
from ps.errors import FailedPreconditionError, InvalidArgumentError
from ps.tables.placement_map import PlacementMap, Unit
from ps.checkpoint.codecs import CODECS, CheckpointError, Piece

log = logging.getLogger(__name__)

#: ``np.load`` parses every array's header with ``ast``, and CPython 3.11 can fail with
#: "SystemError: AST constructor recursion depth mismatch" when two threads build ASTs at
#: once (python/cpython#106905). Two shards' restores in one process (tests, or a Restore
#: beside a startup) would then see a valid checkpoint as unreadable, so reads take turns.
_READS = threading.Lock()

# the files' side (ps.checkpoint.files) is part of this module's API too
__all__ = ["FORMAT", "ShardState", "TablePart", "WriteHook", "capture", "check_tag", "install", "listing", "load",
           "new_tag", "prune", "read_manifest", "write"]


@dataclass
class TablePart:
    """One table's state on one shard: its kind, name, metadata and arrays."""

    kind: str
    name: str
    meta: dict
    arrays: Mapping[str, np.ndarray]


@dataclass
class ShardState:
    """Everything a shard checkpoints (or what a restore rebuilt for a shard)."""

    tag: str
    shard_index: int
    num_shards: int
    version: int
    epoch: int
    mode: str
    clocks: dict[int, int]
    dedup: dict[int, tuple[int, list[int]]] | None
    tables: list | dict = field(default_factory=list)  # saved: TableParts; loaded: {kind: [tables]}
    created: float = 0.0
    sources: list[str] = field(default_factory=list)  # files a restore read
    cluster: bool = False  # written under a cluster-wide tag on request (sync rollbacks use these)
    left: list[int] = field(default_factory=list)  # workers that had left the quorum (not live on restore)
    #: the placement map: saved, the shard's; loaded, the one to serve with (docs/placement.md)
    placement: PlacementMap | None = None
    #: saved: the shard kept given units or awaited units (a move under way), so its file alone
    #: may not hold every unit it owns; loaded: False
    unsettled: bool = False
    #: loaded: the shard's own kept copies that the map puts elsewhere (``Shard.kept``)
    kept: dict[Unit, object] = field(default_factory=dict)


# -- capture ------------------------------------------------------------------------------


def capture(shard, tag: str, at_version: int = 0, timeout_s: float = 60.0) -> ShardState:
    """A consistent copy of ``shard``'s state (see ``Recovery.capture``). Blocks, bounded.

    Raises FailedPreconditionError before the shard knows its topology, or when any
    parameter or optimizer value is NaN/Inf (a non-finite model is never checkpointed,
    so the last finite checkpoint survives), AbortedError, DeadlineExceededError.
    """
    check_tag(tag)

    held: list[tuple[PlacementMap | None, bool]] = []

    def export() -> list[TablePart]:  # the shard's lock is held: the map, the tables and the kept copies agree
        held.append((shard.current_placement(), bool(shard.kept) or _awaits_units(shard)))
        parts = []
        for kind, codec in CODECS.items():
            for table in codec.tables(shard):
                meta, arrays = codec.export(table)
                parts.append(TablePart(kind, table.spec.name, meta, arrays))
                kept = codec.export_kept(table, shard.kept)
                if kept is not None:
                    parts.append(TablePart(kind, table.spec.name, *kept))
        return parts

    meta, parts = shard.recovery.capture(at_version, timeout_s, export)
    if meta["topology"] is None:
        raise FailedPreconditionError("nothing to checkpoint: the shard does not know its topology yet")
    for part in parts:
        for key, arr in part.arrays.items():
            if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                raise FailedPreconditionError(
                    f"checkpoint refused: table {part.name!r} ({key}) holds NaN or Inf values; "
                    "the last finite checkpoint is kept")
    index, count = meta["topology"]
    return ShardState(tag=tag, shard_index=index, num_shards=count, version=meta["version"],
                      epoch=meta["epoch"], mode=meta["mode"], clocks=meta["clocks"], dedup=meta["dedup"],
                      tables=parts, created=time.time(), left=meta["left"], placement=held[0][0],
                      unsettled=held[0][1])


def _awaits_units(shard) -> bool:
    """Lock held: the shard's map puts units here that it does not hold yet (a move under way)."""
    placement, topology = shard.current_placement(), shard.topology
    if placement is None or shard.retired:
        return False
    if shard.arriving():
        return True
    return any(not np.array_equal(t.held, placement.bucket_owners(name) == topology[0])
               for name, t in shard.rows.tables.items())


# -- writing ------------------------------------------------------------------------------


def write(directory: str, state: ShardState, hook: WriteHook | None = None) -> str:
    """Write ``state`` as checkpoint ``state.tag`` in ``directory``; returns the manifest path.

    Atomic: until the manifest is renamed into place the checkpoint does not exist, and
    a previous manifest of the same tag and shard stays valid. Blocks on disk I/O.
    Raises OSError.
    """
    check_tag(state.tag)
    new_dir = not os.path.isdir(directory)
    os.makedirs(directory, exist_ok=True)
    if new_dir:
        fsync_dir(os.path.dirname(os.path.abspath(directory)))
    tag_dir = os.path.join(directory, state.tag)
    if not os.path.isdir(tag_dir):
        os.makedirs(tag_dir, exist_ok=True)
        fsync_dir(directory)
    base = base_name(state.shard_index, state.num_shards)

    arrays: dict[str, np.ndarray] = {}
    tables = []
    for part in state.tables:
        keys = {}
        for name, arr in part.arrays.items():
            key = f"a{len(arrays)}"
            arrays[key] = arr if arr.flags.c_contiguous else np.array(arr, order="C")  # keeps 0-d arrays 0-d
            keys[name] = key
        tables.append({"kind": part.kind, "name": part.name, "meta": part.meta, "arrays": keys})
    header = {
        "format": FORMAT, "tag": state.tag, "shard_index": state.shard_index, "num_shards": state.num_shards,
        "version": state.version, "epoch": state.epoch, "mode": state.mode, "created": state.created,
        "clocks": {str(w): c for w, c in state.clocks.items()}, "left": [int(w) for w in state.left],
        "dedup": {str(w): [floor, above] for w, (floor, above) in (state.dedup or {}).items()},
        "tables": tables,
    }
    if state.placement is not None:
        header["placement"] = state.placement.to_json()
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    data_name = f"{base}-v{state.version}-{secrets.token_hex(4)}.npz"
    digest, size = atomic_write(tag_dir, data_name, lambda f: np.savez(f, **arrays), hook, "data")

    body = {
        "format": FORMAT, "tag": state.tag, "shard_index": state.shard_index, "num_shards": state.num_shards,
        "version": state.version, "epoch": state.epoch, "mode": state.mode, "created": state.created,
        "data": {"file": data_name, "bytes": size, "sha256": digest},
        "tables": [{"kind": t["kind"], "name": t["name"]} for t in tables],
        "cluster": bool(state.cluster),
        # the shard's file alone may not hold every unit it owns: a restore reads the whole tag
        "placement_moved": bool(state.placement is not None and state.placement.moved) or state.unsettled,
        "placement_version": state.placement.version if state.placement is not None else 0,
    }
    manifest = dict(body, checksum=manifest_checksum(body))
    manifest_name = f"{base}.manifest.json"
    atomic_write(tag_dir, manifest_name, lambda f: f.write(json.dumps(manifest, indent=1).encode()),
                  hook, "manifest")
    remove_unreferenced(tag_dir, base, keep=data_name)
    return os.path.join(tag_dir, manifest_name)


# -- reading ------------------------------------------------------------------------------


class _Arrays(Mapping):
    """The arrays of one table in an open npz, by their logical names; loaded on access."""

    def __init__(self, npz, keys: dict[str, str], path: str) -> None:
        self._npz, self._keys, self._path = npz, keys, path

    def __getitem__(self, name: str) -> np.ndarray:
        key = self._keys[name]
        try:
            return self._npz[key]
        except Exception as exc:  # a torn zip member, a pickled object array, ...
            raise CheckpointError(f"{self._path}: cannot read {name}: {exc}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._keys

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def _open_data(stack: contextlib.ExitStack, path: str, manifest: dict) -> dict:
    """Verify one data file against its manifest and open it; returns its header."""
    data_path = os.path.join(os.path.dirname(path), manifest["data"]["file"])
    try:
        digest, size = sha256_of(data_path)
    except OSError as exc:
        raise CheckpointError(f"{data_path}: {exc}") from None
    if size != manifest["data"]["bytes"] or digest != manifest["data"]["sha256"]:
        raise CheckpointError(f"{data_path}: checksum mismatch (the file is corrupt or truncated)")
    try:
        npz = stack.enter_context(np.load(data_path, allow_pickle=False))
        header = json.loads(bytes(npz["header"]).decode())
    except Exception as exc:
        raise CheckpointError(f"{data_path}: unreadable: {exc}") from None
    for key in ("tag", "shard_index", "num_shards", "version", "epoch"):
        if header.get(key) != manifest[key]:
            raise CheckpointError(f"{data_path}: header {key} disagrees with the manifest")
    header["_npz"], header["_path"] = npz, data_path
    return header


def _saved_map(header: dict) -> PlacementMap | None:
    """The placement map a data file saved (None: written before maps were). Raises CheckpointError."""
    if "placement" not in header:
        return None
    try:
        return PlacementMap.from_json(header["placement"])
    except InvalidArgumentError as exc:
        raise CheckpointError(f"{header['_path']}: {exc}") from None


def _placement_of(headers: list[dict], num_shards: int) -> PlacementMap:
    """The map a restore serves with: the newest saved one (without the shards' addresses,
    which a restart changes) when it is for ``num_shards`` shards; else the default rule on ``num_shards``, one version past every saved map (a
    resharding restore rebuilds every shard from the blocks, wherever they were)."""
    saved = [m for m in map(_saved_map, headers) if m is not None]
    newest = max(saved, key=lambda m: m.version, default=None)
    if newest is not None and newest.num_shards == num_shards:  # the servers' addresses come from the clients
        return PlacementMap(newest.version, num_shards, newest.moved)
    return PlacementMap.initial(num_shards, version=1 if newest is None else newest.version + 1)


def _restore(files: list[tuple[str, dict]], shard_index: int, num_shards: int) -> ShardState:
    same_topology = all(m["num_shards"] == num_shards for _, m in files)
    with contextlib.ExitStack() as stack:
        headers = [_open_data(stack, path, m) for path, m in files]
        placement = _placement_of(headers, num_shards)
        pieces: dict[tuple[str, str], list[Piece]] = defaultdict(list)
        for h in headers:
            saved, own = _saved_map(h), same_topology and h["shard_index"] == shard_index
            for t in h["tables"]:
                pieces[(t["kind"], t["name"])].append(Piece(t["meta"], _Arrays(h["_npz"], t["arrays"], h["_path"]),
                                                            int(h["shard_index"]), saved, own))
        tables: dict[str, list] = defaultdict(list)
        kept: dict[Unit, object] = {}
        for (kind, name), parts in pieces.items():
            codec = CODECS.get(kind)
            if codec is None:
                raise UnsupportedCheckpointError(f"table {name!r} is of kind {kind!r}, which this server "
                                                 "cannot restore")
            tables[kind].append(codec.restore(parts, shard_index, placement))
            if same_topology:  # kept copies finish a move under the saved map; another count has a new map
                kept.update(codec.restore_kept(parts, shard_index, placement))
        clocks: dict[int, int] = {}
        for h in headers:
            for w, c in h["clocks"].items():
                clocks[int(w)] = max(clocks.get(int(w), 0), int(c))
        left: set[int] = set()  # departed on every shard that knew them (no "left" key: all live)
        live: set[int] = set()
        for h in headers:
            gone = {int(w) for w in h.get("left", ())}
            left |= gone
            live |= {int(w) for w in h["clocks"]} - gone
        left -= live
        dedup = None
        if same_topology:  # this shard's own table (sequence numbers are per shard)
            own = next(h for h in headers if h["shard_index"] == shard_index)
            dedup = {int(w): (int(floor), [int(s) for s in above]) for w, (floor, above) in own["dedup"].items()}
        modes = {h["mode"] for h in headers}
        return ShardState(
            tag=files[0][1]["tag"], shard_index=shard_index, num_shards=num_shards,
            version=max(h["version"] for h in headers), epoch=max(h["epoch"] for h in headers),
            mode=modes.pop() if len(modes) == 1 else "mixed", clocks=clocks, dedup=dedup,
            tables=dict(tables), created=max(m["created"] for _, m in files),
            sources=[h["_path"] for h in headers], left=sorted(left), placement=placement, kept=kept,
        )


class UnsupportedCheckpointError(CheckpointError):
    """A valid checkpoint this server cannot restore (an unknown table kind): not skipped."""


def load(directory: str, shard_index: int, num_shards: int, tag: str | None = None) -> ShardState | None:
    """The newest valid checkpoint in ``directory`` (or checkpoint ``tag``), rebuilt for
    shard ``shard_index`` of ``num_shards``; None when there is none. Blocks on disk I/O.

    Corrupt, truncated or incomplete checkpoints are skipped with a warning. ``tables``
    of the result maps each kind to its restored tables; ``dedup`` is None when the
    shard count changed (sequence numbers are per shard). Loads in one process take
    turns (``_READS``). Raises
    UnsupportedCheckpointError for a valid checkpoint holding a table kind with no codec.
    """
    for files in candidates(directory, shard_index, num_shards, tag):
        if len(files) == 1:  # units moved in (or placed by an older rule, or mid-move) live in others' files
            files = _needed_files(directory, files[0])
        try:
            with _READS:
                return _restore(files, shard_index, num_shards)
        except UnsupportedCheckpointError:
            raise
        except CheckpointError as exc:
            log.warning("skipping checkpoint %s: %s; trying an older one", files[0][1]["tag"], exc)
    return None


def _needed_files(directory: str, own: tuple[str, dict]) -> list[tuple[str, dict]]:
    """The files a shard restores from when its own file ``own`` is for the same shard count:
    its own alone when that holds every unit the shard owns, else every shard's file of the
    checkpoint (same tag and count, own first where all are there; just its own where some are
    missing: the restore then names what is missing). Every file is needed when units had
    moved (``placement_moved``; also set by a shard that kept given units or awaited units
    of a move, and missing from files written before the map: their blocks were placed by an
    older rule), or when another shard's file saved a newer map (written after a move this
    shard's file predates)."""
    manifest = own[1]
    count = manifest["num_shards"]
    files = {m["shard_index"]: (path, m) for path, m in tag_manifests(directory, manifest["tag"])
             if m["num_shards"] == count}
    newer = any(m.get("placement_version", 0) > manifest.get("placement_version", 0) for _, m in files.values())
    if not manifest.get("placement_moved", True) and not newer:
        return [own]
    if len(files) != count:
        return [files.get(manifest["shard_index"], own)]
    return [files[i] for i in range(count)]


def install_tables(shard, state: ShardState) -> None:
    """Install a restored state's tables, kept copies and placement map on ``shard`` (its
    lock held: a ``Recovery.install`` or rollback callback)."""
    for kind, codec in CODECS.items():
        codec.install(shard, state.tables.get(kind, []))
    shard.kept.clear()
    shard.kept.update(state.kept)
    if state.placement is not None:
        shard.set_placement(state.placement)


def install(shard, state: ShardState) -> None:
    """Make a restored state the shard's own, with the next epoch. Call before serving."""
    shard.recovery.install(state.version, state.clocks, state.dedup, state.epoch + 1,
                           lambda: install_tables(shard, state), state.left)


