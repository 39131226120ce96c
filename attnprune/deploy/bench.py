"""Latency benchmark of dense vs. pruned models with ONNX Runtime.

:func:`benchmark` exports every model to ONNX (with the parity check of
:func:`attnprune.deploy.export.export_onnx`), opens one ONNX Runtime session per model
with the same fixed thread count, and times them in *interleaved rounds*: each
round runs every model at every batch size once, so slow drifts of the machine
(thermal throttling, other tenants, frequency scaling) affect all models alike
instead of biasing whichever model happened to run last. The order of models
is rotated from round to round so that no model always follows the same one.

Within a round, a model is called ``runs_per_round`` times back to back and the
mean time per call is that round's sample; ``runs_per_round`` is chosen
automatically so that one sample takes at least ~50 ms (``time.perf_counter``
resolution and call overhead then do not matter). Reported statistics are the
median and the 10th/90th percentiles of the per-round samples.

Comparison with the reference (the first model of the dict):

* ``macs_ratio = reference MACs / model MACs`` (per sample, from
  :func:`attnprune.deploy.metrics.count_macs`): the theoretical speedup;
* ``speedup = reference median / model median``, with ``speedup_p10`` and
  ``speedup_p90`` the percentiles of the per-round ratios
  ``reference_r / model_r``, which are paired (measured in the same round) and
  so cancel most machine drift;
* ``efficiency = speedup / macs_ratio``: the fraction of the theoretical
  speedup that is realised (1.0 means latency scales exactly with MACs).

Threading: every session gets the same number of intra-op threads (default:
all CPUs usable by the process), one inter-op thread and sequential
execution, and ONNX Runtime's busy-waiting of idle worker threads is switched
off (``session.intra_op.allow_spinning = "0"``, see
:func:`attnprune.deploy.export.onnx_session`), so that the threads of the model timed
just before cannot steal cores from the model being timed. This adds a thread
wake-up to each call, which matters only for calls well under a millisecond,
and affects all models in the same way.
"""

from __future__ import annotations

import gc
import math
import os
import re
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._batch import batch_size, with_batch
from .._ints import check_int
from .._tree import as_inputs
from .bench_result import BenchResult
from .channels import warn_other_multiple
from .export import export_onnx
from .machine import machine_info
from .metrics import count_macs, count_params
from .ort_session import PROVIDERS, check_provider, check_threads, onnx_session

__all__ = ["BenchResult", "benchmark", "environment_info"]

_TARGET_ROUND_S = 0.05  # a round's sample for one model/batch lasts at least this long
_MAX_RUNS_PER_ROUND = 100_000


def environment_info(*, threads: int | None = None, provider: str | None = None) -> dict[str, Any]:
    """Describes the machine and software a benchmark ran on.

    Args:
        threads: Intra-op thread count to record (``None`` if not applicable).
        provider: Execution provider to record (``"cpu"``/``"cuda"``).

    Returns:
        :func:`attnprune.deploy.machine.machine_info` (CPU model and vector
        extensions, thread counts, library versions, date) plus ``threads``,
        ``provider`` and ``gpu`` (the CUDA device name when ``provider="cuda"``).
    """
    gpu = None
    if provider == "cuda" and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(0)
    return {**machine_info(), "threads": threads, "provider": provider, "gpu": gpu}


# --------------------------------------------------------------------------- #
# Benchmark
# --------------------------------------------------------------------------- #
def _check_models(models: Any) -> list[tuple[str, nn.Module | Path]]:
    if not isinstance(models, Mapping):
        raise TypeError(
            "models must be a dict mapping names to nn.Module or .onnx paths, "
            f"got {type(models).__name__}"
        )
    if not models:
        raise ValueError("models must contain at least one entry (the first is the reference)")
    items: list[tuple[str, nn.Module | Path]] = []
    for name, value in models.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"model names must be non-empty strings, got {name!r}")
        if isinstance(value, nn.Module):
            items.append((name, value))
        elif isinstance(value, (str, os.PathLike)):
            p = Path(value)
            if p.suffix.lower() != ".onnx":
                raise ValueError(
                    f"models[{name!r}] must be an nn.Module or a path ending in .onnx, got {p}"
                )
            if not p.is_file():
                raise FileNotFoundError(f"models[{name!r}]: ONNX file not found: {p}")
            items.append((name, p))
        else:
            raise TypeError(
                f"models[{name!r}] must be an nn.Module or a path to an .onnx file, "
                f"got {type(value).__name__}"
            )
    return items


