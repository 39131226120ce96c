"""Knowledge distillation from the network before pruning, for every method.

With ``prune(..., distill=True)`` (or a :class:`Distillation`), the network as it
is when the first method phase starts (after the warm-up, if any) is copied,
frozen and kept as a *teacher*; the phases that train the CNN's weights and the
fine-tuning of the pruned model then minimise::

    (1 - w) * loss_fn(s, y)  +  w * T**2 * KL( softmax(t / T) || softmax(s / T) )

with ``s`` the student's logits (the model being pruned), ``t`` the teacher's on
the same batch, ``T`` the temperature and ``w`` the weight. This is the soft-target
objective of Hinton, Vinyals and Dean, *Distilling the Knowledge in a Neural
Network* (NIPS 2014 Deep Learning Workshop, arXiv:1503.02531, 2015): the gradients
of the soft term scale as ``1/T^2``, so it is multiplied by ``T^2`` to keep its
share of the gradient when ``T`` changes. The KL divergence is summed over the
classes (dimension 1 of the logits) and averaged over the samples (and over any
further positions, e.g. pixels of ``(N, C, H, W)`` logits): PyTorch's
``kl_div(..., reduction="batchmean")`` for ``(N, C)`` logits. The task loss is
the run's ``loss_fn``. ``w = 0`` gives the undistilled run bit for bit (the soft
term's gradient is an exact zero).

Which phases: those with ``Phase.train_model`` at or after the first method
phase (PAAM's and SBF's CNN phases, ABP's and ASWL's joint phases, slim's
sparsity phase with ``trained=True``, ...) and the fine-tuning. Not the warm-up
(there is no teacher yet: the teacher *is* the warmed-up network) and not the
phases that train only the method's parameters with the CNN frozen (PAAM's
attention phases): there the gates learn which channels the task can spare, and a
soft-target term would only reweight that signal towards the teacher the gated
network is derived from; the weights it would distil are frozen anyway.

The teacher is a copy of the user's model (its architecture, never
instrumented) holding the working copy's weights and buffers at that moment, in
eval mode, every parameter ``requires_grad=False``, on the training device. It is
not part of the working model: it never appears in the pruned model, in its
``state_dict`` or in the checkpoint's ``model`` entry; checkpoints carry its state
under a key of its own (``teacher``), so a resumed run rebuilds it bit for bit. It
is dropped when the run ends (or fails).

Integration: the schedule runner is given nothing new. For a distilled phase a
:class:`Distiller` registers one forward pre-hook on the student (it captures the
batch's inputs; the runner's call, or DistributedDataParallel's, reaches it) and
sets the runner's ``loss_fn`` to the distilled objective, which runs the teacher
on the captured inputs under ``torch.no_grad()``; both are undone when the phase
ends, also on an error.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import numbers
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._batch import call_model
from .._modes import eval_mode
from ..errors import DistillationError
from ..methods.base import Phase

__all__ = ["AUTO", "auto_distillation",
           "Distillation", "Distiller", "resolve_distill", "soft_target_loss", "check_logits",
           "check_distillable", "teacher_phase", "distilled_phases", "WARMUP"]

#: The name of the base class's warm-up phase (:meth:`attnprune.PruningMethod.phases`): no method phase.
WARMUP = "warmup"


@dataclass(frozen=True)
class Distillation:
    """Distillation settings (Hinton et al., 2015): ``(1-w)·task + w·T²·KL(p_t ‖ p_s)``.

    Attributes:
        temperature: ``T`` > 0, softening both distributions (``softmax(logits / T)``);
            Hinton et al. use values from 2 to 20.
        weight: ``w`` in [0, 1], the soft-target term's share of the loss (0: the
            task loss alone, bit for bit; 1: the soft targets alone).

    Raises:
        DistillationError: A value of the wrong type or out of range (the message
            names it and the valid range).
    """

    temperature: float = 4.0
    weight: float = 0.5

    def __post_init__(self):
        t = _number("temperature", self.temperature, "a number > 0")
        if not t > 0:
            raise DistillationError(f"distill temperature must be > 0, got {self.temperature!r}")
        w = _number("weight", self.weight, "a number in [0, 1]")
        if not 0.0 <= w <= 1.0:
            raise DistillationError(f"distill weight must lie in [0, 1], got {self.weight!r}")
        object.__setattr__(self, "temperature", t)
        object.__setattr__(self, "weight", w)


def _number(name: str, value, valid: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise DistillationError(f"distill {name} must be {valid}, got {value!r}")
    return float(value)


#: ``prune(distill=AUTO)``, the default: on where it is defined (see :func:`auto_distillation`).
AUTO = "auto"


def resolve_distill(distill) -> Distillation | str | None:
    """``prune(distill=...)`` as settings, :data:`AUTO`, or None (off).

    Args:
        distill: ``"auto"`` (the default: :func:`auto_distillation` decides once the
            model is known), None or False (off), True (the default
            :class:`Distillation`), or a :class:`Distillation`.

    Raises:
        DistillationError: Anything else (the message lists the valid values).
    """
    if distill is None or distill is False:
        return None
    if isinstance(distill, str) and distill == AUTO:
        return AUTO
    if distill is True:
        return Distillation()
    if isinstance(distill, Distillation):
        return distill
    raise DistillationError(f"distill must be 'auto', None, False, True or attnprune.Distillation(temperature=..., "
                            f"weight=...), got {type(distill).__name__} {distill!r}")


def soft_target_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T² · KL(softmax(t/T) ‖ softmax(s/T))`` over dimension 1, averaged over the rest (float32).

    Args:
        student: The student's logits ``(N, C, ...)``.
        teacher: The teacher's logits, the same shape (no gradient flows into them).
        temperature: ``T`` > 0.
    """
    t = float(temperature)
    log_s = F.log_softmax(student.float() / t, dim=1)
    log_t = F.log_softmax(teacher.detach().float() / t, dim=1)
    kl = (log_t.exp() * (log_t - log_s)).sum(dim=1)
    return (t * t) * kl.mean()


