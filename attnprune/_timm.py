"""timm models by name (``"timm:resnet18"``): an optional dependency.

``pip install attnprune[timm]`` installs it. Models are built with
``pretrained=False`` (nothing is downloaded; load trained weights with
``attnprune prune --weights FILE``), with timm's own argument names for the
input channels and classes (``in_chans``, ``num_classes``).
"""

from __future__ import annotations

from torch import nn

__all__ = ["TIMM_PREFIX", "is_timm_spec", "timm_available", "is_timm_model", "build_timm_model", "TIMM_HINT"]

TIMM_PREFIX = "timm:"
"""Model names starting with this prefix are timm models: ``timm:resnet18``."""

TIMM_HINT = "install it with: pip install 'attnprune[timm]'"


def is_timm_spec(spec: object) -> bool:
    """Whether ``spec`` is written as a timm model name (``"timm:NAME"``), installed or not."""
    return isinstance(spec, str) and spec.startswith(TIMM_PREFIX) and len(spec) > len(TIMM_PREFIX)


def timm_available() -> bool:
    """Whether timm can be imported."""
    try:
        import timm  # noqa: F401
    except ImportError:
        return False
    return True


def is_timm_model(spec: object) -> bool:
    """Whether ``spec`` is ``"timm:NAME"`` with timm installed and knowing ``NAME``."""
    if not is_timm_spec(spec) or not timm_available():
        return False
    import timm

    return bool(timm.is_model(spec[len(TIMM_PREFIX):]))


def check_timm_spec(spec: str) -> None:
    """Raise ``ValueError`` when ``spec`` is a timm name that cannot be built (timm absent, unknown name)."""
    if not timm_available():
        raise ValueError(f"model {spec!r} needs timm, which is not installed; {TIMM_HINT}")
    if not is_timm_model(spec):
        import timm

        name = spec[len(TIMM_PREFIX):]
        close = timm.list_models(f"*{name[:6]}*")[:8] if name else []
        hint = f"; similar names: {', '.join(close)}" if close else ""
        raise ValueError(f"unknown timm model {name!r} (see timm.list_models()){hint}")


def build_timm_model(spec: str, num_classes: int, in_channels: int) -> nn.Module:
    """A randomly initialised timm model: ``timm.create_model(NAME, pretrained=False, ...)``."""
    check_timm_spec(spec)
    import timm

    return timm.create_model(spec[len(TIMM_PREFIX):], pretrained=False, num_classes=num_classes,
                             in_chans=in_channels)
