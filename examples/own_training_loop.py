"""Prune with your own training loop: instrument + a method object + finalize.

For people whose training does not fit ``attnprune.prune()`` (mixed precision,
their own schedulers, detection losses ...). The method's step hook is three calls
around the usual step:

    method.before_step(phase, step)        # e.g. refresh binary masks
    loss = task_loss + (method.regularizer(phase) or 0)
    ...backward, optimizer step...
    method.after_step(phase, step)         # e.g. steer PAAM's lambda

Run:  python examples/own_training_loop.py --steps 20
      python examples/own_training_loop.py --data fashion-mnist --steps 200
"""

from __future__ import annotations

import argparse

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

import attnprune
from attnprune.methods import Budget, Context, get_method
from attnprune.models import resnet20


def make_loader(kind: str, batch_size: int):
    if kind == "fashion-mnist":
        from attnprune.data import fashion_mnist_loaders

        return fashion_mnist_loaders(batch_size=batch_size, train_subset=4096, test_subset=1000)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(256, 1, 28, 28, generator=g), torch.randint(0, 10, (256,), generator=g)
    train = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True, generator=g)
    return train, DataLoader(TensorDataset(x[:64], y[:64]), batch_size=batch_size)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", choices=["synthetic", "fashion-mnist"], default="synthetic")
    ap.add_argument("--method", default="paam", choices=attnprune.available_methods())
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--steps", type=int, default=20, help="training steps per phase")
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args(argv)
    torch.manual_seed(0)

    train, test = make_loader(args.data, args.batch_size)
    model = resnet20(in_channels=1)
    loss_fn = nn.CrossEntropyLoss()
    example = next(iter(train))[0][:1]

    def batches():
        yield from train

    inst = attnprune.instrument(model, example)
    method = get_method(args.method)(steps_per_epoch=args.steps)
    method.attach(inst, Budget(args.ratio, "params"), Context(batches=batches, loss_fn=loss_fn, seed=0,
                                                               steps_per_epoch=args.steps))
    try:
        for phase in method.phases():
            method.start_phase(phase)
            opts = []  # your optimisers and schedulers; one per side that trains
            if phase.train_model:
                opts.append(torch.optim.SGD(model.parameters(), lr=phase.lr, momentum=0.9, weight_decay=5e-4))
            if phase.train_method and method.parameters():
                opts.append(torch.optim.Adam(method.parameters(), lr=phase.method_lr))
            total_steps = args.steps * max(phase.epochs, 1)
            scheds = [torch.optim.lr_scheduler.OneCycleLR(o, max_lr=o.param_groups[0]["lr"], total_steps=total_steps)
                      for o in opts]
            model.train()
            if phase.bn_eval:  # methods that freeze BatchNorm statistics in a phase say so
                for m in model.modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.eval()
            step = 0
            for _ in range(phase.epochs):
                for x, y in train:
                    if step >= args.steps * phase.epochs:
                        break
                    method.before_step(phase, step)
                    with torch.autocast("cpu", dtype=torch.bfloat16):  # mixed precision
                        loss = loss_fn(model(x), y)
                    reg = method.regularizer(phase)
                    total = loss.float() + (reg if reg is not None else 0.0)
                    for o in opts:
                        o.zero_grad(set_to_none=True)
                    total.backward()
                    for o, s in zip(opts, scheds):
                        o.step()
                        s.step()
                    model.zero_grad(set_to_none=True)  # the frozen side's gradients are unused
                    method.after_step(phase, step)
                    step += 1
            print(f"phase {phase.name}: {step} steps, last loss {float(loss.detach()):.3f}")
        selection = method.select()
        inst.set_masks(selection.masks)
        method.commit(selection)  # success only: learned state into the weights (e.g. aswl-structured)
        method.detach()
        pruned = inst.finalize()  # checks gated == pruned on the example input
    except BaseException:
        method.detach()
        inst.remove()
        raise
    acc = attnprune.evaluate(pruned, test)
    print(f"removed {100 * selection.ratio:.1f}% of params ({selection.params:,} left); top-1 {acc:.1f}%")
    print("kept channels:", [int(m.sum()) for m in selection.masks])


if __name__ == "__main__":
    main()
