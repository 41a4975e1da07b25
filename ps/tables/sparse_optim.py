"""Row-wise server-side optimizers for sparse tables.

The same rules as :mod:`ps.tables.optim` (``sgd``, ``momentum``, ``adagrad``, ``adam``, ``ftrl``, each with
the L2 ``weight_decay`` term ``g + weight_decay * w``), applied to the rows a push touches:
gather those rows and their state, update the gathered copies with whole-array NumPy
operations, scatter them back. Rows a push does not touch do not change (no decay, no
momentum drift: the "lazy" sparse semantics). Adam keeps its step count per row, so a
row's bias correction counts that row's own updates.

A :class:`RowOptimizer` is stateless itself; the per-row state lives in the table's
arrays (``state_layout`` says which). ``apply`` is not thread-safe for one table: the
caller holds the table's lock.
"""

from __future__ import annotations

import numpy as np

from ps.tables.optim import OptimizerSpec, ftrl_update

#: name -> (state array name, per-element (True) or per-row (False), dtype or None for the table's, fill)
_LAYOUTS: dict[str, tuple[tuple[str, bool, str | None, str], ...]] = {
    "sgd": (),
    "momentum": (("velocity", True, None, "zero"),),
    "adagrad": (("accumulator", True, None, "initial_accumulator"),),
    "adam": (("m", True, None, "zero"), ("v", True, None, "zero"), ("t", False, "int32", "zero")),
    "ftrl": (("z", True, None, "zero"), ("n", True, None, "zero")),
}


def gather_rows(array: np.ndarray, slots: np.ndarray) -> np.ndarray:
    """``array[slots]`` (rows along axis 0) as a new array; ``np.take`` is several times
    faster than fancy indexing for 2-D arrays."""
    return np.take(array, slots, axis=0)


def scatter_rows(array: np.ndarray, slots: np.ndarray, rows: np.ndarray) -> None:
    """``array[slots] = rows`` for unique ``slots``; C-contiguous 2-D arrays are written as
    one opaque item per row (``np.put`` on a void view), much faster than fancy assignment."""
    if array.ndim == 2 and array.flags.c_contiguous and array.shape[1]:
        item = np.dtype((np.void, array.shape[1] * array.itemsize))
        src = np.ascontiguousarray(rows, dtype=array.dtype)
        np.put(array.view(item).reshape(-1), slots, src.view(item).reshape(-1))
    else:
        array[slots] = rows


class RowOptimizer:
    """Applies ``spec``'s rule to rows ``slots`` of a table's ``values`` and ``state``."""

    def __init__(self, spec: OptimizerSpec) -> None:
        spec.validate()
        self.spec = spec

    def state_layout(self, dim: int, dtype: np.dtype) -> dict[str, tuple[tuple[int, ...], np.dtype, float]]:
        """State arrays per row: ``name -> (shape of one row's state, dtype, initial value)``."""
        out = {}
        for name, per_element, sdtype, fill in _LAYOUTS[self.spec.name]:
            value = self.spec.initial_accumulator if fill == "initial_accumulator" else 0.0
            out[name] = ((dim,) if per_element else (), np.dtype(sdtype or dtype), value)
        return out

    def apply(self, values: np.ndarray, state: dict[str, np.ndarray], slots: np.ndarray, grads: np.ndarray) -> None:
        """Update rows ``slots`` (unique) of ``values`` (rows, dim) with ``grads`` (len(slots), dim).

        ``grads`` is not modified. Allocates temporaries the size of the touched rows only.
        """
        s = self.spec
        w = gather_rows(values, slots)
        g = grads if s.weight_decay == 0.0 else grads + s.weight_decay * w
        name = s.name
        if name == "sgd":
            w -= s.lr * g
        elif name == "momentum":
            v = gather_rows(state["velocity"], slots)
            v *= s.momentum
            v += g
            scatter_rows(state["velocity"], slots, v)
            w -= s.lr * (g + s.momentum * v) if s.nesterov else s.lr * v
        elif name == "adagrad":
            h = gather_rows(state["accumulator"], slots)
            h += g * g
            scatter_rows(state["accumulator"], slots, h)
            w -= g / (np.sqrt(h) + s.eps) * s.lr  # the dense rule's rounding order
        elif name == "ftrl":
            z = gather_rows(state["z"], slots)
            n = gather_rows(state["n"], slots)
            ftrl_update(s, w, g, z, n)
            scatter_rows(state["z"], slots, z)
            scatter_rows(state["n"], slots, n)
        else:  # adam
            t = gather_rows(state["t"], slots) + 1
            state["t"][slots] = t
            m = gather_rows(state["m"], slots)
            v = gather_rows(state["v"], slots)
            m *= s.beta1
            m += (1 - s.beta1) * g
            v *= s.beta2
            v += (1 - s.beta2) * (g * g)
            scatter_rows(state["m"], slots, m)
            scatter_rows(state["v"], slots, v)
            tf = t.astype(np.float64)
            c2 = np.sqrt(1 - s.beta2**tf)
            lr_t = (s.lr * c2 / (1 - s.beta1**tf)).astype(w.dtype)[:, None]
            eps_hat = (s.eps * c2).astype(w.dtype)[:, None]
            w -= lr_t * (m / (np.sqrt(v) + eps_hat))
        scatter_rows(values, slots, w)
