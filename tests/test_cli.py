"""End-to-end tests of the ``attnprune`` command line (in-process, tiny settings)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import attnprune
import attnprune.deploy.serialize as aio
from attnprune import cli
from attnprune.cli import method_flags
from attnprune.data import find_fashion_mnist
from attnprune.methods import get_method
from attnprune.methods.options import option_specs
from attnprune.models import build_model

#: Only the tests that load Fashion-MNIST skip without it; the others run anywhere.
needs_fashion_mnist = pytest.mark.skipif(find_fashion_mnist() is None, reason="Fashion-MNIST is not installed")

TINY = ["--train-subset", "256", "--test-subset", "128", "--batch-size", "64",
        "--warmup-epochs", "1", "--finetune-epochs", "0", "--option", "steps_per_epoch=2", "--quiet"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    if find_fashion_mnist() is None:
        pytest.skip("Fashion-MNIST is not installed")
    out = tmp_path_factory.mktemp("cli") / "run"
    rc = cli.main(["prune", "--model", "resnet20", "--data", "fashion-mnist", "--ratio", "0.5",
                   "--method", "l1", "--round-to", "1", "--out", str(out), *TINY])  # free counts: ±1 point
    assert rc == 0
    return out


def test_prune_writes_everything(run_dir):
    names = sorted(p.name for p in run_dir.iterdir())
    assert names == sorted(["model.pt", "model.onnx", "report.json", "report.md", "kept_channels.png", "command.json"])
    assert not [p for p in run_dir.parent.iterdir() if p.name.startswith(".")], "no temporary folder may be left"
    raw = torch.load(run_dir / "model.pt", weights_only=True)
    assert raw["base"] == "resnet20" and raw["base_kwargs"] == {"num_classes": 10, "in_channels": 1}
    assert raw["example_shape"] == [1, 1, 28, 28]
    report = json.loads((run_dir / "report.json").read_text())
    assert report["method"] == "l1" and abs(report["ratio_achieved"] - 0.5) <= 0.01
    model = aio.load(run_dir / "model.pt")
    assert sum(p.numel() for p in model.parameters()) == report["params_after"]
    assert "# attnprune report: l1" in (run_dir / "report.md").read_text()


def test_export(run_dir, tmp_path, capsys):
    import onnxruntime as ort

    out = tmp_path / "m.onnx"
    assert cli.main(["export", "--model-file", str(run_dir / "model.pt"), "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    model = aio.load(run_dir / "model.pt")
    x = torch.randn(3, 1, 28, 28)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x).numpy(), rtol=1e-4, atol=1e-4)


def test_bench(run_dir, tmp_path, capsys):
    js, md = tmp_path / "b.json", tmp_path / "b.md"
    rc = cli.main(["bench", "--pruned", str(run_dir / "model.pt"), "--rounds", "2", "--warmup", "1",
                   "--threads", "1", "--batch-sizes", "1,2", "--json", str(js), "--markdown", str(md)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "## Benchmark (reference: dense)" in printed
    result = json.loads(js.read_text())
    assert [(r["model"], r["batch_size"]) for r in result["latency"]] == [
        ("dense", 1), ("dense", 2), ("pruned", 1), ("pruned", 2)]
    assert result["models"]["pruned"]["params"] < result["models"]["dense"]["params"]
    assert md.read_text().strip() == printed.strip()


def test_report(run_dir, tmp_path, capsys):
    assert cli.main(["report", "--report", str(run_dir / "report.json")]) == 0
    out = capsys.readouterr().out
    report = json.loads((run_dir / "report.json").read_text())
    dense = sum(p.numel() for p in build_model("resnet20", num_classes=10, in_channels=1).parameters())
    assert report["params_before"] == dense
    assert out.startswith("# attnprune report: l1") and f"| Params | {dense:,} | {report['params_after']:,} |" in out
    assert cli.main(["report", "--report", str(run_dir / "report.json"), "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "report.md").read_text() == (run_dir / "report.md").read_text()
    assert (tmp_path / "r" / "kept_channels.png").is_file()


@pytest.mark.parametrize("command", [[], ["prune"], ["export"], ["bench"], ["report"]])
def test_help(command, capsys):
    assert cli.main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: attnprune")
    if command == ["prune"]:
        assert "--option KEY=VALUE" in out and "--warmup-epochs" in out


def test_bad_method_lists_choices(tmp_path, capsys):
    rc = cli.main(["prune", "--method", "nope", "--out", str(tmp_path / "o")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "argument --method: invalid choice: 'nope'" in err
    assert all(repr(m) in err for m in attnprune.available_methods())
    assert not (tmp_path / "o").exists()


def test_bad_ratio_exits_2_and_writes_nothing(tmp_path, capsys):
    rc = cli.main(["prune", "--ratio", "1.5", "--method", "l1", "--out", str(tmp_path / "o"), *TINY])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("attnprune: error: --ratio: ratio must be in (0, 1)")
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_unknown_option_and_model(tmp_path, capsys):
    assert cli.main(["prune", "--method", "l1", "--option", "foo=1", "--out", str(tmp_path / "o")]) == 2
    assert "unknown option(s) ['foo'] for method 'l1'; valid options:" in capsys.readouterr().err
    assert cli.main(["prune", "--model", "resnet21", "--out", str(tmp_path / "o")]) == 2
    assert "--model: unknown model 'resnet21'; valid choices" in capsys.readouterr().err
    assert cli.main(["prune", "--option", "nokey", "--out", str(tmp_path / "o")]) == 2
    assert "argument --option: must be KEY=VALUE" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@needs_fashion_mnist
def test_value_error_from_prune_is_a_clean_exit_2(tmp_path, capsys, monkeypatch):
    seen = {}

    def failing_prune(model, loader, **kw):
        seen["x"] = next(iter(loader))[0]
        seen["options"] = {k: kw[k] for k in ("warmup_epochs", "finetune_epochs", "steps_per_epoch", "lr")}
        raise attnprune.BudgetError("ratio 0.9 cannot be reached; the largest reachable is 0.85")

    monkeypatch.setattr(attnprune.train.pipeline, "prune", failing_prune)
    out = tmp_path / "o"
    rc = cli.main(["prune", "--model", "resnet18", "--method", "l1", "--ratio", "0.9", "--option", "lr=1e-3",
                   "--out", str(out), *TINY])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("attnprune: error: ratio 0.9 cannot be reached") and "Traceback" not in err
    assert list(tmp_path.iterdir()) == [], "nothing may be written when pruning fails"
    # Grayscale Fashion-MNIST is expanded to 3 channels for a torchvision model.
    assert seen["x"].shape == (64, 3, 28, 28)
    assert seen["options"] == {"warmup_epochs": 1, "finetune_epochs": 0, "steps_per_epoch": 2, "lr": 1e-3}


def test_out_folder_must_be_empty(run_dir, capsys):
    rc = cli.main(["prune", "--method", "l1", "--out", str(run_dir), *TINY])
    assert rc == 2
    assert "exists and is not empty; pass --overwrite" in capsys.readouterr().err


def test_option_values_are_literals():
    assert method_flags.parse_option("lr=0.01") == ("lr", 0.01)
    assert method_flags.parse_option("optimizer=adam") == ("optimizer", "adam")
    assert method_flags.parse_option("finetune_lr=None") == ("finetune_lr", None)
    assert method_flags.parse_option("steps_per_epoch = 5") == ("steps_per_epoch", 5)


def test_export_and_bench_argument_errors(tmp_path, capsys):
    assert cli.main(["export", "--model-file", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "x.onnx")]) == 2
    assert "--model-file: model file not found" in capsys.readouterr().err
    assert cli.main(["bench", "--pruned", "x.pt", "--provider", "tpu"]) == 2
    assert "argument --provider: invalid choice: 'tpu' (choose from 'cpu', 'cuda')" in capsys.readouterr().err
    assert cli.main(["bench", "--pruned", "x.pt", "--batch-sizes", "1,a"]) == 2
    assert "argument --batch-sizes" in capsys.readouterr().err


def test_python_dash_m_help():
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "attnprune", "--help"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: attnprune") and "prune" in proc.stdout and "bench" in proc.stdout


def _image_folder(root: Path, classes=("cat", "dog"), per_class=3) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i}.png")
    return root


def test_image_folder_data(tmp_path, capsys, monkeypatch):
    data = _image_folder(tmp_path / "imgs")
    seen = {}

    def failing_prune(model, loader, eval_loader=None, **kw):
        seen["x"], seen["y"] = next(iter(loader))
        seen["n_eval"] = sum(len(y) for _, y in eval_loader)
        seen["classes"] = model.fc.out_features
        raise ValueError("stop here")

    monkeypatch.setattr(attnprune.train.pipeline, "prune", failing_prune)
    out = tmp_path / "o"
    rc = cli.main(["prune", "--model", "resnet20", "--data", str(data), "--image-size", "16",
                   "--batch-size", "4", "--method", "l1", "--out", str(out), "--quiet"])
    assert rc == 2 and "attnprune: error: stop here" in capsys.readouterr().err
    assert seen["x"].shape == (4, 3, 16, 16) and seen["classes"] == 2 and seen["n_eval"] == 6
    assert not out.exists()
    shutil.rmtree(data / "train")
    assert cli.main(["prune", "--data", str(data), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--data:" in err and "train/ and val/" in err and "missing: train" in err


@needs_fashion_mnist
def test_factory_model(tmp_path, capsys, monkeypatch):
    seen = {}

    def failing_prune(model, loader, **kw):
        seen["model"] = model
        raise ValueError("stop here")

    monkeypatch.setattr(attnprune.train.pipeline, "prune", failing_prune)
    rc = cli.main(["prune", "--model", "attnprune.models:resnet32", "--method", "l1",
                   "--out", str(tmp_path / "o"), *TINY])
    assert rc == 2 and "stop here" in capsys.readouterr().err
    m = seen["model"]
    assert len(m.layer1) == 5 and m.conv1.in_channels == 1 and m.fc.out_features == 10
    assert cli.main(["prune", "--model", "attnprune.models:nope", "--out", str(tmp_path / "o")]) == 2
    assert "--model: module 'attnprune.models' has no attribute 'nope'" in capsys.readouterr().err

    # A file saved with a factory needs --base: factories are never imported implicitly.
    from attnprune.models import resnet20

    model = resnet20(in_channels=1).eval()
    aio.save(model, tmp_path / "m.pt", base="attnprune.models:resnet20", pruning_history=[],
             base_kwargs={"num_classes": 10, "in_channels": 1}, example_inputs=torch.zeros(1, 1, 28, 28))
    assert cli.main(["export", "--model-file", str(tmp_path / "m.pt"), "--out", str(tmp_path / "m.onnx")]) == 2
    assert "pass --base attnprune.models:resnet20" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_resume_needs_a_checkpoint_dir(tmp_path, capsys):
    code = cli.main(["prune", "--model", "resnet20", "--resume", "--out", str(tmp_path / "run")])
    assert code == 2
    assert "--checkpoint-dir" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def _method_section(text: str, method: str) -> str:
    """The help text of ``method``'s option group, whitespace-normalised."""
    flat = " ".join(text.split())
    head = f"options of method {method!r}"
    assert head in flat
    return flat[flat.index(head):]


