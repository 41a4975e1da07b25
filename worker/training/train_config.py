"""``TrainConfig``: what one worker trains and how."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ps.tables.optim import OptimizerSpec
from worker.models import MODELS
from worker.models.sparse_models import SPARSE_MODELS
from worker.xp import DEVICES

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
