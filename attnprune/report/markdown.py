"""Markdown and JSON write-up of a pruning run.

:func:`write_report` fills a folder with ``report.json`` (``PruneReport.to_dict()``),
the figures of :mod:`attnprune.report.plots` and ``report.md``: a summary table (method,
requested and achieved ratio, params and MACs before and after, accuracies), the
kept channels of every group, the training history, the method's scalar details
and, when a :class:`attnprune.deploy.bench.BenchResult` is given, its latency tables.
:func:`render_markdown` returns the same Markdown as a string.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._files import write_text
from .plots import kept_per_group, plot_kept_channels, plot_score_histogram, report_dict

__all__ = ["KEPT_PNG", "SCORES_PNG", "render_markdown", "write_report", "read_report", "kept_label", "phase_labels"]

KEPT_PNG = "kept_channels.png"
"""File name of the kept-channels figure in a report folder."""

SCORES_PNG = "score_histogram.png"
"""File name of the score-histogram figure in a report folder."""

_ACCURACIES = (
    ("accuracy_before_pruning", "before pruning (after warm-up)"),
    ("accuracy_at_removal", "right after channel removal"),
    ("accuracy_after", "after fine-tuning (final)"),
)


def _num(v: Any) -> str:
    return f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else "n/a"


def _pct(v: Any, digits: int = 1) -> str:
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
        return f"{100 * v:.{digits}f}%"
    return "n/a"


def _change(before: Any, after: Any) -> str:
    if isinstance(before, int) and isinstance(after, int) and before > 0:
        return f"{100 * (after - before) / before:+.1f}%"
    return "n/a"


def _cell(v: Any) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")


def _scalar(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return _cell(v)


_GROUP_NOTE = ("A group is the set of channels torch-pruning removes together (a layer's output "
               "channels and every layer they flow into, e.g. all convolutions feeding one residual sum); "
               "it is named after its root layer, the first layer of the group in the dependency graph.")

_TARGET_NAMES = {"params": "Params", "macs": "MACs", "latency": "Latency"}


def kept_label(target: Any) -> str:
    """The history column of the kept fraction, named after the budget's target (``"MACs kept"``)."""
    return f"{_TARGET_NAMES.get(str(target), str(target).capitalize())} kept"


def phase_labels(history: list[Mapping]) -> list[str]:
    """Each history row's phase name, with its cycle when the phase runs more than once.

    A record's own ``cycle`` (0-based, as :attr:`attnprune.methods.Phase.cycle`) is used
    when it has one; otherwise a new run of a phase starts where the phase name changes or
    its epoch count starts again, and runs of the same name are numbered 1, 2, ...
    (``an (cycle 2)``). A phase that runs once keeps its bare name.
    """
    runs: list[tuple[str, int | None]] = []
    prev_name, prev_epoch = None, None
    counts: Counter = Counter()
    for h in history:
        name, epoch, cycle = str(h.get("phase")), h.get("epoch"), h.get("cycle")
        new_run = name != prev_name or not (isinstance(epoch, int) and isinstance(prev_epoch, int)
                                            and epoch > prev_epoch)
        if new_run:
            counts[name] += 1
        runs.append((name, cycle + 1 if isinstance(cycle, int) else counts[name]))
        prev_name, prev_epoch = name, epoch
    return [f"{name} (cycle {n})" if counts[name] > 1 else name for name, n in runs]


def _bench_markdown(bench: Any) -> str:
    from ..deploy.bench_result import BenchResult

    if isinstance(bench, BenchResult):
        return bench.to_markdown()
    if isinstance(bench, Mapping):
        try:
            return BenchResult(**bench).to_markdown()
        except (TypeError, KeyError) as exc:
            raise ValueError(f"bench must be a BenchResult or its to_dict() form: {exc}") from None
    raise TypeError(f"bench must be an attnprune.deploy.bench.BenchResult or a dict, got {type(bench).__name__}")


def _ms(value) -> str:
    return f"{value:.2f}" if isinstance(value, (int, float)) else "n/a"


