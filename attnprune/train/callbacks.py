"""Per-epoch reporting of :func:`attnprune.prune`: Python ``logging`` and user callbacks.

After every training epoch (the method's phases and fine-tuning) the epoch's
:class:`~attnprune.train.runner.EpochRecord` (``phase``, ``epoch``, ``loss``,
``kept``, ``accuracy``, ``seconds``) is

* logged at level INFO to the logger ``"attnprune"`` (e.g.
  ``phase 3/6 an epoch 1/2: loss 0.512 kept 0.731 acc 88.20% (4.1s)``);
  ``logging.basicConfig(level=logging.INFO)`` shows it;
* passed to every callback of ``prune(..., callbacks=[...])`` and to
  ``on_epoch_end=``, once per epoch, as ``callback(record)``, on rank 0 only
  under DistributedDataParallel. A TensorBoard writer, for instance::

      def to_tensorboard(rec):
          writer.add_scalar(f"{rec.phase}/loss", rec.loss, rec.epoch)

An exception raised by a callback stops the run like any other error (the user's
model is untouched).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

__all__ = ["LOGGER_NAME", "logger", "resolve_callbacks", "epoch_line", "notify_epoch"]

LOGGER_NAME = "attnprune"
logger = logging.getLogger(LOGGER_NAME)


def resolve_callbacks(callbacks: Iterable[Callable] | None, on_epoch_end: Callable | None) -> list[Callable]:
    """The callbacks to call per epoch: ``callbacks`` then ``on_epoch_end``, each checked callable.

    Raises:
        TypeError: ``callbacks`` is not an iterable of callables, or
            ``on_epoch_end`` is not callable.
    """
    out: list[Callable] = []
    if callbacks is not None:
        if callable(callbacks) or isinstance(callbacks, (str, bytes)):
            raise TypeError("callbacks must be a list of callables (callbacks=[fn]); "
                            "pass a single function as on_epoch_end=fn")
        try:
            out = list(callbacks)
        except TypeError:
            raise TypeError(f"callbacks must be a list of callables, got {type(callbacks).__name__}") from None
        for i, cb in enumerate(out):
            if not callable(cb):
                raise TypeError(f"callbacks[{i}] must be callable(record), got {type(cb).__name__}")
    if on_epoch_end is not None:
        if not callable(on_epoch_end):
            raise TypeError(f"on_epoch_end must be callable(record), got {type(on_epoch_end).__name__}")
        out.append(on_epoch_end)
    return out


def epoch_line(record, epochs: int, position: tuple[int, int] | None = None) -> str:
    """One line for an epoch record: phase position, epoch, loss, kept fraction, accuracy, seconds."""
    where = f"phase {position[0]}/{position[1]} " if position is not None else ""
    line = f"{where}{record.phase} epoch {record.epoch}/{epochs}: loss {record.loss:.4f}"
    if record.kept is not None:
        line += f" kept {record.kept:.3f}"
    if record.accuracy is not None:
        line += f" acc {record.accuracy:.2f}%"
    return line + f" ({record.seconds:.1f}s)"


def notify_epoch(callbacks: list[Callable], record, epochs: int, position: tuple[int, int] | None = None, *,
                 log: bool = True) -> None:
    """Log ``record`` to the ``"attnprune"`` logger (unless ``log`` is False) and pass it to every callback."""
    if log:
        logger.info(epoch_line(record, epochs, position))
    for cb in callbacks:
        cb(record)
