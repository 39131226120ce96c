"""``round_to="auto"``: the multiple comes from the deployment target and the CPU's flags.

The CPU flags are monkeypatched (``attnprune.deploy.machine.cpu_flags``), so nothing
here depends on the machine the tests run on.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import attnprune
from attnprune.cli.parser import build_parser
from attnprune.deploy import machine
from attnprune.deploy.channels import machine_multiple, model_multiple
from attnprune.models import resnet20
from attnprune.train import latency_target

from _util import assert_unchanged, fake_latency_build, snapshot

AVX512 = "fpu sse sse2 sse4_2 avx avx2 fma avx512f avx512bw avx512vl".split()
AVX2 = "fpu sse sse2 sse4_2 avx avx2 fma".split()
FAST = dict(method="l1", trained=True, finetune_epochs=0, progress=False, seed=0)


def tiny_data(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(torch.randn(n, 1, 16, 16, generator=g), torch.randint(0, 10, (n,), generator=g)),
                      batch_size=16)


@pytest.fixture
def flags(monkeypatch):
    def use(f):
        monkeypatch.setattr(machine, "cpu_flags", lambda *a, **k: f)
    return use


def conv_channels(model: nn.Module) -> list[int]:
    """Output channels of every conv but the model's output layer."""
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize("cpu, want", [(AVX512, 16), (AVX2, 8), (["fpu", "sse2"], 4), (None, 4)])
def test_machine_multiple_reads_the_patched_flags(flags, cpu, want):
    flags(cpu)
    got, source = machine_multiple("cpu")
    assert got == want
    assert source["provider"] == "cpu"
    assert source["vector_extensions"] == (None if cpu is None else [f for f in machine.VECTOR_EXTENSIONS
                                                                      if f in cpu])
    assert machine_multiple("cuda")[0] == 8


@pytest.mark.parametrize("cpu, want", [(AVX512, 16), (AVX2, 8)])
def test_auto_is_the_default_and_kept_counts_are_its_multiples(flags, cpu, want):
    flags(cpu)
    torch.manual_seed(0)
    res = attnprune.prune(resnet20(in_channels=1), tiny_data(), 0.4, **FAST)
    r = res.report
    assert r.round_to == want
    assert r.round_to_source["requested"] == "auto" and r.round_to_source["provider"] == "cpu"
    assert ("avx512f" in r.round_to_source["vector_extensions"]) == (want == 16)
    assert abs(r.ratio_achieved - 0.4) <= 0.02
    assert all(g.kept % want == 0 or g.kept == g.total for g in r.groups)
    assert any(g.kept < g.total for g in r.groups)
    assert all(c % want == 0 for c in conv_channels(res.model))  # the pruned model itself


def test_an_explicit_int_wins_and_one_gives_free_counts(flags):
    flags(AVX512)
    torch.manual_seed(0)
    model = resnet20(in_channels=1)
    four = attnprune.prune(model, tiny_data(), 0.4, round_to=4, **FAST).report
    assert four.round_to == 4 and four.round_to_source == {"requested": 4}
    assert all(g.kept % 4 == 0 or g.kept == g.total for g in four.groups)
    assert any(g.kept % 16 for g in four.groups)  # not secretly rounded to the machine's 16
    free = attnprune.prune(model, tiny_data(), 0.4, round_to=1, **FAST).report
    assert free.round_to is None and free.round_to_source == {"requested": 1}
    assert abs(free.ratio_achieved - 0.4) <= 0.01


def test_cuda_provider_picks_eight_whatever_the_cpu(flags):
    flags(AVX512)
    torch.manual_seed(0)
    r = attnprune.prune(resnet20(in_channels=1), tiny_data(), 0.4, provider="cuda", **FAST).report
    assert r.round_to == 8 and r.round_to_source["provider"] == "cuda"


@pytest.mark.parametrize("kwargs, match", [
    ({"round_to": "fast"}, "round_to must be 'auto'.*or a positive int"),
    ({"round_to": 0}, "round_to must be 'auto'"),
    ({"provider": "tpu"}, r"provider must be one of \['cpu', 'cuda'\]"),
    ({"latency_batch": 0}, "latency_batch must be >= 1"),
    ({"latency_threads": 0}, "latency_threads must be >= 1"),
])
def test_bad_rounding_and_latency_arguments_name_themselves(kwargs, match):
    with pytest.raises(ValueError, match=match):
        attnprune.prune(resnet20(in_channels=1), tiny_data(), 0.4, **{**FAST, **kwargs})


def _sixteen_wide() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 16, 3),
                         nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


def test_auto_falls_back_to_free_counts_with_a_warning_when_its_multiple_cannot_reach(flags):
    flags(AVX512)
    net = _sixteen_wide()
    with pytest.warns(UserWarning, match="round_to='auto' chose multiples of 16.*free channel counts"):
        res = attnprune.prune(net, tiny_data(), 0.5, **FAST)
    assert abs(res.report.ratio_achieved - 0.5) <= 0.01
    assert res.report.round_to is None and "free counts" in res.report.round_to_source["fallback"]
    with pytest.raises(attnprune.BudgetError, match="multiples of 16"):  # an explicit multiple is not overridden
        attnprune.prune(net, tiny_data(), 0.5, round_to=16, **FAST)


def _net(width: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10)).eval()


