"""Model size and compute metrics: parameters, MACs and a per-layer table.

All counts come from `fvcore <https://github.com/facebookresearch/fvcore>`_ so
that numbers reported by ``attnprune`` agree with the figures most pruning
papers quote.

MACs, not FLOPs:
    fvcore calls its unit "flops" but counts **one fused multiply-add as one
    flop**, i.e. it reports multiply-accumulate operations (MACs). Functions in
    this module always analyse a **single sample** (the first element of the
    batch you pass), so every MAC figure here is *per sample* and independent
    of the batch size of ``example_inputs``.

What is counted:
    Convolutions, linear layers and matrix products are counted as MACs.
    fvcore also charges normalisation layers (an eval-mode ``BatchNorm`` with
    affine parameters costs two per element, ``LayerNorm``/``GroupNorm`` two
    per element), ``adaptive_avg_pool2d`` (one per input element) and
    upsampling. Element-wise operations such as ReLU, additions and
    multiplications are **not** counted, and operators fvcore does not know are
    skipped silently.

Works on any ``torch.nn.Module``: models pruned with torch-pruning are plain
modules whose layers have fewer channels, so their counts are simply smaller.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from .._modes import eval_mode
from .._tree import as_inputs

with warnings.catch_warnings():
    # fvcore's import chain decorates helpers with ``torch.jit.script``, which
    # recent PyTorch versions flag as deprecated on every import.
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
    from fvcore.nn import FlopCountAnalysis, parameter_count

__all__ = [
    "LayerStat",
    "count_params",
    "count_macs",
    "layer_table",
    "format_table",
    "summarize",
]

# Leaf module types reported by :func:`layer_table`, in the order they are tried.
_CONV_TYPES: tuple[type[nn.Module], ...] = (nn.modules.conv._ConvNd,)
_LINEAR_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Bilinear)
_NORM_TYPES: tuple[type[nn.Module], ...] = tuple(
    t
    for t in (
        nn.modules.batchnorm._NormBase,  # BatchNorm*d, SyncBatchNorm, InstanceNorm*d
        nn.GroupNorm,
        nn.LayerNorm,
        getattr(nn, "RMSNorm", None),
        nn.LocalResponseNorm,
    )
    if t is not None
)


@dataclass(frozen=True)
class LayerStat:
    """Statistics of one convolution, linear or normalisation leaf module.

    Attributes:
        name: Qualified module name as given by ``model.named_modules()``.
        type: Class name of the module, e.g. ``"Conv2d"``.
        params: Number of parameters the module owns (shared parameters are
            counted for every module that holds them).
        macs: Multiply-accumulates executed inside the module for one sample
            (0 if the module was not called by ``forward``).
        out_channels: Output width where it is defined: ``out_channels`` of a
            convolution, ``out_features`` of a linear layer, ``num_features``
            of a batch/instance norm, ``num_channels`` of a group norm and the
            size of a one-dimensional ``normalized_shape`` of a layer/RMS
            norm; ``None`` otherwise.
    """

    name: str
    type: str
    params: int
    macs: int
    out_channels: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """Returns the fields as a plain, JSON-serialisable ``dict``."""
        return asdict(self)


def _check_model(model: Any) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return model


def _first_sample(example_inputs: Any) -> tuple[Any, ...]:
    """Normalises ``example_inputs`` to a tuple holding the first batch element.

    Tensors are sliced along dimension 0 (``t[:1]``, keeping the batch axis);
    other positional arguments are passed through unchanged.
    """
    args = as_inputs(example_inputs, tensors_only=False)
    if not any(isinstance(a, torch.Tensor) for a in args):
        raise ValueError("example_inputs must contain at least one torch.Tensor")
    sliced = []
    for i, a in enumerate(args):
        if isinstance(a, torch.Tensor):
            if a.dim() == 0 or a.shape[0] == 0:
                raise ValueError(
                    f"example_inputs[{i}] must have a non-empty batch dimension 0, "
                    f"got shape {tuple(a.shape)}"
                )
            a = a[:1]
        sliced.append(a)
    return tuple(sliced)



def _analyse(model: nn.Module, example_inputs: Any) -> FlopCountAnalysis:
    """Runs fvcore on one sample in eval mode and returns the finished analysis."""
    _check_model(model)
    args = _first_sample(example_inputs)
    with eval_mode(model), torch.no_grad():
        analysis = (
            FlopCountAnalysis(model, args)
            .unsupported_ops_warnings(False)
            .uncalled_modules_warnings(False)
        )
        analysis.total()  # force the (lazy) trace while the model is in eval mode
    return analysis


def count_params(model: nn.Module) -> int:
    """Counts all parameters of a model, trainable or not.

    Equal to ``fvcore.nn.parameter_count(model)[""]``; a parameter shared by
    several modules is counted once.

    Args:
        model: Any ``torch.nn.Module``.

    Returns:
        The total number of parameter elements.

    Raises:
        TypeError: If ``model`` is not an ``nn.Module``.
    """
    _check_model(model)
    return int(parameter_count(model)[""])


def count_macs(model: nn.Module, example_inputs: Any) -> int:
    """Counts multiply-accumulates (MACs) for **one sample**.

    The model is traced by fvcore's ``FlopCountAnalysis`` in eval mode on the
    first element of the batch (``t[:1]`` for every tensor argument), so the
    result does not depend on the batch size of ``example_inputs``. fvcore's
    "flops" are MACs (one fused multiply-add = 1). The train/eval flag of
    every submodule is restored afterwards. Unsupported-operator and
    uncalled-module warnings are silenced; see the module docstring for which
    operators are counted.

    Args:
        model: Any ``torch.nn.Module``.
        example_inputs: A tensor, or a tuple/list of positional arguments for
            ``model.forward``; tensors must be batched along dimension 0.

    Returns:
        MACs per sample.

    Raises:
        TypeError: If ``model`` is not an ``nn.Module`` or ``example_inputs``
            is neither a tensor nor a tuple/list.
        ValueError: If ``example_inputs`` holds no tensor or a tensor with an
            empty batch dimension.
    """
    return int(_analyse(model, example_inputs).total())


def _out_channels(module: nn.Module) -> int | None:
    if isinstance(module, _CONV_TYPES):
        return int(module.out_channels)
    if isinstance(module, _LINEAR_TYPES):
        return int(module.out_features)
    if isinstance(module, nn.modules.batchnorm._NormBase):
        return int(module.num_features)
    if isinstance(module, nn.GroupNorm):
        return int(module.num_channels)
    shape = getattr(module, "normalized_shape", None)
    if shape is not None:
        shape = tuple(shape) if not isinstance(shape, int) else (shape,)
        if len(shape) == 1:
            return int(shape[0])
    return None


def layer_table(model: nn.Module, example_inputs: Any) -> list[LayerStat]:
    """Lists parameters, MACs and widths of every conv/linear/norm leaf module.

    Leaf modules (without children) that are convolutions (any
    ``nn.ConvNd``/``ConvTransposeNd``), ``nn.Linear``/``nn.Bilinear`` or
    normalisation layers (batch, instance, group, layer, RMS and local
    response norm) are reported in ``named_modules()`` order. MACs are per
    sample, measured as in :func:`count_macs`; operations executed by the
    parent's ``forward`` (functional calls) are not attributed to any row.

    Args:
        model: Any ``torch.nn.Module``.
        example_inputs: A tensor, or a tuple/list of positional arguments,
            batched along dimension 0.

    Returns:
        One :class:`LayerStat` per matching leaf module.

    Raises:
        TypeError: If ``model`` or ``example_inputs`` has the wrong type.
        ValueError: If ``example_inputs`` holds no usable tensor.
    """
    by_module = _analyse(model, example_inputs).by_module()
    kinds = _CONV_TYPES + _LINEAR_TYPES + _NORM_TYPES
    rows = []
    for name, module in model.named_modules():
        if next(module.children(), None) is not None or not isinstance(module, kinds):
            continue
        rows.append(
            LayerStat(
                name=name,
                type=type(module).__name__,
                params=sum(p.numel() for p in module.parameters(recurse=False)),
                macs=int(by_module.get(name, 0)),
                out_channels=_out_channels(module),
            )
        )
    return rows


def format_table(rows: Iterable[LayerStat]) -> str:
    """Renders :func:`layer_table` rows as a Markdown table.

    Args:
        rows: :class:`LayerStat` objects, e.g. the result of
            :func:`layer_table`.

    Returns:
        A Markdown table (header, alignment row and one line per layer,
        numbers with thousands separators, ``-`` for an undefined width),
        ending with a total line for params and MACs of the listed layers.

    Raises:
        TypeError: If an element of ``rows`` is not a :class:`LayerStat`.
    """
    rows = list(rows)
    for i, row in enumerate(rows):
        if not isinstance(row, LayerStat):
            raise TypeError(f"rows[{i}] must be a LayerStat, got {type(row).__name__}")
    lines = [
        "| Layer | Type | Params | MACs | Out channels |",
        "|:--|:--|--:|--:|--:|",
    ]
    for row in rows:
        width = "-" if row.out_channels is None else f"{row.out_channels:,}"
        name = (row.name or "(root)").replace("|", "\\|")
        lines.append(f"| {name} | {row.type} | {row.params:,} | {row.macs:,} | {width} |")
    total_params = sum(r.params for r in rows)
    total_macs = sum(r.macs for r in rows)
    lines.append(f"| **total (listed)** | | {total_params:,} | {total_macs:,} | |")
    return "\n".join(lines)


def summarize(model: nn.Module, example_inputs: Any) -> dict[str, int]:
    """Returns the headline size and compute figures of a model.

    Args:
        model: Any ``torch.nn.Module``.
        example_inputs: A tensor, or a tuple/list of positional arguments,
            batched along dimension 0.

    Returns:
        ``{"params": count_params(model), "macs": count_macs(model, example_inputs)}``
        where ``macs`` is per sample.

    Raises:
        TypeError: If ``model`` or ``example_inputs`` has the wrong type.
        ValueError: If ``example_inputs`` holds no usable tensor.
    """
    return {"params": count_params(model), "macs": count_macs(model, example_inputs)}
