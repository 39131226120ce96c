"""PAAM: Pruning by Active Attention Manipulation (Babaiee et al., 2022).

Paper: Z. Babaiee, L. Liebenwein, R. Hasani, D. Rus, R. Grosu, *Pruning by Active
Attention Manipulation*, preprint, 2022 (sections 2.2-2.7, Algorithm 1); see ``docs/methods.md``.
Each channel group gets an attention network (AN) whose input is the group's
filter weights, one row per channel (a conv's ``C*K*K`` weights, concatenated over
every producer of the group's channels), and whose output is one score per channel:

* vanilla (eq. 1): ``S = phi(vec(F) @ W_F)`` with ``W_F`` of shape ``(F*D, F)``;
* KQ (eq. 2): ``Q = F @ W_Q``, ``K = F @ W_K`` (``W_Q, W_K`` of shape ``(D, d)``),
  ``S = phi(mean_keys(Q @ K.T) / (alpha * sqrt(d)))``; no value matrix;
* leaky-exponential activation (eq. 4): ``phi(x) = exp(x)`` for ``x < 0`` and
  ``1 + a*x`` for ``x >= 0``. The paper leaves ``a`` open; we use ``a = 0.1``
  (option ``slope``): small enough that scores above 1 grow slowly, large enough
  that they do not get stuck there.

Training (Algorithm 1): warm-up (gates off), then cycles of an AN phase (CNN frozen,
BatchNorm in eval mode, analog gates, loss = task + ``lam * sum_g w_g * |S_g|_1``)
and a CNN phase (AN frozen, binary gates from the budget search on the current
scores), then removal of the closed channels and fine-tuning.

Choices where the paper is silent or does not fit a library (see ``docs/methods.md``):

* the per-layer FLOPs balancing of section 3.1 is generalised to per-channel cost
  weights ``w``: what closing the channel saves in ``target`` (params or MACs
  counted, or for ``target="latency"`` the seconds the latency model predicts,
  :meth:`~attnprune.deploy.latency_model.LatencyModel.channel_costs`; never MACs
  in its place), normalised to mean 1 over all channels, so ``lam`` keeps the paper's scale;
* the AN input is scaled (no gradient) so each channel's row has unit mean L1
  norm, and vanilla's ``vec(F)`` unit L1 norm: an Adam step of size ``an_lr`` then
  moves a logit by at most about ``an_lr`` whatever the group's size (the paper's
  Adam 1e-6 on raw weights plays the same role at ResNet-56's sizes);
* ``lam`` is calibrated automatically (``lam=None``): it starts where the task
  gradient of the cheapest ``ratio`` share of channels equals their L1 pull, then a
  proportional-integral controller on ``log lam`` steers it each AN step so the
  channels scoring at least 0.5 meet the budget, and holds it for the last quarter
  of the phase (``lam_control``, ``lam_hold``); an explicit ``lam`` disables it;
* the threshold comes from the global budget search (``ratio`` is met within one
  point) instead of the paper's reading of the cumulative score histogram, on
  scores divided by their group's mean (``score_norm="mean"``): with one raw
  threshold the removal piled onto the groups the cost-weighted L1 pulls hardest
  (measured on ResNet-20 at 90% of params: a stage-3 group kept 8 of 64 channels and
  the validation accuracy was 10 points lower, ``benchmarks/RESULTS.md``);
* the paper's area weighting (``cost_weight="area"``) is an option, not the
  default: on the validation split it lost 3-6 points to the target's own cost
  weights at 70% and 90% of params;
* epochs and learning rates default to a CPU-sized schedule. The paper's CIFAR
  settings are ``warmup_epochs=50, cycles=10, an_epochs=3, cnn_epochs=6,
  finetune_epochs=300``, Adam 1e-6 (AN) / 1e-3 (CNN), fine-tuning SGD 0.1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from .._batch import call_model
from .._modes import eval_mode
from ..core.budget import ramp
from ..core.filters import filter_rows
from ..core.groups import ChannelGroup
from .base import Phase, PruningMethod, TrainConfig, register_method
from .options import option

__all__ = ["PAAMConfig", "PAAMMethod", "leaky_exp", "AttentionNet", "an_input"]

VARIANTS = ("auto", "vanilla", "kq")
MASK_UPDATES = ("phase", "step", "ramp")
COST_WEIGHTS = ("target", "sqrt", "uniform", "area")
NORMALIZERS = ("none", "mean", "max")
LAM_CONTROLS = ("step", "pi")


def leaky_exp(x: torch.Tensor, slope: float = 0.1) -> torch.Tensor:
    """PAAM's leaky-exponential activation (eq. 4): ``exp(x)`` below 0, ``1 + slope*x`` above."""
    return torch.where(x < 0, torch.exp(torch.clamp(x, max=0.0)), 1.0 + slope * x)


