"""Warnings that say when a run of :func:`attnprune.prune` went wrong, and what to change.

Two checks, each a Python warning (``UserWarning``) and a line of
``PruneReport.warnings``:

* the learned scores did not separate (methods with parameters of their own:
  gates, attention): :func:`attnprune.core.separation.separation_index` below
  :data:`~attnprune.core.separation.SEPARATION_MIN`, a rule that does not
  depend on the method's score scale;
* the accuracy right after removal is near chance (with an ``eval_loader``):
  within 10% of the way from chance (``100 / number of outputs``) to 100%,
  while the accuracy before pruning was not (a model at chance before pruning
  has not learned the task, and removal is not to blame).
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn as nn

from .._batch import call_model
from .._modes import eval_mode
from ..core.separation import SEPARATION_MIN, separation_index

__all__ = ["learned_scores", "score_separation", "chance_accuracy", "run_warnings", "emit"]

_ADVICE = ("train the method longer (more epochs, e.g. more AN epochs/cycles for paam), ask for a smaller "
           "ratio, or fine-tune longer (finetune_epochs)")


def learned_scores(method) -> list[torch.Tensor] | None:
    """The method's scores when it learns parameters of its own (structured methods only), else None."""
    if not type(method).structured or not method.parameters():
        return None
    return [s.detach().float().cpu() for s in method.scores()]


def score_separation(method, scores, masks) -> float | None:
    """:func:`~attnprune.core.separation.separation_index` of ``scores`` under the method's normalisation."""
    if scores is None or masks is None:
        return None
    return separation_index(scores, masks, method.normalize)


@torch.no_grad()
def chance_accuracy(model: nn.Module, example_inputs) -> float | None:
    """``100 / classes`` from the width of the model's output on ``example_inputs`` (None if not a 2-D output)."""
    with eval_mode(model):
        out = call_model(model, example_inputs)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[1] < 2:
        return None
    return 100.0 / out.shape[1]


def _near_chance(acc: float | None, chance: float | None) -> bool:
    return acc is not None and chance is not None and acc <= chance + 0.1 * (100.0 - chance)


def run_warnings(separation: float | None, acc_removal: float | None, chance: float | None,
                 acc_after: float | None = None, acc_before: float | None = None) -> list[str]:
    """The warnings of a run (empty when nothing looks wrong)."""
    out = []
    if separation is not None and separation < SEPARATION_MIN:
        out.append(f"the learned scores did not separate the kept channels from the closed ones (separation "
                   f"index {separation:.2f} < {SEPARATION_MIN:g}): the selection cut through one cluster of "
                   f"scores; {_ADVICE}")
    if _near_chance(acc_removal, chance) and not _near_chance(acc_before, chance):
        after = f", {acc_after:.1f}% after fine-tuning" if acc_after is not None and math.isfinite(acc_after) else ""
        out.append(f"accuracy right after removal is {acc_removal:.1f}%, near chance ({chance:.1f}%){after}: "
                   f"the removed channels mattered; {_ADVICE}")
    return out


def emit(messages: list[str]) -> None:
    """Issue each message as a ``UserWarning`` (from the caller of ``prune()``)."""
    for m in messages:
        warnings.warn(f"attnprune: {m}", UserWarning, stacklevel=3)
