"""Data sources, sharding and batching (worker.data): every source kind, every error."""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import numpy as np
import pytest

from worker.data.dataset import DataError, Dataset, batches, check_compatible, open_source, shard_range
from worker.data.datasets import describe_digits, load_digits

ROWS = 23  # per file: not a multiple of 2 or 3, so shards are uneven


def _table(n: int = ROWS, features: int = 3, first_id: int = 0, classes: int = 4):
    """Rows whose first feature is a unique row id, plus integer labels."""
    ids = np.arange(first_id, first_id + n, dtype=np.float64)
    rest = np.round(np.random.default_rng(first_id).random((n, features - 1)), 3)
    return np.column_stack([ids, rest]), (ids % classes)


def _write_csv(path: Path, x, y, header: bool = True) -> str:
    lines = [",".join(f"f{j}" for j in range(x.shape[1])) + ",label"] if header else []
    lines += [",".join(f"{v:g}" for v in row) + f",{label:g}" for row, label in zip(x, y)]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _write_libsvm(path: Path, x, y, base: int = 1) -> str:
    lines = [f"{label:g} " + " ".join(f"{j + base}:{v:g}" for j, v in enumerate(row) if v)
             + " # comment" for row, label in zip(x, y)]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _sources(tmp: Path) -> dict[str, str]:
    x, y = _table()
    np.savez(tmp / "plain.npz", x=x, y=y)
    xt, yt = _table(7, first_id=1000)
    np.savez(tmp / "split.npz", x=x, y=y, x_test=xt, y_test=yt)
    np.save(tmp / "table.npy", np.column_stack([x, y]))
    (tmp / "gz.csv.gz").write_bytes(gzip.compress(_csv_text(x, y).encode()))
    parts = []
    for i in range(4):
        xi, yi = _table(5 + i, first_id=100 * (i + 1))
        parts.append(_write_csv(tmp / f"part-{i}.csv", xi, yi, header=i % 2 == 0))
        np.save(tmp / f"shard-{i}.npy", np.column_stack([xi, yi]))
    return {
        "digits": "digits",
        "npz": str(tmp / "plain.npz"),
        "npz_with_test": str(tmp / "split.npz"),
        "npy": str(tmp / "table.npy"),
        "csv": _write_csv(tmp / "data.csv", x, y),
        "csv_gz": str(tmp / "gz.csv.gz"),
        "libsvm_1based": _write_libsvm(tmp / "data.svm", x, y, base=1),
        "libsvm_0based": _write_libsvm(tmp / "data.txt", x, y, base=0),
        "list": ",".join(parts[:3]),
        "glob": str(tmp / "shard-*.npy"),
        "regression_csv": _write_csv(tmp / "reg.csv", x, y + 0.25),
        "synthetic_classification": "synthetic:classification?n=9000&features=5&classes=3&seed=1",
        "synthetic_regression": "synthetic:regression?n=9001&features=4&outputs=2&seed=2",
    }


def _csv_text(x, y) -> str:
    return "".join(",".join(f"{v:g}" for v in row) + f",{label:g}\n" for row, label in zip(x, y))


def _sorted_rows(ds: Dataset) -> np.ndarray:
    rows = np.column_stack([ds.x, ds.y.reshape(len(ds.y), -1)]).astype(np.float64)
    return rows[np.lexsort(rows.T[::-1])]


SOURCE_KINDS = ["digits", "npz", "npz_with_test", "npy", "csv", "csv_gz", "libsvm_1based",
                "libsvm_0based", "list", "glob", "regression_csv", "synthetic_classification",
                "synthetic_regression"]


