"""Paired tables of the quality benchmark's JSONL records (used by ``make_results.py``).

For every cell (ratio, target, eval split) of a result file: a table of the arms
(mean ± sd top-1, params and MACs removed, passes, CNN optimizer steps, wall time)
and a paired table of each arm against the best baseline (the best mean of l1,
taylor, taylor-iterative and slim in that cell), against ``random`` and against
the ``ceiling``: mean paired difference over seeds, its sd, the 95% t-interval,
its half-width, wins/ties/losses and the verdict of
:func:`attnprune.report.paired.paired_difference`.

Rows are paired by seed and only when they come from the same commit and the same
dense checkpoint; anything else raises :class:`PairingError`.
"""

from __future__ import annotations

import statistics
from collections import defaultdict

from attnprune.report.paired import paired_difference

__all__ = ["PairingError", "BASELINES", "latest_rows", "cells", "pair", "render_file"]

BASELINES = ("l1", "taylor", "taylor-iterative", "slim")


class PairingError(ValueError):
    """Two rows to be paired come from different commits or different checkpoints."""


def latest_rows(records: list[dict]) -> list[dict]:
    """The rows, keeping the last one recorded per (commit, arm, seed, ratio, target, eval)."""
    last = {}
    for r in records:
        if r.get("type") == "row":
            last[(r["commit"], r["arm"], r["seed"], r["ratio"], r["target"], r["eval"])] = r
    return list(last.values())


def cells(rows: list[dict]) -> dict[tuple, dict[str, list[dict]]]:
    """``{(ratio, target, eval): {arm: rows}}``; ceiling rows (no ratio) join every cell of their split."""
    out: dict = defaultdict(lambda: defaultdict(list))
    ceilings = [r for r in rows if r["ratio"] is None]
    for r in rows:
        if r["ratio"] is not None:
            out[(r["ratio"], r["target"], r["eval"])][r["arm"]].append(r)
    for key, arms in out.items():
        for c in ceilings:
            if c["eval"] == key[2]:
                arms[c["arm"]].append(c)
    return {k: dict(v) for k, v in sorted(out.items(), key=lambda kv: (kv[0][1] or "", kv[0][0], kv[0][2]))}


def pair(a_rows: list[dict], b_rows: list[dict]):
    """Paired comparison of arm ``a`` against arm ``b`` over their common seeds (None under 2).

    Raises:
        PairingError: A seed's two rows come from different commits or checkpoints.
    """
    b_by_seed = {r["seed"]: r for r in b_rows}
    a_vals, b_vals = [], []
    for ra in sorted(a_rows, key=lambda r: r["seed"]):
        rb = b_by_seed.get(ra["seed"])
        if rb is None:
            continue
        for field in ("commit", "checkpoint"):
            if ra[field] != rb[field]:
                raise PairingError(
                    f"refusing to pair {ra['arm']} with {rb['arm']} at seed {ra['seed']}: different {field}s "
                    f"({str(ra[field])[:12]} vs {str(rb[field])[:12]}); rerun both arms at one commit")
        a_vals.append(ra["accuracy"])
        b_vals.append(rb["accuracy"])
    if len(a_vals) < 2:
        return None
    return paired_difference(a_vals, b_vals, tie_tol=1e-6)


def _mean(rows, field):
    return statistics.mean(r[field] for r in rows)


def _sd(rows, field):
    return statistics.stdev(r[field] for r in rows) if len(rows) > 1 else float("nan")


def distilled(rows: list[dict]) -> bool:
    """Whether an arm's rows were trained with distillation (``prune(distill=...)`` recorded on)."""
    return bool(rows) and all(r.get("distill") for r in rows if r.get("ratio") is not None)


def best_baseline(arms: dict[str, list[dict]], with_distill: bool = False) -> str | None:
    """The baseline with the best mean top-1 in a cell (None when no baseline ran).

    ``with_distill``: among the distilled baseline arms (any arm name whose rows run a
    baseline method with distillation) instead of the plain ones.
    """
    if with_distill:
        present = [a for a, rs in arms.items() if distilled(rs) and rs[0].get("method") in BASELINES]
    else:
        present = [b for b in BASELINES if arms.get(b)]
    return max(present, key=lambda b: _mean(arms[b], "accuracy")) if present else None


def _fmt(x, spec="+.2f"):
    return "n/a" if x != x else format(x, spec)


#: Pre-declared primary cells of the gating grid (ratios of params) and the half-width they aim at.
PRIMARY_RATIOS = (0.7, 0.9)
PRIMARY_HALF_WIDTH = 0.5
#: Seeds a primary cell may grow to when its half-width is above PRIMARY_HALF_WIDTH (the quality issue).
MAX_SEEDS = 10


