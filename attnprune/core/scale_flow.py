"""Where a per-channel scale of a group flows, and which layers could absorb it.

A method that multiplies every channel of a group by one positive factor ``a`` at
the group's gate points (as ``aswl-structured`` does with its attention) may want
to take ``a`` out of the gates again without changing what the model computes.
:func:`scale_flow` answers where that is possible: it follows the scale downstream
through torch-pruning's dependency graph (read-only) and reports the layers it
reaches and how each could absorb it. Nothing is changed.

The scale passes unchanged through ops ``f`` with ``f(a*x) = a*f(x)`` channel by
channel: ReLU, leaky ReLU, PReLU, pooling, means and sums, views, slices, splits,
permutes, upsampling, concatenation, and adds (or subtractions) whose every operand
carries the same scale (a residual stream whose producers all belong to the
group). It ends at the first conv, linear, or BatchNorm with running statistics it
meets on each path. Of these:

* a conv/linear whose whole input is scaled and whose output feeds only an affine
  BatchNorm with running statistics can drop ``a`` if that norm's statistics are
  rescaled (:attr:`ScaleFlow.norms`, with the conv);
* a BatchNorm reading the scaled channels directly (after a concatenation) can
  rescale those channels' statistics (:attr:`ScaleFlow.norms`, with the channels);
* any other conv/linear can multiply its input-channel weights of the scaled
  channels by ``a`` (:attr:`ScaleFlow.weights`).

Anything else on the way (another activation such as SiLU, ReLU6 or a sigmoid, a
product, an add with something unscaled, the model's output, a layer that mixes the
channels with others in a way the group's index spans do not map) stops the flow:
then the scale can only stay at the group's gate points (:attr:`ScaleFlow.gates`,
and :attr:`ScaleFlow.why` says what stopped it).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch_pruning as tp
from torch_pruning.ops import OPTYPE

from .groups import ChannelGroup, Span, sole_norm_after

__all__ = ["ScaleFlow", "scale_flow", "gate_spans"]

#: Ops ``f`` with ``f(a * x) = a * f(x)`` for every ``a > 0``, channel by channel (grad_fn names).
_SCALE_FREE = re.compile(
    r"(Relu|LeakyRelu|(Adaptive)?(Max|Avg)Pool\dD(WithIndices)?|Mean|Sum|Amax|Clone|Permute|Transpose|Squeeze"
    r"|Unsqueeze|Upsample(Nearest|Bilinear|Bicubic|Linear|Trilinear)\dD|Alias)Backward\d*"
)
#: torch-pruning's index-only ops (views, slices, splits): they move channels, never rescale them.
_INDEX_OPS = (OPTYPE.RESHAPE, OPTYPE.SLICE, OPTYPE.SPLIT, OPTYPE.UNBIND, OPTYPE.EXPAND)
_LAYERS = (nn.modules.conv._ConvNd, nn.Linear)
_BN = nn.modules.batchnorm._BatchNorm


@dataclass(frozen=True)
class ScaleFlow:
    """Where one group's per-channel scale flows (the answer of :func:`scale_flow`).

    Either the scale reaches only layers that can absorb it (``norms`` and
    ``weights``, ``gates`` empty), or something stops it and it must stay at the
    gate points (``gates`` and ``why``, ``norms`` and ``weights`` empty).

    Attributes:
        norms: ``(norm, channels, conv)`` triples: BatchNorms whose running statistics
            can absorb the scale. ``channels`` are the norm's scaled channels (LongTensor)
            or None for all of them; ``conv`` is the layer between the scale and the norm
            (None when the norm reads the scaled channels directly).
        weights: ``(layer, channels)`` pairs: convs/linears whose input-channel weights
            can absorb the scale, ``channels`` the scaled input channels (LongTensor) or
            None for all of them.
        gates: The group's gate point names when the flow is stopped, else empty.
        why: What stops the flow (an op or a layer), when ``gates``; else ``""``.
    """

    norms: tuple[tuple[nn.Module, torch.Tensor | None, nn.Module | None], ...] = ()
    weights: tuple[tuple[nn.Module, torch.Tensor | None], ...] = ()
    gates: tuple[str, ...] = ()
    why: str = ""


def gate_spans(group: ChannelGroup) -> list[Span]:
    """The group's output spans at its gate points: where a scale of the group sits.

    Args:
        group: A channel group.

    Returns:
        The ``"out"`` spans of the modules named in ``group.gate_names``, in span order.
    """
    return [s for s in group.spans if s.role == "out" and s.name in group.gate_names]


def _op_name(node) -> str:
    fn = getattr(node.grad_fn, "name", None)
    return fn() if callable(fn) else type(node.module).__name__


def _is_add(node) -> bool:
    """A tensor + tensor (or -) op whose every operand is a graph node (no constant, no parameter)."""
    return (node.type == OPTYPE.ELEMENTWISE and re.fullmatch(r"(Add|Sub)Backward0", _op_name(node)) is not None
            and len(node.inputs) == len(node.grad_fn.next_functions) >= 2)


def _passes(node) -> bool:
    """``node`` (not a model layer) carries a per-channel scale through unchanged."""
    if node.type in _INDEX_OPS:
        return True
    return node.type == OPTYPE.ELEMENTWISE and _SCALE_FREE.fullmatch(_op_name(node)) is not None


def _scaled(node, gates: dict, names: Mapping, memo: dict) -> bool:
    """Whether ``node``'s whole output is ``a`` times what it is without the group's gates (backwards)."""
    if node not in memo:
        memo[node] = False  # cycles cannot occur; this guards re-entry
        mod = node.module
        if mod in gates:
            memo[node] = gates[mod]
        elif mod in names:
            memo[node] = isinstance(mod, nn.PReLU) and _scaled(node.inputs[0], gates, names, memo)
        elif _is_add(node):
            memo[node] = all(_scaled(i, gates, names, memo) for i in node.inputs)
        elif _passes(node) and node.type != OPTYPE.EXPAND and len(node.inputs) == 1:
            memo[node] = _scaled(node.inputs[0], gates, names, memo)
    return memo[node]


def _reached(graph, gates: dict, names: Mapping) -> tuple[dict, str]:
    """The layers the gates' common scale reaches, each with whether it scales their whole input.

    ``gates`` maps each gate point to whether the group covers all its output channels.
    Returns ``({layer: whole}, "")``, or ``({}, why)`` when the scale meets an op it
    does not pass unchanged (an activation other than (leaky) ReLU, a product, an
    add with something unscaled, the model's output).
    """
    found: dict[nn.Module, bool] = {}
    memo: dict = {}
    stack = [(graph.module2node[m], whole) for m, whole in gates.items()]
    seen = set()
    while stack:
        node, whole = stack.pop()
        if (node, whole) in seen:
            continue
        seen.add((node, whole))
        if not node.outputs:
            return {}, "it reaches the model's output"
        for out in node.outputs:
            mod = out.module
            if mod in names:
                if isinstance(mod, _LAYERS) or (isinstance(mod, _BN) and mod.running_var is not None):
                    found[mod] = found.get(mod, True) and whole and not isinstance(mod, _BN)
                elif isinstance(mod, nn.PReLU):
                    stack.append((out, whole))
                else:
                    return {}, f"{names[mod]} ({type(mod).__name__}) follows"
            elif out.type == OPTYPE.CONCAT:
                stack.append((out, False))
            elif _passes(out) or (_is_add(out) and all(_scaled(i, gates, names, memo) for i in out.inputs)):
                stack.append((out, whole))
            else:
                return {}, f"a {_op_name(out)} follows"
    return found, ""


def _width(m: nn.Module) -> int:
    """Output channels of a gate point."""
    for attr in ("out_channels", "out_features", "num_features", "num_parameters"):
        if isinstance(getattr(m, attr, None), int):
            return getattr(m, attr)
    return -1


def _span(group: ChannelGroup, module: nn.Module, role: str) -> torch.Tensor | None:
    spans = [s.local for s in group.spans if s.module is module and s.role == role]
    return spans[0] if len(spans) == 1 else None


def scale_flow(graph: tp.DependencyGraph, group: ChannelGroup,
               names: Mapping[nn.Module, str] | None = None) -> ScaleFlow:
    """Where a per-channel scale at ``group``'s gate points flows, and which layers could absorb it.

    Reads torch-pruning's dependency graph; changes nothing (see the module docstring
    for the rules).

    Args:
        graph: The dependency graph the group was discovered on (``Instrumented.graph``).
        group: The group whose gate points carry the scale.
        names: Qualified name of every module of the model (``{module: name}``); built
            from ``graph.model`` when None. Pass it when asking about many groups.

    Returns:
        The layers that can absorb the scale downstream, or, when anything on the way
        stops it, the group's gate point names and what stopped it.
    """
    if names is None:
        names = {m: n for n, m in graph.model.named_modules()}
    gates = {s.module: len(s.local) == _width(s.module) for s in gate_spans(group)}
    found, why = _reached(graph, gates, names)
    norms, weights = [], []
    for layer, whole in found.items():
        if isinstance(layer, _BN):  # a norm reading the scaled channels directly (e.g. after a concat)
            channels = _span(group, layer, "out")
            if channels is None:
                why = f"{names[layer]} reads the channels in a way attnprune cannot map"
                break
            norms.append((layer, channels, None))
            continue
        norm = sole_norm_after(graph, layer) if whole else None
        if isinstance(norm, _BN) and norm.running_var is not None:
            norms.append((norm, None, layer))
            continue
        channels = None if whole else _span(group, layer, "in")
        if not whole and (channels is None or getattr(layer, "groups", 1) > 1):
            why = f"{names[layer]} mixes the channels with others"
            break
        weights.append((layer, channels))
    if why:
        return ScaleFlow(gates=tuple(group.gate_names), why=why)
    return ScaleFlow(norms=tuple(norms), weights=tuple(weights))
