"""Tables of ``benchmarks/latency.py``'s format-2 records (defaults only), used by it and ``make_results.py``.

Every arm stands beside the targets of the speed-by-default issue: efficiency
(speedup ÷ MACs ratio) at least 0.9 (0.8 on mobilenet_v2 and efficientnet_b0), a
speedup of at least 1.8 at half the MACs, and for ``target="latency"`` the
measured reduction within 5 points of the asked ratio (resnet18, mobilenet_v2,
ResNet-56) and the predicted one within 5 points of the measured one. An arm that
``prune()`` refused is a missed target; an arm whose ``round_to="auto"`` fell back
to a finer multiple says so beside its multiple. ``--uniform`` records (every group
cut to k channels) have a table of their own: the most latency removal can take;
so do ``--check-model`` records (the latency model against measurement on random masks).
"""

from __future__ import annotations

__all__ = ["check_table", "defaults_table", "uniform_table"]

#: Models whose latency-target arms must land within 5 points of the asked ratio.
LATENCY_TARGET_MODELS = ("resnet18", "mobilenet_v2", "cifar-resnet56")


def _met(ok: bool) -> str:
    return "met" if ok else "missed"


def _round_to(a: dict) -> str:
    fallback = (a.get("round_to_source") or {}).get("fallback")
    return f"{a['round_to']} (fallback)" if fallback else str(a["round_to"])


def _targets(name: str, a: dict) -> list[str]:
    targets = []
    if a["target"] in ("params", "macs"):
        floor = 0.8 if name in ("mobilenet_v2", "efficientnet_b0") else 0.9
        targets.append(f"efficiency ≥ {floor} ({_met(a['efficiency'] >= floor)})")
        if a["target"] == "macs":
            targets.append(f"speedup ≥ 1.8 ({_met(a['speedup'] >= 1.8)})")
    if a["latency"]:
        pred, meas = a["latency"]["predicted_removed"], a["measured_removed"]
        if name in LATENCY_TARGET_MODELS:
            targets.append(f"measured ±0.05 of {a['ratio']:g} ({_met(abs(meas - a['ratio']) <= 0.05)})")
        targets.append(f"predicted ±0.05 of measured ({_met(abs(pred - meas) <= 0.05)})")
    return targets


def defaults_table(f: dict) -> list[str]:
    """Markdown lines of a format-2 record: a row per (model, threads, arm), then the latency models' build times."""
    lines = [f"Defaults only (`round_to=\"auto\"` chose {f['round_to_auto']} on {f['cpu_model']}, vector "
             f"extensions {', '.join(f['vector_extensions'] or ['unknown'])}); L1 ranking, no fine-tuning; "
             f"{f['rounds']} interleaved rounds per model and thread count; speedup = dense median ÷ pruned "
             "median, efficiency = speedup ÷ MACs ratio.", "",
             "| model | batch | threads | arm | round_to | MACs ratio | speedup (p10–p90) | efficiency "
             "| latency removed: predicted / measured | target |",
             "|:--|--:|--:|:--|--:|--:|--:|--:|--:|:--|"]
    builds = []
    for row in f["rows"]:
        name = row["model"]
        for arm, a in row["arms"].items():
            head = f"| {name} | {row['batch']} | {row['threads']} | {arm} |"
            if "unreachable" in a:  # refused by prune(): recorded with its reason, a missed target
                why = a["unreachable"].split(";")[0]
                lines.append(f"{head} | | unreachable: {why} | | | refused by prune() (missed) |")
                continue
            lat = f"{a['latency']['predicted_removed']:.3f} / {a['measured_removed']:.3f}" if a["latency"] else ""
            lines.append(f"{head} {_round_to(a)} | {a['macs_ratio']:.2f} | {a['speedup']:.2f} "
                         f"({a['speedup_p10']:.2f}–{a['speedup_p90']:.2f}) | {a['efficiency']:.2f} | {lat} | "
                         f"{'; '.join(_targets(name, a))} |")
        lm = row.get("latency_model")
        if lm:
            tgt = f" (≤ 60 s: {_met(lm['build_s'] <= 60)})" if name == "resnet50" else ""
            builds.append(f"{name}, {row['threads']} thread(s): built in {lm['build_s']:.1f} s{tgt}, loaded from "
                          f"the cache in {lm['cached_load_s']:.2f} s (< 1 s: {_met(lm['cached_load_s'] < 1)})")
    if builds:
        lines += ["", "Latency model: " + "; ".join(builds) + "."]
    return lines + [""]


def uniform_table(payload: dict) -> list[str]:
    """The Markdown lines of a ``--uniform`` record: latency removed with every group cut to k channels."""
    lines = [f"Every channel group cut to its first k channels (at most its width), timed against the dense model "
             f"in one interleaved ONNX Runtime run ({payload['rounds']} rounds); {payload['cpu_model']}, vector "
             f"extensions {', '.join(payload['vector_extensions'])}.", "",
             "| model | batch | threads | k | MACs ratio | speedup (p10–p90) | latency removed |",
             "|:--|--:|--:|--:|--:|--:|--:|"]
    for row in payload["rows"]:
        for c in row["cuts"]:
            lines.append(f"| {row['model']} | {row['batch']} | {row['threads']} | {c['k']} | {c['macs_ratio']:.2f} | "
                         f"{c['speedup']:.2f} ({c['speedup_p10']:.2f}–{c['speedup_p90']:.2f}) | "
                         f"{c['latency_removed']:.3f} |")
    return lines + [""]


#: The latency model's variants in a ``--check-model`` record, in table order.
CHECK_VARIANTS = (("without_reorders", "tables without layout conversions (default)"),
                  ("with_reorders", "tables with them"),
                  ("without_reorders_layers", "without them, residual scaled with the layers"))


def check_table(payload: dict) -> list[str]:
    """The Markdown lines of a ``--check-model`` record: predicted vs measured removal, and each variant's errors."""
    lines = [f"The latency model against measurement: {payload['check_model']} randomly pruned models per row "
             f"(channel counts on the rounding grid), predicted by tables with and without ONNX Runtime's layout "
             f"conversions (the same timings; the residual split by a profile of the dense run, or scaled with the "
             f"layers) and timed against the dense model in one interleaved run "
             f"({payload['rounds']} rounds); {payload['cpu_model']}, vector extensions "
             f"{', '.join(payload['vector_extensions'] or ['unknown'])}. Error = predicted − measured latency "
             "removed.", "",
             "| model | batch | threads | multiple | " + " | ".join(
                 f"{label}: mean abs error / worst" for _, label in CHECK_VARIANTS) + " |",
             "|:--|--:|--:|--:|" + "--:|" * len(CHECK_VARIANTS)]
    for row in payload["rows"]:
        cells = []
        for key, _ in CHECK_VARIANTS:
            if any(key not in c["predicted"] for c in row["checks"]):  # a record from before the variant
                cells.append("—")
                continue
            errs = [c["predicted"][key] - c["measured_removed"] for c in row["checks"]]
            worst = max(errs, key=abs)
            cells.append(f"{sum(abs(e) for e in errs) / len(errs):.3f} / {worst:+.3f}")
        lines.append(f"| {row['model']} | {row['batch']} | {row['threads']} | {row['multiple']} | "
                     + " | ".join(cells) + " |")
    return lines + [""]
