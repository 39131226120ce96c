"""Tests for attnprune.models (CIFAR ResNets and build_model)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attnprune.models import (
    MODELS,
    VALID_DEPTHS,
    CifarResNet,
    build_model,
    cifar_resnet,
    needs_rgb,
    resnet20,
)

# ResNet-20 with option-B shortcuts on 3-channel input: the 269,722 parameters
# of the option-A network plus two 1x1 convs and their BNs:
# (16*32 + 2*32) + (32*64 + 2*64) = 2,752.
RESNET20_PARAMS = 272_474


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("depth", VALID_DEPTHS)
def test_each_depth_builds_and_runs(depth):
    torch.manual_seed(0)
    gray = cifar_resnet(depth, in_channels=1).eval()
    rgb = cifar_resnet(depth, in_channels=3).eval()
    n = (depth - 2) // 6
    assert all(len(stage) == n for stage in (gray.layer1, gray.layer2, gray.layer3))
    with torch.no_grad():
        assert gray(torch.randn(2, 1, 28, 28)).shape == (2, 10)
        assert rgb(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_named_constructors_match_registry():
    assert set(MODELS) == {f"resnet{d}" for d in VALID_DEPTHS}
    for factory in MODELS.values():
        model = factory(num_classes=7, in_channels=1)
        assert isinstance(model, CifarResNet)
        assert model.fc.out_features == 7
        assert model.conv1.in_channels == 1


def test_resnet20_param_count():
    assert _num_params(resnet20(in_channels=3)) == RESNET20_PARAMS
    # ~0.27M as in He et al. (2016), Table 6: checked on the count from the architecture.
    assert round(_hand_count(3) / 1e6, 2) == 0.27


def _hand_count(n: int, in_channels: int = 3, num_classes: int = 10, widths=(16, 32, 64)) -> int:
    """Parameters of a 6n+2 CIFAR ResNet with option-B shortcuts, from its layer shapes."""
    def conv_bn(cin, cout, k):  # bias-free conv + BN weight and bias
        return cin * cout * k * k + 2 * cout

    total = conv_bn(in_channels, widths[0], 3)
    cin = widths[0]
    for stage, width in enumerate(widths):
        for block in range(n):
            total += conv_bn(cin, width, 3) + conv_bn(width, width, 3)
            if block == 0 and (stage > 0 or cin != width):
                total += conv_bn(cin, width, 1)
            cin = width
    return total + cin * num_classes + num_classes


@pytest.mark.parametrize("depth", VALID_DEPTHS)
def test_param_count_matches_the_architecture(depth):
    n = (depth - 2) // 6
    assert _num_params(cifar_resnet(depth, num_classes=7, in_channels=1)) == _hand_count(n, 1, 7)
    assert _num_params(cifar_resnet(depth, width=8)) == _hand_count(n, widths=(8, 16, 32))


def test_option_b_shortcuts_only_at_stage_transitions():
    model = resnet20()
    one_by_one = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1)
    ]
    assert one_by_one == ["layer2.0.shortcut.0", "layer3.0.shortcut.0"]
    for name in one_by_one:
        conv = model.get_submodule(name)
        assert conv.stride == (2, 2)
    assert isinstance(model.get_submodule("layer2.0.shortcut.1"), nn.BatchNorm2d)
    shortcuts = [
        name for name, block in model.named_modules()
        if getattr(block, "shortcut", None) is not None
    ]
    assert shortcuts == ["layer2.0", "layer3.0"]


def test_width_multiplier():
    model = cifar_resnet(20, width=8)
    assert model.conv1.out_channels == 8
    assert model.layer3[0].conv1.out_channels == 32
    assert model.fc.in_features == 32


@pytest.mark.parametrize("depth", [0, 8, 21, 1202, "20", 20.0, True])
def test_invalid_depth_raises(depth):
    with pytest.raises(ValueError, match="20, 32, 44, 56, 110"):
        cifar_resnet(depth)


def test_invalid_arguments_raise():
    with pytest.raises(ValueError, match="num_classes"):
        cifar_resnet(20, num_classes=0)
    with pytest.raises(TypeError, match="in_channels"):
        build_model("resnet20", in_channels="1")


def test_build_model_package_name():
    model = build_model("resnet32", num_classes=5, in_channels=1)
    assert isinstance(model, CifarResNet)
    assert model.fc.out_features == 5
    assert needs_rgb("resnet32") is False


def test_build_model_torchvision_name():
    model = build_model("resnet18", num_classes=10).eval()
    assert not isinstance(model, CifarResNet)
    assert needs_rgb("resnet18") is True
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    # in_channels does not alter torchvision models; the caller expands grayscale.
    gray = build_model("resnet18", num_classes=10, in_channels=1)
    assert gray.conv1.in_channels == 3


def test_build_model_googlenet_has_no_aux_heads():
    model = build_model("googlenet", num_classes=10).eval()
    assert model.aux1 is None and model.aux2 is None
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)


def test_unknown_model_name():
    with pytest.raises(ValueError) as info:
        build_model("resnet21")
    message = str(info.value)
    assert "resnet20" in message and "torchvision" in message
    with pytest.raises(ValueError):
        needs_rgb("not-a-model")


# --------------------------------------------------------------------------- model specs
def _only_classes(num_classes: int = 10):
    """A factory that takes num_classes but no in_channels."""
    return resnet20(num_classes=num_classes)


def test_model_spec_resolution():
    from attnprune.models import build_from_spec, call_factory, model_spec_kind, resolve_factory

    assert model_spec_kind("resnet20") == "name" and model_spec_kind("resnet18") == "name"
    assert model_spec_kind("attnprune.models:resnet32") == "factory"
    assert resolve_factory("attnprune.models:CifarResNet") is CifarResNet
    with pytest.raises(ValueError, match=r"unknown model 'resnet21'; valid choices: .*resnet20.*module:function"):
        model_spec_kind("resnet21")
    with pytest.raises(ValueError, match="has no attribute 'nope'"):
        resolve_factory("attnprune.models:nope")
    with pytest.raises(ValueError, match="cannot import module 'no_such_module_xyz'"):
        resolve_factory("no_such_module_xyz:f")
    with pytest.raises(ValueError, match="must be written 'module:function'"):
        resolve_factory("a:b:c")
    with pytest.raises(TypeError, match="must return a torch.nn.Module, got int"):
        call_factory(lambda num_classes: num_classes, {"num_classes": 3, "in_channels": 1})

    model, kwargs = build_from_spec("resnet20", 7, 1)
    assert model.fc.out_features == 7 and model.conv1.in_channels == 1
    assert kwargs == {"num_classes": 7, "in_channels": 1}
    model, kwargs = build_from_spec(f"{__name__}:_only_classes", 5, 1)
    assert model.fc.out_features == 5 and model.conv1.in_channels == 3
    assert kwargs == {"num_classes": 5}, "only the arguments the factory takes are recorded"


def _kwargs_only(**kwargs):
    """A factory that forwards everything (like timm's): it must not get in_channels blindly."""
    return resnet20(**kwargs)


def test_factory_kwargs_pass_in_channels_only_to_factories_that_take_it():
    from attnprune.models import build_from_spec, factory_kwargs

    assert factory_kwargs(_kwargs_only, 5, 1) == {"num_classes": 5}
    assert factory_kwargs(resnet20, 5, 1) == {"num_classes": 5, "in_channels": 1}
    assert factory_kwargs(_only_classes, 5, 1) == {"num_classes": 5}
    import torchvision

    assert factory_kwargs(torchvision.models.resnet18, 5, 1) == {"num_classes": 5}
    model, kwargs = build_from_spec(f"{__name__}:_kwargs_only", 4, 1)
    assert kwargs == {"num_classes": 4} and model.conv1.in_channels == 3


def test_timm_name_without_timm_says_how_to_install(monkeypatch):
    import attnprune._timm as timm_support
    from attnprune.models import is_factory_spec, model_spec_kind

    monkeypatch.setattr(timm_support, "timm_available", lambda: False)
    with pytest.raises(ValueError, match=r"needs timm, which is not installed; .*pip install 'attnprune\[timm\]'"):
        model_spec_kind("timm:resnet18")
    assert not is_factory_spec("timm:resnet18") and is_factory_spec("pkg.mod:build")
