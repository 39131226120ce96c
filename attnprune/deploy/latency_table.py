"""Per-layer latency tables: each conv/linear configuration timed over kept channels.

A model's latency under pruning is mostly the latency of its convolutions and
linear layers, and each of those depends on its kept output and input channels
only. This module lists the conv/linear configurations of a model
(:func:`layer_specs`), chooses a coarse grid of kept counts on the rounding grid
(:func:`grid_points`), and times one configuration at one grid point in ONNX
Runtime (:class:`OrtTimer`): a one-node ONNX model (``Conv``/``ConvTranspose``, or
``Gemm``/``MatMul`` for a linear layer) built directly with ``onnx.helper``, run in
a session made by :func:`attnprune.deploy.export.onnx_session` (full graph
optimisation, so the NCHWc layout applies as in a whole model; fixed threads),
less the layout conversions a lone conv pays for and a chain of convs does not
(:data:`REORDER_OPS`, measured with ONNX Runtime's profiler).
Each point is the fastest of several timed samples after a few warm-up runs (see
:func:`time_call` for why not the median).
Each layer is timed at its real input size, recorded in one forward pass.
:class:`DenseTimer` times the whole dense model the same way, through
:func:`attnprune.deploy.export.export_onnx` (the residual's reference).
"""

from __future__ import annotations

import copy
import gc
import json
import math
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .._modes import observe
from .export import export_onnx, onnx_session

__all__ = [
    "LAYER_OPS", "REORDER_OPS", "DenseTimer", "LayerSpec", "OrtTimer", "Timer", "at_batch", "dense_split",
    "grid_points", "hook_free_copy", "kernel_share", "layer_specs", "one_node_model", "time_call",
]

_CONV = nn.modules.conv._ConvNd
_OPSET = 17
_DENSE_OPSET = 17  # the TorchScript exporter: ~7x faster than dynamo on ResNet-50

Timer = Callable[["LayerSpec", int, int], float]
"""``timer(spec, k_out, k_in) -> seconds`` per batch of ``spec.batch`` samples."""


@dataclass(frozen=True)
class LayerSpec:
    """One conv/linear configuration, as the latency tables key it.

    Attributes:
        kind: ``"conv"``, ``"conv_transpose"`` or ``"linear"``.
        c_out: Output channels (features) of the dense layer.
        c_in: Input channels (features) of the dense layer.
        groups: Conv groups of the dense layer (1 for linear).
        depthwise: A depthwise conv (groups == c_in == c_out > 1): pruned, it keeps
            ``groups == k_out == k_in``; its table has one dimension.
        kernel: Kernel size per spatial dimension (``()`` for linear).
        stride: Stride per spatial dimension.
        pads: ONNX pads: all begins, then all ends.
        dilation: Dilation per spatial dimension.
        output_padding: ConvTranspose output padding (zeros otherwise).
        bias: The layer has a bias.
        in_size: Per-sample input size without the channel dimension (spatial
            size of a conv; token dimensions of a linear, ``()`` for 2-D input).
        out_size: Per-sample output size, likewise.
        batch: Batch size of the timed runs.
        dtype: Weight and activation dtype (numpy name).
    """

    kind: str
    c_out: int
    c_in: int
    groups: int
    depthwise: bool
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    pads: tuple[int, ...]
    dilation: tuple[int, ...]
    output_padding: tuple[int, ...]
    bias: bool
    in_size: tuple[int, ...]
    out_size: tuple[int, ...]
    batch: int
    dtype: str

    def to_dict(self) -> dict:
        """JSON-ready fields (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> LayerSpec:
        """Inverse of :meth:`to_dict`."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def conv_groups(self, k_out: int) -> int:
        """Conv groups of the layer with ``k_out`` output channels kept."""
        return k_out if self.depthwise else self.groups


def _tuple(v, n: int) -> tuple[int, ...]:
    return tuple(int(x) for x in v) if isinstance(v, (tuple, list)) else (int(v),) * n


