"""Global budget search: which channels to keep so the model meets ``ratio``.

``ratio`` is the fraction of the model's parameters removed (``target="params"``)
or of its MACs per sample (``target="macs"``), counted over the whole model as
fvcore counts it. Every channel of every group is ranked by its score; channels
are closed in ascending order, and the number closed is searched (bisection on
the exact analytic count of :class:`~attnprune.core.cost.CostModel`) so the result
meets the target within one percentage point. Layer budgets are therefore an
output of the ranking, never an input.

Rules:
    * a group is never emptied (its best channel, or best ``round_to`` channels,
      stay);
    * a grouped convolution's keep pattern is chosen once and repeated, ranked by
      its mean score over the conv groups;
    * with ``round_to=k`` each group keeps a multiple of ``k`` channels (or all of
      them): the rounding is part of the search, never applied afterwards.

Normalisation: scores of different groups are made comparable by dividing each
group's scores by their mean (``normalize="mean"``), the scheme torch-pruning
uses for its global ranking; learned methods whose scores are trained on one
scale pass ``normalize=None``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .cost import CostModel
from ..errors import BudgetError

__all__ = ["BudgetResult", "select_channels", "normalize_scores", "TARGETS", "check_ratio", "check_target"]

TARGETS = ("params", "macs")
NORMALIZERS = (None, "mean", "max")


def check_ratio(ratio) -> float:
    """Validate a pruning ratio: a real number in (0, 1)."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)):
        raise TypeError(f"ratio must be a number in (0, 1), got {type(ratio).__name__}")
    ratio = float(ratio)
    if not (0.0 < ratio < 1.0):  # also rejects NaN
        raise ValueError(f"ratio must be in (0, 1) (the fraction removed), got {ratio}")
    return ratio


def check_target(target) -> str:
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    return target


def check_round_to(round_to) -> int | None:
    if round_to is None:
        return None
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise ValueError(f"round_to must be None or a positive int, got {round_to!r}")
    return None if round_to == 1 else round_to


def normalize_scores(scores: list[torch.Tensor], how: str | None = "mean") -> list[torch.Tensor]:
    """Make scores of different groups comparable (see module docstring)."""
    if how not in NORMALIZERS:
        raise ValueError(f"normalize must be one of {NORMALIZERS}, got {how!r}")
    out = []
    for s in scores:
        s = s.detach().float().cpu()
        if how == "mean":
            s = s / (s.abs().mean() + 1e-12)
        elif how == "max":
            s = s / (s.abs().max() + 1e-12)
        out.append(s)
    return out


@dataclass
class BudgetResult:
    """Outcome of :func:`select_channels`.

    Attributes:
        masks: One bool keep-mask per group.
        ratio: Achieved fraction removed of ``target``.
        params: Params of the selected model.
        macs: MACs per sample of the selected model.
        threshold: Score of the last channel closed (normalised scale).
    """

    masks: list[torch.Tensor]
    ratio: float
    params: int
    macs: int
    threshold: float