def an_input(group: ChannelGroup) -> torch.Tensor:
    """The AN input of a group: :func:`attnprune.core.filters.filter_rows`, scaled.

    One row per channel (the producers' filters side by side, root index space),
    scaled to unit mean L1 norm per row; differentiable in the filters.
    """
    x = filter_rows(group)
    # rows of unit mean L1 norm: an Adam step of size lr on the AN weights then moves
    # a logit by at most about lr, whatever the group's size (vanilla) or row length
    return x / (x.detach().abs().sum(1).mean() + 1e-12)


class AttentionNet(nn.Module):
    """The attention network of one group (vanilla or KQ).

    Args:
        n_channels: ``F``, the group's channels.
        row_size: ``D``, the length of one channel's filter row.
        variant: ``"vanilla"`` or ``"kq"``.
        hidden: ``d`` for KQ (default ``F``).
        alpha: KQ's scale ``alpha``.
        slope: The activation's slope ``a``.
    """

    def __init__(self, n_channels: int, row_size: int, variant: str, hidden: int | None = None,
                 alpha: float = 1.0, slope: float = 0.1):
        super().__init__()
        self.variant = variant
        self.slope = slope
        self.alpha = alpha
        if variant == "vanilla":
            # zero weights: every score starts at phi(0) = 1, the dense model;
            # the gradient vec(F) * phi'(0) is not zero, so training moves it.
            self.w_f = nn.Parameter(torch.zeros(n_channels * row_size, n_channels))
        else:
            d = hidden or n_channels
            self.hidden = d
            # random, not zero: Q K^T is bilinear, zero would be a saddle
            self.w_q = nn.Parameter(torch.randn(row_size, d) / math.sqrt(row_size))
            self.w_k = nn.Parameter(torch.randn(row_size, d) / math.sqrt(row_size))

    def logits(self, rows: torch.Tensor) -> torch.Tensor:
        if self.variant == "vanilla":
            # vec(F) scaled to unit L1 norm over the whole group (see an_input)
            return rows.reshape(1, -1) @ self.w_f / rows.shape[0]
        q = rows @ self.w_q
        k = rows @ self.w_k
        # mean over keys of Q K^T, without forming the F x F matrix
        return (q @ k.mean(0)) / (self.alpha * math.sqrt(self.hidden))

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return leaky_exp(self.logits(rows).reshape(-1), self.slope)

    @torch.no_grad()
    def start_near_one(self, rows: torch.Tensor, spread: float = 0.02) -> None:
        """Rescale KQ weights so every initial score lies within ``1 +- spread``."""
        if self.variant == "vanilla":
            return
        peak = float(self.logits(rows).abs().max())
        if peak > spread:
            s = math.sqrt(spread / peak)
            self.w_q.mul_(s)
            self.w_k.mul_(s)


