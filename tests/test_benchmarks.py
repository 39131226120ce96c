"""Every benchmark script's --quick mode runs, so the scripts cannot rot; the paired tables render."""

from __future__ import annotations

import copy
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


def _bench_module(name):
    """A benchmarks/ helper module imported under its own name (as the scripts import it)."""
    sys.path.insert(0, str(BENCH))
    return importlib.import_module(name)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    for name in ("surgery", "latency", "overhead"):
        assert _load(name).main(["--quick", "--out-dir", str(out)]) == 0
    data = pytest.importorskip("attnprune.data")
    if data.find_fashion_mnist() is None:
        pytest.skip("Fashion-MNIST is not installed")
    cache = tmp_path_factory.mktemp("cache")
    assert _load("quality").main(["--quick", "--out-dir", str(out), "--cache-dir", str(cache)]) == 0
    return out


def _records(results):
    (f,) = results.glob("quality-*.jsonl")
    return [json.loads(line) for line in f.read_text().splitlines()]


@pytest.mark.slow
def test_quick_results_have_commands_and_machines(results):
    files = sorted(results.glob("*.json"))
    assert {f.name.split("-")[0] for f in files} == {"surgery", "latency", "overhead"}
    for f in files:
        d = json.loads(f.read_text())
        assert d["command"].startswith("python ") and d["machine"]["cores"] >= 1
    (header,) = [r for r in _records(results) if r["type"] == "run"]
    assert header["command"].startswith("python ") and "--quick" in header["command"]
    assert len(header["commit"]) >= 7 and isinstance(header["dirty"], bool) and header["allow_dirty"] is False
    m = header["machine"]
    assert m["cores"] >= 1 and m["torch_threads_per_worker"] == 1 and m["cpu"]
    assert isinstance(m["avx2"], bool) and isinstance(m["avx512"], bool)


@pytest.mark.slow
def test_quality_quick_rows(results):
    recs = _records(results)
    header = recs[0]
    rows = [r for r in recs if r["type"] == "row"]
    assert {r["arm"] for r in rows} == {"ceiling", "random", "l1", "default"}
    assert {r["seed"] for r in rows} == {0, 1}
    assert len({r["key"] for r in rows}) == len(rows) == 8
    for r in rows:
        assert r["run"] == header["run_id"] and r["commit"] == header["commit"]
        assert r["round_to"] == 1 and r["per_group_cap"] is None and r["trained"] is True
        assert r["passes"] == r["passes_after_start"] == 2  # equal passes after the checkpoint
        assert 0 < r["cnn_steps"] <= r["passes"] * r["steps_per_epoch"]
        assert r["seconds"] > 0 and r["threads"] == 1 and 0 <= r["accuracy"] <= 100
        assert "macs_removed" in r and "params_removed" in r and "config" in r
    for seed in (0, 1):  # every arm of a seed prunes the same checkpoint
        assert len({r["checkpoint"] for r in rows if r["seed"] == seed}) == 1
    assert rows[0]["checkpoint"] != [r for r in rows if r["seed"] == 1][0]["checkpoint"]
    pruned = [r for r in rows if r["arm"] != "ceiling"]
    assert all(abs(r["ratio_achieved"] - 0.5) <= 0.01 for r in pruned)
    by = {(r["arm"], r["seed"]): r for r in rows}
    assert by[("l1", 0)]["options"]["lr"] == 0.05 and by[("l1", 0)]["normalize"] == "mean"
    for r in rows:  # CNN steps are derived from the method's own phases plus fine-tuning
        assert r["cnn_steps"] == r["steps_per_epoch"] * sum(p["epochs"] for p in r["phases"] if p["train_model"])
        assert sum(p["epochs"] for p in r["phases"]) == r["passes"]
    if by[("default", 0)]["method"] == "paam":  # its AN pass trains no CNN weight
        assert by[("default", 0)]["cnn_steps"] < by[("l1", 0)]["cnn_steps"]
    assert by[("ceiling", 0)]["ratio"] is None and by[("ceiling", 0)]["params_removed"] == 0
    for r in pruned:  # the closed channels of every group, as many as the group lost
        assert r["closed"].keys() == r["kept"].keys() and r["order"] == 0
        for g, (kept, total) in r["kept"].items():
            assert len(r["closed"][g]) == total - kept and all(0 <= i < total for i in r["closed"][g])


