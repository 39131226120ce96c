"""The stages of :func:`attnprune.prune` once the method is attached.

``prune()`` runs three stages in order, each an object that owns the part of the
checkpoint it adds (``state_dict()``) and has one resume entry point
(``load_state_dict(saved)``):

1. :class:`MethodPhases`: the method's training phases on the gated model
   (checkpoint keys ``stage="train"``, ``phase``, ``epoch``, ``model``,
   ``optim``, ``method``, ``gates``);
2. :class:`ChannelRemoval`: select, commit, detach, remove the closed channels
   (``masks``, ``selection``, ``method_report``);
3. :class:`FineTune`: plain training of the pruned model (``stage="finetune"``,
   ``phase``, ``epoch``, ``model``, ``optim``).

With distillation (:mod:`attnprune.train.distill`) a
:class:`~attnprune.train.distill.Distiller` takes the teacher when the first
method phase starts, trains the phases that train the CNN and the fine-tuning
with the distilled loss, and adds ``teacher`` to every checkpoint.

:class:`RunRecord` holds what every checkpoint carries (the report so far), and
:class:`Checkpoints` assembles a checkpoint from it and the stages' states (a
no-op without ``checkpoint_dir``). The layout is format 2 of
:mod:`attnprune.train.checkpoint`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch.nn as nn

from ..core.budget import BudgetResult
from ..core.instrument import Instrumented
from ..methods.base import Phase, PruningMethod
from . import distributed as dist_util
from .checkpoint import Checkpointer, plain
from .distill import Distiller
from .runner import EpochRecord, Runner

__all__ = ["RunRecord", "Checkpoints", "MethodPhases", "ChannelRemoval", "FineTune"]

#: ``evaluate(model)``: top-1 on the held-out data.
Evaluator = Callable[[nn.Module], float]


@dataclass
class RunRecord:
    """The report so far: the runner's history and epoch count, accuracies, time.

    Attributes:
        runner: The runner whose ``history`` and ``epochs_done`` are recorded.
        started: ``time.perf_counter()`` when this process's ``prune()`` started.
        seconds_before: Seconds spent by the interrupted runs before this one.
        acc_before: Accuracy of the dense model the method starts pruning.
        acc_removal: Accuracy right after the channels are removed.
    """

    runner: Runner
    started: float = field(default_factory=time.perf_counter)
    seconds_before: float = 0.0
    acc_before: float | None = None
    acc_removal: float | None = None

    def seconds(self) -> float:
        """Seconds of the whole run, interrupted parts included."""
        return self.seconds_before + time.perf_counter() - self.started

    def state_dict(self) -> dict:
        """History, epochs done, accuracies and seconds so far (in every checkpoint)."""
        return {
            "history": [plain(dataclasses.asdict(r)) for r in self.runner.history],
            "epochs_done": self.runner.epochs_done,
            "acc_before": self.acc_before,
            "acc_removal": self.acc_removal,
            "seconds": self.seconds(),
        }

    def load_state_dict(self, saved: dict) -> None:
        """Continue the record of the checkpointed run (its runner's history and epoch count too)."""
        self.runner.history = [EpochRecord(**r) for r in saved["history"]]
        self.runner.epochs_done = int(saved["epochs_done"])
        self.acc_before = saved["acc_before"]
        self.acc_removal = saved["acc_removal"]
        self.seconds_before = float(saved.get("seconds", 0.0))


class Checkpoints:
    """Writes checkpoints made of the record's and some stages' states.

    Args:
        checkpointer: The run's :class:`~attnprune.train.checkpoint.Checkpointer`,
            or None (nothing is written, nothing is restored).
        record: The :class:`RunRecord` every checkpoint carries.
        distiller: The run's :class:`~attnprune.train.distill.Distiller`, whose
            state (the teacher) every checkpoint carries too; None without distillation.
    """

    def __init__(self, checkpointer: Checkpointer | None, record: RunRecord, distiller: Distiller | None = None):
        self.checkpointer = checkpointer
        self.record = record
        self.distiller = distiller

    def load(self) -> dict | None:
        """The run's checkpoint, or None (none written yet, or no folder)."""
        return None if self.checkpointer is None else self.checkpointer.load()

    def save(self, *stages) -> None:
        """Write the record plus ``stage.state_dict()`` of every stage (all ranks call it)."""
        if self.checkpointer is None:
            return
        state = self.record.state_dict()
        for stage in stages + (() if self.distiller is None else (self.distiller,)):
            state.update(stage.state_dict())
        self.checkpointer.save(state)

    def restore_random(self, saved: dict) -> None:
        """This rank's random and loader-generator states from ``saved``."""
        if self.checkpointer is not None:
            self.checkpointer.restore_random(saved)


class MethodPhases:
    """Stage 1: the method's phases, on the gated model.

    Args:
        work: The instrumented working copy of the model.
        inst: Its :class:`~attnprune.Instrumented`.
        method: The attached method.
        phases: ``method.phases(trained=...)``.
        runner: Trains each phase.
        record: Where the accuracy before pruning goes.
        checkpoints: Written at every epoch end.
        evaluate: Top-1 of a model, or None without held-out data.
        distiller: Takes the teacher when its phase starts and distils the
            phases that train the CNN; None without distillation.
    """

    def __init__(self, work: nn.Module, inst: Instrumented, method: PruningMethod, phases: list[Phase],
                 runner: Runner, record: RunRecord, checkpoints: Checkpoints, evaluate: Evaluator | None,
                 distiller: Distiller | None = None):
        self.work, self.inst, self.method, self.phases = work, inst, method, phases
        self.runner, self.record, self.checkpoints, self.evaluate = runner, record, checkpoints, evaluate
        self.distiller = distiller
        self.index = 0  # the phase running (or next)
        self.epoch = 0  # its epochs done
        self._resume: dict | None = None  # the checkpoint to continue a phase from, mid-phase

    def state_dict(self) -> dict:
        """Position, weights, optimiser (mid-phase only), method state and gates."""
        mid_phase = self.index < len(self.phases) and self.epoch < self.phases[self.index].epochs
        return {
            "stage": "train",
            "phase": self.index,
            "epoch": self.epoch,
            "model": self.work.state_dict(),
            "optim": self.runner.phase_state() if mid_phase else None,
            "method": self.method.state_dict(),
            "gates": {"mode": self.inst.mode, "masks": self.inst.masks()},
        }

    def load_state_dict(self, saved: dict) -> None:
        """Continue from a ``stage="train"`` checkpoint (resume entry point).

        At a phase boundary the random states are restored now; mid-phase they
        are restored, with the method's state, after the phase has started again
        (``start_phase`` redoes what it does, e.g. PAAM's calibration).
        """
        self.work.load_state_dict(saved["model"])
        self._restore_method(saved)
        self.index, self.epoch = int(saved["phase"]), int(saved["epoch"])
        if self.index < len(self.phases) and self.epoch >= self.phases[self.index].epochs:
            self.index, self.epoch = self.index + 1, 0
        if self.epoch == 0:
            self.checkpoints.restore_random(saved)
        else:
            self._resume = saved

    def run(self) -> None:
        """Train what remains of the phases; measure the dense accuracy before the gates act."""
        start, resume = self.index, self._resume
        self._resume = None
        for i in range(start, len(self.phases)):
            phase = self.phases[i]
            mid_phase = i == start and resume is not None  # self.epoch epochs of it are done
            if self.distiller is not None:
                self.distiller.at_phase(i, self.work, mid_phase=mid_phase)
            if phase.gates != "off":
                self._measure_dense()
            with _distilled(self.distiller, self.runner, self.work, phase):
                if mid_phase:
                    self.runner.run(self.work, phase, self.method, kept=self._kept, start_epoch=self.epoch,
                                    resume=resume["optim"], on_start=functools.partial(self._restart, resume),
                                    on_epoch_end=self._epoch_end, position=i + 1)
                else:
                    self.index, self.epoch = i, 0
                    self.runner.run(self.work, phase, self.method, kept=self._kept,
                                    on_epoch_end=self._epoch_end, position=i + 1)
        if self.distiller is not None:  # taken here when every phase was a warm-up (a baseline from scratch)
            self.distiller.at_phase(len(self.phases), self.work)
        self._measure_dense()
        self.index, self.epoch = len(self.phases), 0

    def _epoch_end(self, phase: Phase, epoch: int) -> None:
        self.epoch = epoch + 1
        self.checkpoints.save(self)

    def _restart(self, saved: dict) -> None:
        self._restore_method(saved)
        self.checkpoints.restore_random(saved)

    def _restore_method(self, saved: dict) -> None:
        self.method.load_state_dict(saved["method"])
        self.inst.set_masks(saved["gates"]["masks"])
        self.inst.mode = saved["gates"]["mode"]

    def _measure_dense(self) -> None:
        if self.record.acc_before is None and self.evaluate is not None:
            self.inst.mode = "off"  # the dense model the method starts pruning
            self.record.acc_before = self.evaluate(self.work)

    def _kept(self) -> float:
        params, _ = self.inst.count()
        return params / self.inst.cost.dense_params


class ChannelRemoval:
    """Stage 2: the method's selection, committed; the closed channels removed.

    On success: ``select()`` (rank 0 decides under DDP); structured methods:
    masks set, gates binary; ``report()``; ``commit(selection)``; ``detach()``;
    then the channels are removed (checked against the gated model), or, for an
    unstructured method, the instrumentation is removed. On an error the
    pipeline calls only ``detach()`` and ``inst.remove()``.

    Attributes:
        pruned: The pruned plain model (after :meth:`run` or :meth:`load_state_dict`).
        selection: The :class:`~attnprune.BudgetResult` applied.
        method_report: ``method.report()``.
    """

    def __init__(self, work: nn.Module, inst: Instrumented, method: PruningMethod, distributed: bool):
        self.work, self.inst, self.method, self.distributed = work, inst, method, distributed
        self.structured = type(method).structured
        self.pruned: nn.Module | None = None
        self.selection: BudgetResult | None = None
        self.method_report: dict | None = None

    def run(self) -> nn.Module:
        """Select, commit, detach, remove; returns the pruned model."""
        method, inst = self.method, self.inst
        selection = method.select()
        if self.structured:
            if self.distributed:
                selection = dist_util.broadcast_object(selection)
            inst.set_masks(selection.masks)
            inst.mode = "binary"
        report = method.report()
        if self.structured and self.distributed:
            report = dist_util.broadcast_object(report)
        method.commit(selection)
        method.detach()
        if self.structured:
            self.pruned = inst.finalize(verify=True)
        else:  # unstructured (aswl): zeros in the dense weights, no channel removed
            inst.remove()
            self.pruned = self.work
        self.selection, self.method_report = selection, report
        return self.pruned

    def state_dict(self) -> dict:
        """The masks defining the pruned architecture, the selection, the method's report."""
        return {
            "masks": self.inst.masks(),
            "selection": {f.name: getattr(self.selection, f.name) for f in dataclasses.fields(self.selection)},
            "method_report": plain(self.method_report),
        }

    def load_state_dict(self, saved: dict) -> None:
        """Rebuild the pruned architecture from a ``stage="finetune"`` checkpoint (resume entry point).

        The weights are the fine-tuning stage's to load; nothing is committed
        (the saved weights already hold what the method wrote).
        """
        self.selection = BudgetResult(**saved["selection"])
        self.method_report = saved["method_report"]
        self.method.detach()
        if self.structured:
            self.inst.set_masks(saved["masks"])
            self.inst.mode = "binary"
            self.pruned = self.inst.finalize(verify=False)
        else:
            self.inst.remove()
            self.pruned = self.work


class FineTune:
    """Stage 3: plain training of the pruned model.

    Args:
        phase: The fine-tuning phase (``finetune_epochs`` and its learning rate).
        index: Its position after the method's phases (``len(phases)``), as saved.
        runner: Trains it.
        removal: The removal stage, whose ``pruned`` model trains and whose
            state every fine-tuning checkpoint carries.
        checkpoints: Written after the removal and at every epoch end.
        distiller: Distils the fine-tuning from its teacher; None without distillation.
    """

    def __init__(self, phase: Phase, index: int, runner: Runner, removal: ChannelRemoval,
                 checkpoints: Checkpoints, distiller: Distiller | None = None):
        self.phase, self.index, self.runner, self.removal = phase, index, runner, removal
        self.checkpoints = checkpoints
        self.distiller = distiller
        self.epoch = 0
        self._resume: dict | None = None

    def state_dict(self) -> dict:
        """Position, weights of the pruned model and the optimiser (mid-phase only)."""
        return {
            "stage": "finetune",
            "phase": self.index,
            "epoch": self.epoch,
            "model": self.removal.pruned.state_dict(),
            "optim": self.runner.phase_state() if self.epoch < self.phase.epochs else None,
        }

    def load_state_dict(self, saved: dict) -> None:
        """Continue from a ``stage="finetune"`` checkpoint, after the removal stage's (resume entry point)."""
        self.removal.pruned.load_state_dict(saved["model"])
        self.epoch = int(saved["epoch"])
        if self.epoch == 0:
            self.checkpoints.restore_random(saved)
        else:
            self._resume = saved

    def save(self) -> None:
        """Write a checkpoint of the removal and of this stage."""
        self.checkpoints.save(self.removal, self)

    def run(self) -> nn.Module:
        """Fine-tune what remains; returns the pruned model."""
        model, resume = self.removal.pruned, self._resume
        self._resume = None
        if self.distiller is not None:
            self.distiller.require()
        with _distilled(self.distiller, self.runner, model, self.phase):
            if resume is not None:
                self.runner.run(model, self.phase, start_epoch=self.epoch, resume=resume["optim"],
                                on_start=functools.partial(self.checkpoints.restore_random, resume),
                                on_epoch_end=self._epoch_end, position=self.index + 1)
            else:
                self.runner.run(model, self.phase, on_epoch_end=self._epoch_end, position=self.index + 1)
        return model

    def _epoch_end(self, phase: Phase, epoch: int) -> None:
        self.epoch = epoch + 1
        self.save()


def _distilled(distiller: Distiller | None, runner: Runner, model: nn.Module, phase: Phase):
    """The distiller's context for ``phase`` of ``model`` (nothing without distillation)."""
    return contextlib.nullcontext() if distiller is None else distiller.applied(runner, model, phase)
