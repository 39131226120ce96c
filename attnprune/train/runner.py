"""The schedule runner: trains a model through a method's phases.

Each :class:`~attnprune.methods.base.Phase` decides which parameters train (the
CNN's, the method's, or both), the gate mode and whether BatchNorm runs in eval
mode. A fresh optimiser is built for each phase (so one built before channels
were removed is never reused), with cosine learning-rate decay over the phase
(torch's ``CosineAnnealingLR``, ``T_max`` = the phase's steps, ``eta_min`` 0; per
epoch instead for a loader without a length). Progress bars (tqdm) show the
phase's position (``phase 3/6 an``), epoch, loss, the kept fraction and, with an
``eval_loader``, the last accuracy; every epoch's record goes to the
``"attnprune"`` logger and to the user's callbacks
(:mod:`attnprune.train.callbacks`). With ``amp`` the steps run under autocast
(:mod:`attnprune.train.amp`).

With a ``seed``, the runner reseeds the loader before every epoch, so that the
batch order of the run's ``k``-th epoch depends only on ``(seed, k)``; the rule
is in :mod:`attnprune.train.seeding`.

A phase can be resumed at an epoch boundary from :meth:`Runner.phase_state`
(optimiser and scheduler states, step counter). With ``distributed=True`` the
model and the method's parameters train inside DistributedDataParallel, rebuilt
for every phase (:mod:`attnprune.train.distributed`). A NaN or infinite loss raises
:class:`TrainingDivergedError` (on every rank at once).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .._batch import call_model as _call, to_device as _to, unpack_batch
from .._modes import eval_mode, grad_flags
from ..errors import AttnpruneError
from ..methods.base import Phase, PruningMethod
from . import distributed as dist_util
from .amp import autocast, grad_scaler
from .callbacks import notify_epoch
from .divergence import diagnose
from .scoring import Metric, batch_counts, check_metric
from .seeding import seed_epoch

__all__ = ["Runner", "evaluate", "TrainingDivergedError", "EpochRecord"]


class TrainingDivergedError(AttnpruneError, FloatingPointError):
    """The loss became NaN or infinite during training."""


@dataclass
class EpochRecord:
    """One line of the report's history."""

    phase: str
    epoch: int
    loss: float
    kept: float | None = None
    accuracy: float | None = None
    seconds: float = 0.0


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device=None, max_batches: int | None = None, *,
             distributed: bool = False, metric: Metric | None = None) -> float:
    """Top-1 accuracy (in %) of ``model`` over ``loader`` in eval mode, or ``metric``'s score; modes restored.

    Args:
        model: The model.
        loader: Yields ``(inputs, targets)``.
        device: Where batches go (None: where they are).
        max_batches: Stop after this many batches.
        distributed: Sum the counts over the processes of the default process group
            (each rank evaluating its shard gives the accuracy over all shards).
        metric: ``metric(outputs, targets)`` per batch, returning ``(correct, total)``
            or a mean score in [0, 1] (:mod:`attnprune.train.scoring`); default
            :func:`~attnprune.train.scoring.top1`, which refuses target shapes it
            cannot score (e.g. ``(N, 1)``) instead of broadcasting them.

    Returns:
        ``100 * sum(correct) / sum(total)``.

    Raises:
        ValueError: The loader yielded no batch, or targets the metric cannot score.
    """
    metric = check_metric(metric)
    correct = total = 0.0
    batches = 0
    with eval_mode(model):
        for i, batch in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            x, y = unpack_batch(batch)
            x, y = _to(x, device), _to(y, device)
            c, t = batch_counts(metric, _call(model, x), y)
            correct, total, batches = correct + c, total + t, batches + 1
    if distributed:
        counts = dist_util.all_reduce_sum(torch.tensor([correct, total, batches], dtype=torch.float64,
                                                       device=_counts_device(model)))
        correct, total, batches = (float(v) for v in counts.cpu())
    if batches == 0:
        raise ValueError("eval_loader yielded no batch; it must yield (inputs, targets) pairs "
                         "(and be re-iterable: a DataLoader or a list)")
    return 100.0 * correct / max(total, 1)


