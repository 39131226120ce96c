"""Issue 15's checks outside the bad-input table: what works now, and what is refused how."""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from fvcore.nn import parameter_count
from test_reliability import SmallConvNet, TiedNet
from torch.utils.data import DataLoader, TensorDataset

import attnprune
from attnprune import cli
from attnprune.deploy.serialize import save
from attnprune.models import resnet20
from attnprune.train.runner import evaluate

FAST = dict(method="l1", warmup_epochs=1, finetune_epochs=1, progress=False, seed=0)


def data(n=32, seed=0, nan_batch=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 16, 16, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    if nan_batch is not None:
        x[16 * nan_batch] = math.nan
    return DataLoader(TensorDataset(x, y), batch_size=16)


def read_only_dir(tmp_path: Path) -> Path:
    """An existing folder this process cannot write into (root ignores permissions: /sys then)."""
    if os.geteuid() != 0:
        d = tmp_path / "ro"
        d.mkdir()
        d.chmod(0o555)
        return d
    probe = Path("/sys/attnprune-write-test")
    try:
        probe.touch()
    except OSError:
        return Path("/sys")
    probe.unlink()
    pytest.skip("no read-only folder available to root here")


# -- 2: tied weights -------------------------------------------------------------------
def test_analytic_count_counts_a_shared_tensor_once():
    from attnprune.core.tied import shared_parameters

    model = TiedNet()
    assert shared_parameters(model) == [["c2.weight", "c3.weight"]]
    with attnprune.instrument(model, torch.randn(1, 1, 16, 16)) as inst:
        assert inst.cost.dense_params == sum(p.numel() for p in model.parameters())
        assert inst.cost.dense_params == parameter_count(model)[""]


# -- 3: evaluation ---------------------------------------------------------------------
def test_one_hot_targets_score_like_class_indices():
    torch.manual_seed(0)
    model = SmallConvNet()
    x, y = torch.randn(20, 1, 16, 16), torch.randint(0, 10, (20,))
    by_index = evaluate(model, [(x, y)])
    assert evaluate(model, [(x, F.one_hot(y, 10).float())]) == by_index
    with torch.no_grad():
        assert by_index == 100.0 * int((model.eval()(x).argmax(1) == y).sum()) / 20


def test_n_by_1_targets_are_refused_not_broadcast():
    model = SmallConvNet()
    with pytest.raises(ValueError, match=r"cannot score targets of shape \(8, 1\)"):
        evaluate(model, [(torch.randn(8, 1, 16, 16), torch.zeros(8, 1, dtype=torch.long))])


def test_user_metric_is_threaded_through_prune():
    calls = []

    def always_half(outputs, targets):  # a "score": the mean over the batch
        calls.append(tuple(outputs.shape))
        return 0.5

    torch.manual_seed(0)
    res = attnprune.prune(SmallConvNet(), data(), 0.3, eval_loader=data(seed=1), eval_metric=always_half, **FAST)
    assert res.report.accuracy_after == 50.0 and res.report.accuracy_at_removal == 50.0
    assert all(h.accuracy == 50.0 for h in res.report.history)
    assert calls and all(s[1] == 10 for s in calls)


def test_count_metric():
    model = SmallConvNet()
    batches = [(torch.randn(4, 1, 16, 16), torch.zeros(4, dtype=torch.long))] * 3
    assert evaluate(model, batches, metric=lambda o, y: (1, 4)) == 25.0


# -- 4: compiled models ----------------------------------------------------------------
def test_compiled_model_is_unwrapped_with_a_warning():
    torch.manual_seed(0)
    plain = SmallConvNet()
    compiled = torch.compile(plain)
    with pytest.warns(UserWarning, match=r"torch.compile'd SmallConvNet: pruning its original module"):
        res = attnprune.prune(compiled, data(), 0.3, **FAST)
    torch.manual_seed(0)
    ref = attnprune.prune(SmallConvNet(), data(), 0.3, **FAST)
    assert type(res.model) is SmallConvNet
    assert all(torch.equal(a, b) for a, b in zip(res.masks, ref.masks))


# -- 5: the user's own modules as ignored_layers ---------------------------------------
def test_ignored_layers_accepts_the_users_modules():
    torch.manual_seed(0)
    model = SmallConvNet()
    by_module = attnprune.prune(model, data(), 0.3, ignored_layers=[model.c1], **FAST)
    by_name = attnprune.prune(model, data(), 0.3, ignored_layers=["c1"], **FAST)
    assert [g.name for g in by_module.report.groups] == [g.name for g in by_name.report.groups] == ["c2"]
    assert by_module.model.c1.out_channels == 8
    assert all(torch.equal(a, b) for a, b in zip(by_module.masks, by_name.masks))


# -- 6: single-use loaders --------------------------------------------------------------
def test_single_use_loader_is_refused_before_a_batch_is_drawn():
    batches = [(torch.randn(4, 1, 16, 16), torch.randint(0, 10, (4,))) for _ in range(2)]
    gen = (b for b in batches)
    with pytest.raises(TypeError, match=r"loader must be re-iterable"):
        attnprune.prune(SmallConvNet(), gen, 0.3, **FAST)
    assert next(gen) is batches[0]  # nothing was drawn


# -- 7: files ---------------------------------------------------------------------------
def test_read_only_checkpoint_dir_fails_before_training(tmp_path):
    folder = read_only_dir(tmp_path)
    calls = []

    def loss(out, y):
        calls.append(1)
        return F.cross_entropy(out, y)

    with pytest.raises(OSError, match=r"checkpoint_dir=.* is not writable"):
        attnprune.prune(SmallConvNet(), data(), 0.3, checkpoint_dir=folder, loss_fn=loss, **FAST)
    assert len(calls) <= 1  # only the one-sample check


def test_cli_turns_os_errors_into_one_line(tmp_path, capsys):
    torch.manual_seed(0)
    res = attnprune.prune(resnet20(in_channels=1), data(), 0.3, **FAST)
    model_file = tmp_path / "m.pt"
    save(res.model, model_file, base="resnet20", base_kwargs={"num_classes": 10, "in_channels": 1},
                   pruning_history=res.pruning_history, example_inputs=torch.randn(1, 1, 16, 16))
    capsys.readouterr()
    out = read_only_dir(tmp_path) / "m.onnx"
    rc = cli.main(["export", "--model-file", str(model_file), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.startswith("attnprune: error: ") and err.count("\n") == 1 and "Traceback" not in err


# -- 9: divergence names its cause ------------------------------------------------------
def test_divergence_names_non_finite_inputs():
    with pytest.raises(attnprune.TrainingDivergedError, match=r"step 2: the batch's inputs contain NaN"):
        attnprune.prune(SmallConvNet(), data(nan_batch=1), 0.3, **FAST)


def test_divergence_names_the_loss():
    def nan_loss(out, y):
        return F.cross_entropy(out, y) * (math.nan if out.requires_grad else 1.0)

    with pytest.raises(attnprune.TrainingDivergedError,
                       match=r"loss_fn\(outputs, targets\) returned a non-finite value on finite inputs"):
        attnprune.prune(SmallConvNet(), data(), 0.3, loss_fn=nan_loss, **FAST)


def test_divergence_names_the_weights():
    from attnprune.train.divergence import diagnose

    model = SmallConvNet()
    with torch.no_grad():
        model.c2.weight[0, 0, 0, 0] = math.inf
    x = torch.randn(2, 1, 16, 16)
    text = diagnose(x, model, F.cross_entropy(model(x), torch.zeros(2, dtype=torch.long)), lr=0.1)
    assert text.startswith("the weights became non-finite (c2.weight)") and "lower the learning rate" in text
    assert "inputs" in diagnose(x * math.nan, model, torch.tensor(math.nan), lr=0.1)


def test_no_warning_for_a_plain_model():
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        attnprune.prune(SmallConvNet(), data(), 0.3, round_to=1, **FAST)  # free counts: no rounding fallback
