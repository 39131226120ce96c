"""The quality benchmark's baselines under a trained start: ``taylor-iterative`` and slim's sparsity phase."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import attnprune
from attnprune.methods import Budget, Context, get_method
from attnprune.models import resnet20
from attnprune.train.checkpoint import load_checkpoint
from attnprune.train.runner import Runner

from _util import Interrupting, ResidualNet, count_hooks, synthetic_loader

# 64 samples in batches of 16: 4 steps per epoch; 2 iterative epochs = 8 steps, ramp over the first 4.
ITER = dict(prune_steps=4, prune_epochs=2, ramp_fraction=0.5, finetune_epochs=1, taylor_batches=2)


def tiny_data(n=64, seed=0):
    return synthetic_loader((1, 16, 16), n=n, seed=seed, shuffle=True)


def model():
    torch.manual_seed(0)
    return resnet20(in_channels=1)


def run(**kw):
    return attnprune.prune(model(), tiny_data(), 0.5, method="taylor-iterative", trained=True, seed=1,
                           progress=False, **{"round_to": 1, **ITER, **kw})


@pytest.fixture(scope="module")
def result():
    return run()


def test_registered_with_schema():
    cls = get_method("taylor-iterative")
    assert "taylor-iterative" in attnprune.available_methods()
    with pytest.raises(ValueError, match="prune_steps"):
        cls(prune_steps=0)
    with pytest.raises(ValueError, match="ramp_fraction"):
        cls(ramp_fraction=0.0)


def test_ratio_met_and_gated_equals_pruned(result):
    # prune() finalizes with verify=True: the gated model's outputs equal the pruned model's
    r = result.report
    assert abs(r.ratio_achieved - 0.5) <= 0.01
    assert r.params_after == sum(p.numel() for p in result.model.parameters())
    assert [h.phase for h in r.history] == ["iterative", "iterative", "finetune"]
    assert count_hooks(result.model) == 0


def test_closed_channels_grow_over_the_steps(result):
    rep = result.report.method_report
    closed = rep["closed_per_step"]
    assert len(closed) == 4 and rep["schedule"] == [0, 1, 2, 3]
    assert all(b > a for a, b in zip(closed, closed[1:])), closed  # a one-shot closes all at once
    ratios = rep["step_ratios"]
    assert all(abs(r - 0.5 * k / 4) <= 0.011 for k, r in zip(range(1, 5), ratios)), ratios
    assert closed[-1] == sum(g.total - g.kept for g in result.report.groups)


def test_closed_channels_stay_closed_and_emit_zeros():
    net = ResidualNet()
    x = torch.randn(2, 3, 16, 16)
    inst = attnprune.instrument(net, x)
    loader = synthetic_loader((3, 16, 16))
    method = get_method("taylor-iterative")(**ITER)

    def batches():
        yield from loader

    method.attach(inst, Budget(0.5), Context(batches=batches, loss_fn=nn.functional.cross_entropy,
                                             steps_per_epoch=len(loader)))
    history = []
    orig = method.prune_step

    def recording_step():
        orig()
        history.append(inst.masks())

    method.prune_step = recording_step
    runner = Runner(loader=loader, loss_fn=nn.functional.cross_entropy, progress=False)
    for phase in method.phases(trained=True):
        runner.run(net, phase, method)
    assert len(history) == 4
    for before, after in zip(history, history[1:]):
        for b, a in zip(before, after):
            assert not bool((a & ~b).any())  # never reopened
    sel = method.select()
    assert all(torch.equal(s, m) for s, m in zip(sel.masks, history[-1]))
    # a closed channel of the stem emits exact zeros after its BatchNorm in binary mode
    seen = {}
    h = net.stem[1].register_forward_hook(lambda m, i, o: seen.setdefault("out", o))
    inst.mode = "binary"
    with torch.no_grad():
        net.eval()(x)
    h.remove()
    stem = next(g for g in inst.groups if any(s.module is net.stem[1] for s in g.spans))
    closed = ~history[-1][stem.index]
    assert closed.any()
    span = next(s for s in stem.spans if s.module is net.stem[1])
    local = span.local[closed[span.root]]
    assert torch.count_nonzero(seen["out"][:, local]) == 0
    method.detach()
    inst.remove()


def test_same_seed_same_masks(result):
    again = run()
    assert all(torch.equal(a, b) for a, b in zip(result.masks, again.masks))


# -- slim under a trained start ------------------------------------------------------------
def _slim_gammas(sparsity, trained=True, **kw):
    torch.manual_seed(0)
    net = ResidualNet()
    inst = attnprune.instrument(net, torch.randn(2, 3, 16, 16))
    method = get_method("slim")(sparsity=sparsity, **kw)
    method.attach(inst, Budget(0.5), Context())
    phases = method.phases(trained=trained)
    runner = Runner(loader=synthetic_loader((3, 16, 16)), loss_fn=nn.functional.cross_entropy, progress=False)
    for phase in phases:
        runner.run(net, phase, method)
    gammas = torch.cat([bn.weight.detach().abs().flatten() for bn in method.bns])
    method.detach()
    inst.remove()
    return phases, gammas


def test_slim_trained_runs_a_sparsity_phase():
    phases, penalised = _slim_gammas(0.05)
    assert [(p.name, p.epochs, p.train_model) for p in phases] == [("sparsity", 1, True)]
    _, plain = _slim_gammas(0.0)
    # the L1 penalty on the BN scales ran: they shrank well below the unpenalised run's
    assert penalised.sum() < plain.sum() - 0.01 * plain.numel()


def test_slim_phases_otherwise_unchanged():
    phases, _ = _slim_gammas(0.05, sparsity_epochs=0)
    assert phases == []
    method = get_method("slim")(warmup_epochs=2)
    assert [(p.name, p.epochs) for p in method.phases(trained=False)] == [("warmup", 2)]
    with pytest.raises(ValueError, match="sparsity_epochs"):
        get_method("slim")(sparsity_epochs=-1)




def test_resume_mid_phase_equals_uninterrupted(result, tmp_path):
    # loss calls: 1 argument check; epoch 1 of "iterative": 4 steps x (2 Taylor batches + 1 train) = 12;
    # call 15 lies in its second epoch, after every pruning step: resumes from the epoch-1 checkpoint
    with pytest.raises(KeyboardInterrupt):
        run(loss_fn=Interrupting(15), checkpoint_dir=tmp_path, distill=True)  # as "auto" gives on resume
    saved = load_checkpoint(tmp_path)
    assert (saved["stage"], saved["phase"], saved["epoch"]) == ("train", 0, 1)
    assert saved["method"]["attr.steps_done"] == 4
    resumed = run(checkpoint_dir=tmp_path, resume=True)
    assert all(torch.equal(a, b) for a, b in zip(result.masks, resumed.masks))
    sa, sb = result.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert resumed.report.method_report == result.report.method_report
