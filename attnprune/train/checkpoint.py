"""Checkpoints of a :func:`attnprune.prune` run, for resuming it after an interruption.

``prune(..., checkpoint_dir=path)`` writes ``path/checkpoint.pt`` at the end of
every epoch (which includes every phase boundary) and right after the channels
are removed; ``prune(..., checkpoint_dir=path, resume=True)`` continues from it.
A resumed run reaches the same masks and the same pruned model, bit for bit, as
an uninterrupted run with the same arguments, within the limits listed below.

A checkpoint holds:

* the working model's state (instrumented or, after removal, pruned) and the
  keep-masks that define the pruned architecture;
* the method's state (:meth:`~attnprune.PruningMethod.state_dict`: its
  parameters and the counters and controller values it keeps, e.g. PAAM's ``lam``);
* the gate mode and masks in force, the schedule position (phase, epochs done),
  and the optimiser and learning-rate scheduler states of the current phase (a
  fresh optimiser is built for every phase, so only the current one matters);
* the report so far (history, accuracies);
* with ``prune(distill=...)``: the teacher's state under ``teacher`` (None before
  it is taken; :mod:`attnprune.train.distill`), never in ``model``;
* per rank: the random states of torch (CPU and every CUDA device), Python's
  ``random`` and NumPy, and of the torch generators the training loader exposes
  (``loader.generator``, ``loader.sampler.generator``,
  ``loader.batch_sampler.sampler.generator``).

Files are written atomically (a temporary file in the same folder, then
``os.replace``), by rank 0 only, and read back with ``torch.load(weights_only=True)``.

Format 2 (this version): the file holds ``{"format": 2, "sha256": ..., "payload":
...}`` where ``payload`` is the serialised checkpoint (a uint8 tensor) and
``sha256`` its SHA-256. Reading checks the checksum (a damaged or edited file
is refused), then that every key the stage needs is present (:data:`REQUIRED`);
a format-1 file (attnprune 0.1) is refused as written by an older attnprune.

Limits of bit-identical resumption:

* randomness the checkpoint cannot reach is not restored: a sampler or dataset
  with its own random generator, a ``worker_init_fn`` seeding something else,
  augmentation libraries with private generators. A ``DataLoader`` shuffling
  with no generator of its own draws from torch's global generator, which *is*
  restored; one with a ``generator=`` is restored through that generator (with
  ``seed=``, both are reseeded before every epoch anyway:
  :mod:`attnprune.train.seeding`). A ``DistributedSampler`` is deterministic
  given its epoch, which ``prune()`` sets;
* checkpoints are taken at epoch ends only: an interrupted epoch is redone;
* the same machine, library versions, thread count and number of processes are
  assumed (floating-point reductions may differ otherwise).
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import torch

from .._files import atomic_file
from . import distributed as dist_util

__all__ = ["CHECKPOINT_NAME", "FORMAT", "REQUIRED", "atomic_save", "load_checkpoint", "pack", "check_writable",
           "rng_state", "set_rng_state", "loader_generators", "plain", "Checkpointer"]

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT = 2

#: Keys every checkpoint holds, and those of each stage.
REQUIRED = {
    "all": ("stage", "phase", "epoch", "model", "optim", "history", "epochs_done", "acc_before",
            "acc_removal", "fingerprint", "ranks"),
    "train": ("method", "gates"),
    "finetune": ("masks", "selection", "method_report"),
}


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file next to ``path``, then ``os.replace`` it.

    A reader never sees a half-written file: it finds the previous file or the
    new one.
    """
    with atomic_file(path, fsync=True) as f:
        torch.save(obj, f)


def load_checkpoint(checkpoint_dir: str | os.PathLike) -> dict | None:
    """The checkpoint in ``checkpoint_dir``, or None when there is none.

    Raises:
        ValueError: The file exists but is not a readable checkpoint of this format:
            unreadable, of another format (format 1: written by an older attnprune),
            damaged or edited (checksum mismatch), or missing keys (named).
    """
    path = Path(checkpoint_dir) / CHECKPOINT_NAME
    if not path.is_file():
        return None
    try:
        outer = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"cannot read the checkpoint {path}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(outer, dict) or "format" not in outer:
        raise ValueError(f"{path} is not an attnprune checkpoint (no format field)")
    if outer["format"] != FORMAT:
        older = isinstance(outer["format"], int) and outer["format"] < FORMAT
        raise ValueError(
            f"{path} is a checkpoint of format {outer['format']!r}"
            + (", written by an older attnprune" if older else "")
            + f"; this version reads format {FORMAT}: pass resume=False to start over"
        )
    payload, digest = outer.get("payload"), outer.get("sha256")
    if not isinstance(payload, torch.Tensor) or payload.dtype != torch.uint8 or not isinstance(digest, str):
        raise ValueError(f"{path} is damaged: it lacks the payload or its checksum")
    data = payload.numpy().tobytes()
    if hashlib.sha256(data).hexdigest() != digest:
        raise ValueError(f"{path} is damaged or was edited: the checksum of its payload does not match; "
                         "pass resume=False to start over")
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # pragma: no cover - the checksum matched what was written
        raise ValueError(f"cannot read the payload of {path}: {type(exc).__name__}: {exc}") from exc
    _check_keys(state, path)
    return state


def _check_keys(state, path: Path) -> None:
    if not isinstance(state, dict):
        raise ValueError(f"{path}: the payload is a {type(state).__name__}, not a checkpoint dict")
    stage = state.get("stage")
    if stage not in ("train", "finetune"):
        raise ValueError(f"{path}: unknown stage {stage!r} (expected 'train' or 'finetune')")
    missing = [k for k in REQUIRED["all"] + REQUIRED[stage] if k not in state]
    if missing:
        raise ValueError(f"{path} lacks the key(s) {missing} of a {stage!r} checkpoint; it is damaged or "
                         "was edited: pass resume=False to start over")


