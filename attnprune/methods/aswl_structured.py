"""ASWL on channel groups (``"aswl-structured"``).

The mechanism of :mod:`attnprune.methods.aswl_base` (He, Shi, Dong) with one
attention per channel group (torch-pruning's coupled channels), applied through
the instrumented gates (analog mode, every channel of group ``g`` gated by
``a_g``). The group's ratio ``p_g = min(0.99, beta*(1 - a_g))`` closes its
channels of lowest filter L1 norm; ``beta`` is set by bisection so the exact count
(params or MACs) meets ``ratio`` within one point (if one ``beta`` cannot, the
global budget search on the rank scores below finishes the job). The channels are
then removed by the normal structured pipeline; :meth:`ASWLStructuredMethod.commit`
first takes each ``a_g`` out of the gates and puts it where the model computes, in
eval mode, exactly what the trained, gated one did (an error path only detaches:
nothing is placed).

Scores (``scores()``, for :class:`attnprune.LearnedImportance`): channel ``c`` of
group ``g``, ranked ``r`` (0 = largest filter L1 norm) among the group's ``n``
channels of which ``k`` are kept at the calibrated ``beta``, scores
``1 + (k - r - 0.5) / n``: kept channels score above 1 and closed ones below, so
one global threshold at 1 reproduces the selection (and thresholds near 1 move
each group's boundary by the rank order). ``normalize = None``.

Where ``a_g`` goes at commit (differs from the paper). The paper (section 3.3)
applies the attentions to the weights after training ("the attention values are
applied to the weights and discarded") and does not fine-tune. Here ``a_g`` sits
after the group's norm, and wherever ReLU, pooling and the next conv carry it
unchanged, the next *train-mode* BatchNorm cancels it: ``a_g`` then gets no task
gradient, the regulariser drives it to ``a_min``, and multiplying the norm's
gamma and beta by it (what this method did first) left them 20 to 100 times
smaller than the rest of the model. The next norm makes the layer invariant to
their scale, so fine-tuning's SGD steps are, relative to them, ``1/a**2`` too
large (measured on Fashion-MNIST, ResNet-20 after 3 dense epochs, ratio 0.5,
one seed: the same masks and 8.7% at removal either way, then 61.3% after one
fine-tune epoch with the fold and 74.8% with the placement below). So commit
follows the scale downstream, through ops with ``f(a*x) = a*f(x)`` (ReLU, leaky ReLU, pooling, means, views, slices,
concatenation, and adds whose every operand carries the group's scale: a
residual stream, whose producers all share ``a_g``), to every layer it reaches:

* a conv/linear whose output feeds only a BatchNorm with running statistics:
  the scale is dropped and that norm's statistics are rescaled,
  ``mean' = (mean - b)/a + b`` and ``var' = (var + eps)/a**2 - eps`` (``b`` the
  layer's bias, 0 without one). Eval outputs are the same exactly and no
  parameter changes size; in train mode the norm re-normalises anyway (it
  trained with an effective ``eps/a**2``, fine-tuning uses its own ``eps``);
* a BatchNorm reading the scaled channels directly (after a concatenation): the
  same, channel by channel;
* any other layer (the classifier head, a conv without a norm after it, a conv
  reading a concatenation of differently scaled groups): its input-channel
  weights are multiplied by ``a``, what the layer computed in training. For
  the head nothing normalises the result, so this is the weight the trained
  function needs, not a shrunk one. (A layer that a norm further down, past a
  concatenation, re-normalises keeps the same conditioning problem; ResNets
  have none.)

Where the scale meets anything else (SiLU, ReLU6, a sigmoid or a product as in
squeeze-excitation, the model's output) it is not cancelled: the function and
the task gradient depend on it, and it is folded into the group's gate points'
weights and bias as the paper does. ``report()["attention_placement"]`` says,
per group, which layers took the scale (``norm_statistics``, ``weights``) or that
its ``producers`` did and ``why``. The walk is the core's
:func:`attnprune.core.scale_flow.scale_flow`; this module applies what it finds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..core.budget import BudgetResult, check_reachable, round_kept, round_step, tolerance
from ..core.filters import filter_l1
from ..core.groups import ChannelGroup
from ..core.scale_flow import ScaleFlow, gate_spans, scale_flow
from .aswl_base import ASWLBase, ASWLConfig, layer_ratios
from .base import Phase, register_method
from .options import option

__all__ = ["ASWLStructuredConfig", "ASWLStructuredMethod"]


@dataclass(frozen=True)
class ASWLStructuredConfig(ASWLConfig):
    """Options of structured ASWL (ASWL's, plus fine-tuning after removal).

    Attributes:
        mask_training: Also close, in every step, the channels the current ``beta``
            would close (gate ``a_g * mask``), as unstructured ASWL masks weights;
            False gates every channel by ``a_g`` only.
    """

    finetune_epochs: int = 1
    mask_training: bool = option(False)

    def _check_finetune(self):
        """``fixed_epochs`` belongs to the unstructured method only."""
        if self.fixed_epochs:
            raise ValueError("fixed_epochs is for the unstructured aswl; aswl-structured fine-tunes after removal")


@register_method("aswl-structured")
class ASWLStructuredMethod(ASWLBase):
    """ASWL's mechanism on channel groups: group attention sets the group's ratio, L1 ranks within it."""

    config_class = ASWLStructuredConfig
    joint_gates = "analog"
    state_attributes = ASWLBase.state_attributes + ("keep",)

    def setup(self) -> None:
        inst = self.inst
        self.init_attention(len(inst.groups))
        costs = inst.cost.channel_costs(self.budget.target)
        self.sizes = torch.tensor([float(c.sum()) for c in costs], device=self.att.device)
        self.dense = inst.cost.dense(self.budget.target)
        self.keep: list[torch.Tensor] = [torch.ones(g.n_channels, device=self.att.device) for g in inst.groups]
        self.committed = False
        b = self.budget  # an unreachable ratio fails now, not at the end
        check_reachable(inst.cost, b.ratio, b.target, round_to=b.round_to)

    # -- ranking and masks --------------------------------------------------------
    def ranks(self) -> list[torch.Tensor]:
        """Within-group order of the channels' pattern units by filter L1 norm (best first)."""
        out = []
        for g in self.inst.groups:
            units = filter_l1(g).view(g.ch_groups, -1).mean(0)
            out.append(torch.argsort(units, descending=True, stable=True))
        return out

    def kept_units(self, beta: float, att: torch.Tensor | None = None) -> list[int]:
        """Pattern units kept per group at ``beta`` (rounded; ``round_to`` honoured; never 0)."""
        att = self.attention() if att is None else att
        p = layer_ratios(att, beta).tolist()
        out = []
        for g, pg in zip(self.inst.groups, p):
            n = g.n_channels // g.ch_groups
            kept = round_kept(n - int(math.floor(pg * n + 0.5)), n, round_step(self.budget.round_to, g.ch_groups))
            out.append(max(kept, 1))
        return out

    def masks_for(self, beta: float, att: torch.Tensor | None = None, ranks=None) -> list[torch.Tensor]:
        ranks = self.ranks() if ranks is None else ranks
        masks = []
        for g, order, k in zip(self.inst.groups, ranks, self.kept_units(beta, att)):
            unit = torch.zeros(len(order), dtype=torch.bool)
            unit[order[:k]] = True
            masks.append(unit.repeat(g.ch_groups))
        return masks

    def removed_fraction(self, beta: float, att: torch.Tensor) -> float:
        # during training: the cost fraction the group ratios would remove, to first order
        p = layer_ratios(att, beta)
        return float((p * self.sizes.cpu()).sum()) / self.dense

    def exact_fraction(self, masks) -> float:
        """The fraction of the target the masks remove (exact count)."""
        return self.inst.cost.removed(masks, self.budget.target)

    def apply_beta(self, beta: float) -> None:
        if self.config.mask_training:
            self.keep = [m.to(self.att.device, self.att.dtype) for m in self.masks_for(beta)]

    def _gate_values(self) -> list[torch.Tensor]:
        return [self.att[i] * k for i, k in enumerate(self.keep)]

    def start_phase(self, phase: Phase) -> None:
        if phase.gates == "analog":
            self.inst.set_scores(self._gate_values)
        super().start_phase(phase)

    # -- selection ----------------------------------------------------------------
    def calibrated(self) -> tuple[float, list[torch.Tensor]]:
        """``beta`` meeting the budget on the exact count, and its masks."""
        ranks = self.ranks()
        att = self.attention()
        b = self.budget
        beta = self.solve_beta(b.ratio, att, exact=lambda x: self.exact_fraction(self.masks_for(x, att, ranks)))
        best = None
        for cand in (beta, beta * (1 - 1e-6)):  # first beta reaching the ratio, and just below it
            masks = self.masks_for(cand, att, ranks)
            err = abs(self.exact_fraction(masks) - b.ratio)
            if best is None or err < best[0]:
                best = (err, cand, masks)
        return best[1], best[2]

    def scores(self) -> list[torch.Tensor]:
        """Rank scores: above 1 for the channels kept at the calibrated ``beta``, below 1 else."""
        beta, _ = self.calibrated()
        out = []
        for g, order, k in zip(self.inst.groups, self.ranks(), self.kept_units(beta)):
            n = len(order)
            rank = torch.empty(n)
            rank[order] = torch.arange(n, dtype=torch.float)
            out.append((1.0 + (k - rank - 0.5) / n).repeat(g.ch_groups))
        return out

    def select(self) -> BudgetResult:
        b = self.budget
        beta, masks = self.calibrated()
        self.final_beta = beta
        ratio = self.exact_fraction(masks)
        if abs(ratio - b.ratio) <= tolerance(b.round_to):
            params, macs = self.inst.cost.count(masks)
            self.fallback = False
            return BudgetResult(masks=masks, ratio=ratio, params=params, macs=macs, threshold=1.0)
        # one beta cannot hit it (a coarse group): the global search on the rank scores can
        self.fallback = True
        return self.select_at(b.ratio)

    def report(self) -> dict:
        att = self.attention()
        beta = getattr(self, "final_beta", None)
        if beta is None:
            beta, _ = self.calibrated()
        names = {m: n for n, m in self.inst.model.named_modules()}
        plans = self.placements()
        return {
            "structured": True,
            "beta": beta,
            "beta_in_training": self.beta,
            "attention": {g.name: float(a) for g, a in zip(self.inst.groups, att)},
            "group_ratios": {g.name: float(p) for g, p in zip(self.inst.groups, layer_ratios(att, beta))},
            "budget_search_fallback": getattr(self, "fallback", False),
            "attention_placement": {g.name: _describe(p, names) for g, p in zip(self.inst.groups, plans)},
            "unfolded_gates": [n for g, p in zip(self.inst.groups, plans) if p.gates for n in unfoldable(g)],
        }

    # -- the end --------------------------------------------------------------------
    def placements(self) -> list[ScaleFlow]:
        """Where each group's ``a_g`` goes at :meth:`commit` (a plan; nothing is changed)."""
        names = {m: n for n, m in self.inst.model.named_modules()}
        return [scale_flow(self.inst.graph, g, names) for g in self.inst.groups]

    @torch.no_grad()
    def place_attention(self) -> None:
        """Move each trained ``a_g`` out of the gates so that gates off compute what ``a_g`` did.

        Downstream where the scale reaches its consumers unchanged (running statistics
        of the next BatchNorm, or the consumer's input-channel weights), into the gate
        points' weights elsewhere; see the module docstring. Idempotent.
        """
        if self.committed:
            return
        att = self.att.detach()
        for g, plan in zip(self.inst.groups, self.placements()):
            a = float(att[g.index])
            for norm, channels, conv in plan.norms:
                rescale_statistics(norm, a, channels, conv)
            for layer, channels in plan.weights:
                scale_inputs(layer, a, channels)
            if plan.gates:  # the scale cannot leave the gate points
                fold_into_producers(g, a)
        self.committed = True

    def commit(self, selection: BudgetResult) -> None:
        """Place the trained ``a_g`` in the weights or statistics (:meth:`place_attention`)."""
        if self.inst is not None and self.inst.active:
            self.place_attention()

    def detach(self) -> None:
        """Take the method's analog gate values off (gates ``"off"``); weights are left as they are."""
        super().detach()
        if self.inst is not None and self.inst.active and self.inst.mode == "analog":
            self.inst.mode = "off"


# -- applying a_g where the scale flow says it can go -----------------------------------
def _describe(flow: ScaleFlow, names: dict) -> dict:
    """Plain description of one group's placement for ``report()``."""
    if flow.gates:
        return {"producers": list(flow.gates), "why": flow.why}
    return {"norm_statistics": [names[n] for n, _, _ in flow.norms], "weights": [names[m] for m, _ in flow.weights]}


def rescale_statistics(norm: nn.Module, a: float, channels: torch.Tensor | None, conv: nn.Module | None) -> None:
    """Running statistics that give, without the scale, the eval output they gave with it.

    ``norm`` read ``a*x`` (or ``conv(a*x) = a*W*x + b``) and normalised with
    ``(mean, var)``; on ``x`` (``W*x + b``) it gives the same output with
    ``mean' = (mean - b)/a + b`` and ``var' = (var + eps)/a**2 - eps``.
    """
    idx = slice(None) if channels is None else channels.to(norm.running_mean.device)
    bias = getattr(conv, "bias", None)
    b = bias.detach().to(norm.running_mean.dtype) if bias is not None else 0.0
    norm.running_mean[idx] = (norm.running_mean[idx] - b) / a + b
    norm.running_var[idx] = (norm.running_var[idx] + norm.eps) / a**2 - norm.eps


def scale_inputs(layer: nn.Module, a: float, channels: torch.Tensor | None) -> None:
    """Multiply ``layer``'s weights of input ``channels`` (all when None) by ``a``."""
    w = layer.weight
    if channels is None:
        w.mul_(a)
        return
    channels = channels.to(w.device)
    if isinstance(layer, nn.modules.conv._ConvNd) and layer.transposed:
        w[channels] *= a
    else:
        w[:, channels] *= a


def _takes_scale(m: nn.Module) -> bool:
    """Whether a gate point can take a scale of its output channels in its own parameters."""
    transposed = isinstance(m, nn.modules.conv._ConvNd) and m.transposed
    return getattr(m, "weight", None) is not None and not (transposed and m.groups > 1)


def unfoldable(group: ChannelGroup) -> list[str]:
    """The group's gate points that cannot take the scale (a norm without affine parameters ...)."""
    return [s.name for s in gate_spans(group) if not _takes_scale(s.module)]


def fold_into_producers(group: ChannelGroup, a: float) -> None:
    """Multiply the group's gate points' output channels (weight and bias) by ``a`` (see :func:`unfoldable`)."""
    for s in gate_spans(group):
        m = s.module
        if not _takes_scale(m):
            continue
        idx = s.local.to(m.weight.device)
        if isinstance(m, nn.modules.conv._ConvNd) and m.transposed:
            m.weight[:, idx] *= a
        else:
            m.weight[idx] *= a
        if getattr(m, "bias", None) is not None:
            m.bias[idx] *= a
