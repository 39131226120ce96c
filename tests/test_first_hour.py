"""A new user's first hour (API side): frozen layers, per-group limits, warnings, dict batches,
callbacks and logging, mixed precision, the trained-model learning rate, dry runs, one-shot pruning."""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import warnings

import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import attnprune
from attnprune.core.budget import check_reachable, select_channels
from attnprune.core.instrument import instrument
from attnprune.core.limits import GroupLimits, limits_hit
from attnprune.core.separation import SEPARATION_MIN, separation_index
from attnprune.errors import BudgetError
from attnprune.methods import get_method, make_config
from attnprune.methods.base import METHODS, PruningMethod
from attnprune.models import resnet20
from attnprune.report.plots import count_scale
from attnprune.train import diagnostics
from attnprune.train.dry_run import DryRunReport
from attnprune.train.trained_lr import TRAINED_LR, trained_lr as _trained_lr

from _util import assert_unchanged, snapshot

ONE_SHOT = dict(method="l1", trained=True, progress=False)


def tiny_data(n=64, seed=0, batch=16):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 16, 16, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return resnet20(in_channels=1)


def freeze(model, prefixes):
    for name, p in model.named_parameters():
        if name.startswith(prefixes):
            p.requires_grad_(False)
    return model


class CountingLoader:
    """Wraps a loader and counts the batches drawn from it."""

    def __init__(self, loader):
        self.loader, self.drawn = loader, 0

    def __iter__(self):
        for b in self.loader:
            self.drawn += 1
            yield b

    def __len__(self):
        return len(self.loader)


# -- 1. frozen layers --------------------------------------------------------------------
EARLY = ("conv1.", "bn1.", "layer1.", "layer2.")


def test_frozen_layers_are_found_and_flags_restored(model):
    x = torch.randn(1, 1, 16, 16)
    dense_groups = [g.name for g in instrument(copy.deepcopy(model), x).groups]
    freeze(model, EARLY)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    inst = instrument(model, x)
    assert [g.name for g in inst.groups] == dense_groups  # frozen layers are not invisible
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags  # restored exactly
    inst.remove()


def test_frozen_layers_are_pruned_and_stay_frozen(model):
    freeze(model, EARLY)
    original = copy.deepcopy(model)
    res = attnprune.prune(model, tiny_data(), 0.5, finetune_epochs=1, **ONE_SHOT)
    rep = res.report
    early_groups = [g for g in rep.groups if g.name.startswith(("conv1", "layer1", "layer2"))]
    assert early_groups and any(g.kept < g.total for g in early_groups)
    assert all(g.frozen for g in early_groups) and not any(g.frozen for g in rep.groups
                                                            if g.name.startswith("layer3"))
    assert {"conv1", "layer1.0.conv1", "layer2.2.bn2"} <= set(rep.frozen_layers)
    assert not any(n.startswith("layer3") or n == "fc" for n in rep.frozen_layers)
    for name, p in res.model.named_parameters():
        assert p.requires_grad == (not name.startswith(EARLY)), name
    # fine-tuning respected requires_grad: the frozen conv1 holds its original kept filters
    mask = res.masks[[g.name for g in rep.groups].index("conv1")]
    assert torch.equal(res.model.conv1.weight, original.conv1.weight[mask])
    assert not torch.equal(res.model.fc.weight, original.fc.weight[:, :res.model.fc.in_features])


def test_everything_but_the_head_frozen_still_prunes(model):
    freeze(model, tuple(n for n, _ in model.named_children() if n != "fc"))
    res = attnprune.prune(model, tiny_data(), 0.3, finetune_epochs=0, round_to=1, **ONE_SHOT)
    assert res.report.ratio_achieved == pytest.approx(0.3, abs=0.011)
    assert res.model.fc.weight.requires_grad and not res.model.conv1.weight.requires_grad


