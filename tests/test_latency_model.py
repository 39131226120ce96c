"""The latency model: tables, prediction, cache (fake timers), and one real-ORT check."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import attnprune
from attnprune.deploy import latency_cache
from attnprune.deploy.latency_model import LatencyModel, build_latency_model
from attnprune.deploy.latency_table import (
    REORDER_OPS,
    DenseTimer,
    OrtTimer,
    dense_split,
    grid_points,
    kernel_share,
    layer_specs,
)
from attnprune.models import build_model

_LAYERS = (nn.modules.conv._ConvNd, nn.Linear)


class ToyNet(nn.Module):
    """Plain, depthwise, grouped and strided convs, a residual add and a linear head."""

    def __init__(self, width: int = 16):
        super().__init__()
        w = width
        self.stem = nn.Sequential(nn.Conv2d(3, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(w, w, 3, padding=1, groups=w, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        self.pw = nn.Sequential(nn.Conv2d(w, 2 * w, 1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU())
        self.grouped = nn.Sequential(nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1, groups=4), nn.BatchNorm2d(2 * w))
        self.down = nn.Sequential(nn.Conv2d(2 * w, 2 * w, 1, stride=2, bias=False), nn.BatchNorm2d(2 * w))
        self.head = nn.Linear(2 * w, 10)

    def forward(self, x):
        x = self.pw(self.dw(self.stem(x)))
        x = torch.relu(self.grouped(x) + self.down(x))
        return self.head(x.mean((2, 3)))


class ConcatFlattenNet(nn.Module):
    """Two branches concatenated into one conv, then flattened into a linear layer.

    The linear layer's input features repeat each channel 16 times (a span whose
    root indices repeat), the merging conv's input spans two groups.
    """

    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU())
        self.merge = nn.Sequential(nn.Conv2d(20, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.head = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x):
        x = self.merge(torch.cat([self.a(x), self.b(x)], 1))
        return self.head(x.flatten(1))


def macs_timer(spec, k_out: int, k_in: int) -> float:
    """MACs per batch of ``spec`` at the kept counts: bilinear in (k_out, k_in)."""
    if spec.kind == "linear":
        return float(k_out * k_in * math.prod(spec.out_size) * spec.batch)
    groups = k_out if spec.depthwise else spec.groups
    if spec.depthwise:
        k_in = k_out
    per_out = math.prod(spec.kernel) * spec.batch
    if spec.kind == "conv_transpose":
        return float(k_in * (k_out // groups) * per_out * math.prod(spec.in_size))
    return float(k_out * (k_in // groups) * per_out * math.prod(spec.out_size))


class CountingTimer:
    def __init__(self):
        self.calls = []

    def __call__(self, spec, k_out, k_in):
        self.calls.append((spec, k_out, k_in))
        return macs_timer(spec, k_out, k_in)


def analytic_macs(inst, masks, batch: int) -> float:
    """MACs of the conv/linear layers from the project's analytic counter."""
    closed = [~m for m in masks]
    total = 0
    for lc in inst.cost.layers:
        if isinstance(lc.module, _LAYERS):
            total += lc.count(*lc.kept(closed))[1]
    return float(total * batch)


def random_masks(inst, gen: torch.Generator) -> list[torch.Tensor]:
    masks = []
    for g in inst.groups:
        unit = g.n_channels // g.ch_groups
        keep = int(torch.randint(1, unit + 1, (1,), generator=gen))
        pattern = torch.zeros(unit, dtype=torch.bool)
        pattern[torch.randperm(unit, generator=gen)[:keep]] = True
        masks.append(pattern.repeat(g.ch_groups))
    return masks


def _toy(width: int = 16, size: int = 16):
    return attnprune.instrument(ToyNet(width).eval(), torch.randn(2, 3, size, size))


def _resnet20():
    return attnprune.instrument(build_model("resnet20", num_classes=10).eval(), torch.randn(2, 3, 32, 32))


@pytest.fixture(scope="module")
def toy():
    inst = _toy()
    yield inst
    inst.remove()


@pytest.fixture(scope="module")
def concat():
    inst = attnprune.instrument(ConcatFlattenNet().eval(), torch.randn(2, 3, 8, 8))
    yield inst
    inst.remove()


@pytest.fixture(scope="module")
def resnet20():
    inst = _resnet20()
    yield inst
    inst.remove()


