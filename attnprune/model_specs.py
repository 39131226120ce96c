"""Model specs: what a user writes for a model (a name or ``module:function``) and how to call factories.

:func:`build_from_spec` builds a model from a spec; :func:`factory_kwargs` maps the
input channels and classes to each library's argument names (timm: ``in_chans``,
``num_classes``; torchvision: ``num_classes``). All names are re-exported by
:mod:`attnprune.models`.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from ._timm import check_timm_spec, is_timm_spec
from .models import MODELS, build_model, is_model_name

__all__ = ["resolve_factory", "call_factory", "factory_kwargs", "model_spec_kind", "build_from_spec"]


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


_LIBRARY_ARGUMENTS: dict[str, dict[str, str | None]] = {
    "timm": {"num_classes": "num_classes", "in_channels": "in_chans"},
    "torchvision": {"num_classes": "num_classes", "in_channels": None},
}
"""Argument names of the classes and input channels in each library's factories (None: not taken)."""


def factory_kwargs(factory: Callable[..., Any], num_classes: int, in_channels: int) -> dict:
    """The keyword arguments to build ``factory``'s model with ``num_classes`` and ``in_channels``.

    A factory of timm (``timm.models.resnet:resnet18``) gets ``num_classes`` and
    ``in_chans``; one of torchvision gets ``num_classes`` only (its models take
    RGB input). Any other factory gets the arguments its signature names among
    ``num_classes``, ``in_channels`` and ``in_chans``; one taking only ``**kwargs``
    gets ``num_classes`` alone (an unknown ``in_channels=`` would reach a layer
    that does not take it).
    """
    library = (getattr(factory, "__module__", "") or "").split(".")[0]
    names = _LIBRARY_ARGUMENTS.get(library)
    values = {"num_classes": num_classes, "in_channels": in_channels}
    if names is not None:
        return {names[k]: v for k, v in values.items() if names[k] is not None}
    values["in_chans"] = in_channels
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return {"num_classes": num_classes}
    named = {k: v for k, v in values.items() if k in params and params[k].kind is not params[k].VAR_KEYWORD}
    if "in_channels" in named:
        named.pop("in_chans", None)
    if not named and any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return {"num_classes": num_classes}
    return named


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
    if is_timm_spec(spec):
        check_timm_spec(spec)
        return "name"
    if ":" in spec:
        resolve_factory(spec)
        return "factory"
    if is_model_name(spec):
        return "name"
    raise ValueError(
        f"unknown model {spec!r}; valid choices: the package's models ({', '.join(MODELS)}), any "
        "torchvision classification model name (e.g. resnet18, mobilenet_v2, vgg11_bn; see "
        "attnprune.models.torchvision_model_names()), a timm model as timm:NAME (e.g. timm:resnet18), or a "
        "factory written module:function")


def build_from_spec(spec: str, num_classes: int, in_channels: int) -> tuple[nn.Module, dict]:
    """A fresh model from a name or ``module:function``, and the kwargs to record for reloading.

    A factory is called with :func:`factory_kwargs` (each library's argument names),
    and exactly those are recorded.

    Raises:
        ValueError: ``spec`` is neither (see :func:`model_spec_kind`).
        TypeError: Calling the factory failed, or it returned no ``nn.Module``.
    """
    kwargs = {"num_classes": num_classes, "in_channels": in_channels}
    if model_spec_kind(spec) == "name":
        return build_model(spec, **kwargs), kwargs
    factory = resolve_factory(spec)
    passed = factory_kwargs(factory, num_classes, in_channels)
    return call_factory(factory, passed, f"the model factory {spec!r}"), passed
