"""Argument checks of :func:`attnprune.prune`, run before any training.

Every check raises a ``TypeError`` or ``ValueError`` (or an attnprune error) that
names the argument and its valid range or choices, before the user's model is
copied or trained (see README, "Reliability").
"""

from __future__ import annotations

import os
import warnings

import torch
import torch.nn as nn

from .._batch import call_model, to_device as _to, unpack_batch
from .._ints import check_int
from .._modes import eval_mode
from .._tree import as_inputs, flatten_tensors
from ..core.budget import check_reachable as check_reachable_ratio
from ..core.instrument import Instrumented
from ..core.limits import GroupLimits
from ..deploy.channels import machine_multiple
from ..deploy.ort_session import check_provider, default_threads
from ..methods import available_methods, get_method
from ..methods.base import Budget
from . import distributed as dist_util
from .batches import dict_batch_hint

__all__ = [
    "check_model",
    "check_method_name",
    "resolve_loss_fn",
    "resolve_example_inputs",
    "model_devices",
    "resolve_device",
    "resolve_distributed",
    "check_seed",
    "check_resume",
    "resolve_trained",
    "check_iterable",
    "first_batch",
    "example_from",
    "first_targets",
    "check_feeds",
    "check_reachable",
    "check_distributed_loader",
    "resolve_round_to",
    "check_target_support",
    "check_latency_options",
]


def check_model(model) -> None:
    """``model`` is an ``nn.Module``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")


def check_method_name(method) -> str:
    """``method`` is a name (whether it is registered, :func:`~attnprune.get_method` checks)."""
    if not isinstance(method, str):
        raise TypeError(f"method must be a method name (str), one of {available_methods()}; "
                        f"got {type(method).__name__}")
    return method


def resolve_loss_fn(loss_fn):
    """``loss_fn``, checked callable; cross-entropy when None."""
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable as loss_fn(outputs, targets), got {type(loss_fn).__name__}")
    return loss_fn or nn.functional.cross_entropy


def resolve_example_inputs(example_inputs, first_x):
    """The tracing inputs: ``example_inputs`` checked, or the loader's first sample."""
    if example_inputs is None:
        return example_from(first_x)
    as_inputs(example_inputs)  # a tensor or a non-empty tuple of tensors, else TypeError
    return example_inputs


def model_devices(model: nn.Module) -> set:
    """Every device the model's parameters and buffers live on."""
    return {t.device for t in list(model.parameters()) + list(model.buffers())}


def resolve_device(device, model: nn.Module) -> torch.device:
    """The device to train on, checked; the model's own when ``device`` is None."""
    devices = model_devices(model)
    if any(d.type == "meta" for d in devices):
        raise ValueError(
            "model has parameters or buffers on the meta device, which hold no values; "
            "materialise it first (e.g. model.to_empty(device='cpu'), then load its weights)"
        )
    if device is None:
        if len(devices) > 1:
            raise ValueError(
                f"model's parameters are on several devices {sorted(str(d) for d in devices)}; "
                "pass device= (e.g. device='cuda:0') to train on one"
            )
        return devices.pop() if devices else torch.device("cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(
            f"device must be a torch.device or a name such as 'cpu' or 'cuda:0', got {device!r}"
        ) from None
    if device.type == "meta":
        raise ValueError("device must hold real values ('cpu', 'cuda', ...), got 'meta'")
    if device.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ValueError(f"device={str(device)!r} but CUDA is not available here; use device='cpu'")
        if device.index is not None and device.index >= n:
            raise ValueError(f"device={str(device)!r} but only cuda:0 to cuda:{n - 1} exist")
    return device


def resolve_distributed(distributed) -> bool:
    if distributed is None:
        return dist_util.is_active()
    if not isinstance(distributed, bool):
        raise TypeError(f"distributed must be None (automatic), True or False, got {distributed!r}")
    if distributed and not dist_util.is_active():
        raise ValueError(
            "distributed=True needs an initialised default process group with more than one process "
            "(torch.distributed.init_process_group(), e.g. under torchrun)"
        )
    return distributed