@dataclass(frozen=True)
class PAAMConfig(TrainConfig):
    """Options of PAAM (defaults: a short CPU schedule).

    Attributes:
        variant: ``"vanilla"``, ``"kq"``, or ``"auto"`` (vanilla for a group while
            ``W_F`` has at most ``vanilla_max_elements`` entries, else KQ).
        vanilla_max_elements: Memory cap of one vanilla ``W_F`` (default 2**24,
            64 MiB in fp32).
        kq_hidden: KQ's hidden size ``d`` (default: the group's channel count).
        kq_alpha: KQ's scale ``alpha``.
        slope: Slope ``a`` of the leaky-exponential activation.
        lam: Weight of the L1 score penalty; None calibrates it automatically.
        cycles: Number of AN/CNN cycles.
        an_epochs: Epochs of each AN phase.
        cnn_epochs: Epochs of each CNN phase.
        an_lr: Adam learning rate of the AN; None picks ``travel / steps`` for each AN
            phase (clamped to [1e-3, 0.1]) so logits can move about ``travel`` units.
        travel: How far (in logit units) the automatic ``an_lr`` lets a score move
            in one AN phase; 6 takes a score from 1 to below 0.01.
        mask_update: Binary masks in CNN phases recomputed once per ``"phase"`` or
            every ``"step"`` (the filters, hence the scores, change as the CNN trains),
            or every step with the budget ramping linearly from 0 to ``ratio`` over the
            first half of each CNN phase (``"ramp"``: gradual pruning, as torch-pruning's
            iterative schedule, so the network recovers while channels close).
        cost_weight: Weight of each channel in the L1 term: its cost in ``target``
            (``"target"``, the generalised FLOPs balancing), the square root of that
            cost (``"sqrt"``), 1 (``"uniform"``, plain L1), or the area of the
            feature maps its weights run over (``"area"``, the paper's section 3.1
            weighting by feature-map size: MACs saved per parameter saved).
        lam_control: How the automatic ``lam`` is steered in AN phases: ``"step"``
            (multiply or divide by ``1 + gain`` each step, by the sign of the budget
            error) or ``"pi"`` (proportional-integral on ``log lam``, from the size
            of the error, at most 10% per step), which settles where the budget is met.
        lam_hold: Fraction of each AN phase, at its end, during which ``lam`` is
            held (the scores then separate under a fixed penalty).
        score_norm: How the final selection makes the groups' scores comparable:
            ``"none"`` (one global threshold on the raw scores), ``"mean"`` or
            ``"max"`` (each group's scores divided by their mean or max first; see
            :func:`attnprune.core.budget.normalize_scores`).
    """

    variant: str = option("auto", choices=VARIANTS)
    vanilla_max_elements: int = option(2**24, low=0)
    kq_hidden: int | None = option(None, low=1)
    kq_alpha: float = option(1.0, low=0, low_open=True)
    slope: float = option(0.1, low=0, low_open=True)
    lam: float | None = option(None, low=0)
    cycles: int = option(1, low=0)
    an_epochs: int = option(1, low=0)
    cnn_epochs: int = option(1, low=0)
    an_lr: float | None = option(None, low=0, low_open=True)
    travel: float = option(6.0, low=0, low_open=True)
    mask_update: str = option("phase", choices=MASK_UPDATES)
    cost_weight: str = option("target", choices=COST_WEIGHTS)
    lam_control: str = option("pi", choices=LAM_CONTROLS)
    lam_hold: float = option(0.25, low=0, high=1, high_open=True)
    score_norm: str = option("mean", choices=NORMALIZERS)


