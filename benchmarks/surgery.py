"""Surgery time: instrument + finalize on torchvision ResNets of growing depth.

Measures, per model, the wall time of ``attnprune.core.instrument`` (dependency graph,
groups, gates, cost model) and of ``finalize`` (removal through torch-pruning plus
the gated == pruned check), with random masks closing half of each group, and fits
time against the number of conv/linear layers.

    python benchmarks/surgery.py            # resnet18/50/101/152 at 224x224
    python benchmarks/surgery.py --quick    # resnet18 at 64x64
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent))
import attnprune  # noqa: E402

from _common import write  # noqa: E402


def layers(model) -> int:
    return sum(isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) for m in model.modules())


def measure(name: str, size: int, repeats: int) -> dict:
    best_inst = best_fin = float("inf")
    for r in range(repeats):
        torch.manual_seed(r)
        model = getattr(torchvision.models, name)().eval()
        x = torch.randn(1, 3, size, size)
        t0 = time.perf_counter()
        inst = attnprune.instrument(model, x)
        t1 = time.perf_counter()
        g = torch.Generator().manual_seed(r)
        masks = []
        for grp in inst.groups:
            m = torch.rand(grp.n_channels // grp.ch_groups, generator=g) < 0.5
            m[0] = True
            masks.append(m.repeat(grp.ch_groups))
        inst.set_masks(masks)
        t2 = time.perf_counter()
        inst.finalize()
        t3 = time.perf_counter()
        best_inst, best_fin = min(best_inst, t1 - t0), min(best_fin, t3 - t2)
    return {"model": name, "layers": layers(getattr(torchvision.models, name)()), "groups": len(inst.groups),
            "instrument_s": best_inst, "finalize_s": best_fin, "total_s": best_inst + best_fin}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--models", nargs="+", default=["resnet18", "resnet50", "resnet101", "resnet152"])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=2, help="best of N")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--out-dir", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.models, args.size, args.repeats = ["resnet18"], 64, 1
    rows = []
    for name in args.models:
        row = measure(name, args.size, args.repeats)
        rows.append(row)
        print(f"{name:10s} layers {row['layers']:3d} groups {row['groups']:3d}  instrument {row['instrument_s']:.2f}s"
              f"  finalize {row['finalize_s']:.2f}s  total {row['total_s']:.2f}s", flush=True)
    fit = None
    if len(rows) > 1:
        xs = torch.tensor([r["layers"] for r in rows], dtype=torch.float64)
        ys = torch.tensor([r["total_s"] for r in rows], dtype=torch.float64)
        slope = float(((xs - xs.mean()) * (ys - ys.mean())).sum() / ((xs - xs.mean()) ** 2).sum())
        icpt = float(ys.mean() - slope * xs.mean())
        pred = icpt + slope * xs
        r2 = float(1 - ((ys - pred) ** 2).sum() / ((ys - ys.mean()) ** 2).sum())
        fit = {"seconds_per_layer": slope, "intercept_s": icpt, "r2": r2}
        print(f"linear fit: {slope * 1000:.1f} ms/layer + {icpt:.2f}s, R^2 {r2:.3f}")
    path = write(f"surgery-{args.size}px" + ("-quick" if args.quick else ""), {"rows": rows, "fit": fit}, args.out_dir)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