@pytest.mark.slow
def test_quick_rerun_skips_done_rows(results, tmp_path):
    quality = _load("quality")
    before = (results / "quality-gating-quick.jsonl").read_text()
    cache = tmp_path / "cache"
    # the dense checkpoints differ (a fresh cache trains them again, bit-identically), so nothing reruns
    assert quality.main(["--quick", "--out-dir", str(results), "--cache-dir", str(cache)]) == 0
    assert (results / "quality-gating-quick.jsonl").read_text() == before


@pytest.mark.slow
def test_another_data_order_starts_from_the_same_checkpoints(results, tmp_path):
    """--order 1 trains the same arms from the same checkpoints on another data order, in its own file."""
    out = tmp_path / "results"
    out.mkdir()
    base = results / "quality-gating-quick.jsonl"
    (out / base.name).write_text(base.read_text())
    cache = tmp_path / "cache"
    assert _load("quality").main(["--quick", "--order", "1", "--arms", "l1", "--seeds", "0",
                                  "--out-dir", str(out), "--cache-dir", str(cache)]) == 0
    (other,) = [json.loads(x) for x in (out / "quality-gating-order1-quick.jsonl").read_text().splitlines()
                if json.loads(x)["type"] == "row"]
    (first,) = [r for r in _records(results) if r["type"] == "row" and r["arm"] == "l1" and r["seed"] == 0]
    assert other["order"] == 1 and other["checkpoint"] == first["checkpoint"]
    assert other["history"] != first["history"]  # other batches: other losses


@pytest.mark.slow
def test_uniform_cuts_time_every_group_cut_to_k_channels(tmp_path):
    latency = _load("latency")
    assert latency.main(["--quick", "--uniform", "8", "4", "--tag", "avx2", "--out-dir", str(tmp_path)]) == 0
    d = json.loads((tmp_path / "latency-uniform-cifar-resnet20-avx2-quick.json").read_text())
    (row,) = d["rows"]
    assert [c["k"] for c in row["cuts"]] == [8, 4] and d["vector_extensions"] is not None
    # fewer channels, fewer MACs: ResNet-20's 16/32/64-wide groups at 8 and at 4 channels
    assert 1 < row["cuts"][0]["macs_ratio"] < row["cuts"][1]["macs_ratio"]
    assert all(c["latency_removed"] == pytest.approx(1 - 1 / c["speedup"]) for c in row["cuts"])
    assert "| cifar-resnet20 | 8 | 1 | 4 |" in (tmp_path / "latency-uniform-cifar-resnet20-avx2-quick.md").read_text()
    with pytest.raises(SystemExit, match="--uniform takes channel counts >= 1"):
        latency.main(["--quick", "--uniform", "0"])
    with pytest.raises(SystemExit, match="--tag takes letters, digits"):
        latency.main(["--quick", "--uniform", "8", "--tag", "a/b", "--out-dir", str(tmp_path)])
    assert sorted(f.name for f in tmp_path.iterdir()) == ["latency-uniform-cifar-resnet20-avx2-quick.json",
                                                          "latency-uniform-cifar-resnet20-avx2-quick.md"]


@pytest.mark.slow
def test_check_model_compares_predictions_with_measurement(tmp_path):
    latency = _load("latency")
    assert latency.main(["--quick", "--check-model", "2", "--multiple", "8", "--out-dir", str(tmp_path)]) == 0
    d = json.loads((tmp_path / "latency-check-cifar-resnet20-m8-quick.json").read_text())
    (row,) = d["rows"]
    assert row["multiple"] == 8 and [c["mask"] for c in row["checks"]] == [0, 1]
    for c in row["checks"]:
        assert c["macs_ratio"] > 1 and c["measured_removed"] == pytest.approx(1 - 1 / c["speedup"])
        assert set(c["predicted"]) == {"without_reorders", "with_reorders", "without_reorders_layers"}
        assert all(0 < v < 1 for v in c["predicted"].values())
    assert "| cifar-resnet20 | 8 | 1 | 8 |" in (tmp_path / "latency-check-cifar-resnet20-m8-quick.md").read_text()
    with pytest.raises(SystemExit, match="--check-model takes a number of models >= 1"):
        latency.main(["--quick", "--check-model", "0"])
    with pytest.raises(SystemExit, match="--multiple takes a channel multiple >= 1 and goes with --check-model"):
        latency.main(["--quick", "--multiple", "8"])


