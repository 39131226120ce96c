"""``attnprune.prune()``: the one call, and the report it returns.

The pipeline: copy the model → instrument it → attach the method → run its
phases → apply the budget → detach the method → remove the closed channels
(checked against the gated model) → fine-tune → report. The user's model is
never modified; any error, or Ctrl-C, leaves it exactly as it was.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
import torch.nn as nn

from .budget import check_ratio, check_round_to, check_target
from .instrument import Instrumented, instrument
from .methods import get_method, make_config
from .methods.base import Budget, Context, Phase, PruningMethod
from ._batch import to_device as _to, unpack_batch
from .schedule import EpochRecord, Runner, evaluate

__all__ = ["prune", "PruneResult", "PruneReport", "GroupReport", "DEFAULT_METHOD"]

DEFAULT_METHOD = "paam"


@dataclass
class GroupReport:
    """Kept channels of one group."""

    name: str
    kept: int
    total: int


@dataclass
class PruneReport:
    """What :func:`prune` did. ``macs`` are multiply-accumulates per sample (fvcore).

    ``accuracy_before_pruning`` is measured on the model the method starts pruning
    (after warm-up, gates off); ``accuracy_at_removal`` right after the closed
    channels are removed, before fine-tuning; ``accuracy_after`` at the end.
    """

    method: str
    ratio_requested: float
    ratio_achieved: float
    target: str
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    groups: list[GroupReport]
    history: list[EpochRecord]
    accuracy_before_pruning: float | None = None
    accuracy_at_removal: float | None = None
    accuracy_after: float | None = None
    round_to: int | None = None
    seconds: float = 0.0
    method_report: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """A JSON-serialisable dict."""
        return dataclasses.asdict(self)

    def summary(self) -> str:
        """A short human-readable summary."""
        lines = [
            f"method {self.method}: removed {100 * self.ratio_achieved:.1f}% of {self.target} "
            f"(asked {100 * self.ratio_requested:.1f}%)",
            f"params {self.params_before:,} -> {self.params_after:,}   "
            f"MACs/sample {self.macs_before:,} -> {self.macs_after:,}",
        ]
        acc = [(k, getattr(self, k)) for k in ("accuracy_before_pruning", "accuracy_at_removal", "accuracy_after")]
        if any(v is not None for _, v in acc):
            lines.append("top-1 " + "   ".join(f"{k.replace('accuracy_', '')}: {v:.2f}%" for k, v in acc if v is not None))
        lines.append(f"time {self.seconds:.1f}s")
        return "\n".join(lines)


@dataclass
class PruneResult:
    """What :func:`prune` returns.

    Attributes:
        model: The pruned plain ``nn.Module`` (build a new optimizer for it).
        report: A :class:`PruneReport`.
        pruning_history: torch-pruning's record of the removal, which
            :func:`attnprune.io.save` stores so the model reloads from a state dict.
    """

    model: nn.Module
    report: PruneReport
    pruning_history: list = field(default_factory=list)


def _model_device(model: nn.Module):
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _first_batch(loader):
    try:
        it = iter(loader)
    except TypeError:
        raise TypeError(f"loader must be an iterable of (inputs, targets), got {type(loader).__name__}") from None
    try:
        batch = next(it)
    except StopIteration:
        raise ValueError("the loader is empty; it must yield (inputs, targets) pairs") from None
    return unpack_batch(batch)


def _example_from(inputs):
    if isinstance(inputs, torch.Tensor):
        return inputs[:1]
    if isinstance(inputs, (tuple, list)):
        return tuple(t[:1] for t in inputs)
    raise TypeError(f"inputs must be tensors, got {type(inputs).__name__}")


def prune(
    model: nn.Module,
    loader: Iterable,
    ratio: float = 0.5,
    method: str = DEFAULT_METHOD,
    target: str = "params",
    *,
    example_inputs=None,
    eval_loader: Iterable | None = None,
    loss_fn: Callable | None = None,
    device=None,
    ignored_layers=None,
    round_to: int | None = None,
    pretrained: bool = False,
    seed: int | None = None,
    progress: bool = True,
    **options: Any,
) -> PruneResult:
    """Learn which channels to remove, remove them, and fine-tune.

    Args:
        model: The CNN to prune. It is copied; the original is never modified.
        loader: Training data, yielding ``(inputs, targets)``.
        ratio: Fraction of the model's parameters to remove (of its MACs per
            sample with ``target="macs"``), counted over the whole model as
            fvcore counts it; met within one percentage point.
        method: A registered method: see :func:`attnprune.available_methods`.
        target: ``"params"`` or ``"macs"``.
        example_inputs: One batch for tracing (default: first sample of ``loader``).
        eval_loader: Optional held-out data; accuracies are then reported.
        loss_fn: ``loss_fn(outputs, targets)``; default cross-entropy.
        device: Where to train (default: the model's device).
        ignored_layers: Modules or names whose output channels are kept.
        round_to: Keep a multiple of this many channels per group (±2 points).
        pretrained: The model is trained already: skip the warm-up.
        seed: Seeds torch's generators for a repeatable run.
        progress: Show progress bars.
        **options: The method's options (its config dataclass's fields, e.g.
            ``warmup_epochs=2``); an unknown option raises listing the valid ones.

    Returns:
        A :class:`PruneResult` with the pruned model and its report.

    Raises:
        ValueError: A bad argument (the message names it and the valid choices).
        attnprune.UnsupportedModelError: The model cannot be gated exactly.
        attnprune.errors.BudgetError: The ratio cannot be reached (the message gives
            the largest reachable one).
    """
    t_start = time.perf_counter()
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    budget = Budget(check_ratio(ratio), check_target(target), check_round_to(round_to))
    method_cls = get_method(method)
    config = make_config(method_cls, options)
    loss_fn = loss_fn or nn.functional.cross_entropy
    device = torch.device(device) if device is not None else _model_device(model)
    if seed is not None:
        torch.manual_seed(seed)
    first_x, _ = _first_batch(loader)
    if example_inputs is None:
        example_inputs = _example_from(first_x)
    example_inputs = _to(example_inputs, device)

    work = copy.deepcopy(model).to(device)
    inst = instrument(work, example_inputs, ignored_layers=ignored_layers)
    params_before, macs_before = inst.cost.dense_params, inst.cost.dense_macs
    runner = Runner(loader=loader, loss_fn=loss_fn, device=device, eval_loader=eval_loader,
                    steps_per_epoch=config.steps_per_epoch, progress=progress)

    def batches():
        for batch in loader:
            x, y = unpack_batch(batch)
            yield _to(x, device), _to(y, device)

    algo: PruningMethod = method_cls(config)
    try:
        algo.attach(inst, budget, Context(batches=batches, loss_fn=loss_fn, seed=seed,
                                          steps_per_epoch=runner.steps_in_epoch()))
        acc_before = None
        phases = algo.phases(pretrained=pretrained)
        for i, phase in enumerate(phases + [None]):
            if acc_before is None and eval_loader is not None and (phase is None or phase.gates != "off"):
                inst.mode = "off"  # the dense model the method starts pruning
                acc_before = evaluate(work, eval_loader, device)
            if phase is not None:
                runner.run(work, phase, algo, kept=lambda: _kept_fraction(inst))
        if getattr(algo, "structured", True):
            selection = algo.select()
            inst.set_masks(selection.masks)
            inst.mode = "binary"
            method_report = algo.report()
            algo.detach()
            pruned = inst.finalize(verify=True)
        else:  # unstructured (aswl): zeros written into the dense weights, no channel removed
            selection = algo.finalize_unstructured()
            method_report = algo.report()
            algo.detach()
            inst.remove()
            pruned = work
    except BaseException:
        algo.detach()
        inst.remove()
        raise
    acc_removal = evaluate(pruned, eval_loader, device) if eval_loader is not None else None
    ft_epochs = config.finetune_epochs
    if ft_epochs:
        runner.run(pruned, Phase(name="finetune", epochs=ft_epochs, lr=config.finetune_lr or config.lr,
                                 optimizer=config.optimizer, momentum=config.momentum,
                                 weight_decay=config.weight_decay))
    acc_after = evaluate(pruned, eval_loader, device) if eval_loader is not None else None
    masks = inst.masks()
    report = PruneReport(
        method=method,
        ratio_requested=budget.ratio,
        ratio_achieved=selection.ratio,
        target=budget.target,
        params_before=params_before,
        params_after=selection.params,
        macs_before=macs_before,
        macs_after=selection.macs,
        groups=[GroupReport(g.name, int(m.sum()), g.n_channels) for g, m in zip(inst.groups, masks)],
        history=runner.history,
        accuracy_before_pruning=acc_before,
        accuracy_at_removal=acc_removal,
        accuracy_after=acc_after,
        round_to=budget.round_to,
        seconds=time.perf_counter() - t_start,
        method_report=method_report,
    )
    pruned.train(model.training)
    return PruneResult(model=pruned, report=report, pruning_history=inst.pruning_history or [])


def _kept_fraction(inst: Instrumented) -> float:
    params, _ = inst.count()
    return params / inst.cost.dense_params
