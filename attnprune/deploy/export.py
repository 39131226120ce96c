"""ONNX export with a numerical parity check against PyTorch.

:func:`export_onnx` writes a finalized (hook-free) model to an ONNX file and,
by default, runs the file with ONNX Runtime on the same inputs to prove that
it computes what the PyTorch model computes, in ONNX Runtime sessions made by
:func:`attnprune.deploy.ort_session.onnx_session` (re-exported here).

Parity tolerance:
    An export passes when, for every output,
    ``max|onnx - torch| <= rtol * max(1, max|torch|)``. With the default
    ``rtol=1e-4`` this is a relative error of at most 1e-4 in fp32 for outputs
    of magnitude above 1 and an absolute error of at most 1e-4 below that
    (fp32 convolutions computed by different kernels typically agree to
    ~1e-6 relative). NaN/Inf must appear at the same positions in both.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._batch import batch_size, with_batch
from .._modes import eval_mode
from .._tree import as_inputs, flatten_tensors
from ..errors import AttnpruneError
from .ort_session import PROVIDERS, onnx_session

__all__ = [
    "PROVIDERS",
    "ExportMismatchError",
    "export_onnx",
    "onnx_session",
]


class ExportMismatchError(AttnpruneError, RuntimeError):
    """The exported ONNX model disagrees with the PyTorch model.

    Raised by :func:`export_onnx` when an ONNX Runtime output differs from the
    PyTorch output by more than ``rtol * max(1, max|torch|)``, has a different
    shape, or has NaN/Inf where PyTorch has none. Like every attnprune error it
    derives from :class:`attnprune.errors.AttnpruneError`.
    """


# --------------------------------------------------------------------------- #
# Helpers
# --------------------------------------------------------------------------- #
def _hooked_modules(model: nn.Module) -> list[str]:
    """Names of submodules that carry forward or forward-pre hooks."""
    return [
        name or "(root)"
        for name, m in model.named_modules()
        if m._forward_hooks or m._forward_pre_hooks
    ]


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().numpy())


def _compare(ref: list[np.ndarray], got: list[np.ndarray], rtol: float, what: str) -> None:
    """Raises :class:`ExportMismatchError` when ``got`` is not within tolerance of ``ref``."""
    if len(ref) != len(got):
        raise ExportMismatchError(
            f"{what}: ONNX model returns {len(got)} outputs, PyTorch returns {len(ref)}"
        )
    for k, (r, g) in enumerate(zip(ref, got, strict=True)):
        g = np.asarray(g)
        if r.shape != g.shape:
            raise ExportMismatchError(
                f"{what}: output {k} has shape {g.shape} in ONNX but {r.shape} in PyTorch"
            )
        if r.size == 0:
            continue
        r64 = r.astype(np.float64)
        g64 = g.astype(np.float64)
        same = (r64 == g64) | (np.isnan(r64) & np.isnan(g64))
        diff = np.where(same, 0.0, np.abs(r64 - g64))
        diff = np.where(np.isnan(diff), np.inf, diff)
        finite = r64[np.isfinite(r64)]
        scale = max(1.0, float(np.abs(finite).max())) if finite.size else 1.0
        err = float(diff.max())
        if not err <= rtol * scale:
            raise ExportMismatchError(
                f"{what}: output {k} differs: max|onnx - torch| = {err:.3g} > "
                f"rtol * max(1, max|torch|) = {rtol:g} * {scale:.3g} = {rtol * scale:.3g}"
            )


def _parity_check(
    model: nn.Module,
    onnx_path: Path,
    input_names: list[str],
    inputs_list: list[tuple[torch.Tensor, ...]],
    rtol: float,
) -> None:
    session = onnx_session(onnx_path, "cpu")
    graph_inputs = [i.name for i in session.get_inputs()]
    unknown = [n for n in graph_inputs if n not in input_names]
    if unknown:
        raise ExportMismatchError(
            f"ONNX graph expects inputs {graph_inputs}, exporter was given {input_names}"
        )
    for inputs in inputs_list:
        with torch.no_grad():
            ref = [_to_numpy(t) for t in flatten_tensors(model(*inputs))]
        feed = {
            n: _to_numpy(t) for n, t in zip(input_names, inputs, strict=True) if n in graph_inputs
        }
        got = session.run(None, feed)
        _compare(ref, got, rtol, f"batch size {inputs[0].shape[0]}")


def _publish(tmp_dir: Path, main_name: str, target_dir: Path) -> None:
    """Moves every file of ``tmp_dir`` into ``target_dir``, the main file last."""
    for entry in sorted(tmp_dir.iterdir()):
        if entry.name != main_name and entry.is_file():
            os.replace(entry, target_dir / entry.name)
    os.replace(tmp_dir / main_name, target_dir / main_name)


# --------------------------------------------------------------------------- #
# Export
# --------------------------------------------------------------------------- #
_DYNAMO_MIN_OPSET = 18


class _UseLegacy(Exception):
    """Internal: the dynamo exporter cannot honour the request."""


def _export_dynamo(
    model: nn.Module, args: tuple[torch.Tensor, ...], file: Path, dynamic_batch: bool, kw: dict
) -> None:
    batch_dim = torch.export.Dim("batch")
    with warnings.catch_warnings():
        # Several inputs sharing the one batch axis is intended, not worth a warning.
        warnings.filterwarnings("ignore", message=r".*shares the same shape constraints.*")
        torch.onnx.export(
            model,
            args,
            str(file),
            dynamo=True,
            dynamic_shapes=tuple({0: batch_dim} for _ in args) if dynamic_batch else None,
            external_data=False,  # one self-contained file (switches to external data > 2 GB)
            verbose=False,  # no progress lines on stdout
            **kw,
        )


def _export_legacy(
    model: nn.Module, args: tuple[torch.Tensor, ...], file: Path, dynamic_batch: bool, kw: dict
) -> None:
    names = kw["input_names"] + kw["output_names"]
    axes = {n: {0: "batch"} for n in names} if dynamic_batch else None
    with warnings.catch_warnings():
        # The legacy exporter announces its own deprecation; we warned already.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, args, str(file), dynamo=False, dynamic_axes=axes, **kw)


def _onnx_opset(file: Path) -> int | None:
    import onnx

    proto = onnx.load(str(file), load_external_data=False)
    for entry in proto.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return None


def export_onnx(
    model: nn.Module,
    example_inputs: Any,
    path: str | os.PathLike[str],
    *,
    dynamic_batch: bool = True,
    opset: int | None = None,
    rtol: float = 1e-4,
    check: bool = True,
) -> Path:
    """Exports a finalized model to ONNX and verifies it with ONNX Runtime.

    The model is exported in eval mode (every submodule's train/eval flag is
    restored afterwards) with ``torch.onnx.export`` using the default
    ``torch.export``-based ("dynamo") exporter, which needs ``onnxscript``.
    If that exporter fails, the legacy TorchScript exporter (``dynamo=False``)
    is tried and a ``UserWarning`` says so; the same happens when ``opset``
    is below 18, the lowest opset the dynamo exporter implements (it would
    otherwise silently emit opset 18). Weights are stored inside the
    ``.onnx`` file (no external data file) for models under 2 GB.

    The file is written atomically: everything is produced in a temporary
    directory next to ``path`` and moved into place with ``os.replace`` only
    after the parity check passed, so ``path`` never holds a partial or
    unverified export. On failure an existing file at ``path`` is left
    untouched.

    Parity check (``check=True``): the file is run with ONNX Runtime's
    ``CPUExecutionProvider`` on ``example_inputs`` and every output must
    satisfy ``max|onnx - torch| <= rtol * max(1, max|torch|)`` (1e-4 relative
    in fp32 by default). With ``dynamic_batch`` it is run again with a
    different batch size to prove the batch axis really is dynamic.

    Inputs are named ``"input"`` (one tensor) or ``"input_0"``,
    ``"input_1"``, ... and outputs ``"output"`` or ``"output_0"``, ...; with
    ``dynamic_batch`` dimension 0 of every input and output is the symbolic
    axis ``"batch"``.

    Args:
        model: The model to export. It must be finalized: no submodule may
            carry forward hooks or forward-pre hooks (pruning gates, masks).
        example_inputs: A tensor or a tuple/list of tensors, batched along
            dimension 0 with the same batch size.
        path: Destination ``.onnx`` file; missing parent directories are
            created.
        dynamic_batch: Make dimension 0 of inputs and outputs dynamic.
        opset: ONNX opset version; ``None`` uses the exporter's default.
        rtol: Parity tolerance (see above); must be positive.
        check: Run the parity check with ONNX Runtime.

    Returns:
        The path of the written file.

    Raises:
        TypeError: If ``model``/``example_inputs``/``opset`` have wrong types.
        ValueError: If the model still carries hooks, inputs disagree on the
            batch size, or ``rtol``/``opset`` are out of range.
        ExportMismatchError: If the parity check fails.
        RuntimeError: If both exporters fail.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    inputs = as_inputs(example_inputs)
    batch = batch_size(inputs)
    if not isinstance(dynamic_batch, bool):
        raise TypeError(f"dynamic_batch must be a bool, got {type(dynamic_batch).__name__}")
    if opset is not None:
        if isinstance(opset, bool) or not isinstance(opset, int):
            raise TypeError(f"opset must be an int or None, got {type(opset).__name__}")
        if opset < 7:
            raise ValueError(f"opset must be >= 7 (or None for the exporter default), got {opset}")
    if isinstance(rtol, bool) or not isinstance(rtol, (int, float)):
        raise TypeError(f"rtol must be a float, got {type(rtol).__name__}")
    if not (np.isfinite(rtol) and rtol > 0):
        raise ValueError(f"rtol must be a positive finite number, got {rtol}")
    hooked = _hooked_modules(model)
    if hooked:
        shown = ", ".join(hooked[:5]) + (f", ... ({len(hooked)} in all)" if len(hooked) > 5 else "")
        raise ValueError(
            "model still carries forward hooks or forward-pre hooks on submodules "
            f"[{shown}]; it must be finalized first (Instrumented.finalize() or "
            "Instrumented.remove(), or remove your own hooks) before ONNX export"
        )

    path = Path(path)
    if path.is_dir():
        raise ValueError(f"path must be a file path, got the directory {path}")
    path.parent.mkdir(parents=True, exist_ok=True)

    names_in = ["input"] if len(inputs) == 1 else [f"input_{i}" for i in range(len(inputs))]
    # torch.export specialises size-1 dimensions, so a dynamic batch axis needs
    # an example with at least two rows.
    export_inputs = with_batch(inputs, 2) if dynamic_batch and batch == 1 else inputs

    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    tmp_file = tmp_dir / path.name
    try:
        with eval_mode(model), torch.no_grad():
            n_out = len(flatten_tensors(model(*export_inputs)))
            if n_out == 0:
                raise ValueError("model(*example_inputs) returned no tensor; nothing to export")
            names_out = ["output"] if n_out == 1 else [f"output_{i}" for i in range(n_out)]
            export_kw = dict(input_names=names_in, output_names=names_out, opset_version=opset)
            try:
                if opset is not None and opset < _DYNAMO_MIN_OPSET:
                    raise _UseLegacy(
                        f"the dynamo exporter implements opset >= {_DYNAMO_MIN_OPSET} only, "
                        f"opset={opset} was requested"
                    )
                _export_dynamo(model, export_inputs, tmp_file, dynamic_batch, export_kw)
                got = _onnx_opset(tmp_file)
                if opset is not None and got != opset:
                    raise _UseLegacy(f"it produced opset {got} instead of the requested {opset}")
            except Exception as dynamo_error:  # noqa: BLE001 - any exporter failure
                reason = (
                    str(dynamo_error).strip().splitlines()[0][:300]
                    if str(dynamo_error).strip()
                    else ""
                )
                what = "could not be used" if isinstance(dynamo_error, _UseLegacy) else "failed"
                if not isinstance(dynamo_error, _UseLegacy):
                    reason = f"{type(dynamo_error).__name__}: {reason}"
                warnings.warn(
                    f"torch.onnx.export with the default dynamo exporter {what} "
                    f"({reason}); falling back to the legacy "
                    "TorchScript exporter (dynamo=False)",
                    UserWarning,
                    stacklevel=2,
                )
                for leftover in tmp_dir.iterdir():
                    leftover.unlink()
                try:
                    _export_legacy(model, export_inputs, tmp_file, dynamic_batch, export_kw)
                except Exception as legacy_error:
                    raise RuntimeError(
                        "ONNX export failed with both exporters; dynamo: "
                        f"{type(dynamo_error).__name__}: {dynamo_error}; legacy (dynamo=False): "
                        f"{type(legacy_error).__name__}: {legacy_error}"
                    ) from legacy_error
            if check:
                checks = [inputs]
                if dynamic_batch:
                    checks.append(with_batch(inputs, batch + 1 if batch > 1 else 3))
                _parity_check(model, tmp_file, names_in, checks, float(rtol))
        _publish(tmp_dir, path.name, path.parent)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return path