# --------------------------------------------------------------------------- #
# Prediction is exact against a bilinear fake timer
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("multiple", [1, 8])
@pytest.mark.parametrize("which", ["toy", "concat", "resnet20"])
def test_predict_equals_analytic_macs(request, which, multiple):
    inst = request.getfixturevalue(which)
    lm = build_latency_model(inst, batch=3, threads=1, multiple=multiple, cache_dir=False, timer=macs_timer)
    assert isinstance(lm, LatencyModel)
    dense = [torch.ones(g.n_channels, dtype=torch.bool) for g in inst.groups]
    assert lm.dense == pytest.approx(analytic_macs(inst, dense, 3), rel=1e-12)
    assert lm.residual == 0.0
    gen = torch.Generator().manual_seed(multiple)
    seen = set()
    for _ in range(8):
        masks = random_masks(inst, gen)
        got = lm.predict(masks)
        assert got == pytest.approx(analytic_macs(inst, masks, 3), rel=1e-9)
        seen.add(round(got))
        assert sum(lm.breakdown(masks).values()) == pytest.approx(got, rel=1e-12)
        assert lm.removed_fraction(masks) == pytest.approx(1 - got / lm.dense)
    assert len(seen) > 1  # the masks really differed


def _kept_activations(lm, masks) -> tuple[float, float]:
    """Kept and dense activations: k_out * out_size + k_in * in_size over the layer calls."""
    k_out, k_in = lm.kept(masks)
    act = dense_act = 0.0
    for ti, ko, ki in zip(lm.entries, k_out, k_in):
        spec = lm.tables[ti]["spec"]
        so, si = math.prod(spec.out_size), math.prod(spec.in_size)
        act += ko * so + ki * si
        dense_act += spec.c_out * so + spec.c_in * si
    return act, dense_act


@pytest.mark.parametrize("scaling", ["layers", "activations", "constant"])
def test_residual_scaling(concat, scaling):
    """With a known dense latency, the residual follows the chosen scaling exactly."""
    plain = build_latency_model(concat, threads=1, cache_dir=False, timer=macs_timer)
    dense_layers = plain.dense
    lm = build_latency_model(concat, threads=1, cache_dir=False, timer=macs_timer, dense_latency=2 * dense_layers,
                             scaling=scaling)
    assert lm.dense == 2 * dense_layers and lm.residual == pytest.approx(dense_layers)
    masks = random_masks(concat, torch.Generator().manual_seed(5))
    layers = plain.predict(masks)
    if scaling == "layers":
        expected = 2 * layers
    elif scaling == "constant":
        expected = layers + dense_layers
    else:
        act, dense_act = _kept_activations(lm, masks)
        expected = layers + dense_layers * act / dense_act
    assert lm.predict(masks) == pytest.approx(expected, rel=1e-9)
    assert sum(lm.breakdown(masks).values()) == pytest.approx(expected, rel=1e-9)


def test_profiled_scaling_splits_the_dense_run(concat, tmp_path):
    """Each part of the profiled dense run scales its own way: with the layer tables, with the kept activations."""
    plain = build_latency_model(concat, threads=1, cache_dir=False, timer=macs_timer)
    split = {"layers": 0.7, "activations": 0.3}
    dense = 3 * plain.dense
    lm = build_latency_model(concat, threads=1, cache_dir=tmp_path, timer=macs_timer, dense_latency=dense,
                             dense_split=split)
    assert lm.scaling == "profiled" and lm.split == split
    for seed in range(3):
        masks = random_masks(concat, torch.Generator().manual_seed(seed))
        act, dense_act = _kept_activations(lm, masks)
        expected = dense * (0.7 * plain.predict(masks) / plain.dense + 0.3 * act / dense_act)
        assert lm.predict(masks) == pytest.approx(expected, rel=1e-9)
        assert sum(lm.breakdown(masks).values()) == pytest.approx(expected, rel=1e-9)
    full = [torch.ones(g.n_channels, dtype=torch.bool) for g in concat.groups]
    assert lm.predict(full) == pytest.approx(dense, rel=1e-12)
    again = build_latency_model(concat, threads=1, cache_dir=tmp_path, timer=macs_timer, dense_latency=dense,
                                dense_split=split)
    assert again.from_cache and again.split == split  # the split travels through the cache
    no_split = build_latency_model(concat, threads=1, cache_dir=False, timer=macs_timer, dense_latency=dense)
    layers = build_latency_model(concat, threads=1, cache_dir=False, timer=macs_timer, dense_latency=dense,
                                 scaling="layers")
    assert no_split.split is None and no_split.predict(masks) == layers.predict(masks)  # unprofiled: "layers"


