"""Checkpoints and resumption: an interrupted run, resumed, equals an uninterrupted one bit for bit."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import attnprune
from attnprune.methods import Budget, available_methods, get_method
from attnprune.models import resnet20
from attnprune.train.checkpoint import CHECKPOINT_NAME, atomic_save, load_checkpoint

from _util import Interrupting, count_hooks


def make_loader(kind: str, n: int = 48):
    """3 batches of 16; ``kind`` "generator": the loader shuffles with its own generator,
    "global": with torch's global generator."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 16, 16, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    gen = torch.Generator() if kind == "generator" else None
    return DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, generator=gen)


def make_model():
    torch.manual_seed(0)
    return resnet20(in_channels=1)


# 3 batches per epoch. loss_fn calls (paam): 1 argument check; 2-4 warmup; 5 lam calibration;
# 6-8 an epoch 1; 9-11 an epoch 2; 12-14 cnn; 15-17 finetune epoch 1; 18-20 finetune epoch 2.
SCHEDULES = {
    "paam": dict(warmup_epochs=1, cycles=1, an_epochs=2, cnn_epochs=1, finetune_epochs=2),
    "sbf": dict(warmup_epochs=1, cycles=1, an_epochs=2, cnn_epochs=1, finetune_epochs=1),
    "abp": dict(joint_epochs=3, ramp_epochs=1, finetune_epochs=1),
    "aswl": dict(joint_epochs=2, ramp_epochs=1, fixed_epochs=1),
    "aswl-structured": dict(joint_epochs=2, ramp_epochs=1, finetune_epochs=1, mask_training=True),
    "taylor": dict(warmup_epochs=1, finetune_epochs=2),
    "random": dict(warmup_epochs=2, finetune_epochs=1),
}




def run(method, kind, **kw):
    return attnprune.prune(make_model(), make_loader(kind), 0.5, method=method, seed=3, progress=False,
                           eval_loader=make_loader("global"), **SCHEDULES[method], **kw)


_REFERENCE: dict = {}


def reference(method, kind):
    if (method, kind) not in _REFERENCE:
        _REFERENCE[(method, kind)] = run(method, kind)
    return _REFERENCE[(method, kind)]


def assert_same_result(a, b):
    assert len(a.masks) == len(b.masks) and all(torch.equal(x, y) for x, y in zip(a.masks, b.masks))
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    ra, rb = a.report, b.report
    assert [(h.phase, h.epoch, h.loss, h.kept, h.accuracy) for h in ra.history] == \
        [(h.phase, h.epoch, h.loss, h.kept, h.accuracy) for h in rb.history]
    assert (ra.accuracy_before_pruning, ra.accuracy_at_removal, ra.accuracy_after) == \
        (rb.accuracy_before_pruning, rb.accuracy_at_removal, rb.accuracy_after)
    assert (ra.ratio_achieved, ra.params_after, ra.macs_after) == (rb.ratio_achieved, rb.params_after, rb.macs_after)
    assert repr(ra.method_report) == repr(rb.method_report)
    assert a.pruning_history == b.pruning_history


def interrupt_then_resume(method, kind, at, tmp_path):
    loss = Interrupting(at)
    with pytest.raises(KeyboardInterrupt):
        # from scratch distill="auto" is off, as it is for a user's loss_fn (test_iterative resumes a distilled run)
        run(method, kind, loss_fn=loss, checkpoint_dir=tmp_path, distill=None)
    assert loss.calls == at
    saved = load_checkpoint(tmp_path)
    resumed = run(method, kind, checkpoint_dir=tmp_path, resume=True)
    return saved, resumed


@pytest.mark.parametrize("at, where, kind", [
    (3, None, "generator"),                  # inside warm-up: no checkpoint yet, a fresh start
    (7, ("train", 0, 1), "global"),          # first AN epoch: resumes at the phase boundary
    (10, ("train", 1, 1), "generator"),      # second AN epoch: resumes mid-phase (optimiser state)
    (10, ("train", 1, 1), "global"),
    (13, ("train", 1, 2), "generator"),      # CNN phase: binary masks chosen at the phase start
    (16, ("finetune", 3, 0), "generator"),   # fine-tuning: rebuilt from the saved masks
    (19, ("finetune", 3, 1), "global"),      # mid fine-tuning
])
def test_paam_resume_equals_uninterrupted_run(tmp_path, at, where, kind):
    saved, resumed = interrupt_then_resume("paam", kind, at, tmp_path)
    if where is None:
        assert saved is None
    else:
        assert (saved["stage"], saved["phase"], saved["epoch"]) == where
    assert_same_result(reference("paam", kind), resumed)
    assert count_hooks(resumed.model) == 0


@pytest.mark.parametrize("method, at", [
    ("sbf", 10), ("abp", 6), ("abp", 9), ("aswl", 6), ("aswl", 9), ("aswl-structured", 6),
    ("taylor", 6), ("taylor", 12), ("random", 6),
])
def test_every_method_resumes_bit_identically(tmp_path, method, at):
    saved, resumed = interrupt_then_resume(method, "generator", at, tmp_path)
    assert saved is not None
    assert_same_result(reference(method, "generator"), resumed)


