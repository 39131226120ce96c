"""``taylor-iterative``: Taylor ranking applied in several steps while the CNN trains.

The iterative schedule of torch-pruning (``iterative_steps`` of its pruners;
Molchanov et al., "Importance Estimation for Neural Network Pruning", CVPR 2019,
prune a few channels, train, repeat) inside attnprune's life cycle: during the
``"iterative"`` phase (``prune_epochs`` epochs, binary gates, the CNN training) the
ratio ramps from 0 to the budget in ``prune_steps`` equal steps, evenly spread over
the first ``ramp_fraction`` of the phase's training steps. At each step the channels
are re-scored with first-order Taylor importance (:class:`TaylorMethod`'s scores,
BatchNorm terms included) on the current *gated* model, and the budget search
closes the lowest-scoring open channels until the step's ratio is met; closed
channels stay closed (their gates emit zeros, so their Taylor score is 0 and they
are ranked below every open channel). The rest of the phase, and fine-tuning,
train the network with the final channels. :meth:`select` returns the last step's
channels, which meet the ratio.

A one-shot baseline ranks a network that never trained with any channel removed;
this one lets the remaining channels adapt between steps, so a method that prunes
in cycles is not compared against a strawman only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.budget import BudgetResult
from .base import Phase, register_method
from .baselines import TaylorConfig, TaylorMethod
from .options import option

__all__ = ["TaylorIterativeConfig", "TaylorIterativeMethod"]

#: Score given to a closed channel (normalised open channels score >= 0).
CLOSED_SCORE = -1.0


@dataclass(frozen=True)
class TaylorIterativeConfig(TaylorConfig):
    """Options of iterative Taylor pruning.

    Attributes:
        prune_steps: Pruning steps; step k closes channels up to ``k / prune_steps``
            of the ratio.
        prune_epochs: Epochs of the gated ``"iterative"`` phase in which the steps
            happen (the CNN trains throughout).
        ramp_fraction: Fraction of the phase's training steps over which the pruning
            steps are spread (the first step comes at the phase's start).
    """

    prune_steps: int = option(4, low=1)
    prune_epochs: int = option(2, low=1)
    ramp_fraction: float = option(0.5, low=0, high=1, low_open=True)


@register_method("taylor-iterative")
class TaylorIterativeMethod(TaylorMethod):
    """Iterative Taylor pruning: ``prune_steps`` re-scorings on the gated model while it trains."""

    config_class = TaylorIterativeConfig
    paper = (
        'P. Molchanov, A. Mallya, S. Tyree, I. Frosio, J. Kautz, '
        '"Importance Estimation for Neural Network Pruning", CVPR 2019 (iterative schedule)'
    )
    normalize = None  # scores() are already mean-normalised over each group's open channels
    state_attributes = ("steps_done", "closed_per_step", "step_ratios", "last_selection")

    def setup(self) -> None:
        self.steps_done = 0
        self.closed_per_step: list[int] = []
        self.step_ratios: list[float] = []
        self.last_selection: BudgetResult | None = None

    # -- schedule ---------------------------------------------------------------
    def phases(self, trained: bool = False) -> list[Phase]:
        return super().phases(trained) + [self.cnn_phase("iterative", self.config.prune_epochs, gates="binary")]

    def schedule(self) -> list[int]:
        """Training step (within the iterative phase) at which each pruning step happens."""
        c = self.config
        per_epoch = self.context.steps_per_epoch or 100
        ramp = max(int(c.ramp_fraction * c.prune_epochs * per_epoch), 1)
        return [(k * ramp) // c.prune_steps for k in range(c.prune_steps)]

    def before_step(self, phase: Phase, step: int) -> None:
        if phase.name != "iterative":
            return
        at = self.schedule()
        while self.steps_done < len(at) and step >= at[self.steps_done]:
            self.prune_step()

    def target_at(self, k: int) -> float:
        """Ratio in force after pruning step ``k`` (1-based)."""
        return self.budget.ratio * k / self.config.prune_steps

    # -- scoring and selection ------------------------------------------------------
    def scores(self) -> list[torch.Tensor]:
        """Taylor scores of the current gated model, mean-normalised over each group's
        open channels; closed channels score :data:`CLOSED_SCORE` (below every open one)."""
        raw = super().scores()
        out = []
        for s, m in zip(raw, self.inst.masks()):
            s = s.detach().float().cpu().clone()
            s = s / (s[m].abs().mean() + 1e-12)
            s[~m] = CLOSED_SCORE
            out.append(s)
        return out

    def prune_step(self) -> None:
        """Re-score and close channels up to the next step's ratio; closed ones stay closed."""
        k = self.steps_done + 1
        ratio = self.target_at(k)
        b = self.budget
        before = self.inst.masks()
        sel = self.select_at(ratio)
        masks = [new & old for new, old in zip(sel.masks, before)]
        if any(not torch.equal(m, n) for m, n in zip(masks, sel.masks)):  # a step too small to close more
            params, macs = self.inst.cost.count(masks)
            achieved = self.inst.cost.removed(masks, b.target)  # any target, latency included
            sel = BudgetResult(masks=masks, ratio=achieved, params=params, macs=macs, threshold=sel.threshold)
        self.inst.set_masks(masks)
        self.last_selection = sel
        self.steps_done = k
        self.closed_per_step.append(int(sum(int((~m).sum()) for m in masks)))
        self.step_ratios.append(float(sel.ratio))

    def select(self) -> BudgetResult:
        """The channels of the last pruning step (the remaining steps run now if the
        phase ended early, e.g. with a loader shorter than announced)."""
        while self.steps_done < self.config.prune_steps:
            self.prune_step()
        sel = self.last_selection
        return BudgetResult(masks=[m.clone() for m in sel.masks], ratio=sel.ratio, params=sel.params,
                            macs=sel.macs, threshold=sel.threshold)

    def report(self) -> dict:
        return {"prune_steps": self.config.prune_steps, "closed_per_step": list(self.closed_per_step),
                "step_ratios": list(self.step_ratios), "schedule": self.schedule()}
