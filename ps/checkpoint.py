"""Checkpoints on disk: a shard's whole state, per block, atomic, checksummed, no pickle.

Layout, one sub-directory per checkpoint *tag* (a cluster checkpoint gives every shard
the same tag; periodic and final checkpoints are per shard)::

    DIR/<tag>/shard-00000-of-00002-v<version>-<nonce>.npz     the data
    DIR/<tag>/shard-00000-of-00002.manifest.json               written last

The data file is an ``.npz`` (``np.savez``, read back with ``allow_pickle=False``): a
``header`` array holding JSON (version, epoch, mode, worker clocks, the dedup table and
each table's metadata) and the arrays, named ``a0, a1, ...`` and mapped by the header
to ``(table, block, field)``. The manifest holds the data file's name, size and
SHA-256, and a SHA-256 of its own content. Each file is written under a temporary name,
fsynced, renamed into place, and the directory fsynced; the manifest comes last, so a
crash at any point leaves the previous checkpoint whole and the new one invisible.

Restoring (:func:`load`) takes the newest checkpoint whose files are valid and hold
every block this shard owns: its own file when the shard count is unchanged, or every
shard's file of one tag when it changed (N shards restore onto M: each reads the blocks
it owns now). A file whose checksum does not match is skipped with a warning and an
older checkpoint is used; nothing corrupt is ever served.

Functions here do file I/O and block; they hold no locks of their own.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np

from ps.errors import FailedPreconditionError, InvalidArgumentError
from ps.table_codecs import CODECS, CheckpointError

log = logging.getLogger(__name__)

FORMAT = "ps-checkpoint/1"
TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
_MANIFEST = re.compile(r"^shard-(\d{5})-of-(\d{5})\.manifest\.json$")
_CHUNK = 1 << 20

#: ``hook(stage, path)`` called while writing (tests inject crashes, see ps.faults)
WriteHook = Callable[[str, str], None]


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


def check_tag(tag: str) -> str:
    """Returns ``tag``; raises InvalidArgumentError unless it is a safe directory name."""
    if not isinstance(tag, str) or not TAG.match(tag):
        raise InvalidArgumentError(f"checkpoint tag {tag!r} must be 1-128 letters, digits and _ . - "
                                   "(not starting with . _ or -)")
    return tag


def new_tag(prefix: str) -> str:
    """``<prefix>-<UTC time to the millisecond>``, e.g. ``auto-20250101T120000.123Z``."""
    now = time.time()
    return f"{prefix}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime(now))}.{int(now * 1000) % 1000:03d}Z"


def _base(shard_index: int, num_shards: int) -> str:
    return f"shard-{shard_index:05d}-of-{num_shards:05d}"


# -- capture ------------------------------------------------------------------------------


def capture(shard, tag: str, at_version: int = 0, timeout_s: float = 60.0) -> ShardState:
    """A consistent copy of ``shard``'s state (see ``Shard.capture``). Blocks, bounded.

    Raises FailedPreconditionError before the shard knows its topology, or when any
    parameter or optimizer value is NaN/Inf (a non-finite model is never checkpointed,
    so the last finite checkpoint survives), AbortedError, DeadlineExceededError.
    """
    check_tag(tag)

    def export(s) -> list[TablePart]:
        parts = []
        for kind, codec in CODECS.items():
            for table in codec.tables(s):
                meta, arrays = codec.export(table)
                parts.append(TablePart(kind, table.spec.name, meta, arrays))
        return parts

    meta, parts = shard.capture(at_version, timeout_s, export)
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
                      tables=parts, created=time.time())


# -- writing ------------------------------------------------------------------------------


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: str) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _atomic_write(directory: str, name: str, write: Callable, hook: WriteHook | None = None,
                  stage: str = "") -> tuple[str, int]:
    """Write ``name`` in ``directory`` via a temporary file, fsync, rename, fsync the directory.

    Returns the file's (sha256, size). On any error the temporary file is removed.
    """
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".tmp-{name}-")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if hook is not None:
            hook(stage, tmp)
        digest = _sha256(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, os.path.join(directory, name))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)
    return digest


def _manifest_checksum(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


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
        _fsync_dir(os.path.dirname(os.path.abspath(directory)))
    tag_dir = os.path.join(directory, state.tag)
    if not os.path.isdir(tag_dir):
        os.makedirs(tag_dir, exist_ok=True)
        _fsync_dir(directory)
    base = _base(state.shard_index, state.num_shards)

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
        "clocks": {str(w): c for w, c in state.clocks.items()},
        "dedup": {str(w): [floor, above] for w, (floor, above) in (state.dedup or {}).items()},
        "tables": tables,
    }
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    data_name = f"{base}-v{state.version}-{secrets.token_hex(4)}.npz"
    digest, size = _atomic_write(tag_dir, data_name, lambda f: np.savez(f, **arrays), hook, "data")

    body = {
        "format": FORMAT, "tag": state.tag, "shard_index": state.shard_index, "num_shards": state.num_shards,
        "version": state.version, "epoch": state.epoch, "mode": state.mode, "created": state.created,
        "data": {"file": data_name, "bytes": size, "sha256": digest},
        "tables": [{"kind": t["kind"], "name": t["name"]} for t in tables],
        "cluster": bool(state.cluster),
    }
    manifest = dict(body, checksum=_manifest_checksum(body))
    manifest_name = f"{base}.manifest.json"
    _atomic_write(tag_dir, manifest_name, lambda f: f.write(json.dumps(manifest, indent=1).encode()),
                  hook, "manifest")
    _remove_unreferenced(tag_dir, base, keep=data_name)
    return os.path.join(tag_dir, manifest_name)


def _remove_unreferenced(tag_dir: str, base: str, keep: str | None) -> None:
    """Delete this shard's data and temporary files in ``tag_dir`` other than ``keep``."""
    for name in os.listdir(tag_dir):
        ours = name.startswith(base + "-v") and name.endswith(".npz")
        if (ours or name.startswith(f".tmp-{base}")) and name != keep:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(tag_dir, name))