def _conv_pads(m: _CONV, in_size: tuple[int, ...]) -> tuple[int, ...]:
    n = len(m.kernel_size)
    if isinstance(m.padding, str):
        if m.padding == "valid":
            return (0,) * (2 * n)
        total = [d * (k - 1) for d, k in zip(m.dilation, m.kernel_size)]  # "same", stride 1
        return tuple(t // 2 for t in total) + tuple(t - t // 2 for t in total)
    p = _tuple(m.padding, n)
    return p + p


def _spec_of(m: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int) -> LayerSpec:
    dtype = str(m.weight.dtype).replace("torch.", "")
    bias = m.bias is not None
    if isinstance(m, nn.Linear):
        return LayerSpec("linear", m.out_features, m.in_features, 1, False, (), (), (), (), (), bias,
                         tuple(x.shape[1:-1]), tuple(y.shape[1:-1]), batch, dtype)
    n = len(m.kernel_size)
    in_size = tuple(int(s) for s in x.shape[2:])
    depthwise = m.groups == m.in_channels == m.out_channels and m.groups > 1
    return LayerSpec(
        "conv_transpose" if m.transposed else "conv", m.out_channels, m.in_channels, m.groups,
        depthwise, _tuple(m.kernel_size, n), _tuple(m.stride, n), _conv_pads(m, in_size),
        _tuple(m.dilation, n), _tuple(m.output_padding, n) if m.transposed else (0,) * n, bias,
        in_size, tuple(int(s) for s in y.shape[2:]), batch, dtype,
    )


def layer_specs(model: nn.Module, args: tuple, modules: list[nn.Module], batch: int) -> list[list[LayerSpec]]:
    """The configuration of each of ``modules`` (conv/linear) at every call.

    Runs one forward pass of ``model(*args)`` (eval mode, no grad) with a hook on
    each module; a module called several times gets one spec per call.

    Returns:
        One list of specs per module, in the order of ``modules`` (empty for a
        module the forward pass never called).
    """
    found: dict[int, list[LayerSpec]] = {id(m): [] for m in modules}

    def hook(module, inputs, output):
        found[id(module)].append(_spec_of(module, inputs[0], output, batch))

    observe(model, args, modules, hook)
    return [found[id(m)] for m in modules]


def grid_points(c: int, multiple: int, n_points: int, unit: int = 1) -> tuple[int, ...]:
    """Kept counts at which a dimension of ``c`` channels is timed.

    Multiples of ``lcm(multiple, unit)`` (``unit``: conv groups, whose count a
    kept number must divide) between one step and ``c``, both ends included
    (``c`` even when it is no multiple), thinned evenly to at most ``n_points``. A
    dimension with no multiple below ``c`` is timed at ``unit`` (the fewest channels it
    can keep) and ``c``, so that counts off the rounding grid still interpolate.
    """
    step = math.lcm(multiple, unit)
    cand = list(range(step, c, step)) + [c]
    if len(cand) == 1 and unit < c:
        cand = [unit, c]
    if len(cand) <= n_points:
        return tuple(cand)
    idx = np.unique(np.round(np.linspace(0, len(cand) - 1, n_points)).astype(int))
    return tuple(cand[i] for i in idx)


def one_node_model(spec: LayerSpec, k_out: int, k_in: int, seed: int = 0):
    """A one-node ONNX model of ``spec`` with ``k_out``/``k_in`` channels kept.

    Weights are random constants (initialisers, so ONNX Runtime can pre-pack and
    reorder them as it does in a whole model); the input is ``[batch, k_in,
    *in_size]`` for a conv and ``[batch, *in_size, k_in]`` for a linear.
    """
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(seed)
    dt = np.dtype(spec.dtype)
    elem = helper.np_dtype_to_tensor_dtype(dt)

    def init(name, shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.05).astype(dt), name)

    inits = []
    if spec.kind == "linear":
        x_shape = [spec.batch, *spec.in_size, k_in]
        y_shape = [spec.batch, *spec.out_size, k_out]
        if not spec.in_size:
            inits.append(init("W", (k_out, k_in)))
            ins = ["X", "W"]
            if spec.bias:
                inits.append(init("B", (k_out,)))
                ins.append("B")
            nodes = [helper.make_node("Gemm", ins, ["Y"], transB=1)]
        else:
            inits.append(init("W", (k_in, k_out)))
            nodes = [helper.make_node("MatMul", ["X", "W"], ["Y" if not spec.bias else "Z"])]
            if spec.bias:
                inits.append(init("B", (k_out,)))
                nodes.append(helper.make_node("Add", ["Z", "B"], ["Y"]))
    else:
        g = spec.conv_groups(k_out)
        if spec.depthwise:
            k_in = k_out
        x_shape = [spec.batch, k_in, *spec.in_size]
        y_shape = [spec.batch, k_out, *spec.out_size]
        if spec.kind == "conv":
            inits.append(init("W", (k_out, k_in // g, *spec.kernel)))
        else:
            inits.append(init("W", (k_in, k_out // g, *spec.kernel)))
        ins = ["X", "W"]
        if spec.bias:
            inits.append(init("B", (k_out,)))
            ins.append("B")
        attrs = {"kernel_shape": list(spec.kernel), "strides": list(spec.stride), "pads": list(spec.pads),
                     "dilations": list(spec.dilation), "group": g}
        if spec.kind == "conv_transpose":
            nodes = [helper.make_node("ConvTranspose", ins, ["Y"], output_padding=list(spec.output_padding), **attrs)]
        else:
            nodes = [helper.make_node("Conv", ins, ["Y"], **attrs)]
    graph = helper.make_graph(
        nodes, "layer", [helper.make_tensor_value_info("X", elem, x_shape)],
        [helper.make_tensor_value_info("Y", elem, y_shape)], initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)])
    model.ir_version = min(model.ir_version, 8)
    return model


def time_call(run: Callable[[], object], *, warmup: int, samples: int, min_sample_s: float,
              stat: str = "min") -> float:
    """Seconds per call of ``run``: the minimum (or median) over ``samples`` samples.

    Each sample is the mean time of back-to-back calls lasting about ``min_sample_s``
    (timer resolution and call overhead then do not matter); the garbage collector is
    off while timing. The minimum is the default: on a shared machine other tenants'
    load inflates a median by a factor that drifts from one moment to the next, so
    tables and the dense model measured seconds apart disagree (measured here on a
    2-core machine at load 4-5: the dense residual swung from -12 to +22 ms on an
    18 ms ResNet-18 with medians, and stayed at -0.4 ms with minima); the minimum
    estimates the unloaded latency for both alike. On an idle machine the two agree.
    """
    for _ in range(warmup):
        run()
    start = time.perf_counter()
    run()
    once = max(time.perf_counter() - start, 1e-7)
    reps = int(min(10_000, max(1, math.ceil(min_sample_s / once))))
    was = gc.isenabled()
    gc.disable()
    try:
        times = []
        for _ in range(samples):
            start = time.perf_counter()
            for _ in range(reps):
                run()
            times.append((time.perf_counter() - start) / reps)
    finally:
        if was:
            gc.enable()
    return float(min(times) if stat == "min" else statistics.median(times))


#: ONNX Runtime's layout conversions: its NCHWc transformer wraps a lone conv in them
#: (in and out of the blocked layout), while a whole model converts only where a chain
#: of blocked convs starts and ends.
REORDER_OPS = ("ReorderInput", "ReorderOutput")


def _steady_kernels(trace: list[dict], skip_runs: int) -> list[dict]:
    """The kernel events of a profiler trace after its first ``skip_runs`` runs (``model_run`` events)."""
    runs = sorted((e for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run"),
                  key=lambda e: float(e.get("ts", 0)))
    start = -math.inf
    if skip_runs > 0:
        start = float(runs[skip_runs].get("ts", 0)) if len(runs) > skip_runs else math.inf
    kernels = [e for e in trace if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time")
               and float(e.get("ts", 0)) >= start]
    return kernels


def kernel_share(trace: list[dict], excluded: tuple[str, ...] = REORDER_OPS, skip_runs: int = 0) -> float:
    """Fraction of the kernel time in an ONNX Runtime profiler trace spent outside ``excluded`` ops.

    Args:
        trace: The parsed JSON trace (``session.end_profiling()``'s file): events with
            ``cat == "Node"`` and a name ending in ``_kernel_time`` are the kernels;
            ``model_run`` events (``cat == "Session"``) span one run each.
        excluded: Op types (``args.op_name``) left out of the numerator.
        skip_runs: Leave out the kernels of the first ``skip_runs`` runs (warm-ups: a
            fresh session's first runs touch their buffers for the first time, which
            lands in the layout conversions, the first ops to write; see
            :class:`OrtTimer`). Kernels before the first kept run are left out.

    Returns:
        A share in ``[0, 1]``; 1 when the trace holds no kernel time.
    """
    kernels = _steady_kernels(trace, skip_runs)
    total = sum(float(e.get("dur", 0)) for e in kernels)
    kept = sum(float(e.get("dur", 0)) for e in kernels if e.get("args", {}).get("op_name") not in excluded)
    return kept / total if total > 0 else 1.0


#: The ops the latency tables time (a conv or linear layer, fused or not, in any layout).
LAYER_OPS = ("Conv", "FusedConv", "ConvTranspose", "Gemm", "FusedGemm", "MatMul", "FusedMatMul")


def dense_split(trace: list[dict], skip_runs: int = 0) -> dict[str, float] | None:
    """How a whole model's kernel time divides, from an ONNX Runtime profiler trace.

    The time outside kernels is left out: under the profiler it is mostly the
    profiler's own bookkeeping (torchvision EfficientNet-B0, batch 1, one thread, AMD
    EPYC with AVX2: a profiled run took 17.5 ms, 16.5 of them in kernels, an unprofiled
    one 15.6 ms), and counted as a constant it made the latency search over-remove at
    large ratios (0.80 measured for 0.70 asked).

    Returns:
        Fractions of the kernel time (summing to 1): ``"layers"``, the kernels of
        :data:`LAYER_OPS`; ``"activations"``, every other kernel (activation functions
        left unfused, pooling, element-wise ops, layout conversions: memory-bound work
        over the activations). ``None`` when the trace holds no kernel time.
    """
    kernels = _steady_kernels(trace, skip_runs)
    layers = sum(float(e.get("dur", 0)) for e in kernels if e.get("args", {}).get("op_name") in LAYER_OPS)
    total = sum(float(e.get("dur", 0)) for e in kernels)
    if total <= 0:
        return None
    return {"layers": layers / total, "activations": 1.0 - layers / total}


class OrtTimer:
    """Times one-node models in ONNX Runtime (the default ``timer``).

    The input is bound once and the output preallocated (``io_binding``): a plain
    ``session.run`` allocates and copies the output to numpy every call, which made
    the one-node timings of ResNet-18 sum to 1.5x the whole model's latency. With
    ``provider="cuda"`` both stay on the host and are copied every run, as in
    :func:`attnprune.deploy.bench.benchmark`.

    On the CPU a lone conv also pays for converting its input into ONNX Runtime's
    blocked NCHWc layout and its output back (:data:`REORDER_OPS`), which a conv
    inside a chain of blocked convs does not. Those conversions cost in proportion to
    the activations, not to the MACs, so they shrink more slowly than the conv under
    pruning: on torchvision MobileNetV2 (batch 1, one thread, AVX-512) they were 46%
    of the one-node kernel time. With ``exclude_reorders`` (the default) each timing
    is scaled by the share of its kernel time spent outside them, taken from ONNX
    Runtime's profiler in a second, short session, leaving out its warm-up runs: a
    fresh session's first runs write their buffers for the first time, and that cost
    lands in the conversions, the first ops to write (a 16-channel CIFAR ResNet-56 conv
    at batch 32, one thread, AMD EPYC with AVX2: share 0.54 and 0.66 in the first two
    runs, 0.79-0.84 after; a share taken over the first runs made such convs' tables
    ~25% too fast against their 8-channel prunings). Measured on 6 randomly pruned
    models each of resnet18/50, mobilenet_v2, efficientnet_b0 and CIFAR ResNet-56 at
    1 and 2 threads (an Intel Xeon with AVX-512, 2 cores; ``python
    benchmarks/latency.py --check-model 6``): the mean absolute error of the
    predicted fraction of latency removed was 0.019 without the conversions against
    0.034 with them (worst 0.069 against 0.091). At one thread tables with them were
    a little closer on four of the five models (mean absolute error lower by 0.002 to
    0.014) and far off on mobilenet_v2 (0.061 against 0.019); at two threads they
    were further on all five, under-predicting the removal by 2.7 to 6.5 points on
    average (those shares were still taken over the first runs). On an AMD EPYC with
    AVX2 only (multiples of 8, shares after warm-ups; ``--check-model 6 --tag avx2``):
    0.026 without against 0.033 with (worst 0.114, efficientnet_b0 at one thread,
    against 0.099); with them closer at one thread on mobilenet_v2 and
    efficientnet_b0 (0.021 and 0.022 against 0.042 and 0.068), further at two threads
    on four of the five.

    Args:
        threads: Intra-op threads of every session.
        provider: ``"cpu"`` or ``"cuda"``.
        warmup: Untimed runs before timing.
        samples: Timed samples; their minimum is returned (see :func:`time_call`).
        min_sample_s: Minimum duration of one sample.
        exclude_reorders: Leave the layout conversions out (CPU only; see above).
        profile_s: Minimum duration of the profiled runs that measure their share
            (after ``max(warmup, 2)`` warm-up runs, which the share leaves out).
    """

    def __init__(self, threads: int, provider: str = "cpu", *, warmup: int = 2, samples: int = 5,
                 min_sample_s: float = 2e-3, exclude_reorders: bool = True, profile_s: float = 0.01):
        self.threads, self.provider = threads, provider
        self.warmup, self.samples, self.min_sample_s = warmup, samples, min_sample_s
        self.exclude_reorders = exclude_reorders
        self.profile_s = profile_s
        self._dir = tempfile.TemporaryDirectory(prefix="attnprune-latency-")

    def _bound(self, model, path: Path, spec: LayerSpec, profile: bool):
        session = onnx_session(path, self.provider, self.threads,
                               profile_prefix=Path(self._dir.name) / "trace" if profile else None)
        shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
        x = np.random.default_rng(1).standard_normal(shape).astype(spec.dtype)
        import onnxruntime as ort

        # Bound input and a preallocated output: no per-run allocation or copy to numpy,
        # which a layer inside a whole model does not pay either.
        binding = session.io_binding()
        binding.bind_cpu_input("X", x)
        y_shape = [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
        binding.bind_ortvalue_output("Y", ort.OrtValue.ortvalue_from_shape_and_type(y_shape, x.dtype))
        return session, lambda: session.run_with_iobinding(binding)

    def _share(self, model, path: Path, spec: LayerSpec) -> float:
        session, run = self._bound(model, path, spec, profile=True)
        warmup = max(self.warmup, 2)
        for _ in range(warmup):
            run()
        start, n = time.perf_counter(), 0
        while n < 3 or time.perf_counter() - start < self.profile_s:
            run()
            n += 1
        trace_path = Path(session.end_profiling())
        try:
            trace = json.loads(trace_path.read_text())
        finally:
            trace_path.unlink(missing_ok=True)
        return kernel_share(trace, skip_runs=warmup)

    def measure(self, spec: LayerSpec, k_out: int, k_in: int, *, share: bool = True) -> tuple[float, float]:
        """Seconds per run of the one-node model, and the share of its kernel time outside the reorders.

        The share is 1 without ``share`` (nothing profiled) and for ``provider="cuda"``.
        """
        model = one_node_model(spec, k_out, k_in)
        path = Path(self._dir.name) / "layer.onnx"
        path.write_bytes(model.SerializeToString())
        _, run = self._bound(model, path, spec, profile=False)
        seconds = time_call(run, warmup=self.warmup, samples=self.samples, min_sample_s=self.min_sample_s)
        return seconds, (self._share(model, path, spec) if share and self.provider == "cpu" else 1.0)

    def __call__(self, spec: LayerSpec, k_out: int, k_in: int) -> float:
        seconds, share = self.measure(spec, k_out, k_in, share=self.exclude_reorders)
        return seconds * share

    def close(self) -> None:
        """Remove the temporary folder."""
        self._dir.cleanup()


def hook_free_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` without forward (pre-)hooks (the gates of an instrumented model)."""
    memo = {}
    for m in model.modules():
        for d in (m._forward_hooks, m._forward_pre_hooks):
            for h in d.values():
                memo[id(h)] = h  # shared, not copied: the copy drops them below
    clone = copy.deepcopy(model, memo)
    for m in clone.modules():
        for d in (m._forward_hooks, m._forward_pre_hooks, m._forward_hooks_with_kwargs,
                  m._forward_hooks_always_called, m._forward_pre_hooks_with_kwargs):
            d.clear()
    return clone


def at_batch(args: tuple, batch: int) -> tuple:
    """``args`` with ``batch`` rows (tensors' rows cycled)."""
    return tuple(t[torch.arange(batch) % t.shape[0]] if isinstance(t, torch.Tensor) else t for t in args)


class DenseTimer:
    """The dense model through :func:`export_onnx` and :func:`onnx_session`, sampled in turns.

    Samples are taken between the tables, so the dense latency and the tables see the
    same machine (its load drifts on a shared machine); the fastest is the result, as
    for the tables (:func:`~attnprune.deploy.latency_table.time_call`).
    """

    def __init__(self, model: nn.Module, args: tuple, batch: int, threads: int, provider: str):
        inputs = at_batch(args, batch)
        clone = hook_free_copy(model)
        self._tmp = tempfile.TemporaryDirectory(prefix="attnprune-latency-")
        path = Path(self._tmp.name) / "dense.onnx"
        try:  # the TorchScript exporter (opset 17) is ~7x faster than dynamo on ResNet-50
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                export_onnx(clone, inputs, path, dynamic_batch=False, check=False, opset=_DENSE_OPSET)
        except Exception:  # noqa: BLE001 - then the default exporter
            export_onnx(clone, inputs, path, dynamic_batch=False, check=False)
        self._session = onnx_session(path, provider, threads)
        self._path, self._provider, self._threads = path, provider, threads
        names = [i.name for i in self._session.get_inputs()]
        self._feed = {n: t.detach().cpu().numpy() for n, t in zip(names, inputs)}
        self.samples: list[float] = []
        for _ in range(3):  # warm-up
            self._run()

    def _run(self):
        return self._session.run(None, self._feed)

    def sample(self) -> None:
        """Take one sample (the fastest of three runs)."""
        self.samples.append(time_call(self._run, warmup=0, samples=3, min_sample_s=0.0))

    def profile(self, runs: int = 20, warmup: int = 3) -> dict[str, float] | None:
        """How the dense run's kernel time divides (:func:`dense_split`), from ``runs`` profiled runs after ``warmup``.

        Call it before :meth:`result`, which removes the exported file.
        """
        session = onnx_session(self._path, self._provider, self._threads,
                               profile_prefix=Path(self._tmp.name) / "trace")
        for _ in range(warmup + runs):
            session.run(None, self._feed)
        trace_path = Path(session.end_profiling())
        try:
            return dense_split(json.loads(trace_path.read_text()), skip_runs=warmup)
        finally:
            trace_path.unlink(missing_ok=True)

    def result(self, at_least: int = 7) -> float:
        """Fastest sample (topped up to ``at_least`` samples); removes the exported file."""
        while len(self.samples) < at_least:
            self.sample()
        self._tmp.cleanup()
        return float(np.min(self.samples))