@pytest.mark.parametrize("kind", SOURCE_KINDS)
@pytest.mark.parametrize("num_workers", [1, 2, 3])
def test_shards_partition_the_train_set_and_test_is_shared(tmp_path, kind, num_workers):
    spec = _sources(tmp_path)[kind]
    full_train, full_test = open_source(spec, seed=3)
    opened = [open_source(spec, rank=r, num_workers=num_workers, seed=3)
              for r in range(num_workers)]
    for train, test in opened:
        np.testing.assert_array_equal(test.x, full_test.x)
        np.testing.assert_array_equal(test.y, full_test.y)
        assert (train.num_classes, train.num_features) == (full_train.num_classes,
                                                            full_train.num_features)
        assert train.x.dtype == np.float32
        assert train.y.dtype == (np.int64 if train.num_classes else np.float32)
    shards = [train for train, _ in opened]
    assert sum(len(s) for s in shards) == len(full_train)
    union = Dataset(np.concatenate([s.x for s in shards]), np.concatenate([s.y for s in shards]),
                    full_train.num_classes, "union")
    np.testing.assert_array_equal(_sorted_rows(union), _sorted_rows(full_train))
    if kind not in ("list", "glob"):  # one source: contiguous ranges, in rank order
        np.testing.assert_array_equal(union.x, full_train.x)
        sizes = [len(s) for s in shards]
        assert max(sizes) - min(sizes) <= 1
    if kind not in ("npz_with_test", "digits") and not kind.startswith("synthetic"):
        ids_train, ids_test = set(full_train.x[:, 0]), set(full_test.x[:, 0])
        assert not ids_train & ids_test and len(full_test) > 0


def test_held_out_split_is_a_fifth_and_depends_on_seed(tmp_path):
    spec = _sources(tmp_path)["csv"]
    train, test = open_source(spec, seed=0)
    assert (len(train), len(test)) == (18, 5)  # round(0.2 * 23) = 5
    _, other = open_source(spec, seed=1)
    assert not np.array_equal(test.x, other.x)


