"""``target="latency"``: the budget search on a latency model, PAAM's latency weights, the report.

Fake timers make the search exact and fast; one slow test measures for real.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import attnprune
from attnprune.core.budget import select_channels
from attnprune.core.cost import CountCost
from attnprune.deploy import latency_model as latency_module
from attnprune.deploy.latency_model import LatencyModel, build_latency_model
from attnprune.methods import Budget, Context, get_method, make_config

from _util import assert_unchanged, fake_latency_build as fake_build, snapshot


def macs_timer(spec, k_out: int, k_in: int) -> float:
    """MACs per batch of a conv/linear at the kept counts (what the analytic counter counts)."""
    if spec.kind == "linear":
        return float(k_out * k_in * math.prod(spec.out_size) * spec.batch)
    groups = k_out if spec.depthwise else spec.groups
    k_in = k_out if spec.depthwise else k_in
    return float(k_out * (k_in // groups) * math.prod(spec.kernel) * spec.batch * math.prod(spec.out_size))


def channels_timer(spec, k_out: int, k_in: int) -> float:
    """A latency unlike MACs: proportional to k_out * k_in, whatever the spatial size."""
    return 1e-6 * k_out * k_in


class PlainNet(nn.Module):
    """Convs and a linear head only (no norm, no pooling): its MACs are all in conv/linear layers."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 24, 3, padding=1)
        self.c2 = nn.Conv2d(24, 32, 3, stride=2, padding=1)
        self.c3 = nn.Conv2d(32, 48, 3, stride=2, padding=1)
        self.head = nn.Linear(48 * 4 * 4, 10)

    def forward(self, x):
        x = torch.relu(self.c1(x))
        x = torch.relu(self.c2(x))
        x = torch.relu(self.c3(x))
        return self.head(x.flatten(1))


def tiny_data(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(torch.randn(n, 1, 16, 16, generator=g), torch.randint(0, 10, (n,), generator=g)),
                      batch_size=16)


@pytest.fixture
def inst():
    torch.manual_seed(0)
    i = attnprune.instrument(PlainNet().eval(), torch.randn(1, 1, 16, 16))
    yield i
    i.remove()


def random_scores(inst, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(grp.n_channels, generator=g) for grp in inst.groups]


@pytest.mark.parametrize("round_to", [None, 8])
@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.7])
def test_latency_search_with_a_macs_timer_equals_the_macs_search(inst, ratio, round_to):
    lm = build_latency_model(inst, threads=1, multiple=round_to or 1, cache_dir=False, timer=macs_timer)
    assert lm.dense == pytest.approx(inst.cost.dense("macs"), rel=1e-12)  # the fake timer is the count
    for seed in range(3):
        scores = random_scores(inst, seed)
        want = select_channels(inst.cost, scores, ratio, "macs", round_to=round_to)
        got = select_channels(inst.cost, scores, ratio, "latency", round_to=round_to, target_cost=lm)
        assert all(torch.equal(a, b) for a, b in zip(got.masks, want.masks))
        assert got.ratio == pytest.approx(want.ratio, abs=1e-12)
        assert (got.params, got.macs) == (want.params, want.macs)


def test_latency_search_follows_the_latency_model_not_the_macs(inst):
    lm = build_latency_model(inst, threads=1, cache_dir=False, timer=channels_timer)
    inst.cost.set_target_cost("latency", lm)
    scores = random_scores(inst, 0)
    got = select_channels(inst.cost, scores, 0.5, "latency")  # the attached model
    assert abs(lm.removed_fraction(got.masks) - 0.5) <= 0.01
    assert got.ratio == pytest.approx(lm.removed_fraction(got.masks))
    macs = select_channels(inst.cost, scores, 0.5, "macs")
    assert any(not torch.equal(a, b) for a, b in zip(got.masks, macs.masks))
    assert inst.cost.removed(got.masks, "latency") == pytest.approx(got.ratio)
    assert inst.cost.dense("latency") == lm.dense


def test_latency_without_a_latency_model_raises(inst):
    with pytest.raises(ValueError, match="no latency model attached.*set_target_cost"):
        select_channels(inst.cost, random_scores(inst, 0), 0.5, "latency")
    with pytest.raises(ValueError, match="no latency model attached"):
        inst.cost.channel_costs("latency")
    with pytest.raises(ValueError, match="not a count"):
        inst.cost.of((1, 2), "latency")
    with pytest.raises(TypeError, match="removed_fraction"):
        inst.cost.set_target_cost("latency", object())
    with pytest.raises(ValueError, match="counted by the cost model"):
        inst.cost.set_target_cost("macs", build_latency_model(inst, threads=1, cache_dir=False, timer=macs_timer))


@pytest.fixture
def no_counted_channel_costs(monkeypatch):
    """Fail any use of params/MACs channel costs: a latency run must not fall back on them."""
    def refuse(self):
        raise AssertionError(f"channel costs of {self.target} used for a latency target")
    monkeypatch.setattr(CountCost, "channel_costs", refuse)


def test_paam_weights_are_the_latency_channel_costs(inst, no_counted_channel_costs):
    lm = build_latency_model(inst, threads=1, cache_dir=False, timer=channels_timer)
    inst.cost.set_target_cost("latency", lm)
    cls = get_method("paam")
    algo = cls(make_config(cls, {}))
    algo.attach(inst, Budget(0.5, "latency"), Context())
    try:
        costs = lm.channel_costs()
        mean = torch.cat(costs).mean()
        for w, c in zip(algo.weights, costs):
            assert torch.allclose(w, c / mean)
        macs = inst.cost.channel_costs("macs")  # what a fallback would have used (unpatched formula)
        macs_mean = torch.cat(macs).mean()
        assert not all(torch.allclose(w, m / macs_mean) for w, m in zip(algo.weights, macs))
    finally:
        algo.detach()


