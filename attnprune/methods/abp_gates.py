"""ABP's autograd pieces: the binary gate and the ReLU pass-through at 0.

:func:`binary_gate` is ABP's binary attention with its gradient estimator (Tian et
al. 2021, eq. 4 and 5; see :mod:`attnprune.methods.abp`). :class:`ReluPassAtZero`
and :func:`relu_pass_hooks` are its ReLU pass-through mode: a closed gate makes its
channel exactly 0, where PyTorch's ``relu'(0) = 0`` would stop the gradient the
estimator needs, so during ABP's joint phase ReLU passes it (``relu'(0) := 1``,
values unchanged).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

__all__ = ["BinaryGate", "binary_gate", "ReluPassAtZero", "relu_pass_hooks"]


class BinaryGate(torch.autograd.Function):
    """``a = 1[|m| > t]`` forward; ``g_m = g_a * 1[|m| <= bound]`` backward (eq. 4, 5).

    ``t`` and ``bound`` are tensors broadcastable to ``m`` (no gradient). With
    ``bound = t`` the backward is the paper's estimator (eq. 5); a constant
    ``bound`` is the clipped straight-through estimator.
    """

    @staticmethod
    def forward(ctx, m: torch.Tensor, t: torch.Tensor, bound: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(m, bound)
        return (m.abs() > t).to(m.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        m, bound = ctx.saved_tensors
        return grad * (m.abs() <= bound).to(grad.dtype), None, None


def binary_gate(m: torch.Tensor, t, bound=None) -> torch.Tensor:
    """ABP's binary attention: ``1[|m| > t]`` with gradient ``g_a * 1[|m| <= bound]``.

    Args:
        m: Auxiliary parameters.
        t: Threshold (scalar or per-entry tensor).
        bound: Where the estimator passes the gradient; default ``t`` (eq. 5).
    """
    t = torch.as_tensor(t, dtype=m.dtype, device=m.device).detach()
    bound = t if bound is None else torch.as_tensor(bound, dtype=m.dtype, device=m.device).detach()
    return BinaryGate.apply(m, t.expand_as(m), bound.expand_as(m))


_RELUS = (torch.relu, torch.relu_, F.relu, F.relu6, torch.Tensor.relu, torch.Tensor.relu_)


class ReluPassAtZero(TorchFunctionMode):
    """While active, ReLU (and ReLU6 / hardtanh with ``min_val=0``) passes the
    gradient at inputs that are exactly 0: ``relu'(0) := 1``. Values are unchanged.

    A closed gate makes its channel exactly 0, and PyTorch's ``relu'(0) = 0``
    would then stop every gradient before it reaches the gate: eq. (5) would give
    closed channels ``g_a = 0`` wherever a ReLU follows the gate. In the paper's
    placement (mask before BatchNorm) a closed channel emits ``BN(0) = beta`` and
    the gradient flows; here the straight-through convention at exactly 0 (reached
    in practice only by closed channels) restores it. In-place variants run out of
    place.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _RELUS or (func is F.hardtanh and _hardtanh_min(args, kwargs) == 0):
            x = args[0]
            if func is F.hardtanh:
                max_val = args[2] if len(args) > 2 else kwargs.get("max_val", 1.0)
                out = F.hardtanh(x, 0.0, max_val)
            elif func is F.relu6:
                out = F.relu6(x)
            else:
                out = torch.relu(x)
            if isinstance(x, torch.Tensor) and x.requires_grad:
                out = out + (x - x.detach()) * (x == 0).to(x.dtype)
            return out
        return func(*args, **kwargs)


def _hardtanh_min(args, kwargs):
    return args[1] if len(args) > 1 else kwargs.get("min_val", -1.0)


def relu_pass_hooks(model: nn.Module, when: Callable[[nn.Module], bool]) -> list:
    """Hooks running each forward of ``model`` under :class:`ReluPassAtZero` while ``when(model)``.

    Returns:
        The two hook handles (the caller owns and removes them).
    """
    modes: list = []

    def enter(module, args):
        mode = ReluPassAtZero() if when(module) else None
        if mode is not None:
            mode.__enter__()
        modes.append(mode)

    def leave(module, args, output):
        mode = modes.pop() if modes else None
        if mode is not None:
            mode.__exit__(None, None, None)

    return [model.register_forward_pre_hook(enter), model.register_forward_hook(leave, always_call=True)]
