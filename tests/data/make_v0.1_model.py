"""How tests/data/v0.1_model.pt and v0.1_expected.pt were made: attnprune 0.1's own serializer.

    git -C <repo> worktree add /tmp/v01 8054ffb
    PYTHONPATH=/tmp/v01 python tests/data/make_v0.1_model.py tests/data
    git -C <repo> worktree remove --force /tmp/v01

Not a test: tests/test_io.py checks that today's loader reproduces the outputs.
"""
import sys

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import attnprune
import attnprune.io


def toy():
    """The toy architecture (the same function is in tests/test_io.py)."""
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))

assert attnprune.__file__.startswith("/tmp/v01/"), attnprune.__file__
out = sys.argv[1]
torch.manual_seed(0)
model = toy()
x = torch.randn(32, 1, 8, 8)
y = torch.randint(0, 3, (32,))
loader = DataLoader(TensorDataset(x, y), batch_size=16)
result = attnprune.prune(model, loader, ratio=0.4, method="l1", warmup_epochs=1, finetune_epochs=1,
                         example_inputs=x[:1], progress=False, seed=0)
pruned = result.model.eval()
attnprune.io.save(pruned, f"{out}/v0.1_model.pt", base=toy, pruning_history=result.pruning_history,
                  example_inputs=x[:1])
probe = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
with torch.no_grad():
    expected = pruned(probe)
torch.save({"attnprune_version": attnprune.__version__, "commit": "8054ffb", "input": probe,
            "output": expected, "params": sum(p.numel() for p in pruned.parameters()),
            "dense_params": sum(p.numel() for p in toy().parameters())},
           f"{out}/v0.1_expected.pt")
print(result.report.summary() if hasattr(result.report, "summary") else result.report)
