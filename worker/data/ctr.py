"""Click logs for sparse models: hashed categorical features in CSR form, and their sources.

A :class:`CtrDataset` holds n rows; row ``i``'s features are the int64 ids
``ids[indptr[i]:indptr[i+1]]`` with values ``vals[...]`` (1.0 for a categorical feature),
and its label ``y[i]`` is 0 (no click) or 1 (click). Ids are any int64 (the row keys of a
sparse table); ``id_space`` is the range they were hashed into (``num_features``).

Sources, for :func:`open_ctr_source` (``worker.data.dataset.open_source`` forwards these prefixes):

- ``synthetic-ctr:n=100000&fields=16&ids=10000000&alpha=1.2&seed=1`` — a generated click
  log (:class:`SyntheticCtr`): ``fields`` categorical fields per row; in each field the
  value of rank r has probability ~ r**-alpha (a power law: few values are very
  frequent, most are rare) among ``ids // fields`` values, and is hashed onto
  ``[0, ids)``; the click probability is ``sigmoid(bias + sum of hidden per-id weights)``.
  Rows ``[0, 0.8 n)`` train, the last round(20%) test; a worker generates only its own
  contiguous range of the training rows, plus the test rows. ``seed`` defaults to
  ``open_source``'s.
- ``ctr-libsvm:PATH`` — libsvm text ``label id:value id:value ...`` with labels 0/1 (or
  -1/+1) and any non-negative integer ids, used as row ids unchanged.
- ``ctr-csv:PATH[?ids=N]`` — hashed CSV, Criteo style: ``label,tok,tok,...``; token j of a
  row is hashed with its column to an id in ``[0, N)`` (default 2**24); empty tokens are
  missing features; a first line whose label is not a number is a header.

For files, a random round(20%) of rows drawn from ``seed`` is held out and the training
rows are cut into ``num_workers`` contiguous ranges. Problems are ``DataError`` naming the
file and line. Reading blocks on the file; everything else is pure NumPy.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import parse_qsl

import numpy as np

from worker.data.files import DataError

__all__ = ["CTR_PREFIXES", "CtrDataset", "SyntheticCtr", "ctr_batches", "open_ctr_source", "read_ctr_csv",
           "read_ctr_libsvm"]

CTR_PREFIXES = ("synthetic-ctr:", "ctr-libsvm:", "ctr-csv:")
CHUNK_ROWS = 4096
TEST_FRACTION = 0.2
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = np.asarray(x, dtype=np.uint64) + _GOLDEN
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


@dataclass(frozen=True, eq=False, repr=False)
class CtrDataset:
    """Rows of a click log in CSR form (see the module docstring). Raises ValueError when
    the arrays are inconsistent."""

    indptr: np.ndarray   # int64 (n + 1,)
    ids: np.ndarray      # int64 (nnz,)
    vals: np.ndarray     # float32 (nnz,)
    y: np.ndarray        # int64 (n,) of 0/1
    name: str
    id_space: int = 0    # ids were hashed into [0, id_space); 0: unknown

    def __post_init__(self) -> None:
        if self.indptr.ndim != 1 or len(self.indptr) != len(self.y) + 1 or self.indptr[0] != 0:
            raise ValueError("indptr must be (n + 1,) starting at 0")
        if np.any(np.diff(self.indptr) < 0) or self.indptr[-1] != len(self.ids) or len(self.ids) != len(self.vals):
            raise ValueError("indptr must be non-decreasing and end at len(ids) == len(vals)")
        if self.ids.dtype != np.int64 or self.vals.dtype != np.float32 or self.y.dtype != np.int64:
            raise ValueError("ids must be int64, vals float32, y int64")

    def __len__(self) -> int:
        return len(self.y)

    @property
    def num_classes(self) -> int:
        return 2

    @property
    def num_features(self) -> int:
        """The id space the features were hashed into (0 if unknown)."""
        return self.id_space

    @property
    def row_of(self) -> np.ndarray:
        """The row index of each stored feature (nnz,)."""
        return np.repeat(np.arange(len(self.y), dtype=np.int64), np.diff(self.indptr))

    def take(self, rows: np.ndarray) -> CtrDataset:
        """A new dataset of ``rows`` (indices, in that order). Vectorised copy."""
        rows = np.asarray(rows, dtype=np.int64)
        starts = self.indptr[rows]
        lens = self.indptr[rows + 1] - starts
        indptr = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lens, out=indptr[1:])
        nnz = np.repeat(starts - indptr[:-1], lens) + np.arange(indptr[-1], dtype=np.int64)
        return CtrDataset(indptr, self.ids[nnz], self.vals[nnz], self.y[rows], self.name, self.id_space)

    def __repr__(self) -> str:
        return f"CtrDataset(name={self.name!r}, rows={len(self)}, features={len(self.ids)})"


def ctr_batches(ds: CtrDataset, batch_size: int, *, epoch: int, seed: int) -> Iterator[CtrDataset]:
    """Batches covering ``ds`` once in an order shuffled by ``(seed, epoch)``, the same order
    :func:`worker.data.dataset.batches` uses. The last batch may be short. Raises ValueError at the
    call for ``batch_size < 1``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = np.random.default_rng([seed, 1, epoch]).permutation(len(ds))
    return (ds.take(order[s:s + batch_size]) for s in range(0, len(order), batch_size))