def check_logits(outputs, who: str = "the model") -> torch.Tensor:
    """``outputs`` if they are class logits distillation can soften, else a clear error.

    Raises:
        DistillationError: Not a floating tensor of shape ``(N, C, ...)`` with
            ``C >= 2`` (a tuple or dict of outputs, a single logit, a regression value).
    """
    if not isinstance(outputs, torch.Tensor):
        raise DistillationError(
            f"distillation needs {who} to return one logits tensor (N, classes); it returned a "
            f"{type(outputs).__name__}: a KL term on softened logits is not defined for it (pass distill=None)")
    if not outputs.is_floating_point() or outputs.dim() < 2 or outputs.shape[1] < 2:
        raise DistillationError(
            f"distillation needs {who} to return class logits of shape (N, classes, ...) with at least 2 "
            f"classes along dimension 1; got a {outputs.dtype} tensor of shape {tuple(outputs.shape)} "
            "(pass distill=None)")
    return outputs


def check_distillable(model: nn.Module, example_inputs) -> None:
    """One eval-mode forward of ``model`` without gradients: its outputs must be logits (before training).

    Raises:
        DistillationError: As :func:`check_logits`.
    """
    with eval_mode(model), torch.no_grad():
        check_logits(call_model(model, example_inputs))


def auto_distillation(model: nn.Module, example_inputs, custom_loss: bool,
                      trained: bool = True) -> Distillation | None:
    """What ``distill="auto"`` means for this model: :class:`Distillation` () or None.

    On for a trained model (``trained=True``) when the loss is the default
    cross-entropy and the model returns class logits ``(N, classes, ...)`` (one
    eval-mode forward without gradients). Off for a run from scratch (the teacher
    would be the network after its short warm-up), for a user's ``loss_fn`` (a KL
    term on softmax outputs may not fit its task) and for other outputs. Measured
    on the paired benchmark (``benchmarks/RESULTS.md``): from a trained start, +0.6
    to +2.2 top-1 points for every method tried; from a 2-pass warm-up a loss
    (ResNet-20, 3 seeds: PAAM undistilled was +2.39 [+0.26, +4.52] points better
    at 70% of params and +1.25 [+0.26, +2.24] at 90%; distilled taylor-iterative
    -1.43 [-2.05, -0.81] against plain at 70%).
    """
    if custom_loss or not trained:
        return None
    try:
        check_distillable(model, example_inputs)
    except DistillationError:
        return None
    return Distillation()


def teacher_phase(phases: Sequence[Phase]) -> int:
    """Index of the first method phase (the first one that is not the warm-up): the teacher is taken there.

    ``len(phases)`` when every phase is a warm-up (a baseline from scratch): the
    teacher is then the warmed-up network, taken before the channels are removed.
    """
    return next((i for i, p in enumerate(phases) if p.name != WARMUP), len(phases))


def distilled_phases(phases: Sequence[Phase], finetune: Phase) -> list[str]:
    """Names of the phases a distilled run distils, in order (repeated names once)."""
    names = [p.name for p in phases[teacher_phase(phases):] if p.train_model and p.epochs > 0]
    if finetune.epochs > 0:
        names.append(finetune.name)
    return list(dict.fromkeys(names))


def _teacher_state(work: nn.Module, keys) -> dict:
    """The working copy's tensors under the user's model's names (parametrized weights: their originals)."""
    state = work.state_dict()
    out = {}
    for key in keys:
        prefix, _, name = key.rpartition(".")
        original = f"{prefix}.parametrizations.{name}.original" if prefix else f"parametrizations.{name}.original"
        if key in state:
            out[key] = state[key]
        elif original in state:  # e.g. ASWL's weight masks (torch.nn.utils.parametrize)
            out[key] = state[original]
        else:
            raise DistillationError(f"cannot build the teacher: the working model has no {key!r} "
                                    "(its state does not match the model's)")
    return out


