"""Tests for attnprune.deploy.metrics."""

from __future__ import annotations

import copy

import pytest
import torch
import torch_pruning as tp
import torchvision
from torch import nn

from attnprune.deploy.metrics import (
    LayerStat,
    count_macs,
    count_params,
    format_table,
    layer_table,
    summarize,
)


def toy_net() -> nn.Sequential:
    """Conv(3->8, 3x3) - BN - ReLU - GAP - Linear(8->4)."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )


@pytest.fixture(scope="module")
def resnets():
    torch.manual_seed(0)
    dense = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    pruned = copy.deepcopy(dense)
    tp.pruner.MetaPruner(
        pruned,
        x,
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=0.5,
        ignored_layers=[pruned.fc],
    ).step()
    return dense, pruned, x


# --------------------------------------------------------------------------- params
def _count_from_layer_shapes(model: nn.Module) -> int:
    """Parameters from each layer's hyper-parameters (not from its tensors)."""
    total = 0
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            kh, kw = m.kernel_size
            weights = m.out_channels * (m.in_channels // m.groups) * kh * kw
            total += weights + (m.out_channels if m.bias is not None else 0)
        elif isinstance(m, nn.BatchNorm2d):
            total += 2 * m.num_features if m.affine else 0
        elif isinstance(m, nn.Linear):
            total += m.out_features * m.in_features + (m.out_features if m.bias is not None else 0)
        else:
            assert not list(m.parameters(recurse=False)), f"uncounted parameters in {type(m).__name__}"
    return total


def test_count_params_toy_matches_hand_count():
    net = toy_net()
    conv = 3 * 8 * 3 * 3 + 8
    bn = 8 + 8  # weight + bias (running stats are buffers, not parameters)
    fc = 8 * 4 + 4
    assert count_params(net) == conv + bn + fc == 276


def test_count_params_shared_parameter_counted_once():
    lin = nn.Linear(4, 4)
    net = nn.Sequential(lin, nn.ReLU(), lin)
    assert count_params(net) == 4 * 4 + 4 == 20


def test_count_params_pruned_model(resnets):
    dense, pruned, _ = resnets
    assert count_params(dense) == 11_181_642  # torchvision's ResNet-18 with a 10-class head
    assert count_params(pruned) == _count_from_layer_shapes(pruned)
    assert count_params(pruned) == sum(p.numel() for p in pruned.parameters())
    assert count_params(pruned) < count_params(dense) / 3


def test_count_params_rejects_non_module():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        count_params([nn.Linear(2, 2)])


# --------------------------------------------------------------------------- MACs
@pytest.mark.parametrize(
    "conv, hw, expected",
    [
        # Cout * Hout * Wout * (Cin / groups) * kh * kw
        (nn.Conv2d(3, 16, 3, padding=1), (10, 12), 16 * 10 * 12 * 3 * 3 * 3),
        (nn.Conv2d(8, 16, 3, stride=2, groups=4), (9, 9), 16 * 4 * 4 * 2 * 3 * 3),
        (nn.Conv2d(4, 6, (1, 5), bias=False), (7, 9), 6 * 7 * 5 * 4 * 1 * 5),
    ],
)
def test_count_macs_single_conv_matches_formula(conv, hw, expected):
    for batch in (1, 5):
        x = torch.randn(batch, conv.in_channels, *hw)
        assert count_macs(conv, x) == expected


def test_count_macs_linear_and_tuple_inputs():
    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(32, 10)
            self.b = nn.Linear(16, 10)

        def forward(self, x, y):
            return self.a(x) + self.b(y)

    net = TwoInputs()
    assert count_macs(net, (torch.randn(3, 32), torch.randn(3, 16))) == 32 * 10 + 16 * 10
    assert count_macs(net, [torch.randn(1, 32), torch.randn(1, 16)]) == 480


def test_count_macs_per_sample_independent_of_batch(resnets):
    dense, pruned, x = resnets
    assert count_macs(dense, x) == count_macs(dense, x[:1]) == count_macs(dense, torch.cat([x, x]))
    assert count_macs(pruned, x) < count_macs(dense, x) / 3


def test_count_macs_restores_train_mode_of_every_submodule():
    net = toy_net().train()
    net[1].eval()  # mixed modes must come back exactly
    before = [m.training for m in net.modules()]
    count_macs(net, torch.randn(2, 3, 8, 8))
    layer_table(net, torch.randn(2, 3, 8, 8))
    assert [m.training for m in net.modules()] == before
    # Counting in eval mode: BN running stats untouched.
    assert torch.equal(net[1].running_mean, torch.zeros(8))


def test_count_macs_bad_inputs():
    net = toy_net()
    with pytest.raises(TypeError, match="example_inputs"):
        count_macs(net, "image")
    with pytest.raises(ValueError, match="batch dimension"):
        count_macs(net, torch.randn(0, 3, 8, 8))
    with pytest.raises(ValueError, match="at least one torch.Tensor"):
        count_macs(net, (1, 2))
    with pytest.raises(TypeError, match="model"):
        count_macs("net", torch.randn(1, 3, 8, 8))


# --------------------------------------------------------------------------- table
def test_layer_table_toy():
    net = toy_net()
    rows = layer_table(net, torch.randn(4, 3, 10, 10))
    assert [r.name for r in rows] == ["0", "1", "5"]
    assert [r.type for r in rows] == ["Conv2d", "BatchNorm2d", "Linear"]
    assert [r.params for r in rows] == [224, 16, 36]
    assert [r.out_channels for r in rows] == [8, 8, 4]
    assert rows[0].macs == 8 * 8 * 8 * 3 * 3 * 3
    assert rows[2].macs == 8 * 4
    assert all(isinstance(r, LayerStat) for r in rows)
    assert rows[0].to_dict()["name"] == "0"


def test_layer_table_pruned_resnet(resnets):
    dense, pruned, x = resnets
    rows = {r.name: r for r in layer_table(pruned, x)}
    dense_rows = {r.name: r for r in layer_table(dense, x)}
    assert set(rows) == set(dense_rows)
    assert dense_rows["conv1"].out_channels == 64
    assert rows["conv1"].out_channels == 32
    assert rows["layer1.0.bn1"].out_channels == 32
    assert rows["fc"].out_channels == 10
    assert sum(r.params for r in rows.values()) == count_params(pruned)
    total = count_macs(pruned, x)
    listed = sum(r.macs for r in rows.values())
    # Everything except the global pooling is inside conv/linear/norm leaves.
    assert 0.99 * total < listed <= total


def test_format_table_markdown():
    rows = [
        LayerStat("conv", "Conv2d", 224, 1728, 8),
        LayerStat("ln", "LayerNorm", 16, 32, None),
    ]
    text = format_table(rows)
    lines = text.splitlines()
    assert lines[0] == "| Layer | Type | Params | MACs | Out channels |"
    assert lines[1].startswith("|:--")
    assert "| conv | Conv2d | 224 | 1,728 | 8 |" in lines
    assert "| ln | LayerNorm | 16 | 32 | - |" in lines
    assert "240" in lines[-1] and "1,760" in lines[-1]
    with pytest.raises(TypeError, match=r"rows\[0\] must be a LayerStat"):
        format_table([("conv", 1)])


def test_summarize(resnets):
    dense, _, x = resnets
    assert summarize(dense, x) == {"params": count_params(dense), "macs": count_macs(dense, x)}
    assert summarize(toy_net(), torch.randn(1, 3, 10, 10)) == {
        "params": 276,
        "macs": 8 * 64 * 27 + 2 * 8 * 64 + 8 * 64 + 8 * 4,  # conv, affine BN, GAP (per input), fc
    }
