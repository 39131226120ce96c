"""SbF-Pruner: End-to-End Sensitivity-Based Filter Pruning (Babaiee et al.).

Paper: Z. Babaiee, L. Liebenwein, R. Hasani, D. Rus, R. Grosu, *End-to-End
Sensitivity-Based Filter Pruning*, preprint, 2022 (see ``docs/methods.md``). The earlier form of PAAM-vanilla:
the same attention over filter weights and leaky-exponential scores, but a *fixed*
threshold of 0.5 decides which filters stay, so the budget is steered through the
L1 weight ``lam`` only and the ratio reached can differ from the one asked. The
report gives ``ratio_reached`` and ``ratio_error`` (reached minus requested).

With ``lam=None`` the same controller as PAAM steers ``lam`` during the AN phases
towards the requested ratio at threshold 0.5; an explicit ``lam`` is used as is.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.budget import BudgetResult
from .base import register_method
from .options import option
from .paam import PAAMConfig, PAAMMethod

__all__ = ["SbFConfig", "SbFMethod"]


@dataclass(frozen=True)
class SbFConfig(PAAMConfig):
    """PAAM's options, with ``variant`` fixed to ``"vanilla"`` and a fixed threshold.

    Attributes:
        variant: Always ``"vanilla"``: SbF-Pruner's attention over ``vec(F)``.
        threshold: Channels whose score is at least this stay (the paper's 0.5).
        mask_update: ``"phase"`` or ``"step"`` (PAAM's ``"ramp"`` ramps a budget, which
            SbF's fixed threshold does not have).
    """

    variant: str = option("vanilla", choices=("vanilla",))
    threshold: float = option(0.5, low=0, high=1, low_open=True, high_open=True)
    mask_update: str = option("phase", choices=("phase", "step"))  # a budget ramp has no meaning at a fixed threshold


@register_method("sbf")
class SbFMethod(PAAMMethod):
    """SbF-Pruner: vanilla PAAM attention with a fixed 0.5 threshold."""

    config_class = SbFConfig
    paper = (
        'Z. Babaiee, L. Liebenwein, R. Hasani, D. Rus, R. Grosu, '
        '"End-to-End Sensitivity-Based Filter Pruning", preprint, 2022'
    )

    def setup(self) -> None:
        super().setup()
        self.level = self.config.threshold

    def select(self) -> BudgetResult:
        masks = []
        for s in self.scores():
            m = s >= self.level
            if not bool(m.any()):  # a group is never emptied: its best channel stays
                m = s == s.max()
            masks.append(m)
        params, macs = self.inst.cost.count(masks)
        ratio = self.open_ratio(self.scores())
        return BudgetResult(masks=masks, ratio=ratio, params=params, macs=macs, threshold=self.level)

    def report(self) -> dict:
        out = super().report()
        reached = self.open_ratio(self.scores())
        out.update(threshold=self.level, ratio_reached=reached, ratio_error=reached - self.budget.ratio)
        return out