def test_ignored_layers_keep_a_frozen_layer_whole(model):
    freeze(model, EARLY)
    res = attnprune.prune(model, tiny_data(), 0.4, finetune_epochs=0, ignored_layers=["layer1.0.conv1"],
                          **ONE_SHOT)
    assert res.model.layer1[0].conv1.out_channels == model.layer1[0].conv1.out_channels


# -- 2. per-group floor and cap ----------------------------------------------------------
def skewed_scores(inst):
    """Group 0 scores far below every other group: without a limit it collapses."""
    return [torch.full((g.n_channels,), 1e-3) + 1e-4 * torch.arange(g.n_channels) if g.index == 0
            else torch.rand(g.n_channels, generator=torch.Generator().manual_seed(g.index)) + 1.0
            for g in inst.groups]


def test_budget_search_honours_floor_and_cap(model):
    inst = instrument(model, torch.randn(1, 1, 16, 16))
    scores = skewed_scores(inst)
    free = select_channels(inst.cost, scores, 0.5, normalize=None)
    assert int(free.masks[0].sum()) == 1  # the collapse the limits prevent
    for limits in (GroupLimits(min_keep=6), GroupLimits(max_group_ratio=0.6), GroupLimits(4, 0.7)):
        sel = select_channels(inst.cost, scores, 0.5, normalize=None, limits=limits)
        assert abs(sel.ratio - 0.5) <= 0.01
        for g, m in zip(inst.groups, sel.masks):
            floor, _ = limits.floor_channels(g.n_channels)
            assert int(m.sum()) >= floor
        hit = limits_hit(inst.cost, sel.masks, limits)
        assert hit[0] in ("min_keep", "max_group_ratio")
        assert int(sel.masks[0].sum()) == limits.floor_channels(inst.groups[0].n_channels)[0]
    with pytest.raises(BudgetError, match=r"max_group_ratio=0.6.*largest reachable ratio is 0\.[0-9]+"):
        check_reachable(inst.cost, 0.999, limits=GroupLimits(max_group_ratio=0.6))
    inst.remove()


def test_prune_reports_groups_at_a_limit(model):
    # ~37% of the channels removed per group meets 60% of the params: a 40% cap binds somewhere
    res = attnprune.prune(model, tiny_data(), 0.6, finetune_epochs=0, max_group_ratio=0.4, min_keep=3,
                          **ONE_SHOT)
    rep = res.report
    assert rep.max_group_ratio == 0.4 and rep.min_keep == 3
    assert abs(rep.ratio_achieved - 0.6) <= 0.01
    for g in rep.groups:
        assert g.kept >= max(3, math.ceil(g.total * 0.6 - 1e-9))
        assert (g.limit == "max_group_ratio") == (g.kept == math.ceil(g.total * 0.6 - 1e-9))
    assert any(g.limit is not None for g in rep.groups)
    assert "at a limit" in rep.summary()


def test_limits_under_round_to(model):
    res = attnprune.prune(model, tiny_data(), 0.5, finetune_epochs=0, min_keep=5, round_to=4, **ONE_SHOT)
    for g in res.report.groups:
        assert g.kept >= 8 or g.kept == g.total  # 5 channels rounded up to a multiple of 4
        assert (g.limit == "min_keep") == (g.kept == 8 and g.total > 8)


def test_unreachable_ratio_under_a_cap_fails_before_training(model):
    snap = snapshot(model)
    data = CountingLoader(tiny_data())
    with pytest.raises(BudgetError, match="largest reachable ratio"):
        attnprune.prune(model, data, 0.999, max_group_ratio=0.5, **ONE_SHOT)
    assert data.drawn <= 1
    assert_unchanged(model, snap)


@pytest.mark.parametrize("kwargs, match", [(dict(min_keep=0), "min_keep"), (dict(max_group_ratio=1.0),
                                           "max_group_ratio"), (dict(max_group_ratio="0.5"), "max_group_ratio")])
