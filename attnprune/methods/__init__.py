"""Pruning methods: one module per method, all registered by name.

Importing this package registers every built-in method; ``available_methods()``
lists them and the CLI takes its ``--method`` choices from the registry.
"""

from . import abp, aswl, aswl_structured, baselines, iterative, paam, sbf  # noqa: F401  (registration)
from .base import (
    METHODS,
    Budget,
    Context,
    Phase,
    PruningMethod,
    TrainConfig,
    available_methods,
    get_method,
    make_config,
    register_method,
)

__all__ = [
    "METHODS",
    "Budget",
    "Context",
    "Phase",
    "PruningMethod",
    "TrainConfig",
    "available_methods",
    "get_method",
    "make_config",
    "register_method",
]
