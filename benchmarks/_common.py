"""Shared helpers of the benchmark scripts: machine description and result files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    """What produced a result: :func:`attnprune.deploy.machine.machine_info` plus the git commit.

    ``cpu`` (the CPU model) and ``cores`` are kept under the names older result
    files use; ``cpu_vector_extensions`` says which SIMD units the timings had.
    """
    from attnprune.deploy.machine import machine_info

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, check=False).stdout.strip()
    except OSError:
        commit = ""
    info = machine_info()
    return {"cpu": info["cpu_model"] or info["machine"], "cores": info["cpu_count"], **info, "commit": commit}


def command() -> str:
    return "python " + " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:])


def write(name: str, payload: dict, out_dir: Path | None = None) -> Path:
    """Write ``payload`` (plus command and machine) to ``results/<name>.json``."""
    out_dir = Path(out_dir) if out_dir else RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    payload = {"command": command(), "machine": machine(), **payload}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)
    return path
