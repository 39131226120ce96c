"""ABP (Tian et al. 2021): binary gates, the eq. (5) estimator, budget-following threshold."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import attnprune
import attnprune.methods.abp  # noqa: F401  (registration, before methods/__init__ imports it)
from attnprune.core.instrument import outputs_close
from attnprune.methods.abp import ABPMethod, ReluPassAtZero, binary_gate
from attnprune.methods.base import Budget, Context
from attnprune.models import resnet20
from attnprune.train.runner import Runner

from _util import ResidualNet, count_hooks, fvcore_counts, synthetic_loader

FAST = dict(joint_epochs=2, ramp_epochs=1, progress=False, seed=0, round_to=1)  # free counts: ±1 point


ARCHS = {
    "resnet20": (lambda: resnet20(in_channels=1), (1, 28, 28)),
    "residual": (ResidualNet, (3, 16, 16)),
}


def test_registered():
    assert "abp" in attnprune.available_methods()


def test_estimator_is_eq5_on_a_toy_tensor():
    m = torch.tensor([-2.0, -0.5, 0.0, 0.3, 0.6, 0.7, 1.5], requires_grad=True)
    g = torch.tensor([0.3, -1.0, 2.0, -0.5, 0.25, 4.0, -3.0])
    t = 0.6
    a = binary_gate(m, t)
    assert a.tolist() == [1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0]  # 1[|m| > t], eq. (4)
    a.backward(g)
    assert torch.equal(m.grad, g * (m.detach().abs() <= t).float())  # g_a * 1[|m| <= t], eq. (5)
    # clipped straight-through: g_a * 1[|m| <= clip]
    m.grad = None
    binary_gate(m, t, bound=1.0).backward(g)
    assert torch.equal(m.grad, g * (m.detach().abs() <= 1.0).float())
    # per-channel thresholds broadcast
    m.grad = None
    th = torch.tensor([3.0, 0.1, 0.1, 0.1, 0.1, 0.1, 2.0])
    a = binary_gate(m, th)
    assert a.tolist() == [0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0]
    a.backward(g)
    assert torch.equal(m.grad, g * (m.detach().abs() <= th).float())


def test_relu_pass_at_zero_keeps_values_and_passes_gradient():
    x = torch.tensor([-1.0, 0.0, 2.0], requires_grad=True)
    for f in (torch.relu, nn.ReLU(), nn.ReLU(inplace=True), nn.ReLU6(), lambda t: t.relu()):
        x.grad = None
        with ReluPassAtZero():
            y = f(x * 1.0)
        y.sum().backward()
        assert y.tolist() == [0.0, 0.0, 2.0]
        assert x.grad.tolist() == [0.0, 1.0, 1.0]


def _attached(model, x, ratio=0.5, **options):
    inst = attnprune.instrument(model, x)
    algo = ABPMethod(**options)
    loader = synthetic_loader(tuple(x.shape[1:]))
    runner = Runner(loader=loader, loss_fn=nn.functional.cross_entropy, progress=False)
    algo.attach(inst, Budget(ratio), Context(steps_per_epoch=runner.steps_in_epoch()))
    return inst, algo, runner


def test_forward_uses_binary_gates_and_closed_channels_get_gradient():
    torch.manual_seed(0)
    model = ResidualNet()
    x = torch.randn(16, 3, 16, 16)
    inst, algo, runner = _attached(model, x, ramp_epochs=0)
    joint = algo.phases()[-1]
    assert joint.name == "joint" and joint.train_model and joint.train_method
    assert joint.method_lr == pytest.approx(0.01 * algo.config.lr)
    algo.start_phase(joint)
    values = algo._gate_values()
    flat = torch.cat([v.detach() for v in values])
    assert bool(((flat == 0) | (flat == 1)).all()) and bool((flat == 0).any())
    # the gate point's output is exactly zero on closed channels
    seen = {}
    bn = model.a[0][1]  # 'a.0.1': the BN after the first conv of block a (its own group)

    def record(module, inputs, output):
        seen["out"] = output.detach()  # returns None: the output is left as it is

    handle = bn.register_forward_hook(record)
    model.train()
    loss = nn.functional.cross_entropy(model(x), torch.randint(0, 10, (16,)))
    handle.remove()
    gi = next(g.index for g in inst.groups if "a.0.1" in g.gate_names)
    closed = ~algo.masks()[gi]
    assert bool(closed.any())
    assert bool((seen["out"][:, closed] == 0).all())
    loss.backward()
    grads = algo.m[gi].grad
    assert bool((grads[~closed] == 0).all())  # eq. (5): kept channels get nothing
    assert bool((grads[closed] != 0).any())  # closed ones do (through ReLU at 0)
    algo.detach()
    inst.remove()
    assert count_hooks(model) == 0


@pytest.mark.parametrize("arch, ste", [("resnet20", "paper"), ("residual", "paper"), ("residual", "clipped")])
def test_budget_met_and_model_shrinks(arch, ste):
    build, shape = ARCHS[arch]
    torch.manual_seed(0)
    model = build()
    r = attnprune.prune(model, synthetic_loader(shape), 0.5, method="abp", ste=ste, **FAST)
    rep = r.report
    assert abs(rep.ratio_achieved - 0.5) <= 0.01
    params, _ = fvcore_counts(r.model, torch.randn(2, *shape))
    assert params == rep.params_after
    assert abs(1 - params / rep.params_before - 0.5) <= 0.01
    assert count_hooks(r.model) == 0
    assert rep.method_report["final_ratio_in_training"] == 0.5
    assert rep.method_report["threshold_exceptions"] == 0
    assert not any(h.phase == "finetune" for h in rep.history)  # no fine-tuning by default


def test_trained_gates_are_removed_and_gated_equals_pruned():
    torch.manual_seed(0)
    model = resnet20(in_channels=1)
    x = torch.randn(8, 1, 28, 28)
    inst, algo, runner = _attached(model, x, joint_epochs=2, ramp_epochs=1)
    for phase in algo.phases():
        runner.run(model, phase, algo)
    sel = algo.select()
    assert abs(sel.ratio - 0.5) <= 0.01
    assert algo.report()["frozen_steps"] > 0  # the default freezes the masks for the last steps
    # the binary gates in force at the end of training are the ones removed
    assert all(torch.equal(a, b) for a, b in zip(algo.masks(), sel.masks))
    model.eval()
    with torch.no_grad():
        trained = model(x)
    inst.set_masks(sel.masks)
    inst.mode = "binary"
    with torch.no_grad():
        gated = model(x)
    assert outputs_close(trained, gated, 1e-6)[0]
    algo.detach()
    pruned = inst.finalize(verify=False)
    with torch.no_grad():
        out = pruned(x)
    ok, err = outputs_close(gated, out, 1e-4)
    assert ok, err
    assert count_hooks(pruned) == 0


def _masks_every_step(algo, runner, model):
    """Run the joint phase; return the gates each step ran with (plus the final ones) and m before each step."""
    seen, ms = [], []
    real = algo.before_step

    def spy(phase, step):
        real(phase, step)
        seen.append(algo.masks())
        ms.append([p.detach().clone() for p in algo.m])

    algo.before_step = spy
    for phase in algo.phases():
        runner.run(model, phase, algo)
    seen.append(algo.masks())
    ms.append([p.detach().clone() for p in algo.m])
    return seen, ms


def _changed(a, b):
    return sum(int((x != y).sum()) for x, y in zip(a, b))


@pytest.mark.parametrize("freeze_fraction", [0.5, 0.0])
def test_flips_per_epoch_and_frozen_masks(freeze_fraction):
    torch.manual_seed(0)
    model = ResidualNet()
    # m moves fast (lr(m) = lr) so that the masks churn while they may
    inst, algo, runner = _attached(model, torch.randn(4, 3, 16, 16), joint_epochs=3, ramp_epochs=1,
                                   m_lr_factor=1.0, freeze_fraction=freeze_fraction)
    n = runner.steps_in_epoch()
    seen, ms = _masks_every_step(algo, runner, model)
    assert len(seen) == 3 * n + 1
    # the count: gates that changed between consecutive steps, by the epoch of the step that changed them
    expected = [sum(_changed(seen[s], seen[s + 1]) for s in range(e * n, (e + 1) * n)) for e in range(3)]
    rep = algo.report()
    assert rep["flips_per_epoch"] == expected and rep["flips_total"] == sum(expected)
    assert expected[1] > 0  # at the full budget the masks churn while they may move
    if freeze_fraction:
        # last half of the two post-ramp epochs: epoch 3 runs with the masks of its first step
        assert rep["freeze_step"] == 2 * n and rep["frozen_steps"] == n
        assert expected[2] == 0
        assert all(_changed(seen[2 * n], seen[s]) == 0 for s in range(2 * n, 3 * n + 1))
        assert all(torch.equal(a, b) for s in range(2 * n, 3 * n + 1) for a, b in zip(ms[2 * n], ms[s]))
    else:
        assert rep["freeze_step"] is None and rep["frozen_steps"] == 0
        assert expected[2] > 0  # without the freeze the last epoch churns too (so the check above can fail)
    # what was trained last is what is removed
    assert all(torch.equal(a, b) for a, b in zip(seen[-1], algo.select().masks))
    algo.detach()
    inst.remove()


def test_frozen_steps_give_m_no_gradient_and_no_pull():
    torch.manual_seed(0)
    model = ResidualNet()
    x = torch.randn(16, 3, 16, 16)
    inst, algo, _ = _attached(model, x, ramp_epochs=0, freeze_fraction=1.0)
    joint = algo.phases()[-1]
    algo.start_phase(joint)
    assert algo.freeze_step == 0 and algo.frozen
    assert algo.regularizer(joint) is None
    model.train()
    nn.functional.cross_entropy(model(x), torch.randint(0, 10, (16,))).backward()
    assert all(p.grad is not None and bool((p.grad == 0).all()) for p in algo.m)  # in the graph, gradient 0
    algo.detach()
    inst.remove()


@pytest.mark.parametrize("options, expected", [
    (dict(ramp_epochs=1), 2 * 10),                     # post-ramp 20 steps, last 10 frozen
    (dict(ramp_epochs=2), 30 - 5),                     # post-ramp 10 steps, last 5 frozen
    (dict(ramp_epochs=1, freeze_fraction=1.0), 10),    # frozen as soon as the ramp ends
    (dict(ramp_epochs=1, freeze_fraction=0.0), None),  # never (the paper's one stage)
    (dict(ramp_epochs=3), None),                       # the ramp fills the phase
    (dict(ramp_epochs=3, threshold_mode="fixed"), 15),  # fixed mode: no ramp, half of all steps
])
def test_freeze_start(options, expected):
    algo = ABPMethod(joint_epochs=3, **options)
    algo.context = Context(steps_per_epoch=10)
    algo.ramp_steps = algo.config.ramp_epochs * 10
    assert algo.freeze_start() == expected
    algo.context = Context(steps_per_epoch=None)  # epoch length unknown: nothing is frozen
    assert algo.freeze_start() is None


def test_fixed_threshold_reports_the_ratio_reached():
    torch.manual_seed(0)
    r = attnprune.prune(ResidualNet(), synthetic_loader((3, 16, 16)), 0.5, method="abp", threshold_mode="fixed",
                        t0=0.5, **FAST)
    mr = r.report.method_report
    assert mr["threshold_mode"] == "fixed"
    assert mr["ratio_reached"] == pytest.approx(r.report.ratio_achieved)
    assert mr["ratio_error"] == pytest.approx(r.report.ratio_achieved - 0.5)
    assert 0 < r.report.ratio_achieved < 1


def test_learned_importance_serves_abs_m():
    torch.manual_seed(0)
    model = ResidualNet()
    inst, algo, _ = _attached(model, torch.randn(4, 3, 16, 16))
    algo.start_phase(algo.phases()[-1])
    imp = attnprune.LearnedImportance(algo)
    assert algo.normalize is None
    g = inst.groups[1]
    tp_group = inst.graph.get_pruning_group(g.root_module, g.root_fn, list(range(g.n_channels)))
    assert torch.allclose(imp(tp_group), algo.m[1].detach().abs())
    assert algo.m[1].detach().mean().item() == pytest.approx(1.0, rel=1e-5)  # L1 init, mean 1
    algo.detach()
    inst.remove()


def test_unreachable_ratio_fails_before_training():
    with pytest.raises(attnprune.BudgetError, match="largest reachable"):
        # with round_to=8 every group keeps at least 8 channels: 95% is out of reach
        attnprune.prune(ResidualNet(), synthetic_loader((3, 16, 16)), 0.95, method="abp", **{**FAST, "round_to": 8})


@pytest.mark.parametrize("bad, match", [
    (dict(ste="sign"), "'ste' of ABPConfig must be one of"),
    (dict(threshold_mode="auto"), "'threshold_mode' of ABPConfig must be one of"),
    (dict(t0=1.5), r"'t0' of ABPConfig must be a number > 0 and < 1"),
    (dict(pull=-1), "'pull' of ABPConfig must be"),
    (dict(freeze_fraction=1.5), "'freeze_fraction' of ABPConfig must be"),
    (dict(nonsense=1), "valid options"),
])
def test_bad_options(bad, match):
    with pytest.raises(ValueError, match=match):
        ABPMethod(**bad)
