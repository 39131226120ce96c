"""The runner: cosine learning-rate decay over a phase, callbacks passed per call."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

from attnprune.methods.base import Phase
from attnprune.train.runner import Runner


def data(n=48, batch=16):
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(n, 8, generator=g), torch.randint(0, 3, (n,), generator=g)),
                      batch_size=batch)


class NoLength:
    """An iterable without ``len()`` (a stream)."""

    def __init__(self, loader):
        self.loader = loader

    def __iter__(self):
        return iter(self.loader)


def lr_at_epoch_ends(loader, epochs, lr=0.1):
    torch.manual_seed(0)
    model = nn.Linear(8, 3)
    runner = Runner(loader=loader, loss_fn=nn.functional.cross_entropy, progress=False)
    seen = []

    def record(phase, epoch):
        seen.append((phase.name, epoch, runner.phase_state()["schedulers"][0]["_last_lr"][0]))

    runner.run(model, Phase(name="p", epochs=epochs, lr=lr), on_epoch_end=record)
    return seen


@pytest.mark.parametrize("streamed", [False, True], ids=["per-step", "no-length: per-epoch"])
def test_cosine_decay_over_the_phase(streamed):
    epochs, n_batches, lr = 4, 3, 0.1
    loader = NoLength(data()) if streamed else data()
    seen = lr_at_epoch_ends(loader, epochs, lr)
    assert [(name, epoch) for name, epoch, _ in seen] == [("p", e) for e in range(epochs)]
    # after epoch e: (e + 1) * n_batches of epochs * n_batches steps (per step), or e + 1 of epochs
    total, per_epoch = (epochs, 1) if streamed else (epochs * n_batches, n_batches)
    expected = [0.5 * lr * (1 + math.cos(math.pi * (e + 1) * per_epoch / total)) for e in range(epochs)]
    assert [v for _, _, v in seen] == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert seen[-1][2] == pytest.approx(0.0, abs=1e-12) and seen[0][2] < lr


def test_callbacks_are_per_call_not_runner_state():
    runner = Runner(loader=data(), loss_fn=nn.functional.cross_entropy, progress=False)
    assert not hasattr(runner, "on_epoch_end")
    calls = []
    model = nn.Linear(8, 3)
    runner.run(model, Phase(name="a", epochs=2), on_epoch_end=lambda ph, ep: calls.append((ph.name, ep)))
    runner.run(model, Phase(name="b", epochs=1))  # no callback: the first one is not reused
    assert calls == [("a", 0), ("a", 1)]
    assert [h.phase for h in runner.history] == ["a", "a", "b"] and runner.epochs_done == 3
    assert runner.phase_state() is None  # outside a phase
