"""The core invariant: a model with closed gates == the physically pruned model."""

from __future__ import annotations

import copy
import pickle
import warnings

import pytest
import torch
import torch.nn as nn
import torchvision

import attnprune
from attnprune.core.instrument import outputs_close
from attnprune.models import resnet20

from _util import TOY_MODELS, count_hooks, fvcore_counts, random_masks, randomize_bn

TORCHVISION = [
    "resnet18", "resnet50", "vgg11_bn", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0",
    "densenet121", "googlenet", "regnet_x_400mf", "squeezenet1_0", "alexnet",
]


def _build(name):
    if name in TOY_MODELS:
        return TOY_MODELS[name](), torch.randn(4, 3, 16, 16)
    if name == "cifar_resnet20":
        return resnet20(in_channels=1), torch.randn(4, 1, 28, 28)
    kw = {"aux_logits": False, "init_weights": True} if name == "googlenet" else {}
    return getattr(torchvision.models, name)(weights=None, **kw), torch.randn(2, 3, 64, 64)


def check_equivalence(model, x, seed=0):
    torch.manual_seed(seed)
    model = randomize_bn(model, seed).eval()
    inst = attnprune.instrument(model, x)
    masks = random_masks(inst.groups, 0.5, seed)
    inst.set_masks(masks)
    inst.mode = "binary"
    with torch.no_grad():
        gated = model(x)
    params, macs = inst.count()
    shapes_before = {n: tuple(p.shape) for n, p in model.named_parameters()}
    pruned = inst.finalize(verify=False)
    assert pruned is model
    with torch.no_grad():
        out = pruned(x)
    ok, err = outputs_close(gated, out, 1e-4)
    assert ok, f"gated and pruned outputs differ by {err:.3g} (relative)"
    fv_params, fv_macs = fvcore_counts(pruned, x)
    assert params == fv_params
    assert abs(macs - fv_macs) <= 0.01 * fv_macs
    assert count_hooks(pruned) == 0
    shrunk = [n for n, p in pruned.named_parameters() if tuple(p.shape) != shapes_before[n]]
    closed = sum(int((~m).sum()) for m in masks)
    assert closed > 0 and shrunk, "random masks closed channels, so some layers must shrink"
    return inst


@pytest.mark.parametrize("name", list(TOY_MODELS) + ["cifar_resnet20"])
def test_equivalence_toy_models(name):
    model, x = _build(name)
    check_equivalence(model, x)


@pytest.mark.parametrize("name", TORCHVISION)
def test_equivalence_torchvision(name):
    model, x = _build(name)
    check_equivalence(model, x)


def test_output_layer_keeps_its_channels():
    model, x = _build("cifar_resnet20")
    inst = attnprune.instrument(model, x)
    assert inst.output_layers == ["fc"]
    assert all("fc" not in [s.name for s in g.spans if s.role == "out"] for g in inst.groups)
    inst.set_masks(random_masks(inst.groups))
    pruned = inst.finalize()
    assert pruned.fc.out_features == 10


def test_squeezenet_output_conv_is_kept():
    model = torchvision.models.squeezenet1_0(num_classes=7)
    inst = attnprune.instrument(model, torch.randn(1, 3, 64, 64))
    assert inst.output_layers == ["classifier.1"]
    inst.remove()


def test_group_surface_and_ch_groups():
    model, x = _build("grouped_conv")
    inst = attnprune.instrument(model, x)
    by_name = {g.name: g for g in inst.groups}
    g = by_name["body.0.0"]  # feeds the grouped conv's input
    assert g.n_channels == 32 and g.ch_groups == 4
    assert g.modules == ("body.0.0", "body.0.1", "body.1.0")
    assert g.gate_names == ("body.0.1",)
    bad = [torch.ones(h.n_channels, dtype=torch.bool) for h in inst.groups]
    bad[g.index][3] = False  # closes channel 3 of conv group 0 only
    with pytest.raises(ValueError, match="repeat one pattern"):
        inst.set_masks(bad)
    inst.remove()


