"""Honest result records of the quality benchmark: JSONL files, run headers, row keys.

A result file (``results/quality-<grid>.jsonl``) holds one JSON object per line:
``{"type": "run", ...}`` headers (one per invocation: the full command, the commit
taken when the run *started*, whether the tree was dirty, CPU model and vector
extensions, torch threads, library versions) and ``{"type": "row", ...}`` results,
each naming the run that produced it. A row's ``key`` is a hash of (arm, options,
checkpoint hash, seed, commit, and the cell: ratio, target, eval split), so a
rerun skips the rows already done and a changed option reruns only its arm.

CPU vector extensions are read here from ``/proc/cpuinfo`` flags (and torch's own
``torch.backends.cpu.get_cpu_capability()``) until the library gains a machine
description of its own.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

__all__ = ["RunHeader", "git_state", "cpu_info", "run_header", "row_key", "read_records", "append_record",
           "done_keys", "file_sha256", "DirtyTreeError"]

ROOT = Path(__file__).resolve().parents[1]
VECTOR_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
                "amx_tile")

RunHeader = dict
#: Modified tracked files that do not make a tree dirty: the results themselves (appended to by reruns).
RESULT_PATHS = ("benchmarks/results/", "benchmarks/RESULTS.md")


class DirtyTreeError(RuntimeError):
    """The working tree has modified tracked files and ``--allow-dirty`` was not given."""


def git_state(cwd: Path = ROOT) -> dict:
    """The commit checked out now and the tracked files modified (untracked files do not count)."""
    def git(*args):
        out = subprocess.run(["git", *args], capture_output=True, text=True, cwd=cwd, check=False)
        return out.stdout.rstrip("\n") if out.returncode == 0 else None

    commit = (git("rev-parse", "HEAD") or "").strip()
    status = git("status", "--porcelain", "--untracked-files=no")
    modified = [line[3:] for line in (status or "").splitlines() if line.strip()]
    return {"commit": commit or "unknown", "modified": modified}


def cpu_info() -> dict:
    """CPU model, the vector extensions its flags announce, and torch's capability."""
    model, flags = platform.processor() or "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and model in ("unknown", platform.processor()):
                model = value.strip()
            elif key == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # older torch
        capability = "unknown"
    return {"cpu": model, "cores": os.cpu_count(), "vector_extensions": [f for f in VECTOR_FLAGS if f in flags],
            "avx2": "avx2" in flags, "avx512": "avx512f" in flags, "torch_cpu_capability": capability}


def run_header(argv: list[str], *, allow_dirty: bool, exempt: bool, settings: dict, threads: int) -> RunHeader:
    """The header of one invocation, taken when it starts.

    Raises:
        DirtyTreeError: Tracked files are modified, and neither ``allow_dirty`` nor
            ``exempt`` (``--quick``) is set.
    """
    state = git_state()
    code = [f for f in state["modified"] if not f.startswith(RESULT_PATHS)]
    if code and not (allow_dirty or exempt):
        raise DirtyTreeError(
            f"refusing to record from a tree with modified tracked files ({', '.join(code[:5])}"
            f"{', ...' if len(code) > 5 else ''}): commit them, or pass --allow-dirty (recorded)")
    from importlib.metadata import version

    started = time.time()
    return {
        "type": "run",
        "run_id": hashlib.sha256(f"{started}-{os.getpid()}".encode()).hexdigest()[:12],
        "command": "python " + shlex.join([os.path.relpath(argv[0]) if argv else "benchmarks/quality.py",
                                           *argv[1:]]),
        "commit": state["commit"],
        "dirty": bool(code),
        "modified": state["modified"],
        "allow_dirty": bool(allow_dirty),
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started)),
        "machine": {**cpu_info(), "torch_threads_per_worker": threads, "python": platform.python_version(),
                    "torch": torch.__version__, "torch_pruning": version("torch-pruning")},
        "settings": settings,
    }


def _canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def row_key(arm: str, options: dict, checkpoint: str, seed: int, commit: str, cell: dict) -> str:
    """The identity of a row: arm, its options, the checkpoint, the seed, the commit and the cell."""
    blob = _canonical({"arm": arm, "options": options, "checkpoint": checkpoint, "seed": seed, "commit": commit,
                       "cell": cell})
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_records(path: Path) -> list[dict]:
    """Every record of a JSONL result file (an empty list when it does not exist).

    Raises:
        ValueError: A line is not JSON (the message names the file and line).
    """
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{i} is not a JSON record ({exc})") from None
    return out


def append_record(path: Path, record: dict) -> None:
    """Append one record as a line (flushed and synced, so an interrupted run keeps its rows)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record, default=_jsonable) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _jsonable(value):
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def done_keys(records: list[dict]) -> set[str]:
    """Keys of the rows already recorded."""
    return {r["key"] for r in records if r.get("type") == "row" and "key" in r}


if __name__ == "__main__":  # pragma: no cover - a quick look at what would be recorded
    print(json.dumps(run_header(sys.argv, allow_dirty=True, exempt=True, settings={}, threads=1), indent=1))
