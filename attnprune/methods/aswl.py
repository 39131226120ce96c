"""ASWL: Attention-based Simultaneous sparse structure and Weight Learning (He, Shi, Dong).

Paper: ``shared/papers/002_8e5f82443c838243.txt`` (section 3, Algorithm 1). Its
Greek letters were lost in the text; the reading used here (``shared/METHODS.md``):

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

Two registered methods share that mechanism:

``"aswl"`` (unstructured, the paper's). Attention and masks are this module's own
hooks: a parametrisation ``weight -> weight * mask`` on every conv/linear layer, and
a forward hook multiplying the output of the layer's gate point (its BatchNorm when
the layer feeds only an affine norm, else the layer itself; before a train-mode
norm the scale would cancel) by ``a_l``. ``ratio`` is the fraction of *all* the
model's parameters that end as exact zeros. At the end, ``beta`` is set by bisection
with the learned ``a_l`` so the ratio is met within one point, the masks are
written into the weights as zeros, each ``a_l`` is folded into its gate point's
weights (and bias), and every parametrisation and hook is removed: the result is a
plain module of the *same* dense shapes, checked against the masked, attended
model. It is not smaller or faster: ``params_after`` in the report is the count of
nonzero parameters (the report says so), ``macs_after`` the dense MACs. The method
has ``structured = False`` and :meth:`ASWLMethod.finalize_unstructured`; with the
structured pipeline of :func:`attnprune.prune` unchanged, ``select()`` runs that
finalisation once and returns a selection keeping every channel, so the pipeline's
``finalize`` removes no channel and only takes the instrumented gates off.

``"aswl-structured"``: one attention per channel group (torch-pruning's coupled
channels), applied through the instrumented gates (analog mode, every channel of
group ``g`` gated by ``a_g``). The group's ratio ``p_g = min(0.99, beta*(1 - a_g))``
closes its channels of lowest filter L1 norm; ``beta`` is set by bisection so the
exact count (params or MACs) meets ``ratio`` within one point (if one ``beta``
cannot, the global budget search on the rank scores below finishes the job).
The channels are then removed by the normal structured pipeline, after ``a_g`` is
folded into the gate points' weights so the pruned model computes what the trained
one did.

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

Scores (``scores()``, for :class:`attnprune.LearnedImportance`): ``aswl-structured``
gives channel ``c`` of group ``g``, ranked ``r`` (0 = largest filter L1 norm) among
the group's ``n`` channels of which ``k`` are kept at the calibrated ``beta``,
``1 + (k - r - 0.5) / n``: kept channels score above 1 and closed ones below, so one
global threshold at 1 reproduces the selection (and thresholds near 1 move each
group's boundary by the rank order). ``normalize = None``. The unstructured
``aswl`` has no channel scores and raises.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from ..core.budget import BudgetResult, select_channels
from ..errors import BudgetError, EquivalenceError
from ..core.groups import NORM_TYPES
from ..core.instrument import outputs_close
from .abp import filter_l1
from .base import Phase, PruningMethod, TrainConfig, register_method

__all__ = ["ASWLConfig", "ASWLStructuredConfig", "ASWLMethod", "ASWLStructuredMethod", "WeightMask", "layer_ratios"]

_PRODUCERS = (nn.modules.conv._ConvNd, nn.Linear)
P_MAX = 0.99  # the paper's cap on one layer's pruning ratio


def layer_ratios(att: torch.Tensor, beta: float) -> torch.Tensor:
    """``p = min(0.99, beta * (1 - a))`` (eq. 2), differentiable in ``a``."""
    return torch.clamp(beta * (1.0 - att), min=0.0, max=P_MAX)


def _num(v) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and v == v


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
    joint_epochs: int = 3
    ramp_epochs: int = 2
    lam: float = 0.5
    beta: float | None = None
    att_lr: float = 0.01
    a_min: float = 0.01
    fixed_epochs: int = 0

    def __post_init__(self):
        super().__post_init__()
        if not _num(self.lam) or self.lam < 0:
            raise ValueError(f"lam must be a number >= 0, got {self.lam!r}")
        if self.beta is not None and (not _num(self.beta) or self.beta <= 0):
            raise ValueError(f"beta must be None (calibrated every step) or a number > 0, got {self.beta!r}")
        if not _num(self.att_lr) or self.att_lr <= 0:
            raise ValueError(f"att_lr must be a number > 0, got {self.att_lr!r}")
        if not _num(self.a_min) or not 0 < self.a_min < 0.5:
            raise ValueError(f"a_min must be in (0, 0.5), got {self.a_min!r}")
        self._check_finetune()

    def _check_finetune(self):
        if self.finetune_epochs:
            raise ValueError(
                "aswl is unstructured: fine-tuning the returned plain model would regrow the zeroed "
                f"weights, so finetune_epochs must be 0 (got {self.finetune_epochs}); use "
                "fixed_epochs to train with the final masks fixed"
            )


@dataclass(frozen=True)
class ASWLStructuredConfig(ASWLConfig):
    """Options of structured ASWL (ASWL's, plus fine-tuning after removal).

    Attributes:
        mask_training: Also close, in every step, the channels the current ``beta``
            would close (gate ``a_g * mask``), as unstructured ASWL masks weights;
            False gates every channel by ``a_g`` only.
    """

    finetune_epochs: int = 1
    mask_training: bool = False

    def _check_finetune(self):
        if self.fixed_epochs:
            raise ValueError("fixed_epochs is for the unstructured aswl; aswl-structured fine-tunes after removal")
        if not isinstance(self.mask_training, bool):
            raise ValueError(f"mask_training must be a bool, got {self.mask_training!r}")


class WeightMask(nn.Module):
    """Parametrisation ``weight -> weight * mask`` closing the ``k`` smallest ``|weight|``."""

    def __init__(self):
        super().__init__()
        self.k = 0

    @staticmethod
    def mask_of(weight: torch.Tensor, k: int) -> torch.Tensor:
        mask = torch.ones(weight.numel(), dtype=weight.dtype, device=weight.device)
        if k > 0:
            idx = torch.topk(weight.detach().abs().flatten(), k, largest=False, sorted=False).indices
            mask[idx] = 0
        return mask.view_as(weight)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.k <= 0:
            return weight
        return weight * self.mask_of(weight, self.k)


class _ASWLBase(PruningMethod):
    """Attention vector, ``beta`` solving and the sparsity regulariser, shared by both."""

    config_class = ASWLConfig
    normalize = None
    state_attributes = ("step", "beta", "current_ratio", "beta_history", "final_beta")

    # subclasses set self.sizes (n_l, float tensor) and implement removed_fraction(beta)
    def _init_attention(self, n: int) -> None:
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
        if self.ramp_steps <= 0:
            return self.budget.ratio
        return self.budget.ratio * min(1.0, step / self.ramp_steps)

    def attention(self) -> torch.Tensor:
        return self.att.detach().float().cpu()

    def removed_fraction(self, beta: float, att: torch.Tensor) -> float:
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


@register_method("aswl")
class ASWLMethod(_ASWLBase):
    """ASWL (He, Shi, Dong): layer attention sets per-layer magnitude-pruning ratios (unstructured)."""

    config_class = ASWLConfig
    #: Not pruned by channel removal; see :meth:`finalize_unstructured`.
    structured = False
    joint_gates = "off"  # the instrumented channel gates stay off; this method has its own hooks

    def setup(self) -> None:
        inst = self.inst
        model = inst.model
        graph = inst.graph
        self.layers: list[nn.Module] = []
        self.names: list[str] = []
        self.gate_modules: list[nn.Module] = []
        for name, m in model.named_modules():
            if isinstance(m, _PRODUCERS) and isinstance(getattr(m, "weight", None), nn.Parameter):
                self.layers.append(m)
                self.names.append(name)
                self.gate_modules.append(self._gate_point(graph, m))
        if not self.layers:
            raise ValueError("aswl needs at least one Conv or Linear layer")
        self._init_attention(len(self.layers))
        self.sizes = torch.tensor([float(m.weight.numel()) for m in self.layers], device=self.att.device)
        self.total_params = sum(p.numel() for p in model.parameters())
        self.masks_param: list[WeightMask] = []
        for m in self.layers:
            wm = WeightMask()
            parametrize.register_parametrization(m, "weight", wm, unsafe=True)
            self.masks_param.append(wm)
        for i, g in enumerate(self.gate_modules):
            self.handles.append(g.register_forward_hook(self._attend(i)))
        self.finalized: BudgetResult | None = None
        self.final_beta: float | None = None
        reachable = P_MAX * float(self.sizes.sum()) / self.total_params
        if self.budget.ratio > reachable + 0.01:
            self.detach()
            raise BudgetError(
                f"ratio {self.budget.ratio:.3f} of params cannot be reached by aswl: at most 99% of each "
                f"conv/linear weight is zeroed, so the largest reachable ratio is {reachable:.3f}"
            )

    @staticmethod
    def _gate_point(graph, m: nn.Module) -> nn.Module:
        """The layer's affine norm when the layer feeds only that norm (and it only the layer)."""
        node = graph.module2node.get(m)
        if node is None:
            return m
        outs = [o.module for o in node.outputs]
        if len(outs) == 1 and isinstance(outs[0], NORM_TYPES) and outs[0].affine:
            norm_node = graph.module2node.get(outs[0])
            if norm_node is not None and [i.module for i in norm_node.inputs] == [m]:
                return outs[0]
        return m

    def _attend(self, i: int):
        def hook(module, inputs, output):
            return output * self.att[i].to(output.dtype)

        return hook

    # -- masks --------------------------------------------------------------------
    def counts(self, beta: float, att: torch.Tensor | None = None) -> list[int]:
        """Weights masked per layer: ``round(p_l * n_l)``."""
        att = self.attention() if att is None else att
        p = layer_ratios(att, beta)
        return [int(math.floor(float(pl) * int(n) + 0.5)) for pl, n in zip(p, self.sizes.cpu().tolist())]

    def removed_fraction(self, beta: float, att: torch.Tensor) -> float:
        return sum(self.counts(beta, att)) / self.total_params

    def apply_beta(self, beta: float) -> None:
        for wm, k in zip(self.masks_param, self.counts(beta)):
            wm.k = k

    def phases(self, trained: bool = False) -> list[Phase]:
        out = super().phases(trained)
        if self.config.fixed_epochs:
            out.append(self.cnn_phase("fixed", self.config.fixed_epochs))
        return out

    def start_phase(self, phase: Phase) -> None:
        if phase.name == "fixed":
            self.final_beta = self.solve_beta(self.budget.ratio)
            self.beta = self.final_beta
            self.apply_beta(self.final_beta)
        super().start_phase(phase)

    # -- the end --------------------------------------------------------------------
    def scores(self) -> list[torch.Tensor]:
        raise NotImplementedError("aswl is unstructured: it has no channel scores (use aswl-structured)")

    def select(self) -> BudgetResult:
        """Finish unstructured pruning (once) and return a selection that removes no channel.

        The pipeline then finds nothing to remove; the zeros are already in the weights.
        """
        if self.finalized is None:
            self.finalize_unstructured()
        return self.finalized

    @torch.no_grad()
    def finalize_unstructured(self, verify: bool = True, rtol: float = 1e-4) -> BudgetResult:
        """Calibrate ``beta``, write the zeros, fold the attentions, remove every hook.

        Returns:
            A :class:`BudgetResult` keeping every channel, with ``ratio`` the fraction of
            all parameters that are exact zeros, ``params`` the nonzero count and
            ``macs`` the dense MACs.

        Raises:
            EquivalenceError: The plain model differs from the masked, attended one.
        """
        if self.finalized is not None:
            return self.finalized
        model = self.inst.model
        beta = self.final_beta if self.final_beta is not None else self.solve_beta(self.budget.ratio)
        self.final_beta = beta
        self.apply_beta(beta)
        old_mode = self.inst.mode
        self.inst.mode = "off"
        modes = {m: m.training for m in model.modules()}
        model.eval()
        args = self.inst.example_inputs
        reference = model(*args) if verify else None
        att = self.att.detach()
        for m, wm in zip(self.layers, self.masks_param):
            mask = WeightMask.mask_of(m.parametrizations.weight.original, wm.k)  # as in the forward
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)
            m.weight.mul_(mask)
        self.masks_param = []
        for h in self.handles:
            h.remove()
        self.handles = []
        for i, g in enumerate(self.gate_modules):
            a = att[i].to(g.weight.dtype)
            g.weight.mul_(a)
            if getattr(g, "bias", None) is not None:
                g.bias.mul_(a)
        if verify:
            ok, err = outputs_close(reference, model(*args), rtol)
            if not ok:
                raise EquivalenceError(f"aswl: the plain model differs from the masked, attended one by {err:.2e}")
        for m, t in modes.items():
            m.training = t
        self.inst.mode = old_mode
        zeros = sum(int((p == 0).sum()) for p in model.parameters())
        total = sum(p.numel() for p in model.parameters())
        masks = [torch.ones(g.n_channels, dtype=torch.bool) for g in self.inst.groups]
        self.finalized = BudgetResult(masks=masks, ratio=zeros / total, params=total - zeros,
                                      macs=self.inst.cost.dense_macs, threshold=beta)
        return self.finalized

    def report(self) -> dict:
        att = self.attention()
        beta = self.final_beta if self.final_beta is not None else self.solve_beta(self.budget.ratio)
        out = {
            "structured": False,
            "beta": beta,
            "beta_in_training": self.beta,
            "attention": dict(zip(self.names, att.tolist())),
            "layer_ratios": dict(zip(self.names, layer_ratios(att, beta).tolist())),
            "note": "unstructured: weights are zeroed, no layer shrinks; params_after counts nonzero "
                    "parameters and macs_after is the dense count",
        }
        if self.finalized is not None:
            r = self.finalized
            total = sum(p.numel() for p in self.inst.model.parameters())
            out.update(sparsity=r.ratio, nonzero_params=r.params, zero_params=total - r.params,
                       total_params=total)
        return out

    def detach(self) -> None:
        """Remove the hooks and parametrisations (dense weights restored) if not finalized."""
        super().detach()
        for m in getattr(self, "layers", []):
            if parametrize.is_parametrized(m, "weight"):
                parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)
        self.masks_param = []


