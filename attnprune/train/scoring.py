"""Scoring a model on held-out data: top-1 accuracy, or the user's metric.

A metric is called per batch as ``metric(outputs, targets)`` and returns either

* a pair ``(correct, total)`` of numbers: the batch's count of correct
  predictions and of scored items; the score is ``100 * sum(correct) /
  sum(total)`` over all batches (and all ranks); or
* one number, the batch's mean score in [0, 1]; it is weighted by the batch size
  (dimension 0 of the targets), so the score is the mean over samples, times 100.

The default metric is :func:`top1`, which refuses shapes it cannot score rather
than broadcasting them into a wrong number.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

__all__ = ["Metric", "top1", "batch_counts", "check_metric"]

#: ``metric(outputs, targets) -> (correct, total)`` or a mean score in [0, 1].
Metric = Callable[..., object]


def top1(outputs, targets) -> tuple[int, int]:
    """Correct top-1 predictions and the number of samples of one batch.

    Args:
        outputs: One tensor of logits, classes along dimension 1 (``(N, C)``, or
            ``(N, C, ...)`` for dense prediction).
        targets: Class indices shaped like ``outputs`` without dimension 1
            (``(N,)``, or ``(N, ...)``), or one-hot / probability targets of the
            same shape as ``outputs`` (their argmax is the class).

    Raises:
        TypeError: The model returns something other than one tensor.
        ValueError: The targets' shape cannot be scored against the outputs (e.g.
            ``(N, 1)`` targets for ``(N, C)`` outputs, which would broadcast).
    """
    if not isinstance(outputs, torch.Tensor):
        raise TypeError(
            f"accuracy needs the model to return one tensor of logits, got a {type(outputs).__name__}; "
            "pass eval_metric=callable(outputs, targets) -> (correct, total) to score such a model"
        )
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"accuracy needs tensor targets, got a {type(targets).__name__}; "
                        "pass eval_metric=... to score other targets")
    if outputs.dim() < 2:
        raise ValueError(f"accuracy needs outputs of shape (N, classes, ...), got {tuple(outputs.shape)}; "
                         "pass eval_metric=... to score such a model")
    pred = outputs.argmax(1)
    if targets.shape == outputs.shape and outputs.shape[1] > 1:  # one-hot or class probabilities
        targets = targets.argmax(1)
    if targets.shape != pred.shape:
        raise ValueError(
            f"cannot score targets of shape {tuple(targets.shape)} against outputs of shape "
            f"{tuple(outputs.shape)}: accuracy needs class indices of shape {tuple(pred.shape)} or one-hot "
            f"targets of shape {tuple(outputs.shape)} (squeeze (N, 1) targets), or eval_metric=..."
        )
    if targets.dtype.is_floating_point or targets.dtype.is_complex or targets.dtype == torch.bool:
        raise ValueError(f"accuracy needs integer class indices as targets, got dtype {targets.dtype}")
    return int((pred == targets.to(pred.device)).sum()), int(targets.numel())


def batch_counts(metric: Metric, outputs, targets) -> tuple[float, float]:
    """``(correct, total)`` of one batch under ``metric`` (see the module docstring).

    Raises:
        TypeError: The metric returned neither a pair of numbers nor a number.
        ValueError: A number outside [0, 1], a negative or non-finite count.
    """
    value = metric(outputs, targets)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = float(value)
    if isinstance(value, (tuple, list)) and len(value) == 2:
        correct, total = (float(v) for v in value)
        if not (math.isfinite(correct) and math.isfinite(total)) or total < 0 or correct < 0:
            raise ValueError(f"eval_metric must return finite counts (correct, total) >= 0, got {value!r}")
        return correct, total
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"eval_metric returned the score {value!r}; a score must lie in [0, 1]")
        n = int(targets.shape[0]) if isinstance(targets, torch.Tensor) and targets.dim() > 0 else 1
        return float(value) * n, float(n)
    raise TypeError(
        "eval_metric(outputs, targets) must return (correct, total) or a mean score in [0, 1], "
        f"got {type(value).__name__}"
    )


def check_metric(metric) -> Metric:
    """``metric``, checked callable; :func:`top1` when None."""
    if metric is None:
        return top1
    if not callable(metric):
        raise TypeError("eval_metric must be callable as eval_metric(outputs, targets) -> (correct, total) "
                        f"or a score in [0, 1], got {type(metric).__name__}")
    return metric
