"""ASWL on channel groups (``"aswl-structured"``).

The mechanism of :mod:`attnprune.methods.aswl_base` (He, Shi, Dong) with one
attention per channel group (torch-pruning's coupled channels), applied through
the instrumented gates (analog mode, every channel of group ``g`` gated by
``a_g``). The group's ratio ``p_g = min(0.99, beta*(1 - a_g))`` closes its
channels of lowest filter L1 norm; ``beta`` is set by bisection so the exact count
(params or MACs) meets ``ratio`` within one point (if one ``beta`` cannot, the
global budget search on the rank scores below finishes the job). The channels are
then removed by the normal structured pipeline; :meth:`ASWLStructuredMethod.commit`
first folds ``a_g`` into the gate points' weights, so the pruned model computes
what the trained one did (an error path only detaches: nothing is folded).

Scores (``scores()``, for :class:`attnprune.LearnedImportance`): channel ``c`` of
group ``g``, ranked ``r`` (0 = largest filter L1 norm) among the group's ``n``
channels of which ``k`` are kept at the calibrated ``beta``, scores
``1 + (k - r - 0.5) / n``: kept channels score above 1 and closed ones below, so
one global threshold at 1 reproduces the selection (and thresholds near 1 move
each group's boundary by the rank order). ``normalize = None``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..core.budget import BudgetResult, check_reachable, round_kept, round_step, select_channels, tolerance
from ..core.filters import filter_l1
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
        self.folded = False
        self.unfolded: list[str] = []
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
        return select_channels(self.inst.cost, self.scores(), b.ratio, b.target, round_to=b.round_to, normalize=None)

    def report(self) -> dict:
        att = self.attention()
        beta = getattr(self, "final_beta", None)
        if beta is None:
            beta, _ = self.calibrated()
        return {
            "structured": True,
            "beta": beta,
            "beta_in_training": self.beta,
            "attention": {g.name: float(a) for g, a in zip(self.inst.groups, att)},
            "group_ratios": {g.name: float(p) for g, p in zip(self.inst.groups, layer_ratios(att, beta))},
            "budget_search_fallback": getattr(self, "fallback", False),
            "unfolded_gates": list(self.unfolded),
        }

    # -- the end --------------------------------------------------------------------
    @torch.no_grad()
    def fold_attention(self) -> None:
        """Multiply each gate point's channels by its group's ``a_g`` (weights and bias).

        Afterwards the model with gates off (or binary) computes what it computed with
        the analog gates ``a_g``; a norm without affine parameters cannot take the
        scale and is listed in ``report()["unfolded_gates"]``.
        """
        if self.folded:
            return
        att = self.att.detach()
        for g in self.inst.groups:
            a = att[g.index]
            for s in g.spans:
                if s.role != "out" or s.name not in g.gate_names:
                    continue
                m = s.module
                idx = s.local.to(att.device)
                w = getattr(m, "weight", None)
                if w is None or (isinstance(m, nn.modules.conv._ConvNd) and m.transposed and m.groups > 1):
                    self.unfolded.append(s.name)
                    continue
                if isinstance(m, nn.modules.conv._ConvNd) and m.transposed:
                    w[:, idx] *= a
                else:
                    w[idx] *= a
                if getattr(m, "bias", None) is not None:
                    m.bias[idx] *= a
        self.folded = True

    def commit(self, selection: BudgetResult) -> None:
        """Fold the trained ``a_g`` into the gate points' weights (:meth:`fold_attention`)."""
        if self.inst is not None and self.inst.active:
            self.fold_attention()

    def detach(self) -> None:
        """Take the method's analog gate values off (gates ``"off"``); weights are left as they are."""
        super().detach()
        if self.inst is not None and self.inst.active and self.inst.mode == "analog":
            self.inst.mode = "off"
