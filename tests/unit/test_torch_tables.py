"""worker.torch.tables: which tables a torch module needs, and the servers' initialisers (no network)."""

import math

import pytest

torch = pytest.importorskip("torch", reason="worker.torch needs PyTorch (pip install 'grpc-ps[torch]')")
from torch import nn  # noqa: E402

from ps.errors import InvalidArgumentError  # noqa: E402
from ps.tables.spec import InitSpec  # noqa: E402
from worker.torch.tables import model_tables  # noqa: E402


class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(100, 8, sparse=True, padding_idx=0)
        self.dense_emb = nn.Embedding(10, 8)
        self.conv = nn.Conv1d(8, 4, kernel_size=3)
        self.norm = nn.LayerNorm(4)
        self.fc = nn.Linear(4, 2)
        self.gain = nn.Parameter(torch.ones(1))
        self.temperature = nn.Parameter(torch.tensor([0.37]))
        self.tied = self.fc      # a shared module: its parameters once, under their first name


def test_tables_follow_named_parameters_with_torch_like_initialisers():
    dense, sparse = model_tables(Mixed(), prefix="m/", seed=3)
    assert [s.table for s in sparse] == ["m/emb.weight"]
    s = sparse[0]
    assert (s.num_rows, s.dim, s.padding_idx, s.init) == (100, 8, 0, InitSpec("normal", 1.0, 3))
    inits = {d.name: d.init for d in dense}
    assert list(inits) == ["gain", "temperature", "dense_emb.weight", "conv.weight", "conv.bias", "norm.weight",
                           "norm.bias", "fc.weight", "fc.bias"]
    assert all(d.table == "m/" + d.name and d.dtype == "float32" for d in dense)
    assert inits["dense_emb.weight"] == InitSpec("normal", 1.0, 3)
    assert inits["conv.weight"] == inits["conv.bias"] == InitSpec("uniform", 1 / math.sqrt(8 * 3), 3)
    assert inits["fc.weight"] == inits["fc.bias"] == InitSpec("uniform", 0.5, 3)
    assert inits["norm.weight"] == InitSpec("constant", 1.0, 3) and inits["norm.bias"] == InitSpec("zeros", 0.0, 3)
    assert inits["gain"] == InitSpec("constant", 1.0, 3)
    assert inits["temperature"] == InitSpec("uniform", 1.0, 3)     # one random-looking element: not a constant


def test_overrides_dtypes_and_refusals():
    dense, _ = model_tables(nn.Linear(3, 2).double(), init={"bias": ("constant", -2.0)})
    assert [d.dtype for d in dense] == ["float64", "float64"]
    assert dense[1].init == InitSpec("constant", -2.0, 0)
    with pytest.raises(InvalidArgumentError, match="does not have: nope"):
        model_tables(nn.Linear(3, 2), init={"nope": ("zeros", 0.0)})
    with pytest.raises(InvalidArgumentError, match=r"'weight' has dtype torch\.int64"):
        model = nn.Module()
        model.weight = nn.Parameter(torch.zeros(2, dtype=torch.int64), requires_grad=False)
        model_tables(model)
    with pytest.raises(InvalidArgumentError, match="sparse table starts from"):
        model_tables(nn.Embedding(4, 2, sparse=True), init={"weight": ("glorot", 0.0)})
