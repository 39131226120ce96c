"""Seeding of a :func:`attnprune.prune` run, and the per-epoch reseeding of the data order.

With ``seed=s`` the run starts from :func:`seed_run` (torch's generators and the
loader's own), and before every training epoch the runner calls
:func:`seed_epoch`, so that the batch order of epoch ``k`` (``k`` counts the
epochs of the whole run, over every phase, from 0) depends only on ``(s, k)``:
not on what drew from the loader, or from torch's generator, before it (PAAM's
λ calibration, Taylor scoring, an evaluation, an argument check). Every method,
and every arm of a benchmark, then sees the same data in its ``k``-th epoch.

The rule (:func:`seed_epoch`): let ``s_k = epoch_seed(s, k)``.

* If the loader exposes torch generators (``loader.generator``,
  ``loader.sampler.generator``, ``loader.batch_sampler.sampler.generator``: a
  ``DataLoader(..., generator=g)`` shuffles with ``g``), each is seeded with
  ``s_k``; torch's global generator is left alone (dropout and augmentation
  continue their stream, which checkpoints restore).
* Otherwise torch's global generator (CPU and CUDA) is seeded with ``s_k``: it
  is what a default ``DataLoader(shuffle=True)`` draws its order from, so this
  also fixes whatever else draws from it during the epoch (dropout,
  torchvision augmentation).
* A sampler with ``set_epoch`` (``DistributedSampler``) gets ``k`` as before;
  its order depends on its own seed and ``k``.

Without a seed nothing is reseeded. Randomness the rule cannot reach (a
sampler or dataset with a private generator, NumPy or Python ``random`` in a
dataset) is not controlled.
"""

from __future__ import annotations

import hashlib

import torch

from .checkpoint import loader_generators

__all__ = ["epoch_seed", "seed_run", "seed_epoch"]


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch`` of a run seeded with ``seed``: a 63-bit integer.

    The first 8 bytes (little-endian) of BLAKE2b of ``"attnprune:{seed}:{epoch}"``,
    top bit cleared, so nearby ``(seed, epoch)`` pairs get unrelated seeds.
    """
    digest = hashlib.blake2b(f"attnprune:{seed}:{epoch}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def seed_run(seed: int, loader) -> None:
    """Seed torch's generators (CPU and CUDA) and the loader's own generators with ``seed``."""
    torch.manual_seed(seed)
    for g in loader_generators(loader):
        g.manual_seed(seed)


def seed_epoch(loader, seed: int | None, epoch: int) -> None:
    """Prepare ``loader`` for epoch ``epoch`` of the run (see the module docstring).

    Args:
        loader: The training loader.
        seed: The run's seed; None reseeds nothing (only ``set_epoch`` is called).
        epoch: The epoch's index over the whole run (``Runner.epochs_done``).
    """
    if seed is not None:
        s = epoch_seed(seed, epoch)
        gens = loader_generators(loader)
        if gens:
            for g in gens:
                g.manual_seed(s)
        else:
            torch.manual_seed(s)
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
