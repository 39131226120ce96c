"""Data splits, per-epoch data order and the shared dense starting points of the quality benchmark.

* **Splits.** A fixed permutation (seed :data:`SPLIT_SEED`, independent of the run's
  seed) of the 60k Fashion-MNIST training images: the first ``val_size`` are the
  validation split, the next ``train_size`` the training subset. The 10k test set
  is used whole (or its first ``test_size`` images for smoke runs).
* **Data order.** :class:`EpochSampler` draws epoch ``e``'s order from a generator
  seeded with ``(seed, offset + e)`` only: the runner calls ``set_epoch`` before
  each epoch, and a method that draws a batch outside the epochs (PAAM's lambda
  calibration, Taylor's gradient batches, the pipeline's argument check) sees the
  current epoch's order without shifting any later epoch.
* **Starting points.** :func:`dense_checkpoint` trains the dense model of a seed for
  ``dense_passes`` passes once and caches it under ``benchmarks/cache/``, keyed by
  the setup, the seed, the torch version and a hash of the training code.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Sampler, TensorDataset

from attnprune.data import load_fashion_mnist
from attnprune.methods.base import Phase
from attnprune.models import resnet20, resnet56
from attnprune.train.runner import Runner

__all__ = ["Setup", "EpochSampler", "splits", "loaders", "build_model", "dense_checkpoint", "code_hash", "CACHE",
           "DENSE_LR", "MODELS", "state_hash"]

HERE = Path(__file__).resolve().parent
CACHE = HERE / "cache"
SPLIT_SEED = 20240611
DENSE_LR = 0.05
MODELS = {"resnet20": resnet20, "resnet56": resnet56}
#: Files whose code decides what a dense checkpoint holds.
TRAINING_CODE = ("attnprune/train/runner.py", "attnprune/models.py", "attnprune/data.py", "attnprune/_batch.py",
                 "benchmarks/_dense.py")


@dataclass(frozen=True)
class Setup:
    """What a dense starting point depends on (besides the seed)."""

    model: str = "resnet20"
    in_channels: int = 1
    train_size: int = 12000
    val_size: int = 5000
    test_size: int | None = None
    batch_size: int = 128
    dense_passes: int = 12
    start: str = "trained"  # "trained": dense_passes of training; "warmup": the seeded init (methods warm up)

    def __post_init__(self):
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {sorted(MODELS)}, got {self.model!r}")
        if self.start not in ("trained", "warmup"):
            raise ValueError(f"start must be 'trained' or 'warmup', got {self.start!r}")
        if self.val_size < 1 or self.train_size < 1 or self.val_size + self.train_size > 60000:
            raise ValueError(f"val_size + train_size must be in [2, 60000], got {self.val_size} + {self.train_size}")


class EpochSampler(Sampler):
    """A shuffling sampler whose order in epoch ``e`` depends only on ``(seed, offset + e)``.

    Args:
        n: Dataset size.
        seed: The run's seed.
        offset: Added to the epoch the runner announces (the arms start after the
            dense passes, so their first epoch is not a repeat of the dense model's).
    """

    def __init__(self, n: int, seed: int, offset: int = 0):
        self.n, self.seed, self.offset, self.epoch = n, seed, offset, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.offset + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())


def splits(setup: Setup) -> dict[str, TensorDataset]:
    """``{"train", "val", "test"}`` tensors (fixed, independent of the run's seed)."""
    full = load_fashion_mnist(train=True)
    x, y = full.tensors
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(SPLIT_SEED))
    val = perm[:setup.val_size]
    train = perm[setup.val_size:setup.val_size + setup.train_size]
    test = load_fashion_mnist(train=False)
    tx, ty = test.tensors
    if setup.test_size is not None:
        tx, ty = tx[:setup.test_size], ty[:setup.test_size]
    return {"train": TensorDataset(x[train], y[train]), "val": TensorDataset(x[val], y[val]),
            "test": TensorDataset(tx, ty)}


def loaders(setup: Setup, seed: int, offset: int, data: dict | None = None) -> dict[str, DataLoader]:
    """Training loader (order by :class:`EpochSampler`) and fixed-order val/test loaders."""
    data = data or splits(setup)
    train = data["train"]
    return {"train": DataLoader(train, batch_size=setup.batch_size, sampler=EpochSampler(len(train), seed, offset)),
            "val": DataLoader(data["val"], batch_size=512),
            "test": DataLoader(data["test"], batch_size=512)}


def build_model(setup: Setup, seed: int) -> torch.nn.Module:
    """The seeded initial model."""
    torch.manual_seed(seed)
    return MODELS[setup.model](in_channels=setup.in_channels)


def code_hash() -> str:
    """Hash of the files whose code decides a dense checkpoint."""
    root = HERE.parent
    h = hashlib.sha256()
    for rel in TRAINING_CODE:
        h.update(rel.encode())
        h.update((root / rel).read_bytes())
    return h.hexdigest()[:16]


def dense_phase(setup: Setup, epochs: int, name: str = "dense") -> Phase:
    """Plain SGD training of the dense model (cosine decay over the phase)."""
    return Phase(name=name, epochs=epochs, lr=DENSE_LR, optimizer="sgd", momentum=0.9, weight_decay=5e-4)


def dense_checkpoint(setup: Setup, seed: int, cache: Path = CACHE, data: dict | None = None) -> tuple[Path, dict]:
    """The seed's dense starting point: trained once, then read from the cache.

    Returns:
        ``(path, info)``: the cached state dict and what it is (its SHA-256, the
        cache key's fields, and the seconds its training took when it was made).
    """
    key_fields = {"setup": asdict(setup), "seed": seed, "torch": torch.__version__, "code": code_hash(),
                  "lr": DENSE_LR}
    key = hashlib.sha256(json.dumps(key_fields, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache) / f"dense-{setup.model}-{setup.start}-s{seed}-{key}.pt"
    meta = path.with_suffix(".json")
    if not (path.exists() and meta.exists()):
        import time

        t0 = time.perf_counter()
        model = build_model(setup, seed)
        if setup.start == "trained":
            runner = Runner(loader=loaders(setup, seed, 0, data)["train"],
                            loss_fn=torch.nn.functional.cross_entropy, progress=False)
            runner.run(model, dense_phase(setup, setup.dense_passes))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".pt.tmp")
        torch.save(model.state_dict(), tmp)
        tmp.replace(path)
        meta.write_text(json.dumps({**key_fields, "key": key, "seconds": time.perf_counter() - t0}))
    info = json.loads(meta.read_text())
    info["sha256"] = state_hash(torch.load(path, weights_only=True))
    return path, info


def state_hash(state: dict) -> str:
    """SHA-256 of a state dict's names, shapes, dtypes and values (not of the file's bytes)."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()
