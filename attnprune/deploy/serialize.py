"""Save and reload pruned models as plain, ``weights_only``-safe files.

A pruned model is a smaller copy of a known architecture, so it is stored as a
recipe instead of a pickled module: the name of the unpruned architecture, the
channels torch-pruning removed (its *pruning history*), and the state dict.
Reloading builds the unpruned architecture, replays the history on it with a
fresh torch-pruning ``DependencyGraph`` and loads the weights with
``strict=True``. The file is a plain dict written with :func:`torch.save`, so
``torch.load(path, weights_only=True)`` reads it without running any code:

.. code-block:: python

    {
        "format": "attnprune/1",
        "attnprune_version": "0.1.0",
        "base": "resnet20",              # or None: pass ``base=`` to load()
        "base_kwargs": {"num_classes": 10, "in_channels": 1},
        "pruning_history": [["conv1", True, [0, 3, 5]], ...],
        "state_dict": {...},             # CPU tensors
        "example_shape": [1, 1, 28, 28], # or a list of shapes, or None
    }

Example:
    >>> result = attnprune.prune(build_model("resnet20", 10, 1), loader)  # doctest: +SKIP
    >>> attnprune.deploy.serialize.save(result.model, "model.pt", base="resnet20",  # doctest: +SKIP
    ...                   pruning_history=result.pruning_history)
    >>> model = attnprune.deploy.serialize.load("model.pt")  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import importlib
import inspect
import os
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from .._files import atomic_file
from .._modes import eval_mode
from ..errors import AttnpruneError

__all__ = [
    "FORMAT",
    "ModelFileError",
    "save",
    "load",
    "load_base",
    "read_info",
    "resolve_factory",
]

FORMAT = "attnprune/1"
"""Value of the ``"format"`` key of files written by :func:`save`."""

_KEYS = ("format", "base", "base_kwargs", "pruning_history", "state_dict", "example_shape")
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
def _is_registered_name(name: str) -> bool:
    from ..models import MODELS, torchvision_model_names

    return name in MODELS or name in torchvision_model_names()


def resolve_factory(spec: str) -> Callable[..., nn.Module]:
    """Import a model factory written as ``"package.module:function"``.

    Args:
        spec: ``"module:attribute"``; the attribute may be dotted
            (``"pkg.mod:Class.build"``).

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
        raise ValueError(
            f"cannot import module {mod_name!r} of the model factory {spec!r}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"module {mod_name!r} has no attribute {attr!r} (model factory {spec!r})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"the model factory {spec!r} is a {type(obj).__name__}, not a callable")
    return obj