def _run(ts: float, kernels: list[tuple[str, float]], outside: float) -> list[dict]:
    events = [{"cat": "Session", "name": "model_run", "ts": ts, "dur": sum(d for _, d in kernels) + outside}]
    for i, (op, d) in enumerate(kernels):
        events.append({**_kernel(op, d), "ts": ts + 1 + i})
    return events


def test_dense_split_divides_the_kernel_time_into_layers_and_activations():
    steady = [("ReorderInput", 5), ("Conv", 50), ("QuickGelu", 15), ("Gemm", 10), ("GlobalAveragePool", 5)]
    trace = _run(0, [("Conv", 500)], 100) + _run(1000, steady, 15) + _run(2000, steady, 15)
    assert dense_split(trace, skip_runs=1) == pytest.approx({"layers": 60 / 85, "activations": 25 / 85})
    assert dense_split(trace, skip_runs=3) is None  # no run left
    assert dense_split([]) is None


def test_predict_accepts_numpy_masks_and_checks_them(toy):
    lm = build_latency_model(toy, threads=1, cache_dir=False, timer=macs_timer)
    masks = random_masks(toy, torch.Generator().manual_seed(0))
    assert lm.predict([m.numpy() for m in masks]) == lm.predict(masks)
    with pytest.raises(ValueError, match="one bool keep-mask per group"):
        lm.predict(masks[:-1])
    with pytest.raises(ValueError, match="shape"):
        lm.predict([torch.ones(3, dtype=torch.bool)] + masks[1:])


def test_channel_costs_rank_expensive_groups_higher(toy):
    lm = build_latency_model(toy, threads=1, cache_dir=False, timer=macs_timer)
    costs = lm.channel_costs()
    assert [c.shape for c in costs] == [(g.n_channels,) for g in toy.groups]
    macs = toy.cost.channel_costs("macs")
    # with a MACs timer, the saved latency of a channel is its saved conv/linear MACs
    ours = [float(c[0]) for c in costs]
    assert all(v > 0 for v in ours)
    order = sorted(range(len(ours)), key=ours.__getitem__)
    assert order == sorted(range(len(ours)), key=lambda i: float(macs[i][0]))


# --------------------------------------------------------------------------- #
# Grids and measurement
# --------------------------------------------------------------------------- #
def test_grid_points_unit():
    assert grid_points(64, 16, 5) == (16, 32, 48, 64)
    assert grid_points(10, 16, 5) == (1, 10)  # no multiple below 10: its ends
    assert grid_points(12, 16, 5, unit=4) == (4, 12)
    assert grid_points(1, 16, 5) == (1,)
    pts = grid_points(512, 16, 5)
    assert len(pts) == 5 and pts[0] == 16 and pts[-1] == 512
    assert all(p % 16 == 0 for p in pts)
    assert grid_points(100, 8, 6)[-1] == 100 and all(p % 8 == 0 for p in grid_points(100, 8, 6)[:-1])
    assert all(p % 24 == 0 for p in grid_points(96, 8, 5, unit=3))


@pytest.mark.parametrize("multiple", [4, 8])
def test_table_grids_lie_on_the_rounding_grid(resnet20, multiple):
    timer = CountingTimer()
    lm = build_latency_model(resnet20, threads=1, multiple=multiple, cache_dir=False, timer=timer, points=4)
    for t in lm.tables:
        spec = t["spec"]
        for grid, c in ((t["grid_out"], spec.c_out), (t["grid_in"], spec.c_in)):
            assert grid[-1] == c and 1 <= len(grid) <= 4
            assert list(grid) == sorted(set(grid))
            assert all(p % multiple == 0 for p in grid[:-1]) or (len(grid) == 2 and c <= multiple)
    # the image input (3 channels) is not prunable: one point
    assert any(t["grid_in"] == (3,) for t in lm.tables)
    # each distinct (configuration, k_out, k_in) is timed once
    assert len(timer.calls) == len(set(timer.calls))
    assert len(lm.tables) < len(lm.entries)  # repeated blocks share a table
    assert all(spec.batch == 1 for spec, _, _ in timer.calls)


