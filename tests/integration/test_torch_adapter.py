"""worker.torch.ParameterServerOptimizer against real shards on loopback.

Sync exactness (2 workers, 2 shards, a Linear, a LayerNorm and a sparse Embedding) against
one torch process doing SGD on the mean gradient; in-place updates without copies; what is
pushed (only parameters with a gradient, only touched rows); errors; async and SSP.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="worker.torch needs PyTorch (pip install 'grpc-ps[torch]')")
from torch import nn  # noqa: E402

from ps.errors import AlreadyExistsError, InvalidArgumentError  # noqa: E402
from tests.conftest import run_threads  # noqa: E402
from worker import Client  # noqa: E402
from worker.torch import ParameterServerOptimizer  # noqa: E402

VOCAB, DIM, CLASSES, LR, STEPS = 20, 6, 3, 0.1, 20


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # two workers in threads on a 2-core machine
    yield
    torch.set_num_threads(before)


class Net(nn.Module):
    """ids (batch, 4) -> mean of a sparse embedding -> LayerNorm -> Linear."""

    def __init__(self, sparse: bool = True) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, DIM, sparse=sparse)
        self.norm = nn.LayerNorm(DIM)
        self.fc = nn.Linear(DIM, CLASSES)

    def forward(self, ids):
        return self.fc(self.norm(self.emb(ids).mean(dim=1)))


def batch(rank: int, step: int):
    g = torch.Generator().manual_seed(1000 * rank + step)
    ids = torch.randint(0, VOCAB - 4, (8, 4), generator=g)  # rows VOCAB-4.. are never touched
    return ids, torch.randint(0, CLASSES, (8,), generator=g)


def loss_of(model, ids, y):
    return nn.functional.cross_entropy(model(ids), y)


def test_sync_two_workers_match_one_process_sgd_on_the_mean_gradient(shards):
    start: dict[str, torch.Tensor] = {}
    final: dict[int, dict[str, torch.Tensor]] = {}
    with shards(2, mode="sync", num_workers=2) as servers:
        addresses = [s.address for s in servers]

        def worker(rank):
            model = Net()
            with Client(addresses, worker_id=rank) as ps:
                opt = ParameterServerOptimizer(model, ps, optimizer="sgd", lr=LR)
                if rank == 0:  # the servers' initial values, before any step is applied
                    start.update({k: v.clone() for k, v in model.state_dict().items()})
                    start["emb.weight"] = torch.from_numpy(ps.pull_rows("emb.weight", np.arange(VOCAB)))
                for step in range(STEPS):
                    opt.zero_grad()
                    loss_of(model, *batch(rank, step)).backward()
                    opt.step()
                state = {k: v.clone() for k, v in model.state_dict().items()}
                state["emb.weight"] = torch.from_numpy(ps.pull_rows("emb.weight", np.arange(VOCAB)))
                final[rank] = state

        run_threads([lambda r=r: worker(r) for r in range(2)], timeout_s=120)

    ref = Net(sparse=False)
    ref.load_state_dict(start)
    for step in range(STEPS):
        grads = []
        for rank in range(2):
            ref.zero_grad()
            loss_of(ref, *batch(rank, step)).backward()
            grads.append({k: p.grad.clone() for k, p in ref.named_parameters()})
        with torch.no_grad():
            for k, p in ref.named_parameters():
                p -= LR * (grads[0][k] + grads[1][k]) / 2
    expect = ref.state_dict()
    for rank in range(2):
        for k, v in expect.items():
            np.testing.assert_allclose(final[rank][k].numpy(), v.numpy(), rtol=0, atol=1e-6, err_msg=k)
    # the rows no batch touched are still the servers' initial rows
    np.testing.assert_array_equal(final[0]["emb.weight"][VOCAB - 4:].numpy(), start["emb.weight"][VOCAB - 4:].numpy())


def test_cpu_parameters_are_updated_in_place_and_the_initial_values_come_from_the_servers(shards):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    with shards(2, mode="async") as servers, Client([s.address for s in servers], worker_id=0) as ps:
        other = nn.Sequential(nn.Linear(5, 4), nn.LayerNorm(4), nn.Linear(4, 2))  # other local draws
        ParameterServerOptimizer(other, ps, optimizer="sgd", lr=0.5)
        storage = {k: p.data_ptr() for k, p in model.named_parameters()}
        opt = ParameterServerOptimizer(model, ps, optimizer="sgd", lr=0.5)  # same tables: idempotent
        for (k, p), q in zip(model.named_parameters(), other.parameters()):
            assert torch.equal(p, q), k                 # both start from the servers' values
        assert torch.all(model[1].weight == 1) and torch.all(model[1].bias == 0)   # LayerNorm: ones, zeros
        bound = 1 / np.sqrt(5)
        assert 0 < model[0].weight.abs().max() <= bound and 0 < model[0].bias.abs().max() <= bound
        x, y = torch.randn(16, 5), torch.randint(0, 2, (16,))
        for _ in range(3):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            before = model[0].weight.detach().clone()
            opt.step()
            assert not torch.equal(model[0].weight, before)
        assert {k: p.data_ptr() for k, p in model.named_parameters()} == storage  # written in place
        served = ps.pull(list(opt.tables.values()))
        for k, p in model.named_parameters():
            np.testing.assert_array_equal(p.detach().numpy(), served[k])


def test_parameters_without_a_gradient_are_not_pushed(shards):
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 2), nn.Linear(3, 2)

        def forward(self, x):
            return self.a(x)            # b is never used: no gradient

    model = TwoHeads()
    with shards(2, mode="async") as servers, Client([s.address for s in servers], worker_id=0) as ps:
        opt = ParameterServerOptimizer(model, ps, optimizer="adam", lr=0.1)
        b_before = {k: v.copy() for k, v in ps.pull(["b.weight", "b.bias"]).items()}
        for _ in range(3):
            opt.zero_grad()
            model(torch.randn(4, 3)).sum().backward()
            assert model.b.weight.grad is None
            opt.step()
        after = ps.pull(["a.weight", "b.weight", "b.bias"])
        for k in ("b.weight", "b.bias"):
            np.testing.assert_array_equal(after[k], b_before[k])   # adam would move anything pushed
        np.testing.assert_array_equal(model.a.weight.detach().numpy(), after["a.weight"])
        assert ps.stats["applied"] >= 3


def test_sparse_embedding_pulls_and_pushes_only_the_touched_rows(shards):
    model = nn.EmbeddingBag(1000, 4, mode="sum", sparse=True)
    with shards(2, mode="async") as servers, Client([s.address for s in servers], worker_id=0) as ps:
        opt = ParameterServerOptimizer(model, ps, optimizer="sgd", lr=1.0, prefix="bag/")
        assert opt.sparse_tables == {"weight": "bag/weight"}
        ids = torch.tensor([[3, 7, 7], [500, 3, 999]])
        assert opt.rows_pulled == 0                      # the constructor pulls no rows
        opt.zero_grad()
        model(ids).sum().backward()
        assert opt.rows_pulled == 4                      # distinct ids only: 3, 7, 500, 999
        opt.step()
        assert opt.rows_pushed == 4
        stored = sum(t["rows"] for shard in ps.status() for t in shard["sparse_tables"])
        assert stored == 4                               # the servers hold the touched rows only
        rows = ps.pull_rows("bag/weight", np.array([3, 7, 500]))
        np.testing.assert_allclose(rows[1] - model.weight.detach()[7].numpy(), -2.0, rtol=0, atol=1e-6)
        # the next forward pulls the new rows first
        out = model(torch.tensor([[7]]))
        np.testing.assert_allclose(out.detach().numpy()[0], rows[1], rtol=0, atol=0)
        with pytest.raises(InvalidArgumentError, match="outside"):
            model(torch.tensor([[1000]]))


def test_errors_name_the_parameter(shards):
    with shards(1, mode="async") as servers, Client([s.address for s in servers], worker_id=0) as ps:
        half = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2).half())
        with pytest.raises(InvalidArgumentError, match=r"'1\.weight' has dtype torch\.float16"):
            ParameterServerOptimizer(half, ps)
        with pytest.raises(InvalidArgumentError, match="max_norm"):
            ParameterServerOptimizer(nn.Embedding(5, 2, sparse=True, max_norm=1.0), ps)
        ParameterServerOptimizer(nn.Linear(2, 2), ps, prefix="m/")
        with pytest.raises(AlreadyExistsError):
            ParameterServerOptimizer(nn.Linear(3, 2), ps, prefix="m/")    # same names, other shapes
        ParameterServerOptimizer(nn.Linear(3, 2), ps, prefix="n/")        # a prefix keeps them apart


def test_staged_parameters_land_too():
    """A non-contiguous CPU parameter takes the staged path (as CUDA parameters do)."""
    from worker.torch.host import HostArrays

    p = nn.Parameter(torch.zeros(3, 4).t())             # (4, 3), not contiguous
    q = nn.Parameter(torch.zeros(2))
    host = HostArrays({"p": p, "q": q}, pin=False)
    assert host.staged == {"p"}
    out = host.weights()
    out["p"][...] = np.arange(12, dtype=np.float32).reshape(4, 3)
    out["q"][...] = 7
    assert torch.all(q == 7)                             # aliased: already there
    assert not p.detach().any()
    host.commit()
    np.testing.assert_array_equal(p.detach().numpy(), np.arange(12).reshape(4, 3))
    p.grad = torch.ones(3, 4).t()
    q.grad = torch.full((2,), 2.0)
    g = host.grads(["p", "q"])
    np.testing.assert_array_equal(g["p"], np.ones((4, 3)))
    assert np.shares_memory(g["q"], q.grad.numpy())


@pytest.mark.parametrize("mode", ["async", "ssp"])
def test_async_and_ssp_workers_train(shards, mode):
    torch.manual_seed(1)
    w_true = torch.randn(4, 1)
    with shards(2, mode=mode, staleness=1) as servers:
        addresses = [s.address for s in servers]
        losses = {}

        def worker(rank):
            model = nn.Linear(4, 1)
            with Client(addresses, worker_id=rank) as ps:
                opt = ParameterServerOptimizer(model, ps, optimizer="sgd", lr=0.1)
                g = torch.Generator().manual_seed(rank)
                seen = []
                for _ in range(30):
                    x = torch.randn(16, 4, generator=g)
                    opt.zero_grad()
                    loss = nn.functional.mse_loss(model(x), x @ w_true)
                    loss.backward()
                    opt.step()
                    seen.append(loss.item())
                losses[rank] = seen

        run_threads([lambda r=r: worker(r) for r in range(2)], timeout_s=120)
    for seen in losses.values():
        assert np.mean(seen[-5:]) < 0.2 * np.mean(seen[:5])


@pytest.mark.gpu
def test_cuda_parameters_go_through_pinned_memory(shards):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    model = Net().cuda()
    with shards(2, mode="async") as servers, Client([s.address for s in servers], worker_id=0) as ps:
        opt = ParameterServerOptimizer(model, ps, optimizer="sgd", lr=LR)
        assert opt._host.staged == {"norm.weight", "norm.bias", "fc.weight", "fc.bias"}
        ids, y = batch(0, 0)
        opt.zero_grad()
        loss_of(model, ids.cuda(), y.cuda()).backward()
        opt.step()
        served = ps.pull(["fc.weight", "norm.weight"])
        np.testing.assert_array_equal(model.fc.weight.detach().cpu().numpy(), served["fc.weight"])
        np.testing.assert_array_equal(model.norm.weight.detach().cpu().numpy(), served["norm.weight"])


def test_an_exported_model_loads_into_torch_with_load_state_dict(shards, tmp_path):
    from worker.export import export_model

    model = Net()
    with shards(2, mode="async") as servers, Client([s.address for s in servers], worker_id=0) as ps:
        opt = ParameterServerOptimizer(model, ps, optimizer="adam", lr=0.05)
        for step in range(5):
            opt.zero_grad()
            loss_of(model, *batch(0, step)).backward()
            opt.step()
        path = tmp_path / "net.npz"
        export_model([s.address for s in servers], path)
        ids = torch.arange(VOCAB).reshape(5, 4)
        with torch.no_grad():
            trained = model(ids)                        # the hook pulls every row it needs
        loaded = Net(sparse=False)
        loaded.load_state_dict({k: torch.from_numpy(v) for k, v in np.load(path).items()})
        with torch.no_grad():
            torch.testing.assert_close(loaded(ids), trained, rtol=0, atol=0)
        np.testing.assert_array_equal(loaded.emb.weight.detach().numpy(),
                                      ps.pull_rows("emb.weight", np.arange(VOCAB)))
