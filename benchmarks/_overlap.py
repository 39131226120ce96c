"""How much two runs agree on *which* channels to close (used by ``make_results.py``).

A quality row records the closed channel indices of every group (``closed``). Two
rows are compared by the Jaccard overlap of their closed sets, counted over all
groups: ``|A & B| / |A | B|`` of the (group, channel) pairs. Beside it stands the
overlap that chance gives: the same number of channels closed in every group, but
drawn at random and independently (expected ``|A & B|`` of a group is
``k_a * k_b / n``). Two comparisons:

* **across data orders**: the same arm, seed, checkpoint and cell, once with the
  recorded data order and once with ``quality.py --order N`` (a file
  ``quality-<grid>[-val]-order<N>.jsonl`` beside ``quality-<grid>[-val].jsonl``):
  how much of a method's choice is the data order's;
* **across arms**: two arms at the same seed and cell of one file: whether a
  learned method closes other channels than a baseline at all.

Issue 12 asks for the first (a probe had found 0.45 for PAAM).
"""

from __future__ import annotations

import re
import statistics
from collections import defaultdict
from itertools import combinations
from pathlib import Path

from _paired_tables import latest_rows
from _records import read_records

__all__ = ["jaccard", "chance_jaccard", "overlap_section"]

_ORDER = re.compile(r"^(?P<base>.+)-order(?P<n>\d+)$")


def jaccard(a: dict[str, list[int]], b: dict[str, list[int]]) -> float:
    """Jaccard overlap of two closed sets (``{group: [indices]}``) over all groups; 1.0 when both are empty."""
    inter = union = 0
    for g in set(a) | set(b):
        sa, sb = set(a.get(g, ())), set(b.get(g, ()))
        inter += len(sa & sb)
        union += len(sa | sb)
    return inter / union if union else 1.0


def chance_jaccard(a: dict[str, list[int]], b: dict[str, list[int]], sizes: dict[str, int]) -> float:
    """The Jaccard overlap expected of random closed sets with ``a``'s and ``b``'s per-group counts.

    Args:
        a, b: Closed sets, ``{group: [indices]}``.
        sizes: Channels of every group.
    """
    inter = union = 0.0
    for g, n in sizes.items():
        ka, kb = len(a.get(g, ())), len(b.get(g, ()))
        e = ka * kb / n if n else 0.0
        inter += e
        union += ka + kb - e
    return inter / union if union else 1.0


def _key(r: dict) -> tuple:
    return r["commit"], r["arm"], r["seed"], r["ratio"], r["target"], r["eval"]


def _sizes(r: dict) -> dict[str, int]:
    return {g: total for g, (_, total) in r["kept"].items()}


def _summary(pairs: list[tuple[dict, dict]]) -> tuple[str, str]:
    obs = [jaccard(a["closed"], b["closed"]) for a, b in pairs]
    chance = [chance_jaccard(a["closed"], b["closed"], _sizes(a)) for a, b in pairs]
    per_seed = ", ".join(f"{x:.2f}" for x in obs)
    return f"{statistics.mean(obs):.2f} ({per_seed})", f"{statistics.mean(chance):.2f}"


def _with_closed(path: Path) -> list[dict]:
    return [r for r in latest_rows(read_records(path)) if r.get("closed") is not None and r["ratio"] is not None]


def _order_table(base_rows: list[dict], other_rows: list[dict], n: str) -> list[str]:
    base = {_key(r): r for r in base_rows}
    cells = defaultdict(list)
    for r in other_rows:
        b = base.get(_key(r))
        if b is not None and b["checkpoint"] == r["checkpoint"]:
            cells[(r["ratio"], r["target"], r["eval"], r["arm"])].append((b, r))
    if not cells:
        return []
    commits = sorted({b["commit"][:12] for pairs in cells.values() for b, _ in pairs})
    lines = [f"Across data orders (order 0 against order {n}; commit {', '.join(f'`{c}`' for c in commits)}):",
             "", "| ratio | target | eval | arm | seeds | overlap, mean (per seed) | chance |",
             "|--:|:--|:--|:--|--:|:--|--:|"]
    for (ratio, target, ev, arm), pairs in sorted(cells.items(), key=lambda kv: (kv[0][0], kv[0][3])):
        obs, chance = _summary(pairs)
        lines.append(f"| {ratio:g} | {target} | {ev} | {arm} | {len(pairs)} | {obs} | {chance} |")
    return lines + [""]


def _arm_table(rows: list[dict]) -> list[str]:
    by = defaultdict(dict)
    for r in rows:
        by[(r["commit"], r["ratio"], r["target"], r["eval"], r["seed"])][r["arm"]] = r
    cells = defaultdict(list)
    for (commit, ratio, target, ev, _), arms in by.items():
        for x, y in combinations(sorted(arms), 2):
            cells[(commit, ratio, target, ev, x, y)].append((arms[x], arms[y]))
    if not cells:
        return []
    lines = ["Across arms (the same seed and checkpoint):", "",
             "| commit | ratio | target | eval | arms | seeds | overlap, mean (per seed) | chance |",
             "|:--|--:|:--|:--|:--|--:|:--|--:|"]
    for (commit, ratio, target, ev, x, y), pairs in sorted(cells.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        obs, chance = _summary(pairs)
        lines.append(f"| `{commit[:12]}` | {ratio:g} | {target} | {ev} | {x} / {y} | {len(pairs)} | {obs} | {chance} |")
    return lines + [""]


def overlap_section(results_dir: Path) -> list[str]:
    """The closed-set overlap tables of every result file with recorded closed sets (empty if none)."""
    lines = []
    for p in sorted(results_dir.glob("quality-*.jsonl")):
        if "-quick" in p.stem:
            continue
        rows = _with_closed(p)
        if not rows:
            continue
        m = _ORDER.match(p.stem)
        if m:
            base = p.with_name(f"{m['base']}.jsonl")
            table = _order_table(_with_closed(base), rows, m["n"]) if base.exists() else []
        else:
            table = _arm_table(rows)
        if table:
            lines += [f"#### {p.stem} (`results/{p.name}`)", "", *table]
    if lines:
        lines = ["### Which channels are closed: overlap of closed sets", "",
                 "Jaccard overlap of the closed (group, channel) pairs of two runs, beside what random "
                 "choices with the same per-group counts would give (`benchmarks/_overlap.py`).", "", *lines]
    return lines
