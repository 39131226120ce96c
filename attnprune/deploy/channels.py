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

from collections.abc import Iterable

from .ort_session import check_provider

__all__ = ["channel_multiple"]


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
