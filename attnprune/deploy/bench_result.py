"""The result of a latency benchmark: records, JSON and Markdown tables."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._files import atomic_file

__all__ = ["BenchResult"]


def _fmt(value: Any, spec: str = ",.0f") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return format(value, spec)


@dataclass
class BenchResult:
    """Outcome of :func:`benchmark`.

    Attributes:
        reference: Name of the reference (dense) model: the first dict entry.
        models: Per model name: ``params`` and ``macs`` (per sample; ``None``
            for models given as ``.onnx`` files), ``source`` (``"module"`` or
            ``"onnx"``) and ``onnx_path`` (``None`` when the export went to a
            temporary directory that no longer exists).
        latency: One record per model and batch size with ``model``,
            ``batch_size``, ``runs_per_round``, ``median_ms``, ``p10_ms``,
            ``p90_ms``, ``mean_ms``, ``throughput`` (samples/s at the median)
            and ``rounds_ms`` (the per-round mean latencies).
        pairs: One record per non-reference model and batch size with
            ``model``, ``reference``, ``batch_size``, ``macs_ratio``,
            ``params_ratio``, ``speedup``, ``speedup_p10``, ``speedup_p90``
            and ``efficiency`` (``None`` where MACs are unknown).
        settings: Benchmark parameters (batch sizes, rounds, warmup, threads,
            provider, input shapes, ...).
        environment: See :func:`attnprune.deploy.bench.environment_info`.
    """

    reference: str
    models: dict[str, dict[str, Any]]
    latency: list[dict[str, Any]]
    pairs: list[dict[str, Any]]
    settings: dict[str, Any]
    environment: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Returns the result as plain JSON-serialisable containers."""
        return json.loads(
            json.dumps(
                {
                    "reference": self.reference,
                    "models": self.models,
                    "latency": self.latency,
                    "pairs": self.pairs,
                    "settings": self.settings,
                    "environment": self.environment,
                }
            )
        )

    def to_json(self, path: str | os.PathLike[str]) -> Path:
        """Writes :meth:`to_dict` as indented JSON (atomically) and returns the path."""
        path = Path(path)
        with atomic_file(path, "w") as fh:
            json.dump(self.to_dict(), fh, indent=2)
            fh.write("\n")
        return path

    def latency_of(self, model: str, batch_size: int) -> dict[str, Any]:
        """Returns the latency record of ``model`` at ``batch_size``.

        Raises:
            KeyError: If there is no such record.
        """
        for rec in self.latency:
            if rec["model"] == model and rec["batch_size"] == batch_size:
                return rec
        raise KeyError(f"no latency record for model={model!r}, batch_size={batch_size}")

    def pair(self, model: str, batch_size: int) -> dict[str, Any]:
        """Returns the comparison of ``model`` with the reference at ``batch_size``.

        Raises:
            KeyError: If there is no such record (the reference has none).
        """
        for rec in self.pairs:
            if rec["model"] == model and rec["batch_size"] == batch_size:
                return rec
        raise KeyError(f"no comparison record for model={model!r}, batch_size={batch_size}")

    def to_markdown(self) -> str:
        """Renders the environment, latency and comparison tables as Markdown."""
        env = self.environment
        cpu = env.get("cpu_model") or env.get("processor") or env.get("machine") or "unknown CPU"
        lines = [
            f"## Benchmark (reference: {self.reference})",
            "",
            f"{cpu}; {env.get('threads')} threads ({env.get('usable_cpus')} usable CPUs); "
            f"provider {env.get('provider')}; onnxruntime {env.get('onnxruntime')}, "
            f"torch {env.get('torch')}, python {env.get('python')}; {env.get('date')}. "
            f"{self.settings.get('rounds')} interleaved rounds, "
            f"{self.settings.get('warmup')} warm-up calls; latency = median "
            "(p10-p90) of per-round means; MACs per sample.",
            "",
            "| Model | Batch | Params | MACs | Median ms | p10 ms | p90 ms | Samples/s |",
            "|:--|--:|--:|--:|--:|--:|--:|--:|",
        ]
        for rec in self.latency:
            info = self.models.get(rec["model"], {})
            lines.append(
                f"| {rec['model']} | {rec['batch_size']} | {_fmt(info.get('params'))} | "
                f"{_fmt(info.get('macs'))} | {rec['median_ms']:.3f} | {rec['p10_ms']:.3f} | "
                f"{rec['p90_ms']:.3f} | {rec['throughput']:,.1f} |"
            )
        if self.pairs:
            lines += [
                "",
                "| Model | Batch | MACs ratio | Speedup | Speedup p10-p90 | Efficiency |",
                "|:--|--:|--:|--:|--:|--:|",
            ]
            for rec in self.pairs:
                lines.append(
                    f"| {rec['model']} | {rec['batch_size']} | {_fmt(rec['macs_ratio'], '.2f')}x | "
                    f"{rec['speedup']:.2f}x | {rec['speedup_p10']:.2f}-{rec['speedup_p90']:.2f} | "
                    f"{_fmt(rec['efficiency'], '.2f')} |"
                )
        return "\n".join(lines)
