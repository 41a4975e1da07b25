"""The epochs of a worker's training, whatever computes its gradients: :func:`run_epochs`
(batches, stop requests, step records, evaluations), with the rows per second
(:class:`StepRate`) and how far this worker runs ahead of the slowest (:func:`staleness_of`).
Shared by the NumPy loop (:mod:`worker.training.loop`) and the torch loop
(:mod:`worker.torch.training`)."""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from worker.data.dataset import Dataset, batches
from worker.training.records import EvalRecord, StepRecord, TrainingStopped, TrainResult
from worker.training.train_config import TrainConfig

log = logging.getLogger(__name__)


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


def staleness_of(client: Any) -> int | None:
    """This worker's clock minus the slowest live worker's, from every shard's status."""
    clocks = [w["clock"] for shard in client.status() for w in shard["workers"] if w["live"]]
    return max(0, client.clock - min(clocks)) if clocks else None


def run_epochs(client: Any, train_ds: Dataset, config: TrainConfig, train_step: Callable[[Any, Any], Any],
               evaluate: Callable[[], tuple[str, float]], final_params: Callable[[], dict[str, np.ndarray]],
               on_step: Callable[[StepRecord], None] | None, on_eval: Callable[[EvalRecord], None] | None,
               should_stop: Callable[[], bool]) -> TrainResult:
    """Train ``config.epochs`` epochs of ``train_ds``'s batches: ``train_step(x, y)`` does one
    step (pull, gradients, push) and returns its mean loss (a scalar); ``evaluate()`` scores the newest
    weights on the held-out split after each epoch (or only the last, per
    ``config.eval_each_epoch``); ``final_params()`` gives the weights the result keeps.
    Blocks for the whole run. Raises TrainingStopped when ``should_stop()`` says so between
    steps, and whatever the callables raise."""
    per_epoch = -(-len(train_ds) // config.batch_size)
    total_steps = per_epoch * config.epochs
    start = time.monotonic()
    rate = StepRate(start)
    history: list[EvalRecord] = []
    step = samples = 0
    staleness: int | None = None
    epoch_loss = math.nan
    for epoch in range(config.epochs):
        loss_sum, rows = 0.0, 0
        for x, y in batches(train_ds, config.batch_size, epoch=epoch, seed=config.seed):
            if should_stop():
                raise TrainingStopped(step)
            loss = train_step(x, y)
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
            metric, value = evaluate()
            record = EvalRecord(config.rank, epoch + 1, step, metric, value, time.time())
            history.append(record)
            log.info("worker %d epoch %d: train loss %.4f, test %s %.4f", config.rank, epoch + 1, epoch_loss,
                     metric, value)
            if on_eval is not None:
                on_eval(record)
    return TrainResult.of(config.rank, config.epochs, step, samples, time.monotonic() - start, epoch_loss, history,
                          final_params())
