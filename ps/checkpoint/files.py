"""Checkpoint files on disk: names, atomic writes, manifests, listing and pruning.

One sub-directory per checkpoint *tag*; in it, per shard, a data file and a manifest
(``shard-00000-of-00002-v<version>-<nonce>.npz`` and ``shard-00000-of-00002.manifest.json``).
:func:`atomic_write` writes any file under a temporary name, fsyncs it, renames it into
place and fsyncs the directory; :func:`read_manifest` checks a manifest's own checksum;
:func:`listing` and :func:`candidates` find what a shard may restore from; :func:`prune`
keeps the newest K. What the files hold is :mod:`ps.checkpoint`'s business.

Functions here do file I/O and block; they hold no locks.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
from collections import defaultdict
from collections.abc import Callable

from ps.protocol.tags import TAG, check_tag, new_tag  # noqa: F401 - check_tag, new_tag re-exported
from ps.checkpoint.codecs import CheckpointError

log = logging.getLogger("ps.checkpoint")

FORMAT = "ps-checkpoint/1"
_MANIFEST = re.compile(r"^shard-(\d{5})-of-(\d{5})\.manifest\.json$")
_CHUNK = 1 << 20

#: ``hook(stage, path)`` called while writing (tests inject crashes, see ps.serving.faults)
WriteHook = Callable[[str, str], None]


def base_name(shard_index: int, num_shards: int) -> str:
    return f"shard-{shard_index:05d}-of-{num_shards:05d}"


# -- writing ------------------------------------------------------------------------------


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_of(path: str) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def atomic_write(directory: str, name: str, write: Callable, hook: WriteHook | None = None,
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
        digest = sha256_of(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, os.path.join(directory, name))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(directory)
    return digest


def manifest_checksum(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def remove_unreferenced(tag_dir: str, base: str, keep: str | None) -> None:
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
        if manifest.get("checksum") != manifest_checksum(body):
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


def manifests(directory: str) -> list[tuple[str, str, dict]]:
    """``(tag, manifest path, manifest)`` of every valid manifest under ``directory``."""
    out = []
    for tag in sorted(os.listdir(directory)):
        out += [(tag, path, manifest) for path, manifest in tag_manifests(directory, tag)]
    return out


def tag_manifests(directory: str, tag: str) -> list[tuple[str, dict]]:
    """``(manifest path, manifest)`` of every valid manifest of checkpoint ``tag`` in ``directory``."""
    tag_dir = os.path.join(directory, tag)
    if not TAG.match(tag) or not os.path.isdir(tag_dir):
        return []
    out = []
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
        out.append((path, manifest))
    return out


def layouts(directory: str) -> set[tuple[int, int]]:
    """``{(shard_index, num_shards)}`` of the shards whose valid manifests ``directory``
    holds (empty when it does not exist). Reads manifests only; blocks on disk I/O."""
    if not directory or not os.path.isdir(directory):
        return set()
    return {(m["shard_index"], m["num_shards"]) for _, _, m in manifests(directory)}


def why_none(directory: str) -> str:
    """Why ``directory`` gave no checkpoint to restore, in a few words for an error message."""
    if not os.path.isdir(directory):
        return "no such directory"
    tags = [t for t in os.listdir(directory) if TAG.match(t) and os.path.isdir(os.path.join(directory, t))]
    if not tags:
        return "it holds no checkpoint"
    return f"none of its {len(tags)} checkpoint folder(s) is valid and complete for this shard; see the warnings above"


def listing(directory: str, shard_index: int, num_shards: int) -> list[dict]:
    """This shard's own valid checkpoints: ``{"tag", "version", "cluster", "created"}`` each,
    newest first. Reads manifests only (the data files are checked when restoring)."""
    if not directory or not os.path.isdir(directory):
        return []
    out = [{"tag": tag, "version": m["version"], "cluster": bool(m.get("cluster", False)),
            "created": float(m.get("created", 0.0))}
           for tag, _, m in manifests(directory) if (m["shard_index"], m["num_shards"]) == (shard_index, num_shards)]
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
    for name, path, m in manifests(directory):
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


# -- retention ----------------------------------------------------------------------------


def prune(directory: str, shard_index: int, num_shards: int, keep: int) -> list[str]:
    """Delete this shard's checkpoints beyond the newest ``keep`` (but never its newest
    cluster checkpoint), and its temporary files left by a crash; returns the tags deleted.

    Only this shard's files are touched (manifest first, so a half-pruned checkpoint is
    simply absent); empty tag directories are removed. Call it only between checkpoints
    of this shard. Blocks on disk I/O.
    """
    base = base_name(shard_index, num_shards)
    own = [(m["created"], tag, path, bool(m.get("cluster", False))) for tag, path, m in manifests(directory)
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
        remove_unreferenced(tag_dir, base, keep=None)
        with contextlib.suppress(OSError):
            os.rmdir(tag_dir)  # only when no other shard's files remain
        removed.append(tag)
    # temporary files a crash left behind (checkpoints are serialized: none is in progress).
    # Only a folder this emptied goes: an empty one may be another shard's, made a moment
    # ago for the checkpoint it is writing now (shards may share the directory).
    for tag in os.listdir(directory):
        tag_dir = os.path.join(directory, tag)
        if TAG.match(tag) and os.path.isdir(tag_dir):
            leftovers = [name for name in os.listdir(tag_dir) if name.startswith(f".tmp-{base}")]
            for name in leftovers:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(tag_dir, name))
            if leftovers:
                with contextlib.suppress(OSError):
                    os.rmdir(tag_dir)  # only when empty
    if removed:
        with contextlib.suppress(OSError):
            fsync_dir(directory)
    return removed
