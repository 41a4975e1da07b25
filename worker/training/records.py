"""What a training run reports: its step and evaluation records, its result, and an early stop."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


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
