"""timm models by name (``timm:resnet18``) and timm factories; skipped when timm is absent."""

from __future__ import annotations

import pytest
import torch

timm = pytest.importorskip("timm")

import attnprune  # noqa: E402
import attnprune.deploy.serialize as aio  # noqa: E402
from attnprune import cli  # noqa: E402
from attnprune.models import build_from_spec, factory_kwargs, model_spec_kind, needs_rgb  # noqa: E402


def test_timm_by_name_maps_channels_and_classes():
    model, kwargs = build_from_spec("timm:resnet18", 7, 1)
    assert isinstance(model, timm.models.resnet.ResNet)
    assert model.conv1.in_channels == 1 and model.get_classifier().out_features == 7
    assert kwargs == {"num_classes": 7, "in_channels": 1}
    assert model_spec_kind("timm:resnet18") == "name" and not needs_rgb("timm:resnet18")
    with pytest.raises(ValueError, match="unknown timm model 'no_such_net'"):
        model_spec_kind("timm:no_such_net")


def test_timm_factory_gets_in_chans():
    factory = timm.models.resnet.resnet18
    assert factory_kwargs(factory, 5, 1) == {"num_classes": 5, "in_chans": 1}
    model, kwargs = build_from_spec("timm.models.resnet:resnet18", 5, 1)
    assert model.conv1.in_channels == 1 and kwargs == {"num_classes": 5, "in_chans": 1}


def test_pruned_timm_model_round_trips_through_save_and_load(tmp_path):
    torch.manual_seed(0)
    model, kwargs = build_from_spec("timm:resnet18", 10, 1)
    x = torch.randn(32, 1, 32, 32)
    loader = [(x[i:i + 8], torch.randint(0, 10, (8,))) for i in range(0, 32, 8)]
    result = attnprune.prune(model, loader, ratio=0.3, method="l1", trained=True, finetune_epochs=0,
                             example_inputs=x[:1], progress=False)
    pruned = result.model.eval()
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    aio.save(pruned, tmp_path / "m.pt", base="timm:resnet18", base_kwargs=kwargs,
             pruning_history=result.pruning_history, example_inputs=x[:1])
    loaded = aio.load(tmp_path / "m.pt")  # a timm name needs no base=: it is not an import
    with torch.no_grad():
        assert torch.equal(loaded(x[:4]), pruned(x[:4]))


def test_cli_accepts_timm_by_name(tmp_path, capsys, monkeypatch):
    seen = {}

    def stop(model, loader, **kw):
        seen["model"] = model
        raise ValueError("stop here")

    monkeypatch.setattr(attnprune.train.pipeline, "prune", stop)
    pytest.importorskip("PIL")
    from PIL import Image

    for split in ("train", "val"):
        for c in ("a", "b"):
            (tmp_path / "d" / split / c).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (8, 8), (40 * i, 90, 10)).save(tmp_path / "d" / split / c / f"{i}.png")
    rc = cli.main(["prune", "--model", "timm:resnet18", "--data", str(tmp_path / "d"), "--image-size", "16",
                   "--batch-size", "2", "--method", "l1", "--out", str(tmp_path / "o"), "--quiet"])
    assert rc == 2 and "stop here" in capsys.readouterr().err
    assert seen["model"].get_classifier().out_features == 2 and seen["model"].conv1.in_channels == 3
