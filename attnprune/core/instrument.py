"""``instrument()``: one learned gate per coupled channel group, and exact removal.

The object returned by :func:`instrument` owns every hook it adds. Its contract,
the project's core invariant: with binary gates, the instrumented model computes
the same outputs as the model after :meth:`Instrumented.finalize` physically
removes the closed channels with torch-pruning.

Example:
    >>> inst = attnprune.instrument(model, torch.randn(1, 3, 32, 32))
    >>> inst.set_masks([torch.rand(g.n_channels) > 0.5 for g in inst.groups])  # doctest: +SKIP
    >>> inst.mode = "binary"
    >>> pruned = inst.finalize()   # a plain, smaller nn.Module (same object)
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn

from .._modes import eval_mode
from .._tree import as_inputs, flatten_tensors
from ..errors import EquivalenceError
from .cost import CostModel
from .gates import MODES, GateSet
from .groups import ChannelGroup, discover_groups, remove_channels

__all__ = ["Instrumented", "instrument", "outputs_close"]

_ACTIVE: weakref.WeakKeyDictionary[nn.Module, Instrumented] = weakref.WeakKeyDictionary()


def outputs_close(ref, out, rtol: float = 1e-4) -> tuple[bool, float]:
    """Compare two model outputs relative to the reference's scale.

    Returns:
        ``(ok, error)`` where ``error = max|ref - out| / max|ref|``.
    """
    a = [t.detach() for t in flatten_tensors(ref)]
    b = [t.detach() for t in flatten_tensors(out)]
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        return False, float("inf")
    err, scale = 0.0, 0.0
    for x, y in zip(a, b):
        err = max(err, float((x.float() - y.float()).abs().max()))
        scale = max(scale, float(x.float().abs().max()))
    rel = err / max(scale, 1e-12)
    return rel <= rtol, rel


def _restore_modes(modes: dict) -> None:
    for m, training in modes.items():
        m.training = training


class Instrumented:
    """A model with one gate per prunable channel group. Use :func:`instrument`.

    Attributes:
        model: The instrumented model (modified in place by hooks only).
        groups: The channel groups, in model order.
        cost: The analytic counter behind :meth:`count`.
    """

    def __init__(self, model: nn.Module, example_inputs, ignored_layers=None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if model in _ACTIVE:
            raise ValueError(
                "this model is already instrumented; call remove() or finalize() on the "
                "existing Instrumented object first"
            )
        self.model = model
        self._args = as_inputs(example_inputs, tensors_only=False)
        self._modes = {m: m.training for m in model.modules()}
        self._check_inputs()
        info = discover_groups(model, self._args, ignored_layers)
        self.graph = info.graph
        self.groups: list[ChannelGroup] = info.groups
        self.output_layers = info.output_layers
        self.skipped = info.skipped
        self.cost = CostModel(model, self._args, self.groups)
        _restore_modes(self._modes)
        self._gates = GateSet(model, info.gate_points, [g.n_channels for g in self.groups])
        self._state = "active"
        self.pruning_history: list | None = None
        _ACTIVE[model] = self

    def _check_inputs(self) -> None:
        try:
            with eval_mode(self.model), torch.no_grad():
                self.model(*self._args)
        except Exception as exc:
            raise ValueError(
                f"example_inputs cannot be fed to the model ({type(exc).__name__}: {exc}); "
                "pass one batch the model accepts, e.g. torch.randn(1, 3, 224, 224)"
            ) from exc

    # -- state ------------------------------------------------------------------
    @property
    def example_inputs(self) -> tuple:
        """The positional example inputs given to :func:`instrument`."""
        return self._args

    @property
    def active(self) -> bool:
        """True until :meth:`finalize` or :meth:`remove`: the gates are in place."""
        return self._state == "active"

    @property
    def mode(self) -> str:
        """``"off"``, ``"analog"`` or ``"binary"``."""
        return self._gates.mode

    @mode.setter
    def mode(self, value: str) -> None:
        self._require_active()
        if value not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {value!r}")
        self._gates.mode = value
        self._gates.invalidate()

    def _require_active(self) -> None:
        if self._state != "active":
            raise RuntimeError(f"this Instrumented object is {self._state}; instrument the model again")

    def _validate_masks(self, masks: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        masks = list(masks)
        if len(masks) != len(self.groups):
            raise ValueError(
                f"expected {len(self.groups)} masks (one per group, in inst.groups order), got {len(masks)}"
            )
        out = []
        for g, m in zip(self.groups, masks):
            m = torch.as_tensor(m)
            if m.dtype != torch.bool:
                raise TypeError(f"mask of group {g.index} ({g.name}) must be a bool tensor, got {m.dtype}")
            if m.shape != (g.n_channels,):
                raise ValueError(
                    f"mask of group {g.index} ({g.name}) must have shape ({g.n_channels},), got {tuple(m.shape)}"
                )
            if not bool(m.any()):
                raise ValueError(f"mask of group {g.index} ({g.name}) keeps no channel; a group cannot be emptied")
            if g.ch_groups > 1:
                pattern = m.view(g.ch_groups, -1)
                if not bool((pattern == pattern[0]).all()):
                    raise ValueError(
                        f"mask of group {g.index} ({g.name}) must repeat one pattern of length "
                        f"{g.n_channels // g.ch_groups} {g.ch_groups} times (grouped convolution)"
                    )
            out.append(m.detach().to("cpu").clone())
        return out

    def set_masks(self, masks: Sequence[torch.Tensor]) -> None:
        """Set one bool keep-mask per group (True = keep), used in ``binary`` mode.

        Raises:
            ValueError: wrong number or length of masks, an empty group, or a mask
                that does not repeat one pattern where ``ch_groups > 1``.
        """
        self._require_active()
        self._gates.masks = self._validate_masks(masks)
        self._gates.invalidate()

    def masks(self) -> list[torch.Tensor]:
        """The current keep-masks (copies)."""
        return [m.clone() for m in self._gates.masks]

    def set_scores(self, scores: Sequence[torch.Tensor] | Callable[[], Sequence[torch.Tensor]]) -> None:
        """Set the real-valued gate values used in ``analog`` mode.

        Args:
            scores: One vector per group, or a callable returning them; a callable
                is evaluated once per forward pass, so gradients reach whatever
                parameters it depends on.
        """
        self._require_active()
        if not callable(scores):
            scores = list(scores)
            if len(scores) != len(self.groups) or any(
                s.shape != (g.n_channels,) for s, g in zip(scores, self.groups)
            ):
                raise ValueError("set_scores needs one vector of length n_channels per group")
        self._gates.scores = scores
        self._gates.invalidate()

    @property
    def analog_scores(self) -> list[torch.Tensor] | Callable[[], Sequence[torch.Tensor]] | None:
        """What :meth:`set_scores` last set (vectors or the callable), None before any call.

        Lets a method set gate values for a while and put the previous ones back.
        """
        return self._gates.scores

    def count(self, masks: Sequence[torch.Tensor] | None = None) -> tuple[int, int]:
        """Params and MACs per sample that the finalized model would have.

        Computed analytically (no model is rebuilt). Params equal fvcore's count of
        the finalized model exactly; MACs agree with fvcore up to the ops fvcore
        counts outside conv/linear/norm layers (pooling, upsampling).
        """
        masks = self._gates.masks if masks is None else self._validate_masks(masks)
        return self.cost.count(masks)

    # -- finishing --------------------------------------------------------------
    def _eval_forward(self):
        with eval_mode(self.model), torch.no_grad():
            return self.model(*self._args)

    def finalize(self, verify: bool = True, rtol: float = 1e-4) -> nn.Module:
        """Remove the closed channels through torch-pruning and every attnprune hook.

        Args:
            verify: Compare the binary-gated output with the pruned model's output on
                the example inputs (eval mode) and raise if they differ.
            rtol: Tolerance of that check, relative to the output's scale.

        Returns:
            The same model object, now a plain smaller ``nn.Module``. Its parameters
            are new tensors: build the optimizer after finalizing.

        Raises:
            EquivalenceError: ``verify`` found the pruned model differs (the model is
                pruned already; this indicates an unsupported architecture).
        """
        self._require_active()
        masks = self.masks()
        reference = None
        if verify:
            self._gates.mode, old = "binary", self._gates.mode
            self._gates.invalidate()
            reference = self._eval_forward()
            self._gates.mode = old
        self._detach()
        self.pruning_history = remove_channels(self.graph, self.groups, masks)
        self._state = "finalized"
        if verify:
            ok, err = outputs_close(reference, self._eval_forward(), rtol)
            if not ok:
                raise EquivalenceError(
                    f"the pruned model differs from the gated model by {err:.2e} (relative); "
                    f"{type(self.model).__name__} is not gated exactly by attnprune: please report it"
                )
        return self.model

    def _detach(self) -> None:
        self._gates.remove()
        _ACTIVE.pop(self.model, None)

    def remove(self) -> None:
        """Remove every hook and restore the train/eval mode of every submodule.

        The model is then exactly as before :func:`instrument`. Safe to call twice.
        """
        if self._state != "active":
            return
        self._detach()
        _restore_modes(self._modes)
        self._state = "removed"

    def __enter__(self) -> Instrumented:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.remove()
        return False

    def __repr__(self) -> str:
        return (
            f"Instrumented({type(self.model).__name__}, groups={len(self.groups)}, "
            f"mode={self.mode!r}, state={self._state!r})"
        )


def instrument(model: nn.Module, example_inputs, ignored_layers=None) -> Instrumented:
    """Put one gate on every prunable channel group of ``model`` (in place, hooks only).

    Args:
        model: A CNN that torch-pruning can trace.
        example_inputs: One batch the model accepts (a tensor or tuple of inputs).
        ignored_layers: Modules or qualified names whose output channels are kept.
            The model's output layers are always kept.

    Returns:
        An :class:`Instrumented` object, also usable as a context manager that
        removes the hooks on exit unless the model was finalized.

    Raises:
        UnsupportedModelError: torch-pruning cannot trace the model, or no
            prunable group remains.
        ValueError: ``example_inputs`` do not fit the model, or ``ignored_layers``
            names a module the model does not have.
    """
    return Instrumented(model, example_inputs, ignored_layers)