def test_bad_limits(model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        attnprune.prune(model, tiny_data(), 0.5, **ONE_SHOT, **kwargs)


# -- 3. warnings when pruning went wrong ---------------------------------------------------
def test_separation_index_is_scale_free():
    g = torch.Generator().manual_seed(0)
    kept, closed = 1.0 + 0.05 * torch.randn(40, generator=g), 0.05 * torch.randn(40, generator=g)
    masks = [torch.cat([torch.ones(40, dtype=torch.bool), torch.zeros(40, dtype=torch.bool)])]
    separated = separation_index([torch.cat([kept, closed])], masks)
    spike = 1.0 + 0.01 * torch.randn(80, generator=g)
    order = spike.argsort(descending=True)
    spike_mask = torch.zeros(80, dtype=torch.bool)
    spike_mask[order[:40]] = True
    one_cluster = separation_index([spike], [spike_mask])
    assert separated > 3 * SEPARATION_MIN and one_cluster < SEPARATION_MIN
    scaled = separation_index([100 * spike + 7], [spike_mask])
    assert scaled == pytest.approx(one_cluster, rel=1e-4)


class _Crafted(PruningMethod):
    """A learned method (it has a parameter) whose scores are set by the test."""

    normalize = None
    spike = False

    def setup(self):
        self.p = nn.Parameter(torch.zeros(1))

    def parameters(self):
        return [self.p]

    def scores(self):
        out = []
        for g in self.inst.groups:
            gen = torch.Generator().manual_seed(g.index)
            noise = 0.01 * torch.randn(g.n_channels, generator=gen)
            if self.spike:
                out.append(1.0 + noise)
            else:
                out.append(torch.where(torch.arange(g.n_channels) % 2 == 0, 1.0, 0.0) + noise)
        return out


@pytest.fixture
def crafted():
    class Separated(_Crafted):
        pass

    class Spike(_Crafted):
        spike = True

    for name, cls in (("test-separated", Separated), ("test-spike", Spike)):
        cls.name = name
        METHODS[name] = cls
    yield
    for name in ("test-separated", "test-spike"):
        METHODS.pop(name, None)


def test_a_run_that_does_not_separate_warns(model, crafted):
    with pytest.warns(UserWarning, match="did not separate.*AN epochs"):
        res = attnprune.prune(model, tiny_data(), 0.4, method="test-spike", warmup_epochs=0, finetune_epochs=0,
                              progress=False)
    assert res.report.score_separation < SEPARATION_MIN
    assert any("did not separate" in w for w in res.report.warnings)


def test_a_run_that_separates_does_not_warn(model, crafted):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = attnprune.prune(model, tiny_data(), 0.4, method="test-separated", warmup_epochs=0,
                              finetune_epochs=0, progress=False)
    assert res.report.score_separation > SEPARATION_MIN
    assert res.report.warnings == []
    assert not [w for w in caught if "attnprune:" in str(w.message)]


def test_chance_accuracy_rule():
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 10))
    chance = diagnostics.chance_accuracy(net, torch.randn(2, 4))
    assert chance == pytest.approx(10.0)
    assert any("near chance" in w for w in diagnostics.run_warnings(None, 11.0, chance, 60.0, 85.0))
    assert diagnostics.run_warnings(None, 70.0, chance, 80.0, 85.0) == []
    assert diagnostics.run_warnings(None, 11.0, chance, 11.0, 11.5) == []  # never learned: not removal's fault


def test_histogram_scale_shows_a_spike_and_a_spread():
    assert count_scale([900, 3, 2, 1, 4, 2]) == "log"
    assert count_scale([10, 12, 9, 11, 8]) == "linear"


# -- 11. dict batches ---------------------------------------------------------------------
class HFStyle(Dataset):
    def __init__(self, n=48):
        g = torch.Generator().manual_seed(1)
        self.x, self.y = torch.randn(n, 1, 16, 16, generator=g), torch.randint(0, 10, (n,), generator=g)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"pixel_values": self.x[i], "labels": self.y[i]}


