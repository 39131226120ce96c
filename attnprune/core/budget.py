"""Global budget search: which channels to keep so the model meets ``ratio``.

``ratio`` is the fraction of the model's parameters removed (``target="params"``)
or of its MACs per sample (``target="macs"``), counted over the whole model as
fvcore counts it, or of its predicted ONNX Runtime latency (``target="latency"``,
through the latency model attached to the cost model). Every channel of every group is ranked by its score; channels
are closed in ascending order, and the number closed is searched (bisection on
the exact analytic count of :class:`~attnprune.core.cost.CostModel`, or the
target's cost object) so the result meets the target within one percentage point
with free counts (``round_to`` None or 1), two with ``round_to=k``. Layer budgets are therefore an
output of the ranking, never an input.

Rules:
    * a group is never emptied (its best channel, or best ``round_to`` channels,
      stay), and keeps at least the floor of :mod:`attnprune.core.limits`
      (``min_keep``, ``max_group_ratio``) when one is set;
    * a grouped convolution's keep pattern is chosen once and repeated, ranked by
      its mean score over the conv groups;
    * with ``round_to=k`` each group keeps a multiple of ``k`` channels (or all of
      them): the rounding is part of the search, never applied afterwards; where
      the global order reaches the ratio only in coarse jumps, single groups then
      move by one step towards it (at most four moves, the least-scored first).

Normalisation: scores of different groups are made comparable by dividing each
group's scores by their mean (``normalize="mean"``), the scheme torch-pruning
uses for its global ranking; learned methods whose scores are trained on one
scale pass ``normalize=None``.

Shared steps that methods use instead of re-implementing them:
:func:`tolerance` (how close a ratio must come), :func:`round_step` and
:func:`round_kept` (the ``round_to`` rounding of one group's kept count),
:func:`ramp` (a budget growing linearly from 0), :func:`reachable_ratio` and
:func:`check_reachable` (the largest ratio a model allows, checked before
training).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._digits import fraction_texts
from ..errors import BudgetError
from .cost import COUNTED_TARGETS, TARGETS, CostModel, TargetCost, check_target
from .limits import GroupLimits, floor_units, group_limits

__all__ = ["BudgetResult", "select_channels", "normalize_scores", "TARGETS", "check_ratio", "check_target",
           "check_round_to", "tolerance", "round_step", "round_kept", "ramp", "reachable_ratio",
           "check_reachable"]

NORMALIZERS = (None, "mean", "max")
#: With ``round_to > 1``, a result further than this from the ratio is refined group by group (``_Search.refine``).
REFINE_WITHIN = 0.005


def check_ratio(ratio) -> float:
    """Validate a pruning ratio: a real number in (0, 1)."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)):
        raise TypeError(f"ratio must be a number in (0, 1), got {type(ratio).__name__}")
    ratio = float(ratio)
    if not (0.0 < ratio < 1.0):  # also rejects NaN
        raise ValueError(f"ratio must be in (0, 1) (the fraction removed), got {ratio}")
    return ratio


def check_round_to(round_to) -> int | None:
    """Validate ``round_to``: None or a positive int (1 means None: no rounding)."""
    if round_to is None:
        return None
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise ValueError(f"round_to must be None or a positive int, got {round_to!r}")
    return None if round_to == 1 else round_to


def tolerance(round_to: int | None) -> float:
    """How far an achieved ratio may lie from the requested one: 0.02 with ``round_to``, else 0.01."""
    return 0.02 if round_to else 0.01


def round_step(round_to: int | None, ch_groups: int = 1) -> int:
    """Granularity, in pattern units, of a group's kept count under ``round_to``.

    A group of ``ch_groups`` conv groups keeps a multiple of ``round_to`` channels
    when it keeps a multiple of ``lcm(round_to, ch_groups) / ch_groups`` units.
    """
    if not round_to:
        return 1
    return math.lcm(round_to, ch_groups) // ch_groups


def round_kept(kept: int, total: int, step: int) -> int:
    """``kept`` rounded to the nearest multiple of ``step`` (at least ``step``, at most ``total``).

    All ``total`` units kept is always valid and stays as is.
    """
    if step > 1 and kept < total:
        kept = min(max(step, int(round(kept / step)) * step), total)
    return kept


