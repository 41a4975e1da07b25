"""The training loop of one worker.

:func:`train` runs one worker against the cluster: per batch it pulls the weights, computes
the loss and gradients on ``config.device`` (NumPy or CuPy through :mod:`worker.xp`),
pushes the gradients, and evaluates on the held-out split at the end of every epoch. When
its data is exhausted (or anything fails) it closes the client, which leaves the quorum, so
in sync mode the other workers never wait for a worker that is done: uneven shards finish.

:func:`worker.training.local_trainer.train_local` does the same arithmetic in one process with no
servers, starting from :func:`initial_params` (the values the servers draw from
:func:`table_specs`); so N workers in sync mode and ``train_local`` over the same N shards
produce the same weights. The pieces both share live in :mod:`worker.training.train_config`,
:mod:`worker.training.records`, :mod:`worker.training.model_tables` and
:mod:`worker.training.evaluation` (and are importable from here too).

Only NumPy is required; nothing here reads files, argv or the environment.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from worker.data.dataset import DataError, Dataset, check_compatible
from worker.models import Model, make_model
from worker.models.sparse_models import SPARSE_MODELS, make_sparse_model
from worker.training.evaluation import evaluate
from worker.training.progress import StepRate, run_epochs, staleness_of
from worker.training.model_tables import create_tables, initial_params, optimizer_kwargs, table_specs
from worker.training.records import EvalRecord, StepRecord, TrainingStopped, TrainResult
from worker.training.sparse_loop import train_sparse
from worker.training.train_config import TORCH_PREFIX, TrainConfig, is_torch_model
from worker.xp import get_xp, to_device, to_host

# the pieces the loop shares with the reference trainers live beside it; they are named here too
__all__ = ["TORCH_PREFIX", "EvalRecord", "StepRate", "StepRecord", "TrainConfig", "TrainResult", "TrainingStopped",
           "build_model", "create_tables", "evaluate", "initial_params", "is_torch_model", "optimizer_kwargs",
           "staleness_of", "table_specs", "train"]

log = logging.getLogger(__name__)


def build_model(config: TrainConfig, ds: Dataset) -> Model:
    """The model ``config`` names, sized by ``config.num_features``/``num_classes`` or else
    by the data (its classes, or its outputs for regression), after checking ``ds`` fits it.

    Raises DataError when ``ds`` does not fit (feature count, label range, regression
    targets for a classifier), ValueError for an unknown model or bad options.
    """
    if is_torch_model(config.model):  # a PyTorch module and loss from a factory (imports torch)
        try:
            from worker.torch.training import build_torch_model
        except ImportError as exc:  # torch is not installed
            raise ValueError(f"--model {config.model}: {exc}") from None
        return build_torch_model(config, ds)
    if config.model in SPARSE_MODELS:  # click-log models with embedding tables (worker.training.sparse_loop)
        return make_sparse_model(config.model, ds.num_features, ds.num_classes)
    if ds.num_classes:
        outputs = ds.num_classes
    else:
        outputs = 1 if ds.y.ndim == 1 else ds.y.shape[1]
        if make_model(config.model, 1, 2, **config.model_options()).task == "classification":
            raise DataError(f"{ds.name} has regression targets but model {config.model!r} is a classifier "
                            "(use model 'linear', or append ?task=classification to the source)")
    features = config.num_features or ds.num_features
    model = make_model(config.model, features, config.num_classes or outputs, **config.model_options())
    check_compatible(ds, features, (config.num_classes or outputs) if model.task == "classification" else 0)
    return model


# -- the worker loop ------------------------------------------------------------------


def train(
    client: Any,
    model: Model,
    train_ds: Dataset,
    test_ds: Dataset,
    config: TrainConfig,
    *,
    on_step: Callable[[StepRecord], None] | None = None,
    on_eval: Callable[[EvalRecord], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Train ``model`` on this worker's ``train_ds`` through the connected ``client``.

    Creates a table per model parameter (idempotent across workers), then runs
    ``config.epochs`` epochs of pull -> loss and gradients on ``config.device`` -> push,
    evaluating on ``test_ds`` after each epoch (always after the last). Calls ``on_step``
    after every push and ``on_eval`` after every evaluation, on this thread. Checks
    ``should_stop()`` before every step and raises :class:`TrainingStopped` when it is
    true (the way to stop on a signal: raising from a signal handler inside a gRPC call
    can leave gRPC's locks held).

    Takes ownership of ``client``: closes it (leaving the quorum) when the data is
    exhausted or anything fails, so sync steps never wait for this worker. Blocks for the
    whole training; every call inside is bounded by the client's deadlines. Raises
    :class:`~worker.xp.DeviceUnavailableError` for an unusable device (before any call),
    ValueError for a bad config, :class:`~ps.errors.PSError` subclasses from the cluster
    (e.g. AlreadyExistsError when the tables exist with other shapes).
    """
    if is_torch_model(config.model):  # torch computes the gradients (worker.torch.training)
        from worker.torch.training import train_torch
        return train_torch(client, model, train_ds, test_ds, config, on_step=on_step, on_eval=on_eval,
                           should_stop=should_stop)
    if getattr(model, "sparse", False):  # embedding tables: pull_rows/push_rows (worker.training.sparse_loop)
        return train_sparse(client, model, train_ds, test_ds, config, on_step=on_step, on_eval=on_eval,
                            should_stop=should_stop)
    try:
        config.validate()
        xp = get_xp(config.device)
        specs = table_specs(model, config)
        create_tables(client, specs)
        return _loop(client, model, train_ds, test_ds, config, xp, list(specs), on_step, on_eval,
                     should_stop or (lambda: False))
    finally:
        client.close()


def _loop(client, model, train_ds, test_ds, config, xp, names, on_step, on_eval, should_stop) -> TrainResult:
    params: dict[str, Any] = {}

    def train_step(x, y) -> Any:
        nonlocal params
        params = {k: to_device(v, xp) for k, v in client.pull(names).items()}
        loss, grads = model.loss_and_grads(params, to_device(x, xp), to_device(y, xp))
        client.push({k: _host(grads[k], config.dtype) for k in names})
        return loss

    def evaluate_now() -> tuple[str, float]:
        nonlocal params
        params = {k: to_device(v, xp) for k, v in client.pull(names).items()}
        return evaluate(model, params, test_ds, xp)

    return run_epochs(client, train_ds, config, train_step, evaluate_now,
                      lambda: {k: to_host(v) for k, v in params.items()}, on_step, on_eval, should_stop)


def _host(grad: Any, dtype: str) -> np.ndarray:
    return np.ascontiguousarray(to_host(grad), dtype=dtype)