def test_dict_batches_through_batch_fn(model):
    data = DataLoader(HFStyle(), batch_size=16)
    res = attnprune.prune(model, data, 0.4, eval_loader=data, finetune_epochs=1,
                          batch_fn=lambda b: (b["pixel_values"], b["labels"]), **ONE_SHOT)
    assert res.report.accuracy_after is not None and len(res.report.history) == 1


def test_dict_batches_without_batch_fn_say_what_to_do(model):
    with pytest.raises(TypeError, match="pass batch_fn="):
        attnprune.prune(model, DataLoader(HFStyle(), batch_size=16), 0.4, **ONE_SHOT)


def test_bad_batch_fn_fails_before_training(model):
    snap = snapshot(model)
    with pytest.raises(TypeError, match=r"batch_fn must return an \(inputs, targets\) pair"):
        attnprune.prune(model, DataLoader(HFStyle(), batch_size=16), 0.4, batch_fn=lambda b: b["labels"],
                        **ONE_SHOT)
    with pytest.raises(TypeError, match="batch_fn must be None or callable"):
        attnprune.prune(model, tiny_data(), 0.4, batch_fn="pixel_values", **ONE_SHOT)
    assert_unchanged(model, snap)


# -- 12. callbacks and logging ------------------------------------------------------------
def test_callback_called_once_per_epoch_and_records_logged(model, caplog):
    records, more = [], []
    with caplog.at_level(logging.INFO, logger="attnprune"):
        res = attnprune.prune(model, tiny_data(), 0.4, method="l1", warmup_epochs=2, finetune_epochs=1,
                              eval_loader=tiny_data(), callbacks=[records.append], on_epoch_end=more.append,
                              progress=False)
    assert records == res.report.history == more and len(records) == 3
    assert [r.phase for r in records] == ["warmup", "warmup", "finetune"]
    lines = [r.getMessage() for r in caplog.records if r.name == "attnprune"]
    assert lines[0].startswith("phase 1/2 warmup epoch 1/2") and "acc " in lines[0]
    assert lines[-1].startswith("phase 2/2 finetune epoch 1/1")


def test_progress_bars_show_the_phase_count_and_accuracy(model, monkeypatch):
    from attnprune.train import runner as runner_mod

    bars = []
    real = runner_mod.tqdm

    def recording(*args, **kwargs):
        bar = real(*args, **{**kwargs, "disable": True})
        bars.append({"desc": kwargs["desc"], "post": []})
        bar.set_postfix = lambda post: bars[-1]["post"].append(dict(post))
        return bar

    monkeypatch.setattr(runner_mod, "tqdm", recording)
    attnprune.prune(model, tiny_data(n=320), 0.4, method="l1", warmup_epochs=2, finetune_epochs=1,
                    eval_loader=tiny_data(), progress=True)
    assert [b["desc"] for b in bars] == ["phase 1/2 warmup 1/2", "phase 1/2 warmup 2/2", "phase 2/2 finetune 1/1"]
    assert "acc" not in bars[0]["post"][-1] and bars[1]["post"][-1]["acc"].endswith("%")


def test_bad_callbacks(model):
    with pytest.raises(TypeError, match="callbacks must be a list"):
        attnprune.prune(model, tiny_data(), 0.4, callbacks=print, **ONE_SHOT)
    with pytest.raises(TypeError, match=r"callbacks\[0\] must be callable"):
        attnprune.prune(model, tiny_data(), 0.4, callbacks=[1], **ONE_SHOT)


