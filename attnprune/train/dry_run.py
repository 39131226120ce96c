"""``prune(..., dry_run=True)``: what a run would do, and how long it would take, without training.

The dry run does everything ``prune()`` does before training (every argument
check, the copy, instrumenting, the dry budget search, attaching the method),
then times a few training steps of each kind of phase on the copy (gated phases
with the method, plain fine-tuning steps), prints the phases with their passes
and an estimated time, removes the instrumentation and returns a
:class:`DryRunReport`. Nothing else trains, and the user's model is untouched.
The estimate covers the training steps only (evaluation on ``eval_loader`` and
the method's own per-phase work, e.g. calibration, come on top); fine-tuning is
timed on the dense model, so its estimate is an upper bound.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import torch.nn as nn

from ..methods.base import Phase, PruningMethod
from .runner import Runner

__all__ = ["PhasePlan", "DryRunReport", "dry_run"]

#: Training steps timed per kind of phase.
TIMED_STEPS = 3


@dataclass
class PhasePlan:
    """One phase of the planned run.

    Attributes:
        name: The phase's name (``warmup``, ``an``, ``cnn``, ``finetune`` ...).
        epochs: Passes over the loader.
        steps: Training steps (``epochs`` × steps per epoch; None without a loader length).
        seconds: Estimated seconds (None when ``steps`` is unknown).
    """

    name: str
    epochs: int
    steps: int | None
    seconds: float | None


@dataclass
class DryRunReport:
    """What ``prune(..., dry_run=True)`` returns.

    Attributes:
        method: The method's name.
        phases: The planned phases in order, fine-tuning last.
        steps_per_epoch: Batches per epoch (None without a loader length).
        seconds_per_step: Measured seconds of one step, per kind of phase
            (``"gated"``: the method's phases with gates; ``"plain"``: no gates).
        estimated_seconds: Sum over the phases (None when a phase's steps are unknown).
        groups: Prunable channel groups found.
        frozen_layers: Layers with every parameter frozen (pruned like the others).
    """

    method: str
    phases: list[PhasePlan]
    steps_per_epoch: int | None
    seconds_per_step: dict = field(default_factory=dict)
    estimated_seconds: float | None = None
    groups: int = 0
    frozen_layers: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """The plan, one line per phase, and the estimated time."""
        lines = [f"dry run of method {self.method}: {self.groups} channel groups, "
                 f"{self.steps_per_epoch if self.steps_per_epoch is not None else '?'} steps per epoch"]
        if self.frozen_layers:
            lines.append(f"frozen layers (pruned, kept frozen): {len(self.frozen_layers)}")
        for i, p in enumerate(self.phases):
            secs = f"~{p.seconds:.0f}s" if p.seconds is not None else "?"
            lines.append(f"  phase {i + 1}/{len(self.phases)} {p.name}: {p.epochs} epoch(s), "
                         f"{p.steps if p.steps is not None else '?'} steps, {secs}")
        total = f"~{self.estimated_seconds:.0f}s" if self.estimated_seconds is not None else "unknown"
        lines.append(f"estimated training time {total} (training steps only; nothing was trained)")
        return "\n".join(lines)


def _kind(phase: Phase) -> str:
    return "plain" if phase.gates == "off" and not phase.train_method else "gated"


def _time_steps(runner: Runner, model: nn.Module, phase: Phase, method: PruningMethod | None) -> float:
    """Seconds per step of ``phase`` over :data:`TIMED_STEPS` steps (one short epoch)."""
    short = dataclasses.replace(phase, epochs=1)
    t0 = time.perf_counter()
    runner.run(model, short, method)
    return (time.perf_counter() - t0) / (runner.steps_in_epoch() or TIMED_STEPS)


def dry_run(work: nn.Module, inst, method: PruningMethod, method_name: str, phases: list[Phase],
            finetune: Phase, runner: Runner, frozen: list[str]) -> DryRunReport:
    """Time a few steps of each kind of phase on ``work`` (the copy) and plan the run.

    Args:
        work: The instrumented copy (it trains for the timed steps; it is thrown away).
        inst: Its instrumentation.
        method: The attached method.
        method_name: Its registered name.
        phases: ``method.phases(trained=...)``.
        finetune: The fine-tuning phase.
        runner: The run's runner (for the loader and steps per epoch).
        frozen: The frozen layers' names.
    """
    steps = runner.steps_in_epoch()
    timer = Runner(loader=runner.loader, loss_fn=runner.loss_fn, device=runner.device,
                   steps_per_epoch=TIMED_STEPS, progress=False, amp=runner.amp, log_epochs=False)
    per_step: dict[str, float] = {}
    for phase in phases:
        kind = _kind(phase)
        if kind not in per_step and phase.epochs > 0:
            per_step[kind] = _time_steps(timer, work, phase, method)
    if finetune.epochs > 0:
        inst.mode = "off"
        per_step.setdefault("plain", _time_steps(timer, work, finetune, None))
    plans = []
    for phase in [*phases, finetune]:
        n = None if steps is None else phase.epochs * steps
        rate = per_step.get(_kind(phase), per_step.get("plain", 0.0))
        plans.append(PhasePlan(phase.name, phase.epochs, n, None if n is None else n * rate))
    known = [p.seconds for p in plans]
    total = None if any(s is None for s in known) else float(sum(known))
    return DryRunReport(method=method_name, phases=plans, steps_per_epoch=steps, seconds_per_step=per_step,
                        estimated_seconds=total, groups=len(inst.groups), frozen_layers=list(frozen))