def render_markdown(report: Any, *, bench: Any = None, images: Mapping[str, str] | None = None) -> str:
    """Render a report as Markdown.

    Args:
        report: A :class:`attnprune.PruneReport` or its ``to_dict()`` form.
        bench: Optional :class:`attnprune.deploy.bench.BenchResult` (or its ``to_dict()``
            form) whose latency tables are appended.
        images: Optional ``{"kept": file, "scores": file}`` relative paths of the
            figures to embed; figures not named are left out.

    Returns:
        The Markdown text (ending with a newline).

    Raises:
        TypeError: ``report`` or ``bench`` has the wrong type.
    """
    rep = report_dict(report)
    images = dict(images or {})
    method = rep.get("method", "?")
    target = rep.get("target", "params")
    lines = [
        f"# attnprune report: {method}",
        "",
        "| | Value |",
        "|:--|--:|",
        f"| Method | `{_cell(method)}` |",
        f"| Target | {_cell(target)} |",
        f"| Ratio requested | {_pct(rep.get('ratio_requested'))} |",
        f"| Ratio achieved | {_pct(rep.get('ratio_achieved'), 2)} |",
    ]
    if rep.get("round_to"):
        lines.append(f"| Channels rounded to multiples of | {rep['round_to']} |")
    distill = rep.get("distill")
    if isinstance(distill, Mapping):
        phases = ", ".join(str(p) for p in distill.get("phases") or []) or "none"
        lines.append(f"| Distillation (teacher {_cell(distill.get('teacher'))}) | temperature "
                     f"{_scalar(distill.get('temperature'))}, weight {_scalar(distill.get('weight'))}; "
                     f"phases {_cell(phases)} |")
    if isinstance(rep.get("seconds"), (int, float)):
        lines.append(f"| Wall time | {rep['seconds']:.1f} s |")
    lines += [
        "",
        "| | Before | After | Change |",
        "|:--|--:|--:|--:|",
        f"| Params | {_num(rep.get('params_before'))} | {_num(rep.get('params_after'))} | "
        f"{_change(rep.get('params_before'), rep.get('params_after'))} |",
        f"| MACs per sample | {_num(rep.get('macs_before'))} | {_num(rep.get('macs_after'))} | "
        f"{_change(rep.get('macs_before'), rep.get('macs_after'))} |",
    ]
    lat = rep.get("latency")
    if isinstance(lat, Mapping):
        lines += [
            "",
            f"| Latency (ONNX Runtime, batch {lat.get('batch')}, {lat.get('threads')} threads) "
            "| Dense ms | Pruned ms | Removed |",
            "|:--|--:|--:|--:|",
            f"| Predicted (latency model) | {_ms(lat.get('predicted_dense_ms'))} | "
            f"{_ms(lat.get('predicted_pruned_ms'))} | {_pct(lat.get('predicted_removed'))} |",
            f"| Measured | {_ms(lat.get('measured_dense_ms'))} | {_ms(lat.get('measured_pruned_ms'))} | "
            f"{_pct(lat.get('measured_removed'))} |",
        ]
    warned = [w for w in rep.get("warnings") or [] if isinstance(w, str)]
    if warned:
        lines += ["", "## Warnings", ""] + [f"* {_cell(w)}" for w in warned]
    accs = [(label, rep.get(key)) for key, label in _ACCURACIES]
    if any(isinstance(v, (int, float)) for _, v in accs):
        lines += ["", "| Top-1 accuracy | % |", "|:--|--:|"]
        for label, v in accs:
            lines.append(f"| {label} | {f'{v:.2f}' if isinstance(v, (int, float)) else 'n/a'} |")

    groups = kept_per_group(rep)
    if groups:
        kept_all, total_all = sum(k for _, k, _ in groups), sum(t for _, _, t in groups)
        lines += ["", "## Kept channels per group", ""]
        if "kept" in images:
            lines += [f"![Kept vs total channels per group]({images['kept']})", ""]
        lines += [_GROUP_NOTE, "", "| # | Group | Kept | Total | Kept % |", "|--:|:--|--:|--:|--:|"]
        limits = {g.get("name"): g.get("limit") for g in rep.get("groups") or [] if isinstance(g, Mapping)}
        for i, (name, k, t) in enumerate(groups):
            at = f" (at {limits[name]})" if limits.get(name) else ""
            lines.append(f"| {i} | `{_cell(name)}`{at} | {k} | {t} | {_pct(k / t if t else None)} |")
        lines.append(f"| | **all** | **{kept_all}** | **{total_all}** | "
                     f"**{_pct(kept_all / total_all if total_all else None)}** |")

    mr = rep.get("method_report") or {}
    if "scores" in images:
        thr = mr.get("threshold")
        lines += ["", "## Channel scores", "", f"![Histogram of channel scores]({images['scores']})"]
        if isinstance(thr, (int, float)) and math.isfinite(thr):
            lines += ["", f"Final threshold: {thr:.4g}."]

    history = [h if isinstance(h, Mapping) else vars(h) for h in rep.get("history") or []]
    if history:
        lines += ["", "## Training history", "",
                  f"| Phase | Epoch | Loss | {kept_label(target)} | Accuracy % | Seconds |",
                  "|:--|--:|--:|--:|--:|--:|"]
        for h, phase in zip(history, phase_labels(history)):
            loss, acc, sec = h.get("loss"), h.get("accuracy"), h.get("seconds")
            lines.append(
                f"| {_cell(phase)} | {h.get('epoch')} | "
                f"{f'{loss:.4f}' if isinstance(loss, (int, float)) else 'n/a'} | {_pct(h.get('kept'))} | "
                f"{f'{acc:.2f}' if isinstance(acc, (int, float)) else 'n/a'} | "
                f"{f'{sec:.1f}' if isinstance(sec, (int, float)) else 'n/a'} |"
            )

    details = []
    for key, value in mr.items():
        if key == "scores":
            continue
        if value is None or isinstance(value, (bool, int, float, str)):
            details.append((key, _scalar(value)))
        elif isinstance(value, Mapping) and all(isinstance(v, (str, int, float, bool)) for v in value.values()):
            counts = Counter(map(str, value.values()))
            details.append((key, ", ".join(f"{_cell(v)} ×{n}" for v, n in counts.most_common())))
    if details:
        lines += ["", "## Method details", "", "| Key | Value |", "|:--|:--|"]
        lines += [f"| {_cell(k)} | {v} |" for k, v in details]

    if bench is not None:
        lines += ["", _bench_markdown(bench).replace("## Benchmark", "## Latency benchmark", 1)]
    return "\n".join(lines) + "\n"