def test_checkpoint_holds_method_optimiser_and_random_state(tmp_path):
    saved, _ = interrupt_then_resume("paam", "generator", 10, tmp_path)  # mid AN phase
    method = saved["method"]
    assert isinstance(method["attr.lam"], float) and method["attr.lam"] > 0  # calibrated lam
    assert len(method["attr.lam_history"]) == 3  # the controller's steps so far
    an = [v for k, v in method.items() if k.startswith("p")]
    assert an and all(isinstance(v, torch.Tensor) for v in an)
    optim = saved["optim"]
    assert optim["step"] == 3 and len(optim["optimizers"]) == len(optim["schedulers"]) == 1  # AN only
    assert saved["gates"]["mode"] == "analog"
    rank0 = saved["ranks"][0]
    assert {"torch", "python", "numpy"} <= set(rank0["rng"])
    assert len(rank0["loader"]) == 1  # the loader's generator
    assert [h["phase"] for h in saved["history"]] == ["warmup", "an"]
    # only the checkpoint is left: no temporary file
    assert sorted(os.listdir(tmp_path)) == [CHECKPOINT_NAME]


def test_abp_checkpoint_holds_m_and_counters(tmp_path):
    saved, _ = interrupt_then_resume("abp", "generator", 6, tmp_path)
    m = [v for k, v in saved["method"].items() if k.startswith("p")]
    groups = reference("abp", "generator").report.groups
    assert [t.numel() for t in m] == [g.total for g in groups]
    assert saved["method"]["attr.step"] == 3 and saved["method"]["attr.initialized"] is True
    assert saved["method"]["attr.flips"][1:] == [0, 0] and saved["method"]["attr._frozen_m"] is None


def test_abp_resumes_inside_the_frozen_masks(tmp_path):
    # joint 3 epochs of 3 steps, ramp 1: the masks freeze after step 6, the end of epoch 2
    saved, resumed = interrupt_then_resume("abp", "generator", 9, tmp_path)
    assert saved["method"]["attr.step"] == 6
    assert [m.shape for m in saved["method"]["attr._frozen_m"]] == [m.shape for k, m in saved["method"].items()
                                                                   if k.startswith("p")]
    assert resumed.report.method_report["freeze_step"] == 6
    assert resumed.report.method_report["flips_per_epoch"][2] == 0


def test_resume_without_checkpoint_starts_fresh(tmp_path):
    res = run("paam", "generator", checkpoint_dir=tmp_path / "new", resume=True)
    assert_same_result(reference("paam", "generator"), res)
    assert (tmp_path / "new" / CHECKPOINT_NAME).is_file()


def test_resume_after_completion_returns_the_same_result(tmp_path):
    first = run("random", "generator", checkpoint_dir=tmp_path)
    again = run("random", "generator", checkpoint_dir=tmp_path, resume=True)
    assert_same_result(first, again)


def test_checkpoint_of_another_run_is_refused(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        run("paam", "generator", loss_fn=Interrupting(10), checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match=r"checkpoint .* different run \(config: .*resume=False"):
        attnprune.prune(make_model(), make_loader("generator"), 0.5, method="paam", seed=3, progress=False,
                        checkpoint_dir=tmp_path, resume=True, **{**SCHEDULES["paam"], "an_epochs": 3})


def test_resume_false_starts_over(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        run("paam", "generator", loss_fn=Interrupting(10), checkpoint_dir=tmp_path)
    res = run("paam", "generator", checkpoint_dir=tmp_path)  # resume=False: ignore and overwrite
    assert_same_result(reference("paam", "generator"), res)
    assert load_checkpoint(tmp_path)["stage"] == "finetune"


class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("cannot pickle")


def test_atomic_save_keeps_the_previous_file_on_failure(tmp_path):
    path = tmp_path / "x.pt"
    atomic_save({"a": torch.ones(2)}, path)
    with pytest.raises(RuntimeError, match="cannot pickle"):
        atomic_save({"a": _Unpicklable()}, path)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(2))
    assert os.listdir(tmp_path) == ["x.pt"]


def test_corrupt_checkpoint_is_reported(tmp_path):
    Path(tmp_path, CHECKPOINT_NAME).write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read the checkpoint"):
        run("random", "generator", checkpoint_dir=tmp_path, resume=True)


@pytest.mark.parametrize("name", available_methods())
def test_method_state_dict_round_trip(name):
    """state_dict() -> load_state_dict() restores parameters and state attributes."""
    x = torch.randn(2, 1, 16, 16)
    methods = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = resnet20(in_channels=1)
        inst = attnprune.instrument(model, x)
        m = get_method(name)()
        m.attach(inst, Budget(0.5))
        methods.append(m)
    a, b = methods
    for p in a.parameters():
        with torch.no_grad():
            p.add_(torch.randn_like(p))
    if name == "paam":
        a.lam, a.lam_history = 0.25, [0.5, 0.25]
    b.load_state_dict(a.state_dict())
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        va, vb = sa[k], sb[k]
        assert (torch.equal(va, vb) if isinstance(va, torch.Tensor) else repr(va) == repr(vb)), k
    for m in methods:
        m.detach()
        m.inst.remove()
