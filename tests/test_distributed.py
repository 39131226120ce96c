"""prune() under DistributedDataParallel: two CPU processes (gloo on 127.0.0.1).

Both ranks must end with the same masks and the same pruned model, bit for bit;
only rank 0 writes checkpoints; the accuracy is comparable to one process with
the same effective batch; an interrupted two-process run resumes bit-identically.
"""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import attnprune
from attnprune.train.distributed import free_port

from _util import Interrupting

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed with gloo"
)

WORLD = 2
BATCH = 16  # per rank; the one-process run uses WORLD * BATCH
SCHEDULE = dict(warmup_epochs=2, cycles=1, an_epochs=1, cnn_epochs=1, finetune_epochs=1)


def quadrants(n: int, seed: int) -> TensorDataset:
    """A learnable toy task: which quadrant of a 16x16 image holds a bright square."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = 0.5 * torch.randn(n, 1, 16, 16, generator=g)
    for i, label in enumerate(y.tolist()):
        r, c = divmod(label, 2)
        x[i, 0, 8 * r:8 * r + 8, 8 * c:8 * c + 8] += 1.5
    return TensorDataset(x, y)


def make_model():
    from attnprune.models import resnet20

    torch.manual_seed(0)
    return resnet20(in_channels=1, num_classes=4)




def _summary(res) -> dict:
    return {
        "masks": res.masks,
        "state": {k: v.clone() for k, v in res.model.state_dict().items()},
        "losses": [h.loss for h in res.report.history],
        "accuracy": res.report.accuracy_after,
        "hooks": sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in res.model.modules()),
    }


def _worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        import attnprune.train.checkpoint as ckpt

        writes = []
        real_save = ckpt.atomic_save

        def counting_save(obj, path):
            writes.append(str(path))
            real_save(obj, path)

        ckpt.atomic_save = counting_save
        train = quadrants(192, 0)
        loader = DataLoader(train, batch_size=BATCH,
                            sampler=DistributedSampler(train, WORLD, rank, shuffle=True, seed=0))
        test = quadrants(128, 1)
        eval_loader = DataLoader(test, batch_size=64, sampler=DistributedSampler(test, WORLD, rank, shuffle=False))
        # distilled on purpose (from scratch "auto" is off): the teacher's state crosses the resume too
        kw = dict(method="paam", seed=0, progress=False, eval_loader=eval_loader, distill=True, **SCHEDULE)

        full = attnprune.prune(make_model(), loader, 0.5, checkpoint_dir=os.path.join(out, "full"), **kw)
        # interrupted on every rank in the second warm-up epoch (calls: 1 check, 2-7 and 8-13 warm-up),
        # resumed mid-phase (optimiser, scheduler and per-rank random states)
        try:
            attnprune.prune(make_model(), loader, 0.5, loss_fn=Interrupting(10),
                            checkpoint_dir=os.path.join(out, "cut"), **kw)
            interrupted = False
        except KeyboardInterrupt:
            interrupted = True
        resumed = attnprune.prune(make_model(), loader, 0.5, checkpoint_dir=os.path.join(out, "cut"),
                                  resume=True, **kw)
        torch.save({"full": _summary(full), "resumed": _summary(resumed), "interrupted": interrupted,
                    "writes": len(writes)}, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _equal(a: dict, b: dict) -> bool:
    return (
        len(a["masks"]) == len(b["masks"])
        and all(torch.equal(x, y) for x, y in zip(a["masks"], b["masks"]))
        and a["state"].keys() == b["state"].keys()
        and all(torch.equal(a["state"][k], b["state"][k]) for k in a["state"])
    )


def test_two_processes_agree_match_one_process_and_resume():
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_worker, args=(free_port(), out), nprocs=WORLD, join=True)
        r0 = torch.load(os.path.join(out, "rank0.pt"), weights_only=True)
        r1 = torch.load(os.path.join(out, "rank1.pt"), weights_only=True)
        files = sorted(os.listdir(os.path.join(out, "full")))

    # identical masks and pruned models on both ranks
    assert _equal(r0["full"], r1["full"])
    assert r0["full"]["losses"] == r1["full"]["losses"]
    assert r0["full"]["accuracy"] == r1["full"]["accuracy"]
    assert r0["full"]["hooks"] == r1["full"]["hooks"] == 0
    # only rank 0 writes, atomically (nothing but the checkpoint is left)
    assert r0["writes"] > 0 and r1["writes"] == 0
    assert files == ["checkpoint.pt"]
    # interrupted and resumed == uninterrupted, on both ranks
    assert r0["interrupted"] and r1["interrupted"]
    assert _equal(r0["resumed"], r0["full"]) and _equal(r1["resumed"], r1["full"])
    assert r0["resumed"]["losses"] == r0["full"]["losses"]

    # one process, same effective batch: comparable accuracy on the toy task
    single = attnprune.prune(make_model(), DataLoader(quadrants(192, 0), batch_size=WORLD * BATCH, shuffle=True),
                             0.5, method="paam", seed=0, progress=False,
                             eval_loader=DataLoader(quadrants(128, 1), batch_size=64), **SCHEDULE)
    acc_ddp, acc_one = r0["full"]["accuracy"], single.report.accuracy_after
    assert acc_one >= 80 and acc_ddp >= 80, (acc_ddp, acc_one)
    assert abs(acc_ddp - acc_one) <= 15, (acc_ddp, acc_one)
