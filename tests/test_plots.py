"""Tests for attnprune.report.plots and attnprune.report.markdown (figures and the Markdown report)."""

from __future__ import annotations

import json
import math

import matplotlib
import matplotlib.image
import pytest
import torch

from attnprune.report.markdown import (
    KEPT_PNG,
    SCORES_PNG,
    kept_label,
    phase_labels,
    read_report,
    render_markdown,
    write_report,
)
from attnprune.report.plots import plot_kept_channels, plot_score_histogram
from attnprune.train.pipeline import GroupReport, PruneReport
from attnprune.train.runner import EpochRecord

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_report(scores: bool = True, threshold: float = 0.4) -> PruneReport:
    groups = [GroupReport("conv1", 9, 16), GroupReport("layer1.0.conv1", 5, 16), GroupReport("layer2.0.conv1", 20, 32)]
    g = torch.Generator().manual_seed(0)
    method_report = {}
    if scores:
        method_report = {
            "scores": [torch.rand(gr.total, generator=g).tolist() for gr in groups],
            "threshold": threshold,
            "lam": 0.002,
            "variants": {gr.name: "vanilla" for gr in groups},
        }
    return PruneReport(
        method="paam" if scores else "l1",
        ratio_requested=0.5,
        ratio_achieved=0.4987,
        target="params",
        params_before=272_186,
        params_after=136_453,
        macs_before=31_332_416,
        macs_after=11_084_536,
        groups=groups,
        history=[EpochRecord("warmup", 1, 2.31, 1.0, 12.5, 0.7), EpochRecord("cnn", 1, 2.2, 0.5, 20.0, 0.5)],
        accuracy_before_pruning=12.5,
        accuracy_at_removal=10.0,
        accuracy_after=20.0,
        seconds=3.2,
        method_report=method_report,
    )


def _check_png(path):
    assert path.read_bytes()[:8] == PNG_MAGIC
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300
    assert img[..., :3].std() > 0.05, "the figure must not be blank"


@pytest.mark.parametrize("as_dict", [False, True], ids=["report", "dict"])
def test_kept_channels_png(tmp_path, as_dict):
    report = make_report()
    backend = matplotlib.get_backend()
    out = plot_kept_channels(report.to_dict() if as_dict else report, tmp_path / "sub" / "kept.png")
    assert out == tmp_path / "sub" / "kept.png"
    _check_png(out)
    assert matplotlib.get_backend() == backend, "plotting must not switch the user's backend"


def test_score_histogram_png(tmp_path):
    out = plot_score_histogram(make_report(), tmp_path / "h.png")
    _check_png(out)
    # A non-finite threshold (nothing closed) still plots, without the line.
    _check_png(plot_score_histogram(make_report(threshold=math.inf), tmp_path / "h2.png"))


def test_score_histogram_skips_reports_without_scores(tmp_path):
    assert plot_score_histogram(make_report(scores=False), tmp_path / "h.png") is None
    assert not (tmp_path / "h.png").exists()
    empty = make_report(scores=False).to_dict() | {"groups": []}
    assert plot_kept_channels(empty, tmp_path / "k.png") is None


def test_bad_report_type(tmp_path):
    with pytest.raises(TypeError, match="report must be an attnprune.PruneReport or a dict"):
        plot_kept_channels([1, 2], tmp_path / "k.png")
    bad = make_report().to_dict()
    bad["groups"] = [{"name": "conv1", "kept": "9", "total": 16}]
    with pytest.raises(ValueError, match=r"groups\[0\]"):
        plot_kept_channels(bad, tmp_path / "k.png")


def test_write_report_with_scores(tmp_path):
    report = make_report()
    md_path = write_report(report, tmp_path / "out")
    folder = tmp_path / "out"
    assert md_path == folder / "report.md"
    assert read_report(folder / "report.json") == json.loads(json.dumps(report.to_dict()))
    _check_png(folder / KEPT_PNG)
    _check_png(folder / SCORES_PNG)
    md = md_path.read_text()
    for needle in [
        "# attnprune report: paam",
        "| Ratio requested | 50.0% |",
        "| Ratio achieved | 49.87% |",
        "| Params | 272,186 | 136,453 | -49.9% |",
        "| MACs per sample | 31,332,416 | 11,084,536 | -64.6% |",
        "| after fine-tuning (final) | 20.00 |",
        f"![Kept vs total channels per group]({KEPT_PNG})",
        f"![Histogram of channel scores]({SCORES_PNG})",
        "| 1 | `layer1.0.conv1` | 5 | 16 | 31.2% |",
        "| | **all** | **34** | **64** | **53.1%** |",
        "| warmup | 1 | 2.3100 | 100.0% | 12.50 | 0.7 |",
        "| variants | vanilla ×3 |",
        "| lam | 0.002 |",
    ]:
        assert needle in md, needle
    assert sorted(p.name for p in folder.iterdir()) == sorted(["report.json", "report.md", KEPT_PNG, SCORES_PNG])