@register_method("paam")
class PAAMMethod(PruningMethod):
    """PAAM (Babaiee et al. 2022): attention over filter weights, alternating AN/CNN training."""

    config_class = PAAMConfig
    paper = (
        'Z. Babaiee, L. Liebenwein, R. Hasani, D. Rus, R. Grosu, '
        '"Pruning by Active Attention Manipulation", preprint, 2022'
    )
    #: The controller's step: lam is multiplied or divided by (1 + gain) each AN step.
    gain = 0.05
    #: Proportional and integral gains of ``lam_control="pi"`` (log-lam per unit of budget error).
    pi_gains = (2.0, 0.25)
    #: The level that separates open from closed analog scores for the controller.
    level = 0.5
    state_attributes = ("lam", "lam_history", "lam_error")

    def setup(self) -> None:
        c = self.config
        inst = self.inst
        device = next(iter(inst.model.parameters())).device
        nets = []
        self.variants = []
        for g in inst.groups:
            rows = an_input(g).detach()
            variant = c.variant
            if variant == "auto":
                variant = "vanilla" if g.n_channels ** 2 * rows.shape[1] <= c.vanilla_max_elements else "kq"
            net = AttentionNet(g.n_channels, rows.shape[1], variant, c.kq_hidden, c.kq_alpha, c.slope).to(device)
            net.start_near_one(rows)
            nets.append(net)
            self.variants.append(variant)
        self.an = nn.ModuleList(nets)
        # the target's own cost object: counted params/MACs, or the latency model's seconds per channel
        costs = inst.cost.target_cost(self.budget.target).channel_costs()
        if c.cost_weight == "area":
            costs = [m / p.clamp_min(1) for m, p in zip(inst.cost.channel_costs("macs"),
                                                           inst.cost.channel_costs("params"))]
        elif c.cost_weight == "sqrt":
            costs = [w.sqrt() for w in costs]
        elif c.cost_weight == "uniform":
            costs = [torch.ones_like(w) for w in costs]
        mean = torch.cat(costs).mean()
        self.weights = [(w / mean).to(device) for w in costs]
        self.lam = c.lam
        self.lam_history: list[float] = []
        self.lam_error = 0.0  # the budget error of the last controller step (for "pi")
        self._live: list[torch.Tensor] = []

    @property
    def normalize(self) -> str | None:  # type: ignore[override]
        """The selection's score normalisation (``PAAMConfig.score_norm``; None for ``"none"``)."""
        how = self.config.score_norm
        return None if how == "none" else how

    def parameters(self) -> list[nn.Parameter]:
        return list(self.an.parameters())

    def compute_scores(self) -> list[torch.Tensor]:
        """Scores of every group from the current filter weights (differentiable)."""
        return [net(an_input(g)) for net, g in zip(self.an, self.inst.groups)]

    def _gate_scores(self) -> list[torch.Tensor]:
        # called by the gates once per forward; the regulariser reuses the result
        self._live = self.compute_scores()
        return self._live

    @torch.no_grad()
    def scores(self) -> list[torch.Tensor]:
        return [s.detach().float().cpu() for s in self.compute_scores()]

    # -- schedule ---------------------------------------------------------------
    def phases(self, trained: bool = False) -> list[Phase]:
        c = self.config
        out = super().phases(trained)
        for cycle in range(c.cycles):
            out.append(Phase(name="an", epochs=c.an_epochs, gates="analog", train_model=False,
                             train_method=True, method_lr=self.an_lr(), method_optimizer="adam",
                             bn_eval=True, cycle=cycle))
            out.append(self.cnn_phase("cnn", c.cnn_epochs, gates="binary", cycle=cycle))
        return out

    def an_lr(self) -> float:
        """The AN's learning rate (see ``PAAMConfig.an_lr``)."""
        c = self.config
        if c.an_lr is not None:
            return c.an_lr
        steps = (self.context.steps_per_epoch or 100) * max(c.an_epochs, 1)
        return min(max(c.travel / steps, 1e-3), 0.1)

    def start_phase(self, phase: Phase) -> None:
        if phase.gates == "analog":
            self.inst.set_scores(self._gate_scores)
            if self.lam is None:
                self.lam = self.calibrate_lam()
        elif phase.gates == "binary":
            ramped = self.config.mask_update == "ramp"
            self.inst.set_masks((self.select_at(0.0) if ramped else self.select()).masks)
        self.inst.mode = phase.gates

    def before_step(self, phase: Phase, step: int) -> None:
        if phase.gates != "binary":
            return
        how = self.config.mask_update
        if how == "step" and step > 0:
            self.inst.set_masks(self.select().masks)
        elif how == "ramp":
            self.inst.set_masks(self.select_at(self.ramp_ratio(phase, step)).masks)

    def ramp_ratio(self, phase: Phase, step: int) -> float:
        """The budget at CNN-phase ``step`` under ``mask_update="ramp"`` (full from half the phase on)."""
        return ramp(self.budget.ratio, step + 1, self.phase_steps(phase) // 2)

    def phase_steps(self, phase: Phase) -> int:
        """Optimiser steps in ``phase`` (0 when the loader's length is unknown)."""
        return (self.context.steps_per_epoch or 0) * phase.epochs

    def regularizer(self, phase: Phase):
        if phase.gates != "analog" or not self.lam:
            return None
        scores = self._live
        return self.lam * sum((w * s).sum() for w, s in zip(self.weights, scores))

    def after_step(self, phase: Phase, step: int) -> None:
        if phase.gates != "analog" or self.config.lam is not None:
            return
        c = self.config
        total = self.phase_steps(phase)
        if c.lam_hold and total and step >= (1 - c.lam_hold) * total:
            self.lam_history.append(self.lam)  # held for the end of the phase
            return
        # steer lam so that the channels scoring >= level meet the budget
        reached = self.open_ratio([s.detach().cpu() for s in self._live])
        if c.lam_control == "step":
            self.lam *= (1 + self.gain) if reached < self.budget.ratio else 1 / (1 + self.gain)
        else:
            error = self.budget.ratio - reached  # > 0: too little pruned, raise lam
            kp, ki = self.pi_gains
            change = kp * (error - self.lam_error) + ki * error
            self.lam *= math.exp(max(min(change, math.log(1.1)), -math.log(1.1)))
            self.lam_error = error
        self.lam_history.append(self.lam)

    def open_ratio(self, scores: list[torch.Tensor]) -> float:
        """Fraction of ``target`` removed if only channels scoring >= ``level`` stayed."""
        masks = []
        for s in scores:
            m = s >= self.level
            if not bool(m.any()):
                m = s == s.max()
            masks.append(m)
        return self.inst.cost.removed(masks, self.budget.target)

    def calibrate_lam(self) -> float:
        """Initial lam: the task gradient of the budget's share of channels, per unit cost.

        One batch, gates at 1: ``g_c = |dL/dS_c|``. Channels whose ``g_c / w_c`` lies
        under the ``ratio`` quantile are pulled down harder than the task holds them.
        """
        ctx = self.context
        if ctx.batches is None or ctx.loss_fn is None:
            return 1e-3
        ones = [torch.ones(g.n_channels, device=w.device, requires_grad=True)
                for g, w in zip(self.inst.groups, self.weights)]
        model = self.inst.model
        old_mode, old_scores = self.inst.mode, self.inst.analog_scores
        try:
            self.inst.set_scores(ones)
            self.inst.mode = "analog"
            x, y = next(iter(ctx.batches()))
            with eval_mode(model):
                grads = torch.autograd.grad(ctx.loss_fn(call_model(model, x), y), ones, allow_unused=True)
        finally:
            self.inst.set_scores(old_scores if old_scores is not None else ones)
            self.inst.mode = old_mode
        per_cost = torch.cat([
            (torch.zeros_like(w) if g is None else g.abs()) / w for g, w in zip(grads, self.weights)
        ]).detach().cpu()
        lam = float(torch.quantile(per_cost, self.budget.ratio))
        return lam if lam > 0 and math.isfinite(lam) else 1e-3

    def report(self) -> dict:
        scores = self.scores()
        sel = self.select_at(self.budget.ratio, scores)
        allv = torch.cat(scores)
        near = float(((allv - sel.threshold).abs() < 0.1).float().mean()) if math.isfinite(sel.threshold) else 0.0
        return {
            "variants": {g.name: v for g, v in zip(self.inst.groups, self.variants)},
            "lam": self.lam,
            "threshold": sel.threshold,
            "fraction_near_threshold": near,
            # unsettled scores: neither clearly closed nor clearly open (the methods issue's measure)
            "fraction_mid": float(((allv > 0.1) & (allv < 0.9)).float().mean()),
            "scores": [s.tolist() for s in scores],
        }

    def detach(self) -> None:
        super().detach()
        if self.inst is not None and self.inst.active and self.inst.mode == "analog":
            self.inst.mode = "off"
