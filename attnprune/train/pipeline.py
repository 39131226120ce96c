"""``attnprune.prune()``: the one call, and the report it returns.

The pipeline: check the arguments → copy the model → instrument it → check the
ratio is reachable → attach the method → run its phases → apply the budget →
detach the method → remove the closed channels (checked against the gated model)
→ fine-tune → report. The user's model is never modified; any error, or Ctrl-C,
leaves it exactly as it was. Optional checkpoints (:mod:`attnprune.train.checkpoint`)
let an interrupted run resume; under ``torchrun`` it trains with
DistributedDataParallel (:mod:`attnprune.train.distributed`).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
import torch.nn as nn

from . import checks
from . import distributed as dist_util
from .._batch import to_device as _to, unpack_batch
from ..core.budget import BudgetResult, check_ratio, check_round_to, check_target
from .checkpoint import Checkpointer, loader_generators
from ..core.instrument import Instrumented, instrument
from ..methods import available_methods, get_method, make_config
from ..methods.base import Budget, Context, Phase, PruningMethod
from .runner import EpochRecord, Runner, evaluate

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
        if self.method_report.get("structured", True) is False:  # aswl: zeros, same shapes
            lines = [
                f"method {self.method} (unstructured): zeroed {100 * self.ratio_achieved:.1f}% of the weights "
                f"(asked {100 * self.ratio_requested:.1f}%); layer shapes and MACs are unchanged",
                f"params {self.params_before:,} -> {self.params_after:,} nonzero   "
                f"MACs/sample {self.macs_before:,} (dense)",
            ]
        else:
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
            :func:`attnprune.deploy.serialize.save` stores so the model reloads from a state dict.
        masks: The keep-masks applied, one bool tensor per channel group (in the
            order of ``report.groups``; True = kept).
    """

    model: nn.Module
    report: PruneReport
    pruning_history: list = field(default_factory=list)
    masks: list = field(default_factory=list)


# -- argument checks (all run before anything is copied or trained) -----------------------
def _seed_all(seed: int, loader) -> None:
    """Seed torch's generators (CPU and CUDA) and the loader's own generators."""
    torch.manual_seed(seed)
    for g in loader_generators(loader):
        g.manual_seed(seed)