def read_report(path: str | os.PathLike[str]) -> dict:
    """Read a ``report.json`` written by :func:`write_report`.

    Raises:
        FileNotFoundError: No such file.
        ValueError: The file is not JSON, or not a report (no ``method``/``groups``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"report file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not a JSON file: {exc}") from None
    if not isinstance(data, dict) or not {"method", "groups"} <= set(data):
        raise ValueError(f"{path} is not an attnprune report (expected the keys 'method' and 'groups')")
    return data


def write_report(report: Any, folder: str | os.PathLike[str], *, bench: Any = None) -> Path:
    """Write ``report.json``, the figures and ``report.md`` into ``folder``.

    Args:
        report: A :class:`attnprune.PruneReport` or its ``to_dict()`` form.
        folder: Output folder (created if missing). Existing files of the same
            names are replaced; each file is written atomically.
        bench: Optional :class:`attnprune.deploy.bench.BenchResult` (or its dict) whose
            latency tables are appended to ``report.md``.

    Returns:
        The path of ``report.md``.

    Raises:
        TypeError: ``report`` or ``bench`` has the wrong type.
    """
    rep = report_dict(report)
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"folder must be a directory, got the file {folder}")
    folder.mkdir(parents=True, exist_ok=True)
    write_text(folder / "report.json", json.dumps(rep, indent=2, default=str) + "\n")
    images = {}
    if plot_kept_channels(rep, folder / KEPT_PNG) is not None:
        images["kept"] = KEPT_PNG
    if plot_score_histogram(rep, folder / SCORES_PNG) is not None:
        images["scores"] = SCORES_PNG
    md = folder / "report.md"
    write_text(md, render_markdown(rep, bench=bench, images=images))
    return md
