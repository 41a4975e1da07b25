"""Host arrays for the parameters of one model: where gradients leave and new weights land.

The client speaks NumPy. For a contiguous CPU parameter nothing is copied on the worker:
:meth:`HostArrays.weights` hands out ``param.data.numpy()``, an array that *is* the
parameter's storage, so a pull with ``out=`` writes the new values straight into the
parameter; :meth:`HostArrays.grads` hands out ``param.grad.numpy()`` the same way.

Any other parameter is *staged*: it gets host tensors of its shape for its gradient and its
weights, reused every step; a gradient is copied into its stage before the push and the
pulled weights are copied back into the parameter after the pull. For a CUDA parameter the
stages are in pinned (page-locked) host memory, both copies are asynchronous on the
current stream, and one synchronisation per direction per step waits for all of them. A
non-contiguous CPU parameter takes the same path with ordinary memory (which is how the
staged path is tested on machines without a GPU).

Not thread-safe (one per optimizer, like the client). Nothing here does network I/O;
:meth:`HostArrays.grads` and :meth:`HostArrays.commit` block on device copies.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

__all__ = ["HostArrays"]


class HostArrays:
    """Host-side NumPy arrays for ``params`` (table name -> parameter).

    ``pin`` (None: whether any parameter is on CUDA) puts stages in pinned memory.
    The constructor allocates the stages (host memory only; no I/O).
    """

    def __init__(self, params: dict[str, torch.nn.Parameter], pin: bool | None = None) -> None:
        self.params = params
        self.staged = {name for name, p in params.items() if not _aliasable(p)}
        if pin is None:
            pin = any(params[n].device.type == "cuda" for n in self.staged)
        self._grad_stage = {n: _host_like(params[n], pin) for n in self.staged}
        self._weight_stage = {n: _host_like(params[n], pin) for n in self.staged}
        self._weights = {n: (self._weight_stage[n] if n in self.staged else params[n].data).numpy() for n in params}
        self._cuda = any(params[n].device.type == "cuda" for n in self.staged)

    def weights(self) -> dict[str, np.ndarray]:
        """Writable C-contiguous arrays to pull into (``out=``); the parameter itself where it can be.

        For staged parameters call :meth:`commit` after the pull. Fresh dict, same arrays each call.
        With CUDA parameters, first waits for the last :meth:`commit`'s copies out of the stages.
        """
        if self._cuda:
            torch.cuda.synchronize()
        for n, p in self.params.items():  # the parameter's storage may have been replaced (param.data = ...)
            if n not in self.staged and self._weights[n].__array_interface__["data"][0] != p.data.data_ptr():
                if _aliasable(p):
                    self._weights[n] = p.data.numpy()
                else:
                    raise RuntimeError(f"parameter {n!r} moved off the CPU or became non-contiguous after "
                                       f"the optimizer was built; build the optimizer after moving the model")
        return dict(self._weights)

    def commit(self, names: Iterable[str] | None = None) -> None:
        """Copy pulled weights of staged parameters (of ``names``; None: all) into the parameters.

        Asynchronous for CUDA parameters (ordered on the current stream before later kernels).
        """
        for n in self.staged if names is None else self.staged.intersection(names):
            with torch.no_grad():
                self.params[n].data.copy_(self._weight_stage[n], non_blocking=True)

    def grads(self, names: Iterable[str]) -> dict[str, np.ndarray]:
        """The gradient of each of ``names`` (parameters that have one) as a NumPy array.

        Aliases ``param.grad`` for contiguous CPU gradients; otherwise copies into the
        stage (all copies issued, then one synchronisation when any was on CUDA). Blocks
        until the arrays hold the gradients. A sparse gradient is made dense first.
        """
        out = {}
        sync = False
        for n in names:
            g = self.params[n].grad.detach()
            if g.is_sparse:
                g = g.to_dense()
            if n in self.staged or not (g.device.type == "cpu" and g.is_contiguous()):
                stage = self._grad_stage.get(n)
                if stage is None:  # an aliasable parameter with an odd gradient: a one-off copy
                    stage = self._grad_stage[n] = _host_like(self.params[n], g.device.type == "cuda")
                stage.copy_(g, non_blocking=True)
                sync |= g.device.type == "cuda"
                out[n] = stage.numpy()
            else:
                out[n] = g.numpy()
        if sync:
            torch.cuda.synchronize()
        return out


def _aliasable(p: torch.Tensor) -> bool:
    """Whether NumPy can view ``p``'s storage directly."""
    return p.device.type == "cpu" and p.data.is_contiguous() and not p.data.is_sparse


def _host_like(p: torch.Tensor, pin: bool) -> torch.Tensor:
    return torch.empty(tuple(p.shape), dtype=p.dtype, device="cpu", pin_memory=pin)
