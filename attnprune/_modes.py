"""Temporary modes: eval mode, gradient flags, and an observed forward pass, each restored exactly."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

import torch
import torch.nn as nn

__all__ = ["eval_mode", "grad_flags", "observe"]


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode, then restore each one's own flag."""
    saved = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in saved:
            module.training = training


@contextlib.contextmanager
def grad_flags(params: Iterable[nn.Parameter], requires_grad: bool) -> Iterator[None]:
    """Set ``requires_grad`` of ``params`` inside the block; each one's own flag is restored on exit."""
    params = list(params)
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(requires_grad)
        yield
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)


def observe(model: nn.Module, args: tuple, modules: Iterable[nn.Module], hook: Callable) -> None:
    """One eval-mode forward pass without gradients, ``hook(module, inputs, output)`` seeing each of ``modules``.

    The hooks are removed and every module's train/eval flag restored afterwards,
    also when the forward pass raises.
    """
    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        with eval_mode(model), torch.no_grad():
            model(*args)
    finally:
        for h in handles:
            h.remove()
