"""The training loop of one worker, and the pieces it shares with the reference trainer.

:func:`train` runs one worker against the cluster: per batch it pulls the weights, computes
the loss and gradients on ``config.device`` (NumPy or CuPy through :mod:`worker.xp`),
pushes the gradients, and evaluates on the held-out split at the end of every epoch. When
its data is exhausted (or anything fails) it closes the client, which leaves the quorum, so
in sync mode the other workers never wait for a worker that is done: uneven shards finish.

:func:`worker.training.local_trainer.train_local` does the same arithmetic in one process with no
servers, starting from :func:`initial_params` (the values the servers draw from
:func:`table_specs`); so N workers in sync mode and ``train_local`` over the same N shards
produce the same weights.

Only NumPy is required; nothing here reads files, argv or the environment.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from types import ModuleType
from typing import Any

import numpy as np

from ps.tables.optim import OptimizerSpec
from ps.tables.spec import InitSpec, TableSpec
from worker.data.dataset import DataError, Dataset, batches, check_compatible
from worker.models import MODELS, Model, make_model
from worker.models.sparse_models import SPARSE_MODELS, make_sparse_model
from worker.xp import DEVICES, get_xp, to_device, to_host

__all__ = ["TORCH_PREFIX", "EvalRecord", "StepRate", "StepRecord", "TrainConfig", "TrainResult", "TrainingStopped",
           "build_model", "create_tables", "evaluate", "initial_params", "is_torch_model", "optimizer_kwargs",
           "staleness_of", "table_specs", "train"]

log = logging.getLogger(__name__)

#: rows per forward pass when evaluating, so a large test split does not need a huge array
EVAL_CHUNK_ROWS = 8192
#: ``--model torch:package.module:factory``: a PyTorch model (worker.torch.training; needs torch)
TORCH_PREFIX = "torch:"


def is_torch_model(name: str) -> bool:
    """Whether model ``name`` is a ``torch:package.module:factory`` model."""
    return name.startswith(TORCH_PREFIX)


@dataclass(frozen=True)
class TrainConfig:
    """What one worker trains and how. Pure value; :meth:`validate` checks it.

    The defaults are the project's main job (``ps-launch`` with no arguments): an MLP with
    64 hidden units on the embedded digits, Adam at lr 0.01, batches of 32, 20 epochs,
    which reaches about 0.96-0.98 test accuracy in sync or async mode.

    ``hidden`` are the MLP's hidden layer widths (ignored by other models).
    ``optimizer_options`` are extra server-side optimizer settings as ``(name, value)``
    pairs, e.g. ``(("momentum", 0.9),)``. ``lr`` is per step. ``seed`` fixes the initial
    weights, the held-out split and the batch order, and must be the same on every worker.
    ``staleness_every``: every this many steps ask the servers for the slowest worker's
    clock (one Status call) to report staleness; 0 never asks. ``num_features`` and
    ``num_classes`` fix the model's size instead of taking it from the data (the data is
    then checked against it).
    """

    model: str = "mlp"
    hidden: tuple[int, ...] = (64,)
    data: str = "digits"
    epochs: int = 20
    batch_size: int = 32
    optimizer: str = "adam"
    lr: float = 0.01
    optimizer_options: tuple[tuple[str, float], ...] = ()
    seed: int = 0
    device: str = "cpu"
    rank: int = 0
    num_workers: int = 1
    eval_each_epoch: bool = True
    staleness_every: int = 0
    dtype: str = "float32"
    num_features: int | None = None   # None: the data's feature count
    num_classes: int | None = None    # None: the data's classes (or regression outputs)

    def validate(self) -> None:
        """Raises ValueError naming the first bad field (and the flag that sets it)."""
        if self.model not in MODELS and self.model not in SPARSE_MODELS and not is_torch_model(self.model):
            known = ", ".join(sorted({**MODELS, **SPARSE_MODELS}))
            raise ValueError(f"unknown model {self.model!r}; choose from {known}")
        if any(int(h) < 1 for h in self.hidden):
            raise ValueError(f"hidden layer widths must be >= 1, got {','.join(map(str, self.hidden))}")
        for name in ("epochs", "batch_size", "num_workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.rank < self.num_workers:
            raise ValueError(f"need 0 <= rank < num-workers, got rank {self.rank} of {self.num_workers}")
        if self.seed < 0 or self.staleness_every < 0:
            raise ValueError("seed and staleness-every must be >= 0")
        for name in ("num_features", "num_classes"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name.replace('_', '-')} must be >= 1, got {value}")
        if self.device not in DEVICES:
            raise ValueError(f"unknown device {self.device!r}; choose from {', '.join(DEVICES)}")
        self.optimizer_spec().validate()  # InvalidArgumentError is a ValueError

    def optimizer_spec(self) -> OptimizerSpec:
        """The server-side optimizer these settings describe. Raises ValueError if invalid."""
        return OptimizerSpec.from_options(self.optimizer, self.lr, **dict(self.optimizer_options))

    def model_options(self) -> dict[str, Any]:
        """Keyword options for :func:`worker.models.make_model`."""
        return {"hidden": tuple(self.hidden)} if self.model == "mlp" else {}


@dataclass(frozen=True)
class StepRecord:
    """One finished step of one worker, as handed to ``on_step`` (and one metrics line).

    ``time`` is Unix time in seconds; ``step`` counts this worker's steps from 1;
    ``samples_per_s`` is this worker's rate over its recent steps; ``staleness`` is how many
    clocks this worker was ahead of the slowest live worker when last asked (None: not
    asked); ``total_steps`` is how many steps this worker will take in all.
    """

    time: float
    worker: int
    epoch: int
    step: int
    loss: float
    samples_per_s: float
    staleness: int | None
    total_steps: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EvalRecord:
    """The held-out score after ``epoch`` epochs (1-based): ``metric`` is accuracy or mse."""

    worker: int
    epoch: int
    step: int
    metric: str
    value: float
    time: float


@dataclass(frozen=True)
class TrainResult:
    """What a worker (or the reference trainer) reached.

    ``metric`` is "accuracy" (classification, fraction in [0, 1]) or "mse" (regression);
    ``test_score`` is its value on the held-out split for the final weights this worker saw.
    ``final_loss`` is the mean training loss over the last epoch (NaN with no batches);
    ``seconds`` the wall time of the loop; ``samples_per_s`` training rows per second.
    """

    worker: int
    epochs: int
    steps: int
    samples: int
    seconds: float
    samples_per_s: float
    final_loss: float
    metric: str
    test_score: float
    history: tuple[EvalRecord, ...] = field(default=())
    params: Mapping[str, np.ndarray] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def of(cls, worker: int, epochs: int, steps: int, samples: int, seconds: float, final_loss: float,
           history: Sequence[EvalRecord], params: Mapping[str, np.ndarray] | None = None) -> TrainResult:
        """The result of a loop that ran ``seconds``: the rate and the score come from the
        numbers and the last evaluation in ``history`` (which must not be empty)."""
        final = history[-1]
        return cls(worker=worker, epochs=epochs, steps=steps, samples=samples, seconds=seconds,
                   samples_per_s=samples / seconds if seconds > 0 else 0.0, final_loss=final_loss,
                   metric=final.metric, test_score=final.value, history=tuple(history), params=params)

    def summary(self) -> str:
        """One line, e.g. ``test accuracy 0.9611 after 5 epochs (1234 steps, 5.2 s)``."""
        score = f"{self.test_score:.4f}" if self.metric == "accuracy" else f"{self.test_score:.6g}"
        return (f"test {self.metric} {score} after {self.epochs} epochs "
                f"({self.steps} steps, {self.seconds:.1f} s)")


class TrainingStopped(Exception):
    """:func:`train` stopped early because ``should_stop()`` said so; the client has left."""

    def __init__(self, step: int) -> None:
        super().__init__(f"training stopped on request after {step} steps")
        self.step = step


# -- shared pieces --------------------------------------------------------------------


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


def evaluate(model: Model, params: Mapping[str, Any], ds: Dataset, xp: ModuleType = np) -> tuple[str, float]:
    """``("accuracy", fraction correct)`` or ``("mse", mean squared error)`` of ``params`` on ``ds``.

    ``params`` live on ``xp``'s device; the rows are moved there in chunks. Blocks on the
    computation. NaN for an empty dataset.
    """
    metric = "accuracy" if model.task == "classification" else "mse"
    if len(ds) == 0:
        return metric, math.nan
    total = 0.0
    for start in range(0, len(ds), EVAL_CHUNK_ROWS):
        x = to_device(ds.x[start:start + EVAL_CHUNK_ROWS], xp)
        y = ds.y[start:start + EVAL_CHUNK_ROWS]
        pred = to_host(model.predict(params, x))
        if metric == "accuracy":
            total += float(np.count_nonzero(pred == y))
        else:
            diff = pred.astype(np.float64) - y.reshape(pred.shape)
            total += float(np.sum(diff * diff)) / (diff.size // len(y))
    return metric, total / len(ds)


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


def _steps_per_epoch(n: int, batch_size: int) -> int:
    return -(-n // batch_size)


class StepRate:
    """Rows per second over the last ``window`` steps."""

    def __init__(self, start: float, window: int = 20) -> None:
        self._marks: deque[tuple[float, int]] = deque([(start, 0)], maxlen=window + 1)
        self._rows = 0

    def add(self, now: float, rows: int) -> float:
        self._rows += rows
        self._marks.append((now, self._rows))
        (t0, r0), (t1, r1) = self._marks[0], self._marks[-1]
        return (r1 - r0) / (t1 - t0) if t1 > t0 else 0.0


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
        from worker.training.sparse_loop import train_sparse
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
    per_epoch = _steps_per_epoch(len(train_ds), config.batch_size)
    total_steps = per_epoch * config.epochs
    start = time.monotonic()
    rate = StepRate(start)
    history: list[EvalRecord] = []
    step = samples = 0
    staleness: int | None = None
    epoch_loss = math.nan
    params: dict[str, Any] = {}
    for epoch in range(config.epochs):
        loss_sum, rows = 0.0, 0
        for x, y in batches(train_ds, config.batch_size, epoch=epoch, seed=config.seed):
            if should_stop():
                raise TrainingStopped(step)
            params = {k: to_device(v, xp) for k, v in client.pull(names).items()}
            loss, grads = model.loss_and_grads(params, to_device(x, xp), to_device(y, xp))
            client.push({k: _host(grads[k], config.dtype) for k in names})
            step += 1
            samples += len(x)
            loss_sum += loss * len(x)
            rows += len(x)
            if config.staleness_every and step % config.staleness_every == 1 % config.staleness_every:
                staleness = staleness_of(client)
            if on_step is not None:
                on_step(StepRecord(time=time.time(), worker=config.rank, epoch=epoch + 1, step=step, loss=float(loss),
                                   samples_per_s=rate.add(time.monotonic(), len(x)), staleness=staleness,
                                   total_steps=total_steps))
        epoch_loss = loss_sum / rows if rows else math.nan
        if config.eval_each_epoch or epoch == config.epochs - 1:
            params = {k: to_device(v, xp) for k, v in client.pull(names).items()}
            metric, value = evaluate(model, params, test_ds, xp)
            record = EvalRecord(config.rank, epoch + 1, step, metric, value, time.time())
            history.append(record)
            log.info("worker %d epoch %d: train loss %.4f, test %s %.4f", config.rank, epoch + 1, epoch_loss,
                     metric, value)
            if on_eval is not None:
                on_eval(record)
    return TrainResult.of(config.rank, config.epochs, step, samples, time.monotonic() - start, epoch_loss, history,
                          {k: to_host(v) for k, v in params.items()})


def _host(grad: Any, dtype: str) -> np.ndarray:
    return np.ascontiguousarray(to_host(grad), dtype=dtype)


def staleness_of(client: Any) -> int | None:
    """This worker's clock minus the slowest live worker's, from every shard's status."""
    clocks = [w["clock"] for shard in client.status() for w in shard["workers"] if w["live"]]
    return max(0, client.clock - min(clocks)) if clocks else None
