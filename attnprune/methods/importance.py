"""A method's learned scores as a torch-pruning ``Importance``.

``LearnedImportance(method)`` lets an attached (trained) attnprune method drive
torch-pruning's own pruners, e.g. ``tp.pruner.MetaPruner``: called on any
torch-pruning group, it returns the method's scores in that group's root index
space (torch-pruning's ``Importance`` contract).

torch-pruning: this module implements torch-pruning's ``Importance`` interface, so
it reads the torch-pruning groups that torch-pruning's pruners pass to it (their
root module and indices); it never builds or walks a dependency graph.
"""

from __future__ import annotations

import torch
import torch_pruning as tp

from .base import PruningMethod

__all__ = ["LearnedImportance"]


class LearnedImportance(tp.importance.Importance):
    """Serve an attached method's scores to torch-pruning.

    Args:
        method: A :class:`~attnprune.methods.base.PruningMethod` attached to an
            instrumented model.
        normalize: Apply the method's own cross-group normalisation (so a global
            torch-pruning ranking compares groups as attnprune's budget does).
    """

    def __init__(self, method: PruningMethod, normalize: bool = True):
        if method.inst is None:
            raise ValueError("LearnedImportance needs an attached method: call method.attach(...) first")
        self.method = method
        self.normalize = normalize
        # map every module whose output channels a group removes to (group, local->root)
        self._lookup = {}
        for g in method.inst.groups:
            for span in g.spans:
                if span.role == "out":
                    local_to_root = dict(zip(span.local.tolist(), span.root.tolist()))
                    self._lookup.setdefault(span.module, (g.index, local_to_root))

    def scores(self) -> list[torch.Tensor]:
        from ..core.budget import normalize_scores

        scores = self.method.scores()
        return normalize_scores(scores, self.method.normalize) if self.normalize else scores

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor | None:
        """Scores of ``group``'s channels, in its root index order (None if not ours)."""
        root = group[0].dep.target.module
        if root not in self._lookup:
            return None
        gi, local_to_root = self._lookup[root]
        idxs = group[0].idxs  # root module's own indices
        ours = torch.tensor([local_to_root[i] for i in idxs], dtype=torch.long)
        return self.scores()[gi][ours]
