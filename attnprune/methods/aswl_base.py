"""ASWL's shared mechanism: Attention-based Simultaneous sparse structure and Weight Learning (He, Shi, Dong).

Paper: Q. He, W. Shi, M. Dong, *Learning Pruned Structure and Weights Simultaneously
from Scratch: an Attention Based Approach*, preprint, arXiv:2111.02399, 2022 (section 3,
Algorithm 1). The reading used here (see ``docs/methods.md``):

* one attention scalar ``a_l in (0, 1]`` per layer, initialised to 0.5, multiplies
  the layer's output (section 3.1);
* the layer's pruning ratio is ``p_l = min(0.99, beta * (1 - a_l))`` (eq. 2),
  ``beta`` the pruning factor. (The paper's tables, where a *smaller* factor gives
  a *higher* ratio, would also fit ``(1 - a_l) ** beta``; the lost glyph cannot tell.
  Only the relative ``a_l`` matter here, since ``beta`` is calibrated.)
* every iteration the smallest ``p_l`` fraction of layer ``l``'s weights (by
  magnitude) is masked in the forward pass; the dense weights are kept and
  updated, so a pruned weight can come back (section 3.3, Algorithm 1);
* loss = task + ``lam * S(A)**2`` (eq. 1, 4) + L2 on weights, where
  ``S(A) = sum_l (1 - p_l) n_l / sum_l n_l`` (eq. 3) is the kept fraction.

Choices where the paper is silent or does not fit a library:

* ``beta`` during training: ``beta=None`` (default) re-solves ``beta`` every step so
  the masks in force meet a budget that ramps from 0 to ``ratio`` over
  ``ramp_epochs``: the masks trained are the masks kept. An explicit ``beta`` is the
  paper's fixed factor during training (the ratio is then reached only by the final
  calibration). In both cases ``lam * S(A)**2`` pushes every ``a_l`` down in
  proportion to the layer's size, and the task pushes back on the layers it needs;
  the final ``beta`` turns the learned ``a_l`` into per-layer ratios.
* Where ``a_l`` gets its task gradient: after layer ``l``'s norm, the scale passes
  ReLU and the next conv unchanged and a *train-mode* BatchNorm further on cancels
  it; so in a plain chain only the regulariser moves ``a_l``, while residual
  branches (scaled against the identity) and the head get a real task gradient.
  That is the paper's mechanism, kept as is.
* L2: the optimiser's weight decay (on the dense weights; the paper's eq. 1 puts it
  on the masked ones).
* ``a_l`` is kept in ``[a_min, 1 - a_min]`` by projection after each step, and
  trains with Adam at ``att_lr``.
* No fine-tuning for ``"aswl"``: fine-tuning a plain module would regrow the zeros
  (``finetune_epochs`` must be 0; ``fixed_epochs`` trains the weights with the final
  per-layer ratios fixed instead). ``"aswl-structured"`` fine-tunes the pruned model as usual.

The shared part lives here: :func:`layer_ratios`, :class:`ASWLConfig` and
:class:`ASWLBase`; ``"aswl"`` is :mod:`attnprune.methods.aswl`, ``"aswl-structured"``
:mod:`attnprune.methods.aswl_structured`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..core.budget import ramp
from .base import Phase, PruningMethod, TrainConfig
from .options import option

__all__ = ["ASWLConfig", "ASWLBase", "layer_ratios", "P_MAX"]

P_MAX = 0.99  # the paper's cap on one layer's pruning ratio


def layer_ratios(att: torch.Tensor, beta: float) -> torch.Tensor:
    """``p = min(0.99, beta * (1 - a))`` (eq. 2), differentiable in ``a``."""
    return torch.clamp(beta * (1.0 - att), min=0.0, max=P_MAX)


@dataclass(frozen=True)
class ASWLConfig(TrainConfig):
    """Options of ASWL (defaults: one stage from scratch, CPU-sized).

    Attributes:
        joint_epochs: Epochs of simultaneous training of weights, masks and attention.
        ramp_epochs: With ``beta=None``, epochs over which the budget in force
            ramps from 0 to ``ratio``.
        lam: Weight of the sparsity regulariser ``S(A)**2`` (paper: 0.5 to 5).
        beta: Pruning factor during training; None re-solves it every step.
        att_lr: Adam learning rate of the attentions.
        a_min: Attentions are kept in ``[a_min, 1 - a_min]``.
        fixed_epochs: ``"aswl"`` only: epochs training the weights with the final
            per-layer ratios fixed (calibrated ``beta``, attention frozen; each layer
            still masks its smallest weights), before the zeros are written.
    """

    warmup_epochs: int = 0
    finetune_epochs: int = 0
    joint_epochs: int = option(3, low=0)
    ramp_epochs: int = option(2, low=0)
    lam: float = option(0.5, low=0)
    beta: float | None = option(None, low=0, low_open=True)
    att_lr: float = option(0.01, low=0, low_open=True)
    a_min: float = option(0.01, low=0, high=0.5, low_open=True, high_open=True)
    fixed_epochs: int = option(0, low=0)

    def __post_init__(self):
        super().__post_init__()
        self._check_finetune()

    def _check_finetune(self):
        """What the method's kind forbids (unstructured: fine-tuning would regrow the zeros)."""
        if self.finetune_epochs:
            raise ValueError(
                "aswl is unstructured: fine-tuning the returned plain model would regrow the zeroed "
                f"weights, so finetune_epochs must be 0 (got {self.finetune_epochs}); use "
                "fixed_epochs to train with the final masks fixed"
            )