def test_check_table_gives_each_variants_mean_and_worst_error():
    checks = [{"measured_removed": 0.5, "predicted": {"without_reorders": 0.52, "with_reorders": 0.44}},
              {"measured_removed": 0.3, "predicted": {"without_reorders": 0.29, "with_reorders": 0.27}}]
    payload = {"check_model": 2, "rounds": 3, "cpu_model": "cpu", "vector_extensions": ["avx2"],
               "rows": [{"model": "m", "batch": 1, "threads": 2, "multiple": 8, "checks": checks}]}
    lines = _load("_latency_tables").check_table(payload)
    assert "| m | 1 | 2 | 8 | 0.015 / +0.020 | 0.045 / -0.060 | — |" in lines  # an older record: no third variant
    for c, v in zip(checks, (0.45, 0.33)):
        c["predicted"]["without_reorders_layers"] = v
    assert "| m | 1 | 2 | 8 | 0.015 / +0.020 | 0.045 / -0.060 | 0.040 / -0.050 |" in _load(
        "_latency_tables").check_table(payload)


def test_closed_set_overlap_on_hand_worked_sets():
    overlap = _bench_module("_overlap")
    a, b = {"g1": [0, 1], "g2": [3]}, {"g1": [1, 2], "g2": [3]}
    assert overlap.jaccard(a, b) == pytest.approx(2 / 4)  # {g1:1, g2:3} shared of 4 closed pairs in all
    assert overlap.jaccard({}, {}) == 1.0
    # chance: g1 2 x 2 of 4 -> 1 shared expected, union 3; g2 1 x 1 of 4 -> 0.25, union 1.75
    assert overlap.chance_jaccard(a, b, {"g1": 4, "g2": 4}) == pytest.approx(1.25 / 4.75)


def test_overlap_section_pairs_data_orders_and_arms(tmp_path):
    overlap = _bench_module("_overlap")

    def row(arm, seed, closed, ck="ck"):
        return {**_row(arm, seed, 70.0, checkpoint=ck), "closed": closed,
                "kept": {"g1": [4 - len(closed["g1"]), 4]}}
    base = [row("default", 0, {"g1": [0, 1]}), row("l1", 0, {"g1": [0, 1]}),
            row("default", 1, {"g1": [0]}), row("l1", 1, {"g1": [3]})]
    other = [row("default", 0, {"g1": [1, 2]}), row("default", 1, {"g1": [0]}, ck="another")]
    for name, rows in (("quality-gating-val.jsonl", base), ("quality-gating-val-order1.jsonl", other)):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = "\n".join(overlap.overlap_section(tmp_path))
    # orders: only seed 0 pairs (seed 1 of order 1 has another checkpoint): |{1}| / |{0,1,2}|
    assert "| 0.7 | params | test | default | 1 | 0.33 (0.33) | 0.33 |" in text
    # arms at order 0: seed 0 identical (1.00), seed 1 disjoint (0.00)
    assert "| default / l1 | 2 | 0.50 (1.00, 0.00) |" in text


def test_dirty_tree_is_refused(monkeypatch):
    records = _load("_records")
    monkeypatch.setattr(records, "git_state", lambda cwd=None: {"commit": "abc1234", "modified": ["x.py"]})
    with pytest.raises(records.DirtyTreeError, match="--allow-dirty"):
        records.run_header(["q.py"], allow_dirty=False, exempt=False, settings={}, threads=1)
    h = records.run_header(["q.py"], allow_dirty=True, exempt=False, settings={}, threads=1)
    assert h["dirty"] and h["allow_dirty"] and h["modified"] == ["x.py"]
    results_only = {"commit": "abc1234", "modified": ["benchmarks/results/quality-gating.jsonl"]}
    monkeypatch.setattr(records, "git_state", lambda cwd=None: results_only)
    h = records.run_header(["q.py"], allow_dirty=False, exempt=False, settings={}, threads=1)
    assert not h["dirty"]  # a rerun appending to a committed result file is not a dirty tree


@pytest.mark.slow
def test_results_md_renders_all_four_tables(results, tmp_path):
    out = tmp_path / "RESULTS.md"
    assert _load("make_results").main(["--quick", "--results-dir", str(results), "--out", str(out)]) == 0
    text = out.read_text()
    for heading in ("Quality at equal budget", "Training overhead", "Surgery time", "Latency"):
        assert heading in text
    assert "Not recorded yet" not in text
    assert text.count("Command: `python ") == 3
    assert "- `python " in text and "--quick" in text and "best baseline (l1)" in text


