"""A model file: table name -> array, written atomically as ``.npz`` or ``.safetensors``.

Layout (the keys of the file):

- a **dense table** ``T``: key ``T``, an array of the table's shape and dtype;
- a **sparse table with** ``num_rows`` (an embedding; ``worker.torch`` creates its sparse
  embeddings so): key ``T``, a dense ``(num_rows, dim)`` array holding every row as
  training reads it (rows never pushed hold their initial values), exactly the shape of
  the torch parameter, so a torch model loads the file with
  ``model.load_state_dict({k: torch.from_numpy(v) for k, v in np.load(PATH).items()})``;
- a **sparse table of unbounded int64 ids** ``T``: keys ``T@ids`` (the ids of the rows
  the servers store, int64, ascending) and ``T@rows`` (``(len(ids), dim)``, the rows in
  that order). Ids not listed read as the table's initial row (zeros for a table
  created with ``init="zeros"``). ``@`` cannot appear in a table name, so these keys never
  collide with a table's.

``.npz`` files are read with ``np.load(path)`` (no pickle: every array is numeric);
``.safetensors`` with ``safetensors.numpy.load_file(path)`` and need the optional
``safetensors`` package to write.

Writes are atomic: the bytes go to a temporary name in the target's folder, are fsynced,
and the file appears under its name in one step (a hard link when it must not overwrite,
which fails if the name exists, so two writers cannot both win; a rename with
``force``), after which the folder is fsynced. A reader never sees a partial file.
"""

from __future__ import annotations

import os
import secrets
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

__all__ = ["FORMATS", "file_format", "ids_key", "rows_key", "write_model"]

#: file suffix -> format name
FORMATS = {".npz": "npz", ".safetensors": "safetensors"}


def ids_key(table: str) -> str:
    """The key of an unbounded sparse table's ids."""
    return f"{table}@ids"


def rows_key(table: str) -> str:
    """The key of an unbounded sparse table's rows."""
    return f"{table}@rows"


def file_format(path: str | os.PathLike) -> str:
    """``"npz"`` or ``"safetensors"`` from the suffix of ``path``.

    Raises ValueError for another suffix, or for ``.safetensors`` when the
    ``safetensors`` package is not installed (before anything is read or written).
    """
    suffix = Path(path).suffix.lower()
    fmt = FORMATS.get(suffix)
    if fmt is None:
        raise ValueError(f"{path}: the file name must end in .npz or .safetensors, got {suffix or 'no suffix'!r}")
    if fmt == "safetensors":
        try:
            import safetensors.numpy  # noqa: F401 - optional dependency
        except ImportError:
            raise ValueError(f"{path}: writing .safetensors needs the safetensors package "
                             "(pip install safetensors), or use a .npz name") from None
    return fmt


def write_model(path: str | os.PathLike, arrays: Mapping[str, np.ndarray], *, force: bool = False) -> int:
    """Write ``arrays`` to ``path`` (format from the suffix) atomically; returns the bytes written.

    Refuses to replace an existing file unless ``force``. Blocks on disk I/O (and the
    fsyncs). Raises FileExistsError (the file exists, without ``force``), ValueError (bad
    suffix, missing safetensors package, a non-numeric array), OSError.
    """
    path = Path(path)
    fmt = file_format(path)
    for key, a in arrays.items():
        if not isinstance(a, np.ndarray) or a.dtype.kind not in "fiub":
            raise ValueError(f"{key}: only numeric arrays are written, got {type(a).__name__} "
                             f"{getattr(a, 'dtype', '')}")
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists; pass --force (force=True) to replace it")
    folder = path.parent if str(path.parent) else Path(".")
    tmp = folder / f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        with open(tmp, "xb") as f:
            if fmt == "npz":
                _write_npz(f, arrays)
            else:
                from safetensors.numpy import save

                f.write(save({k: np.ascontiguousarray(v) for k, v in arrays.items()}))
            f.flush()
            os.fsync(f.fileno())
            size = f.tell()
        if force:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)       # fails if the name appeared meanwhile: never overwrites
            except FileExistsError:
                raise FileExistsError(f"{path} exists; pass --force (force=True) to replace it") from None
            os.unlink(tmp)
        _fsync_dir(folder)
        return size
    finally:
        tmp.unlink(missing_ok=True)


def _write_npz(f, arrays: Mapping[str, np.ndarray]) -> None:
    """What ``np.savez`` writes (one ``KEY.npy`` member per array, uncompressed), with
    ``allow_pickle=False`` and any key (``np.savez`` reserves ``file`` and ``allow_pickle``)."""
    with zipfile.ZipFile(f, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, a in arrays.items():
            with zf.open(f"{key}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.ascontiguousarray(a), allow_pickle=False)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
