"""On-disk cache of latency tables, keyed by everything a table depends on.

The key holds the CPU (model name, feature flags, architecture), the onnxruntime
version, the provider, threads, batch, the inputs' per-sample shapes and dtypes, the
rounding multiple, the timer (ONNX Runtime or a named custom one), a given dense
latency, and the model's structure: every layer call's configuration and grids. Its
SHA-256 names the file; the file stores the whole key, and a file whose key is not
exactly the expected one, or that does not parse into tables of the expected shapes,
is never used (a corrupted file is rebuilt with a warning). Files are written
atomically (:func:`attnprune._files.atomic_file`).
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import warnings
from pathlib import Path

from .._files import atomic_file
from ..data import cache_dir
from . import machine

__all__ = ["SPLIT_KEYS", "cache_key", "default_cache_dir", "load_cached", "machine_identity", "save_cached",
           "valid_split"]

#: 2: tables leave out ONNX Runtime's layout conversions (``OrtTimer(exclude_reorders=True)``);
#: 3: their share is taken after warm-up runs (:func:`~attnprune.deploy.latency_table.kernel_share`),
#: and the file holds the dense run's split (:func:`~attnprune.deploy.latency_table.dense_split`).
#: A file of another format is not used.
FORMAT = 3


def default_cache_dir() -> Path:
    """``$ATTNPRUNE_CACHE/latency``, or ``~/.cache/attnprune/latency``."""
    return cache_dir() / "latency"


def machine_identity() -> dict:
    """The CPU's model name and sorted feature flags (:mod:`attnprune.deploy.machine`) and architecture."""
    flags = machine.cpu_flags()
    return {"cpu": machine.cpu_model(), "cpu_flags": sorted(set(flags or ())), "machine": platform.machine()}


def _ort_version() -> str | None:
    try:
        import onnxruntime
    except ImportError:
        return None
    return str(onnxruntime.__version__)


def _timer_name(timer) -> str:
    if timer is None:
        return "onnxruntime"
    fn = getattr(timer, "__func__", timer)
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"custom:{getattr(fn, '__module__', '?')}.{name}"


def cache_key(*, tables: list[dict], entries: list[int], batch: int, threads: int, provider: str,
              multiple: int, inputs: list, timer, dense_latency: float | None,
              dense_split: dict | None = None) -> dict:
    """The JSON-ready key of a latency model (see the module docstring)."""
    return {
        "format": FORMAT,
        **machine_identity(),
        "onnxruntime": _ort_version(),
        "provider": provider,
        "threads": threads,
        "batch": batch,
        "inputs": [[list(shape), dtype] for shape, dtype in inputs],
        "multiple": multiple,
        "timer": _timer_name(timer),
        "dense_latency": dense_latency,
        "dense_split": dense_split,
        "layers": [
            {"spec": t["spec"].to_dict(), "grid_out": list(t["grid_out"]), "grid_in": list(t["grid_in"])}
            for t in tables
        ],
        "entries": list(entries),
    }


def _path(key: dict, directory) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return Path(directory if directory is not None else default_cache_dir()) / f"latency-{digest}.json"


def _valid_seconds(rows, n_out: int, n_in: int) -> bool:
    return (
        isinstance(rows, list) and len(rows) == n_out
        and all(isinstance(r, list) and len(r) == n_in for r in rows)
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
                for r in rows for v in r)
    )


SPLIT_KEYS = ("layers", "activations")


def valid_split(split) -> bool:
    """``split`` is ``None`` or fractions of :data:`SPLIT_KEYS` (finite, >= 0) summing to 1."""
    if split is None:
        return True
    if not isinstance(split, dict) or set(split) != set(SPLIT_KEYS):
        return False
    vals = list(split.values())
    return (all(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 for v in vals)
            and abs(sum(vals) - 1) < 1e-6)


def load_cached(key: dict, tables: list[dict], directory) -> tuple[bool, float | None, dict | None] | None:
    """Fill ``tables``' seconds from the cache file of ``key``.

    Returns:
        ``(True, dense seconds or None, dense split or None)`` when a valid file of
        exactly this key was found, else ``None`` (no file; or a corrupted one, with a
        warning).
    """
    path = _path(key, directory)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("key") != key:
            raise ValueError("its key differs from this model's")
        rows = data["seconds"]
        dense = data["dense"]
        if not isinstance(rows, list) or len(rows) != len(tables):
            raise ValueError("it holds the wrong number of tables")
        for t, r in zip(tables, rows):
            if not _valid_seconds(r, len(t["grid_out"]), len(t["grid_in"])):
                raise ValueError(f"a table of {t['spec'].kind} {t['spec'].c_out}x{t['spec'].c_in} is malformed")
        if dense is not None and not (isinstance(dense, (int, float)) and math.isfinite(dense) and dense > 0):
            raise ValueError(f"its dense latency {dense!r} is not a positive number")
        split = data["split"]
        if not valid_split(split):
            raise ValueError(f"its dense split {split!r} is not fractions of {list(SPLIT_KEYS)} summing to 1")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        warnings.warn(f"ignoring the corrupted latency cache {path} ({exc}); measuring again", stacklevel=3)
        return None
    for t, r in zip(tables, rows):
        t["seconds"] = [[float(v) for v in row] for row in r]
    return True, None if dense is None else float(dense), split


def save_cached(key: dict, tables: list[dict], dense: float | None, directory, split: dict | None = None) -> Path:
    """Write the tables of ``key``, the dense latency and its split (atomically); return the file's path."""
    path = _path(key, directory)
    with atomic_file(path, "w") as fh:
        json.dump({"key": key, "seconds": [t["seconds"] for t in tables], "dense": dense, "split": split}, fh)
    return path
