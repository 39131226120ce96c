"""``--input-shape`` of ``export`` and ``bench``: read from an ONNX file, checked against the model.

A wrong shape (three numbers, the wrong channel count) is one ``attnprune: error:``
line naming ``--input-shape`` and what the model expects, never a traceback from
the exporter or ONNX Runtime.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .common import CLIError

__all__ = ["onnx_input_dims", "onnx_input_shape", "check_input_shape"]


def _text(shape) -> str:
    return ",".join("?" if d is None else str(d) for d in shape)


def onnx_input_dims(path: str | Path) -> list[int | None]:
    """The dimensions of the first graph input of an ONNX file (None where symbolic).

    Raises:
        CLIError: The file cannot be read as ONNX, or its graph has no input.
    """
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as exc:  # noqa: BLE001 - any parse failure is the same user error
        raise CLIError(f"cannot read {path} as an ONNX model: {' '.join(str(exc).split())}") from None
    weights = {init.name for init in graph.initializer}
    inputs = [i for i in graph.input if i.name not in weights]
    if not inputs:
        raise CLIError(f"{path} has no graph input")
    dims = inputs[0].type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims]


def onnx_input_shape(path: str | Path) -> list[int] | None:
    """The example shape of an ONNX file's input, batch 1, when every other dimension is static."""
    dims = onnx_input_dims(path)
    if len(dims) < 2 or any(d is None for d in dims[1:]):
        return None
    return [1, *dims[1:]]


def check_input_shape(shape: list[int], model: nn.Module | str | Path, what: str) -> None:
    """Raise a CLIError naming ``--input-shape`` when ``shape`` does not fit ``model``.

    Args:
        shape: The shape, batch first.
        model: A torch model (tried on a zero input of ``shape``, batch 1) or the
            path of an ``.onnx`` file (its static input dimensions are compared).
        what: Names the model in the message (``--pruned``, ``--model-file``).
    """
    given = _text(shape)
    if isinstance(model, (str, Path)):
        dims = onnx_input_dims(model)
        bad = len(dims) != len(shape) or any(d is not None and d != s for d, s in zip(dims[1:], shape[1:]))
        if bad:
            raise CLIError(f"--input-shape: {given} does not fit {what} ({model}), whose input is "
                           f"{_text(dims)} (? = any size)")
        return
    first = next((m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))), None)
    hint = ""
    if isinstance(first, nn.Conv2d):
        hint = (f" (it takes N,C,H,W images with C={first.in_channels} channels, e.g. "
                f"1,{first.in_channels},224,224)")
        if len(shape) != 4:
            raise CLIError(f"--input-shape: {given} does not fit {what}: {len(shape)} numbers given, 4 "
                           f"needed{hint}")
    try:
        with torch.no_grad():
            was = model.training
            model.eval()
            try:
                model(torch.zeros(1, *shape[1:]))
            finally:
                model.train(was)
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CLIError(f"--input-shape: {given} does not fit {what}{hint}: {first_line}") from None
