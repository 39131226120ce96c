"""The command line for a new user: methods listing, --weights, --input-shape, CLI wording."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import attnprune
import attnprune.deploy.serialize as aio
from attnprune import cli
from attnprune.cli.weights import load_weights, output_layer
from attnprune.cli.wording import cli_wording
from attnprune.data import find_fashion_mnist
from attnprune.methods import available_methods, get_method
from attnprune.methods.options import option_specs
from attnprune.models import build_model, resnet20

from _util import image_folder_tree

ROOT = Path(__file__).resolve().parents[1]
needs_fashion_mnist = pytest.mark.skipif(find_fashion_mnist() is None, reason="Fashion-MNIST is not installed")


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("attnprune: error: "), err
    return lines[0]


# -- attnprune methods -------------------------------------------------------------

def test_methods_lists_every_method_with_paper_and_options(capsys):
    assert cli.main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in available_methods():
        assert f"\n{name}: " in "\n" + out, name
        cls = get_method(name)
        assert cls.paper, f"{name} has no paper"
        assert f"paper: {cls.paper}" in out
    assert "docs/methods.md" in out


def test_methods_name_shows_types_defaults_and_help(capsys):
    assert cli.main(["methods", "paam"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("paam: ") and "Babaiee" in out and "\nabp: " not in out
    specs = option_specs(get_method("paam").config_class)
    assert specs
    for s in specs:
        line = next(line for line in out.splitlines() if line.strip().startswith(f"--{s.name.replace('_', '-')} "))
        shown = "none" if s.default is None else str(s.default)
        assert f"default {shown})" in line and s.describe() in line, line
        assert s.kind.__name__ in line
    assert "trained=True" not in out and "``" not in out  # CLI wording, plain text


def test_methods_unknown_name_is_one_error_line(capsys):
    assert cli.main(["methods", "nope"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "'nope'" in line and "paam" in line and "l1" in line


def test_prune_help_points_to_methods(capsys):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["prune", "--help"])
    assert "attnprune methods" in " ".join(capsys.readouterr().out.split())


# -- --weights ---------------------------------------------------------------------

def test_output_layer_names_the_classifier():
    assert output_layer(resnet20()) == "fc"
    assert output_layer(build_model("mobilenet_v2")) == "classifier.1"


def test_weights_with_another_head_load_everything_else(tmp_path):
    source = resnet20(num_classes=100, in_channels=1)
    torch.save(source.state_dict(), tmp_path / "w.pt")
    model = resnet20(num_classes=10, in_channels=1)
    fresh_fc = model.fc.weight.detach().clone()
    head = load_weights(model, str(tmp_path / "w.pt"))
    assert sorted(h.split(":")[0] for h in head) == ["fc.bias", "fc.weight"]
    assert "file (100, 64), model (10, 64)" in head[0] + head[1]
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    assert torch.equal(model.layer3[2].bn2.running_mean, source.layer3[2].bn2.running_mean)
    assert torch.equal(model.fc.weight, fresh_fc)  # re-initialised, i.e. left as built


def test_weights_that_do_not_fit_list_keys_and_shapes(tmp_path, capsys):
    state = resnet20(in_channels=1).state_dict()
    state["layer1.0.conv1.weight"] = torch.zeros(8, 16, 3, 3)
    del state["bn1.running_var"]
    torch.save(state, tmp_path / "bad.pt")
    model = resnet20(in_channels=1)
    with pytest.raises(cli.CLIError) as info:
        load_weights(model, str(tmp_path / "bad.pt"))
    text = str(info.value)
    assert "missing keys (1): bn1.running_var" in text
    assert "layer1.0.conv1.weight: file (8, 16, 3, 3), model (16, 16, 3, 3)" in text
    assert "\n" not in text


def test_weights_with_a_module_prefix_are_an_error_with_a_hint(tmp_path):
    state = {f"module.{k}": v for k, v in resnet20(in_channels=1).state_dict().items()}
    torch.save(state, tmp_path / "ddp.pt")
    with pytest.raises(cli.CLIError) as info:
        load_weights(resnet20(in_channels=1), str(tmp_path / "ddp.pt"))
    text = str(info.value)
    assert "unexpected keys" in text and "module.conv1.weight" in text and "starts with 'module.'" in text


@needs_fashion_mnist
def test_prune_with_another_head_says_so(tmp_path, capsys, monkeypatch):
    torch.save(resnet20(num_classes=1000, in_channels=1).state_dict(), tmp_path / "w.pt")
    seen = {}

    def stop(model, loader, **kw):
        seen["fc"] = model.fc.out_features
        raise ValueError("stop here")

    monkeypatch.setattr(attnprune.train.pipeline, "prune", stop)
    rc = cli.main(["prune", "--model", "resnet20", "--weights", str(tmp_path / "w.pt"), "--train-subset", "64",
                   "--test-subset", "64", "--method", "l1", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and seen["fc"] == 10
    assert "output layer does not fit (fc.weight: file (1000, 64), model (10, 64)" in err

    prefixed = {f"module.{k}": v for k, v in resnet20(in_channels=1).state_dict().items()}
    torch.save(prefixed, tmp_path / "ddp.pt")
    rc = cli.main(["prune", "--model", "resnet20", "--weights", str(tmp_path / "ddp.pt"), "--train-subset", "64",
                   "--test-subset", "64", "--method", "l1", "--quiet", "--out", str(tmp_path / "o")])
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 2 and "--weights:" in line and "missing keys" in line and "'module.'" in line


# -- --input-shape -----------------------------------------------------------------

@pytest.fixture()
def model_file(tmp_path):
    model = resnet20(in_channels=1).eval()
    path = tmp_path / "m.pt"
    aio.save(model, path, base="resnet20", pruning_history=[], base_kwargs={"num_classes": 10, "in_channels": 1},
             example_inputs=torch.zeros(1, 1, 28, 28))
    return path


@pytest.mark.parametrize("shape, needle", [("1,3,28,28", "C=1 channels"), ("1,28,28", "3 numbers given, 4 needed")])
def test_export_wrong_input_shape_is_one_error_line(model_file, tmp_path, capsys, shape, needle):
    out = tmp_path / "m.onnx"
    assert cli.main(["export", "--model-file", str(model_file), "--out", str(out), "--input-shape", shape]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"--input-shape: {shape} does not fit --model-file" in line and needle in line
    assert not out.exists()


def test_bench_wrong_input_shape_and_onnx_shape(model_file, tmp_path, capsys):
    assert cli.main(["bench", "--pruned", str(model_file), "--input-shape", "1,3,28,28", "--rounds", "1"]) == 2
    assert "C=1 channels" in _one_error_line(capsys.readouterr().err)

    onnx_path = tmp_path / "m.onnx"
    assert cli.main(["export", "--model-file", str(model_file), "--out", str(onnx_path)]) == 0
    capsys.readouterr()
    # The shape comes from the .onnx file (static but for the batch); a wrong one is refused.
    # (a --dense given by name is built with the file's channel count).
    assert cli.main(["bench", "--pruned", str(onnx_path), "--dense", "resnet20", "--rounds", "1",
                     "--warmup", "0", "--threads", "1", "--json", str(tmp_path / "b.json")]) == 0
    assert json.loads((tmp_path / "b.json").read_text())["settings"]["input_shapes"] == [[1, 1, 28, 28]]
    capsys.readouterr()
    assert cli.main(["bench", "--pruned", str(onnx_path), "--dense", str(onnx_path),
                     "--input-shape", "1,1,32,32"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "--input-shape: 1,1,32,32 does not fit --pruned" in line and "?,1,28,28" in line


# -- wording, resume, wrote line, docs --------------------------------------------

def test_cli_wording_names_flags():
    assert cli_wording("pass download=True to fetch them") == "pass --download to fetch them"
    text = cli_wording("a different run; pass the same arguments, another checkpoint_dir, or resume=False to "
                       "start over")
    assert "--checkpoint-dir" in text and "leave out --resume" in text and "=False" not in text
    assert cli_wording("test_subset=5 exceeds") == "--test-subset=5 exceeds"


def test_missing_data_message_says_pass_download(tmp_path, capsys):
    rc = cli.main(["prune", "--data-root", str(tmp_path / "empty"), "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "pass --download" in err and "download=True" not in err


@needs_fashion_mnist
def test_resume_says_resuming_and_wrote_lists_every_file(tmp_path, capsys):
    tiny = ["--model", "resnet20", "--method", "l1", "--train-subset", "128", "--test-subset", "64",
            "--batch-size", "64", "--warmup-epochs", "1", "--finetune-epochs", "0", "--ratio", "0.3",
            "--checkpoint-dir", str(tmp_path / "ck")]
    assert cli.main(["prune", *tiny, "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    wrote = next(line for line in out.splitlines() if line.startswith("wrote "))
    files = sorted(p.relative_to(tmp_path / "a").as_posix() for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert wrote == f"wrote {tmp_path / 'a'}/: {', '.join(files)}"
    assert "command.json" in files and "kept_channels.png" in files
    assert cli.main(["prune", *tiny, "--resume", "--out", str(tmp_path / "b")]) == 0
    assert f"resuming from {tmp_path / 'ck' / 'checkpoint.pt'}" in capsys.readouterr().err


def test_no_docstring_cites_shared_files():
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "attnprune").rglob("*.py")
                 if "shared/" in p.read_text(encoding="utf-8")]
    assert offenders == []
    assert "shared/" not in (ROOT / "README.md").read_text(encoding="utf-8")
    methods_md = (ROOT / "docs" / "methods.md").read_text(encoding="utf-8")
    for cited in ("Babaiee", "Tian", "He, Shi and Dong", "doi:10.1109/TNNLS.2021.3106917", "arXiv:2111.02399"):
        assert cited in methods_md


# -- ImageFolder data flags --------------------------------------------------------

def _tree(root: Path, splits=("train",), per_class=5) -> Path:
    return image_folder_tree(root, {split: ("cat", "dog") for split in splits}, per_class, (10, 12))


def _capture_loaders(monkeypatch):
    seen = {}

    def stop(model, loader, eval_loader=None, **kw):
        seen["train"], seen["eval"] = loader, eval_loader
        raise ValueError("stop here")

    monkeypatch.setattr(attnprune.train.pipeline, "prune", stop)
    return seen


def test_image_folder_flags_reach_the_loaders(tmp_path, capsys, monkeypatch):
    data = _tree(tmp_path / "imgs")
    seen = _capture_loaders(monkeypatch)
    base = ["prune", "--model", "resnet20", "--data", str(data), "--image-size", "8", "--batch-size", "4",
            "--method", "l1", "--quiet"]
    assert cli.main([*base, "--val-fraction", "0.2", "--workers", "1", "--no-augment", "--normalize", "none",
                     "--out", str(tmp_path / "o")]) == 2
    assert "stop here" in capsys.readouterr().err
    train, val = seen["train"], seen["eval"]
    assert len(train.dataset) == 8 and len(val.dataset) == 2 and train.num_workers == 1
    x = next(iter(train))[0]
    assert float(x.min()) >= 0 and float(x.max()) <= 1  # --normalize none
    assert torch.equal(train.dataset[0][0], train.dataset[0][0])  # --no-augment

    assert cli.main([*base, "--val-fraction", "2", "--out", str(tmp_path / "o")]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "--val-fraction must be a number in (0, 1)" in line


def test_normalize_auto_is_imagenet_for_trained_torchvision_models():
    from argparse import Namespace

    from attnprune.cli.prune_command import image_normalization

    def choose(model, trained, normalize="auto"):
        return image_normalization(Namespace(model=model, trained=trained, normalize=normalize))

    assert choose("resnet18", True) == "imagenet" and choose("torchvision.models:resnet18", True) == "imagenet"
    assert choose("resnet18", False) == "sample" and choose("resnet20", True) == "sample"
    assert choose("resnet20", True, "imagenet") == "imagenet"


def test_prune_help_documents_the_data_flags(capsys):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["prune", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--normalize", "--no-augment", "--val-fraction", "--workers", "--download"):
        assert flag in text


@needs_fashion_mnist
def test_dry_run_prints_the_plan_trains_nothing_and_writes_nothing(tmp_path, capsys, monkeypatch):
    import attnprune.train.runner as runner

    monkeypatch.chdir(tmp_path)  # anything written to a relative path would land here
    steps = []
    real = runner.Runner._step
    monkeypatch.setattr(runner.Runner, "_step", lambda self, *a, **k: steps.append(1) or real(self, *a, **k))
    args = ["prune", "--model", "resnet20", "--method", "l1", "--train-subset", "128", "--test-subset", "64",
            "--batch-size", "64", "--ratio", "0.3", "--dry-run"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "warmup" in out and "finetune" in out and "estimated" in out.lower()
    assert len(steps) <= 2 * 3  # only the timed steps of the plan (gated/plain kinds), no epoch
    assert not any(tmp_path.iterdir())
    assert cli.main(["prune", "--model", "resnet20", "--ratio", "0.3"]) == 2
    assert "--out is required" in capsys.readouterr().err
