"""Distillation from the network before pruning (``prune(distill=...)``): teacher, loss, resume, CLI."""

from __future__ import annotations

import gc
import json
import math
import weakref

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

import attnprune
from attnprune import cli
from attnprune.data import find_fashion_mnist
from attnprune.methods.base import Phase
from attnprune.models import resnet20
from attnprune.train import distill as distill_mod
from attnprune.train.checkpoint import load_checkpoint
from attnprune.train.distill import Distillation, Distiller, resolve_distill, soft_target_loss
from attnprune.train.runner import Runner

from _util import Interrupting, assert_unchanged, count_hooks, snapshot, synthetic_loader

SCHEDULES = {
    "l1": dict(warmup_epochs=1, finetune_epochs=1),
    "paam": dict(warmup_epochs=1, cycles=1, an_epochs=1, cnn_epochs=1, finetune_epochs=2),
}


def make_loader(n: int = 48):
    return synthetic_loader((1, 16, 16), n=n, shuffle=True)


def make_model():
    torch.manual_seed(0)
    return resnet20(in_channels=1)


def run(method, distill=True, **kw):
    kw = {**SCHEDULES[method], **kw}
    return attnprune.prune(make_model(), make_loader(), 0.5, method=method, seed=3, progress=False,
                           distill=distill, **kw)


# -- settings ---------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    (dict(temperature=0), r"temperature must be > 0, got 0"),
    (dict(temperature=-1.0), r"temperature must be > 0"),
    (dict(temperature=float("nan")), r"temperature must be a number > 0"),
    (dict(temperature="4"), r"temperature must be a number > 0, got '4'"),
    (dict(temperature=True), r"temperature must be a number > 0"),
    (dict(weight=-0.1), r"weight must lie in \[0, 1\], got -0.1"),
    (dict(weight=1.5), r"weight must lie in \[0, 1\]"),
    (dict(weight=None), r"weight must be a number in \[0, 1\]"),
])
def test_bad_settings_raise_clearly(kwargs, match):
    with pytest.raises(attnprune.DistillationError, match=match) as info:
        Distillation(**kwargs)
    assert isinstance(info.value, attnprune.AttnpruneError) and isinstance(info.value, ValueError)


def test_resolve_distill():
    assert resolve_distill(None) is None and resolve_distill(False) is None
    assert resolve_distill("auto") == "auto"
    assert resolve_distill(True) == Distillation(temperature=4.0, weight=0.5)
    d = Distillation(temperature=2, weight=1)
    assert resolve_distill(d) is d and d.temperature == 2.0 and isinstance(d.weight, float)
    with pytest.raises(attnprune.DistillationError, match=r"distill must be 'auto', None, False, True or .*got str"):
        resolve_distill("yes")


def test_bad_distill_fails_before_training_and_leaves_the_model_alone():
    model = make_model()
    snap = snapshot(model)
    for bad in ({"weight": 0.5}, "yes", 1):
        with pytest.raises(attnprune.DistillationError, match=r"distill must be 'auto', None, False, True or "):
            attnprune.prune(model, make_loader(), 0.5, method="l1", progress=False, distill=bad)
    assert_unchanged(model, snap)


class TwoHeads(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, classes)

    def forward(self, x):
        z = self.head(torch.relu(self.bn(self.conv(x))).mean((2, 3)))
        return z, z.detach()


class OneLogit(TwoHeads):
    def forward(self, x):
        return super().forward(x)[0]


@pytest.mark.parametrize("model, loss_fn, match", [
    (TwoHeads(), lambda out, y: F.cross_entropy(out[0], y), r"return one logits tensor .* returned a tuple"),
    (OneLogit(classes=1), lambda out, y: F.binary_cross_entropy_with_logits(out[:, 0], y.float() % 2),
     r"at least 2 classes along dimension 1; got a torch.float32 tensor of shape \(1, 1\)"),
])
def test_outputs_that_are_not_logits_are_refused_before_training(model, loss_fn, match):
    snap = snapshot(model)
    with pytest.raises(attnprune.DistillationError, match=match):
        attnprune.prune(model, make_loader(), 0.3, method="l1", progress=False, loss_fn=loss_fn, distill=True,
                        round_to=1, warmup_epochs=0, finetune_epochs=1)
    assert_unchanged(model, snap)