def pack(state: dict) -> dict:
    """The format-2 file content of ``state``: the serialised payload and its SHA-256."""
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    return {"format": FORMAT, "sha256": hashlib.sha256(data).hexdigest(),
            "payload": torch.frombuffer(bytearray(data), dtype=torch.uint8)}


def check_writable(checkpoint_dir: str | os.PathLike) -> None:
    """Create ``checkpoint_dir`` if needed and check a file can be written there.

    Raises:
        OSError: naming ``checkpoint_dir`` and the reason (before any training).
    """
    path = Path(checkpoint_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=path)
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        raise type(exc)(exc.errno, f"checkpoint_dir={str(path)!r} is not writable ({exc.strerror or exc})"
                        ) from exc


def plain(value):
    """``value`` with anything ``torch.load(weights_only=True)`` cannot read made plain.

    Numbers, strings, tensors and None stay; dicts (with keys made strings), lists
    and tuples (as lists) are converted recursively; anything else becomes a float
    when it converts to one, else its ``str``.
    """
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return value
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


# -- random states --------------------------------------------------------------------
def rng_state() -> dict:
    """Random states of torch (CPU, CUDA), Python's ``random`` and NumPy, serialisable."""
    state: dict = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    state["python"] = random.getstate()
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a torch dependency here
        return state
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state["numpy"] = (kind, torch.from_numpy(keys.astype("int64")), int(pos), int(has_gauss), float(gauss))
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        import numpy as np

        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype("uint32"), pos, has_gauss, gauss))


def loader_generators(loader) -> list[torch.Generator]:
    """The distinct torch generators a loader shuffles or samples with (may be empty)."""
    found: list[torch.Generator] = []
    candidates = [getattr(loader, "generator", None)]
    sampler = getattr(loader, "sampler", None)
    candidates.append(getattr(sampler, "generator", None))
    batch_sampler = getattr(loader, "batch_sampler", None)
    candidates.append(getattr(getattr(batch_sampler, "sampler", None), "generator", None))
    for g in candidates:
        if isinstance(g, torch.Generator) and not any(g is f for f in found):
            found.append(g)
    return found


def loader_state(loader) -> list[torch.Tensor]:
    """States of :func:`loader_generators`."""
    return [g.get_state() for g in loader_generators(loader)]


def set_loader_state(loader, states: list[torch.Tensor]) -> None:
    """Restore what :func:`loader_state` captured (the loader must expose as many generators)."""
    gens = loader_generators(loader)
    if len(gens) != len(states):
        raise ValueError(
            f"the checkpoint holds {len(states)} loader generator state(s) but the loader exposes "
            f"{len(gens)}; resume with the same kind of loader"
        )
    for g, s in zip(gens, states):
        g.set_state(s)


def _cpu(obj):
    """A copy of ``obj`` with every tensor detached, cloned and on CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu(v) for v in obj)
    return obj


class Checkpointer:
    """Writes and reads the checkpoint of one run.

    Args:
        checkpoint_dir: The folder (created on rank 0 when needed, and checked
            writable there: an ``OSError`` before any training otherwise).
        fingerprint: What identifies the run (:mod:`attnprune.train.fingerprint`:
            method, budget, config, seed, world size, ignored layers, starting
            weights, data); a checkpoint of another run is refused, naming the
            differing fields.
        loader: The training loader, whose generators are saved per rank.
        distributed: The run trains over the process group: random states are
            gathered from every rank. Otherwise only this process's are kept (and
            still only rank 0 writes).
    """

    def __init__(self, checkpoint_dir: str | os.PathLike, fingerprint: dict, loader, distributed: bool = False):
        self.dir = Path(checkpoint_dir)
        self.path = self.dir / CHECKPOINT_NAME
        self.fingerprint = fingerprint
        self.loader = loader
        self.distributed = distributed
        if dist_util.is_main():
            check_writable(self.dir)

    def load(self) -> dict | None:
        """The checkpoint of this run, or None when the folder has none.

        Raises:
            ValueError: The checkpoint belongs to a different run.
        """
        state = load_checkpoint(self.dir)
        if state is None:
            return None
        saved = state.get("fingerprint", {})
        diff = sorted(k for k in set(saved) | set(self.fingerprint) if saved.get(k) != self.fingerprint.get(k))
        if diff:
            detail = "; ".join(f"{k}: checkpoint {saved.get(k)!r}, now {self.fingerprint.get(k)!r}" for k in diff[:4])
            raise ValueError(
                f"the checkpoint in {self.dir} was written by a different run ({detail}); pass the same "
                "arguments, another checkpoint_dir, or resume=False to start over"
            )
        return state

    def save(self, state: dict) -> None:
        """Write ``state`` plus this rank's random states (called on every rank; rank 0 writes)."""
        per_rank = {"rng": rng_state(), "loader": loader_state(self.loader)}
        ranks = dist_util.all_gather_object(per_rank) if self.distributed else [per_rank]
        if not dist_util.is_main():
            return
        out = _cpu(dict(state))
        out.update(fingerprint=self.fingerprint, ranks=_cpu(ranks))
        atomic_save(pack(out), self.path)

    def restore_random(self, state: dict) -> None:
        """Restore this rank's random and loader-generator states from ``state``."""
        ranks = state["ranks"]
        mine = ranks[dist_util.rank() if self.distributed else 0]
        set_rng_state(mine["rng"])
        set_loader_state(self.loader, mine["loader"])