def test_model_multiple_reads_conv_channels():
    assert model_multiple(_net(64)) == 16
    assert model_multiple(_net(24)) == 8
    assert model_multiple(_net(20)) == 4
    assert model_multiple(_net(13)) == 1
    assert model_multiple(nn.Linear(3, 4)) == 1


def _bench(models, **kw):
    return attnprune.benchmark(models, torch.randn(1, 3, 8, 8), rounds=1, warmup=0, runs_per_round=1,
                               threads=1, **kw)


def test_benchmark_warns_when_this_machine_would_choose_another_multiple(flags):
    dense, eights = _net(64), _net(24)
    flags(AVX512)
    with pytest.warns(UserWarning, match=r"multiples of 8 \(round_to=8\).*would choose round_to=16"):
        _bench({"dense": dense, "pruned": eights})
    with pytest.warns(UserWarning, match=r"multiples of 4 \(round_to=4\).*would choose round_to=16"):
        _bench({"dense": dense, "pruned": eights}, channel_multiple=4)  # the report's value wins
    flags(AVX2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _bench({"dense": dense, "pruned": eights})  # what this machine would choose
        _bench({"dense": eights, "pruned": _net(13)})  # free counts, and the dense reference is not read
    with pytest.warns(UserWarning, match=r"multiples of 16 .*would choose round_to=8"):
        _bench({"dense": dense, "pruned": _net(32)})


def test_cli_round_to_defaults_to_auto_and_takes_an_int():
    parser = build_parser()
    base = ["prune", "--out", "x"]
    args = parser.parse_args(base)
    assert args.round_to == "auto" and args.provider == "cpu" and args.latency_batch == 1
    assert args.latency_threads is None
    assert parser.parse_args(base + ["--round-to", "8"]).round_to == 8
    assert parser.parse_args(base + ["--round-to", "AUTO", "--target", "latency"]).target == "latency"
    with pytest.raises(SystemExit):
        parser.parse_args(base + ["--round-to", "fast"])


@pytest.fixture
def timed_grids(monkeypatch):
    """prune()'s latency models built with a fake timer (latency ~ k_out * k_in): ``(model, kwargs)`` per build."""
    return fake_latency_build(monkeypatch, lambda spec, k_out, k_in: 1e-6 * k_out * k_in)


def multiples(built) -> list[int]:
    """The channel multiples the latency models were built at, in order."""
    return [kwargs["multiple"] for _, kwargs in built]


def test_auto_latency_target_falls_back_to_half_the_multiple_timed_again(flags, timed_grids):
    flags(AVX512)
    net = _sixteen_wide()
    snap = snapshot(net)
    with pytest.warns(UserWarning, match="round_to='auto' chose multiples of 16.*using multiples of 8 instead"):
        res = attnprune.prune(net, tiny_data(), 0.5, target="latency", latency_threads=1, **FAST)
    assert_unchanged(net, snap)
    assert multiples(timed_grids) == [16, 8]  # the finer grid is timed, not interpolated from the coarse one
    r = res.report
    assert r.round_to == 8 and "multiples of 8" in r.round_to_source["fallback"]
    assert abs(r.ratio_achieved - 0.5) <= 0.02
    assert r.latency["predicted_removed"] == pytest.approx(r.ratio_achieved)
    assert all(g.kept % 8 == 0 for g in r.groups) and any(g.kept < g.total for g in r.groups)


def test_auto_latency_target_halves_again_until_the_ratio_is_reachable(flags, timed_grids):
    flags(AVX2)  # auto chooses 8; with latency ~ k_out * k_in, at most 0.65 is reachable with multiples of 8
    with pytest.warns(UserWarning, match="chose multiples of 8.*using multiples of 4 instead"):
        res = attnprune.prune(_sixteen_wide(), tiny_data(), 0.8, target="latency", latency_threads=1, **FAST)
    assert multiples(timed_grids) == [8, 4]
    r = res.report
    assert r.round_to == 4 and "unreachable with multiples of 8)" in r.round_to_source["fallback"]
    assert abs(r.ratio_achieved - 0.8) <= 0.02 and all(g.kept % 4 == 0 for g in r.groups)


@pytest.mark.parametrize("cpu, kwargs, match, grids", [
    # min_keep=8 of 16 leaves at most ~3/4 of the fake latency to remove, at any multiple
    (AVX512, {"min_keep": 8}, "multiples of 16, and with multiples of 8, 4, 2, 1 ratio 0.900 of latency cannot be "
                              "reached", [16, 8, 4, 2, 1]),
    (AVX512, {"round_to": 16}, "multiples of 16", [16]),  # an explicit multiple is never changed
])
def test_latency_fallback_refuses_what_it_cannot_reach(flags, timed_grids, cpu, kwargs, match, grids):
    flags(cpu)
    with pytest.raises(attnprune.BudgetError, match=match):
        attnprune.prune(_sixteen_wide(), tiny_data(), 0.9, target="latency", latency_threads=1, **{**FAST, **kwargs})
    assert multiples(timed_grids) == grids


@pytest.mark.parametrize("multiple, finer", [(16, 8), (32, 16), (8, 4), (4, 2), (2, 1), (1, None), (24, 12),
                                             (10, 5), (5, None)])
def test_finer_multiple_halves_down_to_one(multiple, finer):
    assert latency_target.finer_multiple(multiple) == finer
