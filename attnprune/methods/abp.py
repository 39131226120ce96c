"""ABP: Adding Before Pruning (Tian et al., IEEE TNNLS 2021).

Paper: G. Tian, Y. Sun, Y. Liu, X. Zeng, M. Wang, Y. Liu, J. Zhang, J. Chen, *Adding
Before Pruning: Sparse Filter Fusion for Deep Convolutional Neural Networks via
Auxiliary Attention*, IEEE TNNLS, 2021, doi:10.1109/TNNLS.2021.3106917 (see
``docs/methods.md``). An auxiliary attention layer
holds one real parameter ``m`` per filter; the network only ever sees its binary
version (eq. 4)::

    a = 1  if |m| > t        a = 0  if |m| <= t

so the forward pass always uses 0/1 gates. Its gradient estimator (eq. 5) is::

    g_m = g_a * 1[|m| <= t]          (g_a = dL/da, passed with its own sign)

i.e. the derivative of the clip ``mu(m) = min(max(m, -t), t)`` that the paper's
proof (section III-C, ``mu' = 1{-t < x < t}``) substitutes for the zero derivative
of the step. CNN weights and ``m`` train together in one stage with
``lr(m) = 0.01 * lr`` (section IV-A), and the closed filters are removed at the end
without fine-tuning. Here ``a`` multiplies the group's feature maps at the gate
point (after the norm), so a closed channel emits exact zeros and removing it is
exact; the paper's Algorithm 1 multiplies the filters *before* BatchNorm, which
leaves the constant ``BN(0)`` behind.

How the user's ``ratio`` decides ``t`` (``threshold_mode``):

* ``"budget"`` (default): the threshold follows the budget during training. The
  budget ramps from 0 to ``ratio`` over the first ``ramp_epochs`` of the joint
  phase; at every step the kept set is the global budget selection
  (:func:`attnprune.core.budget.select_channels`, cost-aware, ``round_to`` included) on
  the scores ``|m|`` (recomputed after every update of ``m``), and each group's
  ``t`` is the largest closed ``|m|`` of the group, so the kept set is exactly
  ``{|m| > t}`` and eq. (4)/(5) hold literally
  (a channel whose keep decision is not a threshold of its own ``|m|`` -- a grouped
  conv's shared pattern, or a tie -- gets its own ``t``; see
  ``report()["threshold_exceptions"]``). The gates trained are the gates removed,
  which keeps the paper's "no fine-tuning" true; ``select()`` returns the
  selection of the last training step (the frozen one, below).
* ``"fixed"``: the paper's fixed threshold, ``t = t0 * max|m|`` per group (eq. 17)
  or a constant ``threshold``; the ratio is whatever results, reported as
  ``ratio_reached`` and ``ratio_error``.

Frozen masks at the end of the joint phase (``freeze_fraction``; the paper differs).
Tian et al. train the CNN and ``m`` together to the last step and remove the closed
filters without fine-tuning. At the full budget eq. (5) churns: a kept channel gets
no task gradient and slides down with the pull until a closed one climbs past it,
so channels near the boundary swap back and forth (on the Fashion-MNIST quality
benchmark, ResNet-20 at ratio 0.5: 1,462 flips over 189 full-budget steps, about 8
a step, while only 88 channels ended on the other side than at the end of the
ramp). A channel that returns late brings weights that decayed while it was closed
(weight decay, no gradient), and with no fine-tune nothing trains them (ratio 0.8:
81.3% against taylor's 85.9% there). So by default the masks freeze halfway
between the end of the ramp and the end of the joint phase
(``freeze_fraction=0.5``; the ramp itself ends after its first epoch,
``ramp_epochs=1`` of 3): from then on ``m`` gets an exactly zero gradient (it
stays in the graph, for DDP) and is put back after each optimiser step (momentum
would otherwise move it, and move the gates with it), the pull and ReLU's pass at
0 are off, and only the CNN weights train under the fixed binary masks. Since a
gated model with fixed masks computes what the pruned one does, that is a
fine-tune of exactly the kept set, inside the joint phase's passes and on the tail
of its cosine learning-rate schedule, so the total number of passes does not grow;
``finetune_epochs`` stays 0 and adds passes after removal only when asked for.
``freeze_fraction=0`` is the paper's one stage. ``report()["flips_per_epoch"]``
counts, per joint epoch, the gates that changed state between consecutive steps
(during the ramp that includes the closures the ramp forces; 0 in frozen epochs).
A one-seed measurement of the freeze is in ``docs/methods.md``.

Choices where the paper is silent (see ``docs/methods.md``):

* **Initialisation.** ``|m|`` starts at each channel's filter L1 norm (summed over
  the group's producers), normalised to mean 1 per group, when the joint phase
  starts (after any warm-up): ties are broken by the norms, and at ratio 0 every
  channel is above ``t``. In fixed mode that would keep every channel forever
  (under eq. 5 a channel above ``t`` never gets a task gradient, and the pull
  lowers every ``|m|`` and ``max|m|`` alike), so fixed mode starts from
  ``m ~ U(0, 2)`` instead (``init``): the channels that start closed compete to
  return, as in the paper, where ``m`` is randomly initialised.
* **What moves kept channels.** Under eq. (5) a kept channel (``|m| > t``) gets no
  task gradient at all; only closed channels get ``g_a``, so they compete to
  return (the paper's "recoverable" pruning). An L1 pull ``pull * sum|m|`` acts on
  every channel: kept channels slide down at the rate the optimiser gives the pull,
  closed channels whose ``-g_a`` exceeds the pull climb back over them, the others
  sink. ``pull=0`` leaves the kept set to the budget ramp alone.
* **ReLU at 0.** A closed channel is exactly 0 after the gate, and PyTorch's
  ``relu'(0) = 0`` stops the gradient before it reaches the gate, so eq. (5) would
  give ``g_a = 0`` to every closed channel that a ReLU follows (all but residual
  streams; measured: exactly 0). The paper gates before BatchNorm, where a closed
  channel emits ``BN(0) = beta`` and the gradient flows. During the joint phase
  ReLU therefore passes the gradient at exactly 0 (``relu'(0) := 1``, values
  unchanged; :class:`ReluPassAtZero`, ``relu_pass=True``), so
  ``g_a = sum(dL/d relu_out * u)`` over the channel's positions, ``u`` the
  ungated output.
* **m >= 0.** Eq. (5) passes ``g_a`` without ``sign(m)``, i.e. it treats ``a`` as
  increasing in ``m``; that is consistent only for ``m >= 0``: a closed channel
  with ``g_a > 0`` would walk through ``-t`` and reopen with ``|m| > t``. ``m`` is
  therefore projected onto ``m >= 0`` after every step (``nonneg=True``), so
  ``|m| = m``.
* **Optimiser of m.** Adam (``m_optimizer``): with SGD at ``0.01 * lr = 5e-4`` and
  task gradients ``|g_a|`` of about 1e-2 (measured below), ``m`` (scale 1) would
  move by about 5e-6 per step and no decision would change on a CPU-sized
  schedule; Adam moves it by about ``0.01 * lr`` per step. ``m_optimizer="sgd"`` is
  the paper's. The pull (default 1e-3) is well under ``|g_a|``, so it decides the
  fate of closed channels only where the task gradient is near zero.
* **Estimator.** ``ste="paper"`` is eq. (5). ``ste="clipped"`` is the
  BinaryConnect-style clipped straight-through estimator (Courbariaux et al. 2015:
  forward the binary value, pass ``g_m = g_a * 1[|m| <= clip]``): with ``clip``
  above the initial scale (mean 1), kept channels also receive the task gradient,
  so a kept channel the loss would rather close is pushed below ``t`` by the task,
  not only by the pull.

Default estimator: the paper's eq. (5); at the paper's ``lr(m) = 0.01 * lr`` the two estimators
(and a frozen ``m``) measured within seed noise (table in ``docs/methods.md``). With a
larger ``m_lr_factor`` use ``ste="clipped"``: eq. (5) then churns.

Scores (``scores()``, also for :class:`attnprune.LearnedImportance`): ``|m|``, on one
scale across groups (``normalize = None``); the budget selection on them is the
kept set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..core.budget import BudgetResult, check_reachable, ramp
from ..core.filters import filter_l1
from .abp_gates import BinaryGate, ReluPassAtZero, binary_gate, relu_pass_hooks
from .base import Phase, PruningMethod, TrainConfig, register_method
from .options import option

__all__ = ["ABPConfig", "ABPMethod", "BinaryGate", "ReluPassAtZero", "binary_gate"]

ESTIMATORS = ("paper", "clipped")
THRESHOLD_MODES = ("budget", "fixed")
M_OPTIMIZERS = ("adam", "sgd")
INITS = (None, "l1", "uniform")


def _thresholds(absm: torch.Tensor, keep: torch.Tensor, t: float) -> tuple[torch.Tensor, int]:
    """Per-channel ``t`` so that ``keep == (|m| > t)`` holds channel by channel.

    Channels whose decision ``t`` (the group's threshold) already gives keep ``t``;
    the others (shared grouped-conv patterns, ties) get a threshold of their own
    just below (kept) or at (closed) their ``|m|``. Returns the thresholds and the
    number of such exceptions.
    """
    th = torch.full_like(absm, t)
    low = keep & (absm <= th)
    high = ~keep & (absm > th)
    th[low] = torch.nextafter(absm[low], torch.full_like(absm[low], -math.inf))
    th[high] = absm[high]
    return th, int(low.sum() + high.sum())


@dataclass(frozen=True)
class ABPConfig(TrainConfig):
    """Options of ABP (defaults: one-stage training from scratch, masks frozen for its last part, no fine-tuning).

    Attributes:
        joint_epochs: Epochs of the one-stage joint training of CNN and ``m``.
        ramp_epochs: Epochs over which the budget ramps from 0 to ``ratio``
            (``threshold_mode="budget"``); at most ``joint_epochs`` is sensible.
        ste: ``"paper"`` (eq. 5, ``g_m = g_a * 1[|m| <= t]``) or ``"clipped"``
            (``g_m = g_a * 1[|m| <= clip]``).
        clip: Bound of the clipped estimator, in units of the initial ``|m|``
            (group mean 1).
        pull: Weight of the L1 pull ``pull * sum|m|`` (what moves kept channels).
        m_lr_factor: Learning rate of ``m`` relative to ``lr`` (paper: 0.01).
        m_optimizer: ``"adam"`` or ``"sgd"`` for ``m``.
        nonneg: Project ``m`` onto ``m >= 0`` after each step.
        threshold_mode: ``"budget"`` (``ratio`` decides) or ``"fixed"`` (paper's t).
        t0: Fixed mode: ``t = t0 * max|m|`` per group (eq. 17).
        threshold: Fixed mode: a constant ``t`` instead (overrides ``t0``).
        init: ``"l1"`` (``|m|`` = filter L1 norms, mean 1 per group) or
            ``"uniform"`` (``m ~ U(0, 2)``, seeded, so about ``t0`` of each group
            starts closed in fixed mode); None: ``"l1"`` in budget mode,
            ``"uniform"`` in fixed mode.
        relu_pass: During the joint phase, let ReLU pass gradients at exactly 0
            (:class:`ReluPassAtZero`) so closed channels receive ``g_a``.
        freeze_fraction: Share of the joint steps after the budget ramp (of all
            joint steps in fixed mode) that run with frozen masks, at the end of
            the phase: ``m`` stops moving, the gates stay fixed and only the CNN
            weights train, an in-budget fine-tune of exactly the channels that are
            kept. 0: the masks follow ``|m|`` to the last step (the paper's one
            stage); 1: they freeze as soon as the ramp reaches ``ratio``. Counted
            in steps; with a loader of unknown length nothing is frozen.
    """

    warmup_epochs: int = 0
    finetune_epochs: int = 0
    joint_epochs: int = option(3, low=0)
    ramp_epochs: int = option(1, low=0)
    ste: str = option("paper", choices=ESTIMATORS)
    clip: float = option(2.0, low=0, low_open=True)
    pull: float = option(1e-3, low=0)
    m_lr_factor: float = option(0.01, low=0, low_open=True)
    m_optimizer: str = option("adam", choices=M_OPTIMIZERS)
    nonneg: bool = option(True)
    threshold_mode: str = option("budget", choices=THRESHOLD_MODES)
    t0: float = option(0.5, low=0, high=1, low_open=True, high_open=True)
    threshold: float | None = option(None, low=0, low_open=True)
    init: str | None = option(None, choices=INITS)
    relu_pass: bool = option(True)
    freeze_fraction: float = option(0.5, low=0, high=1)


@register_method("abp")
class ABPMethod(PruningMethod):
    """ABP (Tian et al. 2021): binary auxiliary attention per channel, one-stage training."""

    config_class = ABPConfig
    paper = (
        'G. Tian et al., "Adding Before Pruning: Sparse Filter Fusion for Deep Convolutional Neural '
        'Networks via Auxiliary Attention", IEEE TNNLS, 2021'
    )
    normalize = None  # |m| starts at mean 1 in every group and trains on that scale
    state_attributes = ("initialized", "step", "current_ratio", "_t", "group_t", "_selection",
                        "_selection_ratio", "_initial_masks", "exceptions", "changes", "flips", "_frozen_m")

    def setup(self) -> None:
        device = next(iter(self.inst.model.parameters())).device
        self.m = nn.ParameterList([nn.Parameter(torch.ones(g.n_channels, device=device)) for g in self.inst.groups])
        self.initialized = False
        self.step = 0  # steps of the joint phase so far
        self.ramp_steps = 0
        self.current_ratio = 0.0
        self._t = [torch.zeros(g.n_channels, device=device) for g in self.inst.groups]  # budget mode
        self.group_t = [float("nan")] * len(self.inst.groups)
        self._selection: BudgetResult | None = None  # last budget selection used in training
        self._selection_ratio: float | None = None
        self._initial_masks: list[torch.Tensor] | None = None  # at the end of the ramp
        self.exceptions = 0
        self.changes = 0  # channels that changed side between steps at the full budget
        self.flips: list[int] = []  # gates that changed state, per joint epoch
        self.freeze_step: int | None = None  # joint step from which the masks are frozen (None: never)
        self._frozen_m: list[torch.Tensor] | None = None  # m when the masks froze
        self._step_masks: list[torch.Tensor] | None = None  # the gates of the step running now
        b = self.budget
        if b.ratio and self.config.threshold_mode == "budget":  # an unreachable ratio fails now, not at the end
            check_reachable(self.inst.cost, b.ratio, b.target, round_to=b.round_to)
        if self.config.relu_pass:
            self.handles += relu_pass_hooks(self.inst.model, self._relu_pass_active)

    def _relu_pass_active(self, module) -> bool:
        return self.inst.mode == "analog" and not self.frozen and module.training and torch.is_grad_enabled()

    def parameters(self) -> list[nn.Parameter]:
        return list(self.m)

    @property
    def init(self) -> str:
        c = self.config
        return c.init or ("l1" if c.threshold_mode == "budget" else "uniform")

    @torch.no_grad()
    def init_m(self) -> None:
        """Initial ``m`` (see ``ABPConfig.init``); both have mean 1 per group."""
        gen = torch.Generator().manual_seed(self.context.seed or 0)
        for p, g in zip(self.m, self.inst.groups):
            if self.init == "uniform":
                value = 2 * torch.rand(g.n_channels, generator=gen)
            else:
                norms = filter_l1(g)
                mean = float(norms.mean())
                value = norms / mean if mean > 0 else torch.ones_like(norms)
            p.copy_(value.to(p.device, p.dtype))
        self.initialized = True

    # -- gates ------------------------------------------------------------------
    def _bound(self, t: torch.Tensor) -> torch.Tensor:
        if self.config.ste == "clipped":
            return torch.full_like(t, float(self.config.clip))
        return t

    def fixed_thresholds(self) -> list[torch.Tensor]:
        """Per-channel thresholds of ``threshold_mode="fixed"`` (no group is emptied)."""
        c = self.config
        out = []
        exceptions = 0
        for p, g in zip(self.m, self.inst.groups):
            absm = p.detach().abs()
            t = float(c.threshold) if c.threshold is not None else float(c.t0 * absm.max())
            units = absm.view(g.ch_groups, -1).mean(0)
            keep_u = units > t
            if not bool(keep_u.any()):
                keep_u = units == units.max()
            th, k = _thresholds(absm, keep_u.repeat(g.ch_groups), t)
            exceptions += k
            out.append(th)
        self.exceptions = exceptions
        return out

    def _gate_values(self) -> list[torch.Tensor]:
        # called by the gates once per forward
        thresholds = self.fixed_thresholds() if self.config.threshold_mode == "fixed" else self._t
        if self.frozen:  # m takes part (DDP expects its gradient) but receives exactly 0
            return [binary_gate(p, t, torch.full_like(t, -1.0)) for p, t in zip(self.m, thresholds)]
        return [binary_gate(p, t, self._bound(t)) for p, t in zip(self.m, thresholds)]

    def masks(self) -> list[torch.Tensor]:
        """The current keep-masks (what the binary gates are now)."""
        with torch.no_grad():
            return [v.detach().cpu() > 0.5 for v in self._gate_values()]

    # -- schedule ---------------------------------------------------------------
    def phases(self, trained: bool = False) -> list[Phase]:
        c = self.config
        out = super().phases(trained)
        out.append(self.cnn_phase("joint", c.joint_epochs, gates="analog", train_method=True,
                                  method_lr=c.lr * c.m_lr_factor, method_optimizer=c.m_optimizer))
        return out

    def start_phase(self, phase: Phase) -> None:
        if phase.gates == "analog":
            if not self.initialized:
                self.init_m()
            c = self.config
            steps = self.context.steps_per_epoch
            self.ramp_steps = c.ramp_epochs * (steps or 1)
            self.freeze_step = self.freeze_start()
            if not self.flips:
                self.flips = [0] * (c.joint_epochs if steps else 1)
            if c.threshold_mode == "budget":
                self.update_budget_gates()
            self._freeze_if_due()
            self.inst.set_scores(self._gate_values)
        self.inst.mode = phase.gates

    def freeze_start(self) -> int | None:
        """Joint-phase step from which the masks are frozen (``freeze_fraction``); None: never.

        The last ``floor(freeze_fraction * n)`` steps are frozen, ``n`` the steps after
        the budget ramp (budget mode) or all joint steps (fixed mode); nothing is frozen
        when the epoch length is unknown or the ramp does not end inside the phase.
        """
        c = self.config
        steps = self.context.steps_per_epoch
        if not steps or c.freeze_fraction <= 0:
            return None
        total = c.joint_epochs * steps
        ramp_end = self.ramp_steps if c.threshold_mode == "budget" else 0
        frozen = math.floor(c.freeze_fraction * (total - ramp_end)) if total > ramp_end else 0
        return total - frozen if frozen > 0 else None

    @property
    def frozen(self) -> bool:
        """Whether the masks are frozen now (the joint step running is at or past :meth:`freeze_start`)."""
        return self.freeze_step is not None and self.step >= self.freeze_step

    def _freeze_if_due(self) -> None:
        if self.freeze_step is not None and self.step == self.freeze_step and self._frozen_m is None:
            self._frozen_m = [p.detach().clone() for p in self.m]

    def ratio_at(self, step: int) -> float:
        """The budget in force at joint-phase step ``step`` (linear ramp from 0)."""
        return ramp(self.budget.ratio, step, self.ramp_steps)

    @torch.no_grad()
    def update_budget_gates(self) -> None:
        """Kept set = budget selection on ``|m|`` at the current ratio; ``t`` = its boundary."""
        b = self.budget
        ratio = self.ratio_at(self.step)
        self.current_ratio = ratio
        scores = self.scores()
        sel = self.select_at(ratio, scores)
        exceptions = 0
        for i, (s, keep) in enumerate(zip(scores, sel.masks)):
            closed = s[~keep]
            t = float(closed.max()) if closed.numel() else -1.0
            th, k = _thresholds(s, keep, t)
            exceptions += k
            self._t[i] = th.to(self._t[i].device)
            self.group_t[i] = t
        self.exceptions = exceptions
        if ratio == b.ratio:
            if self._initial_masks is None:
                self._initial_masks = [m.clone() for m in sel.masks]
            elif self._selection is not None:
                self.changes += sum(int((m != o).sum()) for m, o in zip(sel.masks, self._selection.masks))
        self._selection, self._selection_ratio = sel, ratio

    def regularizer(self, phase: Phase):
        if phase.gates != "analog" or not self.config.pull or self.frozen:
            return None
        return self.config.pull * sum(p.abs().sum() for p in self.m)

    def before_step(self, phase: Phase, step: int) -> None:
        if phase.gates == "analog" and not self.frozen:
            self._step_masks = self.masks()

    @torch.no_grad()
    def after_step(self, phase: Phase, step: int) -> None:
        if phase.gates != "analog":
            return
        if self.frozen:
            # m got a zero gradient, but the optimiser's momentum still moved it: put it back
            for p, v in zip(self.m, self._frozen_m):
                p.copy_(v)
            self.step += 1
            return
        self.step += 1
        if self.config.nonneg:
            for p in self.m:
                p.clamp_(min=0.0)
        if self.config.threshold_mode == "budget":
            # right after m moved, so every forward sees the selection of the current |m|
            self.update_budget_gates()
        self._count_flips()
        self._freeze_if_due()

    def _count_flips(self) -> None:
        """Add the gates that changed state in the step just done to its epoch's count."""
        if self._step_masks is None:
            return
        flips = sum(int((a != b).sum()) for a, b in zip(self._step_masks, self.masks()))
        steps = self.context.steps_per_epoch
        epoch = (self.step - 1) // steps if steps else 0
        while len(self.flips) <= epoch:
            self.flips.append(0)
        self.flips[epoch] += flips
        self._step_masks = None

    # -- results ----------------------------------------------------------------
    @torch.no_grad()
    def scores(self) -> list[torch.Tensor]:
        """``|m|`` per channel (higher = keep); on one scale across groups."""
        return [p.detach().abs().float().cpu() for p in self.m]

    def select(self) -> BudgetResult:
        b = self.budget
        if self.config.threshold_mode == "fixed":
            masks = self.masks()
            params, macs = self.inst.cost.count(masks)
            ratio = self.inst.cost.removed(masks, b.target)
            return BudgetResult(masks=masks, ratio=ratio, params=params, macs=macs, threshold=float("nan"))
        if self._selection is not None and self._selection_ratio == b.ratio:
            return self._selection  # the gates the network was trained with
        return self.select_at(b.ratio)

    def report(self) -> dict:
        c = self.config
        out = {
            "ste": c.ste,
            "threshold_mode": c.threshold_mode,
            "threshold_exceptions": self.exceptions,
            "joint_steps": self.step,
            "flips_per_epoch": list(self.flips) if self.context.steps_per_epoch else None,
            "flips_total": sum(self.flips),
            "freeze_step": self.freeze_step,
            "frozen_steps": 0 if self.freeze_step is None else max(0, self.step - self.freeze_step),
            "scores": [s.tolist() for s in self.scores()],
        }
        if c.threshold_mode == "budget":
            out["changes_at_full_budget"] = self.changes
            if self._initial_masks is not None and self._selection is not None:
                out["changed_since_ramp"] = sum(
                    int((m != o).sum()) for m, o in zip(self._selection.masks, self._initial_masks))
            out["final_ratio_in_training"] = self.current_ratio
            out["thresholds"] = list(self.group_t)
        else:
            sel = self.select()
            out["thresholds"] = [float(t.max()) for t in self.fixed_thresholds()]
            out["ratio_reached"] = sel.ratio
            out["ratio_error"] = sel.ratio - self.budget.ratio
        return out

    def detach(self) -> None:
        super().detach()
        if self.inst is not None and self.inst.active and self.inst.mode == "analog":
            self.inst.mode = "off"