# -- paired tables from a synthetic record set ---------------------------------------------
def _row(arm, seed, acc, ratio=0.7, commit="c0ffee1", checkpoint=None):
    return {"type": "row", "run": "r1", "arm": arm, "seed": seed, "ratio": None if arm == "ceiling" else ratio,
            "target": None if arm == "ceiling" else "params", "eval": "test", "accuracy": acc, "commit": commit,
            "checkpoint": checkpoint or f"ck{seed}", "params_removed": 0.0 if arm == "ceiling" else 0.7,
            "macs_removed": 0.0 if arm == "ceiling" else 0.6, "passes": 4, "cnn_steps": 400, "seconds": 10.0,
            "passes_after_start": 4,
            "setup": {"model": "resnet20", "in_channels": 1, "train_size": 100, "val_size": 10,
                      "batch_size": 128, "start": "trained", "dense_passes": 12}}


def _synthetic():
    header = {"type": "run", "run_id": "r1", "command": "python benchmarks/quality.py", "commit": "c0ffee1",
              "dirty": False, "allow_dirty": False, "started": "now", "settings": {"workers": 2},
              "machine": {"cpu": "cpu", "cores": 2, "avx2": True, "avx512": False, "torch_cpu_capability": "AVX2",
                          "torch_threads_per_worker": 1, "torch": "t", "torch_pruning": "tp"}}
    recs = [header]
    # default - l1 = [2, 3, 4, 3] (mean 3, 95% interval [1.70, 4.30]: better); l1 beats taylor
    for seed, (d, l1, tay, rnd, ceil) in enumerate([(72, 70, 69, 60, 80), (70.5, 67.5, 67, 61, 79),
                                                    (71, 67, 66, 59, 81), (69, 66, 66, 62, 80)]):
        recs += [_row("default", seed, d), _row("l1", seed, l1), _row("taylor", seed, tay),
                 _row("random", seed, rnd), _row("ceiling", seed, ceil)]
    return recs


def test_paired_tables_known_verdicts():
    tables = _load("_paired_tables")
    text = "\n".join(tables.render_file("synthetic", _synthetic()))
    line = next(x for x in text.splitlines() if x.startswith("| default | best baseline (l1) |"))
    assert "| 4 | +3.00 | 0.82 | [+1.70, +4.30] | 1.30 | 4/0/0 | **better** |" in line
    # default - ceiling = [-8, -8.5, -10, -11]: mean -9.375, entirely below 0
    assert "| default | ceiling | 4 | -9.38 |" in text and "**worse**" in text
    assert "l1 (best baseline)" in text  # best mean of the baselines present
    assert "| 70.00" not in text and "| 0.6" not in text  # means and percentages are formatted
    assert "| 70.0 | 60.0 |" in text  # params and MACs removed, side by side
    assert "Primary cell" not in text  # only the gating grid's cells at 0.7 and 0.9
    recs = _synthetic()
    for r in recs:
        r["grid"] = "gating"
    text = "\n".join(tables.render_file("synthetic", recs))
    assert "Primary cell: half-width of default vs best baseline (l1) 1.30 points over 4 seeds, above 0.5" in text
    assert "--ratios 0.7 --seeds 4 5 6 7 8 9`" in text
    more = [dict(r, seed=r["seed"] + 4 * k) for k in (1, 2) for r in recs if r["type"] == "row"]
    text = "\n".join(tables.render_file("synthetic", recs + [r for r in more if r["seed"] < 10]))
    assert "over 10 seeds, above 0.5 with the most seeds the grid plans (10)" in text and "--seeds" not in text


def test_paired_tables_refuse_mixed_commits_and_checkpoints():
    tables = _load("_paired_tables")
    recs = copy.deepcopy(_synthetic())
    l1_2 = next(r for r in recs if r.get("arm") == "l1" and r["seed"] == 2)
    default_2 = next(r for r in recs if r.get("arm") == "default" and r["seed"] == 2)
    with pytest.raises(tables.PairingError, match="refusing to pair default with l1 at seed 2: different commits"):
        tables.pair([default_2], [dict(l1_2, commit="deadbee")])
    # a row of another commit is rendered in its own block, never paired with this commit's rows
    l1_2["commit"] = "deadbee"
    text = "\n".join(tables.render_file("synthetic", recs))
    assert "Commit `deadbee`" in text and "| default | best baseline (l1) | 3 |" in text
    l1_2["commit"] = "c0ffee1"
    l1_2["checkpoint"] = "ck-other"
    with pytest.raises(tables.PairingError, match="different checkpoints"):
        tables.render_file("synthetic", recs)


