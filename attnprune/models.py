"""Model zoo: CIFAR-style ResNets plus any torchvision classifier by name.

:func:`build_from_spec` builds a model from what a user writes on the command
line: a name, or a factory written ``module:function`` (:func:`resolve_factory`).

The CIFAR ResNets follow He et al., "Deep Residual Learning for Image
Recognition" (CVPR 2016), section 4.2: a 3x3 stem convolution, three stages of
``n`` basic blocks each with 16, 32 and 64 channels (stride 2 at the start of
stages 2 and 3), global average pooling and a linear classifier, for a depth
of ``6n + 2`` weighted layers.

Shortcuts use the paper's *option B*: a 1x1 convolution with stride ``s``
followed by batch normalisation where the shape changes (the first block of
stages 2 and 3), identity everywhere else. Unlike option A (zero-padding),
option B gives every residual addition a parameterised branch, which is what
structured-pruning dependency graphs expect.

Example:
    >>> import torch
    >>> from attnprune.models import build_model
    >>> net = build_model("resnet20", num_classes=10, in_channels=1)
    >>> net(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ._ints import check_int

__all__ = [
    "VALID_DEPTHS",
    "BasicBlock",
    "CifarResNet",
    "cifar_resnet",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "MODELS",
    "build_model",
    "needs_rgb",
    "torchvision_model_names",
    "is_model_name",
    "resolve_factory",
    "call_factory",
    "model_spec_kind",
    "build_from_spec",
]

VALID_DEPTHS: tuple[int, ...] = (20, 32, 44, 56, 110)
"""Depths accepted by :func:`cifar_resnet` (each of the form ``6n + 2``)."""


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(
        in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False
    )


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection, then ReLU.

    Args:
        in_channels: Channels of the block's input.
        out_channels: Channels of the block's output.
        stride: Stride of the first convolution (and of the shortcut).

    Attributes:
        shortcut: ``None`` for an identity shortcut, otherwise an
            ``nn.Sequential`` of a strided 1x1 convolution and a batch norm
            (option B), used when the stride or channel count changes.
    """

    expansion = 1

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = _conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU()
        self.shortcut: nn.Sequential | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Applies the block."""
        identity = x if self.shortcut is None else self.shortcut(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + identity)


class CifarResNet(nn.Module):
    """A CIFAR-style ResNet of depth ``6n + 2`` (He et al. 2016, section 4.2).

    Args:
        blocks_per_stage: ``n``, the number of basic blocks in each of the
            three stages.
        num_classes: Size of the classifier output.
        in_channels: Channels of the input images (1 for grayscale).
        width: Channels of the first stage; the stages have ``width``,
            ``2 * width`` and ``4 * width`` channels (16, 32, 64 by default).

    Attributes:
        conv1, bn1, relu: The stem.
        layer1, layer2, layer3: The three stages (``nn.Sequential`` of
            :class:`BasicBlock`).
        avgpool: Global average pooling, so any input size of at least 4x4
            works (e.g. 28x28 Fashion-MNIST or 32x32 CIFAR).
        fc: The linear classifier.
    """

    def __init__(
        self,
        blocks_per_stage: int,
        num_classes: int = 10,
        in_channels: int = 3,
        width: int = 16,
    ) -> None:
        super().__init__()
        check_int("blocks_per_stage", blocks_per_stage, 1)
        check_int("num_classes", num_classes, 1)
        check_int("in_channels", in_channels, 1)
        check_int("width", width, 1)
        widths = (width, 2 * width, 4 * width)
        self.conv1 = _conv3x3(in_channels, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        channels = widths[0]
        stages = []
        for stage_index, stage_width in enumerate(widths):
            stride = 1 if stage_index == 0 else 2
            blocks = []
            for block_index in range(blocks_per_stage):
                blocks.append(
                    BasicBlock(channels, stage_width, stride if block_index == 0 else 1)
                )
                channels = stage_width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """Kaiming-normal convolutions (fan-out, ReLU gain), unit BN, zero biases.

        The linear head keeps PyTorch's default (Kaiming-uniform) init.
        """
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Maps images ``(B, in_channels, H, W)`` to logits ``(B, num_classes)``."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def cifar_resnet(
    depth: int, num_classes: int = 10, in_channels: int = 3, width: int = 16
) -> CifarResNet:
    """Builds a CIFAR-style ResNet with option-B shortcuts.

    Args:
        depth: Number of weighted layers, one of 20, 32, 44, 56, 110.
        num_classes: Size of the classifier output.
        in_channels: Channels of the input images (1 for grayscale).
        width: Channels of the first stage (16 in the paper); the later stages
            double it twice.

    Returns:
        A freshly initialised :class:`CifarResNet`.

    Raises:
        ValueError: If ``depth`` is not one of :data:`VALID_DEPTHS`, or another
            argument is an int below 1.
        TypeError: If ``num_classes``, ``in_channels`` or ``width`` is not an int.
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth not in VALID_DEPTHS:
        raise ValueError(
            f"depth must be one of {', '.join(map(str, VALID_DEPTHS))} (6n+2), got {depth!r}"
        )
    return CifarResNet((depth - 2) // 6, num_classes=num_classes, in_channels=in_channels,
                       width=width)