# -- reading ------------------------------------------------------------------------------


def read_manifest(path: str) -> dict:
    """Parse and check one manifest. Raises CheckpointError."""
    try:
        with open(path, "rb") as f:
            manifest = json.loads(f.read(1 << 20).decode())
        body = {k: v for k, v in manifest.items() if k != "checksum"}
        if manifest.get("checksum") != _manifest_checksum(body):
            raise CheckpointError("manifest checksum mismatch")
        if manifest["format"] != FORMAT:
            raise CheckpointError(f"unknown format {manifest['format']!r}")
        for key in ("shard_index", "num_shards", "version", "epoch"):
            if not isinstance(manifest[key], int) or manifest[key] < 0:
                raise CheckpointError(f"bad {key}")
        if not 0 <= manifest["shard_index"] < manifest["num_shards"]:
            raise CheckpointError("bad shard index")
        data = manifest["data"]
        if not isinstance(data["file"], str) or "/" in data["file"] or data["file"].startswith("."):
            raise CheckpointError("bad data file name")
        return manifest
    except CheckpointError:
        raise
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"unreadable manifest: {exc!r}") from None


def _manifests(directory: str) -> list[tuple[str, str, dict]]:
    """``(tag, manifest path, manifest)`` of every valid manifest under ``directory``."""
    out = []
    for tag in sorted(os.listdir(directory)):
        tag_dir = os.path.join(directory, tag)
        if not TAG.match(tag) or not os.path.isdir(tag_dir):
            continue
        for name in sorted(os.listdir(tag_dir)):
            match = _MANIFEST.match(name)
            if not match:
                continue
            path = os.path.join(tag_dir, name)
            try:
                manifest = read_manifest(path)
                if manifest["tag"] != tag or (manifest["shard_index"], manifest["num_shards"]) != (
                        int(match.group(1)), int(match.group(2))):
                    raise CheckpointError("manifest does not match its file name")
            except CheckpointError as exc:
                log.warning("ignoring checkpoint manifest %s: %s", path, exc)
                continue
            out.append((tag, path, manifest))
    return out


def listing(directory: str, shard_index: int, num_shards: int) -> list[dict]:
    """This shard's own valid checkpoints: ``{"tag", "version", "cluster", "created"}`` each,
    newest first. Reads manifests only (the data files are checked when restoring)."""
    if not directory or not os.path.isdir(directory):
        return []
    out = [{"tag": tag, "version": m["version"], "cluster": bool(m.get("cluster", False)),
            "created": float(m.get("created", 0.0))}
           for tag, _, m in _manifests(directory) if (m["shard_index"], m["num_shards"]) == (shard_index, num_shards)]
    out.sort(key=lambda c: (c["created"], c["version"]), reverse=True)
    return out


def candidates(directory: str, shard_index: int, num_shards: int,
               tag: str | None = None) -> list[list[tuple[str, dict]]]:
    """Checkpoints a shard could restore from, newest first: each a list of
    ``(manifest path, manifest)``: its own file for the same shard count, or every
    shard's file of one tag for another shard count. ``tag``: only that checkpoint."""
    if not os.path.isdir(directory):
        return []
    by_tag: dict[str, dict[tuple[int, int], tuple[str, dict]]] = defaultdict(dict)
    found = []
    for name, path, m in _manifests(directory):
        if tag is not None and name != tag:
            continue
        where = (m["shard_index"], m["num_shards"])
        by_tag[name][where] = (path, m)
        if where == (shard_index, num_shards):
            found.append([(path, m)])
    for files in by_tag.values():
        for n in sorted({n for _, n in files}):
            if n != num_shards and all((i, n) in files for i in range(n)):
                found.append([files[(i, n)] for i in range(n)])
    found.sort(key=lambda c: (max(m["created"] for _, m in c), max(m["version"] for _, m in c)), reverse=True)
    return found


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
        digest, size = _sha256(data_path)
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