def test_write_report_baseline_and_bench(tmp_path):
    bench = {
        "reference": "dense",
        "models": {"dense": {"params": 10, "macs": 100}, "pruned": {"params": 5, "macs": 40}},
        "latency": [
            {"model": m, "batch_size": 1, "median_ms": ms, "p10_ms": ms, "p90_ms": ms, "throughput": 1e3 / ms}
            for m, ms in (("dense", 2.0), ("pruned", 1.0))
        ],
        "pairs": [{"model": "pruned", "batch_size": 1, "macs_ratio": 2.5, "speedup": 2.0,
                   "speedup_p10": 1.9, "speedup_p90": 2.1, "efficiency": 0.8}],
        "settings": {"rounds": 3, "warmup": 1},
        "environment": {"threads": 1},
    }
    md = write_report(make_report(scores=False), tmp_path, bench=bench).read_text()
    assert "# attnprune report: l1" in md
    assert SCORES_PNG not in md and not (tmp_path / SCORES_PNG).exists()
    assert KEPT_PNG in md
    assert "## Latency benchmark (reference: dense)" in md
    assert "| pruned | 1 | 2.50x | 2.00x | 1.90-2.10 | 0.80 |" in md
    with pytest.raises(TypeError, match="bench must be"):
        render_markdown(make_report(), bench=3)


def test_read_report_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_report(tmp_path / "nope.json")
    (tmp_path / "x.json").write_text('{"a": 1}')
    with pytest.raises(ValueError, match="not an attnprune report"):
        read_report(tmp_path / "x.json")


def test_history_column_named_after_target_and_cycles_numbered():
    report = make_report().to_dict()
    report["target"] = "macs"
    report["history"] = [
        {"phase": "warmup", "epoch": 1, "loss": 2.0, "kept": 1.0},
        {"phase": "an", "epoch": 1, "loss": 1.9, "kept": 0.9},
        {"phase": "cnn", "epoch": 1, "loss": 1.8, "kept": 0.6},
        {"phase": "an", "epoch": 1, "loss": 1.7, "kept": 0.55},
        {"phase": "an", "epoch": 2, "loss": 1.6, "kept": 0.5},
        {"phase": "cnn", "epoch": 1, "loss": 1.5, "kept": 0.5},
    ]
    md = render_markdown(report)
    assert "| Phase | Epoch | Loss | MACs kept |" in md
    assert "Params kept" not in md
    rows = [line for line in md.splitlines() if line.startswith("| an") or line.startswith("| cnn")]
    assert [r.split(" | ")[0] for r in rows] == [
        "| an (cycle 1)", "| cnn (cycle 1)", "| an (cycle 2)", "| an (cycle 2)", "| cnn (cycle 2)"]
    assert "| warmup | 1 |" in md  # a phase that runs once keeps its bare name
    assert "named after its root layer" in md


def test_phase_labels_prefer_recorded_cycle():
    history = [{"phase": "an", "epoch": 1, "cycle": 0}, {"phase": "an", "epoch": 1, "cycle": 1}]
    assert phase_labels(history) == ["an (cycle 1)", "an (cycle 2)"]
    assert kept_label("params") == "Params kept"


def test_markdown_shows_latency_warnings_and_groups_at_a_limit():
    from attnprune.report.markdown import render_markdown

    rep = {"method": "paam", "target": "latency", "ratio_requested": 0.5, "ratio_achieved": 0.48,
           "params_before": 100, "params_after": 60, "macs_before": 1000, "macs_after": 500,
           "groups": [{"name": "conv1", "kept": 4, "total": 16, "limit": "max_group_ratio"},
                      {"name": "conv2", "kept": 8, "total": 16, "limit": None}],
           "latency": {"batch": 1, "threads": 2, "predicted_dense_ms": 10.0, "predicted_pruned_ms": 5.2,
                       "predicted_removed": 0.48, "measured_dense_ms": 11.0, "measured_pruned_ms": 5.5,
                       "measured_removed": 0.5},
           "warnings": ["the learned scores did not separate"]}
    md = render_markdown(rep)
    assert "| Predicted (latency model) | 10.00 | 5.20 | 48.0% |" in md
    assert "| Measured | 11.00 | 5.50 | 50.0% |" in md
    assert "## Warnings" in md and "* the learned scores did not separate" in md
    assert "`conv1` (at max_group_ratio)" in md and "`conv2` |" in md
