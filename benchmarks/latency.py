"""Latency of pruned vs dense models in ONNX Runtime (CPU), as speedup ÷ MACs ratio.

Each model is pruned to ``ratio`` of its parameters with and without ``round_to=8``
(channels ranked by L1 norm: any ranking will do for latency), exported to ONNX and
timed against its dense original in interleaved rounds
(:func:`attnprune.deploy.bench.benchmark`). Writes ``results/latency-<setup>.json`` and a
Markdown table beside it.

    python benchmarks/latency.py            # resnet18/50 at 224x224 batch 1, CIFAR ResNet-56 batch 32
    python benchmarks/latency.py --quick    # CIFAR ResNet-20, batch 1, 3 rounds
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent))
import attnprune  # noqa: E402
from attnprune.deploy.bench import benchmark  # noqa: E402
from attnprune.methods import Budget, get_method  # noqa: E402
from attnprune.models import resnet20, resnet56  # noqa: E402

from _common import write  # noqa: E402

SETUPS = {
    "resnet18": (lambda: torchvision.models.resnet18(), (1, 3, 224, 224), 1),
    "resnet50": (lambda: torchvision.models.resnet50(), (1, 3, 224, 224), 1),
    "cifar-resnet56": (lambda: resnet56(in_channels=3), (1, 3, 32, 32), 32),
    "cifar-resnet20": (lambda: resnet20(in_channels=3), (1, 3, 32, 32), 1),
}


def pruned_copy(build, x, ratio: float, round_to: int | None):
    torch.manual_seed(0)
    model = build().eval()
    inst = attnprune.instrument(model, x)
    method = get_method("l1")()
    method.attach(inst, Budget(ratio, "params", round_to))
    sel = method.select()
    inst.set_masks(sel.masks)
    return inst.finalize(), sel.ratio


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--models", nargs="+", default=["resnet18", "resnet50", "cifar-resnet56"], choices=list(SETUPS))
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--round-to", type=int, default=8, help="the rounded variant's round_to (default 8)")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out-dir", default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.models, args.rounds = ["cifar-resnet20"], 3
    results = {}
    md = []
    for name in args.models:
        build, shape, batch = SETUPS[name]
        x = torch.randn(*shape)
        torch.manual_seed(0)
        dense = build().eval()
        models = {"dense": dense}
        achieved = {}
        for rt in (None, args.round_to):
            key = f"pruned-{args.ratio:g}" + (f"-round{rt}" if rt else "")
            models[key], achieved[key] = pruned_copy(build, x, args.ratio, rt)
        res = benchmark(models, x, batch_sizes=(batch,), threads=args.threads, rounds=args.rounds)
        results[name] = {"result": res.to_dict(), "ratio_achieved": achieved, "batch": batch, "input": list(shape)}
        md.append(f"### {name} (batch {batch})\n\n" + res.to_markdown())
        for p in res.to_dict()["pairs"]:
            print(f"{name:15s} {p['model']:20s} batch {p['batch_size']:3d}  MACs ratio {p['macs_ratio']:.2f}  "
                  f"speedup {p['speedup']:.2f} ({p['speedup_p10']:.2f}-{p['speedup_p90']:.2f})  "
                  f"efficiency {p['efficiency']:.2f}", flush=True)
    setup = "latency-" + "_".join(args.models) + (f"-round{args.round_to}" if args.round_to != 8 else "")
    setup += "-quick" if args.quick else ""
    path = write(setup, {"models": results, "ratio": args.ratio, "rounds": args.rounds, "round_to": args.round_to},
                 args.out_dir)
    path.with_suffix(".md").write_text("\n\n".join(md) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
