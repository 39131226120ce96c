"""Deprecated: attnprune 0.1's path of :mod:`attnprune.deploy.serialize` (save and load of pruned models)."""

from ._deprecated import alias

alias(__name__, "attnprune.deploy.serialize")
