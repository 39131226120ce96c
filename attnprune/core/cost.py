"""Analytic parameter and MAC counts of the model a set of masks would leave.

The budget search evaluates many candidate mask sets; rebuilding the model for
each would be far too slow. Instead, every parametrised layer's count is written
as a function of its kept input and output channels, with the per-sample spatial
sizes recorded once from a forward pass. The formulas are fvcore's
(``fvcore.nn.jit_handles``): a conv costs ``prod(weight.shape) * prod(out spatial)``
multiply-accumulates, a linear ``in * out`` per token, an eval-mode BatchNorm two
per element, an instance/group norm five per element; bias additions, activations
and pooling are not counted by layer formulas. Parameters are counted exactly
(all of them, head and norms included; a tensor two layers share, once).

Targets: every count for a budget target goes through :meth:`CostModel.dense`,
:meth:`CostModel.of` and :meth:`CostModel.removed`, which raise for a target not
in :data:`TARGETS` (so a new target is added here once, and never silently
counted as another).

The cost-for-target interface: :meth:`CostModel.target_cost` gives one object per
target with ``dense``, ``removed_fraction(masks)`` and ``channel_costs()``, which the
budget search and the methods use. ``"params"`` and ``"macs"`` are counted here
(:class:`CountCost`); ``"latency"`` is measured, so its cost object (an
:class:`attnprune.deploy.latency_model.LatencyModel`, which has the same three
members) is attached with :meth:`CostModel.set_target_cost`; asking for a target whose
cost object is missing raises, never counts another target instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
import torch.nn as nn

from .._modes import observe
from .groups import NORM_TYPES, POOL_TYPES, ChannelGroup

__all__ = ["CostModel", "CountCost", "LayerCost", "TargetCost", "TARGETS", "COUNTED_TARGETS", "check_target"]

#: Targets counted analytically, in the order of the ``(params, macs)`` tuples the counts return.
COUNTED_TARGETS = ("params", "macs")
#: Budget targets: the counted ones, and ``"latency"`` (measured ONNX Runtime seconds per batch).
TARGETS = (*COUNTED_TARGETS, "latency")


@runtime_checkable
class TargetCost(Protocol):
    """What the budget search needs of a target: its dense value and the fraction masks remove."""

    dense: float

    def removed_fraction(self, masks: list[torch.Tensor]) -> float:
        """Fraction of the dense value that the keep-``masks`` (one per group) remove."""

    def channel_costs(self) -> list[torch.Tensor]:
        """What closing one channel of each group saves at the dense model (one tensor per group)."""


class CountCost:
    """The :class:`TargetCost` of a counted target (``"params"`` or ``"macs"``) of a :class:`CostModel`."""

    def __init__(self, cost: CostModel, target: str):
        if target not in COUNTED_TARGETS:
            raise ValueError(f"a counted target must be one of {COUNTED_TARGETS}, got {target!r}")
        self.cost, self.target = cost, target
        self.dense = float(cost.dense(target))

    def removed_fraction(self, masks: list[torch.Tensor]) -> float:
        """Fraction of the count that the keep-``masks`` remove."""
        return self.cost.removed(masks, self.target)

    def channel_costs(self) -> list[torch.Tensor]:
        """Per-channel count saved (see :meth:`CostModel.channel_costs`)."""
        return self.cost.channel_costs(self.target)


def check_target(target) -> str:
    """``target`` if it is one of :data:`TARGETS`; else ``ValueError`` naming the choices."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    return target

_CONV = nn.modules.conv._ConvNd
_COUNTED = (_CONV, nn.Linear, nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm,
            nn.GroupNorm, nn.LayerNorm, nn.PReLU)


