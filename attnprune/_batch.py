"""Batch plumbing shared by the pipeline and the methods."""

from __future__ import annotations

import torch

from ._tree import map_tensors

__all__ = ["unpack_batch", "to_device", "call_model", "batch_size", "with_batch"]


def unpack_batch(batch) -> tuple:
    """``(inputs, targets)`` from a loader's batch, with a clear error otherwise."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    if isinstance(batch, dict) and {"inputs", "targets"} <= set(batch):
        return batch["inputs"], batch["targets"]
    raise TypeError(
        "the loader must yield (inputs, targets) pairs; got a "
        f"{type(batch).__name__}" + (f" of length {len(batch)}" if hasattr(batch, "__len__") else "")
    )


def to_device(x, device):
    """Move a tensor, or a tuple/list of tensors, to ``device``."""
    if device is None:
        return x
    if isinstance(x, dict):  # a dict is one positional input, moved as before: not at all
        return x
    return map_tensors(lambda t: t.to(device, non_blocking=True), x)


def call_model(model, inputs):
    """``model(*inputs)`` for a tuple of inputs, ``model(inputs)`` for a tensor."""
    return model(*inputs) if isinstance(inputs, (tuple, list)) else model(inputs)


def batch_size(inputs: tuple[torch.Tensor, ...], name: str = "example_inputs") -> int:
    """The batch size (dimension 0) that every tensor of ``inputs`` shares.

    Raises:
        ValueError: A tensor has no non-empty dimension 0, or the sizes differ.
    """
    sizes = set()
    for i, t in enumerate(inputs):
        if t.dim() == 0 or t.shape[0] == 0:
            raise ValueError(f"{name}[{i}] needs a non-empty batch dimension 0, got shape {tuple(t.shape)}")
        sizes.add(int(t.shape[0]))
    if len(sizes) != 1:
        raise ValueError(f"all {name} must share the batch size along dimension 0, got "
                         f"{[tuple(t.shape) for t in inputs]}")
    return sizes.pop()


def with_batch(inputs: tuple[torch.Tensor, ...], batch: int) -> tuple[torch.Tensor, ...]:
    """Inputs of another batch size, cycling through the given rows.

    Rows past the original batch are flipped along their last axis so that the
    new batch does not consist of exact copies (which could hide batch-mixing bugs).
    """
    out = []
    for t in inputs:
        n = t.shape[0]
        idx = torch.arange(batch, device=t.device) % n
        new = t[idx].clone()
        if batch > n and t.dim() >= 2:
            new[n:] = new[n:].flip(-1)
        out.append(new)
    return tuple(out)
