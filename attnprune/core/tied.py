"""Tied weights: a parameter shared by two modules cannot be pruned exactly.

Removing channels gives each module its own, smaller tensor, so a tie would be
silently undone (and a count that sees one tensor twice would be wrong).
``prune()`` refuses such a model before training.
"""

from __future__ import annotations

import torch.nn as nn

from ..errors import UnsupportedModelError

__all__ = ["shared_parameters", "check_untied"]


def shared_parameters(model: nn.Module) -> list[list[str]]:
    """Parameters that two or more distinct modules hold (tied weights), by qualified name.

    Returns:
        One list per shared tensor: its qualified names (``["c2.weight", "c3.weight"]``),
        in model order; empty when no parameter is tied.
    """
    owners: dict[int, list[str]] = {}
    for mod_name, module in model.named_modules():
        for p_name, p in module.named_parameters(recurse=False):
            owners.setdefault(id(p), []).append(f"{mod_name}.{p_name}" if mod_name else p_name)
    return [names for names in owners.values() if len(names) > 1]


def check_untied(model: nn.Module) -> None:
    """Refuse a model whose modules share a parameter: removing channels would untie it.

    Raises:
        UnsupportedModelError: naming the modules that share a tensor.
    """
    tied = shared_parameters(model)
    if tied:
        names = tied[0]
        modules = [n.rpartition(".")[0] or "(the model)" for n in names]
        raise UnsupportedModelError(
            f"modules {' and '.join(repr(m) for m in modules)} share one parameter ({' = '.join(names)}); "
            "attnprune cannot prune tied weights exactly (removing channels would untie them): give each "
            "module its own parameter"
            + (f" ({len(tied) - 1} more tied tensor(s))" if len(tied) > 1 else "")
        )
