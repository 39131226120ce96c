"""Nested tensors: example inputs as a tuple, outputs flattened, trees mapped.

One copy of each helper that the core, the training loop and the deployment
modules need to walk the tensors of a model's inputs and outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

__all__ = ["as_inputs", "flatten_tensors", "map_tensors"]


def as_inputs(example_inputs: Any, *, tensors_only: bool = True,
              name: str = "example_inputs") -> tuple:
    """The positional-argument tuple of ``model(*args)`` for ``example_inputs``.

    Args:
        example_inputs: A tensor, or a non-empty tuple/list of positional inputs.
        tensors_only: Every entry must be a tensor (ONNX export, serialisation).
        name: The argument's name in error messages.

    Returns:
        ``(example_inputs,)`` for a tensor, else ``tuple(example_inputs)``.

    Raises:
        TypeError: Not a tensor or tuple/list, or (``tensors_only``) an entry is
            not a tensor.
        ValueError: An empty tuple/list.
    """
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if not isinstance(example_inputs, (tuple, list)):
        raise TypeError(f"{name} must be a torch.Tensor or a non-empty tuple/list of "
                        f"{'tensors' if tensors_only else 'positional inputs'}, "
                        f"got {type(example_inputs).__name__}")
    if not example_inputs:
        raise ValueError(f"{name} must contain at least one torch.Tensor, got an empty sequence")
    if tensors_only:
        for i, t in enumerate(example_inputs):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name}[{i}] must be a torch.Tensor, got {type(t).__name__}")
    return tuple(example_inputs)


def flatten_tensors(tree: Any) -> list[torch.Tensor]:
    """The tensors of nested tuples/lists/dicts, depth first (ONNX output order)."""
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, Mapping):
        return [t for v in tree.values() for t in flatten_tensors(v)]
    if isinstance(tree, (tuple, list)):
        return [t for v in tree for t in flatten_tensors(v)]
    return []


def map_tensors(fn: Callable[[torch.Tensor], Any], tree: Any) -> Any:
    """A copy of ``tree`` with ``fn`` applied to every tensor.

    Tuples and lists keep their type, dicts their keys; anything else is returned
    as is.
    """
    if isinstance(tree, torch.Tensor):
        return fn(tree)
    if isinstance(tree, dict):
        return {k: map_tensors(fn, v) for k, v in tree.items()}
    if isinstance(tree, (tuple, list)):
        return type(tree)(map_tensors(fn, v) for v in tree)
    return tree
