"""Did the learned scores separate the kept channels from the closed ones?

A learned method (gates, attention) should end with two clusters of scores: the
channels it keeps and the ones it closes, with a gap between them. When the
scores stay one spike (e.g. every gate near 1.0) the threshold cuts through
noise, and the accuracy right after removal drops, often to chance.

:func:`separation_index` measures it on any score scale (it is unchanged when
every score is multiplied by a positive number or shifted): the distance between
the medians of the kept and the closed scores, over the sum of their median
absolute deviations, pooled over every group (scores first normalised as the
method's selection normalises them). Two clean clusters give a large index (≥ 10
for gates near 0 and 1 with a spread of 0.05); scores that do not cluster give a
small one (a uniform spread cut in the middle gives 2.0, a normal spread 1.7).
Below :data:`SEPARATION_MIN` the scores did not separate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .budget import normalize_scores

__all__ = ["SEPARATION_MIN", "separation_index"]

#: Below this index the kept and closed scores are not two clusters.
SEPARATION_MIN = 3.0


def _mad(x: torch.Tensor) -> float:
    return float((x - x.median()).abs().median())


def separation_index(scores: Sequence[torch.Tensor], masks: Sequence[torch.Tensor],
                     normalize: str | None = None) -> float | None:
    """``(median(kept) - median(closed)) / (MAD(kept) + MAD(closed))`` over every group.

    Args:
        scores: One score vector per group (higher = keep).
        masks: The keep-masks selected from them.
        normalize: The normalisation the selection used (see
            :func:`attnprune.core.budget.normalize_scores`).

    Returns:
        The index (``inf`` for two clusters without spread), or None when no
        channel is closed or none is kept.
    """
    flat = torch.cat([s.flatten() for s in normalize_scores(list(scores), normalize)])
    keep = torch.cat([m.flatten().bool().cpu() for m in masks])
    kept, closed = flat[keep], flat[~keep]
    if kept.numel() == 0 or closed.numel() == 0:
        return None
    gap = float(kept.median() - closed.median())
    spread = _mad(kept) + _mad(closed)
    scale = float(flat.abs().max())
    if spread <= 1e-12 * max(scale, 1e-30):
        return math.inf if gap > 1e-12 * max(scale, 1e-30) else 0.0
    return max(gap, 0.0) / spread
