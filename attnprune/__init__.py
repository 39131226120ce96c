"""attnprune: learn which channels to remove from a CNN, then remove them.

The user-facing call is :func:`attnprune.prune`. Underneath it, :func:`instrument`
puts one learned gate on every coupled channel group that torch-pruning's
dependency graph finds, so that a model with closed gates computes exactly what
the physically pruned model computes.
"""

__version__ = "0.1.0"

from .errors import AttnpruneError, EquivalenceError, UnsupportedModelError
from .instrument import Instrumented, instrument

__all__ = [
    "__version__",
    "AttnpruneError",
    "EquivalenceError",
    "UnsupportedModelError",
    "Instrumented",
    "instrument",
]