def test_concat_norm_takes_gates_from_several_groups():
    model, x = _build("concat")
    inst = attnprune.instrument(model, x)
    touching = [g.name for g in inst.groups if "norm" in g.gate_names]
    assert touching == ["stem.0", "b1", "b2.0"]
    inst.remove()


@pytest.mark.parametrize(
    "mutate, error, match",
    [
        (lambda ms: ms[:-1], ValueError, "expected"),
        (lambda ms: [torch.zeros_like(ms[0])] + ms[1:], ValueError, "keeps no channel"),
        (lambda ms: [ms[0][:-1]] + ms[1:], ValueError, "shape"),
        (lambda ms: [ms[0].float()] + ms[1:], TypeError, "bool"),
    ],
)
def test_set_masks_rejects_bad_masks(mutate, error, match):
    model, x = _build("residual")
    inst = attnprune.instrument(model, x)
    good = [torch.ones(g.n_channels, dtype=torch.bool) for g in inst.groups]
    with pytest.raises(error, match=match):
        inst.set_masks(mutate(good))
    assert all(bool(m.all()) for m in inst.masks())
    inst.remove()


def test_bad_mode_and_inputs():
    model, x = _build("residual")
    with pytest.raises(ValueError, match="example_inputs"):
        attnprune.instrument(model, torch.randn(1, 5, 16, 16))
    assert count_hooks(model) == 0
    inst = attnprune.instrument(model, x)
    with pytest.raises(ValueError, match="'off', 'analog', 'binary'"):
        inst.mode = "soft"
    with pytest.raises(ValueError, match="already instrumented"):
        attnprune.instrument(model, x)
    inst.remove()


def test_remove_restores_model_exactly():
    model, x = _build("concat")
    model.train()
    model.bn.eval()
    before = copy.deepcopy(model.state_dict())
    params = [p for p in model.parameters()]
    modes = {n: m.training for n, m in model.named_modules()}
    inst = attnprune.instrument(model, x)
    inst.set_masks(random_masks(inst.groups))
    inst.mode = "binary"
    model.eval()
    model(x)
    inst.remove()
    inst.remove()  # idempotent
    assert count_hooks(model) == 0
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert [p for p in model.parameters()] == params
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_context_manager_removes_hooks_on_exception():
    model, x = _build("residual")
    with pytest.raises(RuntimeError, match="boom"):
        with attnprune.instrument(model, x) as inst:
            inst.mode = "binary"
            raise RuntimeError("boom")
    assert count_hooks(model) == 0
    assert "forward" not in vars(model)
    attnprune.instrument(model, x).remove()  # can be instrumented again


def test_ignored_layers_by_name_and_module():
    model, x = _build("residual")
    inst = attnprune.instrument(model, x, ignored_layers=["b.0.0", model.stem])
    names = [g.name for g in inst.groups]
    assert "b.0.0" not in names and "stem.0" not in names
    inst.remove()
    with pytest.raises(ValueError, match="no module named"):
        attnprune.instrument(model, x, ignored_layers=["nope"])
    assert count_hooks(model) == 0


def test_analog_mode_passes_gradients_to_scores():
    model, x = _build("residual")
    inst = attnprune.instrument(model, x)
    logits = [torch.zeros(g.n_channels, requires_grad=True) for g in inst.groups]
    calls = []

    def scores():
        calls.append(1)
        return [torch.sigmoid(t) * 2 for t in logits]  # starts at 1: the dense model

    inst.set_scores(scores)
    inst.mode = "analog"
    model.eval()
    with torch.no_grad():
        inst.mode = "off"
        dense = model(x)
        inst.mode = "analog"
        assert outputs_close(dense, model(x), 1e-6)[0]
    calls.clear()
    model(x).square().sum().backward()
    assert len(calls) == 1, "scores are computed once per forward"
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in logits)
    inst.remove()


