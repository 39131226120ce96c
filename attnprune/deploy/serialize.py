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

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .._files import atomic_file
from .._tree import as_inputs
from ..models import is_factory_spec, is_model_name, resolve_factory
from ._rebuild import (
    ModelFileError,
    build_base,
    check_base_kwargs,
    compare_state,
    default_shape,
    describe_base,
    infer_base_kwargs,
    inputs_from_shape,
    normalize_history,
    rebuild,
    shape_record,
)

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
    history = normalize_history(pruning_history)
    if not isinstance(check, bool):
        raise TypeError(f"check must be a bool, got {type(check).__name__}")
    inputs = as_inputs(example_inputs) if example_inputs is not None else None
    kwargs = check_base_kwargs(base_kwargs)
    if isinstance(base, str):
        if is_factory_spec(base):
            resolve_factory(base)  # fail early with a clear message
        elif not is_model_name(base):
            build_base(base, {}, allow_import=False)  # raises the unknown-base error
        elif base_kwargs is None:
            kwargs = infer_base_kwargs(model, base, inputs)
        recorded_base: str | None = base
    elif isinstance(base, nn.Module) or callable(base):
        recorded_base = None
    else:
        raise TypeError(
            "base must be a model name (str), 'module:function', a callable returning an "
            f"nn.Module, or an nn.Module instance; got {type(base).__name__}"
        )
    shape = shape_record(inputs) if inputs is not None else None
    state = {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}
    if check:
        trace_inputs = inputs if inputs is not None else inputs_from_shape(default_shape(base, kwargs))
        rebuilt = rebuild(base, kwargs, history, tuple(t.detach().cpu() for t in trace_inputs),
                           allow_import=True)
        compare_state(rebuilt, state, describe_base(base, kwargs))
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
        data["pruning_history"] = normalize_history(data["pruning_history"])
        data["base_kwargs"] = check_base_kwargs(data["base_kwargs"])
    except (TypeError, ValueError) as exc:
        raise ModelFileError(f"{path}: {exc}") from None
    return data


def _example_for(data: dict, base: Any, example_inputs: Any) -> tuple[torch.Tensor, ...]:
    if example_inputs is not None:
        return tuple(t.detach().cpu() for t in as_inputs(example_inputs))
    if data["example_shape"] is not None:
        return inputs_from_shape(data["example_shape"])
    return inputs_from_shape(default_shape(base, data["base_kwargs"]))


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
    model = rebuild(base, data["base_kwargs"], data["pruning_history"], inputs, allow_import=allow_import)
    compare_state(model, data["state_dict"], describe_base(base, data["base_kwargs"]))
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
    return build_base(base, data["base_kwargs"], allow_import=allow_import).eval()
