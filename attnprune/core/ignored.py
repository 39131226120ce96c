"""The ``ignored_layers`` argument of :func:`attnprune.instrument`, resolved to modules."""

from __future__ import annotations

import torch.nn as nn

__all__ = ["resolve_ignored"]


def resolve_ignored(model: nn.Module, ignored_layers) -> list[nn.Module]:
    """The modules ``ignored_layers`` names (modules or qualified names), containers expanded.

    Raises:
        ValueError: A name or module that is not part of ``model``.
        TypeError: An item that is neither a module nor a name.
    """
    if ignored_layers is None:
        return []
    if isinstance(ignored_layers, (nn.Module, str)):
        ignored_layers = [ignored_layers]
    named = dict(model.named_modules())
    ids = {id(m) for m in named.values()}
    out = []
    for item in ignored_layers:
        if isinstance(item, str):
            if item not in named:
                close = [n for n in named if n and item.split(".")[-1] in n][:5]
                raise ValueError(
                    f"ignored_layers: the model has no module named {item!r}"
                    + (f"; similar names: {close}" if close else "")
                )
            out.append(named[item])
        elif isinstance(item, nn.Module):
            if id(item) not in ids:
                raise ValueError(
                    f"ignored_layers: {type(item).__name__} module is not part of the model"
                )
            out.append(item)
        else:
            raise TypeError(
                "ignored_layers must hold nn.Module objects or qualified module names, "
                f"got {type(item).__name__}"
            )
    # ignoring a container ignores everything inside it
    expanded = []
    for m in out:
        expanded.extend(m.modules())
    return expanded