def _restore(files: list[tuple[str, dict]], shard_index: int, num_shards: int) -> ShardState:
    same_topology = len(files) == 1 and files[0][1]["num_shards"] == num_shards
    with contextlib.ExitStack() as stack:
        headers = [_open_data(stack, path, m) for path, m in files]
        pieces: dict[tuple[str, str], list] = defaultdict(list)
        for h in headers:
            for t in h["tables"]:
                pieces[(t["kind"], t["name"])].append((t["meta"], _Arrays(h["_npz"], t["arrays"], h["_path"])))
        tables: dict[str, list] = defaultdict(list)
        for (kind, name), parts in pieces.items():
            codec = CODECS.get(kind)
            if codec is None:
                raise UnsupportedCheckpointError(f"table {name!r} is of kind {kind!r}, which this server "
                                                 "cannot restore")
            tables[kind].append(codec.restore(parts, shard_index, num_shards))
        clocks: dict[int, int] = {}
        for h in headers:
            for w, c in h["clocks"].items():
                clocks[int(w)] = max(clocks.get(int(w), 0), int(c))
        dedup = None
        if same_topology:
            dedup = {int(w): (int(floor), [int(s) for s in above]) for w, (floor, above) in headers[0]["dedup"].items()}
        modes = {h["mode"] for h in headers}
        return ShardState(
            tag=files[0][1]["tag"], shard_index=shard_index, num_shards=num_shards,
            version=max(h["version"] for h in headers), epoch=max(h["epoch"] for h in headers),
            mode=modes.pop() if len(modes) == 1 else "mixed", clocks=clocks, dedup=dedup,
            tables=dict(tables), created=max(m["created"] for _, m in files),
            sources=[h["_path"] for h in headers],
        )


class UnsupportedCheckpointError(CheckpointError):
    """A valid checkpoint this server cannot restore (an unknown table kind): not skipped."""


def load(directory: str, shard_index: int, num_shards: int, tag: str | None = None) -> ShardState | None:
    """The newest valid checkpoint in ``directory`` (or checkpoint ``tag``), rebuilt for
    shard ``shard_index`` of ``num_shards``; None when there is none. Blocks on disk I/O.

    Corrupt, truncated or incomplete checkpoints are skipped with a warning. ``tables``
    of the result maps each kind to its restored tables; ``dedup`` is None when the
    shard count changed (sequence numbers are per shard). Raises
    UnsupportedCheckpointError for a valid checkpoint holding a table kind with no codec.
    """
    for files in candidates(directory, shard_index, num_shards, tag):
        try:
            return _restore(files, shard_index, num_shards)
        except UnsupportedCheckpointError:
            raise
        except CheckpointError as exc:
            log.warning("skipping checkpoint %s: %s; trying an older one", files[0][1]["tag"], exc)
    return None


def install(shard, state: ShardState) -> None:
    """Make a restored state the shard's own, with the next epoch. Call before serving."""

    def install_tables(s) -> None:
        for kind, codec in CODECS.items():
            codec.install(s, state.tables.get(kind, []))

    shard.install(state.version, state.clocks, state.dedup, state.epoch + 1, install_tables)


# -- retention ----------------------------------------------------------------------------


def prune(directory: str, shard_index: int, num_shards: int, keep: int) -> list[str]:
    """Delete this shard's checkpoints beyond the newest ``keep`` (but never its newest
    cluster checkpoint), and its temporary files left by a crash; returns the tags deleted.

    Only this shard's files are touched (manifest first, so a half-pruned checkpoint is
    simply absent); empty tag directories are removed. Call it only between checkpoints
    of this shard. Blocks on disk I/O.
    """
    base = _base(shard_index, num_shards)
    own = [(m["created"], tag, path, bool(m.get("cluster", False))) for tag, path, m in _manifests(directory)
           if (m["shard_index"], m["num_shards"]) == (shard_index, num_shards)]
    own.sort(reverse=True)
    # the newest cluster checkpoint is kept whatever K is: a sync rollback returns to it
    newest_cluster = next((path for _, _, path, cluster in own if cluster), None)
    removed = []
    for _, tag, path, _ in own[keep:]:
        if path == newest_cluster:
            continue
        tag_dir = os.path.dirname(path)
        with contextlib.suppress(OSError):
            os.unlink(path)
        _remove_unreferenced(tag_dir, base, keep=None)
        with contextlib.suppress(OSError):
            os.rmdir(tag_dir)  # only when no other shard's files remain
        removed.append(tag)
    # temporary files a crash left behind (checkpoints are serialized: none is in progress)
    for tag in os.listdir(directory):
        tag_dir = os.path.join(directory, tag)
        if TAG.match(tag) and os.path.isdir(tag_dir):
            for name in os.listdir(tag_dir):
                if name.startswith(f".tmp-{base}"):
                    with contextlib.suppress(OSError):
                        os.unlink(os.path.join(tag_dir, name))
            with contextlib.suppress(OSError):
                os.rmdir(tag_dir)  # only when empty
    if removed:
        with contextlib.suppress(OSError):
            _fsync_dir(directory)
    return removed