def check_seed(seed) -> None:
    """``seed`` is None or an int in torch's seed range [0, 2**64)."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64):
        raise ValueError(f"seed must be None or an int >= 0 and < 2**64 (torch's seed range), got {seed!r}")


def check_resume(resume, checkpoint_dir) -> None:
    """``resume`` is a bool, ``checkpoint_dir`` None or a path, and resuming needs the folder."""
    if not isinstance(resume, bool):
        raise TypeError(f"resume must be True or False, got {resume!r}")
    if checkpoint_dir is not None and not isinstance(checkpoint_dir, (str, os.PathLike)):
        raise TypeError(f"checkpoint_dir must be None or a path, got {type(checkpoint_dir).__name__}")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir (the folder of an earlier run's checkpoint)")


def check_iterable(name: str, value) -> None:
    try:
        iter(value)
    except TypeError:
        raise TypeError(f"{name} must be an iterable of (inputs, targets), got {type(value).__name__}") from None


def first_batch(loader):
    check_iterable("loader", loader)
    try:
        batch = next(iter(loader))
    except StopIteration:
        raise ValueError("the loader is empty; it must yield (inputs, targets) pairs") from None
    dict_batch_hint(batch)
    x, y = unpack_batch(batch)
    for t in flatten_tensors(x) + flatten_tensors(y):
        if t.device.type == "meta":
            raise ValueError(
                "the loader yields tensors on the meta device, which hold no values; "
                "it must yield real (inputs, targets) tensors (they are moved to the training device)"
            )
    return x, y


def example_from(inputs, n: int = 1):
    if isinstance(inputs, torch.Tensor):
        return inputs[:n]
    if isinstance(inputs, (tuple, list)) and inputs and all(isinstance(t, torch.Tensor) for t in inputs):
        return tuple(t[:n] for t in inputs)
    raise TypeError(
        f"the loader's inputs must be a tensor or a tuple of tensors, got {type(inputs).__name__}"
    )


def first_targets(y, n: int = 2):
    return y[:n] if isinstance(y, torch.Tensor) and y.dim() > 0 else y


def check_feeds(work: nn.Module, example_inputs, explicit: bool, first_x, first_y, loss_fn, device) -> None:
    """Feed ``example_inputs`` and two samples of the loader to the model, and the loss.

    Runs in eval mode without gradients (nothing changes); every failure names
    the argument at fault.
    """
    with eval_mode(work), torch.no_grad():
        if explicit:
            try:
                call_model(work, example_inputs)
            except Exception as exc:
                raise ValueError(
                    f"example_inputs cannot be fed to the model ({type(exc).__name__}: {exc}); "
                    "pass one batch the model accepts, e.g. torch.randn(1, 3, 224, 224)"
                ) from exc
        x1 = _to(example_from(first_x, 2), device)
        y1 = _to(first_targets(first_y), device)
        try:
            out = call_model(work, x1)
        except Exception as exc:
            raise ValueError(
                f"the loader's inputs cannot be fed to the model ({type(exc).__name__}: {exc}); "
                "the loader must yield (inputs, targets) with inputs the model accepts"
            ) from exc
        try:
            loss = loss_fn(out, y1)
        except Exception as exc:
            raise ValueError(
                f"loss_fn(outputs, targets) fails on the loader's first samples ({type(exc).__name__}: "
                f"{exc}); check the targets (class indices must lie in [0, number of outputs)) and loss_fn"
            ) from exc
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise TypeError(
                "loss_fn(outputs, targets) must return a scalar tensor, got "
                + (f"a tensor of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor)
                   else type(loss).__name__)
            )


def check_reachable(inst: Instrumented, budget: Budget, limits: GroupLimits | None = None) -> None:
    """Dry budget search with uniform scores: an unreachable ratio fails before training.

    ``limits`` (``min_keep``, ``max_group_ratio``; default: those registered on
    ``inst.cost``) are honoured as the methods' selection honours them.

    Raises:
        BudgetError: naming the largest reachable ratio.
    """
    check_reachable_ratio(inst.cost, budget.ratio, budget.target, round_to=budget.round_to, limits=limits)


def check_distributed_loader(loader, steps: int | None) -> None:
    """Every rank must run the same number of steps, or DDP waits forever."""
    all_steps = dist_util.all_gather_object(steps)
    if len(set(all_steps)) > 1:
        raise ValueError(
            f"every rank must run the same number of steps per epoch, got {all_steps} (rank order); "
            "give the loader a torch.utils.data.DistributedSampler, or set steps_per_epoch"
        )
    sampler = getattr(loader, "sampler", None)
    if not isinstance(sampler, torch.utils.data.DistributedSampler) and dist_util.is_main():
        warnings.warn(
            "prune() runs under DistributedDataParallel but the loader has no DistributedSampler: "
            "every rank trains on the whole data set", stacklevel=3,
        )


def resolve_trained(trained, pretrained) -> bool:
    """``trained``, or the deprecated ``pretrained`` alias (with a warning); both must be bools."""
    if pretrained is not None:
        warnings.warn("prune(pretrained=...) is deprecated: use trained=... (it means the model is "
                      "trained already, so the warm-up is skipped; nothing is downloaded)",
                      DeprecationWarning, stacklevel=3)
        if not isinstance(pretrained, bool):
            raise TypeError(f"pretrained must be True or False, got {pretrained!r}")
        if trained and not pretrained:
            raise ValueError("trained=True and pretrained=False contradict each other; pass trained only")
        trained = trained or pretrained
    if not isinstance(trained, bool):
        raise TypeError(f"trained must be True or False, got {trained!r}")
    return trained


def resolve_round_to(round_to, provider, structured: bool = True) -> tuple[int, dict]:
    """The channel multiple to keep: ``round_to`` itself, or for ``"auto"`` the target's.

    ``"auto"`` is :func:`attnprune.deploy.channels.channel_multiple` of ``provider``
    and this machine's CPU flags (16 with AVX-512, 8 with AVX2 or CUDA, else 4);
    for an unstructured method (no channel is removed) it is 1.

    Returns:
        ``(multiple, source)``: the int (1 = free counts) and the report's
        ``round_to_source`` (``requested``, and for ``"auto"`` ``provider`` and
        ``vector_extensions``).

    Raises:
        ValueError: ``round_to`` is neither ``"auto"`` nor a positive int, or an
            unknown ``provider``.
    """
    provider = check_provider(provider)
    if round_to is None:  # attnprune 0.1's spelling of free counts
        return 1, {"requested": None}
    if round_to == "auto" and not structured:
        return 1, {"requested": "auto", "provider": provider, "unstructured": True}
    if round_to == "auto":
        multiple, source = machine_multiple(provider)
        return multiple, {"requested": "auto", **source}
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise ValueError(f"round_to must be 'auto' (the deployment target's channel multiple) or a positive "
                         f"int (1 or None: free channel counts), got {round_to!r}")
    return round_to, {"requested": round_to}


def check_target_support(method_cls, name: str, target: str) -> None:
    """A latency target needs a structured method (its channels are removed, so latency changes).

    Raises:
        ValueError: ``target="latency"`` with an unstructured method (naming the choices).
    """
    if target == "latency" and not method_cls.structured:
        structured = [m for m in available_methods() if get_method(m).structured]
        raise ValueError(
            f"method {name!r} is unstructured (it zeroes weights, so layer shapes and latency stay the same) "
            f"and cannot serve target='latency'; use a structured method, one of {structured}"
        )


def check_latency_options(latency_batch, latency_threads) -> tuple[int, int]:
    """``latency_batch`` (an int >= 1) and ``latency_threads`` (None: every usable CPU)."""
    batch = check_int("latency_batch", latency_batch, 1)
    return batch, default_threads() if latency_threads is None else check_int("latency_threads", latency_threads, 1)
