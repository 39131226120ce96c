"""The result of a finished run: the pruned model and its whole report.

One place assembles what :func:`attnprune.prune` reports: counts before and
after, accuracies, the groups (kept channels, the per-group limit each hit,
frozen layers), the learned scores' separation and the warnings it raised, how
``round_to`` was chosen, and predicted against measured latency.
"""

from __future__ import annotations

import torch.nn as nn

from ..core.instrument import Instrumented
from ..core.limits import GroupLimits, limits_hit
from ..methods.base import Budget
from . import diagnostics
from .result import GroupReport, PruneReport, PruneResult
from .runner import Runner
from .stages import ChannelRemoval, RunRecord

__all__ = ["build_result"]


def build_result(model: nn.Module, method: str, budget: Budget, inst: Instrumented, removal: ChannelRemoval,
                 runner: Runner, record: RunRecord, acc_after: float | None, *, sizes: tuple[int, int],
                 limits: GroupLimits, frozen: list[str], structured: bool, separation: float | None,
                 chance: float | None, round_source: dict, latency: dict | None,
                 distill: dict | None = None) -> PruneResult:
    """The :class:`PruneResult` of a run that removed its channels and fine-tuned.

    Args:
        model: The user's model (its train/eval mode is copied to the pruned one).
        method: The method's registered name.
        budget: The budget the run met.
        inst: The (finalized) instrumentation: groups and masks.
        removal: The channel-removal stage (selection, pruned model, method report).
        runner: The runner (its history).
        record: The run's record (accuracies, seconds).
        acc_after: Accuracy after fine-tuning (None without ``eval_loader``).
        sizes: Params and MACs of the dense model.
        limits: The per-group floor and cap asked for.
        frozen: Names of the frozen layers (pruned and kept frozen).
        structured: Whether the method removed channels (limits only apply then).
        separation: The learned scores' separation (None: not a learned method).
        chance: Chance accuracy of the model's output, when measured.
        round_source: How ``round_to`` was chosen.
        latency: Predicted and measured latency (``target="latency"``), else None.
        distill: The distillation setting and the phases it applied to, else None.
    """
    selection, pruned, masks = removal.selection, removal.pruned, inst.masks()
    frozen_set = set(frozen)
    hit = limits_hit(inst.cost, masks, limits, budget.round_to) if structured else [None] * len(masks)
    groups = [GroupReport(g.name, int(m.sum()), g.n_channels, limit=why, frozen=structured and g.name in frozen_set)
              for g, m, why in zip(inst.groups, masks, hit)]
    report = PruneReport(
        method=method,
        ratio_requested=budget.ratio,
        ratio_achieved=selection.ratio,
        target=budget.target,
        params_before=sizes[0],
        params_after=selection.params,
        macs_before=sizes[1],
        macs_after=selection.macs,
        groups=groups,
        history=runner.history,
        accuracy_before_pruning=record.acc_before,
        accuracy_at_removal=record.acc_removal,
        accuracy_after=acc_after,
        round_to=budget.round_to,
        seconds=record.seconds(),
        method_report=removal.method_report,
        min_keep=limits.min_keep,
        max_group_ratio=limits.max_group_ratio,
        frozen_layers=frozen,
        score_separation=separation,
        warnings=diagnostics.run_warnings(separation, record.acc_removal, chance, acc_after, record.acc_before),
        round_to_source=round_source,
        latency=latency,
        distill=distill,
    )
    pruned.train(model.training)
    return PruneResult(model=pruned, report=report, pruning_history=inst.pruning_history or [], masks=masks)
