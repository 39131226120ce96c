"""Every benchmark script's --quick mode runs, so the scripts cannot rot."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name):
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    for name in ("surgery", "latency", "overhead"):
        assert _load(name).main(["--quick", "--out-dir", str(out)]) == 0
    data = pytest.importorskip("attnprune.data")
    if data.find_fashion_mnist() is None:
        pytest.skip("Fashion-MNIST is not installed")
    assert _load("quality").main(["--quick", "--out-dir", str(out)]) == 0
    return out


@pytest.mark.slow
def test_quick_results_have_commands_and_machines(results):
    files = sorted(results.glob("*.json"))
    assert {f.name.split("-")[0] for f in files} == {"surgery", "latency", "overhead", "quality"}
    for f in files:
        d = json.loads(f.read_text())
        assert d["command"].startswith("python ") and d["machine"]["cores"] >= 1


@pytest.mark.slow
def test_quality_quick_rows(results):
    (f,) = results.glob("quality-*.json")
    rows = json.loads(f.read_text())["rows"]
    assert {r["arm"] for r in rows} == {"dense", "paam", "l1"}
    pruned = [r for r in rows if r["arm"] != "dense"]
    assert all(abs(r["ratio_achieved"] - 0.5) <= 0.01 for r in pruned)


@pytest.mark.slow
def test_results_md_renders_all_four_tables(results, tmp_path):
    out = tmp_path / "RESULTS.md"
    assert _load("make_results").main(["--quick", "--results-dir", str(results), "--out", str(out)]) == 0
    text = out.read_text()
    for heading in ("Quality at equal budget", "Training overhead", "Surgery time", "Latency"):
        assert heading in text
    assert "Not recorded yet" not in text
    assert text.count("Command: `python ") == 4