@pytest.mark.parametrize("method", ["paam", "l1"])
def test_prune_latency_target_budgets_with_the_latency_model(monkeypatch, method, no_counted_channel_costs):
    built = fake_build(monkeypatch, channels_timer)
    torch.manual_seed(0)
    model = PlainNet()
    snap = snapshot(model)
    res = attnprune.prune(model, tiny_data(), 0.5, method=method, target="latency", round_to=1,
                          latency_threads=1, warmup_epochs=0, finetune_epochs=0, progress=False, seed=0)
    assert_unchanged(model, snap)  # measuring the dense model left it alone
    json.dumps(res.report.to_dict())
    assert len(built) == 1  # once per run
    lm, kwargs = built[0]
    assert kwargs == {"batch": 1, "threads": 1, "provider": "cpu", "multiple": 1}
    r = res.report
    assert r.target == "latency"
    assert r.ratio_achieved == pytest.approx(lm.removed_fraction(res.masks))
    assert abs(r.ratio_achieved - 0.5) <= 0.01
    lat = r.latency
    assert lat["batch"] == 1 and lat["threads"] == 1 and lat["provider"] == "cpu"
    assert lat["predicted_removed"] == pytest.approx(r.ratio_achieved)
    assert lat["measured_dense_ms"] > 0 and lat["measured_pruned_ms"] > 0  # really measured (ORT)
    assert lat["measured_removed"] == pytest.approx(1 - lat["measured_pruned_ms"] / lat["measured_dense_ms"])
    assert "latency (batch 1, 1 threads)" in r.summary()


def test_a_model_with_its_own_hooks_is_measured_and_keeps_them(monkeypatch):
    """The user's forward hooks do not reach ONNX: the measurement times hook-free copies, the model keeps its hooks."""
    fake_build(monkeypatch, channels_timer)
    model = PlainNet()
    seen = []
    model.register_forward_hook(lambda mod, args, out: seen.append(out.shape[0]))
    res = attnprune.prune(model, tiny_data(), 0.3, method="l1", target="latency", round_to=1, latency_threads=1,
                          trained=True, finetune_epochs=0, progress=False, seed=0)
    assert res.report.latency["measured_pruned_ms"] > 0
    assert len(model._forward_hooks) == 1 and len(res.model._forward_hooks) == 1  # the user's hook, on both
    n = len(seen)
    res.model(torch.randn(2, *tiny_data().dataset.tensors[0].shape[1:]))
    assert seen[n:] == [2]  # the pruned model's copy of the hook still runs


def test_latency_batch_reaches_the_latency_model(monkeypatch):
    built = fake_build(monkeypatch, macs_timer)
    res = attnprune.prune(PlainNet(), tiny_data(), 0.3, method="l1", target="latency", latency_batch=4,
                          latency_threads=1, round_to=8, trained=True, finetune_epochs=0, progress=False)
    assert built[0][1]["batch"] == 4 and built[0][1]["multiple"] == 8
    assert built[0][0].batch == 4 and res.report.latency["batch"] == 4


def test_unstructured_method_refuses_a_latency_target_before_training(monkeypatch):
    built = fake_build(monkeypatch, macs_timer)
    with pytest.raises(ValueError, match="'aswl' is unstructured.*cannot serve target='latency'.*aswl-structured"):
        attnprune.prune(PlainNet(), tiny_data(), 0.5, method="aswl", target="latency", progress=False)
    assert built == []


def test_latency_model_dedupe_uses_the_shared_helpers():
    assert not hasattr(latency_module, "_check_int") and not hasattr(latency_module, "_usable_cpus")
    assert isinstance(LatencyModel, type)


def heavy_net() -> nn.Sequential:
    """Three 3x3 convs at 64x64 from a 128x128 input (~0.9 GMACs): about 9 ms per batch of one, one thread."""
    return nn.Sequential(
        nn.Conv2d(3, 64, 3, stride=2, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.Conv2d(64, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU(),
        nn.Conv2d(128, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10),
    )


@pytest.mark.slow
def test_latency_target_meets_its_ratio_by_real_measurement(tmp_path, monkeypatch):
    """A net of >= 5 ms per batch, batch 1, one thread: the measured reduction meets the ratio."""
    monkeypatch.setenv("ATTNPRUNE_CACHE", str(tmp_path))
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    data = DataLoader(TensorDataset(torch.randn(4, 3, 128, 128, generator=g), torch.randint(0, 10, (4,), generator=g)),
                      batch_size=2)
    # three groups in multiples of 16 are too coarse a grid for +-2 points: multiples of 8
    res = attnprune.prune(heavy_net(), data, 0.5, method="l1", target="latency", trained=True, round_to=8,
                          finetune_epochs=0, latency_threads=1, progress=False)
    lat = res.report.latency
    assert lat["measured_dense_ms"] >= 5.0
    assert abs(lat["predicted_removed"] - 0.5) <= 0.02
    assert abs(lat["measured_removed"] - 0.5) <= 0.12  # a shared machine: loose
    assert abs(lat["measured_removed"] - lat["predicted_removed"]) <= 0.12
    assert list(tmp_path.glob("latency/latency-*.json"))  # the latency model was cached
