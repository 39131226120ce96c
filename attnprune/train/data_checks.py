"""Checks of the data arguments of :func:`attnprune.prune`, before any batch is drawn for training.

* :func:`check_reiterable`: a loader is iterated once per epoch (and by the
  methods in between), so a single-use iterable (a generator, ``iter(loader)``:
  anything that is its own iterator) is refused before any batch is drawn;
* :func:`check_eval_loader`: ``eval_loader`` is iterable, re-iterable, non-empty,
  and its first samples can be scored by the evaluation metric (so a wrong
  target shape or a model returning a tuple fails now, not after an epoch).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn as nn

from .._batch import call_model, to_device as _to, unpack_batch
from .._modes import eval_mode
from . import checks
from .checkpoint import rng_state, set_rng_state
from .scoring import Metric, batch_counts

__all__ = ["check_reiterable", "check_eval_loader"]


def check_reiterable(name: str, loader) -> None:
    """Refuse a single-use iterable (``iter(loader) is loader``), without iterating it.

    Raises:
        TypeError: naming ``name``.
    """
    if isinstance(loader, Iterator):
        raise TypeError(
            f"{name} must be re-iterable (it is iterated once per epoch), got a single-use "
            f"{type(loader).__name__} (iter({name}) is {name}); pass a DataLoader or a list of batches, "
            "not a generator or iter(DataLoader)"
        )


def check_eval_loader(eval_loader, model: nn.Module, device, metric: Metric) -> None:
    """``eval_loader`` is re-iterable, non-empty, and ``metric`` scores two of its samples.

    Runs the model in eval mode without gradients on the first batch's first two
    samples; the random states are restored afterwards (a shuffling loader draws
    from them), so the check changes nothing in the run.

    Raises:
        TypeError, ValueError: naming ``eval_loader`` and what is wrong.
    """
    checks.check_iterable("eval_loader", eval_loader)
    check_reiterable("eval_loader", eval_loader)
    saved = rng_state()
    try:
        try:
            batch = next(iter(eval_loader))
        except StopIteration:
            raise ValueError("eval_loader is empty; it must yield (inputs, targets) pairs") from None
        x, y = unpack_batch(batch)
        x, y = _to(checks.example_from(x, 2), device), _to(checks.first_targets(y), device)
        with eval_mode(model), torch.no_grad():
            try:
                out = call_model(model, x)
            except Exception as exc:
                raise ValueError(f"eval_loader's inputs cannot be fed to the model ({type(exc).__name__}: "
                                 f"{exc})") from exc
            try:
                batch_counts(metric, out, y)
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"eval_loader cannot be scored: {exc}") from exc
    finally:
        set_rng_state(saved)
