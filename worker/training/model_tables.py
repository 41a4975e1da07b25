"""A model's parameters as cluster tables: their specs, initial values, and creating them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ps.tables.optim import OptimizerSpec
from ps.tables.spec import InitSpec, TableSpec
from worker.models import Model
from worker.training.train_config import TrainConfig


def table_specs(model: Model, config: TrainConfig) -> dict[str, TableSpec]:
    """The table spec of every model parameter, exactly as :func:`train` creates them."""
    optimizer = config.optimizer_spec()
    return {
        name: TableSpec(name=name, shape=p.shape, dtype=np.dtype(config.dtype).name, optimizer=optimizer,
                        init=InitSpec(kind=p.init, scale=float(p.scale), seed=int(config.seed)))
        for name, p in model.parameters().items()
    }


def initial_params(model: Model, config: TrainConfig) -> dict[str, np.ndarray]:
    """The initial weights the servers draw for ``model``'s tables (same values, any shard count)."""
    out = {}
    for name, spec in table_specs(model, config).items():
        blocks = [spec.initial_block(b) for b in range(spec.num_blocks)]
        flat = np.concatenate(blocks) if blocks else np.zeros(0, dtype=spec.dtype)
        out[name] = flat.reshape(spec.shape)
    return out


def optimizer_kwargs(o: OptimizerSpec) -> dict[str, Any]:
    """The optional optimizer settings of ``o`` as keyword arguments of ``Client.create``."""
    return {k: getattr(o, k) for k in ("momentum", "nesterov", "beta1", "beta2", "eps", "weight_decay",
                                       "initial_accumulator")}


def create_tables(client: Any, specs: Mapping[str, TableSpec]) -> None:
    """Create every dense table in ``specs`` through ``client`` (idempotent across workers).

    Blocks for one Create call per table, each bounded by the client's deadline. Raises
    :class:`~ps.errors.PSError` subclasses, e.g. AlreadyExistsError for a table that
    exists with another shape.
    """
    for name, spec in specs.items():
        o = spec.optimizer
        client.create(name, spec.shape, dtype=spec.dtype, init=spec.init.kind, init_scale=spec.init.scale,
                      seed=spec.init.seed, optimizer=o.name, lr=o.lr, block_elems=spec.block_elems,
                      **optimizer_kwargs(o))