def _check_batch_sizes(batch_sizes: Any) -> list[int]:
    if isinstance(batch_sizes, int) and not isinstance(batch_sizes, bool):
        batch_sizes = (batch_sizes,)
    if not isinstance(batch_sizes, Sequence) or isinstance(batch_sizes, str) or not batch_sizes:
        raise ValueError(
            f"batch_sizes must be a non-empty sequence of positive ints, got {batch_sizes!r}"
        )
    out: list[int] = []
    for b in batch_sizes:
        check_int("each of batch_sizes", b, 1)
        if b not in out:
            out.append(b)
    return out


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "model"


def _feed_for(session: Any, name: str, arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
    graph_inputs = session.get_inputs()
    if len(graph_inputs) != len(arrays):
        raise ValueError(
            f"model {name!r}: its ONNX graph has {len(graph_inputs)} inputs "
            f"({[i.name for i in graph_inputs]}) but example_inputs has {len(arrays)}"
        )
    batch = arrays[0].shape[0]
    for gi in graph_inputs:
        dim0 = gi.shape[0] if gi.shape else None
        if isinstance(dim0, int) and dim0 != batch:
            raise ValueError(
                f"model {name!r}: ONNX input {gi.name!r} has a fixed batch size {dim0}, "
                f"cannot run batch size {batch}; export it with a dynamic batch axis"
            )
    return {gi.name: arr for gi, arr in zip(graph_inputs, arrays, strict=True)}


def _time_calls(session: Any, feed: dict[str, np.ndarray], n: int) -> float:
    """Mean seconds per ``session.run`` over ``n`` back-to-back calls."""
    run = session.run
    start = time.perf_counter()
    for _ in range(n):
        run(None, feed)
    return (time.perf_counter() - start) / n


def _ratio(a: float | int | None, b: float | int | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return float(a) / float(b)


def benchmark(
    models: Mapping[str, nn.Module | str | os.PathLike[str]],
    example_inputs: Any,
    *,
    batch_sizes: Sequence[int] = (1,),
    threads: int | None = None,
    rounds: int = 15,
    warmup: int = 3,
    provider: str = "cpu",
    workdir: str | os.PathLike[str] | None = None,
    runs_per_round: int | None = None,
    channel_multiple: int | None = None,
) -> BenchResult:
    """Times models with ONNX Runtime in interleaved rounds and compares them.

    See the module docstring for the measurement protocol and the definitions
    of ``macs_ratio``, ``speedup`` and ``efficiency``.

    Args:
        models: Ordered mapping of names to models; the first entry is the
            dense reference. A value may be an ``nn.Module`` (exported with
            :func:`~attnprune.deploy.export.export_onnx`, parity-checked, and its
            params/MACs counted) or a path to an existing ``.onnx`` file,
            whose params and MACs are then unknown (``None``), as are the
            ``macs_ratio``/``efficiency`` of any comparison involving it. Its
            inputs are fed in the order of ``example_inputs``.
        example_inputs: A tensor or tuple/list of tensors batched along
            dimension 0 with any batch size; inputs for each requested batch
            size are built by cycling through its rows.
        batch_sizes: Batch sizes to time.
        threads: Intra-op threads of every session; ``None`` means all CPUs
            this process may use (``os.sched_getaffinity``, else
            ``os.cpu_count()``). The value used is recorded.
        rounds: Number of interleaved rounds (samples per statistic).
        warmup: Untimed calls per model and batch size before timing.
        provider: ``"cpu"`` or ``"cuda"`` (needs onnxruntime-gpu; inputs are
            then copied host to device in every call).
        workdir: Directory to keep the exported ``.onnx`` files in; ``None``
            uses a temporary directory that is deleted afterwards.
        runs_per_round: Calls per model, batch size and round; ``None`` picks
            enough calls to last at least ~50 ms (at least 1).
        channel_multiple: The multiple the models' channels were rounded to
            (``PruneReport.round_to``), when known; ``None`` infers it from the
            channel counts of the models after the first. A warning says when
            this machine would choose another (the rule:
            :func:`attnprune.deploy.channels.warn_other_multiple`).

    Returns:
        A :class:`BenchResult`.

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If an argument is out of range (valid choices are named
            in the message).
        FileNotFoundError: If a model path does not exist.
        attnprune.deploy.export.ExportMismatchError: If an export fails its parity
            check.
    """
    items = _check_models(models)
    inputs = as_inputs(example_inputs)
    batch_size(inputs)
    sizes = _check_batch_sizes(batch_sizes)
    threads = check_threads(threads)
    rounds = check_int("rounds", rounds, 1)
    warmup = check_int("warmup", warmup, 0)
    provider = check_provider(provider)
    if runs_per_round is not None:
        runs_per_round = check_int("runs_per_round", runs_per_round, 1)
    if channel_multiple is not None:
        check_int("channel_multiple", channel_multiple, 1)
    warn_other_multiple(dict(items), provider, channel_multiple)

    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="attnprune-bench-")
        out_dir = Path(tmp.name)
    else:
        out_dir = Path(workdir)
        out_dir.mkdir(parents=True, exist_ok=True)

    try:
        info: dict[str, dict[str, Any]] = {}
        sessions: dict[str, Any] = {}
        for i, (name, model) in enumerate(items):
            if isinstance(model, nn.Module):
                file = export_onnx(
                    model, inputs, out_dir / f"{i:02d}-{_safe_name(name)}.onnx", dynamic_batch=True
                )
                info[name] = {
                    "source": "module",
                    "params": count_params(model),
                    "macs": count_macs(model, inputs),
                    "onnx_path": None if tmp is not None else str(file),
                }
            else:
                file = model
                info[name] = {
                    "source": "onnx",
                    "params": None,
                    "macs": None,
                    "onnx_path": str(file),
                }
            sessions[name] = onnx_session(file, provider, threads)

        feeds: dict[tuple[str, int], dict[str, np.ndarray]] = {}
        for b in sizes:
            arrays = [
                np.ascontiguousarray(t.detach().cpu().numpy()) for t in with_batch(inputs, b)
            ]
            for name, _ in items:
                feeds[name, b] = _feed_for(sessions[name], name, arrays)

        # Warm-up, then choose how many calls make one round's sample.
        runs: dict[tuple[str, int], int] = {}
        for name, _ in items:
            for b in sizes:
                sess, feed = sessions[name], feeds[name, b]
                for _ in range(warmup):
                    sess.run(None, feed)
                if runs_per_round is not None:
                    runs[name, b] = runs_per_round
                else:
                    once = max(_time_calls(sess, feed, 1), 1e-7)
                    runs[name, b] = int(
                        min(_MAX_RUNS_PER_ROUND, max(1, math.ceil(_TARGET_ROUND_S / once)))
                    )

        samples: dict[tuple[str, int], list[float]] = {key: [] for key in runs}
        names = [name for name, _ in items]
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            for r in range(rounds):
                shift = r % len(names)
                for name in names[shift:] + names[:shift]:
                    for b in sizes:
                        samples[name, b].append(
                            _time_calls(sessions[name], feeds[name, b], runs[name, b])
                        )
        finally:
            if gc_was_enabled:
                gc.enable()
        del sessions, sess, feed
    finally:
        if tmp is not None:
            tmp.cleanup()

    latency = []
    for name in names:
        for b in sizes:
            ms = np.asarray(samples[name, b]) * 1e3
            p10, med, p90 = (float(v) for v in np.percentile(ms, [10, 50, 90]))
            latency.append(
                {
                    "model": name,
                    "batch_size": b,
                    "runs_per_round": runs[name, b],
                    "median_ms": med,
                    "p10_ms": p10,
                    "p90_ms": p90,
                    "mean_ms": float(ms.mean()),
                    "throughput": b / (med / 1e3),
                    "rounds_ms": [float(v) for v in ms],
                }
            )

    ref = names[0]
    pairs = []
    for name in names[1:]:
        macs_ratio = _ratio(info[ref]["macs"], info[name]["macs"])
        for b in sizes:
            ref_s = np.asarray(samples[ref, b])
            mod_s = np.asarray(samples[name, b])
            speedup = float(np.median(ref_s) / np.median(mod_s))
            s10, s90 = (float(v) for v in np.percentile(ref_s / mod_s, [10, 90]))
            pairs.append(
                {
                    "model": name,
                    "reference": ref,
                    "batch_size": b,
                    "macs_ratio": macs_ratio,
                    "params_ratio": _ratio(info[ref]["params"], info[name]["params"]),
                    "speedup": speedup,
                    "speedup_p10": s10,
                    "speedup_p90": s90,
                    "efficiency": None if macs_ratio is None else speedup / macs_ratio,
                }
            )

    settings = {
        "batch_sizes": sizes,
        "rounds": rounds,
        "warmup": warmup,
        "threads": threads,
        "provider": provider,
        "ort_provider": PROVIDERS[provider],
        "intra_op_spinning": False,
        "runs_per_round": runs_per_round if runs_per_round is not None else "auto",
        "target_round_ms": _TARGET_ROUND_S * 1e3,
        "input_shapes": [list(t.shape) for t in inputs],
        "input_dtypes": [str(t.dtype).replace("torch.", "") for t in inputs],
    }
    environment = environment_info(threads=threads, provider=provider)
    environment["intra_op_spinning"] = False
    return BenchResult(
        reference=ref,
        models=info,
        latency=latency,
        pairs=pairs,
        settings=settings,
        environment=environment,
    )
