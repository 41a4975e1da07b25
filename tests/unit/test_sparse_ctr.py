"""Click-log data, AUC, and the sparse logistic regression's gradients."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from worker.training.auc import roc_auc
from worker.data.ctr import SyntheticCtr, ctr_batches, open_ctr_source
from worker.data.dataset import open_source
from worker.data.files import DataError
from worker.models.sparse_lr import SparseLogisticRegression


def test_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    s = np.round(rng.standard_normal(500) + y, 1)   # many ties
    assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert roc_auc([0, 1], [0.2, 0.9]) == 1.0 and roc_auc([0, 1], [0.5, 0.5]) == 0.5
    assert np.isnan(roc_auc([1, 1], [0.1, 0.2]))


def test_synthetic_ctr_is_power_law_spread_and_the_same_for_any_split():
    src = SyntheticCtr(n=20_000, fields=8, ids=10_000_000, alpha=1.2, seed=3)
    whole = src.rows(0, 20_000)
    parts = [src.rows(0, 5000), src.rows(5000, 13_333), src.rows(13_333, 20_000)]
    np.testing.assert_array_equal(np.concatenate([p.ids for p in parts]), whole.ids)
    np.testing.assert_array_equal(np.concatenate([p.y for p in parts]), whole.y)
    assert whole.ids.min() >= 0 and whole.ids.max() < 10_000_000 and whole.ids.max() > 5_000_000
    _, counts = np.unique(whole.ids, return_counts=True)
    counts = np.sort(counts)[::-1]
    assert counts[0] > 500 and np.mean(counts == 1) > 0.5, "a few ids are frequent, most are rare"
    assert 0.1 < whole.y.mean() < 0.6


def test_open_source_forwards_ctr_specs_and_shards_the_rows():
    spec = "synthetic-ctr:n=1000&fields=4&ids=10000000"
    shards = [open_source(spec, rank=r, num_workers=3, seed=2) for r in range(3)]
    train = [s[0] for s in shards]
    assert sum(len(t) for t in train) == 800 and all(len(s[1]) == 200 for s in shards)
    assert all(t.num_classes == 2 and t.num_features == 10_000_000 for t in train)
    with pytest.raises(DataError, match="unknown option"):
        open_ctr_source("synthetic-ctr:n=10&colour=red")
    with pytest.raises(DataError, match="alpha"):
        open_ctr_source("synthetic-ctr:n=10&alpha=1")


def test_libsvm_and_hashed_csv_click_logs(tmp_path):
    svm = tmp_path / "clicks.svm"
    svm.write_text("1 3:1 17:0.5\n0 3:1\n-1 99999999999:1 4:2\n# comment\n+1 5:1\n")
    train, test = open_ctr_source(f"ctr-libsvm:{svm}", seed=0)
    both = sorted(train.y.tolist() + test.y.tolist())
    assert both == [0, 0, 1, 1] and len(test) == 1
    assert 99999999999 in set(train.ids.tolist()) | set(test.ids.tolist())
    csv = tmp_path / "clicks.csv"
    csv.write_text("label,site,app,device\n1,a.com,,phone\n0,b.com,x,tablet\n1,a.com,x,\n0,c,y,z\n0,a.com,y,z\n")
    train, test = open_ctr_source(f"ctr-csv:{csv}?ids=1000", seed=1)
    assert len(train) + len(test) == 5
    allrows = sorted((train.indptr[1:] - train.indptr[:-1]).tolist() + (test.indptr[1:] - test.indptr[:-1]).tolist())
    assert allrows == [2, 2, 3, 3, 3]      # empty tokens are missing features
    assert (train.ids < 1000).all()
    bad = tmp_path / "bad.svm"
    bad.write_text("1 3:1\n2 4:1\n")
    with pytest.raises(DataError, match="line 2"):
        open_ctr_source(f"ctr-libsvm:{bad}")
    with pytest.raises(DataError, match="missing.svm"):
        open_ctr_source(f"ctr-libsvm:{tmp_path / 'missing.svm'}")


def test_sparse_lr_gradients_match_finite_differences():
    model = SparseLogisticRegression()
    batch = next(ctr_batches(SyntheticCtr(n=64, fields=5, ids=50, seed=1).rows(0, 64), 16, epoch=0, seed=0))
    uniq, inverse = np.unique(batch.ids, return_inverse=True)
    rng = np.random.default_rng(0)
    w = rng.standard_normal((len(uniq), 1))
    bias = np.array([0.3])

    def loss_at(w, bias):
        return model.loss_and_grads({"bias": bias}, {"emb": w[inverse]}, batch)[0]

    _, dense, rows = model.loss_and_grads({"bias": bias}, {"emb": w[inverse]}, batch)
    ids, occurrence_grads = rows["emb"]
    per_id = np.zeros_like(w)
    np.add.at(per_id, np.searchsorted(uniq, ids), occurrence_grads)  # duplicates summed, as the server does
    eps = 1e-6
    for k in range(len(uniq)):
        e = np.zeros_like(w)
        e[k] = eps
        assert per_id[k, 0] == pytest.approx((loss_at(w + e, bias) - loss_at(w - e, bias)) / (2 * eps), abs=1e-7)
    assert dense["bias"][0] == pytest.approx((loss_at(w, bias + eps) - loss_at(w, bias - eps)) / (2 * eps), abs=1e-7)
    with pytest.raises(ValueError, match="binary"):
        SparseLogisticRegression(10, 3)


def test_sparse_mlp_gradients_match_finite_differences():
    from worker.models.sparse_mlp import SparseMLP

    model = SparseMLP(dim=3, hidden=4)
    batch = next(ctr_batches(SyntheticCtr(n=32, fields=4, ids=40, seed=2).rows(0, 32), 12, epoch=0, seed=0))
    uniq, inverse = np.unique(batch.ids, return_inverse=True)
    rng = np.random.default_rng(1)
    emb = rng.standard_normal((len(uniq), 3)) * 0.5
    params = {"w1": rng.standard_normal((3, 4)), "b1": rng.standard_normal(4) * 0.1,
              "w2": rng.standard_normal((4, 1)), "b2": np.array([0.1])}

    def loss_at(emb, params):
        return model.loss_and_grads(params, {"emb": emb[inverse]}, batch)[0]

    _, dense, rows = model.loss_and_grads(params, {"emb": emb[inverse]}, batch)
    per_id = np.zeros_like(emb)
    np.add.at(per_id, np.searchsorted(uniq, rows["emb"][0]), rows["emb"][1])
    eps = 1e-6
    for k in range(0, len(uniq), 3):
        for c in range(3):
            e = np.zeros_like(emb)
            e[k, c] = eps
            fd = (loss_at(emb + e, params) - loss_at(emb - e, params)) / (2 * eps)
            assert per_id[k, c] == pytest.approx(fd, abs=1e-6)
    for name in params:
        for index in np.ndindex(params[name].shape):
            up = {k: v.copy() for k, v in params.items()}
            down = {k: v.copy() for k, v in params.items()}
            up[name][index] += eps
            down[name][index] -= eps
            fd = (loss_at(emb, up) - loss_at(emb, down)) / (2 * eps)
            assert dense[name][index] == pytest.approx(fd, abs=1e-6), name