def test_several_files_go_whole_to_worker_i_mod_n(tmp_path):
    spec = _sources(tmp_path)["glob"]
    for rank in range(3):
        train, _ = open_source(spec, rank=rank, num_workers=3)
        files = {int(i) // 100 - 1 for i in train.x[:, 0]}
        assert files == {i for i in range(4) if i % 3 == rank}
    train, _ = open_source(_sources(tmp_path)["list"], rank=3, num_workers=4)
    assert train.x.shape == (0, 3) and len(train.y) == 0  # more workers than files


def test_digits_embedded_data():
    pixels, labels = load_digits()
    assert pixels.shape == (1797, 64) and pixels.max() == 16 and set(labels) == set(range(10))
    assert "CC BY 4.0" in describe_digits() and "Alpaydin" in describe_digits()
    train, test = open_source("digits")
    assert (len(train), len(test), train.num_classes) == (1438, 359, 10)
    assert 0.0 <= train.x.min() and train.x.max() == 1.0
    assert np.bincount(test.y).min() >= 35  # stratified: about a fifth of every class
    both = Dataset(np.concatenate([train.x, test.x]), np.concatenate([train.y, test.y]), 10, "")
    whole = Dataset(pixels / np.float32(16), labels, 10, "")
    np.testing.assert_array_equal(_sorted_rows(both), _sorted_rows(whole))


def test_libsvm_indices_and_regression_targets(tmp_path):
    path = tmp_path / "tiny.libsvm"
    path.write_text("1 1:0.5 3:2\n\n0 qid:4 2:-1\n")
    train, test = open_source(str(path))
    rows = np.concatenate([train.x, test.x])
    assert rows.shape == (2, 3) and {tuple(r) for r in rows} == {(0.5, 0, 2), (0, -1, 0)}
    train, _ = open_source(_sources(tmp_path)["regression_csv"])
    assert train.num_classes == 0 and np.allclose(train.y % 1, 0.25)
    train, _ = open_source(_sources(tmp_path)["csv"] + "?task=regression")
    assert train.num_classes == 0 and train.y.dtype == np.float32


def test_synthetic_is_deterministic_and_seeded():
    spec = "synthetic:classification?n=500&features=8&classes=4&seed=7"
    a, b = open_source(spec)[0], open_source(spec)[0]
    np.testing.assert_array_equal(a.x, b.x)
    c = open_source(spec.replace("seed=7", "seed=8"))[0]
    assert not np.array_equal(a.x, c.x)
    assert (a.num_features, a.num_classes, len(a)) == (8, 4, 400)
    reg, _ = open_source("synthetic:regression?n=50&features=3")
    assert reg.y.shape == (40,) and reg.num_classes == 0


def test_batches_cover_the_shard_once_per_epoch():
    train, _ = open_source("digits", rank=1, num_workers=3)
    epochs = []
    for epoch in (0, 1):
        got = list(batches(train, 64, epoch=epoch, seed=5))
        assert [len(x) for x, _ in got] == [64] * (len(train) // 64) + [len(train) % 64]
        xs = np.concatenate([x for x, _ in got])
        ys = np.concatenate([y for _, y in got])
        np.testing.assert_array_equal(_sorted_rows(Dataset(xs, ys, 10, "")), _sorted_rows(train))
        epochs.append(xs)
    assert not np.array_equal(epochs[0], epochs[1])
    again = np.concatenate([x for x, _ in batches(train, 64, epoch=1, seed=5)])
    np.testing.assert_array_equal(again, epochs[1])
    with pytest.raises(ValueError):
        batches(train, 0, epoch=0, seed=0)


def test_shard_range_is_as_even_as_possible():
    assert [shard_range(10, r, 3) for r in range(3)] == [(0, 4), (4, 7), (7, 10)]
    assert [shard_range(2, r, 3) for r in range(3)] == [(0, 1), (1, 2), (2, 2)]


def _raises(spec: str, *fragments: str) -> str:
    with pytest.raises(DataError) as info:
        open_source(spec)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_text_errors_name_the_file_and_line(tmp_path):
    bad = tmp_path / "data.csv"
    bad.write_text("a,b,label\n1,2,0\n\n1,2\n")
    _raises(str(bad), "data.csv line 4: expected 3 numeric fields, got 2")
    bad.write_text("1,2,0\n1,abc,1\n")
    _raises(str(bad), "data.csv line 2 field 2: 'abc' is not a number")
    bad.write_text("1,2,0\n1,2,0,\n")
    _raises(str(bad), "data.csv line 2: expected 3 numeric fields, got 4")
    bad.write_text("1,2,0\n1,2,nan\n")
    _raises(str(bad), "data.csv line 2: non-finite value")
    bad.write_text("1,2,0\n1,2,1\n\n3,4,-1\n")
    _raises(str(bad), "data.csv line 4: label -1 is negative")
    _raises(f"{bad}?task=nonsense", "unknown task 'nonsense'")
    bad.write_text("1,2,0\n1,2,0.5\n")
    _raises(f"{bad}?task=classification", "data.csv line 2: label 0.5 is not an integer")
    bad.write_text("a,b,label\n")
    _raises(str(bad), "data.csv: no data rows")
    svm = tmp_path / "data.svm"
    svm.write_text("1 1:2\n0 1:2 3\n")
    _raises(str(svm), "data.svm line 2: expected index:value", "'3'")
    svm.write_text("# header comment\n1 1:2\nx 1:2\n")
    _raises(str(svm), "data.svm line 3: label 'x' is not a number")
    svm.write_text("1 1:2\n0 2:z\n")
    _raises(str(svm), "data.svm line 2", "'2:z'")


def test_binary_errors_name_the_file_and_row(tmp_path):
    npy = tmp_path / "t.npy"
    np.save(npy, np.array([[1.0, 0], [2.0, -3]]))
    _raises(str(npy), "t.npy row 2: label -3 is negative")
    np.save(npy, np.array([1.0, 2.0]))
    _raises(str(npy), "t.npy: array has 1 dimensions, expected 2")
    npz = tmp_path / "t.npz"
    np.savez(npz, x=np.ones((3, 2)))
    _raises(str(npz), "t.npz: missing array 'y' (has: x)")
    np.savez(npz, x=np.ones((3, 2)), y=np.array(["a", "b", "c"]))
    _raises(str(npz), "t.npz: y has dtype <U1, expected numbers")
    np.savez(npz, x=np.array([{}, {}], dtype=object), y=np.zeros(2))
    _raises(str(npz), "t.npz", "pickle")
    np.savez(npz, x=np.ones((3, 2)), y=np.zeros(2))
    _raises(str(npz), "t.npz: x has 3 rows but y has 2")
    np.savez(npz, x=np.ones((3, 2)), y=np.zeros(3), x_test=np.ones((1, 2)), y_test=[-1.0])
    _raises(str(npz), "t.npz y_test row 1: label -1 is negative")
    with open(tmp_path / "one.npz", "wb") as f:
        np.save(f, np.ones((2, 2)))
    _raises(str(tmp_path / "one.npz"), "one.npz: not a valid npz file")
    np.savez(tmp_path / "two.npz", x=np.ones((2, 2)), y=np.zeros(2))
    (tmp_path / "two.npz").rename(tmp_path / "two.npy")
    _raises(str(tmp_path / "two.npy"), "two.npy: not a valid npy file")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    _raises(str(tmp_path / "junk.npz"), "junk.npz: not a valid npz file")


def test_source_errors(tmp_path):
    _raises(str(tmp_path / "missing.csv"), "missing.csv: no such file")
    _raises(str(tmp_path / "none-*.csv"), "no files match", "none-*.csv")
    _raises("cifar10", "unknown data source 'cifar10'")
    _raises("synthetic:images", "unknown synthetic kind 'images'")
    _raises("synthetic:regression?classes=3", "unknown option 'classes'")
    _raises("synthetic:classification?n=ten", "option n='ten'", "not an integer")
    _raises("synthetic:classification?classes=1", "classes must be at least 2")
    a = _write_csv(tmp_path / "a.csv", *_table(5, features=3))
    b = _write_csv(tmp_path / "b.csv", *_table(5, features=4, first_id=50))
    _raises(f"{a},{b}", "feature count 4 in", "b.csv does not match 3 in")
    _raises(f"{a},", "empty path")
    with pytest.raises(ValueError):
        open_source("digits", rank=2, num_workers=2)
    assert issubclass(DataError, ValueError)


def test_check_compatible(tmp_path):
    train, _ = open_source(_sources(tmp_path)["csv"])
    check_compatible(train, 3, 4)
    check_compatible(train, 3, 0)
    with pytest.raises(DataError, match=r"feature count 3 in .*data\.csv does not match "
                                        r"the model's 64$"):
        check_compatible(train, 64, 4)
    with pytest.raises(DataError, match=r"label 3 in .*data\.csv out of range for 2 classes"):
        check_compatible(train, 3, 2)
    reg, _ = open_source(_sources(tmp_path)["regression_csv"])
    with pytest.raises(DataError, match="regression targets"):
        check_compatible(reg, 3, 4)


def test_fsspec_file_urls(tmp_path):
    pytest.importorskip("fsspec")
    sources = _sources(tmp_path)
    for kind in ("csv", "npz", "libsvm_1based"):
        local = open_source(sources[kind], rank=1, num_workers=2)
        remote = open_source(f"file://{sources[kind]}", rank=1, num_workers=2)
        for a, b in zip(local, remote):
            np.testing.assert_array_equal(a.x, b.x)
            np.testing.assert_array_equal(a.y, b.y)
    url = f"file://{tmp_path}/shard-*.npy"
    parts = [open_source(url, rank=r, num_workers=2)[0] for r in range(2)]
    assert sum(map(len, parts)) == len(open_source(sources["glob"])[0])
    _raises(f"file://{tmp_path}/gone.csv", "gone.csv: no such file")
    _raises("nosuchproto://host/data.csv", "reading nosuchproto://host/data.csv")
    _raises(f"file://{tmp_path}/none-*.csv", "no files match")


def test_url_without_fsspec_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "fsspec", None)
    message = _raises("s3://bucket/data.csv")
    assert message == "reading s3://bucket/data.csv needs fsspec: pip install 'grpc-ps[fsspec]'"
    _raises("s3://bucket/*.csv", "needs fsspec")
