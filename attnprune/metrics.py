"""Deprecated: attnprune 0.1's path of :mod:`attnprune.deploy.metrics` (fvcore params and MACs)."""

from ._deprecated import alias

alias(__name__, "attnprune.deploy.metrics")
