"""Training overhead: step time and peak memory of each method ÷ plain training.

CIFAR-style ResNet-56, batch 128 (3x32x32 synthetic data: only speed is measured).
Every arm runs in a fresh subprocess (so its peak RSS is its own): a few warm-up
steps, then ``--steps`` timed steps of the phase named in the arm, through the same
:class:`attnprune.Runner` that ``prune()`` uses. Plain training is measured first and
last; ratios use the mean of the two, and their difference is reported as the noise.

    python benchmarks/overhead.py             # all arms, 20 steps each
    python benchmarks/overhead.py --quick     # 2 arms, 2 steps, batch 16
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write  # noqa: E402

#: arm -> (method or None, method options, phase name)
ARMS = {
    "plain": (None, {}, "train"),
    "paam-vanilla AN": ("paam", {"variant": "vanilla"}, "an"),
    "paam-vanilla CNN": ("paam", {"variant": "vanilla"}, "cnn"),
    "paam-kq AN": ("paam", {"variant": "kq"}, "an"),
    "paam-kq CNN": ("paam", {"variant": "kq"}, "cnn"),
    "abp": ("abp", {}, "joint"),
    "aswl-structured": ("aswl-structured", {}, "joint"),
    "slim warm-up": ("slim", {}, "warmup"),
}


def child(arm: str, steps: int, batch: int, threads: int | None) -> dict:
    if threads:
        torch.set_num_threads(threads)
    from torch.utils.data import DataLoader, TensorDataset

    import attnprune
    from attnprune.methods.base import Budget, Context, Phase
    from attnprune.models import resnet56
    from attnprune.train.runner import Runner

    torch.manual_seed(0)
    method_name, opts, phase_name = ARMS[arm]
    x = torch.randn(batch * 4, 3, 32, 32)
    y = torch.randint(0, 10, (batch * 4,))
    loader = DataLoader(TensorDataset(x, y), batch_size=batch)
    model = resnet56(in_channels=3)
    loss_fn = torch.nn.functional.cross_entropy
    method = None
    if method_name is None:
        phase = Phase(name="train", epochs=1)
    else:
        inst = attnprune.instrument(model, x[:1])
        method = attnprune.get_method(method_name)(**opts)
        method.attach(inst, Budget(0.5), Context(batches=lambda: iter(loader), loss_fn=loss_fn,
                                                 steps_per_epoch=steps))
        phase = next(p for p in method.phases() if p.name == phase_name)
        phase.epochs = 1

    def run(n):
        runner = Runner(loader=_cycle(loader, n), loss_fn=loss_fn, progress=False)
        t0 = time.perf_counter()
        runner.run(model, phase, method)
        return (time.perf_counter() - t0) / n

    run(3)  # warm-up
    per_step = min(run(steps) for _ in range(2))
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"arm": arm, "step_s": per_step, "peak_rss_mb": rss_kb / 1024}


class _cycle:
    """An iterable that yields ``n`` batches from ``loader``, round and round."""

    def __init__(self, loader, n):
        self.loader, self.n = loader, n

    def __len__(self):
        return self.n

    def __iter__(self):
        i = 0
        while True:
            for b in self.loader:
                if i >= self.n:
                    return
                yield b
                i += 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--arms", nargs="+", default=None, help=f"from {list(ARMS)}")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads per arm")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out-dir", default=None)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.steps, args.batch, args.threads)))
        return 0
    if args.quick:
        args.arms, args.steps, args.batch = args.arms or ["paam-kq CNN"], 2, 16
    import attnprune

    arms = [a for a in (args.arms or list(ARMS)) if a != "plain"]
    arms = [a for a in arms if ARMS[a][0] is None or ARMS[a][0] in attnprune.available_methods()]
    rows = []
    for arm in ["plain"] + arms + ["plain"]:
        cmd = [sys.executable, __file__, "--child", arm, "--steps", str(args.steps), "--batch", str(args.batch)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"{arm:18s} {1000 * row['step_s']:8.1f} ms/step  peak RSS {row['peak_rss_mb']:.0f} MB", flush=True)
    plain = [r for r in rows if r["arm"] == "plain"]
    base_t = sum(r["step_s"] for r in plain) / 2
    base_m = sum(r["peak_rss_mb"] for r in plain) / 2
    noise = abs(plain[0]["step_s"] - plain[1]["step_s"]) / base_t
    for r in rows:
        r["step_ratio"] = r["step_s"] / base_t
        r["memory_ratio"] = r["peak_rss_mb"] / base_m
    print(f"plain-vs-plain step-time difference (noise): {100 * noise:.1f}%")
    path = write(f"overhead-resnet56-b{args.batch}" + ("-quick" if args.quick else ""),
                 {"rows": rows, "plain_noise": noise, "steps": args.steps, "batch": args.batch,
                  "threads": args.threads}, args.out_dir)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
