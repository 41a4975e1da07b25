"""``ParameterServerOptimizer``: train a PyTorch module through the cluster.

>>> with Client(servers, worker_id=rank) as ps:                     # doctest: +SKIP
...     opt = ParameterServerOptimizer(model, ps, optimizer="adam", lr=1e-3)  # tables + first pull
...     for x, y in loader:
...         opt.zero_grad()
...         loss_fn(model(x), y).backward()
...         opt.step()      # pushes every .grad, then pulls the new values into the parameters

The servers hold the weights and run the optimizer; the worker computes gradients with
torch. Tables and their initial values are described in :mod:`worker.torch.tables`; how
gradients and weights cross between torch and NumPy in :mod:`worker.torch.host`.

**Sparse embeddings.** The ``weight`` of an ``nn.Embedding`` or ``nn.EmbeddingBag`` built
with ``sparse=True`` is a sparse table of ``num_embeddings`` rows. The optimizer registers
a forward pre-hook on each such module: when the module runs, the hook pulls the rows its
input ids touch (``Client.pull_rows``, once per distinct id) into the local weight, so the
lookup uses the servers' current rows; ``step()`` pushes the gradient rows of the ids the
batch touched and nothing else. The training loop is therefore the same as for a dense
model. The local ``weight`` keeps its full shape (torch's embedding needs it), but only
the rows of the last batch are current: read the trained table through the cluster
(``ps-admin export``), not from the local module. A ``padding_idx`` row gets no gradient
from torch, so it is never pushed and keeps the table's initial row (not zeros).
Not supported: ``max_norm`` (refused when the optimizer is built).

**Steps.** ``step()`` gathers the gradients of the parameters that have one (others are
not pushed, and keep the values of the last pull), then makes one step of this worker
(one clock tick, so sync and SSP modes count it once):

- dense only: one fused ``push_pull`` that pushes the gradients and pulls every dense
  table into the parameters, in place;
- with sparse rows: ``push(grads, rows=...)`` (dense gradients and rows in one step), then
  ``pull`` of the dense tables into the parameters: two round trips, because the client
  has no fused push-and-pull that carries rows.

Errors are :mod:`ps.errors` exceptions (e.g. InvalidArgumentError for a parameter of an
unsupported dtype, naming it; AlreadyExistsError when a table of the same name exists with
another shape or optimizer; DeadlineExceededError when a sync step waits too long).

Not thread-safe: one optimizer per client, used from one thread.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from ps.errors import NotFoundError
from ps.tables.spec import AUTO_BLOCK_ELEMS
from worker.torch.host import HostArrays
from worker.torch.tables import SparseParam, model_tables

__all__ = ["ParameterServerOptimizer"]


class ParameterServerOptimizer:
    """Trains ``model``'s parameters on the tables of the connected ``client``.

    Args:
        model: the ``nn.Module``; its parameters must be float32 or float64 (any device:
            CUDA parameters go through pinned host memory).
        client: a connected :class:`worker.Client` (or anything with its public verbs).
        optimizer, lr, **optimizer_options: the server-side optimizer of every table
            (sgd | momentum | adagrad | adam; options as for ``Client.create``, e.g.
            ``momentum=0.9``, ``weight_decay=1e-4``). ``lr`` is per step.
        prefix: put in front of every table name, to keep several models apart.
        init: ``{parameter name: (kind, scale)}`` overriding :func:`worker.torch.tables.default_init`.
        seed: seed of the servers' initial values (the same on every worker).
        block_elems: block size of the dense tables (0: automatic, ``ps.tables.spec.balanced_block_elems``).
        max_rows, eviction, admit_after: memory bounds of the sparse tables (``Client.create_sparse``).

    The constructor does I/O (it is what makes the optimizer ready, as a torch optimizer is
    when built): it creates every table (idempotent: several workers may build the same
    model) and pulls the dense tables into the parameters, so every worker starts from the
    servers' weights. Blocks, bounded by the client's deadlines. Raises
    InvalidArgumentError (unsupported dtype or embedding option, a bad init or optimizer
    setting), AlreadyExistsError, and the client's errors.
    """

    def __init__(self, model: nn.Module, client: Any, *, optimizer: str = "sgd", lr: float = 0.01,
                 prefix: str = "", init: Mapping[str, tuple[str, float]] | None = None, seed: int = 0,
                 block_elems: int = AUTO_BLOCK_ELEMS, max_rows: int = 0, eviction: str = "lru",
                 admit_after: int = 0, **optimizer_options: Any) -> None:
        self.model = model
        self.client = client
        self._dense, self._sparse = model_tables(model, prefix=prefix, init=init, seed=seed)
        self._host = HostArrays({d.table: d.param for d in self._dense})
        self._hooks: list[Any] = []
        #: how many rows the hooks pulled and ``step()`` pushed, summed over the sparse tables
        self.rows_pulled = 0
        self.rows_pushed = 0
        for d in self._dense:
            client.create(d.table, tuple(d.param.shape), dtype=d.dtype, init=d.init.kind, init_scale=d.init.scale,
                          seed=d.init.seed, optimizer=optimizer, lr=lr, block_elems=block_elems, **optimizer_options)
        for s in self._sparse:
            client.create_sparse(s.table, s.dim, dtype=s.dtype, init=s.init.kind, init_scale=s.init.scale,
                                 seed=s.init.seed, optimizer=optimizer, lr=lr, max_rows=max_rows, eviction=eviction,
                                 admit_after=admit_after, num_rows=s.num_rows, **optimizer_options)
        for s in self._sparse:
            self._hooks.append(s.module.register_forward_pre_hook(self._row_hook(s), with_kwargs=True))
        self.pull()

    # -- what it trains -------------------------------------------------------------------

    @property
    def tables(self) -> dict[str, str]:
        """Parameter name -> table name, dense and sparse."""
        return {p.name: p.table for p in [*self._dense, *self._sparse]}

    @property
    def sparse_tables(self) -> dict[str, str]:
        """Parameter name -> sparse table name (the sparse embeddings' weights)."""
        return {p.name: p.table for p in self._sparse}

    # -- the torch optimizer's verbs --------------------------------------------------------

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear every parameter's gradient (to None, or to zeros in place). Does not block."""
        for p in [*self._dense, *self._sparse]:
            if p.param.grad is None:
                continue
            if set_to_none or p.param.grad.is_sparse:
                p.param.grad = None
            else:
                p.param.grad.detach_()
                p.param.grad.zero_()

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Push the gradients, then pull the new dense values into the parameters in place.

        ``closure`` (optional, as for torch optimizers) is called with gradients enabled
        first, and its result returned. One step of this worker (see the module
        docstring). Blocks: in sync mode until every live worker pushed this step; in
        SSP mode while this worker is too far ahead; bounded by the client's deadlines.
        Raises the client's :mod:`ps.errors` exceptions (nothing is half-applied on the
        worker side: the parameters change only after a successful pull).
        """
        result = None
        if closure is not None:
            with torch.enable_grad():
                result = closure()
        grads = self._host.grads([d.table for d in self._dense if d.param.grad is not None])
        rows = {}
        for s in self._sparse:
            if s.param.grad is not None:
                ids, values = _row_grads(s)
                rows[s.table] = (ids, values)
                self.rows_pushed += len(ids)
        names = [d.table for d in self._dense]
        if rows:
            self.client.push(grads, rows=rows)
            if names:
                self.client.pull(names, out=self._host.weights())
        elif names:
            self.client.push_pull(grads, names, out=self._host.weights())
        else:
            self.client.push({})
        self._host.commit()
        return result

    def pull(self) -> None:
        """Pull every dense table into its parameter (in place), without pushing. Blocks like
        ``Client.pull`` (in sync mode: until this worker's last step is applied)."""
        if self._dense:
            self.client.pull([d.table for d in self._dense], out=self._host.weights())
            self._host.commit()

    def remove_hooks(self) -> None:
        """Detach the sparse embeddings' row-pulling hooks (the module then uses its local
        rows as they are). Idempotent; does not block."""
        for h in self._hooks:
            h.remove()
        self._hooks = []

    # -- sparse rows -----------------------------------------------------------------------

    def _row_hook(self, s: SparseParam):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            ids = args[0] if args else kwargs.get("input")
            if not isinstance(ids, torch.Tensor):
                return
            self.pull_rows(s, ids)
        return hook

    def pull_rows(self, embedding: SparseParam | str, ids: torch.Tensor | np.ndarray) -> None:
        """Pull rows ``ids`` of a sparse embedding (its parameter name, or its SparseParam)
        into its local weight. The forward hooks call it; call it yourself to prefetch.

        Blocks like ``Client.pull_rows``. Raises InvalidArgumentError for ids outside the
        embedding, NotFoundError for an unknown name.
        """
        s = embedding if isinstance(embedding, SparseParam) else self._sparse_param(embedding)
        t = torch.as_tensor(ids).detach().reshape(-1)
        uniq = torch.unique(t.to("cpu", torch.int64))
        if uniq.numel() == 0:
            return
        rows = self.client.pull_rows(s.table, uniq.numpy())
        self.rows_pulled += len(uniq)
        with torch.no_grad():
            weight = s.param.data
            weight.index_copy_(0, uniq.to(weight.device), torch.from_numpy(rows).to(weight.device, non_blocking=True))

    def _sparse_param(self, name: str) -> SparseParam:
        for s in self._sparse:
            if s.name == name:
                return s
        raise NotFoundError(f"{name!r} is not a sparse embedding of this model; sparse: "
                            f"{', '.join(s.name for s in self._sparse) or 'none'}")


def _row_grads(s: SparseParam) -> tuple[np.ndarray, np.ndarray]:
    """The touched rows of ``s``'s gradient: ``(ids int64, (n, dim) values)`` on the host,
    duplicates summed, the padding row left out."""
    g = s.param.grad.detach()
    if g.is_sparse:
        g = g.coalesce()
        ids, values = g.indices()[0], g.values()
    else:  # a dense gradient (e.g. set by hand): its non-zero rows
        ids = torch.nonzero(g.abs().sum(dim=1)).reshape(-1)
        values = g.index_select(0, ids)
    if s.padding_idx is not None:
        keep = ids != s.padding_idx
        ids, values = ids[keep], values[keep]
    return (np.ascontiguousarray(ids.to("cpu", torch.int64).numpy()),
            np.ascontiguousarray(values.to("cpu").numpy()))
