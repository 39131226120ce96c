"""Baselines: rank once with a torch-pruning importance, prune, fine-tune.

``l1``: group L1 norm of the filters (Li et al., "Pruning Filters for Efficient
ConvNets", ICLR 2017), through ``tp.importance.GroupMagnitudeImportance(p=1)``.
``taylor``: first-order Taylor expansion (Molchanov et al., CVPR 2019), through
``tp.importance.GroupTaylorImportance`` on gradients accumulated over a few
batches. torch-pruning 1.6 never scores BatchNorm there (its BN branch tests the
GroupNorm pruning function), so the BN terms ``|gamma * dL/dgamma| + |beta * dL/dbeta|``
are added here.
``slim``: network slimming (Liu et al., ICCV 2017): an L1 penalty on BatchNorm
scales during warm-up (a ``sparsity_epochs`` phase from a trained model), then
rank by ``|gamma|`` (``tp.importance.BNScaleImportance``).
``random``: uniformly random scores (a sanity floor).

All four are ranked globally by :mod:`attnprune.core.budget` (mean-normalised per group);
torch-pruning's own global mode is not used, since it silently skips a group whose
channels all fall under the threshold.

torch-pruning: these baselines *are* torch-pruning's importance criteria, so this
module calls ``tp.importance`` on torch-pruning groups. It never reads the
dependency graph itself: the group of a :class:`~attnprune.core.groups.ChannelGroup`
comes from :func:`attnprune.core.groups.pruning_group`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch_pruning as tp

from .._batch import call_model
from .._modes import eval_mode
from ..core.groups import NORM_TYPES, pruning_group
from .base import Phase, PruningMethod, TrainConfig, register_method
from .options import option

__all__ = ["BaselineConfig", "TaylorConfig", "SlimConfig", "L1Method", "TaylorMethod", "SlimMethod", "RandomMethod"]


@dataclass(frozen=True)
class BaselineConfig(TrainConfig):
    """Baselines train ``warmup_epochs``, rank once, then fine-tune ``finetune_epochs``.

    The defaults give the same total passes as PAAM's defaults (four). Every
    option is :class:`~attnprune.methods.base.TrainConfig`'s.
    """

    warmup_epochs: int = 2
    finetune_epochs: int = 2


@dataclass(frozen=True)
class TaylorConfig(BaselineConfig):
    """Options of the Taylor baseline.

    Attributes:
        taylor_batches: Batches whose gradients are accumulated for the Taylor score.
    """

    taylor_batches: int = option(8, low=1)


@dataclass(frozen=True)
class SlimConfig(BaselineConfig):
    """Options of network slimming.

    Attributes:
        sparsity: Weight of the L1 penalty on BatchNorm scales during warm-up (and
            during the sparsity phase of a trained model).
        sparsity_epochs: With ``trained=True`` (no warm-up), epochs of a sparsity
            phase training the CNN with the penalty before ranking (0: rank the
            trained model's ``|gamma|`` as it is).
    """

    sparsity: float = option(1e-4, low=0)
    sparsity_epochs: int = option(1, low=0)


class _TPImportanceMethod(PruningMethod):
    """Scores every group with a torch-pruning importance (no normaliser: ours is global)."""

    config_class = BaselineConfig

    def importance(self) -> tp.importance.Importance:
        raise NotImplementedError

    def tp_group(self, g):
        """torch-pruning's group of all of ``g``'s channels."""
        return pruning_group(self.inst.graph, g)

    def scores(self) -> list[torch.Tensor]:
        imp = self.importance()
        out = []
        for g in self.inst.groups:
            s = imp(self.tp_group(g))
            out.append(torch.ones(g.n_channels) if s is None else s.detach().float().cpu())
        return out


@register_method("l1")
class L1Method(_TPImportanceMethod):
    """Group L1-norm ranking (Li et al. 2017) after warm-up."""

    paper = 'H. Li, A. Kadav, I. Durdanovic, H. Samet, H. P. Graf, "Pruning Filters for Efficient ConvNets", ICLR 2017'

    def importance(self):
        return tp.importance.GroupMagnitudeImportance(p=1, group_reduction="mean", normalizer=None)


@register_method("taylor")
class TaylorMethod(_TPImportanceMethod):
    """First-order Taylor ranking (Molchanov et al. 2019), with BatchNorm terms added."""

    config_class = TaylorConfig
    paper = (
        'P. Molchanov, A. Mallya, S. Tyree, I. Frosio, J. Kautz, '
        '"Importance Estimation for Neural Network Pruning", CVPR 2019'
    )

    def importance(self):
        return tp.importance.GroupTaylorImportance(group_reduction="mean", normalizer=None)

    def scores(self) -> list[torch.Tensor]:
        ctx = self.context
        if ctx.batches is None or ctx.loss_fn is None:
            raise RuntimeError("taylor needs batches and a loss: attach it with a Context")
        model = self.inst.model
        model.zero_grad(set_to_none=True)
        with eval_mode(model):
            for i, (x, y) in enumerate(ctx.batches()):
                if i >= self.config.taylor_batches:
                    break
                ctx.loss_fn(call_model(model, x), y).backward()
        base = super().scores()
        for g, s in zip(self.inst.groups, base):
            extra = torch.zeros(g.n_channels)
            for span in g.spans:
                m = span.module
                if span.role == "out" and isinstance(m, NORM_TYPES) and m.affine and m.weight.grad is not None:
                    t = (m.weight * m.weight.grad).abs() + (m.bias * m.bias.grad).abs()
                    extra.index_add_(0, span.root, t.detach().cpu()[span.local])
            s += extra
        model.zero_grad(set_to_none=True)
        return base


@register_method("slim")
class SlimMethod(_TPImportanceMethod):
    """Network slimming (Liu et al. 2017): L1 on BN scales in warm-up, rank by |gamma|.

    From a trained model (``trained=True``, no warm-up) the penalty runs in a
    ``"sparsity"`` phase of ``sparsity_epochs`` epochs, so the ranking is still the
    slimmed one rather than the plain ``|gamma|`` of the trained model.
    """

    config_class = SlimConfig
    paper = (
        'Z. Liu, J. Li, Z. Shen, G. Huang, S. Yan, C. Zhang, '
        '"Learning Efficient Convolutional Networks through Network Slimming", ICCV 2017'
    )

    def setup(self):
        self.bns = list(dict.fromkeys(
            s.module for g in self.inst.groups for s in g.spans
            if s.role == "out" and isinstance(s.module, NORM_TYPES) and s.module.affine
        ))

    def phases(self, trained: bool = False) -> list[Phase]:
        """The warm-up (penalised) from scratch; a sparsity phase of ``sparsity_epochs`` when trained."""
        if trained:
            epochs = self.config.sparsity_epochs
            return [self.cnn_phase("sparsity", epochs)] if epochs > 0 else []
        return super().phases(trained)

    def regularizer(self, phase: Phase):
        if phase.name not in ("warmup", "sparsity") or not self.bns or self.config.sparsity == 0:
            return None
        return self.config.sparsity * sum(bn.weight.abs().sum() for bn in self.bns)

    def importance(self):
        return tp.importance.BNScaleImportance(group_reduction="mean", normalizer=None)

    def scores(self):
        out = super().scores()
        # groups without a BatchNorm fall back to the filters' L1 norm
        l1 = tp.importance.GroupMagnitudeImportance(p=1, normalizer=None)
        for i, g in enumerate(self.inst.groups):
            if not any(s.role == "out" and s.module in self.bns for s in g.spans):
                out[i] = l1(self.tp_group(g)).detach().float().cpu()
        return out


@register_method("random")
class RandomMethod(PruningMethod):
    """Uniformly random scores, seeded by ``prune(seed=...)``."""

    paper = 'none (a baseline: channels chosen at random)'

    config_class = BaselineConfig
    state_attributes = ("generator_state",)

    def setup(self):
        self.generator = torch.Generator().manual_seed(self.context.seed or 0)

    @property
    def generator_state(self) -> torch.Tensor:
        """State of the generator drawing the scores (saved in checkpoints)."""
        return self.generator.get_state()

    @generator_state.setter
    def generator_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)

    def scores(self):
        return [torch.rand(g.n_channels, generator=self.generator) for g in self.inst.groups]
