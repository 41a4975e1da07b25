"""Data files read into tables: ``.npz``, ``.npy``, ``.csv`` and libsvm text, local or by URL.

``read_table(path)`` parses one file (a local path, or any URL with a scheme through fsspec,
imported lazily) into a ``Table``; ``align_features`` gives several tables one feature
width; ``check_labels`` decides classification or regression and validates the labels.
Splitting and sharding happen in ``worker.data``. Every problem is a ``DataError`` whose
message is one line naming the file and, for text, the 1-based line (binary: the row).

Formats, chosen by suffix (a trailing ``.gz`` is decompressed first):

- ``.npz``: arrays ``x`` (2-D) and ``y``, optionally ``x_test`` and ``y_test``.
- ``.npy``: one 2-D numeric array; the last column is the label.
- ``.csv``: comma-separated numbers, the last field the label; blank lines are skipped and
  a first line with any non-numeric field is a header.
- ``.svm``, ``.libsvm``, ``.txt``: ``label idx:val idx:val ...`` (``#`` starts a comment,
  ``qid:`` is ignored). Indices are 0-based if any file uses index 0, else 1-based.
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import io
import re
import zipfile
from dataclasses import dataclass

import numpy as np

__all__ = ["DataError", "Table", "align_features", "check_labels", "expand_paths", "read_table"]

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_FORMATS = {".npz": "npz", ".npy": "npy", ".csv": "csv", ".svm": "libsvm", ".libsvm": "libsvm",
            ".txt": "libsvm"}


class DataError(ValueError):
    """A data source is missing, malformed, or does not fit the model.

    The message is one line naming the file, and the 1-based line (text) or row (binary)
    where that applies, e.g. ``data.csv line 17: expected 65 numeric fields, got 64``.
    """


@dataclass(frozen=True, eq=False)
class Table:
    """One file's rows, before splitting: float64 features ``x`` (n, F), labels ``y``.

    ``lines`` holds each row's 1-based line in a text file (None: binary, rows count from
    1). ``x_test``/``y_test`` are an npz file's own test split. A libsvm table has
    ``x=None`` and ``sparse=(rows, indices, values)`` until ``align_features``.
    """

    name: str
    x: np.ndarray | None
    y: np.ndarray
    lines: np.ndarray | None = None
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    sparse: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def where(self, row: int, *, test: bool = False) -> str:
        """Name the place of a row (0-based index) for an error message."""
        if test:
            return f"{self.name} y_test row {row + 1}"
        if self.lines is not None:
            return f"{self.name} line {int(self.lines[row])}"
        return f"{self.name} row {row + 1}"


def _has_scheme(path: str) -> bool:
    """True for a URL such as ``file://``, ``s3://`` or ``hdfs://`` (read through fsspec)."""
    return bool(_SCHEME.match(path))


def _fsspec(path: str):
    try:
        import fsspec
    except ImportError:
        raise DataError(f"reading {path} needs fsspec: pip install 'grpc-ps[fsspec]'") from None
    return fsspec


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def expand_paths(spec: str) -> list[str]:
    """Split a comma-separated list and expand globs, keeping order; each glob sorted.

    Raises DataError for an empty item or a glob that matches nothing. Lists a directory
    (or a bucket through fsspec) for each glob; blocks on that I/O.
    """
    paths: list[str] = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            raise DataError(f"empty path in data source {spec!r}")
        if _has_scheme(item) and "*" in item:
            fsspec = _fsspec(item)
            try:
                fs, pattern = fsspec.core.url_to_fs(item)
                found = [fs.unstrip_protocol(p) for p in sorted(fs.glob(pattern))]
            except (ImportError, ValueError, OSError) as e:
                raise DataError(f"cannot list {item}: {_one_line(e)}") from None
        elif not _has_scheme(item) and glob.has_magic(item):
            found = sorted(glob.glob(item))
        else:
            found = [item]
        if not found:
            raise DataError(f"no files match {item}")
        paths.extend(found)
    return list(dict.fromkeys(paths))


def _format_of(path: str) -> tuple[str, bool]:
    name = path.split("?", 1)[0].lower() if _has_scheme(path) else path.lower()
    compressed = name.endswith(".gz")
    name = name[:-3] if compressed else name
    for suffix, fmt in _FORMATS.items():
        if name.endswith(suffix):
            return fmt, compressed
    raise DataError(f"unknown data source {path!r}: expected 'digits', 'synthetic:KIND?...', "
                    "or a .npz, .npy, .csv, .svm, .libsvm or .txt file or URL")


