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
of 16), :func:`reach_at_finer_multiple` halves the multiple, with a warning, until
the ratio is reachable or the multiple is 1, and times a latency model on each
grid it tries, so the counts it picks are budgeted by what they measure (on an
AVX-512 machine 8 or 24 channels run the unblocked kernels, and the tables say so).
The multiples below the CPU's block are slower per MAC, but a latency target is
met by measured seconds, not by MACs: on ResNet-56 at batch 32 (AMD EPYC, AVX-512)
every group cut to 8 channels removes 0.64 of the measured latency at one thread
and 0.60 at two, cut to 4 channels 0.81 and 0.75 (``python benchmarks/latency.py
--models cifar-resnet56 --uniform 16 8 4 2 1``), so a 0.7 target may need counts
below 8. The tables time ``points`` counts per dimension and interpolate between
them, so on a fine grid a count whose kernel is slow can be predicted as fast as
its timed neighbours; the report's measured latency shows what it got. The params
and MACs targets fall back to free counts instead, in ``prune()``, as they never
consult the tables.
"""

from __future__ import annotations

import dataclasses
import warnings

import torch.nn as nn

from ..core.instrument import Instrumented
from ..core.limits import GroupLimits
from ..deploy.bench import benchmark
from ..deploy.latency_model import LatencyModel, build_latency_model
from ..deploy.latency_table import hook_free_copy
from ..errors import BudgetError
from ..methods.base import Budget
from .checks import check_reachable

__all__ = ["FINEST_FALLBACK", "attach_latency_model", "finer_multiple", "measure_latency",
           "reach_at_finer_multiple"]

#: The smallest channel multiple a latency target falls back to (1: free counts, interpolated between timed ones).
FINEST_FALLBACK = 1


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
    """Half of ``multiple`` when that is a whole number of at least :data:`FINEST_FALLBACK`, else None."""
    half, odd = divmod(multiple, 2)
    return half if not odd and half >= FINEST_FALLBACK else None


def reach_at_finer_multiple(inst: Instrumented, budget: Budget, limits: GroupLimits | None, exc: BudgetError,
                            round_source: dict, *, batch: int, threads: int,
                            provider: str) -> tuple[Budget, LatencyModel, dict]:
    """A latency ratio that ``round_to="auto"``'s multiple cannot reach, tried at finer multiples.

    Halves the multiple until the ratio is reachable (see the module docstring for
    the rule), building (or loading) the latency model on each grid tried and
    attaching it in place of the first.

    Args:
        inst: The instrumented working copy (its ``"latency"`` cost is replaced).
        budget: The budget at the auto multiple (``budget.round_to``).
        limits: The run's per-group limits.
        exc: Why ``budget`` is unreachable (its message is kept in the error or warning).
        round_source: The report's ``round_to_source``; the returned copy names the fallback.
        batch, threads, provider: As :func:`attach_latency_model`.

    Returns:
        ``(budget, latency_model, round_source)`` at the first multiple that reaches the ratio.

    Raises:
        BudgetError: No finer multiple is left, or the ratio is unreachable at every one.
    """
    multiple = budget.round_to
    advice = "ask for a smaller latency ratio"
    chain, m = [], finer_multiple(multiple)
    while m is not None:
        chain.append(m)
        m = finer_multiple(m)
    if not chain:
        raise BudgetError(f"{exc}; round_to='auto' chose multiples of {multiple}, the channel counts this "
                          f"{provider} target runs fast, and has no finer multiple to fall back to; "
                          f"{advice}") from None
    for i, finer in enumerate(chain):
        finer_budget = dataclasses.replace(budget, round_to=finer)
        lm = attach_latency_model(inst, batch=batch, threads=threads, provider=provider, multiple=finer)
        try:
            check_reachable(inst, finer_budget, limits)
        except BudgetError as again:
            last = again
            continue
        warnings.warn(f"round_to='auto' chose multiples of {multiple} for this {provider} target, but {exc}; using "
                      f"multiples of {finer} instead, timed on that grid (kernels below the CPU's block size are "
                      f"slower per MAC)", stacklevel=3)
        unreachable = ", ".join(map(str, [multiple, *chain[:i]]))
        return finer_budget, lm, {**round_source, "fallback": f"multiples of {finer} (the latency ratio is "
                                                              f"unreachable with multiples of {unreachable})"}
    raise BudgetError(f"{exc}; round_to='auto' chose multiples of {multiple}, and with multiples of "
                      f"{', '.join(map(str, chain))} {last}; {advice}") from None


def measure_latency(lm: LatencyModel, masks, dense: nn.Module, pruned: nn.Module, example_inputs, *,
                    batch: int, threads: int, provider: str, channel_multiple: int | None) -> dict:
    """Predicted and measured latency of the dense and the pruned model (the report's ``latency``).

    Both models are timed in one interleaved ONNX Runtime benchmark at ``batch``
    samples and ``threads`` threads; times are medians in milliseconds per batch.
    Copies without forward hooks are timed (as the latency model's dense run is):
    hooks a user put on the model do not reach ONNX, and export refuses a hooked model.
    """
    timed = {"dense": hook_free_copy(dense), "pruned": hook_free_copy(pruned)}
    with warnings.catch_warnings():  # this is the machine pruned for: the multiple was the run's choice
        warnings.filterwarnings("ignore", message="the models' channel counts are multiples")
        result = benchmark(timed, example_inputs, batch_sizes=(batch,), threads=threads, provider=provider,
                           channel_multiple=channel_multiple)
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
