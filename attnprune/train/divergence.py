"""What became non-finite when training diverged: the inputs, the loss, or the weights.

Used by the runner to word :class:`~attnprune.train.runner.TrainingDivergedError`:
"lower the learning rate" is only the advice when the weights blew up.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .._tree import flatten_tensors

__all__ = ["diagnose"]


def _finite(tensors) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point() or t.is_complex())


def diagnose(inputs, model: nn.Module, task_loss: torch.Tensor, lr: float) -> str:
    """The cause and the advice for a non-finite loss, as the end of the error message.

    Args:
        inputs: The batch's inputs (a tensor or a tuple of tensors).
        model: The model (its parameters are inspected).
        task_loss: ``loss_fn(outputs, targets)`` of the batch (the regulariser excluded).
        lr: The phase's learning rate.
    """
    if not _finite(flatten_tensors(inputs)):
        return "the batch's inputs contain NaN or infinite values; clean the data (the weights are finite)"
    bad = [n for n, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        return (f"the weights became non-finite ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); "
                f"lower the learning rate (lr={lr})")
    if not bool(torch.isfinite(task_loss.detach()).all()):
        return ("loss_fn(outputs, targets) returned a non-finite value on finite inputs and weights; "
                f"check loss_fn and the targets, or lower the learning rate (lr={lr})")
    return ("the method's regulariser became non-finite (inputs, weights and task loss are finite); "
            f"lower the learning rate (lr={lr}) or the method's penalty")