def test_depthwise_table_has_one_dimension(toy):
    timer = CountingTimer()
    lm = build_latency_model(toy, threads=1, multiple=4, cache_dir=False, timer=timer)
    dw = [t for t in lm.tables if t["spec"].depthwise]
    assert len(dw) == 1 and len(dw[0]["grid_in"]) == 1 and len(dw[0]["grid_out"]) > 1
    assert all(k_out == k_in for spec, k_out, k_in in timer.calls if spec.depthwise)


def test_cost_model_needs_model_and_inputs(toy):
    with pytest.raises(ValueError, match="model= and example_inputs="):
        build_latency_model(toy.cost, threads=1, cache_dir=False, timer=macs_timer)
    lm = build_latency_model(toy.cost, model=toy.model, example_inputs=toy.example_inputs, threads=1,
                             cache_dir=False, timer=macs_timer)
    dense = [torch.ones(g.n_channels, dtype=torch.bool) for g in toy.groups]
    assert lm.predict(dense) == pytest.approx(analytic_macs(toy, dense, 1))
    with pytest.raises(TypeError, match="inst_or_cost"):
        build_latency_model(toy.model, threads=1, cache_dir=False, timer=macs_timer)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"batch": 0}, "batch"),
        ({"threads": 0}, "threads"),
        ({"provider": "tpu"}, "provider"),
        ({"multiple": 0}, "multiple"),
        ({"points": 1}, "points"),
        ({"scaling": "linear"}, "scaling"),
        ({"dense_latency": -1.0}, "dense_latency"),
        ({"dense_split": {"layers": 1.0, "activations": 0.0}}, "dense_split"),  # no dense_latency
        ({"dense_latency": 1.0, "dense_split": {"layers": 0.5, "activations": 0.1}}, "dense_split"),
        ({"dense_latency": 1.0, "dense_split": {"layers": 1.0}}, "dense_split"),
    ],
)
def test_bad_arguments_name_themselves(toy, kwargs, name):
    with pytest.raises(ValueError, match=name):
        build_latency_model(toy, cache_dir=False, timer=macs_timer, **kwargs)


def test_timer_returning_garbage_is_refused(toy):
    with pytest.raises(ValueError, match="timer returned"):
        build_latency_model(toy, threads=1, cache_dir=False, timer=lambda s, o, i: float("nan"))


# --------------------------------------------------------------------------- #
# Cache
# --------------------------------------------------------------------------- #
def test_cache_is_reused(toy, tmp_path):
    first = CountingTimer()
    a = build_latency_model(toy, threads=1, multiple=4, cache_dir=tmp_path, timer=first)
    assert first.calls and not a.from_cache
    assert len(list(tmp_path.glob("latency-*.json"))) == 1
    second = CountingTimer()
    b = build_latency_model(toy, threads=1, multiple=4, cache_dir=tmp_path, timer=second)
    assert second.calls == [] and b.from_cache
    masks = random_masks(toy, torch.Generator().manual_seed(3))
    assert b.predict(masks) == a.predict(masks) and b.dense == a.dense


def test_default_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("ATTNPRUNE_CACHE", str(tmp_path))
    assert latency_cache.default_cache_dir() == tmp_path / "latency"


_CHANGES = {
    "threads": ({"threads": 2}, None),
    "batch": ({"batch": 2}, None),
    "multiple": ({"multiple": 8}, None),
    "provider": ({"provider": "cuda"}, None),
    "dense_latency": ({"dense_latency": 0.5}, None),
    "points": ({"points": 3}, None),
}


