"""Deprecated: attnprune 0.1's path of :mod:`attnprune.deploy.export` (ONNX export)."""

from ._deprecated import alias

alias(__name__, "attnprune.deploy.export")
