"""PyTorch models on the cluster (the optional ``torch`` extra: ``pip install 'grpc-ps[torch]'``).

``ParameterServerOptimizer(model, client, optimizer=, lr=, ...)`` trains an ``nn.Module``
through a :class:`worker.Client`: one table per named parameter (a sparse table for the
weight of a ``sparse=True`` embedding), ``step()`` pushes the gradients and pulls the new
values into the parameters in place. See :mod:`worker.torch.optimizer`.

Parts: :mod:`worker.torch.tables` (which tables, their initial values),
:mod:`worker.torch.host` (torch <-> NumPy without copies on the CPU, pinned staging for
CUDA), :mod:`worker.torch.optimizer` (the optimizer), :mod:`worker.torch.training`
(``ps-worker --model torch:package.module:factory``).

Only this package imports torch; nothing else in the project needs it.
"""

try:
    import torch  # noqa: F401 - fail early, with the way out
except ImportError as exc:  # pragma: no cover - exercised where torch is missing
    raise ImportError("worker.torch needs PyTorch: pip install 'grpc-ps[torch]' (torch==2.13.0)") from exc

from worker.torch.optimizer import ParameterServerOptimizer

__all__ = ["ParameterServerOptimizer"]
