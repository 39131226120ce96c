"""Tests for attnprune.deploy.export."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch_pruning as tp
import torchvision
from torch import nn
from torchvision import models as tvm

import attnprune.deploy.export as export_mod
from attnprune.deploy.export import ExportMismatchError, export_onnx, onnx_session


def tiny_net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 5),
    )


class VGG11BNCompact(nn.Module):
    """torchvision's VGG11-BN feature extractor with a small CIFAR-style head.

    The ImageNet head (a 25088x4096 linear layer) alone makes pruning take
    several seconds; the convolutional part, which is what channel pruning
    changes, is torchvision's.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = torchvision.models.vgg.make_layers(
            torchvision.models.vgg.cfgs["A"], batch_norm=True
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(512, 128), nn.ReLU(inplace=True), nn.Dropout(), nn.Linear(128, num_classes)
        )

    def forward(self, x):
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


# name -> (constructor, last layer to keep, input size, dynamic batch in the test)
ARCHS = {
    "resnet18": (lambda: tvm.resnet18(num_classes=10), lambda m: m.fc, 64, True),
    "mobilenet_v2": (lambda: tvm.mobilenet_v2(num_classes=10), lambda m: m.classifier[1], 64, True),
    "vgg11_bn": (VGG11BNCompact, lambda m: m.classifier[-1], 32, True),
    "googlenet": (
        lambda: tvm.googlenet(num_classes=10, aux_logits=False, init_weights=False),
        lambda m: m.fc,
        64,
        False,
    ),
    "efficientnet_b0": (
        lambda: tvm.efficientnet_b0(num_classes=10),
        lambda m: m.classifier[1],
        64,
        False,
    ),
}


def calibrate_bn(model: nn.Module, x: torch.Tensor) -> None:
    """Sets BN running stats from data so outputs are O(1), not vanishing.

    With freshly initialised running statistics, eval-mode outputs of deep
    nets such as MobileNetV2 are ~1e-12, which would make any parity check
    pass trivially.
    """
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        model(x)
    model.eval()


def pruned(arch: str):
    make, last, size, _ = ARCHS[arch]
    torch.manual_seed(0)
    model = make().eval()
    x = torch.randn(2, 3, size, size)
    tp.pruner.MetaPruner(
        model,
        x,
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=0.5,
        ignored_layers=[last(model)],
    ).step()
    calibrate_bn(model, torch.randn(8, 3, size, size))
    return model, x


@pytest.mark.parametrize("arch", list(ARCHS))
def test_parity_pruned_architectures(arch, tmp_path):
    model, x = pruned(arch)
    dynamic = ARCHS[arch][3]
    with torch.no_grad():
        ref = model(x)
    assert ref.abs().max() > 1e-2, "outputs too small for a meaningful parity check"
    model.train()
    out = export_onnx(model, x, tmp_path / f"{arch}.onnx", dynamic_batch=dynamic)
    assert model.training and all(m.training for m in model.modules())
    assert out == tmp_path / f"{arch}.onnx" and out.is_file()
    # Single self-contained file, no temp leftovers.
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{arch}.onnx"]

    sess = onnx_session(out, threads=1)
    dim0 = sess.get_inputs()[0].shape[0]
    assert isinstance(dim0, str) if dynamic else dim0 == 2
    got = sess.run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(
        got, ref.numpy(), rtol=0, atol=1e-4 * max(1.0, ref.abs().max().item())
    )


def test_dynamic_batch_from_single_sample(tmp_path):
    model = tiny_net().eval()
    x = torch.randn(1, 3, 16, 16)
    path = export_onnx(model, x, tmp_path / "sub" / "tiny.onnx")
    sess = onnx_session(path)
    assert [i.name for i in sess.get_inputs()] == ["input"]
    assert [o.name for o in sess.get_outputs()] == ["output"]
    x7 = torch.randn(7, 3, 16, 16)
    with torch.no_grad():
        ref = model(x7).numpy()
    np.testing.assert_allclose(sess.run(None, {"input": x7.numpy()})[0], ref, atol=1e-5)


def test_multi_input_multi_output(tmp_path):
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(6, 3)
            self.b = nn.Linear(4, 2)

        def forward(self, x, y):
            return self.a(x), {"sum": self.b(y) + 1.0}

    path = export_onnx(TwoHeads(), (torch.randn(3, 6), torch.randn(3, 4)), tmp_path / "two.onnx")
    sess = onnx_session(path)
    assert [i.name for i in sess.get_inputs()] == ["input_0", "input_1"]
    assert [o.name for o in sess.get_outputs()] == ["output_0", "output_1"]


