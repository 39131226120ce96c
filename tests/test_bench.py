"""Tests for attnprune.deploy.bench."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch_pruning as tp
from torch import nn

from attnprune.deploy.bench import BenchResult, benchmark, environment_info
from attnprune.deploy.metrics import count_macs


def tiny_net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )


@pytest.fixture(scope="module")
def models_and_input():
    torch.manual_seed(0)
    dense = tiny_net().eval()
    x = torch.randn(2, 3, 32, 32)
    pruned = copy.deepcopy(dense)
    tp.pruner.MetaPruner(
        pruned,
        x,
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=0.5,
        ignored_layers=[pruned[-1]],
    ).step()
    return dense, pruned, x


LATENCY_KEYS = {
    "model",
    "batch_size",
    "runs_per_round",
    "median_ms",
    "p10_ms",
    "p90_ms",
    "mean_ms",
    "throughput",
    "rounds_ms",
}
PAIR_KEYS = {
    "model",
    "reference",
    "batch_size",
    "macs_ratio",
    "params_ratio",
    "speedup",
    "speedup_p10",
    "speedup_p90",
    "efficiency",
}
ENV_KEYS = {
    "machine",
    "processor",
    "cpu_model",
    "platform",
    "cpu_count",
    "usable_cpus",
    "threads",
    "provider",
    "ort_providers",
    "python",
    "torch",
    "onnx",
    "onnxruntime",
    "date",
}


def test_benchmark_json_has_every_field(models_and_input, tmp_path):
    dense, pruned, x = models_and_input
    result = benchmark(
        {"dense": dense, "pruned": pruned},
        x,
        batch_sizes=(1, 3),
        threads=1,
        rounds=2,
        warmup=1,
        workdir=tmp_path / "onnx",
    )
    assert isinstance(result, BenchResult)
    path = result.to_json(tmp_path / "out" / "bench.json")
    data = json.loads(path.read_text())
    assert data == result.to_dict()
    assert data["reference"] == "dense"

    assert set(data["models"]) == {"dense", "pruned"}
    assert data["models"]["dense"]["macs"] == count_macs(dense, x)
    assert data["models"]["pruned"]["params"] < data["models"]["dense"]["params"]
    assert (tmp_path / "onnx").is_dir() and data["models"]["pruned"]["onnx_path"].endswith(".onnx")

    assert len(data["latency"]) == 4  # 2 models x 2 batch sizes
    for rec in data["latency"]:
        assert set(rec) == LATENCY_KEYS
        assert len(rec["rounds_ms"]) == 2 and rec["runs_per_round"] >= 1
        assert 0 < rec["p10_ms"] <= rec["median_ms"] <= rec["p90_ms"]
        assert math.isclose(rec["throughput"], rec["batch_size"] * 1e3 / rec["median_ms"])

    assert [(p["model"], p["batch_size"]) for p in data["pairs"]] == [("pruned", 1), ("pruned", 3)]
    for rec in data["pairs"]:
        assert set(rec) == PAIR_KEYS
        assert rec["reference"] == "dense"
        assert rec["macs_ratio"] == pytest.approx(
            data["models"]["dense"]["macs"] / data["models"]["pruned"]["macs"]
        )
        assert rec["macs_ratio"] > 2
        lat_d = result.latency_of("dense", rec["batch_size"])["median_ms"]
        lat_p = result.latency_of("pruned", rec["batch_size"])["median_ms"]
        assert rec["speedup"] == pytest.approx(lat_d / lat_p)
        assert rec["speedup_p10"] <= rec["speedup_p90"]
        assert rec["efficiency"] == pytest.approx(rec["speedup"] / rec["macs_ratio"])
    assert result.pair("pruned", 3) == data["pairs"][1]

    env = data["environment"]
    assert ENV_KEYS <= set(env)
    assert env["threads"] == 1 and env["provider"] == "cpu"
    assert env["torch"] == torch.__version__ and env["onnxruntime"] and env["onnx"]
    assert data["settings"]["rounds"] == 2 and data["settings"]["batch_sizes"] == [1, 3]

    md = result.to_markdown()
    assert "| dense | 1 |" in md and "| pruned | 3 |" in md and "Speedup" in md


def test_benchmark_accepts_onnx_path_with_unknown_macs(models_and_input, tmp_path):
    dense, pruned, x = models_and_input
    first = benchmark({"pruned": pruned}, x, threads=1, rounds=1, warmup=0, workdir=tmp_path)
    onnx_file = first.models["pruned"]["onnx_path"]
    assert first.pairs == []

    result = benchmark(
        {"dense": dense, "pruned.onnx": onnx_file},
        x,
        batch_sizes=[2],
        threads=1,
        rounds=2,
        warmup=0,
        runs_per_round=2,
    )
    info = result.models["pruned.onnx"]
    assert info["source"] == "onnx" and info["macs"] is None and info["params"] is None
    assert result.models["dense"]["onnx_path"] is None  # temporary workdir is gone
    pair = result.pair("pruned.onnx", 2)
    assert pair["macs_ratio"] is None and pair["efficiency"] is None
    assert pair["speedup"] > 0
    assert all(rec["runs_per_round"] == 2 for rec in result.latency)
    assert "n/a" in result.to_markdown()


def test_benchmark_rejects_bad_arguments(models_and_input, tmp_path):
    dense, _, x = models_and_input
    with pytest.raises(ValueError, match=r"provider must be one of \['cpu', 'cuda'\]"):
        benchmark({"d": dense}, x, provider="tpu")
    with pytest.raises(ValueError, match="at least one entry"):
        benchmark({}, x)
    with pytest.raises(TypeError, match="dict"):
        benchmark([dense], x)
    with pytest.raises(TypeError, match=r"models\['d'\]"):
        benchmark({"d": 3}, x)
    with pytest.raises(ValueError, match=r"\.onnx"):
        benchmark({"d": str(tmp_path / "model.pt")}, x)
    with pytest.raises(FileNotFoundError):
        benchmark({"d": str(tmp_path / "missing.onnx")}, x)
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        benchmark({"d": dense}, x, rounds=0)
    with pytest.raises(ValueError, match="batch_sizes"):
        benchmark({"d": dense}, x, batch_sizes=[1, 0])
    with pytest.raises(ValueError, match="batch_sizes"):
        benchmark({"d": dense}, x, batch_sizes=[])
    with pytest.raises(TypeError, match="threads"):
        benchmark({"d": dense}, x, threads=1.5)


def test_environment_info():
    env = environment_info(threads=3, provider="cpu")
    assert ENV_KEYS <= set(env)
    assert env["threads"] == 3 and env["cpu_count"] >= 1
    json.dumps(env)
    assert environment_info()["threads"] is None


def test_machine_info_reads_the_vector_extensions(tmp_path):
    from attnprune.deploy import machine

    x86 = tmp_path / "cpuinfo"
    x86.write_text("processor\t: 0\nmodel name\t: Test CPU 9000\n"
                   "flags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512_bf16 amx_tile amx_bf16 xsave\n"
                   "processor\t: 1\nflags\t\t: fpu\n")
    assert machine.cpu_model(x86) == "Test CPU 9000"
    assert machine.vector_extensions(x86) == ["sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16",
                                              "amx_tile", "amx_bf16"]
    arm = tmp_path / "cpuinfo-arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd sve\n")
    assert machine.vector_extensions(arm) == ["asimd", "sve"]
    assert machine.vector_extensions(tmp_path / "missing") is None  # not Linux: unknown, no error
    assert machine.cpu_flags(tmp_path / "missing") is None


def test_machine_info_fields():
    import onnxruntime

    from attnprune.deploy.machine import machine_info

    info = machine_info()
    json.dumps(info)
    assert info["torch"] == torch.__version__ and info["onnxruntime"] == onnxruntime.__version__
    assert info["torch_threads"] == torch.get_num_threads() >= 1
    assert info["torch_interop_threads"] >= 1
    vec = info["cpu_vector_extensions"]
    assert vec is None or isinstance(vec, list)
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        flags = ""
    if " avx2" in flags:
        assert "avx2" in vec
    # environment_info is machine_info plus the benchmark's settings
    env = environment_info(threads=2, provider="cpu")
    assert {k: env[k] for k in ("cpu_model", "cpu_vector_extensions", "torch_threads")} == {
        k: info[k] for k in ("cpu_model", "cpu_vector_extensions", "torch_threads")}