def resnet20(**kwargs) -> CifarResNet:
    """ResNet-20 (n=3, about 0.27M parameters); kwargs go to :func:`cifar_resnet`."""
    return cifar_resnet(20, **kwargs)


def resnet32(**kwargs) -> CifarResNet:
    """ResNet-32 (n=5, about 0.47M parameters); kwargs go to :func:`cifar_resnet`."""
    return cifar_resnet(32, **kwargs)


def resnet44(**kwargs) -> CifarResNet:
    """ResNet-44 (n=7, about 0.66M parameters); kwargs go to :func:`cifar_resnet`."""
    return cifar_resnet(44, **kwargs)


def resnet56(**kwargs) -> CifarResNet:
    """ResNet-56 (n=9, about 0.86M parameters); kwargs go to :func:`cifar_resnet`."""
    return cifar_resnet(56, **kwargs)


def resnet110(**kwargs) -> CifarResNet:
    """ResNet-110 (n=18, about 1.7M parameters); kwargs go to :func:`cifar_resnet`."""
    return cifar_resnet(110, **kwargs)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet44": resnet44,
    "resnet56": resnet56,
    "resnet110": resnet110,
}
"""The package's own models by name; each takes ``num_classes``,
``in_channels`` and ``width`` keyword arguments."""

# Extra constructor arguments some torchvision models need when built without
# pretrained weights (their auxiliary heads would otherwise change the output).
_TORCHVISION_EXTRA: dict[str, dict[str, object]] = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}


def torchvision_model_names() -> list[str]:
    """Returns the names of torchvision's image-classification models."""
    import torchvision.models

    return list(torchvision.models.list_models(module=torchvision.models))


def _unknown_name_error(name: object) -> ValueError:
    return ValueError(
        f"unknown model {name!r}; use one of the package's models "
        f"({', '.join(MODELS)}) or any torchvision classification model name "
        "(e.g. 'resnet18', 'mobilenet_v2', 'vgg11_bn'; see "
        "attnprune.models.torchvision_model_names())"
    )


def needs_rgb(name: str) -> bool:
    """Tells whether a model expects 3-channel input regardless of ``in_channels``.

    The package's own models honour ``in_channels``; torchvision models always
    take RGB input, so grayscale images must be expanded to 3 channels (e.g.
    ``x.expand(-1, 3, -1, -1)``) before being fed to them.

    Args:
        name: A model name accepted by :func:`build_model`.

    Returns:
        False for the package's models, True for torchvision models.

    Raises:
        ValueError: If ``name`` is not a known model name.
    """
    if isinstance(name, str) and name in MODELS:
        return False
    if isinstance(name, str) and name in torchvision_model_names():
        return True
    raise _unknown_name_error(name)


