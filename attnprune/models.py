"""Model zoo: CIFAR-style ResNets plus any torchvision or timm classifier by name.

:func:`build_from_spec` builds a model from what a user writes on the command
line: a name (``resnet20``, ``resnet18``, ``timm:resnet18``), or a factory written
``module:function`` (:func:`resolve_factory`). The input channels and classes are
passed under each library's argument names (:func:`factory_kwargs`): timm's
``in_chans`` and ``num_classes``, torchvision's ``num_classes`` (torchvision
models take RGB input: :func:`needs_rgb`). timm is optional
(``pip install attnprune[timm]``); its models are built with ``pretrained=False``.

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

from collections.abc import Callable

import torch
from torch import nn

from ._ints import check_int
from ._timm import TIMM_PREFIX, build_timm_model, is_timm_model, is_timm_spec

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
    "factory_kwargs",
    "is_factory_spec",
    "first_conv_channels",
    "TIMM_PREFIX",
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


def resnet20(num_classes: int = 10, in_channels: int = 3, width: int = 16) -> CifarResNet:
    """ResNet-20 (n=3, about 0.27M parameters); see :func:`cifar_resnet`."""
    return cifar_resnet(20, num_classes=num_classes, in_channels=in_channels, width=width)


def resnet32(num_classes: int = 10, in_channels: int = 3, width: int = 16) -> CifarResNet:
    """ResNet-32 (n=5, about 0.47M parameters); see :func:`cifar_resnet`."""
    return cifar_resnet(32, num_classes=num_classes, in_channels=in_channels, width=width)


def resnet44(num_classes: int = 10, in_channels: int = 3, width: int = 16) -> CifarResNet:
    """ResNet-44 (n=7, about 0.66M parameters); see :func:`cifar_resnet`."""
    return cifar_resnet(44, num_classes=num_classes, in_channels=in_channels, width=width)


def resnet56(num_classes: int = 10, in_channels: int = 3, width: int = 16) -> CifarResNet:
    """ResNet-56 (n=9, about 0.86M parameters); see :func:`cifar_resnet`."""
    return cifar_resnet(56, num_classes=num_classes, in_channels=in_channels, width=width)


def resnet110(num_classes: int = 10, in_channels: int = 3, width: int = 16) -> CifarResNet:
    """ResNet-110 (n=18, about 1.7M parameters); see :func:`cifar_resnet`."""
    return cifar_resnet(110, num_classes=num_classes, in_channels=in_channels, width=width)


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
        False for the package's models and timm's (which take ``in_chans``), True
        for torchvision models.

    Raises:
        ValueError: If ``name`` is not a known model name.
    """
    if isinstance(name, str) and (name in MODELS or is_timm_model(name)):
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
            auxiliary heads. ``"timm:NAME"`` builds timm's model ``NAME`` with
            ``pretrained=False`` (timm must be installed).
        num_classes: Size of the classifier output.
        in_channels: Input channels. Applies to the package's own models and to
            timm's (as ``in_chans``); torchvision models always take 3 channels,
            so check :func:`needs_rgb` and expand grayscale input.

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
    if is_timm_spec(name):
        return build_timm_model(name, num_classes, in_channels)
    if not isinstance(name, str) or name not in torchvision_model_names():
        raise _unknown_name_error(name)
    import torchvision.models

    extra = _TORCHVISION_EXTRA.get(name, {})
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **extra)


def is_model_name(name: object) -> bool:
    """Whether ``name`` names a model of :func:`build_model`: the package's, torchvision's, or ``timm:NAME``.

    Any ``timm:NAME`` counts as a name (not a factory to import); building it says
    when timm is not installed or does not know ``NAME``.
    """
    return isinstance(name, str) and (name in MODELS or is_timm_spec(name) or name in torchvision_model_names())


def first_conv_channels(model: nn.Module) -> int | None:
    """The input channels of the first convolution of ``model`` (None before any conv/linear)."""
    for m in model.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            return int(m.in_channels)
        if isinstance(m, nn.Linear):
            return None
    return None


def is_factory_spec(spec: object) -> bool:
    """Whether ``spec`` is a ``module:function`` factory (``timm:NAME`` is a name, not a factory)."""
    return isinstance(spec, str) and ":" in spec and not is_timm_spec(spec)


# Model specs (names and module:function factories) live in their own module; re-exported here.
from .model_specs import (  # noqa: E402
    build_from_spec,
    call_factory,
    factory_kwargs,
    model_spec_kind,
    resolve_factory,
)