def test_refuses_model_with_hooks(tmp_path):
    model = tiny_net()
    handle = model[3].register_forward_hook(lambda mod, inp, out: out * 0)
    with pytest.raises(ValueError, match="finalized"):
        export_onnx(model, torch.randn(2, 3, 8, 8), tmp_path / "m.onnx")
    handle.remove()
    handle = model.register_forward_pre_hook(lambda mod, inp: None)
    with pytest.raises(ValueError, match=r"forward-pre hooks.*\(root\)"):
        export_onnx(model, torch.randn(2, 3, 8, 8), tmp_path / "m.onnx")
    handle.remove()
    assert not (tmp_path / "m.onnx").exists()


def test_broken_output_raises_mismatch_and_writes_nothing(tmp_path, monkeypatch):
    real_session = export_mod.onnx_session

    class Corrupt:
        def __init__(self, sess):
            self._sess = sess

        def get_inputs(self):
            return self._sess.get_inputs()

        def run(self, names, feed):
            return [o + 1e-2 for o in self._sess.run(names, feed)]

    monkeypatch.setattr(export_mod, "onnx_session", lambda *a, **k: Corrupt(real_session(*a, **k)))
    model = tiny_net().eval()
    with pytest.raises(ExportMismatchError, match=r"max\|onnx - torch\|") as info:
        export_onnx(model, torch.randn(2, 3, 8, 8), tmp_path / "bad.onnx")
    assert isinstance(info.value, RuntimeError)
    assert list(tmp_path.iterdir()) == []  # atomic: nothing published
    # Within tolerance when rtol is loose enough.
    export_onnx(model, torch.randn(2, 3, 8, 8), tmp_path / "ok.onnx", rtol=0.05)
    assert (tmp_path / "ok.onnx").is_file()


def test_nan_output_is_a_mismatch(tmp_path, monkeypatch):
    real_session = export_mod.onnx_session

    class NaNs:
        def __init__(self, sess):
            self._sess = sess

        def get_inputs(self):
            return self._sess.get_inputs()

        def run(self, names, feed):
            return [np.full_like(o, np.nan) for o in self._sess.run(names, feed)]

    monkeypatch.setattr(export_mod, "onnx_session", lambda *a, **k: NaNs(real_session(*a, **k)))
    with pytest.raises(ExportMismatchError):
        export_onnx(tiny_net(), torch.randn(2, 3, 8, 8), tmp_path / "nan.onnx", dynamic_batch=False)


def test_falls_back_to_legacy_exporter(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("simulated dynamo failure")

    monkeypatch.setattr(export_mod, "_export_dynamo", boom)
    model = tiny_net().eval()
    with pytest.warns(UserWarning, match=r"simulated dynamo failure.*dynamo=False"):
        path = export_onnx(model, torch.randn(2, 3, 8, 8), tmp_path / "legacy.onnx")
    sess = onnx_session(path)
    assert isinstance(sess.get_inputs()[0].shape[0], str)  # still dynamic


def test_low_opset_uses_legacy_exporter(tmp_path):
    with pytest.warns(UserWarning, match="opset >= 18"):
        path = export_onnx(tiny_net(), torch.randn(2, 3, 8, 8), tmp_path / "o17.onnx", opset=17)
    assert {o.domain: o.version for o in onnx.load(str(path)).opset_import}[""] == 17


def test_bad_arguments(tmp_path):
    model, x = tiny_net(), torch.randn(2, 3, 8, 8)
    with pytest.raises(TypeError, match="model must be"):
        export_onnx("model", x, tmp_path / "m.onnx")
    with pytest.raises(TypeError, match=r"example_inputs\[1\]"):
        export_onnx(model, (x, 3), tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="share the batch size"):
        export_onnx(model, (x, torch.randn(3, 4)), tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="rtol"):
        export_onnx(model, x, tmp_path / "m.onnx", rtol=0)
    with pytest.raises(ValueError, match="opset"):
        export_onnx(model, x, tmp_path / "m.onnx", opset=3)
    with pytest.raises(ValueError, match="directory"):
        export_onnx(model, x, tmp_path)


def test_onnx_session_options_and_providers(tmp_path, monkeypatch):
    path = export_onnx(tiny_net(), torch.randn(2, 3, 8, 8), tmp_path / "m.onnx", check=False)
    sess = onnx_session(path, threads=1)
    opts = sess.get_session_options()
    assert opts.intra_op_num_threads == 1
    assert opts.inter_op_num_threads == 1
    assert opts.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert sess.get_providers() == ["CPUExecutionProvider"]

    with pytest.raises(ValueError, match=r"provider must be one of \['cpu', 'cuda'\].*'tpu'"):
        onnx_session(path, provider="tpu")
    with pytest.raises(ValueError, match="threads"):
        onnx_session(path, threads=0)
    with pytest.raises(FileNotFoundError):
        onnx_session(tmp_path / "missing.onnx")

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(RuntimeError, match="onnxruntime-gpu"):
        onnx_session(path, provider="cuda")
