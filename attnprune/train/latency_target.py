"""``prune(target="latency")``: the latency model a run budgets with, and the check after it.

Right after the model is instrumented, :func:`attach_latency_model` builds (or loads
from its disk cache) the model's :class:`~attnprune.deploy.latency_model.LatencyModel`
on this machine, at the run's batch size, thread count, provider and channel
multiple, and attaches it to the cost model as the cost object of ``"latency"``
(:meth:`attnprune.core.cost.CostModel.set_target_cost`): the budget search and the
methods' cost weights then predict latency from it, and never measure a candidate
network. After ``finalize()``, :func:`measure_latency` times the dense and the
pruned model with ONNX Runtime (:func:`attnprune.deploy.bench.benchmark`) and puts
the measurement beside the prediction.
"""

from __future__ import annotations

import warnings

import torch.nn as nn

from ..core.instrument import Instrumented
from ..deploy.bench import benchmark
from ..deploy.latency_model import LatencyModel, build_latency_model

__all__ = ["attach_latency_model", "measure_latency"]


def attach_latency_model(inst: Instrumented, *, batch: int, threads: int, provider: str,
                         multiple: int) -> LatencyModel:
    """Build (or load) the latency model of ``inst`` and attach it as the ``"latency"`` cost.

    Args:
        inst: The instrumented working copy.
        batch: Samples per timed run (``latency_batch``).
        threads: ONNX Runtime intra-op threads (``latency_threads``).
        provider: ``"cpu"`` or ``"cuda"``.
        multiple: The channel multiple of the run (the tables' grid).
    """
    lm = build_latency_model(inst, batch=batch, threads=threads, provider=provider, multiple=multiple)
    inst.cost.set_target_cost("latency", lm)
    return lm


def measure_latency(lm: LatencyModel, masks, dense: nn.Module, pruned: nn.Module, example_inputs, *,
                    batch: int, threads: int, provider: str, channel_multiple: int | None) -> dict:
    """Predicted and measured latency of the dense and the pruned model (the report's ``latency``).

    Both models are timed in one interleaved ONNX Runtime benchmark at ``batch``
    samples and ``threads`` threads; times are medians in milliseconds per batch.
    """
    was_training = pruned.training
    try:
        with warnings.catch_warnings():  # this is the machine pruned for: the multiple was the run's choice
            warnings.filterwarnings("ignore", message="the models' channel counts are multiples")
            result = benchmark({"dense": dense, "pruned": pruned}, example_inputs, batch_sizes=(batch,),
                               threads=threads, provider=provider, channel_multiple=channel_multiple)
    finally:
        pruned.train(was_training)
    measured = {row["model"]: row["median_ms"] for row in result.latency}
    predicted = lm.predict(masks)
    return {
        "batch": batch,
        "threads": threads,
        "provider": provider,
        "predicted_dense_ms": lm.dense * 1e3,
        "predicted_pruned_ms": predicted * 1e3,
        "measured_dense_ms": measured["dense"],
        "measured_pruned_ms": measured["pruned"],
        "predicted_removed": 1.0 - predicted / lm.dense,
        "measured_removed": 1.0 - measured["pruned"] / measured["dense"],
        "model_from_cache": lm.from_cache,
    }
