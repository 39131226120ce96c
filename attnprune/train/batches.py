"""``prune(..., batch_fn=...)``: loaders whose batches are not ``(inputs, targets)`` pairs.

A loader of dict batches (Hugging Face style ``{"pixel_values": ..., "labels":
...}``) or of any other shape is used through ``batch_fn(batch) -> (inputs,
targets)``, applied to every batch of ``loader`` and of ``eval_loader``::

    prune(model, loader, batch_fn=lambda b: (b["pixel_values"], b["labels"]))

:class:`MappedLoader` wraps a loader so that it yields the mapped pairs; its
length and attributes (``sampler``, ``generator`` ...) are the loader's, so
seeding, ``steps_per_epoch`` and ``DistributedSampler`` work as with the loader
itself. :func:`check_batch_fn` applies it to the first batch before training.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

__all__ = ["MappedLoader", "resolve_batch_fn", "map_loader", "check_batch_fn", "dict_batch_hint"]


class MappedLoader:
    """``loader`` with ``batch_fn`` applied to every batch (length and attributes delegated).

    Args:
        loader: The user's loader.
        batch_fn: ``batch_fn(batch) -> (inputs, targets)``.
    """

    def __init__(self, loader: Iterable, batch_fn: Callable):
        self.loader = loader
        self.batch_fn = batch_fn

    def __iter__(self):
        for batch in self.loader:
            yield self.batch_fn(batch)

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str):
        if name in ("loader", "batch_fn"):  # not yet set (e.g. while unpickling)
            raise AttributeError(name)
        return getattr(self.loader, name)


def resolve_batch_fn(batch_fn) -> Callable | None:
    """``batch_fn`` checked: None or a callable.

    Raises:
        TypeError: ``batch_fn`` is not callable.
    """
    if batch_fn is not None and not callable(batch_fn):
        raise TypeError(f"batch_fn must be None or callable(batch) -> (inputs, targets), "
                        f"got {type(batch_fn).__name__}")
    return batch_fn


def map_loader(loader, batch_fn: Callable | None):
    """``loader`` itself without ``batch_fn`` (or for None), else a :class:`MappedLoader`."""
    if batch_fn is None or loader is None:
        return loader
    return MappedLoader(loader, batch_fn)


def check_batch_fn(loader: Iterable, batch_fn: Callable, name: str = "loader") -> None:
    """Apply ``batch_fn`` to the first batch of ``loader``: it must give an ``(inputs, targets)`` pair.

    Raises:
        ValueError: ``batch_fn`` fails on the batch.
        TypeError: It does not return a pair.
    """
    try:
        batch = next(iter(loader))
    except StopIteration:
        raise ValueError(f"the {name} is empty; it must yield batches") from None
    try:
        out = batch_fn(batch)
    except Exception as exc:
        raise ValueError(f"batch_fn fails on the first batch of {name} ({type(exc).__name__}: {exc}); "
                         "it must map one batch to (inputs, targets)") from exc
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        raise TypeError(f"batch_fn must return an (inputs, targets) pair, got a {type(out).__name__}"
                        + (f" of length {len(out)}" if hasattr(out, "__len__") else ""))


def dict_batch_hint(batch) -> None:
    """A dict batch without ``batch_fn``: raise an error that says to pass one.

    Raises:
        TypeError: ``batch`` is a dict without the keys ``inputs`` and ``targets``.
    """
    if isinstance(batch, dict) and not {"inputs", "targets"} <= set(batch):
        keys = ", ".join(repr(k) for k in list(batch)[:6])
        raise TypeError(f"the loader yields dict batches (keys {keys}); pass batch_fn= mapping a batch "
                        "to (inputs, targets), e.g. batch_fn=lambda b: (b['pixel_values'], b['labels'])")