@pytest.mark.parametrize("method", attnprune.available_methods())
def test_method_help_lists_its_typed_flags_with_its_defaults(method, capsys):
    assert cli.main(["prune", "--method", method, "--help"]) == 0
    section = _method_section(capsys.readouterr().out, method)
    config = get_method(method).config_class()  # the method's own defaults, read off an instance
    for spec in option_specs(type(config)):
        flag = method_flags.flag_name(spec.name)
        at = section.find(flag + " ") if spec.kind is not bool else section.find(f"{flag}, --no-")
        assert at >= 0, f"{flag} missing from the help of {method}"
        default = getattr(config, spec.name)
        shown = section[at:].split("; default: ", 1)[1].split("]", 1)[0]
        assert shown == ("none" if default is None else str(default)), (method, flag)
        if spec.choices is not None:
            shown_choices = ("none" if c is None else str(c) for c in spec.choices)  # None is typed as `none`
            assert "{" + ",".join(shown_choices) + "}" in section[at:at + 200]


def test_defaults_differ_between_methods(capsys):
    shown = {}
    for method in ("l1", "paam"):
        cli.main(["prune", "--method", method, "--help"])
        section = _method_section(capsys.readouterr().out, method)
        rest = section[section.index("--warmup-epochs INT"):]
        shown[method] = rest.split("; default: ", 1)[1].split("]", 1)[0]
    assert shown == {m: str(get_method(m).config_class().warmup_epochs) for m in ("l1", "paam")}
    assert shown["l1"] != shown["paam"]


