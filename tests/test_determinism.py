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
