"""The schedule runner: trains a model through a method's phases.

Each :class:`~attnprune.methods.base.Phase` decides which parameters train (the
CNN's, the method's, or both), the gate mode and whether BatchNorm runs in eval
mode. A fresh optimiser is built for each phase (so one built before channels
were removed is never reused), with cosine learning-rate decay over the phase.
Progress bars (tqdm) show phase, epoch, loss and the kept fraction.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ._batch import call_model as _call, to_device as _to, unpack_batch
from .errors import AttnpruneError
from .methods.base import Phase, PruningMethod

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
def evaluate(model: nn.Module, loader: Iterable, device=None, max_batches: int | None = None) -> float:
    """Top-1 accuracy (in %) of ``model`` over ``loader`` in eval mode; modes restored."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    correct = total = 0
    try:
        for i, batch in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            x, y = unpack_batch(batch)
            x, y = _to(x, device), _to(y, device)
            pred = _call(model, x).argmax(1)
            correct += int((pred == y).sum())
            total += int(y.numel())
    finally:
        for m, t in modes.items():
            m.training = t
    return 100.0 * correct / max(total, 1)


@contextlib.contextmanager
def _frozen(params: list[nn.Parameter]):
    """Temporarily stop gradients to ``params`` (they then cost no backward work)."""
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)


def _optimizer(kind: str, params, lr: float, momentum: float, weight_decay: float):
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=momentum > 0)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def _bn_eval(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


@dataclass
class Runner:
    """Runs phases of training.

    Attributes:
        loader: Yields ``(inputs, targets)``.
        loss_fn: ``loss_fn(outputs, targets) -> scalar``.
        device: Where batches go.
        eval_loader: Optional; accuracy is recorded after each epoch when given.
        steps_per_epoch: Cap on batches per epoch.
        progress: Show tqdm bars.
        history: Filled with :class:`EpochRecord` entries.
        on_epoch_end: Optional callback ``(phase, epoch)`` (checkpoints).
    """

    loader: Iterable
    loss_fn: Callable
    device: torch.device | None = None
    eval_loader: Iterable | None = None
    steps_per_epoch: int | None = None
    progress: bool = True
    history: list[EpochRecord] = field(default_factory=list)
    on_epoch_end: Callable | None = None

    def _batches(self):
        for i, batch in enumerate(self.loader):
            if self.steps_per_epoch is not None and i >= self.steps_per_epoch:
                return
            yield batch

    def steps_in_epoch(self) -> int | None:
        """Batches in one epoch (None when the loader has no length)."""
        return self._n_batches()

    def _n_batches(self) -> int | None:
        try:
            n = len(self.loader)
        except TypeError:
            return self.steps_per_epoch
        return n if self.steps_per_epoch is None else min(n, self.steps_per_epoch)

    def run(self, model: nn.Module, phase: Phase, method: PruningMethod | None = None, kept=None) -> None:
        """Train ``model`` for ``phase.epochs`` epochs as ``phase`` says.

        Args:
            model: The (instrumented or plain) model.
            phase: What to train and how.
            method: The attached method, or None for plain training (fine-tuning).
            kept: Optional callable returning the kept fraction, for display.
        """
        if phase.epochs <= 0:
            return
        model_params = [p for p in model.parameters() if p.requires_grad]
        method_params = method.parameters() if method is not None else []
        groups = []
        if phase.train_model:
            groups.append(("model", model_params, phase.optimizer, phase.lr, phase.momentum, phase.weight_decay))
        if phase.train_method and method_params:
            groups.append(("method", method_params, phase.method_optimizer, phase.method_lr, 0.9, 0.0))
        opts = [_optimizer(kind, params, lr, mom, wd) for _, params, kind, lr, mom, wd in groups]
        n_batches = self._n_batches()
        total_steps = phase.epochs * (n_batches or 1)
        scheds = [torch.optim.lr_scheduler.LambdaLR(o, lambda s: 0.5 * (1 + math.cos(math.pi * min(s / total_steps, 1.0)))) for o in opts]
        frozen = ([] if phase.train_model else model_params) + ([] if phase.train_method else method_params)
        if method is not None:
            method.start_phase(phase)
        step = 0
        with _frozen(frozen):
            for epoch in range(phase.epochs):
                t0 = time.perf_counter()
                model.train()
                if phase.bn_eval:
                    _bn_eval(model)
                total_loss, count = 0.0, 0
                bar = tqdm(self._batches(), total=n_batches, disable=not self.progress, leave=False,
                           desc=f"{phase.name} {epoch + 1}/{phase.epochs}")
                for batch in bar:
                    x, y = unpack_batch(batch)
                    x, y = _to(x, self.device), _to(y, self.device)
                    if method is not None:
                        method.before_step(phase, step)
                    loss = self.loss_fn(_call(model, x), y)
                    task = float(loss.detach())
                    reg = method.regularizer(phase) if method is not None else None
                    if reg is not None:
                        loss = loss + reg
                    if not math.isfinite(float(loss.detach())):
                        raise TrainingDivergedError(
                            f"loss became {float(loss.detach())} in phase {phase.name!r}, epoch {epoch + 1}, "
                            f"step {step + 1}; lower the learning rate (lr={phase.lr})"
                        )
                    for o in opts:
                        o.zero_grad(set_to_none=True)
                    loss.backward()
                    for o, s in zip(opts, scheds):
                        o.step()
                        s.step()
                    if method is not None:
                        method.after_step(phase, step)
                    step += 1
                    total_loss += task
                    count += 1
                    if self.progress and count % 10 == 0:
                        post = {"loss": f"{total_loss / count:.3f}"}
                        if kept is not None:
                            post["kept"] = f"{kept():.3f}"
                        bar.set_postfix(post)
                if count == 0:
                    raise ValueError("the loader yielded no batch; it must yield (inputs, targets) pairs")
                rec = EpochRecord(phase=phase.name, epoch=epoch + 1, loss=total_loss / count,
                                  kept=None if kept is None else float(kept()))
                if self.eval_loader is not None:
                    rec.accuracy = evaluate(model, self.eval_loader, self.device)
                rec.seconds = time.perf_counter() - t0
                self.history.append(rec)
                if self.on_epoch_end is not None:
                    self.on_epoch_end(phase, epoch)