class Distiller:
    """The run's teacher and the distilled loss of its phases (see the module docstring).

    Args:
        setting: Temperature and weight.
        template: The user's model: the teacher is a copy of it (never of the
            instrumented working copy) loaded with the working copy's weights.
        device: Where the teacher lives (the training device).
        phases: The method's phases; the teacher is taken when phase
            :func:`teacher_phase` starts.

    Attributes:
        teacher: The frozen teacher, or None (not taken yet, or released).
        start: The index of the phase the teacher is taken at.
    """

    def __init__(self, setting: Distillation, template: nn.Module, device, phases: Sequence[Phase]):
        self.setting, self.template, self.device = setting, template, device
        self.start = teacher_phase(phases)
        self.teacher: nn.Module | None = None
        self._captured: tuple | None = None

    # -- the teacher -----------------------------------------------------------------
    def take(self, work: nn.Module) -> nn.Module:
        """Make the teacher from ``work``'s weights and buffers now."""
        teacher = copy.deepcopy(self.template)
        teacher.load_state_dict(_teacher_state(work, teacher.state_dict().keys()))
        return self._freeze(teacher)

    def _freeze(self, teacher: nn.Module) -> nn.Module:
        teacher = teacher.to(self.device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
            p.grad = None  # a copy of the user's model may carry their gradients
        self.teacher = teacher
        return teacher

    def at_phase(self, index: int, work: nn.Module, *, mid_phase: bool = False) -> None:
        """Called before phase ``index`` runs (``len(phases)``: before the removal); takes the teacher at :attr:`start`.

        Raises:
            DistillationError: Resuming past the teacher's phase without it in the
                checkpoint (a checkpoint of this run always holds it).
        """
        if self.teacher is not None or index < self.start:
            return
        if index > self.start or mid_phase:
            self.require()
        self.take(work)

    def require(self) -> None:
        """Check the teacher exists (the run is past the phase that takes it).

        Raises:
            DistillationError: It does not: a resumed checkpoint lacked it (a
                checkpoint of this run always holds it).
        """
        if self.teacher is None:
            raise DistillationError("the checkpoint holds no distillation teacher although the run is past the "
                                    "phase that takes it; pass resume=False to start over")

    def release(self) -> None:
        """Drop the teacher (the run is over, or failed) and anything captured."""
        self.teacher = None
        self._captured = None

    # -- checkpoints -------------------------------------------------------------------
    def state_dict(self) -> dict:
        """``{"teacher": its state dict or None}``, in every checkpoint of a distilled run."""
        return {"teacher": None if self.teacher is None else self.teacher.state_dict()}

    def load_state_dict(self, saved: dict) -> None:
        """Rebuild the teacher from a checkpoint (nothing when it was not taken yet)."""
        if "teacher" not in saved:
            raise DistillationError("the checkpoint has no 'teacher' entry although the run distils; it is "
                                    "damaged or was edited: pass resume=False to start over")
        state = saved["teacher"]
        if state is not None:
            teacher = copy.deepcopy(self.template)
            teacher.load_state_dict(state)
            self._freeze(teacher)

    # -- the distilled phases -----------------------------------------------------
    def distils(self, phase: Phase) -> bool:
        """Whether ``phase`` trains with the soft-target term (it trains the CNN, and the teacher exists)."""
        return phase.train_model and self.teacher is not None

    @contextlib.contextmanager
    def applied(self, runner, model: nn.Module, phase: Phase) -> Iterator[None]:
        """Inside the block, ``runner`` trains ``phase`` of ``model`` with the distilled loss (if it distils).

        Registers one forward pre-hook on ``model`` and replaces ``runner.loss_fn``;
        both are restored on exit, also on an error.
        """
        if not self.distils(phase):
            yield
            return
        task = runner.loss_fn
        handle = model.register_forward_pre_hook(self._capture, with_kwargs=True)
        runner.loss_fn = self.loss(task)
        try:
            yield
        finally:
            runner.loss_fn = task
            handle.remove()
            self._captured = None

    def _capture(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self._captured = (args, kwargs)

    def loss(self, task: Callable) -> Callable:
        """``loss(outputs, targets)``: the distilled objective around the task loss ``task``.

        The teacher runs on the inputs of the student's latest forward (captured
        by :meth:`applied`'s hook) without gradients.
        """
        w, temperature = self.setting.weight, self.setting.temperature

        def distilled(outputs, targets):
            captured, self._captured = self._captured, None
            if captured is None or self.teacher is None:
                raise DistillationError("the distilled loss was called without a student forward pass before it")
            args, kwargs = captured
            with torch.no_grad():
                teacher_out = self.teacher(*args, **kwargs)
            s = check_logits(outputs, "the model being pruned")
            t = check_logits(teacher_out, "the teacher")
            return (1.0 - w) * task(outputs, targets) + w * soft_target_loss(s, t, temperature)

        return distilled

    def report(self, phases: Sequence[Phase], finetune: Phase) -> dict:
        """The run record's ``distill`` entry: temperature, weight, where the teacher came from, phases distilled."""
        return {**dataclasses.asdict(self.setting),
                "teacher": "after warm-up" if self.start > 0 else "the model as given",
                "phases": distilled_phases(phases, finetune)}