# -- the synthetic click log ----------------------------------------------------------


@dataclass(frozen=True)
class SyntheticCtr:
    """A generated click log; construction draws nothing. Raises ValueError for bad sizes.

    ``weight_scale`` is the std of the hidden per-id weights, ``bias`` the hidden bias.
    """

    n: int = 100_000
    fields: int = 16
    ids: int = 10_000_000
    alpha: float = 1.2
    seed: int = 0
    weight_scale: float = 0.5
    bias: float = -1.0

    def __post_init__(self) -> None:
        for name, low in (("n", 1), ("fields", 1), ("seed", 0)):
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be at least {low}, got {getattr(self, name)}")
        if self.ids < self.fields:
            raise ValueError(f"ids must be at least fields ({self.fields}), got {self.ids}")
        if not (self.alpha > 0 and self.alpha != 1.0 and math.isfinite(self.alpha)):
            raise ValueError(f"alpha must be a positive number other than 1, got {self.alpha}")

    def hidden_weights(self, ids: np.ndarray) -> np.ndarray:
        """The generating model's weight of each id (float64), a pure function of (seed, id)."""
        h1 = _mix(ids.view(np.uint64) ^ _mix(np.uint64(self.seed) + np.uint64(7)))
        h2 = _mix(h1)
        u1 = (h1 >> np.uint64(11)).astype(np.float64) / (1 << 53)
        u2 = (h2 >> np.uint64(11)).astype(np.float64) / (1 << 53)
        return np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2 * math.pi * u2) * self.weight_scale

    def rows(self, start: int, stop: int) -> CtrDataset:
        """Rows ``[start, stop)`` (clipped to ``[0, n)``), generated in fixed chunks so any
        range is the same whoever asks. O(rows + CHUNK_ROWS) time and memory."""
        start, stop = max(0, start), min(self.n, stop)
        f = self.fields
        vocab = self.ids // f
        a1 = 1.0 - self.alpha
        top = (vocab + 1.0) ** a1
        salt = _mix(np.uint64(self.seed) ^ np.uint64(0xC7C7))
        ids_parts, y_parts = [], []
        for chunk in range(start // CHUNK_ROWS, -(-stop // CHUNK_ROWS) if stop > start else 0):
            rng = np.random.default_rng([self.seed, 2, chunk])
            m = min(CHUNK_ROWS, self.n - chunk * CHUNK_ROWS)
            u = rng.random((m, f))
            # bounded power law: P(rank >= r) ~ r**(1 - alpha) on [1, vocab + 1)
            rank = np.floor((1.0 + u * (top - 1.0)) ** (1.0 / a1)).astype(np.int64) - 1
            rank = np.clip(rank, 0, vocab - 1)
            field = np.arange(f, dtype=np.uint64)[None, :]
            ids = (_mix(rank.astype(np.uint64) ^ (field << np.uint64(40)) ^ salt) % np.uint64(self.ids))
            ids = ids.astype(np.int64)
            logit = self.bias + self.hidden_weights(ids.reshape(-1)).reshape(m, f).sum(axis=1)
            y = (rng.random(m) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int64)
            lo, hi = max(start - chunk * CHUNK_ROWS, 0), min(stop - chunk * CHUNK_ROWS, m)
            ids_parts.append(ids[lo:hi].reshape(-1))
            y_parts.append(y[lo:hi])
        ids = np.concatenate(ids_parts) if ids_parts else np.zeros(0, np.int64)
        y = np.concatenate(y_parts) if y_parts else np.zeros(0, np.int64)
        indptr = np.arange(len(y) + 1, dtype=np.int64) * f
        return CtrDataset(indptr, ids, np.ones(len(ids), np.float32), y, "synthetic-ctr", self.ids)


# -- files ----------------------------------------------------------------------------


def _labels(path: str, raw: list[str], lines: list[int]) -> np.ndarray:
    try:
        y = np.array([float(t) for t in raw])
    except ValueError:
        bad = next(i for i, t in enumerate(raw) if not _is_float(t))
        raise DataError(f"{path} line {lines[bad]}: label {raw[bad]!r} is not a number") from None
    ok = np.isin(y, (0.0, 1.0, -1.0))
    if not ok.all():
        bad = int(np.argmin(ok))
        raise DataError(f"{path} line {lines[bad]}: click label must be 0/1 (or -1/+1), got {raw[bad]!r}")
    return (y > 0).astype(np.int64)


def _is_float(token: str) -> bool:
    try:
        float(token)
        return True
    except ValueError:
        return False


def read_ctr_libsvm(path: str, text: str) -> CtrDataset:
    """Parse libsvm click data (``label id:value ...``). Raises DataError naming the line."""
    raw, lines, counts, ids, vals = [], [], [], [], []
    for line_no, line in enumerate(text.splitlines(), 1):
        tokens = line.split("#", 1)[0].split()
        if not tokens:
            continue
        raw.append(tokens[0])
        lines.append(line_no)
        for token in tokens[1:]:
            index, colon, value = token.partition(":")
            try:
                i, v = int(index), float(value)
            except ValueError:
                i, v = -1, math.nan
            if not colon or i < 0 or not math.isfinite(v):
                raise DataError(f"{path} line {line_no}: expected id:value with a non-negative integer id "
                                f"and a finite number, got {token!r}")
            ids.append(i)
            vals.append(v)
        counts.append(len(tokens) - 1)
    if not raw:
        raise DataError(f"{path}: no data rows")
    y = _labels(path, raw, lines)
    try:
        id_array = np.array(ids, dtype=np.int64)
    except OverflowError:
        raise DataError(f"{path}: a feature id does not fit in int64") from None
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    space = int(id_array.max()) + 1 if len(id_array) else 0
    return CtrDataset(indptr, id_array, np.array(vals, np.float32), y, path, space)


def read_ctr_csv(path: str, text: str, id_space: int = 1 << 24) -> CtrDataset:
    """Parse hashed-CSV click data (``label,tok,tok,...``). Raises DataError naming the line."""
    raw, lines, counts, cols, hashes = [], [], [], [], []
    for line_no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.rstrip("\r").split(",")
        if not raw and not _is_float(fields[0]):
            continue  # a header line
        raw.append(fields[0].strip())
        lines.append(line_no)
        n = 0
        for col, token in enumerate(fields[1:]):
            token = token.strip()
            if token:
                cols.append(col)
                hashes.append(zlib.crc32(token.encode("utf-8")))
                n += 1
        counts.append(n)
    if not raw:
        raise DataError(f"{path}: no data rows")
    y = _labels(path, raw, lines)
    key = (np.array(cols, np.uint64) << np.uint64(32)) | np.array(hashes, np.uint64)
    ids = (_mix(key) % np.uint64(id_space)).astype(np.int64)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return CtrDataset(indptr, ids, np.ones(len(ids), np.float32), y, path, id_space)


# -- opening a source -----------------------------------------------------------------


def _shard_range(n: int, rank: int, num_workers: int) -> tuple[int, int]:
    size, extra = divmod(n, num_workers)
    start = rank * size + min(rank, extra)
    return start, start + size + (rank < extra)


def _test_count(n: int) -> int:
    return int(n * TEST_FRACTION + 0.5)


def _options(spec: str, query: str, allowed: dict[str, type]) -> dict:
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise DataError(f"malformed options in {spec!r}: expected key=value&key=value") from None
    out = {}
    for key, value in pairs:
        if key not in allowed:
            raise DataError(f"unknown option {key!r} in {spec!r}: expected {', '.join(allowed)}")
        try:
            out[key] = allowed[key](value)
        except ValueError:
            raise DataError(f"option {key}={value!r} in {spec!r} is not {allowed[key].__name__}") from None
    return out


def open_ctr_source(spec: str, *, rank: int = 0, num_workers: int = 1,
                    seed: int = 0) -> tuple[CtrDataset, CtrDataset]:
    """(this worker's training rows, the whole test split) of a click-log source.

    ``spec`` starts with one of :data:`CTR_PREFIXES` (module docstring). Blocks on reading
    a file. Raises DataError for a malformed spec or file, ValueError for a bad rank.
    """
    if num_workers < 1 or not 0 <= rank < num_workers:
        raise ValueError(f"need 0 <= rank < num_workers, got rank {rank} of {num_workers}")
    spec = spec.strip()
    if spec.startswith("synthetic-ctr:"):
        options = _options(spec, spec.removeprefix("synthetic-ctr:").lstrip("?"),
                           {"n": int, "fields": int, "ids": int, "alpha": float, "seed": int})
        options.setdefault("seed", seed)
        try:
            source = SyntheticCtr(**options)
        except ValueError as exc:
            raise DataError(f"{spec}: {exc}") from None
        n_train = source.n - _test_count(source.n)
        start, stop = _shard_range(n_train, rank, num_workers)
        train, test = source.rows(start, stop), source.rows(n_train, source.n)
        return _named(train, spec), _named(test, spec)
    if spec.startswith("ctr-libsvm:"):
        path = spec.removeprefix("ctr-libsvm:")
        table = read_ctr_libsvm(path, _read_text(path))
    elif spec.startswith("ctr-csv:"):
        path, _, query = spec.removeprefix("ctr-csv:").partition("?")
        options = _options(spec, query, {"ids": int})
        if options.get("ids", 1) < 1:
            raise DataError(f"{spec}: ids must be >= 1")
        table = read_ctr_csv(path, _read_text(path), options.get("ids", 1 << 24))
    else:
        raise DataError(f"unknown click-log source {spec!r}: expected one of {', '.join(CTR_PREFIXES)}")
    held = np.zeros(len(table), dtype=bool)
    held[np.random.default_rng([seed, 0, 0]).permutation(len(table))[:_test_count(len(table))]] = True
    train_rows = np.flatnonzero(~held)
    start, stop = _shard_range(len(train_rows), rank, num_workers)
    return table.take(train_rows[start:stop]), table.take(np.flatnonzero(held))


def _named(ds: CtrDataset, name: str) -> CtrDataset:
    return CtrDataset(ds.indptr, ds.ids, ds.vals, ds.y, name, ds.id_space)


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as exc:
        raise DataError(f"{path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None
