"""The main job: prune a CIFAR-style ResNet-20 on Fashion-MNIST with PAAM.

Run with ``python -m attnprune.demo`` (``bash scripts/run.sh`` sets everything up
first). A small CPU schedule of a few minutes: warm-up, one AN/CNN cycle, fine-tuning,
on a subset of the training images; top-1 on the full 10k test set.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import OrderedDict

import torch

import attnprune
from attnprune.data import fashion_mnist_loaders
from attnprune.models import resnet20

__all__ = ["main"]


def stage_table(report) -> str:
    """Kept/total channels per stage (groups named ``layerK...``; the stem is ``conv1``)."""
    stages: OrderedDict[str, list[int]] = OrderedDict()
    for g in report.groups:
        stage = g.name.split(".")[0]
        kept, total = stages.setdefault(stage, [0, 0])
        stages[stage] = [kept + g.kept, total + g.total]
    return "\n".join(f"  {name:8s} {k:4d} / {t:4d} channels kept" for name, (k, t) in stages.items())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m attnprune.demo", description=__doc__)
    ap.add_argument("--method", default="paam", choices=attnprune.available_methods())
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--train-subset", type=int, default=12000)
    ap.add_argument("--test-subset", type=int, default=None)
    ap.add_argument("--warmup-epochs", type=int, default=2)
    ap.add_argument("--finetune-epochs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the report here")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    train, test = fashion_mnist_loaders(batch_size=128, train_subset=args.train_subset,
                                        test_subset=args.test_subset, seed=args.seed)
    model = resnet20(num_classes=10, in_channels=1)
    print(f"attnprune {attnprune.__version__}: {args.method} on ResNet-20 / Fashion-MNIST "
          f"({len(train.dataset)} training images, {len(test.dataset)} test images), ratio {args.ratio}")
    # the model starts untrained, so the warm-up runs (trained=True skips it for a trained model)
    result = attnprune.prune(model, train, args.ratio, method=args.method, eval_loader=test, seed=args.seed,
                             trained=False, progress=not args.no_progress, warmup_epochs=args.warmup_epochs,
                             finetune_epochs=args.finetune_epochs)
    r = result.report
    print()
    print(r.summary())
    print("per stage:")
    print(stage_table(r))
    print("history:")
    for h in r.history:
        acc = "" if h.accuracy is None else f"  top-1 {h.accuracy:.2f}%"
        print(f"  {h.phase:9s} epoch {h.epoch}  loss {h.loss:.3f}{acc}  ({h.seconds:.0f}s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r.to_dict(), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
