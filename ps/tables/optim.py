"""Server-side optimizers, applied in place to one block at a time.

Each optimizer is a small object built from an :class:`OptimizerSpec`. ``init_state``
returns the per-block state arrays (kept beside the block and checkpointed with it), and
``apply`` updates a block's parameters in place from one gradient. Weight decay is the
classic L2 term: ``g + weight_decay * w`` replaces ``g`` in every rule.

``apply`` is not thread-safe for one block: the caller holds that block's lock. NumPy
releases the GIL inside the in-place array operations, so different blocks update in
parallel. ``grad`` is never modified; ``scratch`` (same shape and dtype as the block) is
used for temporaries so that a step allocates nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Protocol

import numpy as np

from ps._proto import ps_pb2
from ps.errors import InvalidArgumentError


@dataclass(frozen=True)
class OptimizerSpec:
    """Name and hyper-parameters of a server-side optimizer (dimensionless; lr per step)."""

    name: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9          # momentum
    nesterov: bool = False         # momentum
    beta1: float = 0.9             # adam
    beta2: float = 0.999           # adam
    eps: float = 1e-8              # adagrad, adam
    weight_decay: float = 0.0      # all
    initial_accumulator: float = 0.0  # adagrad
    l1: float = 0.0                # ftrl
    l2: float = 0.0                # ftrl
    beta: float = 1.0              # ftrl

    def validate(self) -> None:
        """Raises InvalidArgumentError for an unknown name or an out-of-range value."""
        if self.name not in OPTIMIZERS:
            raise InvalidArgumentError(f"unknown optimizer {self.name!r}; choose from {', '.join(OPTIMIZERS)}")
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise InvalidArgumentError(f"optimizer {f.name} must be finite, got {value}")
        if self.lr <= 0:
            raise InvalidArgumentError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise InvalidArgumentError(f"momentum must be in [0, 1), got {self.momentum}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise InvalidArgumentError(f"adam betas must be in [0, 1), got {self.beta1}, {self.beta2}")
        if self.eps <= 0 or self.weight_decay < 0 or self.initial_accumulator < 0:
            raise InvalidArgumentError("eps must be > 0; weight_decay and initial_accumulator >= 0")
        if self.l1 < 0 or self.l2 < 0 or self.beta < 0:
            raise InvalidArgumentError(f"ftrl l1, l2 and beta must be >= 0, got {self.l1}, {self.l2}, {self.beta}")

    def to_proto(self) -> ps_pb2.OptimizerSpec:
        return ps_pb2.OptimizerSpec(**{f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def from_proto(cls, msg: ps_pb2.OptimizerSpec) -> OptimizerSpec:
        """Decode (not validated: the table spec validates it)."""
        return cls(**{f.name: getattr(msg, f.name) for f in fields(cls)})

    @classmethod
    def from_options(cls, name: str, lr: float, **options: float) -> OptimizerSpec:
        """Build and validate a spec; raises InvalidArgumentError on an unknown option."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise InvalidArgumentError(f"unknown optimizer option(s) {unknown}; known: {sorted(known - {'name', 'lr'})}")
        spec = cls(name=name, lr=float(lr), **options)
        spec.validate()
        return spec


class Optimizer(Protocol):
    def init_state(self, param: np.ndarray) -> dict[str, np.ndarray]: ...

    def apply(self, param: np.ndarray, grad: np.ndarray, state: dict[str, np.ndarray], scratch: np.ndarray) -> None: ...


def _decayed(spec: OptimizerSpec, param: np.ndarray, grad: np.ndarray, scratch: np.ndarray) -> np.ndarray:
    """``grad + weight_decay * param`` in ``scratch`` when decay is on, else ``grad`` itself."""
    if spec.weight_decay == 0.0:
        return grad
    np.multiply(param, spec.weight_decay, out=scratch)
    scratch += grad
    return scratch


class SGD:
    """``w -= lr * g``."""

    def __init__(self, spec: OptimizerSpec) -> None:
        self.spec = spec

    def init_state(self, param: np.ndarray) -> dict[str, np.ndarray]:
        return {}

    def apply(self, param, grad, state, scratch) -> None:
        g = _decayed(self.spec, param, grad, scratch)
        np.multiply(g, self.spec.lr, out=scratch)
        param -= scratch


class Momentum:
    """Heavy ball: ``v = mu v + g; w -= lr v``; Nesterov: ``w -= lr (g + mu v)``."""

    def __init__(self, spec: OptimizerSpec) -> None:
        self.spec = spec

    def init_state(self, param: np.ndarray) -> dict[str, np.ndarray]:
        return {"velocity": np.zeros_like(param)}

    def apply(self, param, grad, state, scratch) -> None:
        s = self.spec
        g = _decayed(s, param, grad, scratch)
        v = state["velocity"]
        v *= s.momentum
        v += g
        if s.nesterov:
            if g is not scratch:
                np.copyto(scratch, g)
            scratch += s.momentum * v
            scratch *= s.lr
        else:
            np.multiply(v, s.lr, out=scratch)
        param -= scratch


