"""ASWL (He, Shi, Dong): unstructured layer-attention pruning, and its structured variant."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torchvision
from torch.nn.utils import parametrize

import attnprune
import attnprune.methods.aswl  # noqa: F401  (registration, before methods/__init__ imports it)
from attnprune.core.instrument import outputs_close
from attnprune.methods.aswl import ASWLMethod, layer_ratios
from attnprune.methods.aswl_structured import ASWLStructuredMethod
from attnprune.methods.base import Budget, Context
from attnprune.models import resnet20
from attnprune.train.runner import Runner

from _util import (
    MLP,
    TOY_MODELS,
    BiasNoNormNet,
    ResidualNet,
    count_hooks,
    fvcore_counts,
    random_masks,
    randomize_bn,
    synthetic_loader,
)

FAST = dict(joint_epochs=2, ramp_epochs=1, progress=False, seed=0, round_to=1)  # free counts: ±1 point


ARCHS = {
    "resnet20": (lambda: resnet20(in_channels=1), (1, 28, 28)),
    "residual": (ResidualNet, (3, 16, 16)),
}


def _zeros(model):
    return sum(int((p == 0).sum()) for p in model.parameters()), sum(p.numel() for p in model.parameters())


def test_registered():
    assert {"aswl", "aswl-structured"} <= set(attnprune.available_methods())


def test_layer_ratio_formula():
    a = torch.tensor([0.5, 0.9, 0.01], requires_grad=True)
    p = layer_ratios(a, 1.5)
    assert torch.allclose(p, torch.tensor([0.75, 0.15, 0.99]))  # min(0.99, beta * (1 - a))
    p.sum().backward()
    assert a.grad.tolist() == [-1.5, -1.5, 0.0]  # capped layers get no gradient


@pytest.mark.parametrize("arch", ["resnet20", "bias_no_norm"])
def test_unstructured_zeros_are_the_reported_sparsity_and_nothing_remains(arch):
    if arch == "resnet20":
        build, shape = ARCHS["resnet20"]
    else:
        build, shape = BiasNoNormNet, (3, 16, 16)
    torch.manual_seed(0)
    model = build()
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    r = attnprune.prune(model, synthetic_loader(shape), 0.5, method="aswl", **FAST)
    rep = r.report
    zeros, total = _zeros(r.model)
    assert abs(rep.ratio_achieved - 0.5) <= 0.01
    assert rep.ratio_achieved == zeros / total  # exact zeros in .model
    assert rep.params_after == total - zeros  # nonzero count, not a smaller model
    assert rep.method_report["nonzero_params"] == total - zeros
    assert rep.method_report["sparsity"] == rep.ratio_achieved
    assert "nonzero" in rep.method_report["note"]
    assert "unstructured" in rep.summary() and f"{total - zeros:,} nonzero" in rep.summary()
    assert {n: tuple(p.shape) for n, p in r.model.named_parameters()} == shapes  # same dense shapes
    assert count_hooks(r.model) == 0
    for m in r.model.modules():
        assert not parametrize.is_parametrized(m)
        assert "parametrizations" not in m._modules
        assert not type(m).__name__.startswith("Parametrized")  # the class parametrize injects is gone
    # the model's own weights hold the zeros (no mask left anywhere)
    conv_zeros = sum(int((m.weight == 0).sum()) for m in r.model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert conv_zeros == zeros


def test_unstructured_plain_model_equals_masked_attended_model():
    torch.manual_seed(0)
    model = MLP()  # Linear -> BatchNorm1d folds into the norm, Linear -> ReLU into the layer
    x = torch.randn(16, 3, 16, 16)
    inst = attnprune.instrument(model, x)
    algo = ASWLMethod(joint_epochs=1, ramp_epochs=1)
    runner = Runner(loader=synthetic_loader((3, 16, 16)), loss_fn=nn.functional.cross_entropy, progress=False)
    algo.attach(inst, Budget(0.6), Context(steps_per_epoch=runner.steps_in_epoch()))
    for phase in algo.phases():
        runner.run(model, phase, algo)
    att = algo.attention()
    assert not torch.allclose(att, torch.full_like(att, 0.5))  # the attentions trained
    beta = algo.solve_beta(0.6)
    algo.apply_beta(beta)
    model.eval()
    with torch.no_grad():
        reference = model(x)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sel = algo.select()
    assert abs(sel.ratio - 0.6) <= 0.01
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items()), "select() changes no weight"
    algo.commit(sel)
    zeros, total = _zeros(model)
    assert (sel.ratio, sel.params) == (zeros / total, total - zeros)  # select() predicted what commit() wrote
    with torch.no_grad():
        out = model(x)
    ok, err = outputs_close(reference, out, 1e-5)
    assert ok, err
    algo.detach()
    inst.remove()
    assert count_hooks(model) == 0


def test_unstructured_fixed_epochs_keep_the_final_ratio():
    torch.manual_seed(0)
    r = attnprune.prune(ResidualNet(), synthetic_loader((3, 16, 16)), 0.3, method="aswl", fixed_epochs=1, **FAST)
    zeros, total = _zeros(r.model)
    assert abs(zeros / total - 0.3) <= 0.01
    assert [h.phase for h in r.report.history] == ["joint", "joint", "fixed"]


def test_unstructured_rejects_finetuning_and_unreachable_ratio():
    with pytest.raises(ValueError, match="finetune_epochs must be 0"):
        ASWLMethod(finetune_epochs=1)
    with pytest.raises(attnprune.BudgetError, match="largest reachable"):
        attnprune.prune(ResidualNet(), synthetic_loader((3, 16, 16)), 0.999, method="aswl", **FAST)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_structured_budget_met_and_model_shrinks(arch):
    build, shape = ARCHS[arch]
    torch.manual_seed(0)
    r = attnprune.prune(build(), synthetic_loader(shape), 0.5, method="aswl-structured", finetune_epochs=0, **FAST)
    rep = r.report
    assert abs(rep.ratio_achieved - 0.5) <= 0.01
    params, _ = fvcore_counts(r.model, torch.randn(2, *shape))
    assert params == rep.params_after
    assert abs(1 - params / rep.params_before - 0.5) <= 0.01
    assert count_hooks(r.model) == 0
    assert rep.method_report["structured"] is True


def test_structured_gates_scores_fold_and_gated_equals_pruned():
    torch.manual_seed(0)
    model = ResidualNet()
    x = torch.randn(8, 3, 16, 16)
    inst = attnprune.instrument(model, x)
    algo = ASWLStructuredMethod(joint_epochs=1, ramp_epochs=1, finetune_epochs=0)
    runner = Runner(loader=synthetic_loader((3, 16, 16)), loss_fn=nn.functional.cross_entropy, progress=False)
    algo.attach(inst, Budget(0.5), Context(steps_per_epoch=runner.steps_in_epoch()))
    phases = algo.phases()
    algo.start_phase(phases[-1])
    # the analog gate of every channel of group g is a_g (init 0.5)
    assert all(torch.equal(v.detach(), torch.full_like(v, 0.5)) for v in algo._gate_values())
    for phase in phases:
        runner.run(model, phase, algo)
    sel = algo.select()
    assert abs(sel.ratio - 0.5) <= 0.01
    # rank scores: kept channels above 1, closed below; a global threshold at 1 reproduces it
    scores = algo.scores()
    assert all(torch.equal(s > 1, m) for s, m in zip(scores, sel.masks))
    same = attnprune.select_channels(inst.cost, scores, 0.5, normalize=None)
    assert abs(same.ratio - 0.5) <= 0.01
    imp = attnprune.LearnedImportance(algo)
    g = inst.groups[0]
    tp_group = inst.graph.get_pruning_group(g.root_module, g.root_fn, list(range(g.n_channels)))
    assert torch.equal(imp(tp_group), scores[0])
    # reference: trained analog gates a_g on kept channels, 0 on closed ones
    att = algo.att.detach()
    inst.set_scores([att[i] * m.float() for i, m in enumerate(sel.masks)])
    inst.mode = "analog"
    model.eval()
    with torch.no_grad():
        analog = model(x)
    inst.set_masks(sel.masks)
    inst.mode = "binary"
    algo.commit(sel)  # places a_g downstream: next norms' statistics, the head's weights
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    algo.detach()  # removes what the method added, changes no weight
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())
    with torch.no_grad():
        gated = model(x)
    ok, err = outputs_close(analog, gated, 1e-5)
    assert ok, err
    pruned = inst.finalize(verify=True)
    with torch.no_grad():
        out = pruned(x)
    ok, err = outputs_close(gated, out, 1e-4)
    assert ok, err
    assert count_hooks(pruned) == 0


@pytest.mark.parametrize("cls", [ASWLMethod, ASWLStructuredMethod])
def test_detach_alone_changes_no_weight(cls):
    """The error path only detaches: nothing is folded or zeroed, the dense weights stay."""
    torch.manual_seed(0)
    model = ResidualNet()
    inst = attnprune.instrument(model, torch.randn(4, 3, 16, 16))
    algo = cls(joint_epochs=1, ramp_epochs=1)
    runner = Runner(loader=synthetic_loader((3, 16, 16)), loss_fn=nn.functional.cross_entropy, progress=False)
    algo.attach(inst, Budget(0.5), Context(steps_per_epoch=runner.steps_in_epoch()))
    for phase in algo.phases():
        runner.run(model, phase, algo)
    assert not torch.allclose(algo.attention(), torch.full_like(algo.attention(), 0.5))
    algo.select()
    dense = {n: (m.parametrizations.weight.original if parametrize.is_parametrized(m, "weight") else m.weight).clone()
             for n, m in model.named_modules() if isinstance(getattr(m, "weight", None), torch.Tensor)}
    algo.detach()
    inst.remove()
    assert all(torch.equal(w, dict(model.named_modules())[n].weight) for n, w in dense.items())
    assert count_hooks(model) == 0 and not any(parametrize.is_parametrized(m) for m in model.modules())


def _gated_reference(model, inst, algo, masks, x):
    """Eval output of the trained model gated by ``a_g`` on kept channels and 0 on closed ones."""
    att = algo.att.detach()
    inst.set_scores([att[i] * m.float() for i, m in enumerate(masks)])
    inst.mode = "analog"
    model.eval()
    with torch.no_grad():
        return model(x)


def _commit_and_prune(model, inst, algo, masks, x):
    inst.set_masks(masks)
    inst.mode = "binary"
    algo.commit(None)
    algo.detach()
    pruned = inst.finalize(verify=True)
    with torch.no_grad():
        return pruned(x)


RESIDUAL_ZOO = {
    "resnet20": (lambda: resnet20(in_channels=1), (1, 28, 28)),
    "torchvision_resnet18": (lambda: torchvision.models.resnet18(num_classes=10), (3, 32, 32)),
}


@pytest.mark.parametrize("arch", list(RESIDUAL_ZOO))
def test_structured_trained_gated_model_equals_pruned_on_residual_nets(arch):
    """The core invariant end to end: joint training, select, commit, remove; eval outputs unchanged."""
    build, shape = RESIDUAL_ZOO[arch]
    torch.manual_seed(0)
    model = build()
    x = torch.randn(4, *shape)
    inst = attnprune.instrument(model, x)
    algo = ASWLStructuredMethod(joint_epochs=1, ramp_epochs=1, finetune_epochs=0, att_lr=0.25, a_min=0.01)
    runner = Runner(loader=synthetic_loader(shape, n=48), loss_fn=nn.functional.cross_entropy, progress=False)
    algo.attach(inst, Budget(0.5), Context(steps_per_epoch=runner.steps_in_epoch()))
    for phase in algo.phases():
        runner.run(model, phase, algo)
    assert float(algo.attention().min()) < 0.1  # small attentions: the case that broke fine-tuning
    sel = algo.select()
    ref = _gated_reference(model, inst, algo, sel.masks, x)
    placement = algo.report()["attention_placement"]
    # ReLU nets: every group's scale goes downstream, the stream's reaches the head's weights
    assert all("norm_statistics" in p for p in placement.values())
    assert any(p["weights"] == ["fc"] for p in placement.values())
    ok, err = outputs_close(ref, _commit_and_prune(model, inst, algo, sel.masks, x), 1e-4)
    assert ok, err


@pytest.mark.parametrize("arch", list(TOY_MODELS))
def test_structured_placement_keeps_gated_equal_to_pruned(arch):
    """Tiny random attentions on every toy topology (concat, depthwise, SE, biased convs, ...): exact."""
    torch.manual_seed(0)
    model = randomize_bn(TOY_MODELS[arch]())
    x = torch.randn(4, 3, 16, 16)
    inst = attnprune.instrument(model, x)
    algo = ASWLStructuredMethod(joint_epochs=1, ramp_epochs=1, finetune_epochs=0)
    algo.attach(inst, Budget(0.5), Context(steps_per_epoch=1))
    with torch.no_grad():
        algo.att.copy_(torch.rand(len(inst.groups)) * 0.05 + 0.01)
    masks = random_masks(inst.groups, 0.6)
    ref = _gated_reference(model, inst, algo, masks, x)
    ok, err = outputs_close(ref, _commit_and_prune(model, inst, algo, masks, x), 1e-4)
    assert ok, err


def test_structured_commit_leaves_every_norm_affine_alone():
    """No BN gamma/beta is multiplied by a_g (old behaviour: gamma *= a_g, 0.01 to 0.05 after training).

    The next norm's running statistics take the scale instead: mean / a, (var + eps) / a**2 - eps.
    """
    torch.manual_seed(0)
    model = randomize_bn(resnet20(in_channels=1))
    x = torch.randn(4, 1, 28, 28)
    inst = attnprune.instrument(model, x)
    algo = ASWLStructuredMethod(joint_epochs=1, ramp_epochs=1, finetune_epochs=0)
    algo.attach(inst, Budget(0.5), Context(steps_per_epoch=1))
    with torch.no_grad():
        algo.att.fill_(0.02)
    bns = {n: m for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    affine = {n: (m.weight.clone(), m.bias.clone()) for n, m in bns.items()}
    stats = {n: (m.running_mean.clone(), m.running_var.clone()) for n, m in bns.items()}
    fc = model.fc.weight.clone()
    algo.commit(None)
    for n, m in bns.items():
        assert torch.equal(m.weight, affine[n][0]) and torch.equal(m.bias, affine[n][1]), n
    # layer1.0.bn2 reads conv2(relu(a * bn1(...))): its statistics were collected on a-scaled inputs
    bn2 = model.layer1[0].bn2
    mean, var = stats["layer1.0.bn2"]
    torch.testing.assert_close(bn2.running_mean, mean / 0.02)
    torch.testing.assert_close(bn2.running_var, (var + bn2.eps) / 0.02**2 - bn2.eps)
    torch.testing.assert_close(model.fc.weight, fc * 0.02)  # the head has no norm after it
    inst.remove()


def test_structured_detach_changes_no_parameter_or_statistic():
    """Error path: detach() alone places nothing: weights, biases and BN statistics stay bit for bit."""
    torch.manual_seed(0)
    model = ResidualNet()
    inst = attnprune.instrument(model, torch.randn(4, 3, 16, 16))
    algo = ASWLStructuredMethod(joint_epochs=1, ramp_epochs=1, att_lr=0.2)
    runner = Runner(loader=synthetic_loader((3, 16, 16)), loss_fn=nn.functional.cross_entropy, progress=False)
    algo.attach(inst, Budget(0.5), Context(steps_per_epoch=runner.steps_in_epoch()))
    for phase in algo.phases():
        runner.run(model, phase, algo)
    assert float(algo.attention().max()) < 0.9  # placing a_g would change the state
    algo.select()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    algo.detach()
    inst.remove()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_structured_mask_training_and_macs_target():
    torch.manual_seed(0)
    r = attnprune.prune(ResidualNet(), synthetic_loader((3, 16, 16)), 0.4, method="aswl-structured", target="macs",
                        mask_training=True, finetune_epochs=0, **FAST)
    assert abs(r.report.ratio_achieved - 0.4) <= 0.01
    assert abs(1 - r.report.macs_after / r.report.macs_before - 0.4) <= 0.01


@pytest.mark.parametrize("cls, bad, match", [
    (ASWLMethod, dict(lam=-1), "'lam' of ASWLConfig must be"),
    (ASWLMethod, dict(beta=0), "'beta' of ASWLConfig must be"),
    (ASWLMethod, dict(a_min=0.7), "'a_min' of ASWLConfig must be"),
    (ASWLStructuredMethod, dict(fixed_epochs=1), "fixed_epochs is for"),
    (ASWLStructuredMethod, dict(mask_training=1), "mask_training.* must be True or False"),
])
def test_bad_options(cls, bad, match):
    with pytest.raises(ValueError, match=match):
        cls(**bad)