def _read_bytes(path: str) -> bytes:
    opener = _fsspec(path).open if _has_scheme(path) else open
    try:
        with opener(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (ImportError, ValueError) as e:  # a protocol fsspec lacks (s3fs...) or not known
        raise DataError(f"reading {path}: {_one_line(e)}") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read: {_one_line(e)}") from None


def read_table(path: str) -> Table:
    """Read and parse one file (blocks on its I/O). Raises DataError naming the file."""
    fmt, compressed = _format_of(path)
    data = _read_bytes(path)
    if compressed:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise DataError(f"{path}: not a valid gzip file: {_one_line(e)}") from None
    if fmt in ("npz", "npy"):
        return _read_npy(path, data) if fmt == "npy" else _read_npz(path, data)
    text = data.decode("utf-8", errors="replace").removeprefix("\ufeff")
    return _read_csv(path, text) if fmt == "csv" else _read_libsvm(path, text)


def _load(path: str, data: bytes):
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: not a valid {path.rsplit('.', 1)[-1]} file: "
                        f"{_one_line(e)}") from None


def _numeric(path: str, name: str, array: np.ndarray, ndim: tuple[int, ...]) -> np.ndarray:
    if array.dtype.kind not in "biuf":
        raise DataError(f"{path}: {name} has dtype {array.dtype}, expected numbers")
    if array.ndim not in ndim:
        raise DataError(f"{path}: {name} has {array.ndim} dimensions, expected "
                        f"{' or '.join(map(str, ndim))}")
    bad = ~np.isfinite(array.reshape(len(array), -1)).all(axis=1) if array.size else []
    if np.any(bad):
        raise DataError(f"{path}: {name} row {int(np.argmax(bad)) + 1}: non-finite value")
    return array.astype(np.float64)


def _read_npy(path: str, data: bytes) -> Table:
    array = _load(path, data)
    if not isinstance(array, np.ndarray):
        array.close()
        raise DataError(f"{path}: not a valid npy file (it holds several arrays)")
    array = _numeric(path, "array", array, (2,))
    if array.shape[1] < 2:
        raise DataError(f"{path}: expected at least 2 columns (features, then label), "
                        f"got {array.shape[1]}")
    return _nonempty(Table(path, array[:, :-1], array[:, -1].copy()))


def _read_npz(path: str, data: bytes) -> Table:
    npz = _load(path, data)
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: not a valid npz file (it holds a single array)")
    with npz:
        names = set(npz.files)
        for need in ("x", "y"):
            if need not in names:
                raise DataError(f"{path}: missing array {need!r} (has: "
                                f"{', '.join(sorted(names)) or 'none'})")
        if ("x_test" in names) != ("y_test" in names):
            raise DataError(f"{path}: has one of x_test, y_test but not the other")
        try:
            arrays = {k: npz[k] for k in ("x", "y", "x_test", "y_test") if k in names}
        except (ValueError, OSError, zipfile.BadZipFile) as e:
            raise DataError(f"{path}: cannot load arrays: {_one_line(e)}") from None
    out = {k: _numeric(path, k, a, (2,) if k.startswith("x") else (1, 2))
           for k, a in arrays.items()}
    for x, y in (("x", "y"), ("x_test", "y_test")):
        if x in out and len(out[x]) != len(out[y]):
            raise DataError(f"{path}: {x} has {len(out[x])} rows but {y} has {len(out[y])}")
    if "x_test" in out and out["x_test"].shape[1] != out["x"].shape[1]:
        raise DataError(f"{path}: x_test has {out['x_test'].shape[1]} features "
                        f"but x has {out['x'].shape[1]}")
    return _nonempty(Table(path, out["x"], out["y"], x_test=out.get("x_test"),
                           y_test=out.get("y_test")))


def _nonempty(table: Table) -> Table:
    if len(table.y) == 0:
        raise DataError(f"{table.name}: no data rows")
    return table


def _is_number(field: str) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True


def _read_csv(path: str, text: str) -> Table:
    all_lines = text.splitlines()
    numbers = [i for i, line in enumerate(all_lines, 1) if line and not line.isspace()]
    if numbers and not all(map(_is_number, all_lines[numbers[0] - 1].split(","))):
        header = all_lines[numbers.pop(0) - 1]
        width = header.count(",") + 1
    else:
        width = all_lines[numbers[0] - 1].count(",") + 1 if numbers else 0
    if not numbers:
        raise DataError(f"{path}: no data rows")
    if width < 2:
        raise DataError(f"{path} line {numbers[0]}: expected at least 2 fields "
                        f"(features, then label), got {width}")
    rows = [all_lines[i - 1] for i in numbers]
    try:
        table = np.loadtxt(rows, delimiter=",", dtype=np.float64, comments=None, ndmin=2)
    except ValueError as e:
        raise _csv_error(path, rows, numbers, width) or DataError(f"{path}: {_one_line(e)}") \
            from None
    if table.shape[1] != width:
        raise _csv_error(path, rows, numbers, width) or DataError(
            f"{path}: expected {width} numeric fields per line, got {table.shape[1]}")
    bad = ~np.isfinite(table).all(axis=1)
    if bad.any():
        raise DataError(f"{path} line {numbers[int(np.argmax(bad))]}: non-finite value")
    return Table(path, table[:, :-1], table[:, -1].copy(), lines=np.asarray(numbers))