class Adagrad:
    """``h += g^2; w -= lr g / (sqrt(h) + eps)``."""

    def __init__(self, spec: OptimizerSpec) -> None:
        self.spec = spec

    def init_state(self, param: np.ndarray) -> dict[str, np.ndarray]:
        return {"accumulator": np.full_like(param, self.spec.initial_accumulator)}

    def apply(self, param, grad, state, scratch) -> None:
        s = self.spec
        g = _decayed(s, param, grad, scratch)
        h = state["accumulator"]
        h += g * g
        if g is scratch:
            g = g.copy()
        np.sqrt(h, out=scratch)
        scratch += s.eps
        np.divide(g, scratch, out=scratch)
        scratch *= s.lr
        param -= scratch


class Adam:
    """Adam (Kingma & Ba) with bias correction; the step count lives in the state."""

    def __init__(self, spec: OptimizerSpec) -> None:
        self.spec = spec

    def init_state(self, param: np.ndarray) -> dict[str, np.ndarray]:
        return {"m": np.zeros_like(param), "v": np.zeros_like(param), "t": np.zeros((), dtype=np.int64)}

    def apply(self, param, grad, state, scratch) -> None:
        s = self.spec
        g = _decayed(s, param, grad, scratch)
        m, v, t = state["m"], state["v"], state["t"]
        t += 1
        step = int(t)
        if g is scratch:  # weight decay: the decayed gradient is needed beside the temporaries
            g = g.copy()
        # the same operations in the same order as ``m += (1 - b1) * g`` and ``v += (1 - b2) * (g * g)``,
        # with the temporaries in ``scratch`` instead of fresh block-sized arrays
        m *= s.beta1
        np.multiply(g, 1 - s.beta1, out=scratch)
        m += scratch
        v *= s.beta2
        np.multiply(g, g, out=scratch)
        scratch *= 1 - s.beta2
        v += scratch
        lr_t = s.lr * math.sqrt(1 - s.beta2**step) / (1 - s.beta1**step)
        eps_hat = s.eps * math.sqrt(1 - s.beta2**step)
        np.sqrt(v, out=scratch)
        scratch += eps_hat
        np.divide(m, scratch, out=scratch)
        scratch *= lr_t
        param -= scratch


class FTRL:
    """FTRL-Proximal (McMahan et al., 2013), per coordinate, with ``lr`` as alpha.

    ``sigma = (sqrt(n + g^2) - sqrt(n)) / lr; z += g - sigma w; n += g^2``, then
    ``w = 0`` where ``|z| <= l1``, else ``-(z - sign(z) l1) / ((beta + sqrt(n)) / lr + l2)``.
    The L1 term gives exact zeros: the sparse models of click-through prediction.
    """

    def __init__(self, spec: OptimizerSpec) -> None:
        self.spec = spec

    def init_state(self, param: np.ndarray) -> dict[str, np.ndarray]:
        return {"z": np.zeros_like(param), "n": np.zeros_like(param)}

    def apply(self, param, grad, state, scratch) -> None:
        ftrl_update(self.spec, param, _decayed(self.spec, param, grad, scratch), state["z"], state["n"])


def ftrl_update(s: OptimizerSpec, w: np.ndarray, g: np.ndarray, z: np.ndarray, n: np.ndarray) -> None:
    """One FTRL-Proximal step in place on ``w``, ``z`` and ``n`` (any shape; ``g`` is read only)."""
    root = np.sqrt(n)
    n += g * g
    sigma = np.sqrt(n)
    sigma -= root
    sigma /= s.lr
    z += g - sigma * w
    shrunk = np.abs(z) - s.l1
    np.maximum(shrunk, 0, out=shrunk)
    denom = (s.beta + np.sqrt(n)) / s.lr + s.l2
    w[...] = 0  # where |z| <= l1 (and where nothing was ever pushed: no 0/0 when beta = l2 = 0)
    np.divide(-np.sign(z) * shrunk, denom, out=w, where=shrunk > 0)


OPTIMIZERS: dict[str, type] = {"sgd": SGD, "momentum": Momentum, "adagrad": Adagrad, "adam": Adam, "ftrl": FTRL}
#: arrays of the parameters' shape each optimizer keeps per block (its ``init_state``; scalars
#: such as Adam's step count not counted): what a table's optimizer state costs, in tables' sizes
STATE_SLOTS: dict[str, int] = {"sgd": 0, "momentum": 1, "adagrad": 1, "adam": 2, "ftrl": 2}


def make_optimizer(spec: OptimizerSpec) -> Optimizer:
    """The optimizer for a validated spec. Raises InvalidArgumentError for an unknown name."""
    spec.validate()
    return OPTIMIZERS[spec.name](spec)
