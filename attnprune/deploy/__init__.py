"""Deployment: fvcore metrics, ONNX export, the ONNX Runtime benchmark, and
weights-only serialisation of pruned models."""
