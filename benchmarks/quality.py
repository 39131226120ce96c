"""Quality evidence that can tell methods apart: paired arms from shared dense starting points.

Per seed the dense ResNet is trained once for ``--dense-passes`` passes and cached
(``benchmarks/cache/``, keyed by setup, seed, torch version and a hash of the
training code). Every arm prunes a copy of that same checkpoint with
``trained=True`` and then gets the same ``--passes`` passes over the training
subset (AN-only passes count); each record carries its passes and the number of
optimizer steps that changed CNN weights. Each epoch's data order depends only on
(seed, epoch). Arms: ``ceiling`` (the dense model trained the same extra passes),
``random`` (floor), the baselines ``l1``, ``taylor`` (rank once, fine-tune),
``taylor-iterative`` (prune in steps while training), ``slim`` (one pass of
sparsity training, then rank), and ``default`` (the library's default method with
its own defaults except the schedule). Every arm runs with ``round_to=1``; its
options, normalisation and full config are written into its row.

A fixed validation split (``--val-size``) is held out of the 60k training images;
``--eval val`` measures on it (tuning: use it with seeds >= 100), ``--eval test``
on the 10k test set. Rows are appended to ``results/quality-<grid>.jsonl`` with a
header naming the command, the commit at the start, CPU and threads
(:mod:`_records`); a rerun skips rows already done. Each row also lists every
group's closed channels; ``--order N`` trains the same arms from the same
checkpoints on another data order (its own file), so ``make_results.py`` can show
how much of a method's choice of channels the data order decides (:mod:`_overlap`),
beside the paired tables.

    python benchmarks/quality.py                       # the gating grid (about 1.5 h on 2 idle cores)
    python benchmarks/quality.py --grid warmup         # further records: warmup|learned|macs|resnet56
    python benchmarks/quality.py --quick --out-dir /tmp/q   # a smoke run (CI, under a minute)
    python benchmarks/quality.py --eval val --seeds 100 101 --order 1   # the same arms, another data order
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _arms import ARM_NAMES, GRIDS, arm, parse_variant, resolve_arms, variant_arm  # noqa: E402
from _dense import CACHE, Setup  # noqa: E402
from _jobs import arm_job, dense_job, init_worker  # noqa: E402
from _records import DirtyTreeError, append_record, done_keys, read_records, row_key, run_header  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
#: Training images of the default setup: sized so the gating grid (5 seeds x 3 ratios x 6 pruned arms + ceiling,
#: 12 dense + 4 passes) takes about 1.5 h as two single-thread workers on 2 cores (from about 2.9 ms of CPU per
#: image and pass of the dense ResNet-20, measured on the 2-core EPYC of the recorded runs).
DEFAULT_TRAIN_SIZE = 10000
QUICK = dict(train_size=256, val_size=128, test_size=256, passes=2, dense_passes=1, seeds=[0, 1],
             ratios=[0.5], arms=["ceiling", "random", "l1", "default"])


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", choices=sorted(GRIDS), default="gating", help="named preset (default: gating)")
    ap.add_argument("--arms", nargs="+", default=None, help=f"override the preset's arms: {', '.join(ARM_NAMES)}")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE,...",
                    help="an extra arm: the default arm with options changed (method=NAME picks another "
                         "learned method); repeatable. For tuning on --eval val")
    ap.add_argument("--ratios", nargs="+", type=float, default=None)
    ap.add_argument("--seeds", nargs="+", type=int, default=None)
    ap.add_argument("--target", choices=("params", "macs"), default=None)
    ap.add_argument("--passes", type=int, default=4, help="passes after the starting point, every arm (default 4)")
    ap.add_argument("--dense-passes", type=int, default=12, help="passes of the dense starting point (default 12)")
    ap.add_argument("--train-size", type=int, default=None,
                    help=f"training images (default {DEFAULT_TRAIN_SIZE}; the resnet56 preset takes half)")
    ap.add_argument("--val-size", type=int, default=5000, help="validation images held out of the 60k (default 5000)")
    ap.add_argument("--eval", choices=("val", "test"), default="test", help="split the accuracy is measured on")
    ap.add_argument("--order", type=int, default=0,
                    help="data order after the starting point: 0 (default) the recorded one; N > 0 another order "
                         "from the same checkpoints and seeds, written to quality-<grid>[-val]-order<N>.jsonl "
                         "(make_results.py compares the closed channel sets of the two orders)")
    ap.add_argument("--workers", type=int, default=None,
                    help="worker processes running arms side by side, one torch thread each "
                         "(default 2; 1 with --quick)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker (default 1)")
    ap.add_argument("--allow-dirty", action="store_true", help="record from a tree with modified tracked files")
    ap.add_argument("--quick", action="store_true", help="a tiny smoke run (under a minute; results tagged -quick)")
    ap.add_argument("--out-dir", default=None, help=f"result folder (default {RESULTS})")
    ap.add_argument("--cache-dir", default=None, help=f"dense checkpoint cache (default {CACHE})")
    args = ap.parse_args(argv)
    for name in ("passes", "dense_passes", "workers", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


def settings_from(args) -> dict:
    """The grid's settings after the command-line overrides."""
    g = dict(GRIDS[args.grid])
    factor = g.pop("train_size_factor", 1.0)
    s = dict(g, passes=args.passes, dense_passes=args.dense_passes, val_size=args.val_size, test_size=None,
             train_size=args.train_size or int(DEFAULT_TRAIN_SIZE * factor), eval=args.eval, workers=args.workers or 2,
             threads=args.threads, grid=args.grid, quick=args.quick)
    if args.order < 0:
        raise SystemExit(f"--order must be >= 0, got {args.order}")
    s["order"] = args.order
    if args.quick:
        s.update(QUICK, workers=args.workers or 1)
    for name in ("arms", "ratios", "seeds", "target"):
        if getattr(args, name) is not None:
            s[name] = getattr(args, name)
    s["variants"] = list(args.variant)
    return s


