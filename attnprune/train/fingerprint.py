"""The fingerprint of a :func:`attnprune.prune` run: what a resumed run must share with it.

A checkpoint stores the fingerprint of the run that wrote it; resuming with a
different one is refused, naming the differing fields. It holds every argument
that changes the result: the method, budget and config, ``trained``, the seed,
the steps per epoch and world size, the ignored layers (resolved to qualified
module names), a hash of the starting weights and buffers, and what can be known
of the training data without drawing from the loader (drawing would consume
random state and break bit-identical resumption): the dataset's length, and a
hash of a few fixed items when the dataset is indexable.
"""

from __future__ import annotations

import dataclasses
import hashlib

import torch
import torch.nn as nn

from .._tree import flatten_tensors
from ..core.ignored import resolve_ignored
from . import distributed as dist_util
from .checkpoint import plain, rng_state, set_rng_state

__all__ = ["run_fingerprint", "ignored_names", "state_hash", "data_fingerprint", "DATA_ITEMS"]

#: Dataset items hashed into the fingerprint: the first, the middle and the last.
DATA_ITEMS = 3


def ignored_names(model: nn.Module, ignored_layers) -> list[str] | None:
    """``ignored_layers`` (modules of ``model`` or qualified names) as qualified names, containers expanded.

    ``prune()`` works on a deep copy of the model, whose modules are other
    objects: naming them lets the user's own modules (``ignored_layers=[model.c1]``)
    select the copy's, and makes the ignored set part of the run's fingerprint.

    Raises:
        ValueError, TypeError: as :func:`attnprune.core.ignored.resolve_ignored`.
    """
    if ignored_layers is None:
        return None
    chosen = {id(m) for m in resolve_ignored(model, ignored_layers)}
    return [name for name, m in model.named_modules() if id(m) in chosen]


def _update(h, t: torch.Tensor) -> None:
    t = t.detach().to("cpu").contiguous()
    h.update(f"{t.dtype}:{tuple(t.shape)}:".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def state_hash(model: nn.Module) -> str:
    """SHA-256 of the model's state dict (names, dtypes, shapes and values)."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        _update(h, t)
    return h.hexdigest()


def data_fingerprint(loader) -> dict:
    """The dataset's length and a hash of a few fixed items, read without iterating the loader.

    Returns:
        ``{"length": n or None, "items": hex digest or None}``; None where the
        loader has no sized or indexable ``dataset`` (a list of batches is itself
        the data: its length and a hash of its first and last batch are used).
    """
    data = getattr(loader, "dataset", None)
    if data is None and isinstance(loader, (list, tuple)):
        data = loader
    try:
        n = len(data)
    except TypeError:
        return {"length": None, "items": None}
    h = hashlib.sha256()
    saved = rng_state()  # a random transform must neither draw from the run's generators ...
    try:
        _seed_all(0)  # ... nor make the hash differ between two runs
        for i in sorted({0, n // 2, n - 1})[:DATA_ITEMS] if n else []:
            for t in flatten_tensors(data[i]):
                _update(h, t)
    except Exception:  # not indexable (an iterable-style dataset): the length alone
        return {"length": n, "items": None}
    finally:
        set_rng_state(saved)
    return {"length": n, "items": h.hexdigest()}


def _seed_all(seed: int) -> None:
    import random

    import numpy as np

    torch.default_generator.manual_seed(seed)  # CPU only: CUDA generators are left alone
    random.seed(seed)
    np.random.seed(seed)


def run_fingerprint(method: str, budget, config, trained: bool, seed, model: nn.Module,
                    steps: int | None, distributed: bool, ignored: list[str], loader) -> dict:
    """What identifies a run (see the module docstring); a checkpoint of another run is refused.

    Args:
        method: The method's name.
        budget: The :class:`~attnprune.methods.base.Budget`.
        config: The method's config dataclass.
        trained: ``prune(trained=...)``.
        seed: ``prune(seed=...)``.
        model: The working copy before training (its starting weights are hashed).
        steps: Steps per epoch.
        distributed: Training over the process group.
        ignored: The resolved ignored modules' qualified names.
        loader: The training loader (never iterated here).
    """
    return {
        "method": method,
        "ratio": budget.ratio,
        "target": budget.target,
        "round_to": budget.round_to,
        "config": plain(dataclasses.asdict(config)),
        "trained": bool(trained),
        "seed": seed,
        "steps_per_epoch": steps,
        "world_size": dist_util.world_size() if distributed else 1,
        "model": [[n, list(p.shape)] for n, p in model.state_dict().items()],
        "weights": state_hash(model),
        "ignored_layers": sorted(ignored),
        "data": data_fingerprint(loader),
    }
