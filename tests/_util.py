"""Shared test helpers: toy models with tricky topologies, random masks, checks."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
from fvcore.nn import FlopCountAnalysis, parameter_count
from torch.utils.data import DataLoader, TensorDataset


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics and affine parameters: default BN maps 0 to 0 and hides a misplaced gate."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            if m.affine:
                m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)
    return model


def random_masks(groups, keep=0.5, seed=0):
    """Valid random masks closing about ``1 - keep`` of each group."""
    g = torch.Generator().manual_seed(seed)
    masks = []
    for grp in groups:
        unit = grp.n_channels // grp.ch_groups
        pattern = torch.rand(unit, generator=g) < keep
        pattern[torch.randint(unit, (1,), generator=g)] = True
        masks.append(pattern.repeat(grp.ch_groups))
    return masks


def synthetic_loader(shape, n=64, batch=16, classes=10, seed=0, shuffle=False):
    """A loader of ``n`` random inputs of ``shape`` with random labels.

    ``shuffle=True`` shuffles with the loader's own generator (which the runner
    reseeds per epoch), as a user's shuffling loader does.
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    if shuffle:
        return DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=True, generator=torch.Generator())
    return DataLoader(TensorDataset(x, y), batch_size=batch)


def fake_latency_build(monkeypatch, timer):
    """Make prune()'s latency models use ``timer`` (no ORT timing, no cache).

    Returns the list of ``(latency_model, build_kwargs)`` that prune() built, in order.
    """
    from attnprune.deploy.latency_model import build_latency_model
    from attnprune.train import latency_target

    built = []

    def build(inst, **kwargs):
        lm = build_latency_model(inst, **{**kwargs, "cache_dir": False, "timer": timer})
        built.append((lm, kwargs))
        return lm
    monkeypatch.setattr(latency_target, "build_latency_model", build)
    return built


def snapshot(m: nn.Module):
    """The model's state and every submodule's train/eval flag, to compare later."""
    return copy.deepcopy(m.state_dict()), {n: mod.training for n, mod in m.named_modules()}


def assert_unchanged(m: nn.Module, snap) -> None:
    """Same state (bit for bit), same modes, no hooks: the user's model was left alone."""
    state, modes = snap
    now = m.state_dict()
    assert now.keys() == state.keys()
    assert all(torch.equal(v, now[k]) for k, v in state.items())
    assert {n: mod.training for n, mod in m.named_modules()} == modes
    assert count_hooks(m) == 0


def count_hooks(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()
    )


def fvcore_counts(model: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    training = {m: m.training for m in model.modules()}
    model.eval()
    macs = (
        FlopCountAnalysis(model, x[:1])
        .unsupported_ops_warnings(False)
        .uncalled_modules_warnings(False)
        .total()
    )
    for m, t in training.items():
        m.training = t
    return parameter_count(model)[""], int(macs)


def conv_bn(cin, cout, k=3, stride=1, groups=1):
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
    )


class ResidualNet(nn.Module):
    """Identity and 1x1-conv downsample shortcuts."""

    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 16)
        self.a = nn.Sequential(conv_bn(16, 16), nn.Conv2d(16, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16))
        self.b = nn.Sequential(conv_bn(16, 32, stride=2), nn.Conv2d(32, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32))
        self.down = nn.Sequential(nn.Conv2d(16, 32, 1, 2, bias=False), nn.BatchNorm2d(32))
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.a(x))
        x = torch.relu(self.down(x) + self.b(x))
        return self.head(x.mean((2, 3)))


class ConcatNet(nn.Module):
    """Two branches concatenated, then a norm spanning both groups (DenseNet-like)."""

    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 12)
        self.b1 = nn.Conv2d(12, 8, 3, 1, 1)
        self.b2 = nn.Sequential(nn.Conv2d(12, 10, 1), nn.BatchNorm2d(10), nn.ReLU())
        self.norm = nn.BatchNorm2d(12 + 8 + 10)
        self.conv = nn.Conv2d(30, 16, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        x = self.stem(x)
        x = torch.cat([x, self.b1(x), self.b2(x)], 1)
        x = torch.relu(self.norm(x))
        x = torch.relu(self.bn(self.conv(x)))
        return self.head(x.mean((2, 3)))


class DepthwiseSeparableNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(conv_bn(3, 16), conv_bn(16, 16, groups=16), conv_bn(16, 24, k=1),
                                  conv_bn(24, 24, groups=24), conv_bn(24, 32, k=1))
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        return self.head(self.body(x).mean((2, 3)))


class GroupedConvNet(nn.Module):
    """A grouped (non-depthwise) conv couples a repeated keep pattern."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(conv_bn(3, 32), conv_bn(32, 32, groups=4), conv_bn(32, 16, k=1))
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        return self.head(self.body(x).mean((2, 3)))


class SqueezeExcite(nn.Module):
    def __init__(self, c, r=4):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(c, c // r, 1)
        self.fc2 = nn.Conv2d(c // r, c, 1)

    def forward(self, x):
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(self.pool(x)))))
        return x * s


class SENet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 16)
        self.mid = conv_bn(16, 32)
        self.se = SqueezeExcite(32)
        self.out = conv_bn(32, 16)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = self.se(self.mid(self.stem(x)))
        return self.head(self.out(x).mean((2, 3)))


class BiasNoNormNet(nn.Module):
    """Convs with bias and no norm: the gate sits on the conv output."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 24, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(24, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 32), nn.ReLU(),
            nn.Linear(32, 10),
        )
        with torch.no_grad():
            for m in self.body:
                if hasattr(m, "bias") and m.bias is not None:
                    m.bias.uniform_(-0.5, 0.5)

    def forward(self, x):
        return self.body(x)


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 64), nn.ReLU(), nn.Linear(64, 48),
                                 nn.BatchNorm1d(48), nn.ReLU(), nn.Linear(48, 10))

    def forward(self, x):
        return self.net(x)


TOY_MODELS = {
    "residual": ResidualNet,
    "concat": ConcatNet,
    "depthwise_separable": DepthwiseSeparableNet,
    "grouped_conv": GroupedConvNet,
    "squeeze_excite": SENet,
    "bias_no_norm": BiasNoNormNet,
    "mlp": MLP,
}


class Interrupting:
    """A cross-entropy loss that raises ``KeyboardInterrupt`` at its ``at``-th call (Ctrl-C mid-run)."""

    def __init__(self, at: int):
        self.at, self.calls = at, 0

    def __call__(self, out, y):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return torch.nn.functional.cross_entropy(out, y)


def image_folder_tree(root, classes: dict, per_class: int, size: tuple[int, int]):
    """An ImageFolder tree of random RGB PNGs: ``classes`` maps each split to its class names.

    ``size`` is (height, width); the pixels are seeded, so the tree is the same every run.
    """
    from PIL import Image

    gen = torch.Generator().manual_seed(0)
    for split, names in classes.items():
        for c in names:
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                pixels = torch.randint(0, 255, (*size, 3), generator=gen, dtype=torch.uint8).numpy()
                Image.fromarray(pixels).save(root / split / c / f"{i}.png")
    return root
