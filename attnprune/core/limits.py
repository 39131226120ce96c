"""Per-group limits of the budget search: a floor (``min_keep``) and a cap (``max_group_ratio``).

The global ranking of :mod:`attnprune.core.budget` may close almost every channel
of a layer whose scores rank low (a layer collapsing to one channel). Two limits
bound each group:

* ``min_keep``: channels every group keeps at least (a group with fewer keeps
  all of them);
* ``max_group_ratio``: the largest fraction of a group's channels that may be
  removed, in (0, 1) (torch-pruning's ``max_pruning_ratio``): a group of ``n``
  channels keeps at least ``ceil(n * (1 - max_group_ratio))``.

Both default to None (no limit beyond the search's own floor of one channel, or
one ``round_to`` multiple). :func:`attnprune.prune` registers the run's limits on
the model's :class:`~attnprune.core.cost.CostModel` with :func:`set_group_limits`;
:func:`~attnprune.core.budget.select_channels`,
:func:`~attnprune.core.budget.reachable_ratio` and
:func:`~attnprune.core.budget.check_reachable` honour the limits registered on the
cost model they are given (every method selects through them), or explicit ones.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import torch

__all__ = ["GroupLimits", "set_group_limits", "group_limits", "floor_units", "limits_hit", "check_min_keep",
           "check_max_group_ratio"]


def check_min_keep(min_keep) -> int | None:
    """Validate ``min_keep``: None or an int >= 1."""
    if min_keep is None:
        return None
    if isinstance(min_keep, bool) or not isinstance(min_keep, int) or min_keep < 1:
        raise ValueError(f"min_keep must be None or an int >= 1 (channels every group keeps), got {min_keep!r}")
    return min_keep


def check_max_group_ratio(max_group_ratio) -> float | None:
    """Validate ``max_group_ratio``: None or a number in (0, 1)."""
    if max_group_ratio is None:
        return None
    if isinstance(max_group_ratio, bool) or not isinstance(max_group_ratio, (int, float)) or not (
            0.0 < float(max_group_ratio) < 1.0):
        raise ValueError("max_group_ratio must be None or a number in (0, 1) (the largest fraction of a "
                         f"group's channels removed), got {max_group_ratio!r}")
    return float(max_group_ratio)


@dataclass(frozen=True)
class GroupLimits:
    """The floor and cap of every group (see the module docstring).

    Attributes:
        min_keep: Channels every group keeps at least; None: no floor.
        max_group_ratio: Largest fraction of a group's channels removed; None: no cap.
    """

    min_keep: int | None = None
    max_group_ratio: float | None = None

    def __post_init__(self):
        check_min_keep(self.min_keep)
        object.__setattr__(self, "max_group_ratio", check_max_group_ratio(self.max_group_ratio))

    def __bool__(self) -> bool:
        return self.min_keep is not None or self.max_group_ratio is not None

    def describe(self) -> str:
        """``"min_keep=4, max_group_ratio=0.8"`` (the limits set)."""
        parts = [f"min_keep={self.min_keep}" if self.min_keep is not None else "",
                 f"max_group_ratio={self.max_group_ratio:g}" if self.max_group_ratio is not None else ""]
        return ", ".join(p for p in parts if p)

    def floor_channels(self, n_channels: int) -> tuple[int, str | None]:
        """Channels a group of ``n_channels`` keeps at least, and which limit sets it (None: neither)."""
        floor, why = 0, None
        if self.min_keep is not None:
            floor, why = min(self.min_keep, n_channels), "min_keep"
        if self.max_group_ratio is not None:
            cap = min(math.ceil(n_channels * (1.0 - self.max_group_ratio) - 1e-9), n_channels)
            if cap > floor:
                floor, why = cap, "max_group_ratio"
        return floor, why


_LIMITS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def set_group_limits(cost, limits: GroupLimits | None) -> None:
    """Register ``limits`` on a cost model (None or empty limits: remove them)."""
    if limits:
        _LIMITS[cost] = limits
    else:
        _LIMITS.pop(cost, None)


def group_limits(cost, explicit: GroupLimits | None = None) -> GroupLimits:
    """``explicit`` when given, else the limits registered on ``cost`` (else none)."""
    if explicit is not None:
        return explicit
    return _LIMITS.get(cost, GroupLimits())


def floor_units(limits: GroupLimits, n_channels: int, ch_groups: int) -> int:
    """The limits' floor of one group in keep-pattern units (0 without limits)."""
    floor, _ = limits.floor_channels(n_channels)
    return math.ceil(floor / ch_groups)


def limits_hit(cost, masks: list[torch.Tensor], limits: GroupLimits | None = None,
               round_to: int | None = None) -> list[str | None]:
    """Per group: ``"min_keep"`` or ``"max_group_ratio"`` when it keeps no more than that limit's floor.

    The floor is the budget search's: in keep-pattern units, rounded up to the
    ``round_to`` step. A group kept whole is never at a limit.
    """
    from .budget import round_step  # budget imports this module

    limits = group_limits(cost, limits)
    out = []
    for g, m in zip(cost.groups, masks):
        _, why = limits.floor_channels(g.n_channels)
        step = round_step(round_to, g.ch_groups)
        units = g.n_channels // g.ch_groups
        floor = min(math.ceil(max(floor_units(limits, g.n_channels, g.ch_groups), 1) / step) * step, units)
        kept = int(m.sum())
        out.append(why if why is not None and kept < g.n_channels and kept <= floor * g.ch_groups else None)
    return out
