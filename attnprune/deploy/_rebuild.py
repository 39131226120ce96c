"""Rebuilding a pruned model from its recipe: the base architecture plus the pruning history.

The machinery behind :mod:`attnprune.deploy.serialize`: build the unpruned base
(a name, ``module:function``, a factory or an instance), replay torch-pruning's
history on it, and compare its shapes with the saved weights. Like the
serialisation itself, :func:`rebuild` talks to torch-pruning's graph (through
:func:`attnprune.core.groups.build_graph`) because replaying a history needs it.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
import torch.nn as nn

from .._modes import eval_mode
from ..errors import AttnpruneError
from ..models import (
    MODELS,
    build_model,
    call_factory,
    first_conv_channels,
    is_factory_spec,
    is_model_name,
    resolve_factory,
)

__all__ = [
    "ModelFileError",
    "build_base",
    "normalize_history",
    "check_base_kwargs",
    "shape_record",
    "inputs_from_shape",
    "default_shape",
    "infer_base_kwargs",
    "describe_base",
    "rebuild",
    "compare_state",
]

_PACKAGE_EXAMPLE_HW = (32, 32)
_TORCHVISION_EXAMPLE_HW = (224, 224)


class ModelFileError(AttnpruneError, ValueError):
    """A model file is not an attnprune file, or does not fit the given base.

    Raised by :func:`save` when the model cannot be rebuilt from ``base`` and the
    pruning history, and by :func:`load` when the file is malformed or the base
    architecture does not match it.
    """


# --------------------------------------------------------------------------- #
# Bases: names, factories, instances
# --------------------------------------------------------------------------- #
def build_base(base: Any, base_kwargs: dict, *, allow_import: bool) -> nn.Module:
    """A fresh unpruned model from a name, ``module:function``, factory or instance."""
    if isinstance(base, nn.Module):
        return copy.deepcopy(base)
    if isinstance(base, str):
        if is_factory_spec(base):
            if not allow_import:
                raise ModelFileError(
                    f"the file was saved with the model factory {base!r}; it is not imported "
                    f"automatically: pass base={base!r} (or the factory itself) to load()"
                )
            return call_factory(resolve_factory(base), base_kwargs, f"the model factory {base!r}")
        if not is_model_name(base):
            raise ValueError(
                f"unknown base {base!r}; valid bases: the package's models ({', '.join(MODELS)}), "
                "any torchvision classification model name, 'module:function', a callable "
                "returning an nn.Module, or an nn.Module instance"
            )
        kw = {k: base_kwargs[k] for k in ("num_classes", "in_channels") if k in base_kwargs}
        return build_model(base, **kw)
    if callable(base):
        return call_factory(base, base_kwargs, "the base factory")
    raise TypeError(
        "base must be a model name (str), 'module:function', a callable returning an "
        f"nn.Module, or an nn.Module instance; got {type(base).__name__}"
    )


# --------------------------------------------------------------------------- #
# Validation helpers
# --------------------------------------------------------------------------- #
def normalize_history(history: Any) -> list[list]:
    """A pruning history as ``[[name, is_out, [ints]], ...]`` (TypeError/ValueError otherwise)."""
    if not isinstance(history, (list, tuple)):
        raise TypeError(
            "pruning_history must be a list of [module_name, is_out_channel_pruning, idxs] "
            f"entries (PruneResult.pruning_history), got {type(history).__name__}"
        )
    out = []
    for i, entry in enumerate(history):
        if not isinstance(entry, (list, tuple)) or len(entry) != 3:
            raise ValueError(
                f"pruning_history[{i}] must be [module_name, is_out_channel_pruning, idxs], got {entry!r}"
            )
        name, is_out, idxs = entry
        if not isinstance(name, str):
            raise ValueError(f"pruning_history[{i}][0] must be a module name (str), got {name!r}")
        try:
            idxs = [int(getattr(j, "idx", j)) for j in idxs]
        except (TypeError, ValueError):
            raise ValueError(f"pruning_history[{i}][2] must be a list of ints, got {idxs!r}") from None
        out.append([name, bool(is_out), idxs])
    return out


def check_base_kwargs(base_kwargs: Any) -> dict:
    """A copy of ``base_kwargs``, which must map str to weights_only-safe scalars."""
    if base_kwargs is None:
        return {}
    if not isinstance(base_kwargs, dict):
        raise TypeError(f"base_kwargs must be a dict, got {type(base_kwargs).__name__}")
    for k, v in base_kwargs.items():
        if not isinstance(k, str) or not (v is None or isinstance(v, (bool, int, float, str))):
            raise ValueError(
                "base_kwargs must map str keys to int, float, str, bool or None values "
                f"(stored weights_only-safe); got {k!r}: {v!r}"
            )
    return dict(base_kwargs)


def shape_record(inputs: tuple[torch.Tensor, ...]) -> list:
    """The shape(s) of ``inputs`` as stored in a file: one list, or a list of lists."""
    shapes = [[int(d) for d in t.shape] for t in inputs]
    return shapes[0] if len(shapes) == 1 else shapes


def inputs_from_shape(shape: Any) -> tuple[torch.Tensor, ...]:
    """Zero tensors of a recorded example shape (:class:`ModelFileError` if malformed)."""
    if not isinstance(shape, list) or not shape:
        raise ModelFileError(f"example_shape must be a list of ints or of int lists, got {shape!r}")
    shapes = shape if all(isinstance(s, list) for s in shape) else [shape]
    try:
        return tuple(torch.zeros(*[int(d) for d in s]) for s in shapes)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ModelFileError(f"invalid example_shape {shape!r}: {exc}") from None


def default_shape(base: Any, base_kwargs: dict) -> list[int]:
    """The example shape to trace a base with when none was recorded."""
    cin = base_kwargs.get("in_channels", 3)
    cin = cin if isinstance(cin, int) and not isinstance(cin, bool) else 3
    if isinstance(base, str) and base in MODELS:
        return [1, cin, *_PACKAGE_EXAMPLE_HW]
    return [1, 3, *_TORCHVISION_EXAMPLE_HW]


def _eval_output(model: nn.Module, inputs: tuple[torch.Tensor, ...]):
    with eval_mode(model), torch.no_grad():
        return model(*inputs)


def infer_base_kwargs(model: nn.Module, base: str, inputs: tuple[torch.Tensor, ...] | None) -> dict:
    """``num_classes`` and ``in_channels`` of a named base, read off the pruned model.

    Pruning never changes the input channels of the first layer nor the classes of
    the output layer, so both can be read from the pruned model itself.
    """
    kwargs: dict = {}
    if inputs is not None and inputs[0].dim() >= 2:
        kwargs["in_channels"] = int(inputs[0].shape[1])
    else:
        cin = first_conv_channels(model)
        if cin is not None:
            kwargs["in_channels"] = cin
    probe = inputs if inputs is not None else inputs_from_shape(default_shape(base, kwargs))
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    probe = tuple(t.to(device) for t in probe)
    try:
        out = _eval_output(model, probe)
    except Exception as exc:  # noqa: BLE001
        raise ValueError(
            f"could not run the model to read its number of classes ({type(exc).__name__}: {exc}); "
            "pass example_inputs= (one batch the model accepts) or base_kwargs={'num_classes': ...}"
        ) from exc
    if isinstance(out, torch.Tensor) and out.dim() == 2:
        kwargs["num_classes"] = int(out.shape[1])
    else:
        raise ValueError(
            "cannot infer num_classes: the model's output is not a (batch, classes) tensor; "
            "pass base_kwargs={'num_classes': ..., 'in_channels': ...}"
        )
    return kwargs


# --------------------------------------------------------------------------- #
# Rebuilding
# --------------------------------------------------------------------------- #
def describe_base(base: Any, base_kwargs: dict) -> str:
    if isinstance(base, str):
        what = repr(base)
    elif isinstance(base, nn.Module):
        what = f"a {type(base).__name__} instance"
    else:
        what = getattr(base, "__qualname__", None) or type(base).__name__
    return f"base {what}" + (f" (base_kwargs {base_kwargs})" if base_kwargs else "")


def rebuild(
    base: Any,
    base_kwargs: dict,
    history: list[list],
    inputs: tuple[torch.Tensor, ...],
    *,
    allow_import: bool,
) -> nn.Module:
    """Build the base, replay the history on it; the weights are left as built."""
    from ..core.groups import build_graph

    model = build_base(base, base_kwargs, allow_import=allow_import)
    desc = describe_base(base, base_kwargs)
    names = dict(model.named_modules())
    missing = sorted({name for name, _, _ in history if name not in names})
    if missing:
        raise ModelFileError(
            f"the {desc} does not match the saved model: it has no module "
            f"{', '.join(map(repr, missing[:5]))}{' ...' if len(missing) > 5 else ''} "
            "named in the pruning history"
        )
    shapes = [list(t.shape) for t in inputs]
    try:
        _eval_output(model, inputs)
    except Exception as exc:  # noqa: BLE001 - any failure of the user's forward
        raise ModelFileError(
            f"the {desc} cannot run on example inputs of shape {shapes} ({type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}); either it is not the "
            "architecture the model was pruned from, or pass example_inputs= that it accepts"
        ) from exc
    # eval mode: tracing in train mode would touch BN statistics (and fail on 1-sample BN1d)
    with eval_mode(model):
        try:
            graph, _ = build_graph(model, inputs)
        except Exception as exc:
            raise ModelFileError(f"cannot trace the {desc} on inputs of shape {shapes}: {exc}") from exc
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                graph.load_pruning_history([list(h) for h in history])
        except Exception as exc:  # noqa: BLE001 - torch-pruning raises many kinds
            raise ModelFileError(
                f"cannot replay the pruning history on the {desc} ({type(exc).__name__}: {exc}); "
                "it is not the architecture the model was pruned from"
            ) from exc
    return model


def compare_state(model: nn.Module, state: dict, desc: str) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    problems = []
    for k in sorted(set(expected) - set(got)):
        problems.append(f"{k} missing from the file")
    for k in sorted(set(got) - set(expected)):
        problems.append(f"{k} not in the rebuilt model")
    for k in sorted(set(expected) & set(got)):
        if expected[k] != got[k]:
            problems.append(f"{k}: file {list(got[k])} vs rebuilt {list(expected[k])}")
    if problems:
        shown = "; ".join(problems[:5]) + (f"; ... ({len(problems)} in all)" if len(problems) > 5 else "")
        raise ModelFileError(
            f"the {desc}, with the pruning history replayed, does not match the saved weights: {shown}"
        )
