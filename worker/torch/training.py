"""Torch models from the command line: ``ps-worker --model torch:package.module:factory``.

``factory`` is a function of no arguments returning ``(module, loss_fn)``: an ``nn.Module``
that maps a batch of feature rows (float32, ``(batch, num_features)``) to outputs, and a
loss ``loss_fn(outputs, targets) -> scalar tensor``. The targets are int64 class labels for
a dataset with classes (accuracy is reported: ``outputs.argmax(1)``), float targets
otherwise (mean squared error is reported). The module is imported like any Python module,
from ``sys.path`` plus the current directory; torch's random seed is set to ``--seed``
before the factory runs, though the initial weights come from the servers anyway.

:func:`build_torch_model` loads it; :func:`train_torch` is :func:`worker.training.loop.train`
for it, with the same batches, records, evaluation and stop rule, the gradients computed
by torch and applied through :class:`~worker.torch.optimizer.ParameterServerOptimizer`
(one table per named parameter, no prefix). :func:`evaluate_torch` scores a module.
Nothing here reads argv or the environment.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from worker.data.dataset import Dataset
from worker.torch.optimizer import ParameterServerOptimizer
from worker.training.evaluation import EVAL_CHUNK_ROWS
from worker.training.progress import run_epochs
from worker.training.model_tables import optimizer_kwargs
from worker.training.records import EvalRecord, StepRecord, TrainResult
from worker.training.train_config import TORCH_PREFIX, TrainConfig
from worker.xp import DeviceUnavailableError

__all__ = ["TorchModel", "build_torch_model", "evaluate_torch", "load_factory", "train_torch"]

log = logging.getLogger(__name__)


@dataclass
class TorchModel:
    """A loaded ``torch:`` model: the module, its loss, and what it is scored on."""

    spec: str                     # "torch:package.module:factory"
    module: nn.Module
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    task: str                     # classification | regression
    device: str = "cpu"
    sparse = False                # not a worker.models sparse model (those train on click logs)

    def __repr__(self) -> str:
        return f"{self.spec} ({sum(p.numel() for p in self.module.parameters())} parameters)"


def load_factory(spec: str) -> Callable[[], Any]:
    """The function ``spec`` (``torch:package.module:function``) names.

    Raises ValueError for a malformed spec, a module that cannot be imported (with the
    import error) or a missing or non-callable attribute.
    """
    body = spec[len(TORCH_PREFIX):] if spec.startswith(TORCH_PREFIX) else spec
    module_name, sep, attr = body.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--model {spec!r}: expected torch:package.module:factory")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())      # as `python -m` would: modules beside the user's files
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"--model {spec!r}: cannot import {module_name}: {exc}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ValueError(f"--model {spec!r}: {module_name} has no function {attr!r}")
    return factory


def build_torch_model(config: TrainConfig, ds: Dataset) -> TorchModel:
    """Load ``config.model`` and check it fits ``ds`` (one forward pass on a row).

    Raises ValueError (bad spec, factory result, or a module that fails on the data's rows),
    DeviceUnavailableError (``config.device`` cuda without a CUDA device).
    """
    if config.device == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailableError("--device cuda with a torch model needs a CUDA build of torch and a GPU")
    factory = load_factory(config.model)
    torch.manual_seed(config.seed)
    made = factory()
    if not (isinstance(made, tuple) and len(made) == 2 and isinstance(made[0], nn.Module) and callable(made[1])):
        raise ValueError(f"--model {config.model!r}: the factory must return (nn.Module, loss_fn), "
                         f"got {type(made).__name__}")
    module, loss_fn = made
    model = TorchModel(config.model, module.to(config.device), loss_fn,
                       "classification" if ds.num_classes else "regression", config.device)
    if len(ds):
        try:
            with torch.no_grad():
                _forward_rows(model, ds.x[:1])
        except Exception as exc:  # the module's own error on the data's shape or dtype
            raise ValueError(f"--model {config.model!r} does not take {ds.name}'s rows "
                             f"({ds.num_features} features): {type(exc).__name__}: {exc}") from None
    return model


def evaluate_torch(model: TorchModel, ds: Dataset) -> tuple[str, float]:
    """``("accuracy", fraction)`` or ``("mse", mean squared error)`` of ``model.module`` on ``ds``.

    Runs in eval mode under ``no_grad``, ``EVAL_CHUNK_ROWS`` rows at a time (a sparse
    embedding's hook pulls the rows it needs). NaN for an empty dataset. Blocks.
    """
    metric = "accuracy" if model.task == "classification" else "mse"
    if len(ds) == 0:
        return metric, math.nan
    total = 0.0
    was_training = model.module.training
    model.module.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(ds), EVAL_CHUNK_ROWS):
                out = _forward_rows(model, ds.x[start:start + EVAL_CHUNK_ROWS]).cpu()
                y = ds.y[start:start + EVAL_CHUNK_ROWS]
                if metric == "accuracy":
                    total += float((out.argmax(dim=1).numpy() == y).sum())
                else:
                    diff = out.double().numpy().reshape(len(y), -1) - y.reshape(len(y), -1)
                    total += float(np.sum(diff * diff)) / diff.shape[1]
    finally:
        model.module.train(was_training)
    return metric, total / len(ds)


def train_torch(client: Any, model: TorchModel, train_ds: Dataset, test_ds: Dataset, config: TrainConfig, *,
                on_step: Callable[[StepRecord], None] | None = None,
                on_eval: Callable[[EvalRecord], None] | None = None,
                should_stop: Callable[[], bool] | None = None) -> TrainResult:
    """Train ``model`` on this worker's ``train_ds`` through the connected ``client``.

    As :func:`worker.training.loop.train`: builds the optimizer (tables, first pull), runs
    ``config.epochs`` epochs over the same batches, evaluates after each epoch (always
    after the last), calls ``on_step``/``on_eval``, checks ``should_stop()`` before every
    step (raising TrainingStopped), and closes ``client`` when done or failing. Blocks;
    raises ValueError for a bad config, PSError subclasses from the cluster.
    """
    try:
        config.validate()
        o = config.optimizer_spec()
        opt = ParameterServerOptimizer(model.module, client, optimizer=o.name, lr=o.lr, seed=config.seed,
                                       **optimizer_kwargs(o))
        return _loop(client, model, opt, train_ds, test_ds, config, on_step, on_eval, should_stop or (lambda: False))
    finally:
        client.close()


def _loop(client, model: TorchModel, opt, train_ds, test_ds, config, on_step, on_eval, should_stop) -> TrainResult:
    model.module.train()

    def train_step(x, y) -> float:
        opt.zero_grad()
        out = _forward_rows(model, x)
        loss = model.loss_fn(out, _targets(model, y, out))
        loss.backward()
        opt.step()
        return float(loss.detach())

    def evaluate_now() -> tuple[str, float]:
        opt.pull()                       # the newest values (other workers may have pushed)
        return evaluate_torch(model, test_ds)

    return run_epochs(client, train_ds, config, train_step, evaluate_now,
                      lambda: {name: p.detach().cpu().numpy() for name, p in model.module.named_parameters()},
                      on_step, on_eval, should_stop)


def load_values(model: TorchModel, arrays: Mapping[str, np.ndarray]) -> None:
    """Load exported tables (``worker.export``) into ``model.module`` (strict). Raises
    RuntimeError (torch's) for missing or unexpected keys or shapes."""
    model.module.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in arrays.items()})


def _forward_rows(model: TorchModel, x: np.ndarray) -> torch.Tensor:
    dtype = next(model.module.parameters()).dtype if any(True for _ in model.module.parameters()) else torch.float32
    return model.module(torch.from_numpy(np.ascontiguousarray(x)).to(model.device, dtype))


def _targets(model: TorchModel, y: np.ndarray, out: torch.Tensor) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(y))
    if model.task == "classification":
        return t.to(out.device, torch.int64)
    t = t.to(out.device, out.dtype)
    return t.reshape(out.shape) if t.shape != out.shape and t.numel() == out.numel() else t
