"""Which tables a torch module needs: one per named parameter, dense or sparse, and their init.

:func:`model_tables` walks ``model.named_parameters()`` (shared parameters once, under their
first name) and returns one :class:`DenseParam` per parameter, except the ``weight`` of an
``nn.Embedding``/``nn.EmbeddingBag`` built with ``sparse=True``, which becomes a
:class:`SparseParam`: a sparse table of ``num_embeddings`` rows of width ``embedding_dim``,
whose rows travel only when a batch touches them. Table names are the parameter names, with
``prefix`` in front.

Initial values are drawn by the servers (every worker starts from the same weights), from an
:class:`~ps.tables.spec.InitSpec` per parameter chosen by :func:`default_init`, which follows
torch's own defaults:

=========================================  ===========================================
parameter                                  init
=========================================  ===========================================
``init={name: (kind, scale)}`` given       that
weight of an ``Embedding``/``EmbeddingBag``  ``normal``, std 1 (torch's ``normal_``)
every element equal to ``c`` locally        ``constant`` ``c`` (``zeros`` for 0): norm
                                           gains and biases, zero-initialised biases (a
                                           one-element parameter: only for 0 and 1)
any other parameter of 2 or more dims       ``uniform`` on +-1/sqrt(fan_in), fan_in =
                                           ``prod(shape[1:])`` (Linear, ConvNd weights)
any other 1-dim parameter                  ``uniform`` on +-1/sqrt(fan_in) of its module's
                                           ``weight`` (Linear/ConvNd bias), else of its length
=========================================  ===========================================

The choice depends only on the module's structure (and constant local values), never on a
worker's random draws, so every worker asks for the same spec and ``create`` stays
idempotent. Pure: no I/O; raises :class:`~ps.errors.InvalidArgumentError` naming the
parameter for a dtype the tables cannot hold (float32 and float64 only) or an embedding
option the adapter cannot honour (``max_norm``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from ps.errors import InvalidArgumentError
from ps.tables.spec import InitSpec

__all__ = ["DenseParam", "SparseParam", "TABLE_DTYPES", "default_init", "model_tables"]

#: torch dtype -> the table dtype that holds it
TABLE_DTYPES = {torch.float32: "float32", torch.float64: "float64"}
_EMBEDDINGS = (nn.Embedding, nn.EmbeddingBag)


@dataclass(frozen=True)
class DenseParam:
    """A parameter served by a dense table ``table`` of the parameter's shape."""

    name: str                 # as in model.named_parameters()
    table: str                # prefix + name
    param: nn.Parameter
    dtype: str                # table dtype: float32 | float64
    init: InitSpec


@dataclass(frozen=True)
class SparseParam:
    """The weight of a sparse embedding, served by a sparse table of ``num_rows`` x ``dim``."""

    name: str
    table: str
    param: nn.Parameter
    module: nn.Module          # the nn.Embedding / nn.EmbeddingBag
    dtype: str
    num_rows: int
    dim: int
    padding_idx: int | None    # never pushed (torch gives it no gradient)
    init: InitSpec


def model_tables(model: nn.Module, *, prefix: str = "", init: Mapping[str, tuple[str, float]] | None = None,
                 seed: int = 0) -> tuple[list[DenseParam], list[SparseParam]]:
    """The dense and sparse tables ``model`` needs, in ``named_parameters()`` order.

    ``init`` overrides the initialiser of named parameters (names without the prefix);
    ``seed`` goes into every InitSpec. Does not block. Raises InvalidArgumentError (see the
    module docstring; also for an ``init`` entry naming a parameter the model lacks).
    """
    init = dict(init or {})
    unknown = set(init) - {n for n, _ in model.named_parameters()}
    if unknown:
        raise InvalidArgumentError(f"init= names parameters the model does not have: {', '.join(sorted(unknown))}")
    owners = _owners(model)
    dense: list[DenseParam] = []
    sparse: list[SparseParam] = []
    for name, param in model.named_parameters():
        dtype = TABLE_DTYPES.get(param.dtype)
        if dtype is None:
            raise InvalidArgumentError(
                f"parameter {name!r} has dtype {param.dtype}; tables hold float32 or float64 "
                f"(convert the model, e.g. model.float(), before training it on the cluster)")
        module, attr = owners[name]
        spec = _init_spec(init[name], seed, name) if name in init else default_init(param, module, attr, seed)
        if isinstance(module, _EMBEDDINGS) and attr == "weight" and module.sparse:
            if module.max_norm is not None:
                raise InvalidArgumentError(
                    f"parameter {name!r}: an embedding with max_norm renormalises rows locally inside forward, "
                    f"which the servers never see; build it without max_norm to train it on the cluster")
            if spec.kind == "glorot" or spec.kind == "constant" and spec.scale != 0:
                raise InvalidArgumentError(f"parameter {name!r}: a sparse table starts from zeros, normal or uniform "
                                           f"rows, not {spec.kind!r}")
            if spec.kind == "constant":
                spec = InitSpec("zeros", 0.0, seed)
            sparse.append(SparseParam(name, prefix + name, param, module, dtype, int(param.shape[0]),
                                      int(param.shape[1]), module.padding_idx, spec))
        else:
            dense.append(DenseParam(name, prefix + name, param, dtype, spec))
    return dense, sparse


def default_init(param: torch.Tensor, module: nn.Module, attr: str, seed: int = 0) -> InitSpec:
    """The initialiser the servers use for ``param`` (``module.<attr>``); see the module docstring."""
    if isinstance(module, _EMBEDDINGS) and attr == "weight":
        return InitSpec("normal", 1.0, seed)
    data = param.detach()
    if data.numel() and not data.is_meta:
        first = data.reshape(-1)[0]
        value = float(first)
        # one element equal to itself says nothing: only 0 and 1 count as constants there
        if bool(torch.all(data == first)) and (data.numel() > 1 or value in (0.0, 1.0)):
            return InitSpec("zeros", 0.0, seed) if value == 0.0 else InitSpec("constant", value, seed)
    if param.dim() >= 2:
        fan_in = math.prod(param.shape[1:])
    else:
        weight = getattr(module, "weight", None)
        fan_in = math.prod(weight.shape[1:]) if isinstance(weight, torch.Tensor) and weight.dim() >= 2 \
            else param.numel()
    return InitSpec("uniform", 1.0 / math.sqrt(max(1, fan_in)), seed)


def _init_spec(value: tuple[str, float], seed: int, name: str) -> InitSpec:
    try:
        kind, scale = value
        return InitSpec(str(kind), float(scale), seed)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"init[{name!r}] must be (kind, scale), got {value!r}") from None


def _owners(model: nn.Module) -> dict[str, tuple[nn.Module, str]]:
    """Parameter name -> (the module that holds it, its attribute name there)."""
    out = {}
    for mod_name, module in model.named_modules():
        for attr, _ in module.named_parameters(recurse=False):
            out.setdefault(f"{mod_name}.{attr}" if mod_name else attr, (module, attr))
    return out