def test_typed_flags_reach_prune(tmp_path, capsys, monkeypatch):
    data = _image_folder(tmp_path / "imgs")
    seen = {}

    def failing_prune(model, loader, **kw):
        seen.update(kw)
        raise ValueError("stop here")

    monkeypatch.setattr(attnprune.train.pipeline, "prune", failing_prune)
    # --method comes last: the first pass finds it anywhere on the line.
    rc = cli.main(["prune", "--data", str(data), "--image-size", "16", "--batch-size", "4", "--quiet",
                   "--lr", "0.01", "--steps-per-epoch", "3", "--no-nonneg", "--threshold", "none",
                   "--optimizer", "adam", "--warmup-epochs", "0", "--option", "momentum=0.8",
                   "--out", str(tmp_path / "o"), "--method", "abp"])
    assert rc == 2 and "stop here" in capsys.readouterr().err
    assert seen["method"] == "abp"
    given = {k: seen[k] for k in ("lr", "steps_per_epoch", "nonneg", "threshold", "optimizer", "warmup_epochs",
                                  "momentum")}
    assert given == {"lr": 0.01, "steps_per_epoch": 3, "nonneg": False, "threshold": None, "optimizer": "adam",
                     "warmup_epochs": 0, "momentum": 0.8}
    assert type(seen["lr"]) is float and type(seen["steps_per_epoch"]) is int
    assert "pull" not in seen and "joint_epochs" not in seen, "options not given keep the method's defaults"


