"""Mixed precision for the training of :func:`attnprune.prune` (``amp=``).

``amp=None`` (default) trains in float32. ``amp="bfloat16"`` runs the forward
pass and the loss under ``torch.autocast`` in bfloat16 (CPU or CUDA);
``amp="float16"`` does so in float16 with a ``torch.amp.GradScaler`` (CUDA
only). Only the training steps run under autocast: evaluation, the dry budget
search and the check that the pruned model equals the gated one
(``finalize(verify=True)``) run in float32, so the invariant is still checked
exactly.

On a CPU without AVX-512 BF16 (``avx512_bf16`` in
:func:`attnprune.deploy.machine.cpu_flags`) bfloat16 is emulated and slower than
float32; :func:`check_amp` warns then.
"""

from __future__ import annotations

import contextlib
import warnings

import torch

__all__ = ["AMP_CHOICES", "check_amp", "autocast", "grad_scaler"]

#: The valid values of ``amp``.
AMP_CHOICES = (None, "bfloat16", "float16")


def check_amp(amp, device: torch.device) -> str | None:
    """Validate ``amp`` for ``device``; warn when bfloat16 is emulated on this CPU.

    Raises:
        ValueError: ``amp`` is not one of :data:`AMP_CHOICES`, or float16 off CUDA.
    """
    if amp not in AMP_CHOICES or isinstance(amp, bool):
        raise ValueError(f"amp must be one of {AMP_CHOICES} (None: float32), got {amp!r}")
    if amp == "float16" and device.type != "cuda":
        raise ValueError(f"amp='float16' needs a CUDA device (got device {str(device)!r}); "
                         "use amp='bfloat16' on a CPU")
    if amp == "bfloat16" and device.type == "cpu":
        from ..deploy.machine import cpu_flags

        flags = cpu_flags()
        if flags and "avx512_bf16" not in flags and "amx_bf16" not in flags:
            warnings.warn("amp='bfloat16' on a CPU without AVX-512 BF16: bfloat16 is emulated here and "
                          "slower than float32 (amp=None)", stacklevel=3)
    return amp


def autocast(amp: str | None, device: torch.device | None):
    """``torch.autocast`` for ``amp`` on ``device`` (a no-op context for None)."""
    if amp is None:
        return contextlib.nullcontext()
    kind = device.type if device is not None else "cpu"
    return torch.autocast(device_type=kind, dtype=getattr(torch, amp))


def grad_scaler(amp: str | None, device: torch.device | None):
    """A ``GradScaler`` for float16 on CUDA, else None (bfloat16 needs none)."""
    if amp == "float16" and device is not None and device.type == "cuda":
        return torch.amp.GradScaler("cuda")
    return None
