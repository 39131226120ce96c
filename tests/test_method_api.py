"""A new method in a few lines, through public names only, pruned end to end."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn

import attnprune
from attnprune.core import filter_l1, tolerance
from attnprune.methods import METHODS, TrainConfig
from attnprune.methods.options import option

from _util import count_hooks, fvcore_counts, synthetic_loader

NAME = "test-filter-power"


# -- the whole new method ---------------------------------------------------------------
@dataclass(frozen=True)
class FilterPowerConfig(TrainConfig):
    """Options of the test method.

    Attributes:
        power: Exponent applied to each channel's filter L1 norm.
    """

    power: float = option(2.0, low=0, low_open=True)


class FilterPower(attnprune.PruningMethod):
    """Rank channels by their filter L1 norm to ``power`` (after the warm-up)."""

    config_class = FilterPowerConfig

    def scores(self) -> list[torch.Tensor]:
        return [filter_l1(g) ** self.config.power for g in self.inst.groups]
# ----------------------------------------------------------------------------------------


class ToyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc(self.features(x))


@pytest.fixture
def registered():
    cls = attnprune.register_method(NAME)(FilterPower)
    yield cls
    METHODS.pop(NAME, None)


def test_new_method_prunes_end_to_end(registered):
    assert NAME in attnprune.available_methods() and attnprune.get_method(NAME) is registered
    torch.manual_seed(0)
    model = ToyCNN()
    x = torch.randn(4, 3, 16, 16)
    r = attnprune.prune(model, synthetic_loader((3, 16, 16)), 0.4, method=NAME, power=3.0, seed=0, round_to=1,
                        progress=False, finetune_epochs=1)
    rep = r.report
    assert abs(rep.ratio_achieved - 0.4) <= tolerance(None)
    params, _ = fvcore_counts(r.model, x)
    assert params == rep.params_after < rep.params_before == sum(p.numel() for p in model.parameters())
    assert sum(g.kept < g.total for g in rep.groups) >= 1  # layers shrank
    assert r.model.eval()(x).shape == (4, 10) and count_hooks(r.model) == 0
    assert [h.phase for h in rep.history] == ["warmup", "finetune"]
    with pytest.raises(ValueError, match="'power' of FilterPowerConfig must be a number > 0"):
        attnprune.prune(model, synthetic_loader((3, 16, 16)), 0.4, method=NAME, power=0.0, progress=False)


def test_the_scores_rank_the_channels(registered):
    model = ToyCNN()
    inst = attnprune.instrument(model, torch.randn(2, 3, 16, 16))
    method = registered(power=1.0)
    method.attach(inst, attnprune.Budget(0.5))
    sel = method.select()
    for s, m in zip(method.scores(), sel.masks):  # within a group, kept channels have the larger norms
        if (~m).any():
            assert s[m].min() >= s[~m].max()
    method.detach()
    inst.remove()


def test_select_at_another_ratio_is_the_budget_selection_at_that_ratio(registered):
    inst = attnprune.instrument(ToyCNN(), torch.randn(2, 3, 16, 16))
    method = registered(power=1.0)
    method.attach(inst, attnprune.Budget(0.5))
    try:
        assert all(bool(m.all()) for m in method.select_at(0.0).masks)  # a ramp's start keeps everything
        small, full = method.select_at(0.2), method.select()
        assert abs(small.ratio - 0.2) <= tolerance(None) and abs(full.ratio - 0.5) <= tolerance(None)
        assert sum(int(m.sum()) for m in small.masks) > sum(int(m.sum()) for m in full.masks)
    finally:
        method.detach()
        inst.remove()


def test_the_test_method_is_unregistered_afterwards():
    assert NAME not in attnprune.available_methods()


def test_a_method_without_scores_cannot_be_instantiated():
    class NoScores(attnprune.PruningMethod):
        config_class = TrainConfig

    with pytest.raises(TypeError, match="abstract.*scores"):
        NoScores()
    assert FilterPower().scores  # the complete one can
