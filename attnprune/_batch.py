"""Batch plumbing shared by the pipeline and the methods."""

from __future__ import annotations

import torch

__all__ = ["unpack_batch", "to_device", "call_model"]


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
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, (tuple, list)):
        return type(x)(to_device(t, device) for t in x)
    return x


def call_model(model, inputs):
    """``model(*inputs)`` for a tuple of inputs, ``model(inputs)`` for a tensor."""
    return model(*inputs) if isinstance(inputs, (tuple, list)) else model(inputs)