def _pool(workers: int, threads: int):
    if workers <= 1:
        init_worker(threads)
        return None
    return cf.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                  initializer=init_worker, initargs=(threads,))


def _drive(pool, tasks, on_done) -> None:
    """Run ``(fn, job)`` tasks inline or in the pool; ``on_done(fn, job, result)`` returns further tasks.

    The arms of a seed are submitted as soon as its dense checkpoint exists, so both
    workers stay busy while the last checkpoints train.
    """
    if pool is None:
        queue = list(tasks)
        while queue:
            fn, job = queue.pop(0)
            queue.extend(on_done(fn, job, fn(job)))
        return
    live = {pool.submit(fn, job): (fn, job) for fn, job in tasks}
    while live:
        finished, _ = cf.wait(live, return_when=cf.FIRST_COMPLETED)
        for fut in finished:
            fn, job = live.pop(fut)
            for nfn, njob in on_done(fn, job, fut.result()):
                live[pool.submit(nfn, njob)] = (nfn, njob)


def main(argv=None) -> int:
    argv_full = [sys.argv[0], *(sys.argv[1:] if argv is None else argv)]
    args = parse(argv)
    s = settings_from(args)
    setup = Setup(model=s["model"], in_channels=1, train_size=s["train_size"], val_size=s["val_size"],
                  test_size=s["test_size"], dense_passes=s["dense_passes"], start=s["start"])
    out_dir = Path(args.out_dir) if args.out_dir else RESULTS
    cache = str(Path(args.cache_dir) if args.cache_dir else CACHE)
    tag = (("-val" if s["eval"] == "val" else "") + (f"-order{s['order']}" if s["order"] else "")
           + ("-quick" if args.quick else ""))
    path = out_dir / f"quality-{args.grid}{tag}.jsonl"
    try:
        header = run_header(argv_full, allow_dirty=args.allow_dirty, exempt=args.quick,
                            settings={**s, "setup": asdict(setup)}, threads=s["threads"])
    except DirtyTreeError as exc:
        print(f"quality.py: {exc}", file=sys.stderr)
        return 2
    records = read_records(path)
    done = done_keys(records)
    gating = [r for r in read_records(out_dir / "quality-gating.jsonl") if r.get("type") == "row"]
    try:  # unknown arms, or a best baseline not yet measured, fail before any training
        arms = resolve_arms(s["arms"], gating + [r for r in records if r.get("type") == "row"])
        specs = [arm(name, s["passes"], s["start"]) for name in arms]
        specs += [variant_arm(*parse_variant(v), s["passes"], s["start"]) for v in s["variants"]]
    except ValueError as exc:
        print(f"quality.py: {exc}", file=sys.stderr)
        return 2
    t_start = time.perf_counter()
    counts = {"run": 0, "skipped": 0}

    def arm_jobs(seed: int, ck: dict) -> list[dict]:
        jobs = []
        for a in specs:
            for ratio in ([None] if a.is_ceiling else s["ratios"]):
                cell = {"ratio": ratio, "target": None if a.is_ceiling else s["target"], "eval": s["eval"]}
                if s["order"]:  # order 0 keeps the keys of rows recorded before --order existed
                    cell["order"] = s["order"]
                opts = {"method": a.method, "options": a.options, "trained": a.trained, "round_to": 1,
                        "passes": s["passes"], "setup": asdict(setup)}
                key = row_key(a.name, opts, ck["info"]["sha256"], seed, header["commit"], cell)
                if key in done:
                    counts["skipped"] += 1
                    continue
                jobs.append({"key": key, "arm": asdict(a), "seed": seed, **cell, "setup": asdict(setup),
                             "checkpoint": ck["path"], "checkpoint_sha256": ck["info"]["sha256"],
                             "threads": s["threads"], "passes": s["passes"]})
        return jobs

    def record_row(job, res):
        if counts["run"] == 0:
            append_record(path, header)  # the header goes in once, before this run's first row
        counts["run"] += 1
        a = job["arm"]
        row = {"type": "row", "run": header["run_id"], "key": job["key"], "grid": args.grid, "arm": a["name"],
               "method": a["method"], "options": a["options"], "trained": a["trained"], "start": setup.start,
               "seed": job["seed"], "ratio": job["ratio"], "target": job["target"], "eval": job["eval"],
               "round_to": 1, "per_group_cap": a["options"].get("max_group_ratio"), "commit": header["commit"],
               "checkpoint": job["checkpoint_sha256"], "dense_passes": setup.dense_passes,
               "passes_after_start": s["passes"], "setup": job["setup"], "order": s["order"], **res}
        append_record(path, row)
        ratio = "-" if job["ratio"] is None else f"{job['ratio']:.2f}"
        print(f"{a['name']:17s} ratio {ratio} seed {job['seed']}: top-1 {res['accuracy']:.2f}%  "
              f"params -{100 * res['params_removed']:.1f}%  MACs -{100 * res['macs_removed']:.1f}%  "
              f"{res['passes']} passes, {res['cnn_steps']} CNN steps, {res['seconds']:.0f}s", flush=True)

    def on_done(fn, job, res):
        if fn is dense_job:
            print(f"dense seed {res['seed']}: {res['info'].get('seconds', 0):.0f}s to train (cached), "
                  f"sha256 {res['info']['sha256'][:12]}", flush=True)
            return [(arm_job, j) for j in arm_jobs(res["seed"], res)]
        record_row(job, res)
        return []

    pool = _pool(s["workers"], s["threads"])
    try:
        _drive(pool, [(dense_job, {"setup": asdict(setup), "seed": seed, "cache": cache}) for seed in s["seeds"]],
               on_done)
    finally:
        if pool is not None:
            pool.shutdown()
    print(f"{counts['run']} arm run(s) done, {counts['skipped']} already in {path} "
          f"({time.perf_counter() - t_start:.0f}s wall)")
    return 0


if __name__ == "__main__":
    torch.set_num_threads(1)
    sys.exit(main())
