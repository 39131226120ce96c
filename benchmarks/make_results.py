"""Generate ``benchmarks/RESULTS.md`` from the recorded result files.

Reads every ``results/*.json`` and ``results/quality-*.jsonl`` except the ``-quick``
smoke runs and writes four sections (quality at equal budget, training overhead,
surgery time, latency), each measured figure beside its target, each table with
the command and machine that produced it. A missed target is reported as missed.

Quality comes from the paired records of ``quality.py`` (:mod:`_paired_tables`):
per grid and cell, each arm against the best baseline, random and the ceiling,
with mean paired difference, sd, 95% interval, half-width, W/T/L and verdict.
Rows from different commits or checkpoints are never paired. Until the gating
grid has been recorded, the earlier unpaired measurement (``quality-*.json``) is
shown as well, labelled as such.

    python benchmarks/make_results.py
    python benchmarks/make_results.py --results-dir /tmp/r --out /tmp/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _latency_tables import check_table, defaults_table, uniform_table  # noqa: E402
from _overlap import overlap_section  # noqa: E402
from _paired_tables import render_file  # noqa: E402
from _records import read_records  # noqa: E402

GRID_ORDER = ("gating", "warmup", "learned", "macs", "resnet56")


INCLUDE_QUICK = False


def _load(results_dir: Path, prefix: str) -> list[dict]:
    out = []
    for p in sorted(results_dir.glob(f"{prefix}*.json")):
        if not INCLUDE_QUICK and ("-quick" in p.stem):
            continue
        data = json.loads(p.read_text())
        data["_file"] = p.name
        out.append(data)
    return out


def _machine(d: dict) -> str:
    m = d.get("machine", {})
    return (f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores, torch {m.get('torch', '?')} "
            f"({m.get('torch_threads', '?')} threads), torch-pruning {m.get('torch_pruning', '?')}, "
            f"{m.get('date', '?')}, commit {m.get('commit', '?')}")


def _source(d: dict) -> list[str]:
    return [f"Command: `{d['command']}` → `results/{d['_file']}`  ", f"Machine: {_machine(d)}", ""]


def _grid_files(results_dir: Path) -> list[Path]:
    files = [p for p in results_dir.glob("quality-*.jsonl") if INCLUDE_QUICK or "-quick" not in p.stem]
    rank = {g: i for i, g in enumerate(GRID_ORDER)}
    return sorted(files, key=lambda p: (rank.get(p.stem.split("-")[1], 99), p.name))


def quality_section(results_dir: Path) -> list[str]:
    lines = ["## 1. Quality at equal budget", ""]
    grids = _grid_files(results_dir)
    if grids:
        lines += ["Paired runs from shared dense starting points (`benchmarks/quality.py`): per seed every arm "
                  "prunes a copy of the same checkpoint and trains the same passes after it; differences are "
                  "paired by seed (top-1 points), with the 95% t-interval of the mean difference. A verdict is "
                  "*better* or *worse* only when the interval excludes 0, otherwise *tie*.", ""]
        for p in grids:
            lines += render_file(f"{p.stem} (`results/{p.name}`)", read_records(p))
        lines += overlap_section(results_dir)
    gated = any(p.stem.startswith("quality-gating") for p in grids)
    if gated:
        return lines
    earlier = unpaired_quality(results_dir)
    if grids or earlier:
        lines += ["### Earlier unpaired measurement", "",
                  "Recorded with the previous `quality.py`: arms started from differently trained models "
                  "and mostly one seed; superseded by the paired gating grid once it is recorded.", ""]
    return lines + (earlier or ["Not recorded yet: run `python benchmarks/quality.py`.", ""])


def unpaired_quality(results_dir: Path) -> list[str]:
    files = _load(results_dir, "quality-")
    lines = []
    if not files:
        return lines
    rows = [dict(r, _src=f) for f in files for r in f["rows"]]
    lines += ["ResNet-20 (one input channel) on Fashion-MNIST; every arm trains on the same subset for the "
              "same number of passes (AN-only epochs count); top-1 on the full 10k test set. "
              "Mean ± half-range over seeds where more than one seed ran (arms with one seed are not "
              "averaged, so a difference smaller than the spread of the arms that ran twice is a tie). "
              "Wall times were taken with one torch thread while other work shared the machine: "
              "compare them with care (`benchmarks/overhead.py` measures step-time ratios in isolation).", ""]
    for f in files:
        lines += _source(f)
        s = f.get("setup", {})
        lines.append(f"Setup: {s.get('train_subset')} training images, {s.get('passes')} passes, "
                     f"batch {s.get('batch_size')}, test {s.get('test')}.")
        lines.append("")
    by = {}
    for r in rows:
        by.setdefault((r["ratio"], r["arm"]), []).append(r)
    dense = [r["accuracy_after"] for r in rows if r["arm"] == "dense"]
    dense_acc = statistics.mean(dense) if dense else None
    for ratio in sorted({k[0] for k in by}):
        lines += [f"#### ratio {ratio:g} of params", "",
                  "| arm | seeds | top-1 % | params removed % | MACs removed % | wall time s |",
                  "|:--|--:|--:|--:|--:|--:|"]
        arms = sorted((a for (r, a) in by if r == ratio), key=lambda a: -statistics.mean(
            x["accuracy_after"] for x in by[(ratio, a)]))
        if dense_acc is not None and all(a != "dense" for a in arms):
            arms = ["dense"] + arms
        for arm in arms:
            rs = by.get((ratio, arm)) or [r for r in rows if r["arm"] == "dense"]
            accs = [x["accuracy_after"] for x in rs]
            spread = (max(accs) - min(accs)) / 2 if len(accs) > 1 else None
            acc = f"{statistics.mean(accs):.2f}" + (f" ± {spread:.2f}" if spread is not None else "")
            pr = statistics.mean(100 * x.get("ratio_achieved", 0) for x in rs)
            mr = statistics.mean(100 * (1 - x["macs_after"] / x["macs_before"]) if x.get("macs_before") else 0
                                 for x in rs)
            sec = statistics.mean(x.get("seconds", 0) for x in rs)
            label = arm + (" (unstructured: % of weights zeroed, dense shapes)" if arm == "aswl" else "")
            lines.append(f"| {label} | {len(rs)} | {acc} | {pr:.1f} | {mr:.1f} | {sec:.0f} |")
        lines.append("")
        lines += _quality_targets(by, ratio, dense_acc)
    return lines


def _mean_acc(by, ratio, arm):
    rs = by.get((ratio, arm))
    return statistics.mean(r["accuracy_after"] for r in rs) if rs else None


def _spread(by, ratio, arm):
    rs = by.get((ratio, arm)) or []
    accs = [r["accuracy_after"] for r in rs]
    return (max(accs) - min(accs)) if len(accs) > 1 else None


def _quality_targets(by, ratio, dense_acc) -> list[str]:
    paam = _mean_acc(by, ratio, "paam")
    base = {a: _mean_acc(by, ratio, a) for a in ("l1", "taylor", "slim")}
    base = {a: v for a, v in base.items() if v is not None}
    if paam is None or not base:
        return []
    best_arm = max(base, key=base.get)
    gap = paam - base[best_arm]
    spread = max(filter(None, [_spread(by, ratio, "paam"), _spread(by, ratio, best_arm)]), default=None)
    need = 0.3 if ratio <= 0.5 else 1.0
    verdict = "met" if gap >= need else "missed"
    if spread is not None and abs(gap) < spread:
        verdict += f" (difference within the seed spread {spread:.2f}: a tie)"
    out = ["| target | measured | verdict |", "|:--|--:|:--|",
           f"| PAAM ≥ best of l1/taylor/slim + {need} points | {gap:+.2f} vs {best_arm} | {verdict} |"]
    if ratio <= 0.5 and dense_acc is not None:
        d = paam - dense_acc
        out.append(f"| PAAM ≥ dense − 0.5 points | {d:+.2f} | {'met' if d >= -0.5 else 'missed'} |")
    return out + [""]


def overhead_section(results_dir: Path) -> list[str]:
    files = _load(results_dir, "overhead-")
    lines = ["## 2. Training overhead", ""]
    if not files:
        return lines + ["Not recorded yet: run `python benchmarks/overhead.py`.", ""]
    targets = {"paam-kq AN": 1.2, "paam-kq CNN": 1.2, "abp": 1.1}
    for f in files:
        lines += _source(f)
        lines += [f"CIFAR ResNet-56, batch {f['batch']}, {f.get('threads') or 'default'} torch thread(s), "
                  f"{f['steps']} timed steps per arm (best of two runs), each arm in a fresh "
                  f"process; plain training measured first and last (difference {100 * f['plain_noise']:.1f}%).", "",
                  "| arm | ms/step | step ÷ plain | target | peak RSS MB | memory ÷ plain (target ≤ 1.3) |",
                  "|:--|--:|--:|--:|--:|--:|"]
        for r in f["rows"]:
            t = targets.get(r["arm"])
            tgt = f"≤ {t} ({'met' if r['step_ratio'] <= t else 'missed'})" if t else ""
            mem = f"{r['memory_ratio']:.2f} ({'met' if r['memory_ratio'] <= 1.3 else 'missed'})"
            lines.append(f"| {r['arm']} | {1000 * r['step_s']:.1f} | {r['step_ratio']:.2f} | {tgt} | "
                         f"{r['peak_rss_mb']:.0f} | {mem} |")
        lines.append("")
    return lines


def surgery_section(results_dir: Path) -> list[str]:
    files = _load(results_dir, "surgery-")
    lines = ["## 3. Surgery time", ""]
    if not files:
        return lines + ["Not recorded yet: run `python benchmarks/surgery.py`.", ""]
    targets = {"resnet50": 2.0, "resnet152": 5.0}
    for f in files:
        lines += _source(f)
        lines += ["`instrument` + `finalize` (including the gated == pruned check), best of repeats.", "",
                  "| model | conv/linear layers | groups | instrument s | finalize s | total s | target |",
                  "|:--|--:|--:|--:|--:|--:|:--|"]
        for r in f["rows"]:
            t = targets.get(r["model"])
            tgt = f"≤ {t} s ({'met' if r['total_s'] <= t else 'missed'})" if t else ""
            lines.append(f"| {r['model']} | {r['layers']} | {r['groups']} | {r['instrument_s']:.2f} | "
                         f"{r['finalize_s']:.2f} | {r['total_s']:.2f} | {tgt} |")
        if f.get("fit"):
            fit = f["fit"]
            lines += ["", f"Linear fit: {1000 * fit['seconds_per_layer']:.1f} ms per layer + "
                          f"{fit['intercept_s']:.2f} s (R² {fit['r2']:.3f})."]
        lines.append("")
    return lines


def latency_section(results_dir: Path) -> list[str]:
    files = _load(results_dir, "latency-")
    lines = ["## 4. Latency (ONNX Runtime, CPU)", ""]
    if not files:
        return lines + ["Not recorded yet: run `python benchmarks/latency.py`.", ""]
    for f in files:
        if f.get("format") == 2:
            table = uniform_table if "uniform" in f else check_table if "check_model" in f else defaults_table
            lines += _source(f) + table(f)
            continue
        lines += _source(f)
        env = next(iter(f["models"].values()))["result"]["environment"]
        lines += [f"Pruned to ratio {f['ratio']:g} of params (L1 ranking) with and without "
                  f"`round_to={f.get('round_to', 8)}`; "
                  f"{f['rounds']} interleaved rounds; ONNX Runtime {env.get('onnxruntime')} with "
                  f"{env.get('threads')} intra-op thread(s). Efficiency = speedup ÷ MACs ratio.", "",
                  "| model | batch | variant | params removed % | MACs ratio | speedup (p10–p90) "
                  "| efficiency | target |",
                  "|:--|--:|:--|--:|--:|--:|--:|:--|"]
        for name, m in f["models"].items():
            for p in m["result"]["pairs"]:
                tv = 0.9 if name in ("resnet18", "resnet50") else (0.7 if "round" in p["model"] else None)
                tgt = f"≥ {tv} ({'met' if p['efficiency'] >= tv else 'missed'})" if tv else ""
                lines.append(
                    f"| {name} | {p['batch_size']} | {p['model']} | {100 * m['ratio_achieved'][p['model']]:.1f} | "
                    f"{p['macs_ratio']:.2f} | {p['speedup']:.2f} ({p['speedup_p10']:.2f}–{p['speedup_p90']:.2f}) | "
                    f"{p['efficiency']:.2f} | {tgt} |")
        lines.append("")
    return lines


def render(results_dir: Path) -> str:
    lines = ["# attnprune benchmark results", "",
             "Generated by `python benchmarks/make_results.py` from `benchmarks/results/*.json` and `*.jsonl`; "
             "do not edit by hand. Each table names the command and machine that produced it.", ""]
    for section in (quality_section, overhead_section, surgery_section, latency_section):
        lines += section(results_dir)
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results-dir", default=str(HERE / "results"))
    ap.add_argument("--out", default=str(HERE / "RESULTS.md"))
    ap.add_argument("--quick", action="store_true", help="also read the -quick smoke results")
    args = ap.parse_args(argv)
    global INCLUDE_QUICK
    INCLUDE_QUICK = args.quick
    text = render(Path(args.results_dir))
    Path(args.out).write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
