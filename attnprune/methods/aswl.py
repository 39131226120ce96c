"""ASWL, unstructured (``"aswl"``): He, Shi, Dong's method as the paper states it.

The paper's reading and the choices shared with ``"aswl-structured"`` are in
:mod:`attnprune.methods.aswl_base`.

``"aswl"`` (unstructured, the paper's; this module). Attention and masks are this
module's own hooks: a parametrisation ``weight -> weight * mask`` on every
conv/linear layer, and a forward hook multiplying the output of the layer's gate
point (its BatchNorm when the layer feeds only an affine norm, else the layer
itself; before a train-mode norm the scale would cancel) by ``a_l``. ``ratio`` is
the fraction of *all* the model's parameters that end as exact zeros. The method
has ``structured = False`` and follows the same life cycle as every method:
:meth:`ASWLMethod.select` sets ``beta`` by bisection with the learned ``a_l`` so
the ratio is met within one point and returns a selection keeping every channel
(with the zero count the commit will leave), without changing a weight;
:meth:`ASWLMethod.commit` writes the masks into the weights as zeros, folds each
``a_l`` into its gate point's weights (and bias) and removes every parametrisation
and hook: the result is a plain module of the *same* dense shapes, checked
against the masked, attended model. It is not smaller or faster:
``params_after`` in the report is the count of nonzero parameters (the report
says so), ``macs_after`` the dense MACs.

``"aswl-structured"`` (:mod:`attnprune.methods.aswl_structured`) applies the same
mechanism to channel groups.

Scores: the unstructured ``aswl`` has no channel scores and raises (see
:mod:`attnprune.methods.aswl_structured` for the structured method's). ``normalize = None``.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from .._modes import eval_mode
from ..core.budget import BudgetResult, tolerance
from ..core.groups import sole_norm_after
from ..core.instrument import outputs_close
from ..errors import BudgetError, EquivalenceError
from .aswl_base import P_MAX, ASWLBase, ASWLConfig, layer_ratios
from .aswl_structured import ASWLStructuredConfig, ASWLStructuredMethod
from .base import Phase, register_method

__all__ = ["ASWLConfig", "ASWLBase", "ASWLMethod", "WeightMask", "layer_ratios",
           # re-exported: attnprune 0.1 imported them from here
           "ASWLStructuredConfig", "ASWLStructuredMethod"]

_PRODUCERS = (nn.modules.conv._ConvNd, nn.Linear)


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


@register_method("aswl")
class ASWLMethod(ASWLBase):
    """ASWL (He, Shi, Dong): layer attention sets per-layer magnitude-pruning ratios (unstructured)."""

    config_class = ASWLConfig
    #: Not pruned by channel removal: :meth:`commit` writes zeros into the dense weights.
    structured = False
    joint_gates = "off"  # the instrumented channel gates stay off; this method has its own hooks

    def setup(self) -> None:
        inst = self.inst
        model = inst.model
        self.layers: list[nn.Module] = []
        self.names: list[str] = []
        self.gate_modules: list[nn.Module] = []
        for name, m in model.named_modules():
            if isinstance(m, _PRODUCERS) and isinstance(getattr(m, "weight", None), nn.Parameter):
                self.layers.append(m)
                self.names.append(name)
                # before a train-mode norm the scale would cancel: gate the norm the layer feeds alone
                self.gate_modules.append(sole_norm_after(inst.graph, m) or m)
        if not self.layers:
            raise ValueError("aswl needs at least one Conv or Linear layer")
        self.init_attention(len(self.layers))
        self.sizes = torch.tensor([float(m.weight.numel()) for m in self.layers], device=self.att.device)
        self.total_params = sum(p.numel() for p in model.parameters())
        self.masks_param: list[WeightMask] = []
        for m in self.layers:
            wm = WeightMask()
            parametrize.register_parametrization(m, "weight", wm, unsafe=True)
            self.masks_param.append(wm)
        for i, g in enumerate(self.gate_modules):
            self.handles.append(g.register_forward_hook(self._attend(i)))
        self.selected: BudgetResult | None = None
        self.committed = False
        self.final_beta: float | None = None
        reachable = P_MAX * float(self.sizes.sum()) / self.total_params
        if self.budget.ratio > reachable + tolerance(None):
            self.detach()
            raise BudgetError(
                f"ratio {self.budget.ratio:.3f} of params cannot be reached by aswl: at most 99% of each "
                f"conv/linear weight is zeroed, so the largest reachable ratio is {reachable:.3f}"
            )

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
        """Calibrate ``beta`` and return the selection :meth:`commit` will write (no weight changes).

        Returns:
            A :class:`BudgetResult` keeping every channel (the pipeline removes
            none), with ``ratio`` the fraction of all parameters that are exact
            zeros after :meth:`commit`, ``params`` the nonzero count, ``macs`` the
            dense MACs and ``threshold`` the calibrated ``beta``.
        """
        beta = self.final_beta if self.final_beta is not None else self.solve_beta(self.budget.ratio)
        self.final_beta = beta
        self.apply_beta(beta)
        zeros, total = self._committed_zeros()
        masks = [torch.ones(g.n_channels, dtype=torch.bool) for g in self.inst.groups]
        self.selected = BudgetResult(masks=masks, ratio=zeros / total, params=total - zeros,
                                     macs=self.inst.cost.dense("macs"), threshold=beta)
        return self.selected

    @torch.no_grad()
    def _committed_zeros(self) -> tuple[int, int]:
        """(zero, all) parameters the model will have after :meth:`commit`, computed without writing."""
        values = {}
        for m, wm in zip(self.layers, self.masks_param):
            orig = m.parametrizations.weight.original
            values[id(orig)] = orig * WeightMask.mask_of(orig, wm.k)  # as in the forward
        att = self.att.detach()
        for i, g in enumerate(self.gate_modules):
            w = g.parametrizations.weight.original if parametrize.is_parametrized(g, "weight") else g.weight
            a = att[i].to(w.dtype)
            values[id(w)] = values.get(id(w), w) * a
            if getattr(g, "bias", None) is not None:
                values[id(g.bias)] = values.get(id(g.bias), g.bias) * a
        zeros = total = 0
        for p in self.inst.model.parameters():
            v = values.get(id(p), p)
            zeros += int((v == 0).sum())
            total += v.numel()
        return zeros, total

    @torch.no_grad()
    def commit(self, selection: BudgetResult) -> None:
        """Write the zeros, fold the attentions into the gate points, remove every hook (success only).

        Args:
            selection: What :meth:`select` returned (its ``threshold`` is ``beta``).

        Raises:
            EquivalenceError: The plain model differs from the masked, attended one.
        """
        if self.committed:
            return
        model = self.inst.model
        self.apply_beta(selection.threshold)
        old_mode = self.inst.mode
        self.inst.mode = "off"
        args = self.inst.example_inputs
        with eval_mode(model):
            reference = model(*args)
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
            ok, err = outputs_close(reference, model(*args), 1e-4)
            if not ok:
                raise EquivalenceError(f"aswl: the plain model differs from the masked, attended one by {err:.2e}")
        self.inst.mode = old_mode
        self.committed = True

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
        if self.selected is not None:
            r = self.selected
            total = sum(p.numel() for p in self.inst.model.parameters())
            out.update(sparsity=r.ratio, nonzero_params=r.params, zero_params=total - r.params,
                       total_params=total)
        return out

    def detach(self) -> None:
        """Remove the hooks and parametrisations (the dense weights stay as they are); never folds."""
        super().detach()
        for m in getattr(self, "layers", []):
            if parametrize.is_parametrized(m, "weight"):
                parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)
        self.masks_param = []