# -- 13. mixed precision --------------------------------------------------------------------
def test_bfloat16_training_is_autocast_and_removal_still_exact(model):
    dtypes = []

    def loss_fn(out, y):
        dtypes.append(out.dtype)
        return nn.functional.cross_entropy(out.float(), y)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bfloat16 may be emulated on this CPU
        res = attnprune.prune(model, tiny_data(), 0.4, method="paam", warmup_epochs=1, finetune_epochs=1,
                              loss_fn=loss_fn, amp="bfloat16", progress=False)
    assert torch.bfloat16 in dtypes  # training steps ran under autocast
    assert all(p.dtype == torch.float32 for p in res.model.parameters())
    assert abs(res.report.ratio_achieved - 0.4) <= 0.01  # finalize(verify=True) ran in float32 and passed


@pytest.mark.parametrize("amp, match", [("float16", "needs a CUDA device"), ("fp8", "amp must be one of"),
                                        (True, "amp must be one of")])
def test_bad_amp(model, amp, match):
    with pytest.raises(ValueError, match=match):
        attnprune.prune(model, tiny_data(), 0.4, amp=amp, device="cpu", **ONE_SHOT)


# -- 14. the trained-model learning rate -------------------------------------------------------
def test_trained_models_default_to_a_smaller_lr():
    cls = get_method("paam")
    assert _trained_lr(make_config(cls, {}), {}, trained=True).lr == TRAINED_LR < make_config(cls, {}).lr
    assert _trained_lr(make_config(cls, {}), {}, trained=False).lr == make_config(cls, {}).lr
    assert _trained_lr(make_config(cls, {"lr": 0.2}), {"lr": 0.2}, trained=True).lr == 0.2  # lr= wins
    adam = make_config(cls, {"optimizer": "adam"})
    assert _trained_lr(adam, {"optimizer": "adam"}, trained=True) == adam
    ft = _trained_lr(make_config(cls, {"finetune_lr": 0.003}), {"finetune_lr": 0.003}, trained=True)
    assert dataclasses.asdict(ft)["finetune_lr"] == 0.003


# -- 15. dry run ------------------------------------------------------------------------------
def test_dry_run_trains_nothing(model, capsys):
    snap = snapshot(model)
    data = CountingLoader(tiny_data(n=640))
    plan = attnprune.prune(model, data, 0.5, method="paam", warmup_epochs=2, finetune_epochs=3, dry_run=True,
                           progress=False)
    assert isinstance(plan, DryRunReport)
    assert [p.name for p in plan.phases] == ["warmup", "an", "cnn", "finetune"]
    assert [p.steps for p in plan.phases] == [80, 40, 40, 120]
    assert plan.estimated_seconds > 0 and set(plan.seconds_per_step) == {"plain", "gated"}
    # the checks' first batch, PAAM's calibration, three timed steps per kind of phase (each a
    # fresh pass over the loader): far from one epoch (40 batches)
    assert data.drawn <= 16
    assert_unchanged(model, snap)
    out = capsys.readouterr().out
    assert "phase 2/4 an" in out and "estimated training time" in out


# -- 16. one-shot pruning ---------------------------------------------------------------------
def test_one_shot_pruning_trains_nothing(model):
    records = []
    original = copy.deepcopy(model)
    res = attnprune.prune(model, tiny_data(), 0.5, finetune_epochs=0, callbacks=[records.append], **ONE_SHOT)
    assert records == [] and res.report.history == []
    assert abs(res.report.ratio_achieved - 0.5) <= 0.01
    mask = res.masks[[g.name for g in res.report.groups].index("conv1")]
    assert torch.equal(res.model.conv1.weight, original.conv1.weight[mask])  # weights only sliced


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_float16_with_a_grad_scaler_on_cuda(model):
    res = attnprune.prune(model, tiny_data(), 0.4, method="paam", warmup_epochs=1, finetune_epochs=1,
                          amp="float16", device="cuda", progress=False)
    assert abs(res.report.ratio_achieved - 0.4) <= 0.01
    assert all(p.dtype == torch.float32 and p.is_cuda for p in res.model.parameters())