def _call_factory(factory: Callable[..., Any], kwargs: dict, what: str) -> nn.Module:
    """Call ``factory`` with the entries of ``kwargs`` its signature accepts."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = None
    if params is None or any(p.kind is p.VAR_KEYWORD for p in params.values()):
        accepted = dict(kwargs)
    else:
        accepted = {k: v for k, v in kwargs.items() if k in params}
    model = factory(**accepted)
    if not isinstance(model, nn.Module):
        raise TypeError(f"{what} must return a torch.nn.Module, got {type(model).__name__}")
    return model


def _build_base(base: Any, base_kwargs: dict, *, allow_import: bool) -> nn.Module:
    """A fresh unpruned model from a name, ``module:function``, factory or instance."""
    if isinstance(base, nn.Module):
        return copy.deepcopy(base)
    if isinstance(base, str):
        if ":" in base:
            if not allow_import:
                raise ModelFileError(
                    f"the file was saved with the model factory {base!r}; it is not imported "
                    f"automatically: pass base={base!r} (or the factory itself) to load()"
                )
            return _call_factory(resolve_factory(base), base_kwargs, f"the model factory {base!r}")
        if not _is_registered_name(base):
            from ..models import MODELS

            raise ValueError(
                f"unknown base {base!r}; valid bases: the package's models ({', '.join(MODELS)}), "
                "any torchvision classification model name, 'module:function', a callable "
                "returning an nn.Module, or an nn.Module instance"
            )
        from ..models import build_model

        kw = {k: base_kwargs[k] for k in ("num_classes", "in_channels") if k in base_kwargs}
        return build_model(base, **kw)
    if callable(base):
        return _call_factory(base, base_kwargs, "the base factory")
    raise TypeError(
        "base must be a model name (str), 'module:function', a callable returning an "
        f"nn.Module, or an nn.Module instance; got {type(base).__name__}"
    )


# --------------------------------------------------------------------------- #
# Validation helpers
# --------------------------------------------------------------------------- #
def _normalize_history(history: Any) -> list[list]:
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


def _check_kwargs(base_kwargs: Any) -> dict:
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


def _input_tuple(example_inputs: Any) -> tuple[torch.Tensor, ...]:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if (
        isinstance(example_inputs, (tuple, list))
        and example_inputs
        and all(isinstance(t, torch.Tensor) for t in example_inputs)
    ):
        return tuple(example_inputs)
    raise TypeError(
        "example_inputs must be a tensor or a non-empty tuple/list of tensors, "
        f"got {type(example_inputs).__name__}"
    )


def _shape_record(inputs: tuple[torch.Tensor, ...]) -> list:
    shapes = [[int(d) for d in t.shape] for t in inputs]
    return shapes[0] if len(shapes) == 1 else shapes


def _inputs_from_shape(shape: Any) -> tuple[torch.Tensor, ...]:
    if not isinstance(shape, list) or not shape:
        raise ModelFileError(f"example_shape must be a list of ints or of int lists, got {shape!r}")
    shapes = shape if all(isinstance(s, list) for s in shape) else [shape]
    try:
        return tuple(torch.zeros(*[int(d) for d in s]) for s in shapes)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ModelFileError(f"invalid example_shape {shape!r}: {exc}") from None


def _default_shape(base: Any, base_kwargs: dict) -> list[int]:
    from ..models import MODELS

    cin = base_kwargs.get("in_channels", 3)
    cin = cin if isinstance(cin, int) and not isinstance(cin, bool) else 3
    if isinstance(base, str) and base in MODELS:
        return [1, cin, *_PACKAGE_EXAMPLE_HW]
    return [1, 3, *_TORCHVISION_EXAMPLE_HW]


def _first_in_channels(model: nn.Module) -> int | None:
    for m in model.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            return int(m.in_channels)
        if isinstance(m, nn.Linear):
            return None
    return None


def _eval_output(model: nn.Module, inputs: tuple[torch.Tensor, ...]):
    with eval_mode(model), torch.no_grad():
        return model(*inputs)


def _infer_base_kwargs(model: nn.Module, base: str, inputs: tuple[torch.Tensor, ...] | None) -> dict:
    """``num_classes`` and ``in_channels`` of a named base, read off the pruned model.

    Pruning never changes the input channels of the first layer nor the classes of
    the output layer, so both can be read from the pruned model itself.
    """
    kwargs: dict = {}
    if inputs is not None and inputs[0].dim() >= 2:
        kwargs["in_channels"] = int(inputs[0].shape[1])
    else:
        cin = _first_in_channels(model)
        if cin is not None:
            kwargs["in_channels"] = cin
    probe = inputs if inputs is not None else _inputs_from_shape(_default_shape(base, kwargs))
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
def _describe(base: Any, base_kwargs: dict) -> str:
    if isinstance(base, str):
        what = repr(base)
    elif isinstance(base, nn.Module):
        what = f"a {type(base).__name__} instance"
    else:
        what = getattr(base, "__qualname__", None) or type(base).__name__
    return f"base {what}" + (f" (base_kwargs {base_kwargs})" if base_kwargs else "")


def _rebuild(
    base: Any,
    base_kwargs: dict,
    history: list[list],
    inputs: tuple[torch.Tensor, ...],
    *,
    allow_import: bool,
) -> nn.Module:
    """Build the base, replay the history on it; the weights are left as built."""
    from ..core.groups import build_graph

    model = _build_base(base, base_kwargs, allow_import=allow_import)
    desc = _describe(base, base_kwargs)
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


def _compare_state(model: nn.Module, state: dict, desc: str) -> None:
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



# --------------------------------------------------------------------------- #
# Public API
# --------------------------------------------------------------------------- #
def save(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    base: Any,
    pruning_history: list | None = None,
    example_inputs: Any = None,
    base_kwargs: dict | None = None,
    check: bool = True,
) -> Path:
    """Save a pruned model as a ``weights_only``-loadable recipe (see module docstring).

    Args:
        model: The pruned model (e.g. ``PruneResult.model``).
        path: Destination file (conventionally ``.pt``); parent folders are created.
            Written atomically: a temporary file in the same folder, then ``os.replace``.
        base: The unpruned architecture: a registered name (the package's models such
            as ``"resnet20"``, or a torchvision classification name), a
            ``"module:function"`` factory, a callable returning an ``nn.Module``, or an
            unpruned ``nn.Module`` instance. Names and ``"module:function"`` strings
            are recorded in the file; for a callable or an instance the file records
            ``None`` and :func:`load` needs ``base=`` again.
        pruning_history: torch-pruning's record of the removal:
            ``PruneResult.pruning_history`` or ``Instrumented.pruning_history``.
        example_inputs: One batch the model accepts; its shape is recorded and used
            to trace the base at load time. Default: ``(1, in_channels, 32, 32)`` for
            the package's models, ``(1, 3, 224, 224)`` otherwise.
        base_kwargs: Keyword arguments of the base's constructor (ints/strs). For a
            registered name, ``num_classes`` and ``in_channels`` are read off the
            model when not given; a factory receives those of its parameters it has.
        check: Rebuild the model from the recipe before writing and compare every
            parameter and buffer shape, so a file that would not load is never written.

    Returns:
        The path written.

    Raises:
        ValueError: ``pruning_history`` is None, ``base`` is unknown, or a
            ``"module:function"`` factory cannot be imported.
        ModelFileError: ``check`` found that the base and the history do not
            reproduce the model's shapes.
        TypeError: An argument of the wrong type.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if pruning_history is None:
        raise ValueError(
            "pruning_history is required to rebuild the pruned model from a state dict: pass "
            "pruning_history=result.pruning_history (from attnprune.prune) or "
            "inst.pruning_history (after Instrumented.finalize())"
        )
    history = _normalize_history(pruning_history)
    if not isinstance(check, bool):
        raise TypeError(f"check must be a bool, got {type(check).__name__}")
    inputs = _input_tuple(example_inputs) if example_inputs is not None else None
    kwargs = _check_kwargs(base_kwargs)
    if isinstance(base, str):
        if ":" in base:
            resolve_factory(base)  # fail early with a clear message
        elif not _is_registered_name(base):
            _build_base(base, {}, allow_import=False)  # raises the unknown-base error
        elif base_kwargs is None:
            kwargs = _infer_base_kwargs(model, base, inputs)
        recorded_base: str | None = base
    elif isinstance(base, nn.Module) or callable(base):
        recorded_base = None
    else:
        raise TypeError(
            "base must be a model name (str), 'module:function', a callable returning an "
            f"nn.Module, or an nn.Module instance; got {type(base).__name__}"
        )
    shape = _shape_record(inputs) if inputs is not None else None
    state = {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}
    if check:
        trace_inputs = inputs if inputs is not None else _inputs_from_shape(_default_shape(base, kwargs))
        rebuilt = _rebuild(base, kwargs, history, tuple(t.detach().cpu() for t in trace_inputs),
                           allow_import=True)
        _compare_state(rebuilt, state, _describe(base, kwargs))
    from .. import __version__

    payload = {
        "format": FORMAT,
        "attnprune_version": __version__,
        "base": recorded_base,
        "base_kwargs": kwargs,
        "pruning_history": history,
        "state_dict": state,
        "example_shape": shape,
    }
    path = Path(path)
    with atomic_file(path) as fh:
        torch.save(payload, fh)
    return path


