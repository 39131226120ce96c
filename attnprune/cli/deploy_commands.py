"""``attnprune export``, ``bench`` and ``report``: work on the files ``attnprune prune`` wrote."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import CLIError, build_model_from_spec, input_shape, load_model_file, model_kind, read_model_info
from .shapes import check_input_shape, onnx_input_shape

__all__ = ["run_export", "run_bench", "run_report"]


def run_export(args: argparse.Namespace) -> int:
    """The ``export`` subcommand: model.pt -> ONNX with a parity check."""
    import torch

    from ..deploy.export import export_onnx

    shape = input_shape(args, read_model_info(args.model_file, "--model-file"))
    model = load_model_file(args.model_file, "--model-file", args.base)
    check_input_shape(shape, model, "--model-file")
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    try:
        path = export_onnx(model, x, args.out, dynamic_batch=not args.static_batch, opset=args.opset)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    print(f"wrote {path}")
    return 0


def _bench_entry(spec: str, flag: str, base: str | None, num_classes: int, in_channels: int):
    p = Path(spec)
    if p.suffix.lower() == ".onnx":
        if not p.is_file():
            raise CLIError(f"{flag}: ONNX file not found: {spec}")
        return p
    if p.suffix.lower() in (".pt", ".pth") or p.is_file():
        return load_model_file(spec, flag, base)
    model_kind(spec, flag)
    model, _ = build_model_from_spec(spec, num_classes, in_channels, flag)
    return model.eval()


def run_bench(args: argparse.Namespace) -> int:
    """The ``bench`` subcommand: dense vs. pruned with ONNX Runtime."""
    import torch

    from .._files import write_text
    from ..deploy.bench import benchmark
    from ..deploy.serialize import load_base
    from ..models import is_factory_spec

    pruned_is_file = Path(args.pruned).suffix.lower() != ".onnx"
    header = read_model_info(args.pruned, "--pruned") if pruned_is_file else None
    if header is None and args.input_shape is None:
        if not Path(args.pruned).is_file():
            raise CLIError(f"--pruned: ONNX file not found: {args.pruned}")
        shape = onnx_input_shape(args.pruned)
        if shape is None:
            raise CLIError(f"--input-shape is required: the input of {args.pruned} has dynamic dimensions "
                           "besides the batch (e.g. --input-shape 1,3,224,224)")
    else:
        shape = input_shape(args, header)
    kw = (header or {}).get("base_kwargs", {})
    num_classes = args.num_classes or kw.get("num_classes") or 10
    in_channels = shape[1] if len(shape) > 1 else 3
    pruned = _bench_entry(args.pruned, "--pruned", args.base, num_classes, in_channels)
    if args.dense is not None:
        dense = _bench_entry(args.dense, "--dense", args.base, num_classes, in_channels)
    elif header is not None:
        if args.base is None and (header["base"] is None or is_factory_spec(header["base"])):
            raise CLIError(f"--dense or --base is required: {args.pruned} records no registered base name")
        try:
            dense = load_base(args.pruned, base=args.base)
        except ValueError as exc:
            raise CLIError(f"--dense is required: {exc}") from None
    else:
        raise CLIError("--dense is required when --pruned is an .onnx file")
    for flag, entry in (("--pruned", pruned), ("--dense", dense)):
        check_input_shape(shape, entry, flag)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    try:
        result = benchmark({"dense": dense, "pruned": pruned}, x, batch_sizes=args.batch_sizes,
                           threads=args.threads, rounds=args.rounds, warmup=args.warmup,
                           provider=args.provider)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    md = result.to_markdown()
    print(md)
    if args.json:
        result.to_json(args.json)
    if args.markdown:
        write_text(args.markdown, md + "\n")
    return 0


def run_report(args: argparse.Namespace) -> int:
    """The ``report`` subcommand: print or regenerate a report from report.json."""
    from ..report.markdown import read_report, render_markdown, write_report

    try:
        report = read_report(args.report)
    except (FileNotFoundError, ValueError) as exc:
        raise CLIError(f"--report: {exc}") from None
    bench = None
    if args.bench:
        p = Path(args.bench)
        if not p.is_file():
            raise CLIError(f"--bench: file not found: {args.bench}")
        try:
            bench = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise CLIError(f"--bench: {args.bench} is not JSON: {exc}") from None
    if args.out:
        try:
            md = write_report(report, args.out, bench=bench)
        except ValueError as exc:
            raise CLIError(f"--out/--bench: {exc}") from None
        print(f"wrote {md}")
    else:
        try:
            print(render_markdown(report, bench=bench), end="")
        except ValueError as exc:
            raise CLIError(f"--bench: {exc}") from None
    return 0
