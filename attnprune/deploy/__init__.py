"""Deployment: fvcore metrics, ONNX export, the ONNX Runtime benchmark, and
weights-only serialisation of pruned models.

Modules: ``metrics`` (params and MACs through fvcore), ``export`` (ONNX export with
a parity check), ``ort_session`` (ONNX Runtime sessions with fixed threading),
``bench`` and ``bench_result`` (interleaved latency rounds and their tables),
``machine`` (CPU model, vector extensions, thread counts and versions of the
machine a number was measured on), ``serialize`` (save/load of pruned models;
``_rebuild`` replays a pruning history on the base architecture).
"""