# -- the loss ---------------------------------------------------------------------------
def test_soft_target_loss_is_t_squared_kl():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(6, 5, generator=g, requires_grad=True)
    t = torch.randn(6, 5, generator=g)
    got = soft_target_loss(s, t, 3.0)
    want = 9.0 * F.kl_div(F.log_softmax(s / 3, 1), F.log_softmax(t / 3, 1), log_target=True, reduction="batchmean")
    assert torch.allclose(got, want, rtol=1e-6) and got > 0
    same = s.detach().clone().requires_grad_(True)
    zero = soft_target_loss(same, s.detach(), 3.0)
    zero.backward()
    assert abs(float(zero.detach())) < 1e-6 and float(same.grad.abs().max()) < 1e-7
    # (N, C, H, W) logits: KL over C, averaged over samples and positions
    s4, t4 = torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 4, 3, 3, generator=g)
    flat = soft_target_loss(s4.permute(0, 2, 3, 1).reshape(-1, 4), t4.permute(0, 2, 3, 1).reshape(-1, 4), 2.0)
    assert torch.allclose(soft_target_loss(s4, t4, 2.0), flat, rtol=1e-6)


class Plain(nn.Module):
    """No BatchNorm, no dropout: in train mode it computes what its eval-mode teacher computes."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Linear(4, 10)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).mean((2, 3)))


def _train_one_epoch(weight: float | None):
    torch.manual_seed(0)
    model = Plain()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    phase = Phase(name="cnn", epochs=1, lr=0.1, momentum=0.0, weight_decay=0.0)
    runner = Runner(loader=make_loader(), loss_fn=F.cross_entropy, progress=False, log_epochs=False)
    if weight is None:
        runner.run(model, phase)
        return before, model, None
    distiller = Distiller(Distillation(temperature=2.0, weight=weight), model, None, [phase])
    distiller.take(model)  # the teacher is the student as it is now
    hooks = count_hooks(model)
    with distiller.applied(runner, model, phase):
        assert runner.loss_fn is not F.cross_entropy and count_hooks(model) == hooks + 1
        runner.run(model, phase)
    assert runner.loss_fn is F.cross_entropy and count_hooks(model) == hooks  # exactly its own hook removed
    return before, model, distiller


def test_weight_one_with_the_student_equal_to_the_teacher_gives_no_gradient():
    before, model, distiller = _train_one_epoch(1.0)
    # first step: student == teacher, so the soft-target gradient is zero and nothing moves; then likewise
    assert all(torch.allclose(v, model.state_dict()[k], atol=1e-6) for k, v in before.items())
    teacher = distiller.teacher
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters()) and not teacher.training
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())
    _, plain, _ = _train_one_epoch(None)  # the task loss alone does move the weights
    assert not all(torch.allclose(v, plain.state_dict()[k], atol=1e-6) for k, v in before.items())


def test_a_distilled_phase_that_trains_only_the_method_is_not_distilled():
    model = Plain()
    distiller = Distiller(Distillation(), model, None, [])
    distiller.take(model)
    runner = Runner(loader=make_loader(), loss_fn=F.cross_entropy, progress=False)
    with distiller.applied(runner, model, Phase(name="an", epochs=1, train_model=False, train_method=True)):
        assert runner.loss_fn is F.cross_entropy and count_hooks(model) == 0


# -- end to end -------------------------------------------------------------------------
@pytest.mark.parametrize("method, distilled", [("l1", ["finetune"]), ("paam", ["cnn", "finetune"])])
def test_teacher_is_frozen_apart_and_freed(monkeypatch, method, distilled):
    seen = {}
    freeze = Distiller._freeze

    def spy(self, teacher):
        out = freeze(self, teacher)
        seen["ref"] = weakref.ref(out)
        seen["state"] = {k: v.clone() for k, v in out.state_dict().items()}
        seen["ids"] = {id(t) for t in list(out.parameters()) + list(out.buffers())}
        return out

    checked = []

    def check(record):  # every epoch end, fine-tuning included: the teacher is untouched
        teacher = seen["ref"]() if "ref" in seen else None
        if teacher is None:
            return
        assert not teacher.training
        assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
        assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in seen["state"].items())
        checked.append(record.phase)

    monkeypatch.setattr(Distiller, "_freeze", spy)
    res = run(method, distill=Distillation(temperature=3.0, weight=0.7), callbacks=[check])
    assert "ref" in seen and set(distilled) <= set(checked)
    assert res.report.distill == {"temperature": 3.0, "weight": 0.7, "teacher": "after warm-up",
                                  "phases": distilled}
    assert "distilled (temperature 3, weight 0.7) from the model after warm-up in: " in res.report.summary()
    json.dumps(res.report.to_dict())
    # not part of the pruned model: the same names as the dense model, no extra module, no shared tensor
    dense = make_model()
    assert set(res.model.state_dict()) == set(dense.state_dict())
    assert [n for n, _ in res.model.named_modules()] == [n for n, _ in dense.named_modules()]
    assert not seen["ids"] & {id(t) for t in list(res.model.parameters()) + list(res.model.buffers())}
    assert count_hooks(res.model) == 0
    gc.collect()
    assert seen["ref"]() is None, "the teacher must be released when prune() returns"


def test_the_soft_target_term_is_applied_and_weight_zero_is_the_plain_run():
    kw = dict(trained=True, finetune_epochs=1)
    off = run("l1", distill=None, **kw)
    zero = run("l1", distill=Distillation(weight=0.0), **kw)
    on = run("l1", distill=Distillation(weight=0.9), **kw)
    assert zero.report.distill["teacher"] == "the model as given" and off.report.distill is None
    a, b, c = off.model.state_dict(), zero.model.state_dict(), on.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), "weight 0 must equal no distillation bit for bit"
    assert any(not torch.allclose(a[k].float(), c[k].float()) for k in a), "the KL term changed nothing"
    assert [h.loss for h in off.report.history] == [h.loss for h in zero.report.history]
    assert [h.loss for h in on.report.history] != [h.loss for h in off.report.history]


def test_distilling_a_failed_run_releases_the_teacher(monkeypatch):
    seen = {}
    freeze = Distiller._freeze

    def spy(self, teacher):
        seen["ref"] = weakref.ref(freeze(self, teacher))
        return teacher

    monkeypatch.setattr(Distiller, "_freeze", spy)
    # loss calls: 1 argument check, 2-4 warm-up, 5-7 fine-tuning (distilled): interrupt there
    with pytest.raises(KeyboardInterrupt) as info:
        run("l1", loss_fn=Interrupting(6))
    gc.collect()
    assert info.value.__traceback__ is not None  # its frames (prune()'s locals) are still alive ...
    assert seen["ref"]() is None  # ... but the teacher was released


# -- resume -----------------------------------------------------------------------------
def assert_same(a, b):
    assert all(torch.equal(x, y) for x, y in zip(a.masks, b.masks))
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert [(h.phase, h.epoch, h.loss) for h in a.report.history] == \
        [(h.phase, h.epoch, h.loss) for h in b.report.history]
    assert a.report.distill == b.report.distill


_REFERENCE: dict = {}


# paam, 3 batches an epoch. loss_fn calls: 1 argument check; 2-4 warm-up; 5 lam calibration; 6-8 an;
# 9-11 cnn (distilled); 12-14 and 15-17 fine-tuning (distilled).
@pytest.mark.parametrize("at, where, teacher", [
    (7, ("train", 0, 1), False),      # after the warm-up: the teacher is taken again from the saved weights
    (10, ("train", 1, 1), True),      # after the AN phase: the teacher comes from the checkpoint
    (16, ("finetune", 3, 1), True),   # mid fine-tuning
])
def test_distilled_run_resumes_bit_identically(tmp_path, at, where, teacher):
    if "paam" not in _REFERENCE:
        _REFERENCE["paam"] = run("paam")
    with pytest.raises(KeyboardInterrupt):
        run("paam", loss_fn=Interrupting(at), checkpoint_dir=tmp_path)
    saved = load_checkpoint(tmp_path)
    assert (saved["stage"], saved["phase"], saved["epoch"]) == where
    assert (saved["teacher"] is not None) == teacher
    names = set(make_model().state_dict())
    if teacher:
        assert set(saved["teacher"]) == names  # the teacher's own entry, under the model's names ...
    if saved["stage"] == "train":
        assert set(saved["model"]) == names  # ... and none of it in the working model's state
    resumed = run("paam", checkpoint_dir=tmp_path, resume=True)
    assert_same(_REFERENCE["paam"], resumed)
    assert count_hooks(resumed.model) == 0


def test_resume_with_another_distillation_setting_is_refused(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        run("l1", loss_fn=Interrupting(6), checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match=r"different run \(distill: checkpoint \{'temperature': 4.0"):
        run("l1", distill=None, checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(ValueError, match=r"different run \(distill: .*'weight': 0.25"):
        run("l1", distill=Distillation(weight=0.25), checkpoint_dir=tmp_path, resume=True)


def test_a_checkpoint_past_the_teacher_without_it_is_refused():
    distiller = Distiller(Distillation(), Plain(), None, [Phase("warmup", 1), Phase("cnn", 1)])
    distiller.load_state_dict({"teacher": None})
    distiller.at_phase(0, Plain())
    assert distiller.teacher is None
    with pytest.raises(attnprune.DistillationError, match="holds no distillation teacher"):
        distiller.at_phase(1, Plain(), mid_phase=True)
    with pytest.raises(attnprune.DistillationError, match="holds no distillation teacher"):
        distiller.at_phase(2, Plain())
    with pytest.raises(attnprune.DistillationError, match="no 'teacher' entry"):
        distiller.load_state_dict({})


def test_teacher_state_reads_parametrized_weights():
    model = Plain()
    work = Plain()
    torch.nn.utils.parametrize.register_parametrization(work.conv, "weight", nn.Identity())
    distiller = Distiller(Distillation(), model, None, [])
    teacher = distiller.take(work)
    assert torch.equal(teacher.conv.weight, work.conv.parametrizations.weight.original)
    assert not torch.nn.utils.parametrize.is_parametrized(teacher.conv)


def test_distilled_phases_and_teacher_phase():
    warm, an = Phase("warmup", 1), Phase("an", 1, train_model=False, train_method=True)
    cnn, ft = Phase("cnn", 1), Phase("finetune", 2)
    assert distill_mod.teacher_phase([warm, an, cnn]) == 1
    assert distill_mod.teacher_phase([warm]) == 1 and distill_mod.teacher_phase([]) == 0
    assert distill_mod.distilled_phases([warm, an, cnn, an, cnn], ft) == ["cnn", "finetune"]
    assert distill_mod.distilled_phases([warm], Phase("finetune", 0)) == []


# -- command line ----------------------------------------------------------------------
def _args(*flags):
    return cli.build_parser("l1").parse_args(["prune", "--method", "l1", "--out", "o", *flags])


def test_cli_distill_flags():
    from attnprune.cli.prune_command import distillation

    assert distillation(_args()) == "auto"
    assert distillation(_args("--no-distill")) is None
    assert distillation(_args("--distill")) == Distillation()
    assert distillation(_args("--distill-weight", "0.25")) == Distillation(weight=0.25)  # a value implies on
    assert distillation(_args("--distill", "--distill-temperature", "2", "--distill-weight", "1")) == \
        Distillation(temperature=2.0, weight=1.0)


@pytest.mark.parametrize("flags, message", [
    (["--distill", "--distill-weight", "1.5"], "--distill-weight must lie in [0, 1], got 1.5"),
    (["--distill", "--distill-temperature", "0"], "--distill-temperature must be > 0, got 0.0"),
    (["--no-distill", "--distill-temperature", "2"], "--distill-temperature given with --no-distill"),
])
def test_cli_bad_distill_flags_exit_2_before_loading_data(tmp_path, capsys, flags, message):
    rc = cli.main(["prune", "--method", "l1", "--out", str(tmp_path / "o"), *flags])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("attnprune: error: ") and message in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(find_fashion_mnist() is None, reason="Fashion-MNIST is not installed")
def test_cli_prune_with_distill_records_it(tmp_path):
    out = tmp_path / "run"
    rc = cli.main(["prune", "--model", "resnet20", "--method", "l1", "--round-to", "1", "--out", str(out),
                   "--train-subset", "128", "--test-subset", "64", "--batch-size", "64", "--warmup-epochs", "1",
                   "--finetune-epochs", "1", "--option", "steps_per_epoch=2", "--quiet",
                   "--distill", "--distill-weight", "0.25"])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert report["distill"] == {"temperature": 4.0, "weight": 0.25, "teacher": "after warm-up",
                                 "phases": ["finetune"]}
    assert "| Distillation (teacher after warm-up) | temperature 4, weight 0.25; phases finetune |" in \
        (out / "report.md").read_text()
    args = json.loads((out / "command.json").read_text())["args"]
    assert args["distill"] is True and args["distill_weight"] == 0.25
    assert math.isclose(report["ratio_achieved"], 0.5, abs_tol=0.01)


# -- several processes -----------------------------------------------------------------
def _ddp_worker(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist
    from torch.utils.data import DistributedSampler

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        data = make_loader(64).dataset
        loader = DataLoader(data, batch_size=16, sampler=DistributedSampler(data, 2, rank, shuffle=True, seed=0))
        res = attnprune.prune(make_model(), loader, 0.5, method="paam", seed=0, progress=False, distill=True,
                              **SCHEDULES["paam"])
        torch.save({"masks": res.masks, "state": res.model.state_dict(), "distill": res.report.distill,
                    "losses": [h.loss for h in res.report.history], "hooks": count_hooks(res.model)},
                   f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes: about 40 s on 2 busy cores
@pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                    reason="needs torch.distributed with gloo")
def test_distilled_run_under_ddp_agrees_on_both_ranks(tmp_path):
    import torch.multiprocessing as mp

    from attnprune.train.distributed import free_port

    mp.spawn(_ddp_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert all(torch.equal(a, b) for a, b in zip(r0["masks"], r1["masks"]))
    assert r0["state"].keys() == r1["state"].keys() and all(torch.equal(r0["state"][k], r1["state"][k])
                                                             for k in r0["state"])
    assert r0["losses"] == r1["losses"] and r0["hooks"] == r1["hooks"] == 0
    assert r0["distill"]["phases"] == ["cnn", "finetune"]


def test_dry_run_with_distill_trains_nothing(capsys):
    model = make_model()
    snap = snapshot(model)
    plan = attnprune.prune(model, make_loader(), 0.5, method="l1", progress=False, distill=True, dry_run=True,
                           **SCHEDULES["l1"])
    assert [p.name for p in plan.phases] == ["warmup", "finetune"]
    assert_unchanged(model, snap)


def test_auto_distills_class_logits_with_the_default_loss_only():
    from attnprune.train.distill import auto_distillation

    x = torch.randn(2, 1, 8, 8)
    assert auto_distillation(make_model(), x, custom_loss=False) == Distillation()
    assert auto_distillation(make_model(), x, custom_loss=True) is None  # a user's loss: KL may not fit the task
    assert auto_distillation(TwoHeads(), x, custom_loss=False) is None  # tuple outputs
    assert auto_distillation(OneLogit(classes=1), x, custom_loss=False) is None  # one logit
    assert auto_distillation(make_model(), x, custom_loss=False, trained=False) is None  # a warm-up's teacher
    res = attnprune.prune(make_model(), make_loader(), 0.5, method="l1", progress=False, finetune_epochs=1,
                          trained=True)
    assert res.report.distill is not None and res.report.distill["weight"] == 0.5  # on by default when trained
    res = attnprune.prune(make_model(), make_loader(), 0.5, method="l1", progress=False, finetune_epochs=1,
                          trained=True, loss_fn=nn.functional.cross_entropy)
    assert res.report.distill is None
    res = attnprune.prune(make_model(), make_loader(), 0.5, method="l1", progress=False, finetune_epochs=1)
    assert res.report.distill is None  # from scratch: off unless asked for
    res = attnprune.prune(make_model(), make_loader(), 0.5, method="l1", progress=False, finetune_epochs=1,
                          distill=True)
    assert res.report.distill is not None  # asked for: on
