"""ONNX Runtime sessions with a fixed, reproducible threading setup.

Used by the parity check of :func:`attnprune.deploy.export.export_onnx` and by
the latency benchmark :mod:`attnprune.deploy.bench`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["PROVIDERS", "default_threads", "check_provider", "check_threads", "onnx_session"]

#: Accepted values of the ``provider`` argument, mapped to ONNX Runtime names.
PROVIDERS: dict[str, str] = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
}


def default_threads() -> int:
    """Number of CPUs this process may run on (affinity-aware)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def check_provider(provider: Any) -> str:
    """The lower-cased ``provider``; ``ValueError`` naming the valid ones otherwise."""
    if not isinstance(provider, str) or provider.lower() not in PROVIDERS:
        raise ValueError(
            f"provider must be one of {sorted(PROVIDERS)} (case-insensitive), got {provider!r}"
        )
    return provider.lower()


def check_threads(threads: Any) -> int:
    """``threads``, or :func:`default_threads` for None; ``TypeError``/``ValueError`` otherwise."""
    if threads is None:
        return default_threads()
    if isinstance(threads, bool) or not isinstance(threads, int):
        raise TypeError(f"threads must be a positive int or None, got {type(threads).__name__}")
    if threads < 1:
        raise ValueError(f"threads must be >= 1 (or None for all usable CPUs), got {threads}")
    return threads


def onnx_session(
    path: str | os.PathLike[str],
    provider: str = "cpu",
    threads: int | None = None,
    *,
    allow_spinning: bool = False,
    profile_prefix: str | os.PathLike[str] | None = None,
):
    """Creates an ONNX Runtime ``InferenceSession`` with fixed threading.

    The session uses ``threads`` intra-op threads, a single inter-op thread
    and sequential execution, so that timings are reproducible and several
    sessions in one process do not oversubscribe the CPU.

    Thread spinning: by default ONNX Runtime's intra-op worker threads keep
    spinning (busy-waiting) for a while after each run so that the next run
    starts faster. When several sessions are timed one after the other in the
    same process, a previous session's spinning threads steal cores from the
    session being measured. This helper therefore sets the session option
    ``session.intra_op.allow_spinning`` to ``"0"`` unless ``allow_spinning``
    is true. Turning spinning off costs a thread wake-up per run, which is
    visible only for runs of well under a millisecond.

    Args:
        path: Path of the ``.onnx`` file.
        provider: ``"cpu"`` (``CPUExecutionProvider``) or ``"cuda"``
            (``CUDAExecutionProvider``, with CPU fallback for unsupported
            nodes).
        threads: Intra-op thread count; ``None`` means every CPU this process
            may use (``os.sched_getaffinity``, else ``os.cpu_count()``).
        allow_spinning: Keep ONNX Runtime's default busy-waiting of idle
            intra-op threads.
        profile_prefix: Turn on ONNX Runtime's profiler, writing its JSON trace
            to a file whose name starts with this prefix
            (``session.end_profiling()`` returns the path).

    Returns:
        An ``onnxruntime.InferenceSession``.

    Raises:
        ValueError: If ``provider`` is not one of :data:`PROVIDERS` or
            ``threads`` is below 1.
        TypeError: If ``threads`` is not an int.
        FileNotFoundError: If ``path`` does not exist.
        RuntimeError: If ``provider="cuda"`` but this onnxruntime build has no
            working ``CUDAExecutionProvider``.
    """
    provider = check_provider(provider)
    threads = check_threads(threads)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX file not found: {path}")

    import onnxruntime as ort

    available = ort.get_available_providers()
    ort_provider = PROVIDERS[provider]
    if ort_provider not in available:
        raise RuntimeError(
            f"provider={provider!r} needs onnxruntime's {ort_provider}, which this "
            f"onnxruntime build does not offer (available: {available}). Install the "
            "'onnxruntime-gpu' package (in place of 'onnxruntime') on a machine with an "
            "NVIDIA GPU and a matching CUDA/cuDNN, or use provider='cpu'."
        )
    providers = [ort_provider] if provider == "cpu" else [ort_provider, PROVIDERS["cpu"]]

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry(
        "session.intra_op.allow_spinning", "1" if allow_spinning else "0"
    )
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(profile_prefix)
    session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    if session.get_providers()[0] != ort_provider:
        raise RuntimeError(
            f"onnxruntime could not initialise {ort_provider} (session providers: "
            f"{session.get_providers()}); check the CUDA/cuDNN installation that "
            "'onnxruntime-gpu' needs, or use provider='cpu'."
        )
    return session


