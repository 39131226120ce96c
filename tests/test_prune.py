"""``attnprune.prune()`` end to end on a tiny model and tiny synthetic data."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest
import torch
import torch_pruning as tp
from torch.utils.data import DataLoader, TensorDataset

import attnprune
from attnprune.methods import Budget, get_method
from attnprune.models import resnet20

from _util import assert_unchanged, count_hooks, snapshot

ROOT = Path(__file__).resolve().parents[1]
FAST = dict(warmup_epochs=1, finetune_epochs=1)


def tiny_data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 16, 16, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, generator=g)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return resnet20(in_channels=1)


@pytest.mark.parametrize("method", ["l1", "taylor", "slim", "random"])
def test_baselines_end_to_end(model, method):
    snap = snapshot(model)
    data = tiny_data()
    res = attnprune.prune(model, data, 0.5, method=method, eval_loader=data, progress=False, seed=0, round_to=1,
                          **FAST)
    r = res.report
    assert abs(r.ratio_achieved - 0.5) <= 0.01
    assert r.params_after == sum(p.numel() for p in res.model.parameters())
    assert r.params_before == sum(p.numel() for p in model.parameters())
    assert r.macs_after < r.macs_before
    assert [h.phase for h in r.history] == ["warmup", "finetune"]
    assert r.accuracy_after is not None and r.accuracy_before_pruning is not None
    assert count_hooks(res.model) == 0
    assert res.pruning_history
    json.dumps(r.to_dict())
    assert_unchanged(model, snap)


def test_macs_target_and_round_to(model):
    res = attnprune.prune(model, tiny_data(), 0.4, method="l1", target="macs", round_to=4,
                          progress=False, **FAST)
    assert abs(res.report.ratio_achieved - 0.4) <= 0.02
    assert all(g.kept % 4 == 0 or g.kept == g.total for g in res.report.groups)


def test_default_method_is_paam():
    assert attnprune.DEFAULT_METHOD == "paam"
    assert {"paam", "sbf", "l1", "taylor", "slim", "random"} <= set(attnprune.available_methods())


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(method="magic"), ValueError, "valid methods"),
        (dict(method="l1", warmup_epoch=1), ValueError, "valid options"),
        (dict(ratio=1.5), ValueError, "ratio"),
        (dict(target="flops"), ValueError, "target must be one of"),
        (dict(round_to=0), ValueError, "round_to"),
        (dict(method="paam", variant="big"), ValueError, "'variant' of PAAMConfig must be one of"),
    ],
)
def test_bad_arguments_leave_the_model_alone(model, kwargs, error, match):
    snap = snapshot(model)
    args = dict(ratio=0.5, progress=False)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        attnprune.prune(model, tiny_data(), **args)
    assert_unchanged(model, snap)


def test_loader_must_yield_pairs(model):
    bad = DataLoader(TensorDataset(torch.randn(8, 1, 16, 16)), batch_size=4)
    with pytest.raises(TypeError, match=r"\(inputs, targets\)"):
        attnprune.prune(model, bad, 0.5, method="l1", progress=False)
    with pytest.raises(ValueError, match="empty"):
        attnprune.prune(model, [], 0.5, method="l1", progress=False)


def test_learned_importance_matches_method_scores(model):
    x = torch.randn(2, 1, 16, 16)
    inst = attnprune.instrument(model, x)
    method = get_method("l1")()
    method.attach(inst, Budget(0.5))
    imp = attnprune.LearnedImportance(method)
    graph = tp.DependencyGraph().build_dependency(model, x)
    scores = imp.scores()
    for g in inst.groups:
        tg = graph.get_pruning_group(g.root_module, g.root_fn, list(range(g.n_channels)))
        assert torch.equal(torch.argsort(imp(tg)), torch.argsort(scores[g.index]))
    # and it drives torch-pruning's own pruner
    inst.remove()
    pruner = tp.pruner.MetaPruner(model, x, importance=imp, pruning_ratio=0.25, ignored_layers=[model.fc])
    before = sum(p.numel() for p in model.parameters())
    pruner.step()
    assert sum(p.numel() for p in model.parameters()) < before


def test_own_training_loop_example(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["own_training_loop.py", "--steps", "2", "--method", "paam"])
    runpy.run_path(str(ROOT / "examples" / "own_training_loop.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "removed" in out and "phase an" in out
