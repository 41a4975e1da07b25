"""Every server-side optimizer matches a plain NumPy reference, step for step."""

import math

import numpy as np
import pytest

from ps.errors import InvalidArgumentError
from ps.tables.optim import OptimizerSpec, make_optimizer


def reference(spec: OptimizerSpec, w, grads):
    """Textbook update rules, written out with fresh arrays (float64)."""
    w = w.astype(np.float64).copy()
    v = np.zeros_like(w)
    h = np.full_like(w, spec.initial_accumulator)
    m = np.zeros_like(w)
    s = np.zeros_like(w)
    z = np.zeros_like(w)
    n = np.zeros_like(w)
    out = []
    for t, g in enumerate(grads, start=1):
        g = g.astype(np.float64) + spec.weight_decay * w
        if spec.name == "sgd":
            w = w - spec.lr * g
        elif spec.name == "momentum":
            v = spec.momentum * v + g
            w = w - spec.lr * (g + spec.momentum * v if spec.nesterov else v)
        elif spec.name == "adagrad":
            h = h + g * g
            w = w - spec.lr * g / (np.sqrt(h) + spec.eps)
        elif spec.name == "adam":
            m = spec.beta1 * m + (1 - spec.beta1) * g
            s = spec.beta2 * s + (1 - spec.beta2) * g * g
            m_hat = m / (1 - spec.beta1**t)
            s_hat = s / (1 - spec.beta2**t)
            w = w - spec.lr * m_hat / (np.sqrt(s_hat) + spec.eps)
        elif spec.name == "ftrl":  # McMahan et al. 2013, Algorithm 1, per coordinate
            sigma = (np.sqrt(n + g * g) - np.sqrt(n)) / spec.lr
            z = z + g - sigma * w
            n = n + g * g
            w = np.array([0.0 if abs(zi) <= spec.l1 else
                          -(zi - np.sign(zi) * spec.l1) / ((spec.beta + np.sqrt(ni)) / spec.lr + spec.l2)
                          for zi, ni in zip(z, n)])
        out.append(w.copy())
    return out


SPECS = [
    OptimizerSpec("sgd", lr=0.1),
    OptimizerSpec("sgd", lr=0.1, weight_decay=0.01),
    OptimizerSpec("momentum", lr=0.05, momentum=0.9),
    OptimizerSpec("momentum", lr=0.05, momentum=0.9, nesterov=True),
    OptimizerSpec("momentum", lr=0.05, momentum=0.5, nesterov=True, weight_decay=0.1),
    OptimizerSpec("adagrad", lr=0.1, initial_accumulator=0.1),
    OptimizerSpec("adagrad", lr=0.1, weight_decay=0.01),
    OptimizerSpec("adam", lr=0.01),
    OptimizerSpec("adam", lr=0.01, beta1=0.8, beta2=0.99, weight_decay=0.05),
    OptimizerSpec("ftrl", lr=0.1),
    OptimizerSpec("ftrl", lr=0.5, l1=0.3, l2=0.2, beta=0.5),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.name}-nesterov{s.nesterov}-wd{s.weight_decay}")
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_optimizer_matches_reference_step_by_step(spec, dtype):
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal(257).astype(dtype)
    grads = [rng.standard_normal(257).astype(dtype) for _ in range(20)]
    opt = make_optimizer(spec)
    w = w0.copy()
    state = opt.init_state(w)
    scratch = np.empty_like(w)
    tol = 1e-12 if dtype == np.float64 else 2e-5
    for step, (g, expected) in enumerate(zip(grads, reference(spec, w0, grads)), start=1):
        g_before = g.copy()
        opt.apply(w, g, state, scratch)
        assert w.dtype == dtype
        np.testing.assert_allclose(w, expected, rtol=tol, atol=tol, err_msg=f"step {step}")
        assert np.array_equal(g, g_before), "apply must not modify the gradient"


def test_ftrl_l1_gives_exact_zeros():
    """Coordinates whose accumulated gradient stays within l1 are exactly zero: sparse models."""
    opt = make_optimizer(OptimizerSpec("ftrl", lr=0.1, l1=1.0))
    w = np.zeros(4, np.float32)
    state = opt.init_state(w)
    for _ in range(5):
        opt.apply(w, np.array([0.1, -0.1, 0.5, -0.5], np.float32), state, np.empty_like(w))
    assert w[0] == 0.0 and w[1] == 0.0          # |z| = 5 x 0.1 <= l1
    assert w[2] < 0 < w[3]                      # |z| > l1 from the third step: moves against the gradient


@pytest.mark.parametrize("bad", [
    dict(name="rmsprop"), dict(lr=0.0), dict(lr=-1.0), dict(lr=math.nan), dict(momentum=1.0),
    dict(beta1=1.0), dict(eps=0.0), dict(weight_decay=-0.1), dict(name="ftrl", l1=-1.0), dict(name="ftrl", beta=-0.5),
])
def test_bad_optimizer_spec_is_refused(bad):
    with pytest.raises(InvalidArgumentError):
        OptimizerSpec(**{"name": "sgd", "lr": 0.1, **bad}).validate()


def test_unknown_option_is_refused():
    with pytest.raises(InvalidArgumentError, match="unknown optimizer option"):
        OptimizerSpec.from_options("sgd", 0.1, momentun=0.9)
