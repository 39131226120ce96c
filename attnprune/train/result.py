"""What :func:`attnprune.prune` returns: the pruned model and its report."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch.nn as nn

from .runner import EpochRecord

__all__ = ["GroupReport", "PruneReport", "PruneResult"]


@dataclass
class GroupReport:
    """Kept channels of one group (named after its root layer: its first conv/linear producer).

    Attributes:
        name: The group's root layer.
        kept: Channels kept.
        total: Channels before pruning.
        limit: ``"min_keep"`` or ``"max_group_ratio"`` when the group kept exactly
            that limit's floor (the limit bound it), else None.
        frozen: The root layer's parameters are all frozen (``requires_grad=False``).
    """

    name: str
    kept: int
    total: int
    limit: str | None = None
    frozen: bool = False


@dataclass
class PruneReport:
    """What :func:`prune` did. ``macs`` are multiply-accumulates per sample (fvcore).

    ``round_to`` is the channel multiple used (None: free counts);
    ``round_to_source`` says where it came from: ``requested`` (``"auto"`` or the
    int given), and for ``"auto"`` the ``provider`` and the CPU's
    ``vector_extensions`` it was chosen from. ``latency`` (``target="latency"``
    only) gives the latency model's prediction and the measurement after
    ``finalize()`` side by side: ``batch``, ``threads``, ``provider``,
    ``predicted_dense_ms``, ``predicted_pruned_ms``, ``measured_dense_ms``,
    ``measured_pruned_ms`` (ONNX Runtime medians), ``predicted_removed``,
    ``measured_removed`` and ``model_from_cache``.

    ``accuracy_before_pruning`` is measured on the model the method starts pruning
    (after warm-up, gates off); ``accuracy_at_removal`` right after the closed
    channels are removed, before fine-tuning; ``accuracy_after`` at the end.

    ``min_keep`` and ``max_group_ratio`` are the per-group limits asked for (the
    groups they bound have ``GroupReport.limit`` set); ``frozen_layers`` the
    layers whose parameters were all frozen (pruned like the others, still
    frozen); ``score_separation`` the separation index of a learned method's
    scores (:mod:`attnprune.core.separation`; None for other methods);
    ``warnings`` what looked wrong and what to change
    (:mod:`attnprune.train.diagnostics`), also issued as Python warnings.

    ``distill`` (``prune(distill=...)`` only; None when off) records the
    distillation: ``temperature``, ``weight``, ``teacher`` (``"after warm-up"`` or
    ``"the model as given"``) and ``phases``, the names of the phases it applied to
    (:mod:`attnprune.train.distill`).
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
    min_keep: int | None = None
    max_group_ratio: float | None = None
    frozen_layers: list[str] = field(default_factory=list)
    score_separation: float | None = None
    warnings: list[str] = field(default_factory=list)
    round_to_source: dict = field(default_factory=dict)
    latency: dict | None = None
    distill: dict | None = None

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
            shown = (f"{k.replace('accuracy_', '')}: {v:.2f}%" for k, v in acc if v is not None)
            lines.append("top-1 " + "   ".join(shown))
        limited = [g for g in self.groups if g.limit is not None]
        if limited:
            lines.append(f"{len(limited)} group(s) at a limit: "
                         + ", ".join(f"{g.name} ({g.limit}, {g.kept}/{g.total})" for g in limited[:8])
                         + (" ..." if len(limited) > 8 else ""))
        if self.frozen_layers:
            lines.append(f"{len(self.frozen_layers)} frozen layer(s) pruned and kept frozen")
        if self.latency is not None:
            lat = self.latency
            lines.append(
                f"latency (batch {lat['batch']}, {lat['threads']} threads) dense -> pruned: predicted "
                f"{lat['predicted_dense_ms']:.2f} -> {lat['predicted_pruned_ms']:.2f} ms "
                f"({100 * lat['predicted_removed']:.1f}% removed), measured {lat['measured_dense_ms']:.2f} -> "
                f"{lat['measured_pruned_ms']:.2f} ms ({100 * lat['measured_removed']:.1f}% removed)"
            )
        if self.distill is not None:
            d = self.distill
            lines.append(f"distilled (temperature {d['temperature']:g}, weight {d['weight']:g}) from the model "
                         f"{'after warm-up' if d['teacher'] == 'after warm-up' else 'as given'} in: "
                         + (", ".join(d["phases"]) or "no phase"))
        lines.append(f"time {self.seconds:.1f}s")
        lines.extend(f"warning: {w}" for w in self.warnings)
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
