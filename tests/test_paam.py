"""PAAM and SbF-Pruner: activation, attention networks, phases, budget, lambda."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

import attnprune
from attnprune.core.budget import select_channels
from attnprune.core.filters import filter_rows
from attnprune.methods import Budget, Context, get_method
from attnprune.methods.paam import AttentionNet, leaky_exp
from attnprune.models import resnet20
from attnprune.train.runner import Runner

from _util import ResidualNet


def test_leaky_exp_values_and_gradients():
    x = torch.tensor([-2.0, -0.5, 0.0, 0.5, 3.0], requires_grad=True)
    y = leaky_exp(x, slope=0.1)
    expected = torch.tensor([math.exp(-2), math.exp(-0.5), 1.0, 1.05, 1.3])
    assert torch.allclose(y, expected)
    y.sum().backward()
    assert torch.allclose(x.grad, torch.tensor([math.exp(-2), math.exp(-0.5), 0.1, 0.1, 0.1]))
    # continuous at 0, positive everywhere, never saturating
    assert float(leaky_exp(torch.tensor(-1e-6))) == pytest.approx(1.0, abs=1e-5)
    assert float(leaky_exp(torch.tensor(-50.0))) > 0


def _residual_group(inst):
    return max(inst.groups, key=lambda g: len(g.producers))


@pytest.mark.parametrize("variant", ["vanilla", "kq"])
def test_initial_scores_near_one_with_gradients(variant):
    torch.manual_seed(0)
    model = ResidualNet()
    inst = attnprune.instrument(model, torch.randn(2, 3, 16, 16))
    method = get_method("paam")(variant=variant)
    method.attach(inst, Budget(0.5))
    scores = method.compute_scores()
    for s in scores:
        assert ((s - 1).abs() <= 0.05).all()
    sum(s.sum() for s in scores).backward()
    for p in method.parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, "no saddle at initialisation"
    inst.remove()


def test_vanilla_and_kq_shapes_on_a_residual_group():
    model = ResidualNet()
    inst = attnprune.instrument(model, torch.randn(2, 3, 16, 16))
    g = _residual_group(inst)
    assert len(g.producers) >= 2, "a residual group has several producers"
    rows = filter_rows(g)
    d_row = sum(s.module.weight[0].numel() for s in g.producers)
    assert rows.shape == (g.n_channels, d_row)
    van = AttentionNet(g.n_channels, d_row, "vanilla")
    assert van.w_f.shape == (g.n_channels * d_row, g.n_channels)
    kq = AttentionNet(g.n_channels, d_row, "kq", hidden=7)
    assert kq.w_q.shape == kq.w_k.shape == (d_row, 7)
    assert van(rows).shape == kq(rows).shape == (g.n_channels,)
    inst.remove()


def test_auto_variant_follows_the_memory_cap():
    model = ResidualNet()
    inst = attnprune.instrument(model, torch.randn(2, 3, 16, 16))
    method = get_method("paam")(variant="auto", vanilla_max_elements=100_000)
    method.attach(inst, Budget(0.5))
    for g, v in zip(inst.groups, method.variants):
        size = g.n_channels ** 2 * filter_rows(g).shape[1]
        assert v == ("vanilla" if size <= 100_000 else "kq")
    assert set(method.variants) == {"vanilla", "kq"}
    inst.remove()


def _data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 1, 16, 16, generator=g), torch.randint(0, 10, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, generator=g)


def _bn_buffers(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


def test_each_phase_freezes_the_other_side():
    torch.manual_seed(0)
    model = resnet20(in_channels=1)
    data = _data()
    inst = attnprune.instrument(model, torch.randn(1, 1, 16, 16))
    method = get_method("paam")()
    ctx = Context(batches=lambda: iter(data), loss_fn=nn.functional.cross_entropy, steps_per_epoch=4)
    method.attach(inst, Budget(0.5), ctx)
    runner = Runner(loader=data, loss_fn=nn.functional.cross_entropy, progress=False)
    phases = {p.name: p for p in method.phases()}

    cnn_before = {k: v.clone() for k, v in model.state_dict().items()}
    an_before = [p.detach().clone() for p in method.parameters()]
    runner.run(model, phases["an"], method)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in cnn_before.items()), \
        "AN phase: CNN weights and BN statistics unchanged"
    assert any(not torch.equal(a, p) for a, p in zip(an_before, method.parameters()))
    assert inst.mode == "analog"

    cnn_before = {k: v.clone() for k, v in model.state_dict().items()}
    an_before = [p.detach().clone() for p in method.parameters()]
    runner.run(model, phases["cnn"], method)
    assert all(torch.equal(a, p) for a, p in zip(an_before, method.parameters())), "CNN phase: AN unchanged"
    assert any(not torch.equal(v, model.state_dict()[k]) for k, v in cnn_before.items() if "weight" in k)
    assert inst.mode == "binary"
    gate_values = torch.cat([m.float() for m in inst.masks()])
    assert set(gate_values.unique().tolist()) == {0.0, 1.0}
    inst.remove()


@pytest.mark.parametrize("variant", ["vanilla", "kq"])
def test_paam_meets_the_budget(variant):
    torch.manual_seed(0)
    model = resnet20(in_channels=1)
    res = attnprune.prune(model, _data(), 0.5, method="paam", variant=variant, progress=False, seed=0)
    assert abs(res.report.ratio_achieved - 0.5) <= 0.01
    assert [h.phase for h in res.report.history] == ["warmup", "an", "cnn", "finetune"]
    rep = res.report.method_report
    assert rep["lam"] > 0 and set(rep["variants"].values()) == {variant}
    scores = torch.tensor([v for s in rep["scores"] for v in s])
    assert rep["fraction_mid"] == pytest.approx(float(((scores > 0.1) & (scores < 0.9)).float().mean()))


def test_explicit_lam_is_honoured():
    model = resnet20(in_channels=1)
    res = attnprune.prune(model, _data(), 0.5, method="paam", lam=3e-4, progress=False, seed=0)
    assert res.report.method_report["lam"] == 3e-4


def test_mask_update_per_step_changes_masks_during_the_cnn_phase():
    torch.manual_seed(0)
    model = resnet20(in_channels=1)
    loader = _data()
    inst = attnprune.instrument(model, next(iter(loader))[0][:1])
    method = get_method("paam")(warmup_epochs=0, cnn_epochs=2, lr=0.5, mask_update="step")  # lr: filters move
    runner = Runner(loader=loader, loss_fn=nn.functional.cross_entropy, progress=False)
    method.attach(inst, Budget(0.5), Context(steps_per_epoch=runner.steps_in_epoch()))
    an, cnn = method.phases()
    runner.run(model, an, method)
    seen = []  # per CNN step: (masks in force, the budget selection recomputed from the current weights)
    update = method.before_step

    def spy(phase, step):
        update(phase, step)
        seen.append((inst.masks(), method.select().masks))

    method.before_step = spy
    runner.run(model, cnn, method)
    assert len(seen) == 2 * runner.steps_in_epoch()
    for in_force, fresh in seen:  # every step trains with the selection of the current filters ...
        assert all(torch.equal(a, b) for a, b in zip(in_force, fresh))
    first = seen[0][0]  # ... which moves as the CNN trains (a no-op update would keep the first masks)
    assert any(not all(torch.equal(a, b) for a, b in zip(first, m)) for m, _ in seen[1:])
    inst.remove()
    torch.manual_seed(0)
    res = attnprune.prune(resnet20(in_channels=1), _data(), 0.5, method="paam", mask_update="step", progress=False,
                          seed=0)
    assert abs(res.report.ratio_achieved - 0.5) <= 0.01


def test_sbf_end_to_end_reports_its_ratio():
    torch.manual_seed(0)
    model = resnet20(in_channels=1)
    res = attnprune.prune(model, _data(), 0.5, method="sbf", progress=False, seed=0)
    rep = res.report.method_report
    assert rep["threshold"] == 0.5
    assert rep["ratio_reached"] == pytest.approx(res.report.ratio_achieved)
    assert rep["ratio_error"] == pytest.approx(rep["ratio_reached"] - 0.5)
    assert res.report.params_after == sum(p.numel() for p in res.model.parameters())
    with pytest.raises(ValueError, match="vanilla"):
        attnprune.prune(model, _data(), 0.5, method="sbf", variant="kq", progress=False)


@pytest.mark.slow
def test_lambda_calibration_separates_scores():
    """On real data, the calibrated lambda drives scores apart around the threshold.

    After three AN phases (with CNN phases between them), few scores lie near the
    budget's threshold, and the accuracy with analog gates is close to the accuracy
    with the binary gates the budget picks. One AN phase is not enough (measured:
    a 30-point gap at ratio 0.5): separation comes from the alternation, since a CNN
    phase teaches the network to do without the closed channels, and the next AN
    phase's L1 pull then takes their scores to 0.
    """
    data = pytest.importorskip("attnprune.data")
    try:
        train, test = data.fashion_mnist_loaders(batch_size=128, train_subset=4096, test_subset=1000, seed=0)
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    torch.manual_seed(0)
    model = resnet20(in_channels=1)
    inst = attnprune.instrument(model, next(iter(train))[0][:1])
    loss_fn = nn.functional.cross_entropy
    method = get_method("paam")(warmup_epochs=1, cycles=3, an_epochs=1, cnn_epochs=1)
    method.attach(inst, Budget(0.5), Context(batches=lambda: iter(train), loss_fn=loss_fn,
                                             steps_per_epoch=len(train)))
    runner = Runner(loader=train, loss_fn=loss_fn, progress=False)
    phases = method.phases()
    assert [p.name for p in phases] == ["warmup"] + ["an", "cnn"] * 3
    for phase in phases[:-1]:  # up to the end of the third AN phase
        runner.run(model, phase, method)
    scores = method.scores()
    sel = method.select()
    allv = torch.cat(scores)
    near = float(((allv - sel.threshold).abs() < 0.05).float().mean())
    inst.set_scores(method.compute_scores)
    inst.mode = "analog"
    acc_analog = attnprune.evaluate(model, test)
    inst.set_masks(sel.masks)
    inst.mode = "binary"
    acc_binary = attnprune.evaluate(model, test)
    print(f"near threshold {near:.1%}; top-1 analog {acc_analog:.1f}%, binary {acc_binary:.1f}%")
    assert near < 0.25, f"{near:.0%} of scores lie within 0.05 of the threshold"
    # measured 1-5 points on AMD EPYC machines and 6.1 on an Intel Xeon (other float kernels, another
    # trajectory); one AN phase leaves a ~30-point gap, so 8 still tells separation from none
    assert abs(acc_analog - acc_binary) <= 8.0, (acc_analog, acc_binary)
    assert acc_binary > 50.0, "the pruned selection must still classify (chance is 10%)"
    inst.remove()


@pytest.mark.parametrize("weighting", ["target", "sqrt", "uniform"])
def test_cost_weighting_of_the_l1_term(weighting):
    model = ResidualNet()
    inst = attnprune.instrument(model, torch.randn(2, 3, 16, 16))
    method = get_method("paam")(cost_weight=weighting)
    method.attach(inst, Budget(0.5))
    w = torch.cat(method.weights)
    assert float(w.mean()) == pytest.approx(1.0)
    costs = torch.cat(inst.cost.channel_costs("params"))
    if weighting == "uniform":
        assert torch.allclose(w, torch.ones_like(w))
    else:
        expected = costs if weighting == "target" else costs.sqrt()
        assert torch.allclose(w, expected / expected.mean())
    inst.remove()
    with pytest.raises(ValueError, match="'cost_weight' of PAAMConfig must be one of"):
        get_method("paam")(cost_weight="flops")


def test_score_norm_option_sets_the_selection_normalisation():
    torch.manual_seed(0)
    model = resnet20(in_channels=1)
    inst = attnprune.instrument(model, torch.randn(1, 1, 16, 16))
    picked = {}
    for how in ("none", "mean", "max"):
        method = get_method("paam")(score_norm=how)
        method.attach(inst, Budget(0.5))
        g = torch.Generator().manual_seed(0)  # scores far from one shared scale: group i's scores times (i + 1)
        scores = [torch.rand(grp.n_channels, generator=g) * (gi + 1) for gi, grp in enumerate(inst.groups)]
        method.scores = lambda scores=scores: scores
        expected = select_channels(inst.cost, scores, 0.5, "params", normalize=None if how == "none" else how)
        picked[how] = method.select().masks
        assert all(torch.equal(a, b) for a, b in zip(picked[how], expected.masks))
        method.detach()
    assert not all(torch.equal(a, b) for a, b in zip(picked["none"], picked["mean"]))
    inst.remove()


def test_area_weighting_pulls_large_feature_maps_harder():
    model = resnet20(in_channels=1)
    inst = attnprune.instrument(model, torch.randn(1, 1, 28, 28))
    method = get_method("paam")(cost_weight="area")
    method.attach(inst, Budget(0.5))
    by_group = {g.name: float(w.mean()) for g, w in zip(inst.groups, method.weights)}
    stage = {k: next(v for n, v in by_group.items() if n.startswith(k)) for k in ("layer1", "layer2", "layer3")}
    # 28x28, 14x14 and 7x7 maps: each stage's weight is 4x the next one's (the paper's 16 : 4 : 1)
    assert stage["layer1"] / stage["layer2"] == pytest.approx(4.0, rel=0.05)
    assert stage["layer2"] / stage["layer3"] == pytest.approx(4.0, rel=0.05)
    method.detach()
    inst.remove()


def test_sbf_and_paam_share_lambda_through_the_first_an_phase():
    """Same options, same model and data: the AN phases are the same code, so lambda agrees step by step."""
    hist = {}
    for name, opts in (("paam", {"variant": "vanilla"}), ("sbf", {})):
        data = _data()  # a fresh loader each: a shared one's shuffling generator would differ in the second run
        torch.manual_seed(0)
        model = resnet20(in_channels=1)
        inst = attnprune.instrument(model, torch.randn(1, 1, 16, 16))
        method = get_method(name)(**opts)
        runner = Runner(loader=data, loss_fn=nn.functional.cross_entropy, progress=False)
        ctx = Context(batches=lambda data=data: iter(data), loss_fn=nn.functional.cross_entropy,
                      steps_per_epoch=runner.steps_in_epoch())
        method.attach(inst, Budget(0.5), ctx)
        an = next(p for p in method.phases() if p.name == "an")
        torch.manual_seed(1)
        runner.run(model, an, method)
        hist[name] = list(method.lam_history)
        method.detach()
        inst.remove()
    assert len(hist["paam"]) == 4 and hist["paam"] == hist["sbf"]


@pytest.mark.parametrize("control", ["step", "pi"])
def test_lambda_controller_holds_for_the_end_of_the_phase(control):
    data = _data()
    torch.manual_seed(0)
    model = resnet20(in_channels=1)
    inst = attnprune.instrument(model, torch.randn(1, 1, 16, 16))
    method = get_method("paam")(lam_control=control, lam_hold=0.5, an_epochs=2)
    runner = Runner(loader=data, loss_fn=nn.functional.cross_entropy, progress=False)
    method.attach(inst, Budget(0.5), Context(batches=lambda: iter(data), loss_fn=nn.functional.cross_entropy,
                                             steps_per_epoch=runner.steps_in_epoch()))
    runner.run(model, next(p for p in method.phases() if p.name == "an"), method)
    hist = method.lam_history
    assert len(hist) == 8
    assert len(set(hist[3:])) == 1, "lam is held over the last half of the phase (steps 4..7)"
    assert len(set(hist[:4])) == 4, "and steered before it"
    steps = [b / a for a, b in zip(hist, hist[1:4])]
    if control == "pi":
        assert all(1 / 1.1 - 1e-9 <= s <= 1.1 + 1e-9 for s in steps)
    else:
        assert all(s == pytest.approx(1.05) or s == pytest.approx(1 / 1.05) for s in steps)
    method.detach()
    inst.remove()


def test_ramped_mask_updates_close_channels_gradually():
    torch.manual_seed(0)
    model = resnet20(in_channels=1)
    loader = _data()
    inst = attnprune.instrument(model, next(iter(loader))[0][:1])
    method = get_method("paam")(warmup_epochs=0, cnn_epochs=2, mask_update="ramp")
    runner = Runner(loader=loader, loss_fn=nn.functional.cross_entropy, progress=False)
    method.attach(inst, Budget(0.5), Context(steps_per_epoch=runner.steps_in_epoch()))
    an, cnn = method.phases()
    runner.run(model, an, method)
    removed = []
    update = method.before_step

    def spy(phase, step):
        update(phase, step)
        removed.append(inst.cost.removed(inst.masks(), "params"))

    method.before_step = spy
    runner.run(model, cnn, method)
    half = runner.steps_in_epoch()  # 8 steps in the phase: the ramp reaches the budget at step 4
    assert len(removed) == 2 * half
    assert removed[0] < 0.2 and all(a <= b + 0.02 for a, b in zip(removed[:half], removed[1:half]))
    assert all(abs(r - 0.5) <= 0.01 for r in removed[half - 1:])
    inst.remove()
    with pytest.raises(ValueError, match="mask_update"):
        get_method("sbf")(mask_update="ramp")
