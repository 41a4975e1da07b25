"""Training data for a worker: the source, this worker's shard of it, and its batches.

``open_source(spec, rank=r, num_workers=n, seed=s)`` returns ``(train, test)``: worker
``r``'s shard of the training rows and the whole held-out test split, the same on every
worker. All workers must pass the same ``spec`` and ``seed``. Sources (``spec``):

- ``digits`` (``DEFAULT_SOURCE``): the UCI handwritten digits embedded in the package
  (``worker/data/datasets/DIGITS.rst``): 1,797 images, 64 features scaled from 0..16 to [0, 1],
  10 classes. The test split is stratified: in each class, a permutation drawn from
  ``seed`` picks round(20%) of its images (359 in all for every seed; 1,438 train).
- A file: a local path or a URL with a scheme (``file://``, ``s3://``, ``hdfs://``, ...,
  read through fsspec) to ``.npz``, ``.npy``, ``.csv`` or libsvm text (``.svm``,
  ``.libsvm``, ``.txt``); formats in ``worker.data.files``. Classification when every label
  is a whole number, else regression; append ``?task=classification`` or
  ``?task=regression`` to the spec to say which. An npz with ``x_test``/``y_test`` brings
  its own test split; otherwise a random round(20%) of its rows, drawn from ``seed``, is
  held out. One file: every worker reads it, and the training rows, in file order, are cut
  into ``num_workers`` contiguous ranges whose sizes differ by at most one.
- Several files, as a comma-separated list and/or globs (each glob sorted): file ``i``'s
  training rows all go to worker ``i % num_workers`` (a worker may get none); the test
  split is every file's test rows, in file order, so every worker reads every file.
- ``synthetic:classification?n=10000&features=64&classes=10&noise=1&seed=1`` or
  ``synthetic:regression?n=...&features=...&outputs=1&noise=0.1&seed=...`` (``seed``
  defaults to ``open_source``'s): rows ``[0, 0.8n)`` are the training set, the last
  round(20%) the test split; each worker generates only its contiguous range of the
  training rows, plus the test rows (``worker.data.synthetic``).

- Click logs for sparse models (``synthetic-ctr:n=...&fields=...&ids=...&seed=...``,
  ``ctr-libsvm:PATH``, ``ctr-csv:PATH``) open as ``worker.data.ctr.CtrDataset`` pairs
  instead of ``Dataset`` ones (:func:`worker.data.ctr.open_ctr_source`).

Problems with the data are ``DataError`` (a ValueError) with a one-line message naming the
file and line; ``check_compatible`` compares a dataset with the model's shape.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import parse_qsl

import numpy as np

from worker.data.files import DataError, Table, align_features, check_labels, expand_paths, \
    read_table
from worker.data.datasets import DIGITS_CLASSES, load_digits
from worker.data.synthetic import Synthetic

__all__ = ["DEFAULT_SOURCE", "TEST_FRACTION", "DataError", "Dataset", "batches",
           "check_compatible", "open_source", "shard_range"]

DEFAULT_SOURCE = "digits"
TEST_FRACTION = 0.2

_TASK = re.compile(r"^(?P<spec>.*)\?task=(?P<task>[a-z]*)$", re.DOTALL)
_SYNTHETIC_OPTIONS = {"classification": ("n", "features", "classes", "noise", "seed"),
                      "regression": ("n", "features", "outputs", "noise", "seed")}


@dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """Rows of one split: features ``x`` float32 (n, F) and targets ``y``.

    ``y`` is int64 labels 0..num_classes-1 of shape (n,) for classification, or float32
    targets of shape (n,) or (n, outputs) for regression (``num_classes == 0``). ``name``
    is the source (a file path, the spec, ``digits``) for messages. Raises ValueError if
    the arrays do not have those types and shapes.
    """

    x: np.ndarray
    y: np.ndarray
    num_classes: int
    name: str

    def __post_init__(self) -> None:
        if self.x.ndim != 2 or self.x.dtype != np.float32:
            raise ValueError(f"x must be 2-D float32, got {self.x.ndim}-D {self.x.dtype}")
        if len(self.y) != len(self.x):
            raise ValueError(f"x has {len(self.x)} rows but y has {len(self.y)}")
        if self.num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {self.num_classes}")
        want = (np.int64, 1) if self.num_classes else (np.float32, None)
        if self.y.dtype != want[0] or self.y.ndim not in ((1,) if want[1] else (1, 2)):
            raise ValueError(f"y must be {'1-D int64 labels' if want[1] else 'float32'} "
                             f"for num_classes={self.num_classes}, got {self.y.ndim}-D "
                             f"{self.y.dtype}")

    def __len__(self) -> int:
        return len(self.x)

    @property
    def num_features(self) -> int:
        """The number of feature columns F."""
        return self.x.shape[1]

    def __repr__(self) -> str:
        return (f"Dataset(name={self.name!r}, rows={len(self)}, "
                f"features={self.num_features}, num_classes={self.num_classes})")


def open_source(spec: str, *, rank: int = 0, num_workers: int = 1,
                seed: int = 0) -> tuple[Dataset, Dataset]:
    """Open a data source; return (this worker's train shard, the full test split).

    ``spec`` is described in the module docstring; ``seed`` (>= 0) fixes the held-out split
    (and a synthetic source's default seed) and must be the same on every worker. Blocks
    on reading files (every file of the source). Raises DataError for a missing,
    malformed or unknown source, ValueError for a bad rank, worker count or seed.
    """
    if num_workers < 1 or not 0 <= rank < num_workers:
        raise ValueError(f"need 0 <= rank < num_workers, got rank {rank} of {num_workers}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    spec = spec.strip()
    if spec == "digits":
        return _open_digits(rank, num_workers, seed)
    if spec.startswith("synthetic:"):
        return _open_synthetic(spec, rank, num_workers, seed)
    if spec.startswith(("synthetic-ctr:", "ctr-libsvm:", "ctr-csv:")):  # click logs for sparse models
        from worker.data.ctr import open_ctr_source
        return open_ctr_source(spec, rank=rank, num_workers=num_workers, seed=seed)
    return _open_files(spec, rank, num_workers, seed)


def shard_range(n: int, rank: int, num_workers: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of worker ``rank`` when ``n`` rows are cut into contiguous
    ranges as even as possible (the first ``n % num_workers`` ranges get one more row)."""
    size, extra = divmod(n, num_workers)
    start = rank * size + min(rank, extra)
    return start, start + size + (rank < extra)


def batches(ds: Dataset, batch_size: int, *, epoch: int,
            seed: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(x, y)`` batches covering ``ds`` once, in an order shuffled by ``(seed, epoch)``.

    Every batch has ``batch_size`` rows except perhaps the last (kept). The batches are
    copies. Raises ValueError at the call for ``batch_size < 1`` or a negative seed or epoch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed and epoch must be >= 0, got {seed} and {epoch}")
    order = np.random.default_rng([seed, 1, epoch]).permutation(len(ds))
    return ((ds.x[i], ds.y[i]) for i in (order[s:s + batch_size]
                                          for s in range(0, len(order), batch_size)))


def check_compatible(ds: Dataset, num_features: int, num_classes: int) -> None:
    """Check that ``ds`` fits a model with ``num_features`` inputs and ``num_classes``
    outputs (0: a regression model, which takes any numeric targets).

    Raises DataError naming the dataset: a feature count mismatch, regression targets for a
    classifier, or a label (from any worker's shard or split) out of range.
    """
    if ds.num_features != num_features:
        raise DataError(f"feature count {ds.num_features} in {ds.name} does not match the "
                        f"model's {num_features}")
    if num_classes <= 0:
        return
    if ds.num_classes == 0:
        raise DataError(f"{ds.name} has regression targets but the model expects "
                        f"{num_classes} classes")
    top = max(ds.num_classes - 1, int(ds.y.max()) if len(ds.y) else 0)
    if top >= num_classes:
        raise DataError(f"label {top} in {ds.name} out of range for {num_classes} classes")


def _test_count(n: int) -> int:
    return int(n * TEST_FRACTION + 0.5)


def _holdout(n: int, seed: int, stream: int, labels: np.ndarray | None = None) -> np.ndarray:
    """A boolean test mask: round(20%) of the rows (of each class, given labels)."""
    rng = np.random.default_rng([seed, 0, stream])
    groups = [np.arange(n)] if labels is None else [
        np.flatnonzero(labels == c) for c in np.unique(labels)]
    mask = np.zeros(n, dtype=bool)
    for rows in groups:
        mask[rng.permutation(rows)[:_test_count(len(rows))]] = True
    return mask


def _dataset(parts: list[tuple[np.ndarray, np.ndarray]], num_features: int,
             y_shape: tuple[int, ...], num_classes: int, name: str) -> Dataset:
    x = np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, num_features))
    y = np.concatenate([p[1] for p in parts]) if parts else np.zeros((0, *y_shape))
    return Dataset(x.astype(np.float32), y.astype(np.int64 if num_classes else np.float32),
                   num_classes, name)


def _train_test(parts: list[tuple[Table, np.ndarray | None]], rank: int,
                num_workers: int, num_classes: int, name: str) -> tuple[Dataset, Dataset]:
    """Split each (table, test mask) into train and test rows, then take this worker's
    share: a contiguous range of one table's training rows, or whole tables by index."""
    train, test = [], []
    for table, held in parts:
        if held is None:
            train.append((table.x, table.y))
            test.append((table.x_test, table.y_test))
        else:
            train.append((table.x[~held], table.y[~held]))
            test.append((table.x[held], table.y[held]))
    if len(train) == 1:
        start, stop = shard_range(len(train[0][1]), rank, num_workers)
        own = [(train[0][0][start:stop], train[0][1][start:stop])]
    else:
        own = train[rank::num_workers]
    shape = (parts[0][0].x.shape[1], parts[0][0].y.shape[1:])
    return (_dataset(own, *shape, num_classes, name), _dataset(test, *shape, num_classes, name))


def _open_digits(rank: int, num_workers: int, seed: int) -> tuple[Dataset, Dataset]:
    pixels, labels = load_digits()
    table = Table("digits", pixels / np.float32(16), labels)
    held = _holdout(len(labels), seed, 0, labels)
    return _train_test([(table, held)], rank, num_workers, DIGITS_CLASSES, "digits")


def _open_synthetic(spec: str, rank: int, num_workers: int,
                    seed: int) -> tuple[Dataset, Dataset]:
    kind, _, query = spec.removeprefix("synthetic:").partition("?")
    if kind not in _SYNTHETIC_OPTIONS:
        raise DataError(f"unknown synthetic kind {kind!r} in {spec!r}: expected "
                        "synthetic:classification or synthetic:regression")
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise DataError(f"malformed options in {spec!r}: expected key=value&key=value") \
            from None
    options: dict[str, float | int] = {"seed": seed}
    for key, value in pairs:
        if key not in _SYNTHETIC_OPTIONS[kind]:
            raise DataError(f"unknown option {key!r} in {spec!r}: expected "
                            f"{', '.join(_SYNTHETIC_OPTIONS[kind])}")
        try:
            options[key] = float(value) if key == "noise" else int(value)
        except ValueError:
            raise DataError(f"option {key}={value!r} in {spec!r} is not "
                            f"{'a number' if key == 'noise' else 'an integer'}") from None
    try:
        source = Synthetic(kind, **options)
    except ValueError as e:
        raise DataError(f"{spec}: {e}") from None
    n_train = source.n - _test_count(source.n)
    start, stop = shard_range(n_train, rank, num_workers)
    train = Dataset(*source.rows(start, stop), source.num_classes, spec)
    return train, Dataset(*source.rows(n_train, source.n), source.num_classes, spec)


def _open_files(spec: str, rank: int, num_workers: int, seed: int) -> tuple[Dataset, Dataset]:
    task = "auto"
    if match := _TASK.match(spec):
        spec, task = match["spec"], match["task"]
    paths = expand_paths(spec)
    tables: list[Table] = align_features([read_table(path) for path in paths])
    num_classes = check_labels(tables, task)
    parts = [(t, None if t.x_test is not None else _holdout(len(t.y), seed, i))
             for i, t in enumerate(tables)]
    name = paths[0] if len(paths) == 1 else spec
    return _train_test(parts, rank, num_workers, num_classes, name)