def test_finalized_model_pickles_exports_and_trains(tmp_path):
    model, x = _build("residual")
    inst = attnprune.instrument(model, x)
    inst.set_masks(random_masks(inst.groups))
    pruned = inst.finalize()
    clone = pickle.loads(pickle.dumps(pruned))
    assert outputs_close(pruned.eval()(x), clone.eval()(x), 1e-6)[0]
    pruned.train()
    opt = torch.optim.SGD(pruned.parameters(), lr=0.1)
    loss = nn.functional.cross_entropy(pruned(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    opt.step()
    torch.onnx.export(pruned.eval(), (x,), str(tmp_path / "m.onnx"), dynamo=False)
    assert (tmp_path / "m.onnx").stat().st_size > 0
    with pytest.raises(RuntimeError, match="finalized"):
        inst.set_masks(random_masks(inst.groups))


def test_finalize_verify_detects_a_wrong_gate():
    model, x = _build("residual")
    model = randomize_bn(model).eval()
    inst = attnprune.instrument(model, x)
    inst.set_masks(random_masks(inst.groups))
    inst._gates.remove()  # simulate a gate attnprune failed to place
    with pytest.raises(attnprune.EquivalenceError):
        inst.finalize()


def test_unsupported_architectures_raise_or_warn():
    with pytest.raises(attnprune.UnsupportedModelError, match="torch-pruning"):
        attnprune.instrument(torchvision.models.shufflenet_v2_x0_5(), torch.randn(1, 3, 64, 64))
    model = torchvision.models.convnext_tiny().eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        inst = attnprune.instrument(model, torch.randn(1, 3, 64, 64))
    assert any("LayerNorm" in str(w.message) for w in caught)
    assert inst.skipped and all("LayerNorm" in why for _, why in inst.skipped)
    inst.set_masks(random_masks(inst.groups))
    inst.finalize()  # what remains is gated exactly: verify passes


def test_model_without_prunable_groups():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    with pytest.raises(attnprune.UnsupportedModelError, match="no prunable channel group"):
        attnprune.instrument(model, torch.randn(2, 3, 2, 2))
    assert count_hooks(model) == 0


def test_analog_scores_give_back_what_was_set():
    model = resnet20(in_channels=1)
    inst = attnprune.instrument(model, torch.randn(1, 1, 28, 28))
    assert inst.analog_scores is None
    values = [torch.full((g.n_channels,), 0.5) for g in inst.groups]
    inst.set_scores(values)
    assert all(torch.equal(a, b) for a, b in zip(inst.analog_scores, values))
    fn = lambda: values  # noqa: E731
    inst.set_scores(fn)
    assert inst.analog_scores is fn
    inst.remove()


def test_filter_helpers_read_the_producers_in_root_order():
    from attnprune.core.filters import filter_l1, filter_rows

    model = resnet20(in_channels=1)
    inst = attnprune.instrument(model, torch.randn(1, 1, 28, 28))
    for g in inst.groups:
        rows = filter_rows(g)
        assert rows.shape == (g.n_channels, sum(s.module.weight[0].numel() for s in g.producers))
        assert torch.allclose(filter_l1(g), rows.detach().abs().sum(1), rtol=1e-5)
        span = g.producers[0]
        channel = int(span.root[0])
        w = span.module.weight[int(span.local[0])].flatten()
        assert torch.equal(rows[channel, : w.numel()], w)  # the first producer's filter, first in the row
    inst.remove()


def test_sole_norm_after_finds_the_norm_a_conv_feeds_alone():
    from attnprune.core.groups import sole_norm_after

    model = resnet20(in_channels=1)
    inst = attnprune.instrument(model, torch.randn(1, 1, 28, 28))
    assert sole_norm_after(inst.graph, model.layer1[0].conv1) is model.layer1[0].bn1
    assert sole_norm_after(inst.graph, model.fc) is None
    inst.remove()
