"""Resume refusals (issue 15): the fingerprint names what differs; damaged or old checkpoints are refused."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import attnprune
from attnprune.models import resnet20
from attnprune.train.checkpoint import CHECKPOINT_NAME, atomic_save, load_checkpoint

from _util import Interrupting

SCHEDULE = dict(method="random", warmup_epochs=2, finetune_epochs=1, seed=3, progress=False)


def loader(seed=0, n=48):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 16, 16, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, generator=torch.Generator())


def model(seed=0):
    torch.manual_seed(seed)
    return resnet20(in_channels=1)




def interrupted(tmp_path, **kw):
    """A checkpoint after the first warm-up epoch (3 batches; call 1 is the argument check)."""
    args = dict(model=model(), loader=loader(), ratio=0.5, **SCHEDULE)
    args.update(kw)
    with pytest.raises(KeyboardInterrupt):
        attnprune.prune(args.pop("model"), args.pop("loader"), args.pop("ratio"), checkpoint_dir=tmp_path,
                        loss_fn=Interrupting(6), **{"distill": None, **args})  # as "auto" gives on resume from scratch
    assert load_checkpoint(tmp_path)["epoch"] == 1


@pytest.mark.parametrize("field, first, second", [
    ("ignored_layers", dict(ignored_layers=["layer1.0.conv1"]), dict(ignored_layers=["layer1.1.conv1"])),
    ("weights", dict(), dict(model=model(seed=1))),
    ("data", dict(), dict(loader=loader(seed=1))),
    ("data", dict(), dict(loader=loader(n=64))),
], ids=["ignored_layers", "weights", "data_values", "data_length"])
def test_resume_with_other_arguments_names_the_field(tmp_path, field, first, second):
    interrupted(tmp_path, **first)
    args = dict(model=model(), loader=loader(), ratio=0.5, **SCHEDULE)
    args.update(first)
    args.update(second)
    with pytest.raises(ValueError, match=rf"different run \({field}: checkpoint .*resume=False"):
        attnprune.prune(args.pop("model"), args.pop("loader"), args.pop("ratio"), checkpoint_dir=tmp_path,
                        resume=True, **args)


def test_the_users_modules_as_ignored_layers_resume(tmp_path):
    m = model()
    interrupted(tmp_path, model=m, ignored_layers=[m.layer1[0].conv1])
    res = attnprune.prune(m, loader(), 0.5, checkpoint_dir=tmp_path, resume=True,
                          ignored_layers=["layer1.0.conv1"], **SCHEDULE)  # the same set, by name
    assert res.report.ratio_achieved > 0.4


def test_data_fingerprint_does_not_draw_from_the_loader():
    from attnprune.train.fingerprint import data_fingerprint

    data = loader()
    before = torch.get_rng_state(), data.generator.get_state()
    fp = data_fingerprint(data)
    assert fp["length"] == 48 and isinstance(fp["items"], str)
    assert torch.equal(before[0], torch.get_rng_state()) and torch.equal(before[1], data.generator.get_state())
    assert data_fingerprint(loader()) == fp and data_fingerprint(loader(seed=2)) != fp


def test_format_1_checkpoint_is_refused_as_older(tmp_path):
    interrupted(tmp_path)
    path = tmp_path / CHECKPOINT_NAME
    state = load_checkpoint(tmp_path)
    atomic_save({**state, "format": 1}, path)  # the layout attnprune 0.1 wrote
    with pytest.raises(ValueError, match=r"format 1, written by an older attnprune; this version reads format 2"):
        load_checkpoint(tmp_path)
    from attnprune.train.checkpoint import FORMAT

    assert FORMAT == 2


def test_edited_checkpoint_is_refused_by_its_checksum(tmp_path):
    interrupted(tmp_path)
    path = tmp_path / CHECKPOINT_NAME
    outer = torch.load(path, weights_only=True)
    payload = outer["payload"].clone()
    payload[len(payload) // 2] ^= 1  # one flipped bit somewhere in the weights
    atomic_save({**outer, "payload": payload}, path)
    with pytest.raises(ValueError, match=r"damaged or was edited: the checksum of its payload does not match"):
        attnprune.prune(model(), loader(), 0.5, checkpoint_dir=tmp_path, resume=True, **SCHEDULE)


@pytest.mark.parametrize("key", ["model", "method", "ranks"])
def test_checkpoint_missing_a_key_is_refused_naming_it(tmp_path, key):
    from attnprune.train.checkpoint import pack

    interrupted(tmp_path)
    state = load_checkpoint(tmp_path)
    del state[key]
    atomic_save(pack(state), tmp_path / CHECKPOINT_NAME)  # a valid checksum of an incomplete payload
    with pytest.raises(ValueError, match=rf"lacks the key\(s\) \['{key}'\] of a 'train' checkpoint"):
        attnprune.prune(model(), loader(), 0.5, checkpoint_dir=tmp_path, resume=True, **SCHEDULE)
