"""Latency of pruned vs dense models in ONNX Runtime (CPU), with the library's defaults only.

Every model is pruned by ``attnprune.prune`` with its defaults (``round_to="auto"``: the
channel multiple this machine's kernels want; no ``round_to`` is given) in five arms:
``params`` 0.5, ``macs`` 0.5 and ``latency`` 0.3, 0.5 and 0.7 (channels ranked by L1
norm, ``trained=True`` and no fine-tuning: any ranking will do for latency). For each
thread count the dense model and all five pruned ones are timed in one interleaved
ONNX Runtime benchmark (:func:`attnprune.benchmark`; speedup = dense median ÷
pruned median). The latency arms also record the latency model's predicted
reduction beside the measured one, and the time to build the latency model (cold,
in a fresh cache) and to load it again (cached). The CPU model and its vector
extensions are recorded with the results (``results/latency-<setup>.json``, format 2,
and a Markdown table beside it).

    python benchmarks/latency.py            # resnet18/50, mobilenet_v2, efficientnet_b0 (224x224, batch 1),
                                            # CIFAR ResNet-56 (batch 32); 1 thread and all cores
    python benchmarks/latency.py --quick    # CIFAR ResNet-20, batch 8, 1 thread, params 0.5 + latency 0.3, 3 rounds
    python benchmarks/latency.py --models cifar-resnet56 --uniform 16 8 4 2 1
    python benchmarks/latency.py --models resnet18 mobilenet_v2 cifar-resnet56 --threads 1 --check-model 6

``--uniform K ...`` measures instead how much latency channel removal can take away
at all: every group cut to its first ``K`` channels (at most its width), for each
``K``, timed against the dense model in one interleaved run
(``results/latency-uniform-<models>.json`` and ``.md``).

``--check-model N`` tests the latency model instead: N randomly pruned models per
model and thread count (each group keeps a random set of channels, their count drawn
on the rounding grid), their latency removal predicted by tables with and without
ONNX Runtime's layout conversions (built from the same timings; the residual split by
a profile of the dense run, ``scaling="profiled"``, and for the tables without them
also scaled with the layers, ``"layers"``) and measured in one interleaved run
(``results/latency-check-<models>.json`` and ``.md``).

``--tag T`` appends ``-T`` to the record's name, so a record from one machine
(e.g. ``--tag avx2``) does not replace another's.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
import attnprune  # noqa: E402
from attnprune.deploy.channels import machine_multiple  # noqa: E402
from attnprune.deploy.latency_model import build_latency_model  # noqa: E402
from attnprune.deploy.latency_table import DenseTimer, OrtTimer  # noqa: E402
from attnprune.deploy.machine import cpu_model, vector_extensions  # noqa: E402
from attnprune.deploy.ort_session import default_threads  # noqa: E402
from attnprune.errors import BudgetError  # noqa: E402
from attnprune.models import resnet20, resnet56  # noqa: E402

from _common import write  # noqa: E402
from _latency_tables import check_table, defaults_table, uniform_table  # noqa: E402

#: name -> (builder, per-call input shape at batch 1, batch size timed)
SETUPS = {
    "resnet18": (lambda: torchvision.models.resnet18(), (1, 3, 224, 224), 1),
    "resnet50": (lambda: torchvision.models.resnet50(), (1, 3, 224, 224), 1),
    "mobilenet_v2": (lambda: torchvision.models.mobilenet_v2(), (1, 3, 224, 224), 1),
    "efficientnet_b0": (lambda: torchvision.models.efficientnet_b0(), (1, 3, 224, 224), 1),
    "cifar-resnet56": (lambda: resnet56(in_channels=3), (1, 3, 32, 32), 32),
    "cifar-resnet20": (lambda: resnet20(in_channels=3), (1, 3, 32, 32), 8),
}
DEFAULT_MODELS = ["resnet18", "resnet50", "mobilenet_v2", "efficientnet_b0", "cifar-resnet56"]
#: (target, ratio) of every arm
ARMS = [("params", 0.5), ("macs", 0.5), ("latency", 0.3), ("latency", 0.5), ("latency", 0.7)]
QUICK_ARMS = [("params", 0.5), ("latency", 0.3)]


def _loader(shape) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, *shape[1:], generator=g)
    return DataLoader(TensorDataset(x, torch.zeros(2, dtype=torch.long)), batch_size=2)


def _build_times(build, x, batch: int, threads: int) -> dict:
    """Seconds to build the latency model in the (fresh) cache, then to load it from there."""
    multiple = machine_multiple("cpu")[0]
    out = {}
    for key in ("build_s", "cached_load_s"):
        torch.manual_seed(0)
        inst = attnprune.instrument(build().eval(), x)
        t0 = time.perf_counter()
        lm = build_latency_model(inst, batch=batch, threads=threads, multiple=multiple)
        out[key] = time.perf_counter() - t0
        out[f"{key[:-2]}from_cache"] = lm.from_cache
        inst.remove()
    return out


def run_model(name: str, threads: int, arms, rounds: int) -> dict:
    build, shape, batch = SETUPS[name]
    x = torch.randn(*shape)
    row = {"batch": batch, "input": list(shape), "threads": threads,
           "latency_model": _build_times(build, x, batch, threads) if any(t == "latency" for t, _ in arms) else None}
    torch.manual_seed(0)
    dense = build().eval()
    models, reports = {"dense": dense}, {}
    for target, ratio in arms:
        arm = f"{target}-{ratio:g}"
        try:
            res = attnprune.prune(dense, _loader(shape), ratio, method="l1", target=target, trained=True,
                                  finetune_epochs=0, latency_batch=batch, latency_threads=threads, progress=False,
                                  seed=0)
        except BudgetError as exc:  # e.g. a latency ratio out of reach with the channel multiple "auto" chose
            reports[arm] = {"target": target, "ratio": ratio, "unreachable": str(exc)}
            print(f"{name:16s} {threads:2d} thr  {arm:12s} unreachable: {exc}", flush=True)
            continue
        models[arm] = res.model.eval()
        r = res.report
        reports[arm] = {"target": target, "ratio": ratio, "ratio_achieved": r.ratio_achieved, "round_to": r.round_to,
                        "round_to_source": r.round_to_source, "latency": r.latency,
                        "params_removed": 1 - r.params_after / r.params_before,
                        "macs_removed": 1 - r.macs_after / r.macs_before}
    bench = attnprune.benchmark(models, x, batch_sizes=(batch,), threads=threads, rounds=rounds)
    d = bench.to_dict()
    for p in d["pairs"]:
        rep = reports[p["model"]]
        rep.update(speedup=p["speedup"], speedup_p10=p["speedup_p10"], speedup_p90=p["speedup_p90"],
                   macs_ratio=p["macs_ratio"], efficiency=p["efficiency"],
                   measured_removed=1 - 1 / p["speedup"])
        print(f"{name:16s} {threads:2d} thr  {p['model']:12s} round_to {rep['round_to']}  MACs ratio "
              f"{p['macs_ratio']:.2f}  speedup {p['speedup']:.2f}  efficiency {p['efficiency']:.2f}"
              + (f"  latency removed: predicted {rep['latency']['predicted_removed']:.3f}, measured "
                 f"{rep['measured_removed']:.3f}" if rep["latency"] else ""), flush=True)
    row.update(arms=reports, result=d)
    return row


def _pruned(build, x, masks_of) -> torch.nn.Module:
    """The model physically pruned to ``masks_of(groups)`` (one keep-mask per channel group)."""
    torch.manual_seed(0)
    inst = attnprune.instrument(build().eval(), x)
    inst.set_masks(masks_of(inst.groups))
    inst.mode = "binary"
    return inst.finalize()


def _cut(build, x, k: int) -> torch.nn.Module:
    """The model with every channel group cut to its first ``k`` channels (physically pruned)."""
    return _pruned(build, x, lambda groups: [torch.arange(g.n_channels) < k for g in groups])


def run_uniform(name: str, threads: int, ks, rounds: int) -> dict:
    """Dense against every group cut to ``k`` channels, for each ``k``, in one benchmark."""
    build, shape, batch = SETUPS[name]
    x = torch.randn(*shape)
    torch.manual_seed(0)
    models = {"dense": build().eval(), **{f"k{k}": _cut(build, x, k) for k in ks}}
    d = attnprune.benchmark(models, x, batch_sizes=(batch,), threads=threads, rounds=rounds).to_dict()
    cuts = []
    for p in d["pairs"]:
        cuts.append({"k": int(p["model"][1:]), "macs_ratio": p["macs_ratio"], "speedup": p["speedup"],
                     "speedup_p10": p["speedup_p10"], "speedup_p90": p["speedup_p90"],
                     "latency_removed": 1 - 1 / p["speedup"]})
        print(f"{name:16s} {threads:2d} thr  every group at {p['model'][1:]:>3s} channels: MACs ratio "
              f"{p['macs_ratio']:.2f}  speedup {p['speedup']:.2f}  latency removed {cuts[-1]['latency_removed']:.3f}",
              flush=True)
    return {"model": name, "batch": batch, "input": list(shape), "threads": threads, "cuts": cuts, "result": d}


class _SharedTimings:
    """One ONNX Runtime timing per grid point, read as tables with and without the layout conversions."""

    def __init__(self, threads: int):
        self._timer = OrtTimer(threads)
        self._memo: dict = {}

    def _get(self, spec, k_out: int, k_in: int) -> tuple[float, float]:
        key = (spec, k_out, k_in)
        if key not in self._memo:
            self._memo[key] = self._timer.measure(spec, k_out, k_in)
        return self._memo[key]

    def with_reorders(self, spec, k_out: int, k_in: int) -> float:
        return self._get(spec, k_out, k_in)[0]

    def without_reorders(self, spec, k_out: int, k_in: int) -> float:
        seconds, share = self._get(spec, k_out, k_in)
        return seconds * share

    def close(self) -> None:
        self._timer.close()


def _random_masks(groups, multiple: int, low: float, rng: np.random.Generator) -> list[torch.Tensor]:
    """Per group a random set of channels, its count drawn from [low, 1] of the width on the rounding grid."""
    masks = []
    for g in groups:
        n = g.n_channels
        k = n if n <= multiple else min(n, max(multiple, int(round(rng.uniform(low, 1.0) * n / multiple)) * multiple))
        m = torch.zeros(n, dtype=torch.bool)
        m[torch.from_numpy(rng.permutation(n)[:k])] = True
        masks.append(m)
    return masks


#: Lowest kept fraction per group of the random masks of ``--check-model``, in turn.
CHECK_LOWS = (0.15, 0.3, 0.5)


def run_check(name: str, threads: int, n_masks: int, rounds: int, multiple: int | None = None) -> dict:
    """Predicted against measured latency removal on ``n_masks`` randomly pruned models.

    The latency model is built twice from the same timings (the tables with and without
    ONNX Runtime's layout conversions, :class:`~attnprune.deploy.latency_table.OrtTimer`)
    and the dense latency measured once; the pruned models and the dense one are then
    timed in one interleaved run. ``multiple``: the rounding grid (default: the one
    ``round_to="auto"`` picks here; a smaller one is what its latency fallback uses).
    """
    build, shape, batch = SETUPS[name]
    x = torch.randn(*shape)
    multiple = multiple or machine_multiple("cpu")[0]
    torch.manual_seed(0)
    dense = build().eval()
    inst = attnprune.instrument(dense, x)
    timings = _SharedTimings(threads)
    try:
        dense_timer = DenseTimer(dense, (x,), batch, threads, "cpu")
        dense_timer.sample()
        opts = dict(batch=batch, threads=threads, multiple=multiple, cache_dir=False)
        build_latency_model(inst, timer=timings.without_reorders, dense_latency=1.0, **opts)  # fills the timings
        split = dense_timer.profile()
        dense_s = dense_timer.result()
        lms = {key: build_latency_model(inst, timer=getattr(timings, key), dense_latency=dense_s, dense_split=split,
                                        **opts) for key in ("without_reorders", "with_reorders")}
        lms["without_reorders_layers"] = build_latency_model(inst, timer=timings.without_reorders,
                                                             dense_latency=dense_s, scaling="layers", **opts)
    finally:
        timings.close()
    rng = np.random.default_rng(0)
    masks = [_random_masks(inst.groups, multiple, CHECK_LOWS[i % len(CHECK_LOWS)], rng) for i in range(n_masks)]
    predicted = [{key: lm.removed_fraction(m) for key, lm in lms.items()} for m in masks]
    inst.remove()
    models = {"dense": build().eval(), **{f"m{i}": _pruned(build, x, lambda _, m=m: m) for i, m in enumerate(masks)}}
    d = attnprune.benchmark(models, x, batch_sizes=(batch,), threads=threads, rounds=rounds).to_dict()
    checks = []
    for p in d["pairs"]:
        i = int(p["model"][1:])
        checks.append({"mask": i, "low": CHECK_LOWS[i % len(CHECK_LOWS)], "macs_ratio": p["macs_ratio"],
                       "speedup": p["speedup"], "measured_removed": 1 - 1 / p["speedup"], "predicted": predicted[i]})
        c = checks[-1]
        print(f"{name:16s} {threads:2d} thr  mask {i}: MACs ratio {c['macs_ratio']:.2f}  measured "
              f"{c['measured_removed']:.3f}  predicted {c['predicted']['without_reorders']:.3f} without reorders, "
              f"{c['predicted']['with_reorders']:.3f} with", flush=True)
    return {"model": name, "batch": batch, "input": list(shape), "threads": threads, "multiple": multiple,
            "dense_ms": 1e3 * dense_s, "dense_split": split, "checks": checks, "result": d}


def to_markdown(payload: dict) -> str:
    """The Markdown table written beside the JSON (the one ``make_results.py`` renders)."""
    return "\n".join(defaults_table(payload))


def _save(name: str, fields: dict, rows: list, args, threads: list[int], table) -> int:
    """Write a format-2 record (``results/<name>.json``) and its Markdown ``table`` beside it."""
    payload = {"format": 2, "cpu_model": cpu_model(), "vector_extensions": vector_extensions(), **fields,
               "threads": threads, "rounds": args.rounds, "rows": rows}
    path = write(name, payload, args.out_dir)
    path.with_suffix(".md").write_text("\n".join(table(payload)))
    print(f"wrote {path}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="CIFAR ResNet-20, 1 thread, two arms, 3 rounds")
    ap.add_argument("--models", nargs="+", default=DEFAULT_MODELS, choices=list(SETUPS))
    ap.add_argument("--threads", type=int, nargs="+", default=None,
                    help="ONNX Runtime thread counts (default: 1 and all usable cores)")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--out-dir", default=None)
    ap.add_argument("--tag", default=None,
                    help="appended to the record's file name, e.g. 'avx2' to keep one machine's record beside "
                         "another's")
    ap.add_argument("--uniform", type=int, nargs="+", default=None, metavar="K",
                    help="instead of the default arms: every group cut to K channels, for each K")
    ap.add_argument("--check-model", type=int, default=None, metavar="N",
                    help="instead of the default arms: the latency model's predictions against measurement on N "
                         "randomly pruned models, with and without the layout conversions in the tables")
    ap.add_argument("--multiple", type=int, default=None,
                    help="with --check-model: the rounding grid of the masks and tables (default: round_to='auto')")
    args = ap.parse_args(argv)
    if args.multiple is not None and (args.check_model is None or args.multiple < 1):
        raise SystemExit(f"--multiple takes a channel multiple >= 1 and goes with --check-model, got {args.multiple}")
    if args.check_model is not None and args.check_model < 1:
        raise SystemExit(f"--check-model takes a number of models >= 1, got {args.check_model}")
    if args.uniform is not None and min(args.uniform) < 1:
        raise SystemExit(f"--uniform takes channel counts >= 1, got {args.uniform}")
    arms = ARMS
    if args.quick:
        args.models, args.rounds, args.threads, arms = ["cifar-resnet20"], 3, [1], QUICK_ARMS
    threads = args.threads or sorted({1, default_threads()})
    if args.tag is not None and not re.fullmatch(r"[A-Za-z0-9_.]+", args.tag):
        raise SystemExit(f"--tag takes letters, digits, '_' and '.', got {args.tag!r}")
    quick = (f"-{args.tag}" if args.tag else "") + ("-quick" if args.quick else "")
    if args.check_model is not None:
        rows = [run_check(name, t, args.check_model, args.rounds, args.multiple) for name in args.models
                for t in threads]
        name = "latency-check-" + "_".join(args.models) + (f"-m{args.multiple}" if args.multiple else "")
        return _save(name + quick, {"check_model": args.check_model}, rows, args, threads, check_table)
    if args.uniform is not None:
        rows = [run_uniform(name, t, args.uniform, args.rounds) for name in args.models for t in threads]
        return _save("latency-uniform-" + "_".join(args.models) + quick, {"uniform": args.uniform}, rows, args,
                     threads, uniform_table)
    rows = []
    with tempfile.TemporaryDirectory(prefix="attnprune-latency-cache-") as cache:
        old = os.environ.get("ATTNPRUNE_CACHE")
        os.environ["ATTNPRUNE_CACHE"] = cache  # a fresh cache: the build time is a cold build's
        try:
            for name in args.models:
                for t in threads:
                    rows.append({"model": name, **run_model(name, t, arms, args.rounds)})
        finally:
            if old is None:
                os.environ.pop("ATTNPRUNE_CACHE", None)
            else:
                os.environ["ATTNPRUNE_CACHE"] = old
    return _save("latency-defaults-" + "_".join(args.models) + quick,
                 {"round_to_auto": machine_multiple("cpu")[0], "arms": [list(a) for a in arms]}, rows, args, threads,
                 defaults_table)


if __name__ == "__main__":
    sys.exit(main())