def _counts_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _optimizer(kind: str, params, lr: float, momentum: float, weight_decay: float):
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=momentum > 0)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def _bn_eval(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, _BATCH_NORMS):
            m.eval()


@dataclass
class _Optimisation:
    """The optimisers, schedulers and step counter of the phase running now."""

    optimizers: list
    schedulers: list
    per_epoch: bool  # the schedulers step once per epoch (a loader without a length)
    step: int = 0

    def state_dict(self) -> dict:
        return {"optimizers": [o.state_dict() for o in self.optimizers],
                "schedulers": [s.state_dict() for s in self.schedulers],
                "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        if len(state["optimizers"]) != len(self.optimizers):
            raise ValueError("the saved phase state does not match the phase (optimiser count differs)")
        for o, s in zip(self.optimizers, state["optimizers"]):
            o.load_state_dict(s)
        for sch, s in zip(self.schedulers, state["schedulers"]):
            sch.load_state_dict(s)
        self.step = int(state["step"])


@dataclass
class Runner:
    """Runs phases of training.

    Attributes:
        loader: Yields ``(inputs, targets)``.
        loss_fn: ``loss_fn(outputs, targets) -> scalar``.
        device: Where batches go.
        eval_loader: Optional; accuracy is recorded after each epoch when given.
        eval_metric: The metric of :func:`evaluate` (None: top-1 accuracy).
        steps_per_epoch: Cap on batches per epoch.
        progress: Show tqdm bars.
        history: Filled with :class:`EpochRecord` entries.
        distributed: Train with DistributedDataParallel over the default process
            group (see :mod:`attnprune.train.distributed`).
        epochs_done: Epochs run so far over every phase: epoch ``k`` of the run
            (``k = epochs_done`` when it starts) is prepared by
            :func:`attnprune.train.seeding.seed_epoch`.
        seed: None: the loader is not reseeded (a sampler with ``set_epoch``, e.g.
            ``DistributedSampler``, still gets ``epochs_done``). An int: before
            every epoch the loader's own torch generators are seeded with
            ``epoch_seed(seed, epochs_done)``, or torch's global generator when
            the loader has none, so each epoch's batch order depends only on
            ``(seed, epochs_done)``, not on what drew from the loader before.
        callbacks: Called as ``callback(record)`` after every epoch (rank 0 only).
        amp: None, ``"bfloat16"`` or ``"float16"``: autocast for the training steps.
        phase_total: Phases of the whole run, shown as ``phase i/phase_total``.
        log_epochs: Log every epoch's record to the ``"attnprune"`` logger.
    """

    loader: Iterable
    loss_fn: Callable
    device: torch.device | None = None
    eval_loader: Iterable | None = None
    steps_per_epoch: int | None = None
    progress: bool = True
    history: list[EpochRecord] = field(default_factory=list)
    distributed: bool = False
    epochs_done: int = 0
    seed: int | None = None
    eval_metric: Metric | None = None
    callbacks: list = field(default_factory=list)
    amp: str | None = None
    phase_total: int | None = None
    log_epochs: bool = True

    def __post_init__(self):
        self._live: _Optimisation | None = None
        self._position: int | None = None
        self._scaler = grad_scaler(self.amp, self.device)

    def steps_in_epoch(self) -> int | None:
        """Batches in one epoch (None when the loader has no length)."""
        try:
            n = len(self.loader)
        except TypeError:
            return self.steps_per_epoch
        return n if self.steps_per_epoch is None else min(n, self.steps_per_epoch)

    def phase_state(self) -> dict | None:
        """Optimiser and scheduler states and the step counter of the phase running now.

        Valid inside an ``on_epoch_end`` callback of :meth:`run`; None outside a
        phase. ``run(..., resume=state)`` continues the phase from it.
        """
        return None if self._live is None else self._live.state_dict()

    def run(self, model: nn.Module, phase: Phase, method: PruningMethod | None = None, kept=None, *,
            start_epoch: int = 0, resume: dict | None = None, on_start: Callable[[], None] | None = None,
            on_epoch_end: Callable[[Phase, int], None] | None = None, position: int | None = None) -> None:
        """Train ``model`` for ``phase.epochs`` epochs as ``phase`` says.

        Args:
            model: The (instrumented or plain) model.
            phase: What to train and how.
            method: The attached method, or None for plain training (fine-tuning).
            kept: Optional callable returning the kept fraction, for display.
            start_epoch: Epochs of the phase already done (resuming).
            resume: :meth:`phase_state` saved at the end of epoch ``start_epoch``.
            on_start: Called after ``method.start_phase`` and before training (and
                before ``resume`` is loaded); ``prune()`` restores a checkpoint's
                method state and random states there.
            on_epoch_end: Called as ``on_epoch_end(phase, epoch)`` (``epoch``
                counted from 0 within the phase) after the epoch's record is
                appended to :attr:`history`; :meth:`phase_state` is valid there
                (``prune()`` writes checkpoints there).
            position: The phase's place in the run (from 1), shown with :attr:`phase_total`.

        Raises:
            TrainingDivergedError: The loss became NaN or infinite.
            ValueError: The loader yielded no batch in an epoch.
        """
        if phase.epochs <= 0 or start_epoch >= phase.epochs:
            return
        self._position = position
        live, frozen = self._build_optimisation(model, phase, method)
        if method is not None:
            method.start_phase(phase)
            if self.distributed:
                dist_util.sync_method(method)
        if on_start is not None:
            on_start()
        if resume is not None:
            live.load_state_dict(resume)
        self._live = live
        net = None
        try:
            with grad_flags(frozen, False):  # frozen parameters cost no backward work
                net = self._network(model, method)
                for epoch in range(start_epoch, phase.epochs):
                    self._epoch(net, model, phase, method, epoch, kept)
                    if on_epoch_end is not None:
                        on_epoch_end(phase, epoch)
        finally:
            self._live = None
            net = None  # the DDP wrapper (and its gradient hooks) goes with the phase

    # -- the parts of a phase --------------------------------------------------------
    def _build_optimisation(self, model: nn.Module, phase: Phase, method: PruningMethod | None):
        """Optimisers and cosine schedulers for what trains in ``phase``; and what is frozen."""
        model_params = [p for p in model.parameters() if p.requires_grad]
        method_params = method.parameters() if method is not None else []
        optimizers = []
        if phase.train_model:
            optimizers.append(_optimizer(phase.optimizer, model_params, phase.lr, phase.momentum,
                                         phase.weight_decay))
        if phase.train_method and method_params:
            optimizers.append(_optimizer(phase.method_optimizer, method_params, phase.method_lr, 0.9, 0.0))
        n_batches = self.steps_in_epoch()
        per_epoch = n_batches is None
        t_max = phase.epochs * (1 if per_epoch else max(n_batches, 1))
        schedulers = [torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=t_max, eta_min=0.0) for o in optimizers]
        frozen = ([] if phase.train_model else model_params) + ([] if phase.train_method else method_params)
        return _Optimisation(optimizers, schedulers, per_epoch), frozen

    def _network(self, model: nn.Module, method: PruningMethod | None) -> nn.Module:
        """What the forward runs through: ``model``, or DDP around it and the method's trainables."""
        if not self.distributed:
            return model
        trainable = [p for p in method.parameters() if p.requires_grad] if method is not None else []
        return dist_util.wrap(model, trainable, self.device)

    def _batches(self):
        for i, batch in enumerate(self.loader):
            if self.steps_per_epoch is not None and i >= self.steps_per_epoch:
                return
            yield batch

    def _epoch(self, net: nn.Module, model: nn.Module, phase: Phase, method: PruningMethod | None, epoch: int,
               kept) -> None:
        """One pass over the loader, then the epoch's record (and accuracy) in :attr:`history`."""
        t0 = time.perf_counter()
        model.train()
        if phase.bn_eval:
            _bn_eval(model)
        seed_epoch(self.loader, self.seed, self.epochs_done)
        show = self.progress and dist_util.is_main()
        total_loss, count = 0.0, 0
        where = self._where()
        bar = tqdm(self._batches(), total=self.steps_in_epoch(), disable=not show, leave=False,
                   desc=(f"phase {where[0]}/{where[1]} " if where else "") + f"{phase.name} {epoch + 1}/{phase.epochs}")
        last_acc = next((r.accuracy for r in reversed(self.history) if r.accuracy is not None), None)
        for batch in bar:
            total_loss += self._step(net, phase, method, batch, epoch)
            count += 1
            if show and count % 10 == 0:
                post = {"loss": f"{total_loss / count:.3f}"}
                if kept is not None:
                    post["kept"] = f"{kept():.3f}"
                if last_acc is not None:
                    post["acc"] = f"{last_acc:.1f}%"
                bar.set_postfix(post)
        if count == 0:
            raise ValueError("the loader yielded no batch; it must yield (inputs, targets) pairs")
        if self._live.per_epoch:
            for s in self._live.schedulers:
                s.step()
        self.epochs_done += 1
        if self.distributed:
            dist_util.sync_module(model)
        rec = EpochRecord(phase=phase.name, epoch=epoch + 1, loss=total_loss / count,
                          kept=None if kept is None else float(kept()))
        if self.eval_loader is not None:
            rec.accuracy = evaluate(model, self.eval_loader, self.device, distributed=self.distributed,
                                    metric=self.eval_metric)
        rec.seconds = time.perf_counter() - t0
        self.history.append(rec)
        if dist_util.is_main() and (self.log_epochs or self.callbacks):
            notify_epoch(self.callbacks, rec, phase.epochs, where, log=self.log_epochs)

    def _where(self) -> tuple[int, int] | None:
        """``(position, phase_total)`` of the phase running, when both are known."""
        if self._position is None or self.phase_total is None:
            return None
        return self._position, self.phase_total

    def _step(self, net: nn.Module, phase: Phase, method: PruningMethod | None, batch, epoch: int) -> float:
        """One optimisation step on ``batch``; returns its task loss (averaged over ranks)."""
        live = self._live
        x, y = unpack_batch(batch)
        x, y = _to(x, self.device), _to(y, self.device)
        if method is not None:
            method.before_step(phase, live.step)
        with autocast(self.amp, self.device):
            task_loss = self.loss_fn(_call(net, x), y)
            reg = method.regularizer(phase) if method is not None else None
            loss = task_loss if reg is None else task_loss + reg
        values = torch.stack([task_loss.detach().float().reshape(()), loss.detach().float().reshape(())])
        if self.distributed:  # every rank sees the same values, so all stop together
            values = dist_util.all_reduce_sum(values) / dist_util.world_size()
        task, total = (float(v) for v in values.cpu())
        if not math.isfinite(total):
            raise TrainingDivergedError(
                f"loss became {total} in phase {phase.name!r}, epoch {epoch + 1}, "
                f"step {live.step + 1}: {diagnose(x, net, task_loss, phase.lr)}"
            )
        for o in live.optimizers:
            o.zero_grad(set_to_none=True)
        scaler = self._scaler
        (loss if scaler is None else scaler.scale(loss)).backward()
        for o, s in zip(live.optimizers, live.schedulers):
            if scaler is None:
                o.step()
            else:
                scaler.step(o)
            if not live.per_epoch:
                s.step()
        if scaler is not None:
            scaler.update()
        if method is not None:
            method.after_step(phase, live.step)
        live.step += 1
        return task
