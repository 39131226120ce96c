"""Coupled channel groups, discovered with torch-pruning's dependency graph.

This is the only module that changes torch-pruning's dependency graph during
pruning, and with :mod:`attnprune.core.scale_flow` (which follows a group's
scale downstream, read-only) the only one that reads it: discovery
(:func:`discover_groups`), the torch-pruning group of a :class:`ChannelGroup`
(:func:`pruning_group`), physical removal (:func:`remove_channels`) and the
structural question a method asks (:func:`sole_norm_after`). Elsewhere,
:mod:`attnprune.methods.baselines` and :mod:`attnprune.methods.importance` use
torch-pruning's *importance* API on the groups this module hands out, and
:mod:`attnprune.deploy.serialize` replays a saved pruning history on a fresh
graph to rebuild a model. It turns each torch-pruning ``Group`` into a
:class:`ChannelGroup`: the channels that must be removed together, the modules
they touch (with each module's own indices mapped to the group's *root index
space*), and the places where a gate must sit so that a closed channel emits
exact zeros wherever it flows.

Gate placement follows ``docs/methods.md`` ("What all methods share"): a gate sits
on the output of every normalisation layer of the group, and on the output of every
conv/linear producer of the group whose output does not go straight into a norm of
the same group.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch_pruning as tp

from .._modes import eval_mode
from .._tree import as_inputs
from ..errors import UnsupportedModelError
from .frozen import all_grad, keep_grad_flags
from .ignored import resolve_ignored

__all__ = [
    "Span",
    "ChannelGroup",
    "GatePoint",
    "GraphInfo",
    "discover_groups",
    "pruning_group",
    "remove_channels",
    "sole_norm_after",
    "NORM_TYPES",
    "POOL_TYPES",
]

#: Norms that act on each channel separately: gating after them is exact.
NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)
#: Norms that mix channels: zeroing a channel is not removing it.
_MIXING_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)
_PRODUCERS = (nn.modules.conv._ConvNd, nn.Linear)


@dataclass(frozen=True, eq=False)
class Span:
    """One module's share of a group.

    Attributes:
        name: Qualified module name in the model.
        module: The module itself.
        role: ``"out"`` when the group removes the module's output channels (norms and
            depthwise convs included), ``"in"`` when it removes its input channels.
        local: Indices along the module's pruned dimension (LongTensor).
        root: For each entry of ``local``, the group channel it belongs to.
    """

    name: str
    module: nn.Module
    role: str
    local: torch.Tensor
    root: torch.Tensor


@dataclass(eq=False)
class ChannelGroup:
    """A set of channels that torch-pruning removes together.

    Attributes:
        index: Position in :attr:`Instrumented.groups`.
        name: Qualified name of the group's first producer in model order.
        n_channels: Number of channels (length of the group's score vector).
        ch_groups: Number of conv groups that must share one keep pattern; a valid
            mask is a pattern of length ``n_channels // ch_groups`` repeated.
        spans: Every module the group touches, with its index mapping.
        gate_names: Modules whose output carries this group's gate.
    """

    index: int
    name: str
    n_channels: int
    ch_groups: int
    spans: tuple[Span, ...]
    gate_names: tuple[str, ...]
    root_module: nn.Module = field(repr=False)
    root_fn: object = field(repr=False)

    @property
    def modules(self) -> tuple[str, ...]:
        """Qualified names of every module the group covers, in model order."""
        seen: dict[str, None] = {}
        for s in self.spans:
            seen.setdefault(s.name, None)
        return tuple(seen)

    @property
    def producers(self) -> tuple[Span, ...]:
        """Conv/linear spans whose output channels the group removes (the filters)."""
        return tuple(s for s in self.spans if s.role == "out" and isinstance(s.module, _PRODUCERS))


@dataclass(eq=False)
class GatePoint:
    """A module output multiplied by a gate vector assembled from one or more groups.

    ``parts`` lists ``(group index, local indices, root indices)``; channels of the
    module that no group covers keep a gate of 1.
    """

    name: str
    module: nn.Module
    n_channels: int
    channel_dim: int
    parts: list[tuple[int, torch.Tensor, torch.Tensor]]


@dataclass(eq=False)
class GraphInfo:
    """What :func:`discover_groups` found."""

    graph: tp.DependencyGraph
    groups: list[ChannelGroup]
    gate_points: list[GatePoint]
    output_layers: list[str]
    skipped: list[tuple[str, str]]


def _long(idxs) -> torch.Tensor:
    return torch.as_tensor(list(idxs), dtype=torch.long)


def _out_channels(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, nn.modules.conv._ConvNd):
        return module.out_channels
    if isinstance(module, NORM_TYPES):
        return module.num_features
    raise UnsupportedModelError(f"cannot gate a {type(module).__name__}")


def _find_output_layers(graph: tp.DependencyGraph, model_modules: set) -> list[nn.Module]:
    """Parametrised layers whose output reaches the model's output directly.

    Starts at the graph's sinks (nodes nothing consumes: the model's outputs) and
    walks back through parameter-free ops and norms, stopping at each conv/linear.
    """

    def has_params(mod) -> bool:
        return isinstance(mod, nn.Module) and mod in model_modules and any(
            True for _ in mod.parameters(recurse=False)
        )

    found: list[nn.Module] = []
    stack = [n for n in graph.module2node.values() if not n.outputs]
    seen = set()
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        mod = node.module
        if has_params(mod):
            if mod not in found:
                found.append(mod)
            if isinstance(mod, _PRODUCERS):
                continue  # a conv/linear ends the walk; a norm lets it go on
        stack.extend(node.inputs)
    return found


def _lcm_groups(spans: Iterable[Span]) -> int:
    ch = 1
    for s in spans:
        m = s.module
        if isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1:
            depthwise = m.groups == m.out_channels and m.groups == m.in_channels
            if not depthwise:
                ch = math.lcm(ch, m.groups)
    return ch


#: Parameter-free modules whose cost fvcore counts; their channels are tracked too.
POOL_TYPES = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)


def build_graph(model: nn.Module, args: tuple) -> tuple[tp.DependencyGraph, dict]:
    """Trace ``model`` once with torch-pruning; train/eval modes are restored.

    Returns:
        The dependency graph, and a map from torch-pruning's virtual nodes to the
        adaptive pooling modules that produced them (recorded by short-lived hooks
        during the trace, so their channels can be counted).
    """
    pool_of_gradfn = {}

    def record(module, inputs, output):
        if isinstance(output, torch.Tensor) and output.grad_fn is not None:
            pool_of_gradfn[output.grad_fn] = module

    handles = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, POOL_TYPES)]
    try:
        # torch-pruning's trace switches the model to eval mode; eval_mode restores the flags.
        # It follows autograd, so frozen parameters (requires_grad=False) would hide their
        # layers: every parameter requires grad during the trace, and the flags are restored.
        with eval_mode(model), all_grad(model), torch.enable_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = tp.DependencyGraph().build_dependency(
                model, example_inputs=args, forward_fn=lambda m, a: m(*a), verbose=False
            )
    except Exception as exc:  # torch-pruning raises many kinds on graphs it cannot handle
        raise UnsupportedModelError(
            f"torch-pruning {tp.__version__} could not build a dependency graph for "
            f"{type(model).__name__}: {type(exc).__name__}: {exc}. "
            "See README 'Supported architectures'."
        ) from exc
    finally:
        for h in handles:
            h.remove()
    pools = {
        node.module: pool_of_gradfn[node.grad_fn]
        for node in graph.module2node.values()
        if node.grad_fn in pool_of_gradfn
    }
    return graph, pools


def discover_groups(model: nn.Module, example_inputs, ignored_layers=None) -> GraphInfo:
    """Find the prunable channel groups of ``model`` and where their gates go.

    Args:
        model: Any CNN torch-pruning can trace.
        example_inputs: A tensor or a tuple of positional inputs.
        ignored_layers: Modules (or qualified names) whose output channels are kept.

    Returns:
        A :class:`GraphInfo`. Groups that cannot be gated exactly (a channel-mixing
        norm, an unwrapped parameter) are skipped with a warning and listed in
        ``skipped``.

    Raises:
        UnsupportedModelError: torch-pruning cannot trace the model, or no group
            remains.
    """
    args = as_inputs(example_inputs, tensors_only=False)
    ignored = resolve_ignored(model, ignored_layers)
    graph, pools = build_graph(model, args)
    name_of = {m: n for n, m in model.named_modules()}
    name_to_module = {n: m for m, n in name_of.items()}
    order = {m: i for i, m in enumerate(name_of)}
    output_layers = _find_output_layers(graph, set(name_of))

    try:
        tp_groups = list(
            graph.get_all_groups(
                ignored_layers=list(ignored) + list(output_layers),
                root_module_types=_PRODUCERS,
            )
        )
    except Exception as exc:
        raise UnsupportedModelError(
            f"torch-pruning {tp.__version__} failed while grouping the channels of "
            f"{type(model).__name__}: {type(exc).__name__}: {exc}"
        ) from exc

    groups: list[ChannelGroup] = []
    skipped: list[tuple[str, str]] = []
    for tg in tp_groups:
        root_module = tg[0].dep.target.module
        root_name = name_of.get(root_module, "?")
        reason = None
        spans = []
        for item in tg.items:
            mod = item.dep.target.module
            if isinstance(mod, nn.Parameter):
                reason = "it includes an unwrapped nn.Parameter"
                break
            if mod in pools:  # a pooling op: its input channels, for counting
                pool = pools[mod]
                spans.append(Span(name_of[pool], pool, "in", _long(item.idxs), _long(item.root_idxs)))
                continue
            if mod not in name_of:
                continue  # torch-pruning's other virtual ops (add, concat, reshape ...)
            if isinstance(mod, _MIXING_NORMS) and not (
                isinstance(mod, nn.GroupNorm) and mod.num_groups == mod.num_channels
            ):
                reason = f"{name_of[mod]} is a {type(mod).__name__}, which mixes channels"
                break
            role = "out" if graph.is_out_channel_pruning_fn(item.dep.handler) else "in"
            if role == "out" and not isinstance(mod, _PRODUCERS + NORM_TYPES + (nn.PReLU, nn.GroupNorm)):
                reason = f"{name_of[mod]} ({type(mod).__name__}) is not a layer attnprune can gate"
                break
            spans.append(Span(name_of[mod], mod, role, _long(item.idxs), _long(item.root_idxs)))
        if reason is not None:
            skipped.append((root_name, reason))
            continue
        n = len(tg[0].idxs)
        spans.sort(key=lambda s: (order[s.module], s.role))
        first_producer = next((s.name for s in spans if s.role == "out" and isinstance(s.module, _PRODUCERS)),
                              root_name)
        groups.append(
            ChannelGroup(
                index=-1,
                name=first_producer,
                n_channels=n,
                ch_groups=_lcm_groups(spans),
                spans=tuple(spans),
                gate_names=(),
                root_module=root_module,
                root_fn=tg[0].dep.handler,
            )
        )
    if skipped:
        warnings.warn(
            "attnprune leaves these channel groups unpruned because gating them would "
            "not equal removing them: "
            + "; ".join(f"{name}: {why}" for name, why in skipped),
            stacklevel=3,
        )
    if not groups:
        raise UnsupportedModelError(
            f"{type(model).__name__} has no prunable channel group"
            + (" (every group is ignored or unsupported)" if tp_groups or ignored else "")
            + ". attnprune prunes the output channels of Conv/Linear layers that do not "
            "feed the model's output directly."
        )
    groups.sort(key=lambda g: order[name_to_module[g.name]])
    for i, g in enumerate(groups):
        g.index = i
    gate_points = _place_gates(graph, groups, name_of)
    return GraphInfo(
        graph=graph,
        groups=groups,
        gate_points=gate_points,
        output_layers=[name_of[m] for m in output_layers],
        skipped=skipped,
    )


def _place_gates(graph, groups: Sequence[ChannelGroup], name_of) -> list[GatePoint]:
    points: dict[nn.Module, GatePoint] = {}
    for g in groups:
        norms_in_group = {s.module for s in g.spans
                          if s.role == "out" and isinstance(s.module, NORM_TYPES + (nn.GroupNorm,))}
        names = []
        for s in g.spans:
            if s.role != "out":
                continue
            m = s.module
            if isinstance(m, nn.PReLU):
                continue  # PReLU(0) == 0: the gate upstream already zeroes the channel
            if isinstance(m, _PRODUCERS):
                consumers = [o.module for o in graph.module2node[m].outputs]
                if consumers and all(c in norms_in_group for c in consumers):
                    continue  # its norm carries the gate
            if m not in points:
                points[m] = GatePoint(
                    name=s.name,
                    module=m,
                    n_channels=_out_channels(m),
                    channel_dim=-1 if isinstance(m, nn.Linear) else 1,
                    parts=[],
                )
            points[m].parts.append((g.index, s.local, s.root))
            names.append(s.name)
        g.gate_names = tuple(dict.fromkeys(names))
    return list(points.values())


def pruning_group(graph: tp.DependencyGraph, group: ChannelGroup, idxs=None):
    """torch-pruning's ``Group`` of ``group``'s channels ``idxs`` (default: all), in root index space."""
    idxs = list(range(group.n_channels)) if idxs is None else list(idxs)
    return graph.get_pruning_group(group.root_module, group.root_fn, idxs)


def remove_channels(graph: tp.DependencyGraph, groups: Sequence[ChannelGroup],
                    masks: Sequence[torch.Tensor]) -> list:
    """Remove every channel a keep-mask closes, through torch-pruning, in place.

    torch-pruning replaces each pruned parameter by a new one that requires
    grad; the ``requires_grad`` flag of every parameter is carried over, so a
    frozen layer stays frozen.

    Returns:
        torch-pruning's pruning history (lists), which rebuilds the pruned
        architecture from the dense one.
    """
    with keep_grad_flags(graph.model):
        for g, m in zip(groups, masks):
            idxs = sorted(set((~m).nonzero().flatten().tolist()))
            if idxs:
                pruning_group(graph, g, idxs).prune()
    return [list(h) for h in graph.pruning_history()]


def sole_norm_after(graph: tp.DependencyGraph, module: nn.Module) -> nn.Module | None:
    """The affine per-channel norm ``module`` feeds alone, if that is all it feeds; else None."""
    node = graph.module2node.get(module)
    if node is None:
        return None
    outs = [o.module for o in node.outputs]
    if len(outs) == 1 and isinstance(outs[0], NORM_TYPES) and outs[0].affine:
        norm_node = graph.module2node.get(outs[0])
        if norm_node is not None and [i.module for i in norm_node.inputs] == [module]:
            return outs[0]
    return None