@pytest.mark.parametrize("method, argv, expected", [
    ("l1", ["--lr", "-1"], "--lr: must be a number > 0 (finite), got '-1'"),
    ("l1", ["--lr", "fast"], "--lr: must be a number > 0 (finite), got 'fast'"),
    ("abp", ["--optimizer", "rmsprop"], "--optimizer: must be one of ('sgd', 'adam'), got 'rmsprop'"),
    ("paam", ["--steps-per-epoch", "0"], "--steps-per-epoch: must be an int >= 1 or None, got '0'"),
    ("paam", ["--warmup-epochs", "1.5"], "--warmup-epochs: must be an int >= 0, got '1.5'"),
    ("l1", ["--momentum", "none"], "--momentum: must be a number >= 0 and < 1 (finite), got 'none'"),
])
def test_bad_flag_value_is_one_error_line(method, argv, expected, tmp_path, capsys):
    rc = cli.main(["prune", "--method", method, *argv, "--out", str(tmp_path / "o")])
    assert rc == 2
    assert capsys.readouterr().err.splitlines() == [f"attnprune: error: {expected}"]
    assert list(tmp_path.iterdir()) == []


def test_flag_of_another_method_and_conflicts(tmp_path, capsys):
    assert cli.main(["prune", "--method", "l1", "--pull", "0.1", "--out", str(tmp_path / "o")]) == 2
    assert "unrecognized arguments: --pull 0.1" in capsys.readouterr().err
    assert cli.main(["prune", "--method", "l1", "--lr", "0.1", "--option", "lr=0.2", "--out", str(tmp_path / "o")]) == 2
    assert "attnprune: error: --lr and --option lr=... both given; use one" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_convert_follows_the_schema():
    specs = {s.name: s for s in option_specs(get_method("abp").config_class)}
    assert method_flags.convert(specs["lr"], "1e-3") == 1e-3
    assert method_flags.convert(specs["finetune_lr"], "None") is None
    assert method_flags.convert(specs["nonneg"], False) is False
    with pytest.raises(ValueError, match=r"must be an int >= 0, got 'x'"):
        method_flags.convert(specs["warmup_epochs"], "x")
    with pytest.raises(ValueError, match="must be a number > 0"):
        method_flags.convert(specs["lr"], "none")  # lr is not optional


def test_cli_error_is_an_attnprune_error():
    assert issubclass(cli.CLIError, attnprune.AttnpruneError)