@pytest.mark.parametrize("change", list(_CHANGES) + ["input shape", "structure", "ort version", "cpu flags", "timer"])
def test_cache_is_refused_when_its_key_differs(toy, tmp_path, monkeypatch, change):
    base = {"threads": 1, "multiple": 4, "cache_dir": tmp_path}
    build_latency_model(toy, timer=CountingTimer(), **base)
    inst, kwargs, timer = toy, dict(base), CountingTimer()
    other = None
    if change in _CHANGES:
        kwargs.update(_CHANGES[change][0])
    elif change == "input shape":
        inst = other = _toy(size=20)
    elif change == "structure":
        inst = other = _toy(width=24)
    elif change == "ort version":
        import onnxruntime

        monkeypatch.setattr(onnxruntime, "__version__", "0.0.1")
    elif change == "cpu flags":
        real = latency_cache.machine_identity()
        monkeypatch.setattr(latency_cache, "machine_identity", lambda: {**real, "cpu_flags": ["sse2"]})
    elif change == "timer":
        def other_timer(spec, k_out, k_in):
            timer.calls.append((spec, k_out, k_in))
            return macs_timer(spec, k_out, k_in)

        kwargs["timer"] = other_timer
    try:
        lm = build_latency_model(inst, **{"timer": timer, **kwargs})
    finally:
        if other is not None:
            other.remove()
    assert timer.calls and not lm.from_cache
    assert len(list(tmp_path.glob("latency-*.json"))) == 2