def cell_tables(key: tuple, arms: dict[str, list[dict]], primary: bool = False) -> list[str]:
    ratio, target, split = key
    best = best_baseline(arms)
    order = sorted(arms, key=lambda a: -_mean(arms[a], "accuracy"))
    lines = [f"#### ratio {ratio:g} of {target}, top-1 on {split}", "",
             "| arm | seeds | top-1 % (mean ± sd) | params removed % | MACs removed % | passes | CNN steps | "
             "wall s/arm |", "|:--|--:|--:|--:|--:|--:|--:|--:|"]
    for a in order:
        rs = arms[a]
        label = a + (" (best baseline)" if a == best else "")
        lines.append(f"| {label} | {len(rs)} | {_mean(rs, 'accuracy'):.2f} ± {_fmt(_sd(rs, 'accuracy'), '.2f')} | "
                     f"{100 * _mean(rs, 'params_removed'):.1f} | {100 * _mean(rs, 'macs_removed'):.1f} | "
                     f"{_mean(rs, 'passes'):g} | {_mean(rs, 'cnn_steps'):.0f} | {_mean(rs, 'seconds'):.0f} |")
    pairs = []
    best_kd = best_baseline(arms, with_distill=True)
    refs = [(best, "best baseline"), (best_kd, "best distilled baseline"), ("random", "random"),
            ("ceiling", "ceiling"), ("default", "default")]
    for a in order:
        for ref, label in refs:
            if ref is None or ref == a or ref not in arms:
                continue
            if label == "best distilled baseline" and not distilled(arms[a]):
                continue  # a distilled arm is compared with the best baseline under the same distillation
            if ref == "default" and (a in BASELINES or a in ("random", "ceiling")):
                continue  # tuning variants are also paired with the default arm they change
            c = pair(arms[a], arms[ref])
            name = f"{label} ({ref})" if label.startswith("best") else label
            if c is None:
                pairs.append(f"| {a} | {name} | <2 | | | | | | not enough pairs |")
                continue
            pairs.append(f"| {a} | {name} | {c.n} | {c.mean:+.2f} | {c.sd:.2f} | [{c.low:+.2f}, {c.high:+.2f}] | "
                         f"{c.half_width:.2f} | {c.wins}/{c.ties}/{c.losses} | **{c.verdict}** |")
    if pairs:  # a file of one arm has nothing to pair with: no empty table
        lines += ["", "| arm | against | pairs | mean diff (points) | sd | 95% interval | ± half-width | W/T/L | "
                      "verdict |", "|:--|:--|--:|--:|--:|:--|--:|:--|:--|", *pairs]
    if primary and best_kd is not None and "default" in arms and distilled(arms["default"]):
        best = best_kd  # the primary comparison: the same distillation setting on both sides
    if primary and best is not None and "default" in arms:
        c = pair(arms["default"], arms[best])
        if c is not None:
            n = c.n
            nxt = max(r["seed"] for r in arms["default"]) + 1
            seeds = " ".join(str(i) for i in range(nxt, nxt + MAX_SEEDS - n))
            if c.half_width <= PRIMARY_HALF_WIDTH:
                more = f"within the aimed {PRIMARY_HALF_WIDTH}"
            elif n >= MAX_SEEDS:
                more = (f"above {PRIMARY_HALF_WIDTH} with the most seeds the grid plans ({MAX_SEEDS}): the seed "
                        "spread, not the seed count, sets this precision")
            else:
                more = (f"above {PRIMARY_HALF_WIDTH}: add seeds to this cell (up to {MAX_SEEDS}), e.g. `python "
                        f"benchmarks/quality.py --ratios {ratio:g} --seeds {seeds}`")
            lines += ["", f"Primary cell: half-width of default vs best baseline ({best}) {c.half_width:.2f} "
                          f"points over {n} seeds, {more}."]
    return lines + [""]


def render_file(name: str, records: list[dict]) -> list[str]:
    """The paired section of one result file (one block per commit)."""
    headers = {h["run_id"]: h for h in records if h.get("type") == "run"}
    rows = latest_rows(records)
    lines = [f"### {name}", ""]
    if not rows:
        return lines + ["No rows recorded yet.", ""]
    by_commit = defaultdict(list)
    for r in rows:
        by_commit[r["commit"]].append(r)
    for commit, crows in by_commit.items():
        runs = [headers[i] for i in dict.fromkeys(r["run"] for r in crows) if i in headers]
        dirty = [h for h in runs if h["dirty"]]
        note = ""
        if dirty:
            note = " (dirty tree: " + ("--allow-dirty" if any(h["allow_dirty"] for h in dirty) else "smoke run") + ")"
        lines.append(f"Commit `{commit[:12]}`{note}")
        lines.append("")
        for h in runs:
            m = h["machine"]
            lines.append(f"- `{h['command']}` started {h['started']}: {m['cpu']}, {m['cores']} cores, vector "
                         f"extensions {'/'.join(x for x in ('avx2', 'avx512') if m.get(x)) or 'none'} (torch "
                         f"{m.get('torch_cpu_capability')}), {h['settings'].get('workers')} worker(s) × "
                         f"{m['torch_threads_per_worker']} torch thread(s), torch {m['torch']}, torch-pruning "
                         f"{m['torch_pruning']}")
        s = crows[0]["setup"]
        # rows before per_group_cap followed the options (3df093e) name a cap only in their options
        capped = any(r.get("per_group_cap") is not None or "max_group_ratio" in r.get("options", {}) for r in crows)
        cap = "no per-group cap" + (" except where an arm's options set `max_group_ratio`" if capped else "")
        lines += ["", f"Setup: {s['model']} ({s['in_channels']} input channel), {s['train_size']} training images, "
                      f"{s['val_size']} held out for validation, batch {s['batch_size']}, start "
                      f"`{s['start']}`" + (f" ({s['dense_passes']} dense passes, cached)" if s["start"] == "trained"
                                            else "") + f", {crows[0]['passes_after_start']} passes after it for "
                      f"every arm, `round_to=1`, {cap}.", ""]
        gating = crows[0].get("grid") == "gating"
        for key, arms in cells(crows).items():
            primary = gating and key[1] == "params" and any(abs(key[0] - r) < 1e-9 for r in PRIMARY_RATIOS)
            lines += cell_tables(key, arms, primary)
    return lines
