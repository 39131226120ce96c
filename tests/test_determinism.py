"""Determinism: the same seed gives the same masks and the same pruned model."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import attnprune
from attnprune.models import resnet20


def loader(generator: torch.Generator | None = None):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(48, 1, 16, 16, generator=g)
    y = torch.randint(0, 10, (48,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, generator=generator)


SCHEDULES = {
    "paam": dict(warmup_epochs=1, cycles=1, an_epochs=1, cnn_epochs=1, finetune_epochs=1, variant="kq"),
    "abp": dict(joint_epochs=2, ramp_epochs=1, finetune_epochs=1),
    "random": dict(warmup_epochs=1, finetune_epochs=1),
}


def run(method, seed, data, model=None):
    if model is None:
        model = resnet20(in_channels=1)  # initialised from whatever the global generator holds
    return attnprune.prune(model, data, 0.5, method=method, seed=seed, progress=False, **SCHEDULES[method])


def same(a, b) -> bool:
    if len(a.masks) != len(b.masks) or not all(torch.equal(x, y) for x, y in zip(a.masks, b.masks)):
        return False
    sa, sb = a.model.state_dict(), b.model.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("method", list(SCHEDULES))
def test_same_seed_same_masks_and_model(method):
    torch.manual_seed(0)
    model = resnet20(in_channels=1)
    # the global generator and the loader's generator are in different states for the two runs:
    # seed= resets both
    torch.manual_seed(123)
    first = run(method, 7, loader(torch.Generator().manual_seed(1)), model)
    torch.manual_seed(456)
    second = run(method, 7, loader(torch.Generator().manual_seed(2)), model)
    assert same(first, second)
    assert [h.loss for h in first.report.history] == [h.loss for h in second.report.history]


def test_same_seed_with_the_same_loader_object_reused():
    torch.manual_seed(0)
    model = resnet20(in_channels=1)
    data = loader(torch.Generator())
    assert same(run("paam", 5, data, model), run("paam", 5, data, model))


def test_different_seeds_differ():
    torch.manual_seed(0)
    model = resnet20(in_channels=1)
    a = run("random", 1, loader(), model)
    b = run("random", 2, loader(), model)
    assert not all(torch.equal(x, y) for x, y in zip(a.masks, b.masks))


# -- the data order depends only on (seed, epoch) --------------------------------------------
class Recording:
    """A loader wrapper recording the targets of every complete pass over it (a training epoch).

    A pass someone abandons (the argument check, PAAM's calibration) is not recorded.
    With ``expose_generator`` the wrapper shows the base loader's generator as its own,
    as a ``DataLoader(generator=g)`` does.
    """

    def __init__(self, base: DataLoader, expose_generator: bool):
        self.base = base
        self.passes: list[list[int]] = []
        if expose_generator:
            self.generator = base.generator

    def __len__(self):
        return len(self.base)

    def __iter__(self):
        seen = []
        for x, y in self.base:
            seen.extend(y.tolist())
            yield x, y
        self.passes.append(seen)


def epoch_orders(method, seed, kind, **options):
    data = Recording(loader(torch.Generator() if kind == "generator" else None), kind == "generator")
    torch.manual_seed(0)
    attnprune.prune(resnet20(in_channels=1), data, 0.5, method=method, seed=seed, progress=False, **options)
    return data.passes


@pytest.mark.parametrize("kind", ["generator", "global"])
def test_epoch_order_depends_only_on_seed_and_epoch(kind):
    # paam draws one batch for its lam calibration before the AN epoch; random draws none.
    # Both train 4 epochs: paam warmup, an, cnn, finetune; random 3 warmup, finetune.
    paam = epoch_orders("paam", 7, kind, warmup_epochs=1, cycles=1, an_epochs=1, cnn_epochs=1, finetune_epochs=1)
    plain = epoch_orders("random", 7, kind, warmup_epochs=3, finetune_epochs=1)
    assert len(paam) == len(plain) == 4
    assert sorted(paam[0]) == sorted(plain[0])  # a permutation of the same data set
    assert paam == plain
    assert len({tuple(p) for p in plain}) == 4  # every epoch has its own order
    other_seed = epoch_orders("random", 8, kind, warmup_epochs=3, finetune_epochs=1)
    assert all(a != b for a, b in zip(plain, other_seed))


def test_runner_reseeds_every_epoch_whatever_drew_in_between():
    from attnprune.methods.base import Phase
    from attnprune.train.runner import Runner

    def orders(extra_draws: bool):
        data = Recording(loader(), expose_generator=False)
        runner = Runner(loader=data, loss_fn=torch.nn.functional.cross_entropy, progress=False, seed=3)
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 10))

        def draw(*_):
            if extra_draws:  # something else takes a batch (and a draw of torch's generator)
                next(iter(data))
                torch.rand(5)

        draw()
        runner.run(model, Phase(name="a", epochs=2), on_epoch_end=draw)
        draw()
        runner.run(model, Phase(name="b", epochs=1), on_epoch_end=draw)
        return data.passes, runner.epochs_done

    assert orders(False) == orders(True)
    passes, done = orders(False)
    assert done == 3 and len({tuple(p) for p in passes}) == 3
