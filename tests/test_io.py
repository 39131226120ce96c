"""Tests for attnprune.deploy.serialize: weights_only-safe save/load of pruned models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import attnprune
import attnprune.deploy.serialize as aio
from attnprune.deploy.serialize import FORMAT, ModelFileError
from attnprune.models import build_model, resnet20

from _util import random_masks, randomize_bn


def _pruned(name="resnet20", x=None, seed=0):
    torch.manual_seed(seed)
    model = randomize_bn(build_model(name, num_classes=10, in_channels=1 if name == "resnet20" else 3), seed).eval()
    x = torch.randn(2, 1, 28, 28) if x is None else x
    inst = attnprune.instrument(model, x)
    inst.set_masks(random_masks(inst.groups, 0.5, seed))
    inst.mode = "binary"
    pruned = inst.finalize()
    return pruned, inst.pruning_history, x


@pytest.fixture(scope="module")
def pruned20():
    return _pruned()


def _out(model, x):
    with torch.no_grad():
        return model.eval()(x)


def test_round_trip_bit_identical(pruned20, tmp_path):
    model, history, x = pruned20
    path = aio.save(model, tmp_path / "m.pt", base="resnet20", pruning_history=history, example_inputs=x)
    raw = torch.load(path, weights_only=True)  # plain dict, no code needed to read it
    assert raw["format"] == FORMAT
    assert raw["base"] == "resnet20"
    assert raw["base_kwargs"] == {"num_classes": 10, "in_channels": 1}
    assert raw["example_shape"] == [2, 1, 28, 28]
    assert raw["pruning_history"] == [[n, bool(o), list(i)] for n, o, i in history]
    assert all(t.device.type == "cpu" for t in raw["state_dict"].values())
    loaded = aio.load(path)
    assert not loaded.training
    assert torch.equal(_out(loaded, x), _out(model, x))
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)


def test_base_kwargs_inferred_without_example_inputs(pruned20, tmp_path):
    model, history, x = pruned20
    aio.save(model, tmp_path / "m.pt", base="resnet20", pruning_history=history)
    raw = torch.load(tmp_path / "m.pt", weights_only=True)
    assert raw["example_shape"] is None
    assert raw["base_kwargs"] == {"num_classes": 10, "in_channels": 1}
    assert torch.equal(_out(aio.load(tmp_path / "m.pt"), x), _out(model, x))


def test_load_with_user_factory_and_instance(pruned20, tmp_path):
    model, history, x = pruned20

    def factory():
        return resnet20(num_classes=10, in_channels=1)

    aio.save(model, tmp_path / "m.pt", base=factory, pruning_history=history, example_inputs=x)
    assert torch.load(tmp_path / "m.pt", weights_only=True)["base"] is None
    with pytest.raises(ModelFileError, match="pass base="):
        aio.load(tmp_path / "m.pt")
    assert torch.equal(_out(aio.load(tmp_path / "m.pt", base=factory), x), _out(model, x))
    dense = resnet20(in_channels=1)
    shapes = [p.shape for p in dense.parameters()]
    loaded = aio.load(tmp_path / "m.pt", base=dense)
    assert torch.equal(_out(loaded, x), _out(model, x))
    assert [p.shape for p in dense.parameters()] == shapes, "the given instance must not be modified"


def test_factory_receives_recorded_kwargs(pruned20, tmp_path):
    model, history, x = pruned20
    seen = {}

    def factory(num_classes, in_channels=3):
        seen.update(num_classes=num_classes, in_channels=in_channels)
        return resnet20(num_classes=num_classes, in_channels=in_channels)

    aio.save(model, tmp_path / "m.pt", base=factory, base_kwargs={"num_classes": 10, "in_channels": 1},
             pruning_history=history, example_inputs=x)
    seen.clear()
    assert torch.equal(_out(aio.load(tmp_path / "m.pt", base=factory), x), _out(model, x))
    assert seen == {"num_classes": 10, "in_channels": 1}


def test_module_function_base_is_never_imported_implicitly(pruned20, tmp_path):
    model, history, x = pruned20
    spec = "attnprune.models:resnet20"
    aio.save(model, tmp_path / "m.pt", base=spec, base_kwargs={"num_classes": 10, "in_channels": 1},
             pruning_history=history, example_inputs=x)
    with pytest.raises(ModelFileError, match="not imported automatically"):
        aio.load(tmp_path / "m.pt")
    assert torch.equal(_out(aio.load(tmp_path / "m.pt", base=spec), x), _out(model, x))


@pytest.mark.parametrize(
    "base, match",
    [
        ("resnet32", r"base 'resnet32'.*does not match the saved weights: layer1\.3"),
        ("resnet18", r"base 'resnet18'.*has no module"),
        (lambda: resnet20(in_channels=3), r"base <lambda>.*cannot run on example inputs of shape \[\[2, 1, 28, 28\]\]"
                                          r".*3 channels.*not the architecture"),
        (lambda: resnet20(num_classes=5, in_channels=1), r"fc\.weight: file \[10, \d+\] vs rebuilt \[5, \d+\]"),
    ],
    ids=["deeper", "other-family", "wrong-channels", "wrong-classes"],
)
def test_wrong_base_gives_clear_error(pruned20, tmp_path, base, match):
    model, history, x = pruned20
    aio.save(model, tmp_path / "m.pt", base="resnet20", pruning_history=history, example_inputs=x)
    with pytest.raises(ModelFileError, match=match):
        aio.load(tmp_path / "m.pt", base=base)


def test_unknown_base_name_lists_choices(pruned20, tmp_path):
    model, history, x = pruned20
    with pytest.raises(ValueError, match=r"unknown base 'resnet21'.*resnet20.*torchvision"):
        aio.save(model, tmp_path / "m.pt", base="resnet21", pruning_history=history)
    aio.save(model, tmp_path / "m.pt", base="resnet20", pruning_history=history)
    with pytest.raises(ValueError, match="unknown base 'resnet21'"):
        aio.load(tmp_path / "m.pt", base="resnet21")
    with pytest.raises(TypeError, match="base must be"):
        aio.save(model, tmp_path / "m.pt", base=3, pruning_history=history)


def test_history_is_required(pruned20, tmp_path):
    model, _, _ = pruned20
    with pytest.raises(ValueError, match=r"pruning_history=result\.pruning_history"):
        aio.save(model, tmp_path / "m.pt", base="resnet20")
    assert not (tmp_path / "m.pt").exists()


def test_save_checks_the_recipe_and_writes_atomically(pruned20, tmp_path):
    model, history, x = pruned20
    path = tmp_path / "m.pt"
    path.write_bytes(b"previous content")
    with pytest.raises(ModelFileError, match="does not match"):
        aio.save(model, path, base="resnet32", pruning_history=history, example_inputs=x)
    assert path.read_bytes() == b"previous content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"], "no temporary file may be left"
    aio.save(model, path, base="resnet20", pruning_history=history, example_inputs=x)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


def test_not_an_attnprune_file(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ModelFileError, match="expected format 'attnprune/1'"):
        aio.load(tmp_path / "other.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(ModelFileError, match="not an attnprune model file"):
        aio.load(tmp_path / "text.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        aio.load(tmp_path / "missing.pt")


def test_example_inputs_override_and_load_base(pruned20, tmp_path):
    model, history, x = pruned20
    aio.save(model, tmp_path / "m.pt", base="resnet20", pruning_history=history, example_inputs=x)
    loaded = aio.load(tmp_path / "m.pt", example_inputs=torch.zeros(1, 1, 32, 32))
    assert torch.equal(_out(loaded, x), _out(model, x))
    dense = aio.load_base(tmp_path / "m.pt")
    assert sum(p.numel() for p in dense.parameters()) > sum(p.numel() for p in model.parameters())
    assert dense.conv1.in_channels == 1 and dense.fc.out_features == 10


def test_torchvision_round_trip(tmp_path):
    x = torch.randn(2, 3, 32, 32)
    model, history, _ = _pruned("resnet18", x)
    aio.save(model, tmp_path / "m.pt", base="resnet18", pruning_history=history, example_inputs=x)
    raw = torch.load(tmp_path / "m.pt", weights_only=True)
    assert raw["base_kwargs"] == {"num_classes": 10, "in_channels": 3}
    assert torch.equal(_out(aio.load(tmp_path / "m.pt"), x), _out(model, x))


def test_prune_result_round_trip(tmp_path):
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,)))
    result = attnprune.prune(resnet20(in_channels=1), DataLoader(data, batch_size=16), 0.5, "l1",
                             warmup_epochs=0, finetune_epochs=0, progress=False, seed=0)
    x = data.tensors[0][:4]
    aio.save(result.model, tmp_path / "m.pt", base="resnet20", pruning_history=result.pruning_history,
             example_inputs=x[:1])
    assert torch.equal(_out(aio.load(tmp_path / "m.pt"), x), _out(result.model, x))


# --------------------------------------------------------------------------- files of attnprune 0.1
V01 = Path(__file__).resolve().parent / "data"


def _v01_toy():
    """The architecture of tests/data/v0.1_model.pt (see tests/data/make_v0.1_model.py)."""
    from torch import nn

    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))


def _check_v01_model(model, expected) -> None:
    assert not model.training
    assert (model[0].out_channels, model[3].out_channels) == (5, 7), "the 0.1 pruning history was replayed"
    assert sum(p.numel() for p in model.parameters()) == expected["params"] < expected["dense_params"]
    with torch.no_grad():
        out = model(expected["input"])
    torch.testing.assert_close(out, expected["output"], rtol=1e-5, atol=1e-6)


def test_model_file_of_0_1_loads():
    expected = torch.load(V01 / "v0.1_expected.pt", weights_only=True)
    assert expected["attnprune_version"] == "0.1.0"
    assert aio.read_info(V01 / "v0.1_model.pt")["attnprune_version"] == "0.1.0"
    _check_v01_model(aio.load(V01 / "v0.1_model.pt", base=_v01_toy), expected)
    with pytest.raises(ModelFileError, match="pass base="):
        aio.load(V01 / "v0.1_model.pt")  # 0.1 recorded no name for a callable base, as today


def test_model_file_of_0_1_loads_through_the_deprecated_module():
    import importlib
    import sys

    sys.modules.pop("attnprune.io", None)
    with pytest.warns(DeprecationWarning, match=r"attnprune\.io is deprecated.*attnprune\.deploy\.serialize"):
        old_io = importlib.import_module("attnprune.io")
    expected = torch.load(V01 / "v0.1_expected.pt", weights_only=True)
    _check_v01_model(old_io.load(V01 / "v0.1_model.pt", base=_v01_toy), expected)
