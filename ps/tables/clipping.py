"""Gradient-norm clipping on the server, block by block (``ServerConfig.clip_norm``).

Each block of a push is clipped on its own: its gradient is scaled by
``min(1, max_norm / ||g||_2)``. Clipping per block gives the same result whatever the
number of shards or how a push is split into messages (a server never sees a worker's
whole gradient, so it cannot clip by the global norm). Pure; thread-safe.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def clip_by_norm(grads: Sequence[np.ndarray], max_norm: float) -> list[np.ndarray]:
    """The gradients, each scaled down to L2 norm <= ``max_norm`` (others returned as is).

    Inputs are never modified (they may be read-only views of the received bytes); a
    clipped block is a new array of the same dtype. The norm is computed in float64.
    """
    out = []
    for g in grads:
        g64 = g.astype(np.float64, copy=False).reshape(-1)
        norm = math.sqrt(float(np.dot(g64, g64)))
        if norm > max_norm and math.isfinite(norm):
            out.append((g * (max_norm / norm)).astype(g.dtype, copy=False))
        else:
            out.append(g)
    return out
