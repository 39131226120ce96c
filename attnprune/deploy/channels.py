"""The channel multiple a deployment target's kernels want (``round_to="auto"``).

ONNX Runtime's CPU provider runs a convolution in its fast blocked layout (NCHWc)
only when the conv's channels fit its block: the ``NchwcTransformer``
(``onnxruntime/core/optimizer/nchwc_transformer.cc``) rewrites a plain conv whose
input channels are below the block size or a multiple of it, and a grouped or
depthwise conv whose output channels (and, for grouped, channels per group) are
multiples of it; other convs stay in the slower NCHW path with its reorders
around them. The block size is MLAS's ``NchwcBlockSize``
(``onnxruntime/core/mlas/lib/platform.cpp``): 16 float32 lanes on a CPU with
AVX-512F, 8 with AVX2 (Torch-Pruning issue #38 shows the cost: a pruned
MobileNetV2 ran 3x slower in ONNX Runtime until its channels were rounded to 16).
On other CPUs (SSE only, ARM NEON) there is no blocked layout; 4, the width of a
128-bit float32 vector, keeps the GEMM kernels' tails short at little cost in
budget precision. On CUDA, cuDNN's tensor-core kernels want channel counts that
are multiples of 8.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

from torch import nn

from . import machine
from .ort_session import check_provider

__all__ = ["channel_multiple", "machine_multiple", "model_multiple", "warn_other_multiple"]

_MULTIPLES = (16, 8, 4)


def channel_multiple(provider: str, cpu_flags: Iterable[str] = ()) -> int:
    """The multiple of channels per group that the target's kernels want.

    Args:
        provider: ``"cpu"`` (ONNX Runtime's CPU provider) or ``"cuda"``.
        cpu_flags: The CPU's feature flags as Linux's ``/proc/cpuinfo`` spells them
            (``avx512f``, ``avx2``, ...); only read for ``"cpu"``.

    Returns:
        16 with AVX-512F, 8 with AVX2, 4 on other CPUs, 8 for CUDA.

    Raises:
        ValueError: An unknown provider.
    """
    if check_provider(provider) == "cuda":
        return 8
    flags = {f.lower() for f in cpu_flags}
    if "avx512f" in flags:
        return 16
    if "avx2" in flags:
        return 8
    return 4


def machine_multiple(provider: str = "cpu") -> tuple[int, dict]:
    """:func:`channel_multiple` for this machine, and what it was chosen from.

    Args:
        provider: The deployment target, ``"cpu"`` or ``"cuda"``.

    Returns:
        ``(multiple, source)``: ``source`` holds ``provider`` and, for ``"cpu"``,
        ``vector_extensions`` (the CPU's SIMD flags among
        :data:`attnprune.deploy.machine.VECTOR_EXTENSIONS`, read from
        :func:`attnprune.deploy.machine.cpu_flags`; None when unreadable, and the
        multiple is then 4).
    """
    provider = check_provider(provider)
    if provider != "cpu":
        return channel_multiple(provider), {"provider": provider, "vector_extensions": None}
    flags = machine.cpu_flags()
    have = set(flags or ())
    ext = None if flags is None else [f for f in machine.VECTOR_EXTENSIONS if f in have]
    return channel_multiple(provider, flags or ()), {"provider": provider, "vector_extensions": ext}


def model_multiple(model: nn.Module) -> int:
    """The channel multiple a model's conv channel counts suggest: 16, 8, 4, or 1 (free counts).

    The largest of 16, 8 and 4 that divides every conv's input and output channel
    count above 4 (an image's 1 or 3 input channels, and tiny squeeze layers, say
    nothing about rounding); 1 when none does, or the model has no such conv.
    """
    counts = [c for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)
              for c in (m.in_channels, m.out_channels) if c > 4]
    if not counts:
        return 1
    for k in _MULTIPLES:
        if all(c % k == 0 for c in counts):
            return k
    return 1


def warn_other_multiple(models: dict, provider: str, channel_multiple_used: int | None = None,
                        stacklevel: int = 3) -> int:
    """Warn when this machine would choose another multiple than the models' channels have.

    The rule: the multiple the models were rounded to is ``channel_multiple_used``
    when given (e.g. ``PruneReport.round_to``; 1 or None means free counts), else
    :func:`model_multiple` of each ``nn.Module`` in ``models`` except the first
    (the dense reference, whose counts are its architecture's, not a rounding).
    Free counts (1) are no choice of a machine and give no warning; 4, 8 or 16
    differing from :func:`machine_multiple` does.

    Returns:
        This machine's multiple for ``provider``.
    """
    want, source = machine_multiple(provider)
    if channel_multiple_used is not None:
        found = {int(channel_multiple_used)}
    else:
        found = {model_multiple(m) for m in list(models.values())[1:] if isinstance(m, nn.Module)}
    for k in sorted(found - {1, want}):
        where = f"vector extensions {source['vector_extensions']}" if provider == "cpu" else provider
        effect = (f"convs whose channels are not multiples of {want} miss the fast blocked layout here"
                  if k < want else f"they run fast here too, but a multiple of {want} would have met the budget "
                  "more finely")
        warnings.warn(
            f"the models' channel counts are multiples of {k} (round_to={k}), but this machine ({where}) would "
            f"choose round_to={want} for provider={provider!r}: {effect}; latencies measured here may not "
            "carry over to the machine they were pruned for", stacklevel=stacklevel,
        )
    return want