def ramp(ratio: float, step: int, ramp_steps: int) -> float:
    """The budget in force at ``step`` of a linear ramp from 0 to ``ratio`` over ``ramp_steps``."""
    if ramp_steps <= 0:
        return ratio
    return ratio * min(1.0, step / ramp_steps)


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
    def __init__(self, cost: CostModel, scores, target, round_to, min_keep, limits: GroupLimits, target_cost=None):
        self.cost = cost
        self.target = target
        # counted targets: the exact integer counts; a measured one (latency): its cost object
        self.measure = cost.target_cost(target) if target_cost is None and target not in COUNTED_TARGETS \
            else target_cost
        self.dense = cost.dense(target) if self.measure is None else self.measure.dense
        self.round_to = round_to
        self.units = []  # per group: pattern scores
        self.step = []  # per group: kept-units granularity
        for g, s in zip(cost.groups, scores):
            if s.shape != (g.n_channels,):
                raise ValueError(f"scores of group {g.index} ({g.name}) must have shape ({g.n_channels},)")
            if not bool(torch.isfinite(s).all()):
                raise ValueError(f"scores of group {g.index} ({g.name}) contain NaN or inf")
            self.units.append(s.view(g.ch_groups, -1).mean(0))
            self.step.append(round_step(round_to, g.ch_groups))
        # per group: unit indices, best first
        self.order = [torch.argsort(u, descending=True, stable=True) for u in self.units]
        self.min_units = []
        for g, u, st in zip(cost.groups, self.units, self.step):
            floor = max(min_keep, st, floor_units(limits, g.n_channels, g.ch_groups))
            self.min_units.append(min(math.ceil(floor / st) * st, len(u)))  # a multiple of the step
        # global closing order over the closable units, ascending score
        cand = []
        for gi, (u, order) in enumerate(zip(self.units, self.order)):
            for rank in range(len(u) - 1, self.min_units[gi] - 1, -1):
                j = int(order[rank])
                cand.append((float(u[j]), gi, j))
        cand.sort()
        self.cand = cand
        self.cand_group = torch.tensor([gi for _, gi, _ in cand], dtype=torch.long)

    def kept_for(self, k: int) -> list[int]:
        """Kept units per group (rounded) with the first ``k`` candidates closed."""
        closed_units = torch.bincount(self.cand_group[:k], minlength=len(self.units)).tolist()
        return [round_kept(len(u) - c, len(u), st) for u, c, st in zip(self.units, closed_units, self.step)]

    def masks_kept(self, kept: list[int]) -> list[torch.Tensor]:
        masks = []
        for gi, (g, u) in enumerate(zip(self.cost.groups, self.units)):
            keep_units = torch.zeros(len(u), dtype=torch.bool)
            keep_units[self.order[gi][:kept[gi]]] = True
            masks.append(keep_units.repeat(g.ch_groups))
        return masks

    def masks_for(self, k: int) -> list[torch.Tensor]:
        return self.masks_kept(self.kept_for(k))

    def ratio_for(self, k: int) -> tuple[float, list[torch.Tensor], tuple[int, int]]:
        return self.ratio_kept(self.kept_for(k))

    def ratio_kept(self, kept: list[int]) -> tuple[float, list[torch.Tensor], tuple[int, int]]:
        masks = self.masks_kept(kept)
        counts = self.cost.count(masks)
        if self.measure is not None:
            return float(self.measure.removed_fraction(masks)), masks, counts
        return 1.0 - self.cost.of(counts, self.target) / self.dense, masks, counts

    def refine(self, kept: list[int], ratio: float, moves: int = 4):
        """Move single groups by one rounding step while that brings the ratio closer to ``ratio``.

        With coarse rounding the global closing order reaches the ratio in jumps
        (closing one unit of a 64-channel group with ``round_to=16`` changes its
        kept count by 16 only every 16th candidate), so the nearest point on it can
        miss by several points. Each move opens or closes one step of one group:
        the move leaving the smallest error (to 0.1 point) wins, ties going to the
        move that closes the lowest-scored units or opens the highest-scored ones.
        """
        r, masks, counts = self.ratio_kept(kept)
        for _ in range(moves):
            if abs(r - ratio) <= REFINE_WITHIN:
                break
            best = None
            for gi, (u, st) in enumerate(zip(self.units, self.step)):
                for new in (kept[gi] - st, kept[gi] + st, len(u)):
                    if new == kept[gi] or new < self.min_units[gi] or new > len(u) or (new % st and new != len(u)):
                        continue
                    trial = [*kept[:gi], new, *kept[gi + 1:]]
                    r2, m2, c2 = self.ratio_kept(trial)
                    if abs(r2 - ratio) >= abs(r - ratio):
                        continue
                    lo, hi = sorted((new, kept[gi]))
                    changed = float(u[self.order[gi][lo:hi]].sum())
                    key = (round(abs(r2 - ratio), 3), changed if new < kept[gi] else -changed)
                    if best is None or key < best[0]:
                        best = (key, trial, r2, m2, c2)
            if best is None:
                break
            _, kept, r, masks, counts = best
        return r, masks, counts

    def top_ratio(self) -> float:
        """The ratio with every closable unit closed."""
        return self.ratio_for(len(self.cand))[0]


