"""A model's ONNX Runtime latency as a function of its channel masks.

:func:`build_latency_model` times every conv/linear configuration of a model over
a coarse grid of kept (out, in) channel counts (:mod:`attnprune.deploy.latency_table`;
the HALP recipe, on ONNX Runtime instead of a GPU), and the dense model once as a
whole, through the project's export and ONNX Runtime path. :meth:`LatencyModel.predict`
then gives the latency of any set of keep-masks without building or timing a network:
the sum of each layer's table, interpolated bilinearly at its kept counts, plus a
*residual*, the dense model's measured latency minus the sum of its layers' tables.

How the residual scales with the masks is ``scaling``:

* ``"profiled"`` (the default): the dense model's run is profiled once in ONNX Runtime
  and its kernel time divided into conv/linear kernels and other kernels
  (:func:`~attnprune.deploy.latency_table.dense_split`); the dense latency's first part
  scales like ``"layers"``, the second like ``"activations"``. On
  torchvision EfficientNet-B0 (batch 1, one thread, AMD EPYC with AVX2) the
  un-fused SiLU alone took 3.3 of 16.5 ms of kernel time and other non-conv kernels 1.9
  ms: memory-bound work that shrinks with the kept channels, not with their product,
  which ``"layers"`` over-predicted the removal of by 7 points on average. Without a
  profile (an injected ``timer``, or a GPU) it is ``"layers"``.
* ``"layers"``: in proportion to the predicted layer time, i.e. every
  table is multiplied by ``dense / sum of dense tables``. Measured (ORT's profiler,
  torchvision ResNet-18, batch 1, one thread, AVX-512): each conv's kernel runs ~10%
  slower inside the whole model than alone (its weights and input are not hot in the
  cache), in the dense model and a pruned one alike (18.16 vs 16.51 ms; 7.21 vs
  6.61 ms), while pooling and the like are < 2% of the total. The predicted
  *fraction removed* then depends on the tables only, not on the single dense
  measurement, which other tenants of a shared machine disturb most.
* ``"activations"``: in proportion to the kept activations (the sum over conv/linear
  layers of ``k_in * in_size + k_out * out_size``), for models where memory-bound
  ops outside the tables (reorders, pooling, element-wise ops) dominate the residual.
* ``"constant"``: the dense residual at every mask.

The tables leave out the layout conversions ONNX Runtime wraps around a lone conv
(:class:`~attnprune.deploy.latency_table.OrtTimer`). On 6 randomly pruned models each of
resnet18/50, mobilenet_v2, efficientnet_b0 and CIFAR ResNet-56, at 1 and 2 threads
(channels multiples of 16; a shared 2-core Intel Xeon with AVX-512;
``python benchmarks/latency.py --check-model 6``), the predicted fraction of latency removed was
off by 0.019 on average (worst 0.069, mobilenet_v2 at two threads) with ``"layers"``; on
a shared 2-core AMD EPYC with AVX2 only (multiples of 8) by 0.026 (worst 0.114:
efficientnet_b0 at one thread, over-predicted by 7 points on average); with
``"profiled"`` on a shared 2-core AMD EPYC with AVX-512 (multiples of 16) by 0.017 at
one thread and 0.025 over one and two (worst 0.136: mobilenet_v2 at two threads,
under-predicted, its tables probably disturbed by the machine's other load while they
were timed; at one thread mobilenet_v2 was over-predicted by 4.4 points on average, and
about as much with 9 or 17 grid points). Off the CPU's block size it is worse: on random
ResNet-56 masks in multiples of 8 (what the latency fallback of ``round_to="auto"`` uses
on an AVX-512 machine; ``--check-model 6 --multiple 8``) it over-predicted the removal
by 5-13 points, with or without the conversions in the tables (shares then still taken
over the first runs): a whole model that mixes blocked and unblocked convs converts
between the layouts at every boundary, which no table holds. Earlier, on three random
ResNet-18s, ``"activations"`` was off by up to 1.6 points and ``"constant"`` by 2.3,
against 1.1 for ``"layers"``.

Models are cached on disk (:mod:`attnprune.deploy.latency_cache`), keyed by everything
a table depends on; a cached model loads without timing anything.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import torch
from torch import nn

from .._ints import check_int
from .._tree import as_inputs
from ..core.cost import CostModel, LayerCost
from ..core.instrument import Instrumented
from .latency_cache import SPLIT_KEYS, cache_key, load_cached, save_cached, valid_split
from .latency_table import (
    DenseTimer,
    LayerSpec,
    OrtTimer,
    Timer,
    grid_points,
    layer_specs,
)
from .ort_session import check_provider, check_threads

__all__ = ["SCALINGS", "LatencyModel", "build_latency_model"]

_LAYERS = (nn.modules.conv._ConvNd, nn.Linear)
SCALINGS = ("profiled", "layers", "activations", "constant")


class LatencyModel:
    """Predicted latency (seconds per batch) of a model under channel masks.

    Built by :func:`build_latency_model`; the tables are in ``tables`` (one per
    distinct layer configuration: ``spec``, ``grid_out``, ``grid_in``, ``seconds``
    indexed ``[i_out][i_in]``) and ``entries`` maps each layer call, in model order,
    to its table.

    Attributes:
        dense: Latency of the dense model (seconds per batch): the measured one, or
            the sum of the dense tables when nothing was measured.
        residual: Dense latency not in the layer tables (may be negative).
        scaling: How the residual scales with the masks (see the module docstring).
        split: How the dense run's kernel time divides into layer kernels and other
            kernels (fractions, ``"layers"``/``"activations"``;
            :func:`~attnprune.deploy.latency_table.dense_split`), or ``None`` when
            not profiled (then ``"profiled"`` scales like ``"layers"``).
        batch: Batch size the latencies are for.
        key: The cache key (machine, software, settings and structure).
        from_cache: The tables were loaded from disk.
    """

    def __init__(self, cost: CostModel, layers: list[LayerCost], tables: list[dict], entries: list[int],
                 dense_measured: float | None, key: dict, from_cache: bool = False, scaling: str = "profiled",
                 split: dict[str, float] | None = None):
        if scaling not in SCALINGS:
            raise ValueError(f"scaling must be one of {list(SCALINGS)}, got {scaling!r}")
        self.cost, self.tables, self.entries, self.key = cost, tables, entries, key
        self.scaling = scaling
        self.batch = int(key["batch"])
        self.from_cache = from_cache
        self._sizes = [g.n_channels for g in cost.groups]
        self._prepare(layers)
        self._table_dense = float(self._layer_seconds(self._c_out.astype(float), self._c_in.astype(float)).sum())
        self.dense = self._table_dense if dense_measured is None else float(dense_measured)
        self.residual = self.dense - self._table_dense
        self.split = None if split is None else {k: float(split[k]) for k in SPLIT_KEYS}

    # -- precomputation ---------------------------------------------------------------
    def _prepare(self, layers: list[LayerCost]) -> None:
        n_e, n_g = len(self.entries), len(self._sizes)
        self._m_out = np.zeros((n_e, n_g))
        self._m_in = np.zeros((n_e, n_g))
        self._partial: list[tuple[int, int, int, np.ndarray]] = []  # (entry, side, group, roots)
        self._c_out = np.zeros(n_e)
        self._c_in = np.zeros(n_e)
        width = max(max(len(t["grid_out"]), len(t["grid_in"])) for t in self.tables) + 1
        go, gi = np.zeros((n_e, width)), np.zeros((n_e, width))
        secs = np.zeros((n_e, width, width))
        self._n_out, self._n_in = np.zeros(n_e, int), np.zeros(n_e, int)
        self._a_out, self._a_in = np.zeros(n_e), np.zeros(n_e)
        self._tied = np.zeros(n_e, bool)
        for e, (lc, ti) in enumerate(zip(layers, self.entries)):
            t = self.tables[ti]
            spec: LayerSpec = t["spec"]
            self._c_out[e], self._c_in[e] = lc.c_out, lc.c_in
            for side, spans, mat in ((0, lc.out_spans, self._m_out), (1, lc.in_spans, self._m_in)):
                for g, r in spans:
                    r = r.numpy()
                    if len(r) == self._sizes[g] and np.array_equal(np.sort(r), np.arange(self._sizes[g])):
                        mat[e, g] += 1
                    else:
                        self._partial.append((e, side, g, r))
            for grid, out, n in ((t["grid_out"], go, self._n_out), (t["grid_in"], gi, self._n_in)):
                n[e] = len(grid)
                out[e, : len(grid)] = grid
                out[e, len(grid):] = grid[-1] + np.arange(1, width - len(grid) + 1)
            s = np.asarray(t["seconds"], float)
            secs[e, : s.shape[0], : s.shape[1]] = s
            secs[e, s.shape[0]:, :] = secs[e, s.shape[0] - 1: s.shape[0], :]
            secs[e, :, s.shape[1]:] = secs[e, :, s.shape[1] - 1: s.shape[1]]
            self._tied[e] = spec.depthwise
            self._a_out[e] = float(np.prod(spec.out_size)) if spec.out_size else 1.0
            self._a_in[e] = float(np.prod(spec.in_size)) if spec.in_size else 1.0
        self._go, self._gi, self._secs = go, gi, secs
        self._rows = np.arange(n_e)
        self._names = [lc.name for lc in layers]
        self._act_dense = float(self._activations(self._c_out, self._c_in))

    def _residual_at(self, k_out: np.ndarray, k_in: np.ndarray, layers: float) -> float:
        if self.scaling == "profiled" and self.split is not None and self._table_dense and self._act_dense:
            f = self.split
            return self.dense * (f["layers"] * layers / self._table_dense + f["activations"]
                                 * self._activations(k_out, k_in) / self._act_dense) - layers
        if self.scaling == "constant":
            return self.residual
        if self.scaling in ("layers", "profiled"):
            return self.residual * layers / self._table_dense if self._table_dense else self.residual
        return self.residual * self._activations(k_out, k_in) / self._act_dense if self._act_dense else self.residual

    def _activations(self, k_out: np.ndarray, k_in: np.ndarray) -> float:
        k_in = np.where(self._tied, k_out, k_in)
        return float(self._a_out @ k_out + self._a_in @ k_in)

    @staticmethod
    def _locate(grid: np.ndarray, n: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        i = np.clip((grid <= k[:, None]).sum(1) - 1, 0, np.maximum(n - 2, 0))
        rows = np.arange(len(k))
        lo, hi = grid[rows, i], grid[rows, i + 1]
        t = np.where(n > 1, (k - lo) / (hi - lo), 0.0)
        return i, t

    def _layer_seconds(self, k_out: np.ndarray, k_in: np.ndarray) -> np.ndarray:
        io, to = self._locate(self._go, self._n_out, k_out)
        ii, ti = self._locate(self._gi, self._n_in, k_in)
        ti = np.where(self._tied, 0.0, ti)
        r, s = self._rows, self._secs
        v = ((1 - to) * (1 - ti) * s[r, io, ii] + to * (1 - ti) * s[r, io + 1, ii]
             + (1 - to) * ti * s[r, io, ii + 1] + to * ti * s[r, io + 1, ii + 1])
        return np.maximum(v, 0.0)

    # -- prediction -------------------------------------------------------------------
    def kept(self, masks) -> tuple[np.ndarray, np.ndarray]:
        """Kept (out, in) channels of every layer call under ``masks`` (True = keep)."""
        if len(masks) != len(self._sizes):
            raise ValueError(f"masks must hold one bool keep-mask per group ({len(self._sizes)}), got {len(masks)}")
        closed_n = np.empty(len(self._sizes))
        closed = []
        for g, m in enumerate(masks):
            m = m.numpy() if isinstance(m, torch.Tensor) else np.asarray(m)
            if m.shape != (self._sizes[g],):
                raise ValueError(f"mask of group {g} must have shape ({self._sizes[g]},), got {tuple(m.shape)}")
            closed.append(m)
            closed_n[g] = self._sizes[g] - np.count_nonzero(m)
        k_out = self._c_out - self._m_out @ closed_n
        k_in = self._c_in - self._m_in @ closed_n
        for e, side, g, r in self._partial:
            n = len(r) - np.count_nonzero(closed[g][r])
            if side == 0:
                k_out[e] -= n
            else:
                k_in[e] -= n
        return k_out, k_in

    def predict(self, masks) -> float:
        """Predicted latency in seconds per batch of ``batch`` samples.

        Args:
            masks: One bool keep-mask per group (True = keep), in ``cost.groups`` order.
        """
        k_out, k_in = self.kept(masks)
        layers = float(self._layer_seconds(k_out, k_in).sum())
        return layers + self._residual_at(k_out, k_in, layers)

    __call__ = predict

    def removed_fraction(self, masks) -> float:
        """Fraction of the dense latency that ``masks`` remove (the budget's ratio)."""
        return 1.0 - self.predict(masks) / self.dense

    def breakdown(self, masks) -> dict[str, float]:
        """Predicted seconds per layer call (name, with ``#i`` for repeated calls) and the residual."""
        k_out, k_in = self.kept(masks)
        secs = self._layer_seconds(k_out, k_in)
        out: dict[str, float] = {}
        for name, v in zip(self._names, secs):
            key, i = name, 1
            while key in out:
                key, i = f"{name}#{i}", i + 1
            out[key] = float(v)
        out["(residual)"] = self._residual_at(k_out, k_in, float(secs.sum()))
        return out

    def channel_costs(self) -> list[torch.Tensor]:
        """Seconds that closing one channel of each group saves at the dense model.

        The latency analogue of :meth:`CostModel.channel_costs`, for weighting
        regularisers (interpolated between grid points, so a smooth estimate).
        """
        costs = []
        for g in self.cost.groups:
            masks = [torch.ones(n, dtype=torch.bool) for n in self._sizes]
            unit = g.n_channels // g.ch_groups
            masks[g.index][::unit] = False
            saved = (self.dense - self.predict(masks)) / g.ch_groups
            costs.append(torch.full((g.n_channels,), float(max(saved, 1e-12))))
        return costs

    def __repr__(self) -> str:
        return (f"LatencyModel(dense={self.dense * 1e3:.3f} ms, batch={self.batch}, layers={len(self.entries)}, "
                f"tables={len(self.tables)}, residual={self.residual * 1e3:.3f} ms)")


# --------------------------------------------------------------------------- #
# Building
# --------------------------------------------------------------------------- #
def build_latency_model(
    inst_or_cost: Instrumented | CostModel,
    *,
    batch: int = 1,
    threads: int | None = None,
    provider: str = "cpu",
    multiple: int = 1,
    cache_dir: str | os.PathLike | None | bool = None,
    timer: Timer | None = None,
    points: int = 5,
    dense_latency: float | None = None,
    scaling: str = "profiled",
    dense_split: dict[str, float] | None = None,
    model: nn.Module | None = None,
    example_inputs=None,
) -> LatencyModel:
    """Measure (or load from the cache) the latency model of an instrumented model.

    Args:
        inst_or_cost: An :class:`~attnprune.core.instrument.Instrumented` model, or
            its :class:`~attnprune.core.cost.CostModel` together with ``model`` and
            ``example_inputs``.
        batch: Batch size of every timed run; predictions are seconds per batch.
        threads: ONNX Runtime intra-op threads; ``None``: every CPU this process may use
            (the benchmark's default).
        provider: ``"cpu"`` or ``"cuda"`` (ONNX Runtime's execution provider).
        multiple: Kept counts are timed at multiples of this (the rounding grid,
            e.g. ``channel_multiple(provider, flags)``), both ends included.
        cache_dir: Folder of cached models; ``None``: ``$ATTNPRUNE_CACHE/latency``
            (``~/.cache/attnprune/latency``); ``False``: no cache.
        timer: ``timer(spec, k_out, k_in) -> seconds`` replacing ONNX Runtime (your
            own device timings, or a fake in tests); then nothing is measured and,
            unless ``dense_latency`` is given, the residual is 0. Its cache entry is
            keyed by its module and qualified name: use ``cache_dir=False`` while its
            timings change.
        points: Grid points per channel dimension (at most; both ends included).
        dense_latency: The dense model's latency in seconds per batch, when known
            (skips its measurement).
        scaling: How the residual scales with the masks: ``"profiled"`` (default),
            ``"layers"``, ``"activations"`` or ``"constant"`` (module docstring; not
            part of the cache key, as the tables do not depend on it).
        dense_split: With ``dense_latency``: how that run divides (fractions
            ``"layers"`` and ``"activations"`` summing to 1, as
            :func:`~attnprune.deploy.latency_table.dense_split` gives), for
            ``"profiled"``. Measured with the dense latency on the CPU otherwise.
        model: The model, when ``inst_or_cost`` is a cost model.
        example_inputs: Example inputs of ``model``, likewise.

    Returns:
        A :class:`LatencyModel`.

    Raises:
        ValueError: ``batch``, ``threads``, ``multiple`` or ``points`` below 1 (or
            ``points`` below 2), an unknown ``provider`` or ``scaling``, a non-positive
            ``dense_latency``, a malformed ``dense_split`` (or one without
            ``dense_latency``), or a cost model without ``model``/``example_inputs``.
        TypeError: ``inst_or_cost`` is neither an instrumented model nor a cost model.
    """
    batch = check_int("batch", batch, 1)
    threads = check_threads(threads)
    provider = check_provider(provider)
    multiple = check_int("multiple", multiple, 1)
    if check_int("points", points, 1) < 2:
        raise ValueError(f"points must be >= 2 (both ends of each dimension), got {points}")
    if scaling not in SCALINGS:
        raise ValueError(f"scaling must be one of {list(SCALINGS)}, got {scaling!r}")
    if dense_latency is not None and not (isinstance(dense_latency, (int, float)) and dense_latency > 0):
        raise ValueError(f"dense_latency must be a positive number of seconds or None, got {dense_latency!r}")
    if dense_split is not None and (dense_latency is None or not valid_split(dense_split)):
        raise ValueError(f"dense_split must be None, or (with dense_latency) fractions of {list(SPLIT_KEYS)} "
                         f"summing to 1, got {dense_split!r}")
    if isinstance(inst_or_cost, Instrumented):
        cost, model, args = inst_or_cost.cost, inst_or_cost.model, inst_or_cost.example_inputs
    elif isinstance(inst_or_cost, CostModel):
        if model is None or example_inputs is None:
            raise ValueError("a CostModel needs model= and example_inputs= (the model it counts and one batch)")
        cost, args = inst_or_cost, as_inputs(example_inputs, tensors_only=False)
    else:
        raise TypeError(f"inst_or_cost must be an Instrumented model or a CostModel, got {type(inst_or_cost).__name__}")

    conv_layers = [lc for lc in cost.layers if isinstance(lc.module, _LAYERS)]
    per_call = layer_specs(model, args, [lc.module for lc in conv_layers], batch)
    layers, tables, entries, index = [], [], [], {}
    for lc, specs in zip(conv_layers, per_call):
        for spec in specs:
            unit = spec.groups if spec.kind != "linear" and not spec.depthwise else 1
            g_out = grid_points(spec.c_out, multiple, points, unit) if lc.out_spans else (spec.c_out,)
            g_in = (spec.c_in,) if spec.depthwise or not lc.in_spans else grid_points(spec.c_in, multiple, points, unit)
            k = (spec, g_out, g_in)
            if k not in index:
                index[k] = len(tables)
                tables.append({"spec": spec, "grid_out": g_out, "grid_in": g_in, "seconds": None})
            layers.append(lc)
            entries.append(index[k])
    key = cache_key(
        tables=tables, entries=entries, batch=batch, threads=threads, provider=provider, multiple=multiple,
        inputs=[(list(t.shape[1:]), str(t.dtype).replace("torch.", "")) for t in args if isinstance(t, torch.Tensor)],
        timer=timer, dense_latency=dense_latency, dense_split=dense_split,
    )
    directory = None if cache_dir is False else cache_dir
    cached = load_cached(key, tables, directory) if cache_dir is not False else None
    if cached is not None:
        return LatencyModel(cost, layers, tables, entries, cached[1], key, from_cache=True, scaling=scaling,
                            split=cached[2])

    own_timer = timer is None
    dense_timer = DenseTimer(model, args, batch, threads, provider) if own_timer and dense_latency is None else None
    run = OrtTimer(threads, provider) if own_timer else timer
    done: dict[tuple[LayerSpec, int, int], float] = {}
    try:
        for t in tables:
            if dense_timer is not None:
                dense_timer.sample()
            spec = t["spec"]
            rows = []
            for ko in t["grid_out"]:
                row = []
                for ki in t["grid_in"]:
                    ki = ko if spec.depthwise else ki
                    if (spec, ko, ki) not in done:
                        v = float(run(spec, ko, ki))
                        if not np.isfinite(v) or v < 0:
                            raise ValueError(f"timer returned {v!r} for {spec} at ({ko}, {ki}); need seconds >= 0")
                        done[spec, ko, ki] = v
                    row.append(done[spec, ko, ki])
                rows.append(row)
            t["seconds"] = rows
    finally:
        if own_timer:
            run.close()
    dense = float(dense_latency) if dense_latency is not None else None
    split = dense_split
    if dense_timer is not None:
        split = dense_timer.profile() if provider == "cpu" else None
        dense = dense_timer.result()
    if cache_dir is not False:
        try:
            save_cached(key, tables, dense, directory, split)
        except OSError as exc:
            warnings.warn(f"could not write the latency cache ({exc}); the model is not cached", stacklevel=2)
    return LatencyModel(cost, layers, tables, entries, dense, key, scaling=scaling, split=split)