@register_method("aswl-structured")
class ASWLStructuredMethod(_ASWLBase):
    """ASWL's mechanism on channel groups: group attention sets the group's ratio, L1 ranks within it."""

    config_class = ASWLStructuredConfig
    joint_gates = "analog"
    state_attributes = _ASWLBase.state_attributes + ("keep",)

    def setup(self) -> None:
        inst = self.inst
        self._init_attention(len(inst.groups))
        costs = inst.cost.channel_costs(self.budget.target)
        self.sizes = torch.tensor([float(c.sum()) for c in costs], device=self.att.device)
        self.which = 0 if self.budget.target == "params" else 1
        self.dense = (inst.cost.dense_params, inst.cost.dense_macs)[self.which]
        self.keep: list[torch.Tensor] = [torch.ones(g.n_channels, device=self.att.device) for g in inst.groups]
        self.folded = False
        self.unfolded: list[str] = []
        b = self.budget  # an unreachable ratio fails now, not at the end
        select_channels(inst.cost, [torch.ones(g.n_channels) for g in inst.groups], b.ratio, b.target,
                        round_to=b.round_to, normalize=None)

    # -- ranking and masks --------------------------------------------------------
    def ranks(self) -> list[torch.Tensor]:
        """Within-group order of the channels' pattern units by filter L1 norm (best first)."""
        out = []
        for g in self.inst.groups:
            units = filter_l1(g).view(g.ch_groups, -1).mean(0)
            out.append(torch.argsort(units, descending=True, stable=True))
        return out

    def kept_units(self, beta: float, att: torch.Tensor | None = None) -> list[int]:
        """Pattern units kept per group at ``beta`` (rounded; ``round_to`` honoured; never 0)."""
        att = self.attention() if att is None else att
        p = layer_ratios(att, beta).tolist()
        out = []
        for g, pg in zip(self.inst.groups, p):
            n = g.n_channels // g.ch_groups
            kept = n - int(math.floor(pg * n + 0.5))
            step = 1
            if self.budget.round_to:
                step = math.lcm(self.budget.round_to, g.ch_groups) // g.ch_groups
            if step > 1 and kept < n:
                kept = min(n, max(step, int(round(kept / step)) * step))
            out.append(max(kept, 1))
        return out

    def masks_for(self, beta: float, att: torch.Tensor | None = None, ranks=None) -> list[torch.Tensor]:
        ranks = self.ranks() if ranks is None else ranks
        masks = []
        for g, order, k in zip(self.inst.groups, ranks, self.kept_units(beta, att)):
            unit = torch.zeros(len(order), dtype=torch.bool)
            unit[order[:k]] = True
            masks.append(unit.repeat(g.ch_groups))
        return masks

    def removed_fraction(self, beta: float, att: torch.Tensor) -> float:
        # during training: the cost fraction the group ratios would remove, to first order
        p = layer_ratios(att, beta)
        return float((p * self.sizes.cpu()).sum()) / self.dense

    def exact_fraction(self, masks) -> float:
        return 1.0 - self.inst.cost.count(masks)[self.which] / self.dense

    def apply_beta(self, beta: float) -> None:
        if self.config.mask_training:
            self.keep = [m.to(self.att.device, self.att.dtype) for m in self.masks_for(beta)]

    def _gate_values(self) -> list[torch.Tensor]:
        return [self.att[i] * k for i, k in enumerate(self.keep)]

    def start_phase(self, phase: Phase) -> None:
        if phase.gates == "analog":
            self.inst.set_scores(self._gate_values)
        super().start_phase(phase)

    # -- selection ----------------------------------------------------------------
    def calibrated(self) -> tuple[float, list[torch.Tensor]]:
        """``beta`` meeting the budget on the exact count, and its masks."""
        ranks = self.ranks()
        att = self.attention()
        b = self.budget
        beta = self.solve_beta(b.ratio, att, exact=lambda x: self.exact_fraction(self.masks_for(x, att, ranks)))
        best = None
        for cand in (beta, beta * (1 - 1e-6)):  # first beta reaching the ratio, and just below it
            masks = self.masks_for(cand, att, ranks)
            err = abs(self.exact_fraction(masks) - b.ratio)
            if best is None or err < best[0]:
                best = (err, cand, masks)
        return best[1], best[2]

    def scores(self) -> list[torch.Tensor]:
        """Rank scores: above 1 for the channels kept at the calibrated ``beta``, below 1 else."""
        beta, _ = self.calibrated()
        out = []
        for g, order, k in zip(self.inst.groups, self.ranks(), self.kept_units(beta)):
            n = len(order)
            rank = torch.empty(n)
            rank[order] = torch.arange(n, dtype=torch.float)
            out.append((1.0 + (k - rank - 0.5) / n).repeat(g.ch_groups))
        return out

    def select(self) -> BudgetResult:
        b = self.budget
        beta, masks = self.calibrated()
        self.final_beta = beta
        tol = 0.02 if b.round_to else 0.01
        ratio = self.exact_fraction(masks)
        if abs(ratio - b.ratio) <= tol:
            params, macs = self.inst.cost.count(masks)
            self.fallback = False
            return BudgetResult(masks=masks, ratio=ratio, params=params, macs=macs, threshold=1.0)
        # one beta cannot hit it (a coarse group): the global search on the rank scores can
        self.fallback = True
        return select_channels(self.inst.cost, self.scores(), b.ratio, b.target, round_to=b.round_to, normalize=None)

    def report(self) -> dict:
        att = self.attention()
        beta = getattr(self, "final_beta", None)
        if beta is None:
            beta, _ = self.calibrated()
        return {
            "structured": True,
            "beta": beta,
            "beta_in_training": self.beta,
            "attention": {g.name: float(a) for g, a in zip(self.inst.groups, att)},
            "group_ratios": {g.name: float(p) for g, p in zip(self.inst.groups, layer_ratios(att, beta))},
            "budget_search_fallback": getattr(self, "fallback", False),
            "unfolded_gates": list(self.unfolded),
        }

    # -- the end --------------------------------------------------------------------
    @torch.no_grad()
    def fold_attention(self) -> None:
        """Multiply each gate point's channels by its group's ``a_g`` (weights and bias).

        Afterwards the model with gates off (or binary) computes what it computed with
        the analog gates ``a_g``; a norm without affine parameters cannot take the
        scale and is listed in ``report()["unfolded_gates"]``.
        """
        if self.folded:
            return
        att = self.att.detach()
        for g in self.inst.groups:
            a = att[g.index]
            for s in g.spans:
                if s.role != "out" or s.name not in g.gate_names:
                    continue
                m = s.module
                idx = s.local.to(att.device)
                w = getattr(m, "weight", None)
                if w is None or (isinstance(m, nn.modules.conv._ConvNd) and m.transposed and m.groups > 1):
                    self.unfolded.append(s.name)
                    continue
                if isinstance(m, nn.modules.conv._ConvNd) and m.transposed:
                    w[:, idx] *= a
                else:
                    w[idx] *= a
                if getattr(m, "bias", None) is not None:
                    m.bias[idx] *= a
        self.folded = True

    def detach(self) -> None:
        super().detach()
        if self.inst is not None and self.inst._state == "active":
            if self.inst.mode == "analog":
                self.inst.mode = "off"
            self.fold_attention()