def _unreachable(ratio: float, target: str, round_to, min_keep: int, top_ratio: float,
                 limits: GroupLimits | None = None) -> BudgetError:
    asked, top = fraction_texts(ratio, top_ratio)  # 0.999999 must not read "1.000"
    keeping = (f"with {limits.describe()}" if limits else
               f"keeping at least {min_keep} channel(s)")
    return BudgetError(
        f"ratio {asked} of {target} cannot be reached: {keeping}"
        f"{f' (multiples of {round_to})' if round_to else ''} per group, "
        f"the largest reachable ratio is {top}"
    )


def reachable_ratio(cost: CostModel, target: str = "params", *, round_to: int | None = None,
                    min_keep: int = 1, limits: GroupLimits | None = None,
                    target_cost: TargetCost | None = None) -> float:
    """The largest fraction of ``target`` the budget search can remove.

    Every group keeps ``min_keep`` channels (its first ones; multiples of
    ``round_to``), and the floor of ``limits`` (default: those registered on
    ``cost``, see :mod:`attnprune.core.limits`). Computed analytically (latency:
    predicted by its cost object), without any scores of a method.
    ``target_cost`` as in :func:`select_channels`.
    """
    target = check_target(target)
    ones = [torch.ones(g.n_channels) for g in cost.groups]
    return _Search(cost, ones, target, check_round_to(round_to), min_keep,
                   group_limits(cost, limits), target_cost).top_ratio()


def check_reachable(cost: CostModel, ratio: float, target: str = "params", *, round_to: int | None = None,
                    min_keep: int = 1, limits: GroupLimits | None = None,
                    target_cost: TargetCost | None = None) -> None:
    """Fail before training when ``ratio`` exceeds :func:`reachable_ratio` (beyond :func:`tolerance`).

    Raises:
        BudgetError: naming the largest reachable ratio.
    """
    ratio = check_ratio(ratio)
    round_to = check_round_to(round_to)
    limits = group_limits(cost, limits)
    top = reachable_ratio(cost, target, round_to=round_to, min_keep=min_keep, limits=limits,
                          target_cost=target_cost)
    if top < ratio - tolerance(round_to):
        raise _unreachable(ratio, target, round_to, min_keep, top, limits)


def select_channels(
    cost: CostModel,
    scores: list[torch.Tensor],
    ratio: float,
    target: str = "params",
    *,
    round_to: int | None = None,
    normalize: str | None = "mean",
    min_keep: int = 1,
    limits: GroupLimits | None = None,
    target_cost: TargetCost | None = None,
) -> BudgetResult:
    """Choose keep-masks meeting ``ratio`` from one score per channel of every group.

    Args:
        cost: The model's cost model (``Instrumented.cost``).
        scores: One score vector per group; higher means more important.
        ratio: Fraction of ``target`` to remove, in (0, 1).
        target: One of :data:`TARGETS` (``"params"`` or ``"macs"``).
        round_to: Keep a multiple of this many channels per group.
        normalize: How scores are made comparable across groups.
        min_keep: Channels (pattern units) every group keeps at least.
        limits: Per-group floor and cap (default: those registered on ``cost``
            with :func:`attnprune.core.limits.set_group_limits`).
        target_cost: The cost object the ratio is measured with (``dense``,
            ``removed_fraction(masks)``; :class:`~attnprune.core.cost.TargetCost`).
            None: params and MACs are counted exactly by ``cost``, and
            ``"latency"`` uses the latency model attached to ``cost``
            (:meth:`~attnprune.core.cost.CostModel.set_target_cost`; an error
            when none is). The search only predicts; it never measures a network.

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
    limits = group_limits(cost, limits)
    search = _Search(cost, normalize_scores(scores, normalize), target, round_to, min_keep, limits, target_cost)
    n = len(search.cand)
    top_ratio = search.top_ratio()
    if top_ratio < ratio - tolerance(round_to):
        raise _unreachable(ratio, target, round_to, min_keep, top_ratio, limits)
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
    if round_to and round_to > 1 and abs(r - ratio) > REFINE_WITHIN:
        r, masks, counts = search.refine(search.kept_for(k), ratio)
    threshold = search.cand[k - 1][0] if k > 0 else float("-inf")
    return BudgetResult(masks=masks, ratio=r, params=counts[0], macs=counts[1], threshold=threshold)
