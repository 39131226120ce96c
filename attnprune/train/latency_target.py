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

When ``round_to="auto"``'s multiple cannot reach the asked latency (a small
network: CIFAR ResNet-56's 16-channel stage cannot be pruned at all in multiples
of 16), :func:`reach_at_finer_multiple` tries once more at half that multiple if it
is still at least :data:`FINEST_FALLBACK` (8, the block of ORT's NCHWc layout with
AVX2, the smallest it uses on x86), with a latency model timed on that grid, so the
counts it picks are still budgeted by what they measure (on an AVX-512 machine,
24 channels run the unblocked kernels and the tables say so). It never falls back
to free counts as the params and MACs targets do: the tables' grid is coarse
(``points`` per dimension, interpolated between), and between two fast multiples a
free count's slow kernel would be predicted fast.
"""

from __future__ import annotations

import dataclasses
import warnings

import torch.nn as nn

from ..core.instrument import Instrumented
from ..core.limits import GroupLimits
from ..deploy.bench import benchmark
from ..deploy.latency_model import LatencyModel, build_latency_model
from ..errors import BudgetError
from ..methods.base import Budget
from .checks import check_reachable

__all__ = ["FINEST_FALLBACK", "attach_latency_model", "finer_multiple", "measure_latency",
           "reach_at_finer_multiple"]

#: The smallest channel multiple a latency target falls back to (ORT's NCHWc block with AVX2).
FINEST_FALLBACK = 8


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


def finer_multiple(multiple: int) -> int | None:
    """Half of ``multiple`` when that is a whole multiple of at least :data:`FINEST_FALLBACK`, else None."""
    half, odd = divmod(multiple, 2)
    return half if not odd and half >= FINEST_FALLBACK else None


def reach_at_finer_multiple(inst: Instrumented, budget: Budget, limits: GroupLimits | None, exc: BudgetError,
                            round_source: dict, *, batch: int, threads: int,
                            provider: str) -> tuple[Budget, LatencyModel, dict]:
    """A latency ratio that ``round_to="auto"``'s multiple cannot reach, tried at half of it.

    Builds (or loads) the latency model on the finer grid, attaches it in place of
    the first and checks the ratio again (see the module docstring for the rule).

    Args:
        inst: The instrumented working copy (its ``"latency"`` cost is replaced).
        budget: The budget at the auto multiple (``budget.round_to``).
        limits: The run's per-group limits.
        exc: Why ``budget`` is unreachable (its message is kept in the error or warning).
        round_source: The report's ``round_to_source``; the returned copy names the fallback.
        batch, threads, provider: As :func:`attach_latency_model`.

    Returns:
        ``(budget, latency_model, round_source)`` at the finer multiple.

    Raises:
        BudgetError: No finer multiple is allowed, or the ratio is unreachable at it too.
    """
    multiple = budget.round_to
    finer = finer_multiple(multiple)
    advice = ("ask for a smaller latency ratio, or give round_to explicitly (free counts, round_to=1, are slower "
              "per MAC on this target and their latency is interpolated, not timed)")
    if finer is None:
        raise BudgetError(f"{exc}; round_to='auto' chose multiples of {multiple}, the channel counts this "
                          f"{provider} target runs fast, and falls back no further than {FINEST_FALLBACK}; "
                          f"{advice}") from None
    finer_budget = dataclasses.replace(budget, round_to=finer)
    lm = attach_latency_model(inst, batch=batch, threads=threads, provider=provider, multiple=finer)
    try:
        check_reachable(inst, finer_budget, limits)
    except BudgetError as again:
        raise BudgetError(f"{exc}; round_to='auto' chose multiples of {multiple}, and with multiples of {finer} "
                          f"{again}; {advice}") from None
    warnings.warn(f"round_to='auto' chose multiples of {multiple} for this {provider} target, but {exc}; using "
                  f"multiples of {finer} instead, timed on that grid (some of their kernels may be slower per MAC)",
                  stacklevel=3)
    return finer_budget, lm, {**round_source, "fallback": f"multiples of {finer} (the latency ratio is "
                                                          f"unreachable with multiples of {multiple})"}


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
