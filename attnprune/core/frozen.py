"""Frozen parameters (``requires_grad=False``) and the channel groups.

torch-pruning builds its dependency graph by following autograd, so a layer whose
parameters are all frozen would be invisible to it (left unpruned, or "no
prunable channel group" when everything but the head is frozen). attnprune
therefore traces with every parameter requiring grad (:func:`all_grad`) and
restores each flag exactly; training still respects ``requires_grad`` (the
runner optimises only parameters that require grad), and the pruned model keeps
the flags (:func:`keep_grad_flags`, around torch-pruning's removal, which
replaces each pruned parameter by a new one). To keep a frozen layer at full
width, pass it in ``ignored_layers``.
"""

from __future__ import annotations

import contextlib

import torch.nn as nn

from .._modes import grad_flags

__all__ = ["all_grad", "keep_grad_flags", "frozen_layers"]


def all_grad(model: nn.Module):
    """Every parameter of ``model`` requires grad inside; each flag is restored exactly on exit."""
    return grad_flags(model.parameters(), True)


@contextlib.contextmanager
def keep_grad_flags(model: nn.Module):
    """Give the parameters found under each (module, name) after the block the flags they had before.

    torch-pruning swaps a pruned weight for a new ``nn.Parameter`` (which requires
    grad); this carries the ``requires_grad`` flag of the old one over.
    """
    flags = {(mod, name): p.requires_grad for mod in model.modules()
             for name, p in mod.named_parameters(recurse=False)}
    try:
        yield
    finally:
        for (mod, name), flag in flags.items():
            p = getattr(mod, name, None)
            if isinstance(p, nn.Parameter):
                p.requires_grad_(flag)


def frozen_layers(model: nn.Module) -> list[str]:
    """Qualified names of the modules whose own parameters are all frozen (``requires_grad=False``)."""
    out = []
    for name, m in model.named_modules():
        own = list(m.parameters(recurse=False))
        if own and not any(p.requires_grad for p in own):
            out.append(name)
    return out