@dataclass(eq=False)
class LayerCost:
    """Counting record of one parametrised layer."""

    name: str
    module: nn.Module
    c_out: int
    c_in: int
    out_spans: list[tuple[int, torch.Tensor]] = field(default_factory=list)
    in_spans: list[tuple[int, torch.Tensor]] = field(default_factory=list)
    spatial: list[int] = field(default_factory=list)  # per call, per sample
    shared: frozenset[str] = frozenset()  # own parameters an earlier layer holds too: counted there

    def _own(self, name: str, numel: int) -> int:
        """``numel`` unless parameter ``name`` is counted by an earlier layer (a tied tensor)."""
        return 0 if name in self.shared else numel

    def kept(self, closed: list[torch.Tensor]) -> tuple[int, int]:
        """Kept (out, in) channels given each group's closed-channel mask."""
        out = self.c_out - sum(int(closed[g][r].sum()) for g, r in self.out_spans)
        inn = self.c_in - sum(int(closed[g][r].sum()) for g, r in self.in_spans)
        return out, inn

    def count(self, k_out: int, k_in: int) -> tuple[int, int]:
        """(params, MACs per sample) with ``k_out``/``k_in`` channels kept."""
        m = self.module
        if isinstance(m, _CONV):
            ksize = 1
            for k in m.kernel_size:
                ksize *= k
            depthwise = m.groups == m.out_channels and m.groups == m.in_channels and m.groups > 1
            groups = k_out if depthwise else m.groups
            if depthwise:
                k_in = k_out
            if m.transposed:
                w = k_in * (k_out // groups) * ksize
            else:
                w = k_out * (k_in // groups) * ksize
            params = self._own("weight", w) + (self._own("bias", k_out) if m.bias is not None else 0)
            return params, w * sum(self.spatial)
        if isinstance(m, nn.Linear):
            w = k_out * k_in
            return (self._own("weight", w) + (self._own("bias", k_out) if m.bias is not None else 0),
                    w * sum(self.spatial))
        if isinstance(m, POOL_TYPES):
            return 0, k_in * sum(self.spatial)  # fvcore: one per input element
        own = sum(self._own(n, p.numel()) for n, p in m.named_parameters(recurse=False))
        if isinstance(m, nn.PReLU) and m.num_parameters == 1:
            return own, 0
        params = own * k_out // max(self.c_out, 1)
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            per_el = 2 if m.affine else 1
        elif isinstance(m, (nn.modules.instancenorm._InstanceNorm, nn.GroupNorm, nn.LayerNorm)):
            per_el = 5 if own else 4
        else:
            per_el = 0
        return params, per_el * k_out * sum(self.spatial)


def _channels(m: nn.Module) -> tuple[int, int]:
    if isinstance(m, _CONV):
        return m.out_channels, m.in_channels
    if isinstance(m, nn.Linear):
        return m.out_features, m.in_features
    if isinstance(m, NORM_TYPES):
        return m.num_features, m.num_features
    if isinstance(m, nn.GroupNorm):
        return m.num_channels, m.num_channels
    if isinstance(m, nn.PReLU):
        return m.num_parameters, m.num_parameters
    if isinstance(m, nn.LayerNorm):
        n = int(torch.tensor(m.normalized_shape).prod())
        return n, n
    return 0, 0


class CostModel:
    """Params and MACs of the model as a function of the groups' masks.

    Args:
        model: The model, unpruned.
        args: Positional example inputs; one forward pass records spatial sizes.
        groups: The channel groups.
    """

    def __init__(self, model: nn.Module, args: tuple, groups: list[ChannelGroup]):
        self.groups = groups
        self.layers: list[LayerCost] = []
        by_module: dict[nn.Module, LayerCost] = {}
        seen: set[int] = set()  # a tensor shared by two layers (tied weights) is counted once
        for name, m in model.named_modules():
            if isinstance(m, POOL_TYPES) or (
                isinstance(m, _COUNTED) and any(True for _ in m.parameters(recurse=False))
            ):
                c_out, c_in = _channels(m)
                shared = frozenset(n for n, p in m.named_parameters(recurse=False) if id(p) in seen)
                seen.update(id(p) for p in m.parameters(recurse=False))
                lc = LayerCost(name=name, module=m, c_out=c_out, c_in=c_in, shared=shared)
                self.layers.append(lc)
                by_module[m] = lc
        counted = {id(p) for lc in self.layers for p in lc.module.parameters(recurse=False)}
        self.fixed_params = sum(p.numel() for p in model.parameters() if id(p) not in counted)
        for g in groups:
            for s in g.spans:
                lc = by_module.get(s.module)
                if lc is None:
                    continue
                (lc.out_spans if s.role == "out" else lc.in_spans).append((g.index, s.root))
        self._record_spatial(model, args, by_module)
        full = self.count_closed([torch.zeros(g.n_channels, dtype=torch.bool) for g in groups])
        self.dense_params, self.dense_macs = full
        self._measured: dict[str, TargetCost] = {}

    @staticmethod
    def _record_spatial(model, args, by_module) -> None:
        def hook(module, inputs, output):
            lc = by_module[module]
            if isinstance(module, POOL_TYPES):
                ref = inputs[0]
                lc.c_in = lc.c_out = ref.shape[1] if ref.dim() > 2 else ref.shape[0]
                per_sample = ref.numel() // ref.shape[0] // lc.c_in
            elif isinstance(module, _CONV) and module.transposed:
                ref = inputs[0]
                per_sample = ref.numel() // ref.shape[0] // ref.shape[1]
            elif isinstance(module, (nn.Linear, nn.LayerNorm)):
                ref = output
                per_sample = ref.numel() // ref.shape[0] // ref.shape[-1] if ref.dim() > 1 else 1
            else:
                ref = output
                per_sample = ref.numel() // ref.shape[0] // ref.shape[1]
            lc.spatial.append(int(per_sample))

        observe(model, args, by_module, hook)

    def count_closed(self, closed: list[torch.Tensor]) -> tuple[int, int]:
        """(params, MACs per sample) given one bool "closed" vector per group."""
        params, macs = self.fixed_params, 0
        for lc in self.layers:
            k_out, k_in = lc.kept(closed)
            p, m = lc.count(k_out, k_in)
            params += p
            macs += m
        return params, macs

    def count(self, masks: list[torch.Tensor]) -> tuple[int, int]:
        """(params, MACs per sample) given one bool keep-mask per group."""
        return self.count_closed([~m.to("cpu", torch.bool) for m in masks])

    # -- one interface per target -------------------------------------------------
    def set_target_cost(self, target: str, cost: TargetCost) -> None:
        """Attach the cost object of a measured target (``"latency"``: a ``LatencyModel``).

        Raises:
            ValueError: ``target`` is counted here (params, MACs) or unknown.
            TypeError: ``cost`` lacks ``dense``, ``removed_fraction`` or ``channel_costs``.
        """
        if check_target(target) in COUNTED_TARGETS:
            raise ValueError(f"target {target!r} is counted by the cost model; only measured targets are attached")
        if not isinstance(cost, TargetCost):
            raise TypeError(f"the cost of target {target!r} needs dense, removed_fraction(masks) and "
                            f"channel_costs(), got {type(cost).__name__}")
        self._measured[target] = cost

    def target_cost(self, target: str) -> TargetCost:
        """The cost object of ``target`` (:class:`TargetCost`).

        Raises:
            ValueError: ``target`` is not one of :data:`TARGETS`, or it is measured
                (``"latency"``) and no cost object was attached.
        """
        if check_target(target) in COUNTED_TARGETS:
            return CountCost(self, target)
        found = self._measured.get(target)
        if found is None:
            raise ValueError(
                f"target {target!r} is measured, and this cost model has no {target} model attached: "
                "prune(target='latency') builds one; in your own loop call "
                "cost.set_target_cost('latency', attnprune.deploy.latency_model.build_latency_model(inst))"
            )
        return found

    @staticmethod
    def of(counts: tuple[int, int], target: str) -> int:
        """The entry of a ``(params, macs)`` pair that ``target`` counts.

        Raises:
            ValueError: ``target`` is not one of :data:`COUNTED_TARGETS` (latency is no count).
        """
        if check_target(target) not in COUNTED_TARGETS:
            raise ValueError(f"target {target!r} is not a count; use target_cost({target!r})")
        return counts[COUNTED_TARGETS.index(target)]

    def dense(self, target: str) -> float:
        """``target``'s value of the unpruned model (e.g. ``dense("params")``; seconds for latency)."""
        if check_target(target) not in COUNTED_TARGETS:
            return self.target_cost(target).dense
        return self.of((self.dense_params, self.dense_macs), target)

    def removed(self, masks: list[torch.Tensor], target: str) -> float:
        """Fraction of ``target`` that the keep-``masks`` (one per group) remove."""
        if check_target(target) not in COUNTED_TARGETS:
            return float(self.target_cost(target).removed_fraction(masks))
        return 1.0 - self.of(self.count(masks), target) / self.dense(target)

    def channel_costs(self, target: str = "params") -> list[torch.Tensor]:
        """Cost of each group's channels: what closing one channel saves at the dense model.

        Used to weight regularisers and to make scores of different groups comparable.
        A measured target's come from its cost object (latency: seconds saved).
        """
        if check_target(target) not in COUNTED_TARGETS:
            return self.target_cost(target).channel_costs()
        which = COUNTED_TARGETS.index(target)
        dense = self.dense(target)
        costs = []
        for g in self.groups:
            closed = [torch.zeros(h.n_channels, dtype=torch.bool) for h in self.groups]
            unit = g.n_channels // g.ch_groups
            closed[g.index][::unit] = True  # one channel of each conv group: a valid pattern
            saved = (dense - self.count_closed(closed)[which]) / g.ch_groups
            costs.append(torch.full((g.n_channels,), float(max(saved, 1.0))))
        return costs
