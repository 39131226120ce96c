"""PNG figures of a pruning report (matplotlib, Agg backend).

:func:`plot_kept_channels` draws kept versus total channels of every channel
group (compare Fig. 4 of the PAAM paper); :func:`plot_score_histogram` draws the
distribution of the method's channel scores with the final threshold (compare
Fig. 5). Both accept a :class:`attnprune.PruneReport` or its ``to_dict()`` form
(e.g. read back from ``report.json``).

Figures are drawn on a ``matplotlib.figure.Figure`` with the Agg canvas, never
through ``pyplot``, so plotting neither needs a display nor changes the
user's matplotlib backend or global state.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._files import atomic_file

__all__ = ["plot_kept_channels", "plot_score_histogram", "report_dict", "kept_per_group", "count_scale"]


def report_dict(report: Any) -> dict:
    """A report as a plain dict: a :class:`PruneReport` or a mapping of its fields."""
    if hasattr(report, "to_dict") and callable(report.to_dict):
        return report.to_dict()
    if isinstance(report, Mapping):
        return dict(report)
    raise TypeError(
        "report must be an attnprune.PruneReport or a dict from PruneReport.to_dict() "
        f"(e.g. read from report.json), got {type(report).__name__}"
    )


def kept_per_group(report: dict) -> list[tuple[str, int, int]]:
    """``(name, kept, total)`` of every group of a report dict (ValueError if malformed)."""
    out = []
    for i, g in enumerate(report.get("groups") or []):
        if isinstance(g, Mapping):
            name, kept, total = g.get("name"), g.get("kept"), g.get("total")
        else:
            name, kept, total = (getattr(g, "name", None), getattr(g, "kept", None), getattr(g, "total", None))
        if not isinstance(kept, int) or not isinstance(total, int):
            raise ValueError(f"report groups[{i}] must have int 'kept' and 'total', got {g!r}")
        out.append((str(name), kept, total))
    return out


def _flat_scores(report: dict) -> list[float] | None:
    scores = (report.get("method_report") or {}).get("scores")
    if not scores:
        return None
    flat: list[float] = []
    for group in scores:
        if isinstance(group, (int, float)):
            flat.append(float(group))
        else:
            flat.extend(float(v) for v in group)
    flat = [v for v in flat if math.isfinite(v)]
    return flat or None


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    with atomic_file(path) as fh:
        fig.savefig(fh, format="png", bbox_inches="tight")
    return path


def _short(name: str, limit: int = 28) -> str:
    return name if len(name) <= limit else "…" + name[-(limit - 1):]


def plot_kept_channels(report: Any, path: str | os.PathLike[str]) -> Path | None:
    """Bar chart of kept versus total channels of every group (PAAM Fig. 4).

    Args:
        report: A :class:`attnprune.PruneReport` or its ``to_dict()`` form.
        path: Destination PNG file (written atomically; folders are created).

    Returns:
        The path written, or None when the report has no groups.

    Raises:
        TypeError: ``report`` is neither a report nor a dict.
        ValueError: A group lacks int ``kept``/``total`` counts.
    """
    rep = report_dict(report)
    groups = kept_per_group(rep)
    if not groups:
        return None
    n = len(groups)
    fig = _new_figure(min(max(6.0, 0.32 * n + 2.0), 30.0), 4.2)
    ax = fig.add_subplot(1, 1, 1)
    xs = list(range(n))
    ax.bar(xs, [t for _, _, t in groups], color="#d0d7e1", edgecolor="#8a96a8", linewidth=0.6,
           label="total channels")
    ax.bar(xs, [k for _, k, _ in groups], width=0.55, color="#2a6fb0", label="kept channels")
    ax.set_xticks(xs)
    fontsize = 8 if n <= 40 else 6
    ax.set_xticklabels([_short(name) for name, _, _ in groups], rotation=75, ha="right", fontsize=fontsize)
    ax.set_xlim(-0.7, n - 0.3)
    ax.set_ylabel("channels")
    ax.set_xlabel("channel group (root layer)")
    kept_all = sum(k for _, k, _ in groups)
    total_all = sum(t for _, _, t in groups)
    method = rep.get("method", "?")
    ratio = rep.get("ratio_achieved")
    title = f"Kept channels per group — {method}: {kept_all}/{total_all} channels kept"
    if isinstance(ratio, (int, float)):
        title += f", {100 * ratio:.1f}% of {rep.get('target', 'params')} removed"
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    return _save(fig, path)


def count_scale(counts: list[int]) -> str:
    """``"log"`` when one bin towers over the others (a spike), else ``"linear"``.

    A spike (e.g. most gates at 1.0) and a spread of the remaining scores both
    show on a log count axis; on a linear one the spread would be invisible. The
    rule: the tallest bin holds more than 10 times the median non-empty bin.
    """
    nonempty = sorted(c for c in counts if c > 0)
    if len(nonempty) < 2:
        return "linear"
    return "log" if nonempty[-1] > 10 * nonempty[len(nonempty) // 2] else "linear"


def plot_score_histogram(report: Any, path: str | os.PathLike[str]) -> Path | None:
    """Histogram of the method's channel scores with the final threshold (PAAM Fig. 5).

    The scores are ``report.method_report["scores"]`` (one list per group, flattened)
    and the threshold ``report.method_report["threshold"]`` (drawn when finite).
    The count axis is logarithmic when one bin is a spike (:func:`count_scale`), so
    a spike and a spread of scores both show.

    Args:
        report: A :class:`attnprune.PruneReport` or its ``to_dict()`` form.
        path: Destination PNG file (written atomically; folders are created).

    Returns:
        The path written, or None when the report has no scores (the baselines
        report none), in which case nothing is written.

    Raises:
        TypeError: ``report`` is neither a report nor a dict.
    """
    rep = report_dict(report)
    scores = _flat_scores(rep)
    if scores is None:
        return None
    mr = rep.get("method_report") or {}
    threshold = mr.get("threshold")
    has_threshold = isinstance(threshold, (int, float)) and math.isfinite(threshold)
    fig = _new_figure(6.4, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    bins = max(10, min(60, len(scores) // 8))
    lo, hi = min(scores), max(scores)
    if has_threshold:
        lo, hi = min(lo, threshold), max(hi, threshold)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    counts, _, _ = ax.hist(scores, bins=bins, range=(lo, hi), color="#2a6fb0", alpha=0.85, edgecolor="white",
                           linewidth=0.4)
    scale = count_scale([int(c) for c in counts])
    if scale == "log":
        ax.set_yscale("log")
    if has_threshold:
        below = sum(v <= threshold for v in scores)
        ax.axvline(threshold, color="#c0392b", linestyle="--", linewidth=1.5,
                   label=f"threshold {threshold:.3g} ({below} of {len(scores)} scores \u2264 it)")
        ax.legend(loc="best", fontsize=8)
    ax.set_xlabel("channel score")
    ax.set_ylabel("channels (log scale)" if scale == "log" else "channels")
    ax.set_title(f"Channel scores — {rep.get('method', '?')} ({len(scores)} channels)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    return _save(fig, path)
