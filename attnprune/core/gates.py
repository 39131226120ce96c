"""Gate hooks: multiply feature maps by per-group gate vectors.

One forward hook per :class:`~attnprune.core.groups.GatePoint`. All groups' current
gate values are concatenated once per model forward into one flat vector (with a
trailing 1 for channels no group covers), and each gate point gathers its own
vector from it with a precomputed index, so concat networks whose norms span
several groups cost one gather per hook.

Modes:
    ``"off"``: the hooks pass outputs through untouched (the plain model).
    ``"binary"``: gates are the 0/1 keep-masks.
    ``"analog"``: gates are real-valued scores set by a method, either as tensors or
    as a callable evaluated once per forward pass (so gradients reach the method's
    own parameters).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn as nn

from .groups import GatePoint

__all__ = ["GateSet", "MODES"]

MODES = ("off", "analog", "binary")


class GateSet:
    """Owns the gate hooks of one model and the values they apply.

    Args:
        model: The model being instrumented (gets one forward pre-hook).
        gate_points: Where the gates go.
        sizes: Number of channels of each group, in group order.
    """

    def __init__(self, model: nn.Module, gate_points: Sequence[GatePoint], sizes: Sequence[int]):
        self.sizes = list(sizes)
        offsets = [0]
        for n in self.sizes:
            offsets.append(offsets[-1] + n)
        ones_at = offsets[-1]
        self._index: dict[nn.Module, torch.Tensor] = {}
        self._channel_dim: dict[nn.Module, int] = {}
        for p in gate_points:
            idx = torch.full((p.n_channels,), ones_at, dtype=torch.long)
            for g, local, root in p.parts:
                idx[local] = root + offsets[g]
            self._index[p.module] = idx
            self._channel_dim[p.module] = p.channel_dim
        self.mode = "off"
        self.masks: list[torch.Tensor] = [torch.ones(n, dtype=torch.bool) for n in self.sizes]
        self.scores: list[torch.Tensor] | Callable[[], list[torch.Tensor]] | None = None
        self._flat: torch.Tensor | None = None
        self.handles = [model.register_forward_pre_hook(self._new_forward)]
        self.handles += [p.module.register_forward_hook(self._apply) for p in gate_points]

    # -- values -----------------------------------------------------------------
    def _new_forward(self, module, args):
        if self.mode == "analog":
            self._flat = None  # scores may depend on parameters that changed

    def invalidate(self) -> None:
        """Forget cached gate values (after masks or scores change)."""
        self._flat = None

    def _values(self) -> list[torch.Tensor]:
        if self.mode == "binary":
            return [m.float() for m in self.masks]
        scores = self.scores() if callable(self.scores) else self.scores
        if scores is None:
            raise RuntimeError("analog mode needs scores: call set_scores() first")
        return list(scores)

    def flat(self) -> torch.Tensor:
        """All groups' gate values in one vector, with a trailing 1."""
        if self._flat is None:
            values = self._values()
            ref = values[0]
            self._flat = torch.cat([v.reshape(-1).to(ref.dtype) for v in values] + [ref.new_ones(1)])
        return self._flat

    # -- hook -------------------------------------------------------------------
    def _apply(self, module, inputs, output):
        if self.mode == "off":
            return None
        flat = self.flat()
        if flat.device != output.device:
            flat = flat.to(output.device)
            self._flat = flat  # keep it there until values change
        idx = self._index[module]
        if idx.device != flat.device:
            idx = idx.to(flat.device)
            self._index[module] = idx
        gate = flat[idx].to(output.dtype)
        shape = [1] * output.dim()
        shape[self._channel_dim[module]] = -1
        return output * gate.view(shape)

    def remove(self) -> None:
        """Remove exactly the hooks this object registered."""
        for h in self.handles:
            h.remove()
        self.handles = []
