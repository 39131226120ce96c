"""attnprune: learn which channels to remove from a CNN, then remove them.

The user-facing call is :func:`attnprune.prune`. Underneath it, :func:`instrument`
puts one learned gate on every coupled channel group that torch-pruning's
dependency graph finds, so that a model with closed gates computes exactly what
the physically pruned model computes.
"""

__version__ = "0.2.0"

from .core.budget import BudgetResult, select_channels
from .core.instrument import Instrumented, instrument
from .deploy.bench import benchmark
from .deploy.export import export_onnx
from .errors import AttnpruneError, BudgetError, DistillationError, EquivalenceError, UnsupportedModelError
from .methods import Budget, Context, PruningMethod, available_methods, get_method, register_method
from .methods.importance import LearnedImportance
from .train.distill import Distillation
from .train.pipeline import DEFAULT_METHOD, PruneReport, PruneResult, prune
from .train.runner import Runner, TrainingDivergedError, evaluate

__all__ = [
    "__version__",
    "prune",
    "PruneResult",
    "PruneReport",
    "DEFAULT_METHOD",
    "Distillation",
    "instrument",
    "Instrumented",
    "LearnedImportance",
    "select_channels",
    "BudgetResult",
    "Budget",
    "Context",
    "PruningMethod",
    "available_methods",
    "get_method",
    "register_method",
    "Runner",
    "evaluate",
    "AttnpruneError",
    "BudgetError",
    "EquivalenceError",
    "UnsupportedModelError",
    "DistillationError",
    "TrainingDivergedError",
    "export_onnx",
    "benchmark",
]