def read_info(path: str | os.PathLike[str]) -> dict:
    """Read and validate a file written by :func:`save` (``weights_only=True``).

    Args:
        path: The model file.

    Returns:
        The stored dict (with the ``state_dict`` tensors on the CPU).

    Raises:
        FileNotFoundError: No such file.
        ModelFileError: The file is not an attnprune model file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle/zip errors of many kinds
        raise ModelFileError(
            f"{path} is not an attnprune model file: torch.load(weights_only=True) cannot read it "
            f"({type(exc).__name__}); write model files with attnprune.deploy.serialize.save"
        ) from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ModelFileError(
            f"{path} is not an attnprune model file: expected format {FORMAT!r}, found {found!r} "
            "(write it with attnprune.deploy.serialize.save)"
        )
    missing = [k for k in _KEYS if k not in data]
    if missing:
        raise ModelFileError(f"{path} is missing the key(s) {missing}")
    if not isinstance(data["state_dict"], dict):
        raise ModelFileError(f"{path}: 'state_dict' must be a dict of tensors")
    if data["base"] is not None and not isinstance(data["base"], str):
        raise ModelFileError(f"{path}: 'base' must be a str or None, got {data['base']!r}")
    try:
        data["pruning_history"] = _normalize_history(data["pruning_history"])
        data["base_kwargs"] = _check_kwargs(data["base_kwargs"])
    except (TypeError, ValueError) as exc:
        raise ModelFileError(f"{path}: {exc}") from None
    return data


def _example_for(data: dict, base: Any, example_inputs: Any) -> tuple[torch.Tensor, ...]:
    if example_inputs is not None:
        return tuple(t.detach().cpu() for t in _input_tuple(example_inputs))
    if data["example_shape"] is not None:
        return _inputs_from_shape(data["example_shape"])
    return _inputs_from_shape(_default_shape(base, data["base_kwargs"]))


def load(
    path: str | os.PathLike[str],
    base: Any = None,
    *,
    example_inputs: Any = None,
) -> nn.Module:
    """Rebuild a pruned model saved by :func:`save`.

    Args:
        path: The model file.
        base: The unpruned architecture, overriding the name recorded in the file:
            a registered name, ``"module:function"``, a callable returning an
            ``nn.Module`` (called with the recorded ``base_kwargs`` its signature
            accepts), or an unpruned ``nn.Module`` instance (copied, not modified).
            Required when the file records no name or a ``"module:function"``
            factory (factories named in a file are never imported implicitly).
        example_inputs: One batch to trace the base with; default: zeros of the
            recorded example shape.

    Returns:
        The pruned model on the CPU, in eval mode, with the saved weights.

    Raises:
        FileNotFoundError: No such file.
        ModelFileError: The file is not an attnprune file, it needs ``base=``, or
            the base does not match it (the message says what differs).
        ValueError: ``base`` is an unknown name.
    """
    data = read_info(path)
    if base is None:
        base = data["base"]
        if base is None:
            raise ModelFileError(
                f"{path} was saved with a user-defined base architecture: pass base= (a callable "
                "returning the unpruned nn.Module, or an instance of it) to load()"
            )
        allow_import = False
    else:
        allow_import = True
    inputs = _example_for(data, base, example_inputs)
    model = _rebuild(base, data["base_kwargs"], data["pruning_history"], inputs, allow_import=allow_import)
    _compare_state(model, data["state_dict"], _describe(base, data["base_kwargs"]))
    model.load_state_dict(data["state_dict"], strict=True)
    return model.eval()


def load_base(path: str | os.PathLike[str], base: Any = None) -> nn.Module:
    """The unpruned architecture a saved model was pruned from, freshly initialised.

    Useful as the dense reference of a latency benchmark (weights do not matter).

    Args:
        path: A file written by :func:`save`.
        base: As in :func:`load`.

    Returns:
        The unpruned model in eval mode (random weights).

    Raises:
        FileNotFoundError, ModelFileError, ValueError: As :func:`load`.
    """
    data = read_info(path)
    allow_import = base is not None
    base = data["base"] if base is None else base
    if base is None:
        raise ModelFileError(f"{path} was saved with a user-defined base architecture: pass base=")
    return _build_base(base, data["base_kwargs"], allow_import=allow_import).eval()
