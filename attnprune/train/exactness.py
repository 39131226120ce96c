"""Refusing, before training, models that cannot be pruned exactly.

Three checks :func:`attnprune.prune` runs on the model before any training:

* :func:`unwrap_compiled`: a ``torch.compile``d model (an ``OptimizedModule``) is
  pruned through its original module, with a warning (the pruned model is a
  plain module; compile it again);
* :func:`check_float32`: half or bfloat16 parameters are refused (pruning trains
  in the model's dtype; mixed-precision training is a separate option);
* :func:`check_exact`: a *dry finalize*. A copy of the model is instrumented, a
  random set of channels is closed, and the closed channels are removed and
  checked against the gated copy, exactly as at the end of the run. A model
  whose forward breaks or changes when channels are removed (a hard-coded
  channel count in ``view``/``reshape``, a per-channel buffer torch-pruning does
  not know) raises :class:`~attnprune.UnsupportedModelError` in seconds with the
  reason, instead of an ``EquivalenceError`` after the whole schedule. It costs
  one more copy, trace and removal and a few forward passes on the example
  inputs: 0.65 to 1.1 s for ResNet-18 at 224x224, batch 1, on one busy CPU
  thread (measured; less on a free machine).
"""

from __future__ import annotations

import copy
import warnings

import torch
import torch.nn as nn

from .._batch import call_model
from .._modes import eval_mode
from .._tree import flatten_tensors
from ..core.instrument import Instrumented, instrument
from ..errors import EquivalenceError, UnsupportedModelError

__all__ = ["unwrap_compiled", "check_float32", "random_closed_masks", "check_exact", "dry_copy"]

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def unwrap_compiled(model: nn.Module) -> nn.Module:
    """The original module of a ``torch.compile``d model (with a warning); ``model`` otherwise."""
    orig = getattr(model, "_orig_mod", None)
    if type(model).__name__ == "OptimizedModule" and isinstance(orig, nn.Module):
        warnings.warn(
            f"model is a torch.compile'd {type(orig).__name__}: pruning its original module "
            "(model._orig_mod); the pruned model is a plain module, call torch.compile on it again",
            UserWarning, stacklevel=3,
        )
        return orig
    return model


def check_float32(model: nn.Module) -> None:
    """Refuse half or bfloat16 parameters and buffers.

    Raises:
        UnsupportedModelError: naming the first such tensor and its dtype.
    """
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.dtype in _LOW_PRECISION:
            raise UnsupportedModelError(
                f"model has {str(t.dtype).replace('torch.', '')} parameters or buffers ({name!r}); "
                "use a float32 model; mixed-precision training is the amp option"
            )


def random_closed_masks(inst: Instrumented, seed: int = 0) -> list[torch.Tensor]:
    """Keep-masks closing about half of every group's channels (at least one kept, one closed).

    Drawn from a private generator (torch's global one is not touched), and
    repeating one pattern per conv group where a group needs it.
    """
    gen = torch.Generator().manual_seed(seed)
    masks = []
    for g in inst.groups:
        unit = g.n_channels // g.ch_groups
        pattern = torch.rand(unit, generator=gen) < 0.5
        order = torch.randperm(unit, generator=gen)
        pattern[order[0]] = True
        if unit > 1:
            pattern[order[1]] = False
        masks.append(pattern.repeat(g.ch_groups))
    return masks


def check_exact(copy_of_model: nn.Module, example_inputs, ignored_layers=None, rtol: float = 1e-4) -> None:
    """The dry finalize: close random channels of ``copy_of_model`` and check removal is exact.

    Args:
        copy_of_model: A deep copy of the (un-instrumented) working model; it is
            consumed (pruned).
        example_inputs: The tracing inputs.
        ignored_layers: Qualified names of the ignored modules.
        rtol: The equivalence tolerance of :meth:`Instrumented.finalize`.

    Raises:
        UnsupportedModelError: The pruned copy fails to run, or differs from the
            gated copy; the message gives the reason.
        ValueError: The model's outputs on ``example_inputs`` are not finite.
    """
    _check_finite_output(copy_of_model, example_inputs)
    inst = instrument(copy_of_model, example_inputs, ignored_layers=ignored_layers)
    try:
        inst.set_masks(random_closed_masks(inst))
        inst.mode = "binary"
        inst.finalize(verify=True, rtol=rtol)
    except EquivalenceError as exc:
        raise UnsupportedModelError(
            f"{type(copy_of_model).__name__} cannot be pruned exactly: with some channels closed, the "
            f"physically pruned model differs from the gated one ({exc}); a per-channel buffer or "
            "tensor torch-pruning does not resize, or an operation that mixes channels, is the usual "
            "cause"
        ) from exc
    except Exception as exc:
        raise UnsupportedModelError(
            f"{type(copy_of_model).__name__} cannot be pruned exactly: once channels are removed its "
            f"forward fails ({type(exc).__name__}: {exc}); a hard-coded channel count (in view, reshape, "
            "a per-channel buffer or parameter) is the usual cause: derive it from the tensor's shape"
        ) from exc
    finally:
        inst.remove()


def _check_finite_output(model: nn.Module, example_inputs) -> None:
    """Equivalence cannot be judged on NaN: refuse non-finite outputs on the example inputs."""
    with eval_mode(model), torch.no_grad():
        out = call_model(model, example_inputs)
    if not all(bool(torch.isfinite(t).all()) for t in flatten_tensors(out) if t.is_floating_point()):
        raise ValueError(
            "the model's outputs on the example inputs (the loader's first sample unless example_inputs "
            "is given) contain NaN or infinite values; check those inputs and the model's weights"
        )


def dry_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` for :func:`check_exact`."""
    return copy.deepcopy(model)