@pytest.mark.parametrize(
    "damage",
    [
        lambda text: text[: len(text) // 2],  # truncated
        lambda text: "not json",
        lambda text: text.replace('"seconds": [[[', '"seconds": [[[-'),
        lambda text: json.dumps({**json.loads(text), "dense": "fast"}),
        lambda text: json.dumps({**json.loads(text), "key": {"format": 1}}),
    ],
    ids=["truncated", "garbage", "negative", "bad-dense", "other-key"],
)
def test_corrupted_cache_is_rebuilt_with_a_warning(toy, tmp_path, damage):
    a = build_latency_model(toy, threads=1, multiple=4, cache_dir=tmp_path, timer=CountingTimer())
    (path,) = tmp_path.glob("latency-*.json")
    path.write_text(damage(path.read_text()))
    timer = CountingTimer()
    with pytest.warns(UserWarning, match="corrupted latency cache"):
        b = build_latency_model(toy, threads=1, multiple=4, cache_dir=tmp_path, timer=timer)
    assert timer.calls and not b.from_cache
    assert b.dense == a.dense
    c = build_latency_model(toy, threads=1, multiple=4, cache_dir=tmp_path, timer=CountingTimer())
    assert c.from_cache  # the rebuild rewrote a good file


def test_predict_is_fast(resnet20):
    import time

    lm = build_latency_model(resnet20, threads=1, multiple=4, cache_dir=False, timer=macs_timer)
    masks = random_masks(resnet20, torch.Generator().manual_seed(0))
    lm.predict(masks)
    start = time.perf_counter()
    for _ in range(50):
        lm.predict(masks)
    assert (time.perf_counter() - start) / 50 < 5e-3  # ~0.1 ms unloaded; loose for a shared machine


# --------------------------------------------------------------------------- #
# Real ONNX Runtime
# --------------------------------------------------------------------------- #
def _kernel(op: str, dur: float) -> dict:
    return {"cat": "Node", "name": f"{op}_node_kernel_time", "dur": dur, "args": {"op_name": op}}


def test_kernel_share_leaves_out_the_layout_conversions():
    trace = [_kernel("ReorderInput", 10), _kernel("Conv", 60), _kernel("ReorderOutput", 30),
             {"cat": "Session", "name": "model_run", "dur": 500},  # not a kernel
             {"cat": "Node", "name": "Conv_node_fence_before", "dur": 7, "args": {"op_name": "Conv"}}]
    assert kernel_share(trace) == pytest.approx(0.6)
    assert kernel_share(trace, excluded=()) == 1.0
    assert kernel_share([]) == 1.0  # nothing profiled: the timing stays whole
    assert set(REORDER_OPS) == {"ReorderInput", "ReorderOutput"}


def _run_trace(ts: float, reorder: float, conv: float) -> list[dict]:
    return [{"cat": "Session", "name": "model_run", "ts": ts, "dur": reorder + conv},
            {**_kernel("ReorderInput", reorder), "ts": ts + 1}, {**_kernel("Conv", conv), "ts": ts + 2}]


def test_kernel_share_leaves_out_the_warm_up_runs():
    # a cold first run (its buffers written for the first time) and two steady ones
    trace = _run_trace(0, 60, 40) + _run_trace(100, 20, 80) + _run_trace(200, 20, 80)
    assert kernel_share(trace) == pytest.approx(200 / 300)
    assert kernel_share(trace, skip_runs=1) == pytest.approx(0.8)
    assert kernel_share(trace, skip_runs=2) == pytest.approx(0.8)
    assert kernel_share(trace, skip_runs=3) == 1.0  # no run left: the timing stays whole


def _conv_spec(channels: int = 32, size: int = 28):
    conv = nn.Conv2d(channels, channels, 3, padding=1)
    return layer_specs(conv, (torch.randn(1, channels, size, size),), [conv], 1)[0][0]


def test_ort_timer_leaves_out_the_reorders_around_a_lone_conv(tmp_path, monkeypatch):
    from attnprune.deploy.machine import vector_extensions

    if "avx2" not in vector_extensions():
        pytest.skip("ONNX Runtime's NCHWc layout (and its reorders) needs AVX2 or better")
    monkeypatch.chdir(tmp_path)
    spec = _conv_spec()
    timer = OrtTimer(1)
    try:
        seconds, share = timer.measure(spec, 32, 32)
        assert seconds > 0 and 0.05 < share < 1  # the blocked conv is wrapped in two reorders
        assert timer.measure(spec, 32, 32, share=False)[1] == 1.0
        assert not list(Path(timer._dir.name).glob("trace*"))  # the profiler's trace is removed
    finally:
        timer.close()
    assert not list(tmp_path.iterdir())  # and nothing lands in the working directory
    from attnprune.deploy import latency_table

    monkeypatch.setattr(latency_table, "time_call", lambda *a, **k: 1e-3)  # a steady clock
    for exclude, expect in ((True, lambda v: 0.05e-3 < v < 1e-3), (False, lambda v: v == 1e-3)):
        timer = OrtTimer(1, exclude_reorders=exclude)
        try:
            assert expect(timer(spec, 32, 32))  # the default drops the reorders' share of a timing
        finally:
            timer.close()


@pytest.mark.slow
def test_real_ort_prediction_matches_measured_latency(tmp_path):
    import copy

    from attnprune.deploy.bench import benchmark

    torch.manual_seed(0)
    base, x = ToyNet(48).eval(), torch.randn(1, 3, 160, 160)  # a few ms per run
    inst = attnprune.instrument(copy.deepcopy(base), x)
    lm = build_latency_model(inst, threads=1, multiple=8, cache_dir=tmp_path, points=4)
    assert inst.active  # the gates stay on the instrumented model
    assert lm.dense > 0 and abs(lm.residual) < lm.dense
    dense_masks = [torch.ones(g.n_channels, dtype=torch.bool) for g in inst.groups]
    half = []
    for g in inst.groups:  # half of each group, a multiple of 8, one pattern per conv group
        unit = g.n_channels // g.ch_groups
        keep = max(8, g.n_channels // 2 // 8 * 8) // g.ch_groups
        half.append((torch.arange(unit) < keep).repeat(g.ch_groups))
    assert lm.predict(half) < lm.predict(dense_masks) == pytest.approx(lm.dense)
    inst.set_masks(half)
    inst.mode = "binary"
    pruned = inst.finalize()
    result = benchmark({"dense": base, "half": pruned}, x, threads=1, rounds=7)
    # Loose: other tenants of a shared machine slow runs by 2x and more; the fastest
    # round is compared, as the model's own timings are fastest samples (time_call).
    fastest = min(result.latency_of("dense", 1)["rounds_ms"]) / 1e3
    assert fastest / 3 < lm.dense < fastest * 3
    # the removed fraction, measured in interleaved rounds, cancels most of the load
    measured = 1 - 1 / result.pair("half", 1)["speedup"]
    assert lm.removed_fraction(half) == pytest.approx(measured, abs=0.2)
    again = build_latency_model(attnprune.instrument(copy.deepcopy(base), x), threads=1, multiple=8,
                                cache_dir=tmp_path, points=4)
    assert again.from_cache and again.dense == lm.dense


def test_dense_timer_profiles_the_whole_model_into_fractions(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.SiLU(), nn.Conv2d(16, 16, 3, padding=1),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4)).eval()
    timer = DenseTimer(model, (torch.randn(1, 3, 32, 32),), 1, 1, "cpu")
    split = timer.profile(runs=5)
    assert timer.result(at_least=2) > 0
    assert split is not None and sum(split.values()) == pytest.approx(1)
    assert split["layers"] > 0 and split["activations"] > 0  # the convs, and the SiLU and pooling
    assert not list(tmp_path.iterdir())  # the trace is removed
