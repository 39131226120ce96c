"""Quality at equal budget: every method on ResNet-20 / Fashion-MNIST, same passes.

Each arm gets the same training subset, the same batch size and the same total number
of passes over the data (AN-only epochs count as passes), and is evaluated on the full
10k test set. Writes ``results/quality-<setup>.json`` (one entry per arm) and prints
a table.

    python benchmarks/quality.py                 # the recorded setup (about 35 minutes on 2 cores)
    python benchmarks/quality.py --quick         # a smoke run (CI runs it)
    python benchmarks/quality.py --arms paam l1 --ratios 0.5 --seeds 0 1
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import attnprune  # noqa: E402
from attnprune.data import fashion_mnist_loaders  # noqa: E402
from attnprune.methods.base import Phase  # noqa: E402
from attnprune.models import resnet20  # noqa: E402
from attnprune.train.runner import Runner, evaluate  # noqa: E402

from _common import write  # noqa: E402

#: arm name -> (method, options given ``passes``); every arm sums to ``passes`` epochs.
def arm_options(arm: str, passes: int) -> tuple[str, dict]:
    warm = max(passes * 3 // 8, 1)
    if arm == "dense":
        return "dense", {}
    if arm == "paam-3cycles":  # more alternation, same passes: 1 + 3 x (1 AN + 1 CNN) + 1
        return "paam", dict(warmup_epochs=1, cycles=3, an_epochs=1, cnn_epochs=1, finetune_epochs=passes - 7,
                            variant="vanilla")
    if arm in ("paam", "paam-kq", "sbf", "paam-sqrt", "paam-uniform"):
        ft = passes - warm - 3  # one cycle: 1 AN epoch + 2 CNN epochs
        opts = dict(warmup_epochs=warm, cycles=1, an_epochs=1, cnn_epochs=2, finetune_epochs=ft)
        if arm == "paam-kq":
            return "paam", dict(opts, variant="kq")
        if arm == "paam":
            return "paam", dict(opts, variant="vanilla")
        if arm in ("paam-sqrt", "paam-uniform"):  # how the L1 term weighs channel costs
            return "paam", dict(opts, variant="vanilla", cost_weight=arm.split("-")[1])
        return "sbf", opts
    if arm in ("abp", "aswl"):  # one-stage joint training, no fine-tuning
        return arm, dict(warmup_epochs=warm, joint_epochs=passes - warm, finetune_epochs=0)
    if arm == "aswl-structured":
        return "aswl-structured", dict(warmup_epochs=warm, joint_epochs=passes - warm - 2, finetune_epochs=2)
    # baselines: warm up, rank once, fine-tune
    return arm, dict(warmup_epochs=passes // 2, finetune_epochs=passes - passes // 2)


def train_dense(model, train, test, passes: int, lr: float) -> dict:
    runner = Runner(loader=train, loss_fn=torch.nn.functional.cross_entropy, progress=False)
    runner.run(model, Phase(name="train", epochs=passes, lr=lr))
    params = sum(p.numel() for p in model.parameters())
    return {"accuracy_after": evaluate(model, test), "ratio_achieved": 0.0, "params_after": params}


def run_arm(arm: str, ratio: float, seed: int, train, test, passes: int) -> dict:
    torch.manual_seed(seed)
    model = resnet20(in_channels=1)
    method, opts = arm_options(arm, passes)
    t0 = time.perf_counter()
    if method == "dense":
        out = train_dense(model, train, test, passes, 0.05)
        out.update(method="dense", seconds=time.perf_counter() - t0)
        return out
    known = {f.name for f in __import__("dataclasses").fields(attnprune.get_method(method).config_class)}
    opts = {k: v for k, v in opts.items() if k in known}
    res = attnprune.prune(model, train, ratio, method=method, seed=seed, progress=False, **opts)
    r = res.report
    return {
        "method": method,
        "options": opts,
        "accuracy_after": evaluate(res.model, test),
        "ratio_achieved": r.ratio_achieved,
        "params_before": r.params_before,
        "params_after": r.params_after,
        "macs_before": r.macs_before,
        "macs_after": r.macs_after,
        "seconds": time.perf_counter() - t0,
        "kept": {g.name: [g.kept, g.total] for g in r.groups},
        "method_report": {k: v for k, v in r.method_report.items() if k != "scores"},
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny smoke run (seconds)")
    ap.add_argument("--arms", nargs="+", default=None)
    ap.add_argument("--ratios", nargs="+", type=float, default=None)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--train-subset", type=int, default=8000)
    ap.add_argument("--passes", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--out-dir", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.train_subset, args.passes = 256, 4
        args.arms = args.arms or ["dense", "paam", "l1"]
        args.ratios = args.ratios or [0.5]
    arms = args.arms or ["dense", "paam", "paam-kq", "sbf", "abp", "aswl-structured", "l1", "taylor", "slim", "random"]
    ratios = args.ratios or [0.5]
    train, test = fashion_mnist_loaders(batch_size=128, train_subset=args.train_subset,
                                        test_subset=512 if args.quick else None, seed=0)
    setup = f"fmnist{args.train_subset // 1000}k-resnet20-{args.passes}passes" + ("-quick" if args.quick else "")
    rows = []
    available = set(attnprune.available_methods()) | {"dense"}
    for ratio in ratios:
        for seed in args.seeds:
            for arm in arms:
                method, _ = arm_options(arm, args.passes)
                if method not in available:
                    print(f"skip {arm}: method {method!r} is not available", flush=True)
                    continue
                if arm == "dense" and ratio != ratios[0]:
                    continue
                row = {"arm": arm, "ratio": ratio, "seed": seed, **run_arm(arm, ratio, seed, train, test, args.passes)}
                rows.append(row)
                print(f"{arm:16s} ratio {ratio:.2f} seed {seed}: top-1 {row['accuracy_after']:.2f}%  "
                      f"removed {100 * row['ratio_achieved']:.1f}%  {row['seconds']:.0f}s", flush=True)
    tag = "-r" + "_".join(f"{r:g}" for r in ratios) + "-s" + "_".join(map(str, args.seeds))
    if args.arms:
        tag += "-" + "_".join(arms)
    path = write(f"quality-{setup}{tag}", {"setup": {"train_subset": args.train_subset, "passes": args.passes,
                                                "test": len(test.dataset), "batch_size": 128}, "rows": rows},
                 args.out_dir)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
