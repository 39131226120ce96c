"""Multi-process training support for :func:`attnprune.prune` (DistributedDataParallel).

:func:`attnprune.prune` trains with :class:`torch.nn.parallel.DistributedDataParallel`
when a default process group is initialised with more than one process (for
example under ``torchrun`` after ``torch.distributed.init_process_group()``). Every
rank runs the same ``prune()`` call on its own shard of the data; this module
holds the plumbing:

* :class:`JointModule` puts the model and the method's own parameters (PAAM's
  attention networks, ABP's ``m``, ASWL's attentions) into one module, so DDP
  averages the gradients of both. The runner wraps it anew for every phase (the
  trainable set changes between phases) and after the channels are removed.
* Decisions are made on rank 0 and broadcast (:func:`broadcast_object`): the
  method's state after each phase starts (PAAM's calibrated ``lam``, binary masks)
  and the final keep-masks, so every rank removes exactly the same channels.
* :func:`sync_module` copies rank 0's parameters and buffers to every rank at
  the end of each epoch. BatchNorm normalises with per-rank batch statistics
  (SyncBatchNorm is not used: it would change the module types the channel
  groups were traced with); DDP broadcasts rank 0's running statistics before
  every forward, and the final model carries rank 0's.

Every function here is a no-op (or the identity) when no process group is active.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

__all__ = [
    "is_active",
    "rank",
    "world_size",
    "is_main",
    "broadcast_object",
    "all_gather_object",
    "all_reduce_sum",
    "sync_module",
    "sync_method",
    "barrier",
    "JointModule",
    "wrap",
    "free_port",
]


def is_active() -> bool:
    """Whether a default process group with more than one process is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """True on rank 0 (and without a process group): the process that writes files."""
    return rank() == 0


def _object_device() -> torch.device | None:
    # NCCL collectives on Python objects go through the current CUDA device
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return None


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (picklable objects; tensors come back on CPU)."""
    if not is_active():
        return obj
    box = [obj if rank() == src else None]
    dist.broadcast_object_list(box, src=src, device=_object_device())
    return box[0]


def all_gather_object(obj: Any) -> list:
    """One ``obj`` per rank, in rank order, on every rank."""
    if not is_active():
        return [obj]
    out: list = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum ``values`` over ranks (in place, returned)."""
    if is_active():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def barrier() -> None:
    """Wait for every rank."""
    if is_active():
        dist.barrier()


@torch.no_grad()
def sync_module(module: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers into ``module`` on every rank."""
    if not is_active():
        return
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src=src)


def sync_method(method) -> None:
    """Rank 0's method state and gate masks on every rank (decided once, broadcast).

    Args:
        method: An attached :class:`~attnprune.PruningMethod`.
    """
    if not is_active():
        return
    inst = method.inst
    active = inst is not None and inst.active
    state = broadcast_object({"method": method.state_dict(), "masks": inst.masks() if active else None})
    method.load_state_dict(state["method"])
    if active:
        mode = inst.mode
        inst.set_masks(state["masks"])
        inst.mode = mode


class JointModule(nn.Module):
    """The model plus the method's own parameters, as one module for DDP.

    The method's parameters act through the model's gate hooks, so the forward is
    the model's; registering them here lets DDP see and average their gradients.

    Args:
        model: The (instrumented) model.
        method_parameters: The method's trainable parameters (may be empty).
    """

    def __init__(self, model: nn.Module, method_parameters: Iterable[nn.Parameter] = ()):
        super().__init__()
        self.model = model
        self.method = nn.ParameterList(list(method_parameters))

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)


def wrap(model: nn.Module, method_parameters: Iterable[nn.Parameter], device: torch.device | None):
    """DDP around :class:`JointModule` (``device_ids`` set for a CUDA device).

    Build it after freezing what does not train in the phase: DDP only reduces the
    gradients of parameters that require them when it is constructed.
    """
    from torch.nn.parallel import DistributedDataParallel

    joint = JointModule(model, method_parameters)
    kwargs = {}
    if device is not None and torch.device(device).type == "cuda":
        index = torch.device(device).index
        kwargs["device_ids"] = [index if index is not None else torch.cuda.current_device()]
    return DistributedDataParallel(joint, **kwargs)


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for tests and single-machine launches)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