class ASWLBase(PruningMethod):
    """Attention vector, ``beta`` solving and the sparsity regulariser, shared by both ASWL methods.

    A subclass sets ``self.sizes`` (``n_l``, a float tensor) in :meth:`setup` after
    calling :meth:`init_attention`, and implements :meth:`removed_fraction` and
    :meth:`apply_beta` (plus :meth:`scores`).
    """

    config_class = ASWLConfig
    paper = (
        'Q. He, W. Shi, M. Dong, "Learning Pruned Structure and Weights Simultaneously from Scratch: '
        'an Attention Based Approach", arXiv:2111.02399, 2022'
    )
    normalize = None
    state_attributes = ("step", "beta", "current_ratio", "beta_history", "final_beta")

    def init_attention(self, n: int) -> None:
        """Create the ``n`` attentions (0.5 each) and the training state."""
        device = next(iter(self.inst.model.parameters())).device
        self.att = nn.Parameter(torch.full((n,), 0.5, device=device))
        self.step = 0
        self.ramp_steps = 0
        self.beta = self.config.beta
        self.current_ratio = 0.0
        self.beta_history: list[float] = []

    def parameters(self) -> list[nn.Parameter]:
        return [self.att]

    def joint_phase(self) -> Phase:
        c = self.config
        return self.cnn_phase("joint", c.joint_epochs, gates=self.joint_gates, train_method=True,
                              method_lr=c.att_lr, method_optimizer="adam")

    def phases(self, trained: bool = False) -> list[Phase]:
        return super().phases(trained) + [self.joint_phase()]

    def ratio_at(self, step: int) -> float:
        """The budget in force at joint-phase step ``step`` (linear ramp from 0)."""
        return ramp(self.budget.ratio, step, self.ramp_steps)

    def attention(self) -> torch.Tensor:
        return self.att.detach().float().cpu()

    def removed_fraction(self, beta: float, att: torch.Tensor) -> float:
        """Fraction of the budget's target removed at ``beta`` (used by :meth:`solve_beta`)."""
        raise NotImplementedError

    def solve_beta(self, ratio: float, att: torch.Tensor | None = None, exact=None) -> float:
        """Smallest ``beta`` whose removed fraction reaches ``ratio`` (bisection).

        Args:
            ratio: Target fraction removed.
            att: Attentions (default: the current ones).
            exact: Optional ``f(beta) -> fraction`` replacing :meth:`removed_fraction`.
        """
        att = self.attention() if att is None else att
        f = exact or (lambda b: self.removed_fraction(b, att))
        if ratio <= 0:
            return 0.0
        lo, hi = 0.0, P_MAX / float((1.0 - att).clamp(min=1e-6).min())
        if f(hi) < ratio:
            return hi
        for _ in range(50):
            mid = 0.5 * (lo + hi)
            if f(mid) >= ratio:
                hi = mid
            else:
                lo = mid
            if hi - lo < 1e-7 * hi:
                break
        return hi

    def sparsity_term(self) -> torch.Tensor:
        """``S(A)``: the kept fraction of the layers' sizes (eq. 3), differentiable in ``a``."""
        beta = self.beta if self.beta is not None else 1.0
        p = layer_ratios(self.att, beta)
        return ((1.0 - p) * self.sizes).sum() / self.sizes.sum()

    def regularizer(self, phase: Phase):
        if phase.name != "joint" or not self.config.lam:
            return None
        return self.config.lam * self.sparsity_term() ** 2

    def update_beta(self) -> None:
        """Re-solve ``beta`` for the ramped budget (``beta=None``), then apply it."""
        if self.config.beta is None:
            self.current_ratio = self.ratio_at(self.step)
            self.beta = self.solve_beta(self.current_ratio)
        self.beta_history.append(self.beta)
        self.apply_beta(self.beta)

    def apply_beta(self, beta: float) -> None:
        """Put ``beta``'s masks in force."""
        raise NotImplementedError

    def start_phase(self, phase: Phase) -> None:
        if phase.name == "joint":
            self.ramp_steps = self.config.ramp_epochs * (self.context.steps_per_epoch or 1)
            self.update_beta()
        super().start_phase(phase)

    def before_step(self, phase: Phase, step: int) -> None:
        if phase.name == "joint" and step > 0:
            self.update_beta()

    def after_step(self, phase: Phase, step: int) -> None:
        if phase.name != "joint":
            return
        self.step += 1
        a = self.config.a_min
        with torch.no_grad():
            self.att.clamp_(a, 1.0 - a)