def _plain(value):
    """``value`` with anything ``torch.load(weights_only=True)`` cannot read made plain."""
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def _fingerprint(method: str, budget: Budget, config, trained: bool, seed, model: nn.Module,
                 steps: int | None, distributed: bool) -> dict:
    return {
        "method": method,
        "ratio": budget.ratio,
        "target": budget.target,
        "round_to": budget.round_to,
        "config": _plain(dataclasses.asdict(config)),
        "trained": bool(trained),
        "seed": seed,
        "steps_per_epoch": steps,
        "world_size": dist_util.world_size() if distributed else 1,
        "model": [[n, list(p.shape)] for n, p in model.state_dict().items()],
    }


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
    trained: bool = False,
    pretrained: bool | None = None,
    seed: int | None = None,
    progress: bool = True,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    distributed: bool | None = None,
    **options: Any,
) -> PruneResult:
    """Learn which channels to remove, remove them, and fine-tune.

    Every argument is checked before training starts: a bad one raises an error
    naming it and its valid values, and so does a ratio the model cannot reach
    (a dry budget search runs right after instrumenting). The user's model is
    never modified: training runs on a copy, and any error, or Ctrl-C, removes
    every hook and leaves the model exactly as it was.

    Args:
        model: The CNN to prune. It is copied; the original is never modified.
        loader: Training data, yielding ``(inputs, targets)``. Under
            DistributedDataParallel give it a ``DistributedSampler`` (its epoch
            is set before every epoch).
        ratio: Fraction of the model's parameters to remove (of its MACs per
            sample with ``target="macs"``), in (0, 1), counted over the whole model
            as fvcore counts it; met within one percentage point.
        method: A registered method: see :func:`attnprune.available_methods`.
        target: ``"params"`` or ``"macs"``.
        example_inputs: One batch for tracing (default: first sample of ``loader``).
        eval_loader: Optional held-out data; accuracies are then reported.
        loss_fn: ``loss_fn(outputs, targets)`` returning a scalar; default cross-entropy.
        device: Where to train (default: the model's device). Batches are moved there.
        ignored_layers: Modules or names whose output channels are kept.
        round_to: Keep a multiple of this many channels per group (±2 points).
        trained: The model is trained already: skip the warm-up (no weights are
            downloaded; this is not torchvision's ``pretrained``).
        pretrained: Deprecated alias of ``trained`` (attnprune 0.1).
        seed: Seeds torch's generators (CPU and CUDA) and the loader's own
            generator, if it has one, for a repeatable run: the same seed gives
            the same masks and the same pruned model on the same machine.
        progress: Show progress bars (rank 0 only).
        checkpoint_dir: Folder for ``checkpoint.pt``, written atomically at the end
            of every epoch and after the channels are removed (rank 0 only); see
            :mod:`attnprune.train.checkpoint`.
        resume: Continue from the checkpoint in ``checkpoint_dir`` (a fresh start
            when there is none). The arguments must be the same as the run that
            wrote it; the result then equals an uninterrupted run's bit for bit.
        distributed: Train with DistributedDataParallel over the default process
            group; None (default) does so when one with more than one process is
            initialised. False under a process group: every process prunes on its
            own (checkpoints are still written by rank 0 only). See
            :mod:`attnprune.train.distributed`.
        **options: The method's options (its config dataclass's fields, e.g.
            ``warmup_epochs=2``); an unknown option raises listing the valid ones.

    Returns:
        A :class:`PruneResult` with the pruned model and its report (the same on
        every rank).

    Raises:
        TypeError: An argument of the wrong type (the message names it).
        ValueError: A bad argument (the message names it and the valid range or
            choices), a loader that is empty or does not yield ``(inputs,
            targets)`` the model and ``loss_fn`` accept, or a checkpoint of
            another run.
        attnprune.UnsupportedModelError: The model cannot be gated exactly, or has
            no prunable channel group (e.g. every group is ignored).
        attnprune.errors.BudgetError: The ratio cannot be reached (the message gives
            the largest reachable one).
        attnprune.TrainingDivergedError: The loss became NaN or infinite (the
            message names the phase and epoch); nothing is returned.
    """
    t_start = time.perf_counter()
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    budget = Budget(check_ratio(ratio), check_target(target), check_round_to(round_to))
    if not isinstance(method, str):
        raise TypeError(f"method must be a method name (str), one of {available_methods()}; "
                        f"got {type(method).__name__}")
    method_cls = get_method(method)
    config = make_config(method_cls, options)
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable as loss_fn(outputs, targets), got {type(loss_fn).__name__}")
    loss_fn = loss_fn or nn.functional.cross_entropy
    checks.check_seed(seed)
    trained = checks.resolve_trained(trained, pretrained)
    if not isinstance(resume, bool):
        raise TypeError(f"resume must be True or False, got {resume!r}")
    if checkpoint_dir is not None and not isinstance(checkpoint_dir, (str, os.PathLike)):
        raise TypeError(f"checkpoint_dir must be None or a path, got {type(checkpoint_dir).__name__}")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir (the folder of an earlier run's checkpoint)")
    if eval_loader is not None:
        checks.check_iterable("eval_loader", eval_loader)
    use_dist = checks.resolve_distributed(distributed)
    device = checks.resolve_device(device, model)
    if seed is not None:
        _seed_all(seed, loader)
    first_x, first_y = checks.first_batch(loader)
    explicit = example_inputs is not None
    if not explicit:
        example_inputs = checks.example_from(first_x)
    else:
        checks.check_example_tensors(example_inputs)
    example_inputs = _to(example_inputs, device)

    work = copy.deepcopy(model).to(device)
    checks.check_feeds(work, example_inputs, explicit, first_x, first_y, loss_fn, device)
    inst = instrument(work, example_inputs, ignored_layers=ignored_layers)
    algo: PruningMethod = method_cls(config)
    structured = method_cls.structured
    try:
        if structured:
            checks.check_reachable(inst, budget)
        params_before, macs_before = inst.cost.dense_params, inst.cost.dense_macs
        runner = Runner(loader=loader, loss_fn=loss_fn, device=device, eval_loader=eval_loader,
                        steps_per_epoch=config.steps_per_epoch, progress=progress, distributed=use_dist)
        steps = runner.steps_in_epoch()
        if use_dist:
            checks.check_distributed_loader(loader, steps)

        def batches():
            for batch in loader:
                x, y = unpack_batch(batch)
                yield _to(x, device), _to(y, device)

        algo.attach(inst, budget, Context(batches=batches, loss_fn=loss_fn, seed=seed, steps_per_epoch=steps))
        if use_dist:
            dist_util.sync_module(work)
            dist_util.sync_method(algo)
        ckpt = None
        saved = None
        if checkpoint_dir is not None:
            fingerprint = _fingerprint(method, budget, config, trained, seed, work, steps, use_dist)
            ckpt = Checkpointer(checkpoint_dir, fingerprint, loader, distributed=use_dist)
            saved = ckpt.load() if resume else None
        run = _Run(work=work, inst=inst, algo=algo, runner=runner, ckpt=ckpt, eval_loader=eval_loader,
                   device=device, distributed=use_dist, structured=structured,
                   seconds_before=float(saved.get("seconds", 0.0)) if saved else 0.0, t_start=t_start)
        pruned, selection, method_report = run.execute(algo.phases(trained=trained), config, saved)
        acc_after = evaluate(pruned, eval_loader, device, distributed=use_dist) if eval_loader is not None else None
    except BaseException:
        algo.detach()
        inst.remove()
        raise
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
        accuracy_before_pruning=run.acc_before,
        accuracy_at_removal=run.acc_removal,
        accuracy_after=acc_after,
        round_to=budget.round_to,
        seconds=run.seconds(),
        method_report=method_report,
    )
    pruned.train(model.training)
    return PruneResult(model=pruned, report=report, pruning_history=inst.pruning_history or [], masks=masks)