def test_variant_arms_change_only_the_named_options():
    arms = _bench_module("_arms")
    name, opts = arms.parse_variant("paam-mean:score_norm=mean,travel=3,lam=null")
    assert (name, opts) == ("paam-mean", {"score_norm": "mean", "travel": 3, "lam": None})
    base = arms.arm("default", 4)
    v = arms.variant_arm(name, opts, 4)
    assert v.method == base.method and v.options == {**base.options, **opts}
    other = arms.variant_arm("abp-x", {"method": "abp", "pull": 0.0}, 4)
    assert other.method == "abp" and other.options["pull"] == 0.0 and other.options["joint_epochs"] == 3
    distilled = arms.variant_arm("ti-kd", {"method": "taylor-iterative", "distill": True}, 4)
    assert distilled.options == {**arms.arm("taylor-iterative", 4).options, "distill": True}
    for bad in ("l1:foo=1", ":a=1", "x:novalue"):
        with pytest.raises(ValueError):
            arms.parse_variant(bad)


def test_arm_options_split_prune_arguments_from_method_options():
    arms = _bench_module("_arms")
    opts = {"max_group_ratio": 0.8, "score_norm": "mean", "cycles": 1}
    assert arms.method_options(opts) == {"score_norm": "mean", "cycles": 1}


def test_tuning_variants_are_paired_with_the_default_arm():
    tables = _load("_paired_tables")
    recs = _synthetic()
    recs += [_row("pm", seed, acc) for seed, acc in enumerate([73, 71.5, 72, 70])]  # default + 1 each seed
    text = "\n".join(tables.render_file("synthetic", recs))
    assert "| pm | default | 4 | +1.00 | 0.00 |" in text
    assert "| l1 | default |" not in text and "| default | default |" not in text


def test_a_distilled_default_is_paired_with_the_best_distilled_baseline():
    tables = _load("_paired_tables")
    recs = []
    for r in _synthetic():
        if r.get("arm") == "default":
            r = dict(r, distill={"temperature": 4.0, "weight": 0.5})
        recs.append(dict(r, grid="gating"))
    recs += [dict(_row("l1kd", seed, acc), method="l1", distill={"temperature": 4.0, "weight": 0.5}, grid="gating")
             for seed, acc in enumerate([71, 70, 70, 68])]  # default - l1kd = [1, 0.5, 1, 1]
    for r in recs:
        if r.get("arm") in ("l1", "taylor"):
            r["method"] = r["arm"]
    text = "\n".join(tables.render_file("synthetic", recs))
    assert "| default | best distilled baseline (l1kd) | 4 | +0.88 |" in text
    assert "| l1 | best distilled baseline" not in text  # plain arms keep the plain comparison only
    assert "Primary cell: half-width of default vs best baseline (l1kd)" in text


def test_an_unreachable_latency_arm_is_recorded_and_rendered_as_missed():
    reached = {"target": "params", "ratio": 0.5, "ratio_achieved": 0.5, "round_to": 16, "latency": None,
               "macs_ratio": 2.0, "speedup": 1.9, "speedup_p10": 1.8, "speedup_p90": 2.0, "efficiency": 0.95,
               "measured_removed": 0.47}
    refused = {"target": "latency", "ratio": 0.5,
               "unreachable": "ratio 0.500 of latency cannot be reached: the largest reachable ratio is 0.474; more"}
    payload = {"format": 2, "cpu_model": "cpu", "vector_extensions": ["avx2"], "round_to_auto": 8, "rounds": 3,
               "rows": [{"model": "cifar-resnet56", "batch": 32, "threads": 1, "latency_model": None,
                         "arms": {"params-0.5": reached, "latency-0.5": refused}}]}
    rows = [line for line in _load("latency").to_markdown(payload).splitlines() if line.startswith("| cifar")]
    assert rows == [line for line in _load("_latency_tables").defaults_table(payload) if line.startswith("| cifar")]
    assert "efficiency ≥ 0.9 (met)" in rows[0]
    assert "unreachable: ratio 0.500 of latency cannot be reached: the largest reachable ratio is 0.474" in rows[1]
    assert rows[1].endswith("refused by prune() (missed) |") and rows[1].count("|") == rows[0].count("|")
    fell_back = dict(reached, round_to=8, round_to_source={"requested": "auto", "fallback": "multiples of 8 (...)"})
    payload["rows"][0]["arms"] = {"latency-0.5": dict(fell_back, target="latency", latency={"predicted_removed": 0.5})}
    row = [line for line in _load("_latency_tables").defaults_table(payload) if line.startswith("| cifar")][0]
    assert row.startswith("| cifar-resnet56 | 32 | 1 | latency-0.5 | 8 (fallback) |")
    assert "measured ±0.05 of 0.5 (met)" in row and "predicted ±0.05 of measured (met)" in row