def build_model(name: str, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """Builds an untrained model by name.

    Args:
        name: One of :data:`MODELS` (``"resnet20"`` ... ``"resnet110"``) or any
            torchvision classification model name (``"resnet18"``,
            ``"mobilenet_v2"``, ...). Torchvision models are built with
            ``weights=None`` (random init); GoogLeNet and Inception-v3 without
            auxiliary heads.
        num_classes: Size of the classifier output.
        in_channels: Input channels. Applies only to the package's own models;
            torchvision models are returned unchanged and always take 3
            channels, so check :func:`needs_rgb` and expand grayscale input.

    Returns:
        The model, in training mode.

    Raises:
        ValueError: If ``name`` is unknown, or ``num_classes`` /
            ``in_channels`` is an int below 1.
        TypeError: If ``num_classes`` or ``in_channels`` is not an int.
    """
    check_int("num_classes", num_classes, 1)
    check_int("in_channels", in_channels, 1)
    if isinstance(name, str) and name in MODELS:
        return MODELS[name](num_classes=num_classes, in_channels=in_channels)
    if not isinstance(name, str) or name not in torchvision_model_names():
        raise _unknown_name_error(name)
    import torchvision.models

    extra = _TORCHVISION_EXTRA.get(name, {})
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **extra)


def is_model_name(name: object) -> bool:
    """Whether :func:`build_model` knows ``name`` (the package's models or torchvision's)."""
    return isinstance(name, str) and (name in MODELS or name in torchvision_model_names())


def resolve_factory(spec: str) -> Callable[..., nn.Module]:
    """Import a model factory written as ``"package.module:function"``.

    Args:
        spec: ``"module:attribute"``; the attribute may be dotted (``"pkg.mod:Class.build"``).

    Returns:
        The callable.

    Raises:
        ValueError: ``spec`` is not of the form ``module:function``, the module
            cannot be imported, or the attribute is missing or not callable.
    """
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise ValueError(f"a model factory must be written 'module:function', got {spec!r}")
    mod_name, attr = spec.split(":")
    try:
        obj: Any = importlib.import_module(mod_name)
    except Exception as exc:  # noqa: BLE001 - report any import failure the same way
        raise ValueError(f"cannot import module {mod_name!r} of the model factory {spec!r}: "
                         f"{type(exc).__name__}: {exc}") from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"module {mod_name!r} has no attribute {attr!r} (model factory {spec!r})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"the model factory {spec!r} is a {type(obj).__name__}, not a callable")
    return obj


def _accepted(factory: Callable[..., Any], kwargs: dict) -> dict:
    """The entries of ``kwargs`` that ``factory``'s signature accepts (all for ``**kwargs``)."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return dict(kwargs)
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return dict(kwargs)
    return {k: v for k, v in kwargs.items() if k in params}


def call_factory(factory: Callable[..., Any], kwargs: dict, what: str = "the model factory") -> nn.Module:
    """Call ``factory`` with the entries of ``kwargs`` its signature accepts.

    Raises:
        TypeError: The factory does not return an ``nn.Module`` (``what`` names it).
    """
    model = factory(**_accepted(factory, kwargs))
    if not isinstance(model, nn.Module):
        raise TypeError(f"{what} must return a torch.nn.Module, got {type(model).__name__}")
    return model


def model_spec_kind(spec: str) -> str:
    """``"name"`` for a model name, ``"factory"`` for an importable ``module:function``.

    Raises:
        ValueError: Neither; the message lists the valid choices.
    """
    if ":" in spec:
        resolve_factory(spec)
        return "factory"
    if is_model_name(spec):
        return "name"
    raise ValueError(
        f"unknown model {spec!r}; valid choices: the package's models ({', '.join(MODELS)}), any "
        "torchvision classification model name (e.g. resnet18, mobilenet_v2, vgg11_bn; see "
        "attnprune.models.torchvision_model_names()), or a factory written module:function")


def build_from_spec(spec: str, num_classes: int, in_channels: int) -> tuple[nn.Module, dict]:
    """A fresh model from a name or ``module:function``, and the kwargs to record for reloading.

    A factory is called with the ``num_classes`` and ``in_channels`` its signature
    accepts, and only those are recorded.

    Raises:
        ValueError: ``spec`` is neither (see :func:`model_spec_kind`).
        TypeError: Calling the factory failed, or it returned no ``nn.Module``.
    """
    kwargs = {"num_classes": num_classes, "in_channels": in_channels}
    if model_spec_kind(spec) == "name":
        return build_model(spec, **kwargs), kwargs
    factory = resolve_factory(spec)
    return call_factory(factory, kwargs, f"the model factory {spec!r}"), _accepted(factory, kwargs)
