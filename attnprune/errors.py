"""Exceptions raised by attnprune.

Every error a user can trigger derives from :class:`AttnpruneError`, and from the
built-in exception a Python user would expect (``ValueError`` for bad arguments),
so ``except ValueError`` keeps working.
"""

__all__ = ["AttnpruneError", "UnsupportedModelError", "EquivalenceError", "BudgetError", "DatasetNotFoundError",
           "DistillationError"]


class AttnpruneError(Exception):
    """Base class of every attnprune error."""


class UnsupportedModelError(AttnpruneError, ValueError):
    """The model cannot be gated exactly (see README, "Supported architectures")."""


class EquivalenceError(AttnpruneError, RuntimeError):
    """The gated model and the physically pruned model disagree."""


class BudgetError(AttnpruneError, ValueError):
    """The requested budget cannot be met (e.g. a ratio the model cannot reach)."""


class DatasetNotFoundError(AttnpruneError, FileNotFoundError):
    """A data set (the Fashion-MNIST IDX files, an ImageFolder root) cannot be found."""


class DistillationError(AttnpruneError, ValueError):
    """A bad distillation setting, or a model whose outputs cannot be distilled (see ``prune(distill=...)``)."""