def _csv_error(path: str, rows: list[str], numbers: list[int], width: int) -> DataError | None:
    """Find the first bad line after a vectorised parse failed (one Python pass)."""
    for line_no, row in zip(numbers, rows):
        fields = row.split(",")
        if len(fields) != width:
            return DataError(f"{path} line {line_no}: expected {width} numeric fields, "
                             f"got {len(fields)}")
        for column, field in enumerate(fields, 1):
            if not _is_number(field):
                return DataError(f"{path} line {line_no} field {column}: "
                                 f"{field.strip()!r} is not a number")
    return None


def _read_libsvm(path: str, text: str) -> Table:
    labels: list[float] = []
    lines: list[int] = []
    rows: list[int] = []
    indices: list[int] = []
    values: list[float] = []
    for line_no, line in enumerate(text.splitlines(), 1):
        tokens = line.split("#", 1)[0].split()
        if not tokens:
            continue
        row = len(labels)
        try:
            labels.append(float(tokens[0]))
        except ValueError:
            raise DataError(f"{path} line {line_no}: label {tokens[0]!r} is not a number") \
                from None
        lines.append(line_no)
        for token in tokens[1:]:
            index, colon, value = token.partition(":")
            if index == "qid" and colon:
                continue
            try:
                column, number = int(index), float(value)
            except ValueError:
                column = -1
            if not colon or column < 0:
                raise DataError(f"{path} line {line_no}: expected index:value with a "
                                f"non-negative integer index and a number, got {token!r}")
            rows.append(row)
            indices.append(column)
            values.append(number)
    if not labels:
        raise DataError(f"{path}: no data rows")
    vals = np.asarray(values, dtype=np.float64)
    if not np.isfinite(vals).all():
        bad_row = rows[int(np.argmax(~np.isfinite(vals)))]
        raise DataError(f"{path} line {lines[bad_row]}: non-finite value")
    y = np.asarray(labels, dtype=np.float64)
    if not np.isfinite(y).all():
        raise DataError(f"{path} line {lines[int(np.argmax(~np.isfinite(y)))]}: "
                        "non-finite label")
    sparse = (np.asarray(rows, dtype=np.int64), np.asarray(indices, dtype=np.int64), vals)
    return Table(path, None, y, lines=np.asarray(lines), sparse=sparse)


def align_features(tables: list[Table]) -> list[Table]:
    """Densify libsvm tables to one shared width; check all widths and target shapes agree.

    libsvm indices are 0-based if any libsvm table uses index 0, else 1-based; the width is
    the largest index seen (plus one if 0-based). Raises DataError on a width mismatch.
    """
    sparse = [t.sparse for t in tables if t.sparse is not None]
    if sparse:
        used = [s[1] for s in sparse if len(s[1])]
        base = 0 if any((s == 0).any() for s in used) else 1
        width = max([int(s.max()) + 1 - base for s in used] or [1])
        dense = []
        for t in tables:
            if t.sparse is not None:
                rows, indices, values = t.sparse
                x = np.zeros((len(t.y), width))
                x[rows, indices - base] = values
                t = dataclasses.replace(t, x=x, sparse=None)
            dense.append(t)
        tables = dense
    first = tables[0]
    for t in tables:
        if t.x.shape[1] != first.x.shape[1]:
            raise DataError(f"feature count {t.x.shape[1]} in {t.name} does not match "
                            f"{first.x.shape[1]} in {first.name}")
        for y in (t.y, t.y_test):
            if y is not None and y.shape[1:] != first.y.shape[1:]:
                raise DataError(f"targets of shape {y.shape[1:]} in {t.name} do not match "
                                f"{first.y.shape[1:]} in {first.name}")
    return tables


def check_labels(tables: list[Table], task: str = "auto") -> int:
    """Validate labels; return the class count (max label + 1), or 0 for regression.

    ``task`` is ``"classification"``, ``"regression"`` or ``"auto"`` (classification when
    every label of every table is a whole number). Raises DataError naming the first
    negative or non-integer classification label, or a 2-D label array.
    """
    if task not in ("auto", "classification", "regression"):
        raise DataError(f"unknown task {task!r}: expected classification or regression")
    labelled = [(t, t.y, False) for t in tables]
    labelled += [(t, t.y_test, True) for t in tables if t.y_test is not None]
    if task == "auto":
        whole = all(y.ndim == 1 and np.array_equal(y, np.round(y)) for _, y, _ in labelled)
        task = "classification" if whole else "regression"
    if task == "regression":
        return 0
    top = 0
    for table, y, test in labelled:
        if y.ndim != 1:
            raise DataError(f"{table.name}: classification labels must be 1-D, "
                            f"got shape {y.shape}")
        bad = (y != np.round(y)) | (y < 0)
        if bad.any():
            row = int(np.argmax(bad))
            kind = "negative" if y[row] < 0 else "not an integer"
            raise DataError(f"{table.where(row, test=test)}: label {y[row]:g} is {kind}; "
                            "classification labels are 0..K-1 (add ?task=regression "
                            "for numeric targets)")
        top = max(top, int(y.max()) + 1)
    return top
