"""Deprecated: attnprune 0.1's path of :mod:`attnprune.deploy.bench` (ONNX Runtime latency benchmark)."""

from ._deprecated import alias

alias(__name__, "attnprune.deploy.bench")