class _Search:
    def __init__(self, cost: CostModel, scores, target, round_to, min_keep):
        self.cost = cost
        self.which = TARGETS.index(target)
        self.dense = (cost.dense_params, cost.dense_macs)[self.which]
        self.round_to = round_to
        self.units = []  # per group: pattern scores
        self.step = []  # per group: kept-units granularity
        for g, s in zip(cost.groups, scores):
            if s.shape != (g.n_channels,):
                raise ValueError(f"scores of group {g.index} ({g.name}) must have shape ({g.n_channels},)")
            if not bool(torch.isfinite(s).all()):
                raise ValueError(f"scores of group {g.index} ({g.name}) contain NaN or inf")
            self.units.append(s.view(g.ch_groups, -1).mean(0))
            step = 1
            if round_to:
                step = math.lcm(round_to, g.ch_groups) // g.ch_groups
            self.step.append(step)
        # per group: unit indices, best first
        self.order = [torch.argsort(u, descending=True, stable=True) for u in self.units]
        self.min_units = [min(max(min_keep, st), len(u)) for u, st in zip(self.units, self.step)]
        # global closing order over the closable units, ascending score
        cand = []
        for gi, (u, order) in enumerate(zip(self.units, self.order)):
            for rank in range(len(u) - 1, self.min_units[gi] - 1, -1):
                j = int(order[rank])
                cand.append((float(u[j]), gi, j))
        cand.sort()
        self.cand = cand
        self.cand_group = torch.tensor([gi for _, gi, _ in cand], dtype=torch.long)

    def masks_for(self, k: int) -> list[torch.Tensor]:
        closed_units = torch.bincount(self.cand_group[:k], minlength=len(self.units)).tolist()
        masks = []
        for gi, (g, u) in enumerate(zip(self.cost.groups, self.units)):
            n_units = len(u)
            kept = n_units - closed_units[gi]
            st = self.step[gi]
            if st > 1 and kept < n_units:
                kept = max(st, int(round(kept / st)) * st)
                kept = min(kept, n_units)
            keep_units = torch.zeros(n_units, dtype=torch.bool)
            keep_units[self.order[gi][:kept]] = True
            masks.append(keep_units.repeat(g.ch_groups))
        return masks

    def ratio_for(self, k: int) -> tuple[float, list[torch.Tensor], tuple[int, int]]:
        masks = self.masks_for(k)
        counts = self.cost.count(masks)
        return 1.0 - counts[self.which] / self.dense, masks, counts


def select_channels(
    cost: CostModel,
    scores: list[torch.Tensor],
    ratio: float,
    target: str = "params",
    *,
    round_to: int | None = None,
    normalize: str | None = "mean",
    min_keep: int = 1,
) -> BudgetResult:
    """Choose keep-masks meeting ``ratio`` from one score per channel of every group.

    Args:
        cost: The model's cost model (``Instrumented.cost``).
        scores: One score vector per group; higher means more important.
        ratio: Fraction of ``target`` to remove, in (0, 1).
        target: ``"params"`` or ``"macs"``.
        round_to: Keep a multiple of this many channels per group.
        normalize: How scores are made comparable across groups.
        min_keep: Channels (pattern units) every group keeps at least.

    Returns:
        A :class:`BudgetResult`.

    Raises:
        BudgetError: ``ratio`` exceeds the largest reachable ratio (named in the
            message).
    """
    ratio = check_ratio(ratio)
    target = check_target(target)
    round_to = check_round_to(round_to)
    if len(scores) != len(cost.groups):
        raise ValueError(f"expected {len(cost.groups)} score vectors (one per group), got {len(scores)}")
    search = _Search(cost, normalize_scores(scores, normalize), target, round_to, min_keep)
    tol = 0.02 if round_to else 0.01
    n = len(search.cand)
    top_ratio, masks, counts = search.ratio_for(n)
    if top_ratio < ratio - tol:
        raise BudgetError(
            f"ratio {ratio:.3f} of {target} cannot be reached: keeping at least "
            f"{min_keep} channel(s){f' (multiples of {round_to})' if round_to else ''} per group, "
            f"the largest reachable ratio is {top_ratio:.3f}"
        )
    lo, hi = 0, n  # smallest k with ratio(k) >= target
    while lo < hi:
        mid = (lo + hi) // 2
        if search.ratio_for(mid)[0] >= ratio:
            hi = mid
        else:
            lo = mid + 1
    best = None
    for k in {max(lo - 1, 0), lo, min(lo + 1, n)}:
        r, m, c = search.ratio_for(k)
        if best is None or abs(r - ratio) < abs(best[0] - ratio):
            best = (r, m, c, k)
    r, masks, counts, k = best
    threshold = search.cand[k - 1][0] if k > 0 else float("-inf")
    return BudgetResult(masks=masks, ratio=r, params=counts[0], macs=counts[1], threshold=threshold)