@dataclass
class _Run:
    """The pipeline after attaching: phases, removal, fine-tuning, with checkpoints."""

    work: nn.Module
    inst: Instrumented
    algo: PruningMethod
    runner: Runner
    ckpt: Checkpointer | None
    eval_loader: Iterable | None
    device: torch.device
    distributed: bool
    structured: bool
    seconds_before: float
    t_start: float
    acc_before: float | None = None
    acc_removal: float | None = None

    def seconds(self) -> float:
        return self.seconds_before + time.perf_counter() - self.t_start

    def evaluate(self, model: nn.Module) -> float | None:
        if self.eval_loader is None:
            return None
        return evaluate(model, self.eval_loader, self.device, distributed=self.distributed)

    # -- checkpoints ----------------------------------------------------------------
    def save(self, stage: str, phase: int, epoch: int, model: nn.Module, optim: dict | None, extra: dict) -> None:
        if self.ckpt is None:
            return
        state = {
            "stage": stage,
            "phase": phase,
            "epoch": epoch,
            "model": model.state_dict(),
            "optim": optim,
            "history": [_plain(dataclasses.asdict(r)) for r in self.runner.history],
            "epochs_done": self.runner.epochs_done,
            "acc_before": self.acc_before,
            "acc_removal": self.acc_removal,
            "seconds": self.seconds(),
        }
        state.update(extra)
        self.ckpt.save(state)

    def save_training(self, phase_index: int, phase: Phase, epoch: int) -> None:
        optim = self.runner.phase_state() if epoch < phase.epochs else None
        self.save("train", phase_index, epoch, self.work, optim, {
            "method": self.algo.state_dict(),
            "gates": {"mode": self.inst.mode, "masks": self.inst.masks()},
        })

    def restore_training(self, saved: dict) -> None:
        """Method state and gates of a training checkpoint (after ``start_phase`` too)."""
        self.algo.load_state_dict(saved["method"])
        gates = saved["gates"]
        self.inst.set_masks(gates["masks"])
        self.inst.mode = gates["mode"]

    def restore_common(self, saved: dict) -> None:
        self.runner.history = [EpochRecord(**r) for r in saved["history"]]
        self.runner.epochs_done = int(saved["epochs_done"])
        self.acc_before = saved["acc_before"]
        self.acc_removal = saved["acc_removal"]

    # -- the pipeline -------------------------------------------------------------------
    def execute(self, phases: list[Phase], config, saved: dict | None):
        """Run what remains of the schedule; returns ``(pruned, selection, method_report)``."""
        inst, algo, runner = self.inst, self.algo, self.runner
        start, start_epoch, optim = 0, 0, None
        stage = saved["stage"] if saved is not None else "train"
        if saved is not None:
            self.restore_common(saved)
        if saved is not None and stage == "train":
            self.work.load_state_dict(saved["model"])
            self.restore_training(saved)
            start, start_epoch = int(saved["phase"]), int(saved["epoch"])
            if start_epoch >= phases[start].epochs:
                start, start_epoch = start + 1, 0
            else:
                optim = saved["optim"]
            if start_epoch == 0:
                self.ckpt.restore_random(saved)

        if stage == "train":
            kept = lambda: _kept_fraction(inst)  # noqa: E731
            for i in range(start, len(phases) + 1):
                phase = phases[i] if i < len(phases) else None
                if self.acc_before is None and self.eval_loader is not None and (phase is None or phase.gates != "off"):
                    inst.mode = "off"  # the dense model the method starts pruning
                    self.acc_before = self.evaluate(self.work)
                if phase is None:
                    break
                runner.on_epoch_end = lambda ph, ep, i=i: self.save_training(i, ph, ep + 1)
                if i == start and start_epoch > 0:
                    def on_start():
                        self.restore_training(saved)
                        self.ckpt.restore_random(saved)

                    runner.run(self.work, phase, algo, kept=kept, start_epoch=start_epoch, resume=optim,
                               on_start=on_start)
                else:
                    runner.run(self.work, phase, algo, kept=kept)
            runner.on_epoch_end = None
            pruned, selection, method_report = self.remove()
            self.acc_removal = self.evaluate(pruned)
            self.save_pruned(len(phases), 0, pruned, None, selection, method_report)
            ft_start, ft_optim, ft_saved = 0, None, None
        else:  # resuming after the removal
            selection = BudgetResult(**saved["selection"])
            method_report = saved["method_report"]
            pruned = self.rebuild(saved)
            ft_start, ft_optim, ft_saved = int(saved["epoch"]), saved["optim"], saved
            if ft_start == 0:
                self.ckpt.restore_random(saved)

        ft_epochs = config.finetune_epochs
        ft = Phase(name="finetune", epochs=ft_epochs, lr=config.finetune_lr or config.lr,
                   optimizer=config.optimizer, momentum=config.momentum, weight_decay=config.weight_decay)
        runner.on_epoch_end = lambda ph, ep: self.save_pruned(
            len(phases), ep + 1, pruned, runner.phase_state() if ep + 1 < ph.epochs else None, selection,
            method_report)
        try:
            if ft_start > 0:
                runner.run(pruned, ft, start_epoch=ft_start, resume=ft_optim,
                           on_start=lambda: self.ckpt.restore_random(ft_saved))
            else:
                runner.run(pruned, ft)
        finally:
            runner.on_epoch_end = None
        return pruned, selection, method_report

    def remove(self):
        """Select (rank 0 decides), commit and detach the method, remove the closed channels."""
        inst, algo = self.inst, self.algo
        selection = algo.select()
        if self.structured:
            if self.distributed:
                selection = dist_util.broadcast_object(selection)
            inst.set_masks(selection.masks)
            inst.mode = "binary"
        method_report = algo.report()
        if self.structured and self.distributed:
            method_report = dist_util.broadcast_object(method_report)
        algo.commit(selection)
        algo.detach()
        if self.structured:
            pruned = inst.finalize(verify=True)
        else:  # unstructured (aswl): commit wrote zeros into the dense weights, no channel removed
            inst.remove()
            pruned = self.work
        return pruned, selection, method_report

    def save_pruned(self, phase_index, epoch, pruned, optim, selection, method_report) -> None:
        self.save("finetune", phase_index, epoch, pruned, optim, {
            "masks": self.inst.masks(),
            "selection": {f.name: getattr(selection, f.name) for f in dataclasses.fields(selection)},
            "method_report": _plain(method_report),
        })

    def rebuild(self, saved: dict) -> nn.Module:
        """The pruned architecture from the saved masks, with the saved weights."""
        inst, algo = self.inst, self.algo
        if self.structured:
            inst.set_masks(saved["masks"])
            inst.mode = "binary"
            algo.detach()
            pruned = inst.finalize(verify=False)
        else:
            algo.detach()
            inst.remove()
            pruned = self.work
        pruned.load_state_dict(saved["model"])
        return pruned


def _kept_fraction(inst: Instrumented) -> float:
    params, _ = inst.count()
    return params / inst.cost.dense_params
