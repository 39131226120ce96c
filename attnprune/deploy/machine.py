"""What a measurement ran on: the CPU and its vector extensions, threads, versions.

:func:`machine_info` is the one description of the machine and software that the
latency benchmark (:func:`attnprune.deploy.bench.environment_info`) and the
benchmark scripts (``benchmarks/_common.py``) record beside their numbers.
The vector extensions matter: the same model can be several times faster on a
CPU with AVX-512 or AMX, so a latency is only comparable with its flags.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["VECTOR_EXTENSIONS", "cpu_model", "cpu_flags", "vector_extensions", "machine_info"]

VECTOR_EXTENSIONS: tuple[str, ...] = (
    "sse4_2", "avx", "avx2", "fma", "f16c",
    "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16",
    "amx_tile", "amx_bf16", "amx_int8",
    "asimd", "sve", "sve2",  # Arm (Neon is called asimd in /proc/cpuinfo)
)
"""The SIMD flags :func:`vector_extensions` reports, in this order, when the CPU has them."""

_CPUINFO = Path("/proc/cpuinfo")


def _cpuinfo_field(keys: tuple[str, ...], cpuinfo: Path = _CPUINFO) -> str | None:
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() in keys and value.strip():
                    return value.strip()
    except OSError:
        pass
    return None


def cpu_model(cpuinfo: str | os.PathLike = _CPUINFO) -> str | None:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else ``platform.processor()``, else None)."""
    found = _cpuinfo_field(("model name", "Model", "cpu model"), Path(cpuinfo))
    return found or platform.processor() or None


def cpu_flags(cpuinfo: str | os.PathLike = _CPUINFO) -> list[str] | None:
    """Every feature flag of the first CPU in ``/proc/cpuinfo`` (``flags``, or ``Features`` on Arm).

    Returns:
        The flags, or None where they cannot be read (not Linux, or no such line).
    """
    line = _cpuinfo_field(("flags", "Features"), Path(cpuinfo))
    return line.split() if line is not None else None


def vector_extensions(cpuinfo: str | os.PathLike = _CPUINFO) -> list[str] | None:
    """The CPU's SIMD extensions among :data:`VECTOR_EXTENSIONS` (None when unknown)."""
    flags = cpu_flags(cpuinfo)
    if flags is None:
        return None
    have = set(flags)
    return [f for f in VECTOR_EXTENSIONS if f in have]


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _usable_cpus() -> int | None:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def machine_info() -> dict[str, Any]:
    """Describe this machine and the software versions, as a JSON-serialisable dict.

    Returns:
        ``machine`` and ``processor`` (:mod:`platform`), ``cpu_model``,
        ``cpu_vector_extensions`` (see :func:`vector_extensions`; None when the
        flags cannot be read), ``platform``, ``cpu_count`` (``os.cpu_count()``),
        ``usable_cpus`` (this process's CPU affinity), ``torch_threads`` and
        ``torch_interop_threads`` (torch's intra- and inter-op thread counts),
        ``omp_num_threads`` (the environment variable, or None), ``ort_providers``
        (of the installed onnxruntime), the versions ``python``, ``torch``,
        ``torchvision``, ``torch_pruning``, ``onnx``, ``onnxscript``,
        ``onnxruntime`` and ``numpy`` (None when not installed), and ``date``
        (UTC, ISO 8601).
    """
    import torch

    try:
        import onnxruntime as ort

        ort_providers = list(ort.get_available_providers())
    except ImportError:
        ort_providers = []
    return {
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_model": cpu_model(),
        "cpu_vector_extensions": vector_extensions(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": _usable_cpus(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "ort_providers": ort_providers,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "torch_pruning": _version("torch-pruning"),
        "onnx": _version("onnx"),
        "onnxscript": _version("onnxscript"),
        "onnxruntime": _version("onnxruntime") or _version("onnxruntime-gpu"),
        "numpy": _version("numpy"),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
