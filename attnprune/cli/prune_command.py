"""``attnprune prune``: load data and model, prune, and publish model.pt, model.onnx and a report."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .common import CLIError, build_model_from_spec, info, model_kind, parse_device
from .method_flags import DEST_PREFIX, method_options
from .weights import load_weights

__all__ = ["run_prune", "MappedLoader", "input_transform", "load_weights", "loaders", "written_files",
           "image_normalization", "distillation"]


class MappedLoader:
    """Wraps a loader, transforming each batch's inputs (channel expansion, resize)."""

    def __init__(self, loader, fn: Callable):
        self.loader = loader
        self.fn = fn

    def __iter__(self):
        for x, y in self.loader:
            yield self.fn(x), y

    def __len__(self) -> int:
        return len(self.loader)


def input_transform(expand_rgb: bool, size: int | None) -> Callable | None:
    """Resize to ``size x size`` and/or expand 1 channel to 3 (None when neither is needed)."""
    if not expand_rgb and size is None:
        return None
    import torch.nn.functional as F

    def fn(x):
        if size is not None and tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        if expand_rgb and x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return x

    return fn


def _subset_flags(exc: Exception) -> str:
    from .wording import cli_wording

    return cli_wording(str(exc))


def image_normalization(args: argparse.Namespace) -> str:
    """``--normalize``; ``auto`` is ImageNet's with ``--trained`` and a torchvision or timm model."""
    from ..models import is_factory_spec, needs_rgb

    if args.normalize != "auto":
        return args.normalize
    spec = args.model
    if is_factory_spec(spec):
        imagenet_library = spec.split(".")[0].split(":")[0] in ("torchvision", "timm")
    else:
        try:
            imagenet_library = spec.startswith("timm:") or needs_rgb(spec)
        except ValueError:
            imagenet_library = False
    return "imagenet" if args.trained and imagenet_library else "sample"


def loaders(args: argparse.Namespace):
    """``(train, eval, num_classes, in_channels)`` for ``--data``."""
    from ..data import NUM_CLASSES, DatasetNotFoundError, fashion_mnist_loaders, image_folder_loaders

    if args.data != "fashion-mnist":
        try:
            train, val, num_classes = image_folder_loaders(
                args.data, image_size=args.image_size or 224, batch_size=args.batch_size,
                train_subset=args.train_subset, test_subset=args.test_subset, seed=args.seed,
                normalize=image_normalization(args), augment=args.augment, num_workers=args.workers,
                val_fraction=args.val_fraction)
        except DatasetNotFoundError as exc:
            raise CLIError(f"--data: neither 'fashion-mnist' nor an ImageFolder root: {exc}") from None
        except ValueError as exc:
            text = _subset_flags(exc)
            raise CLIError(text if text.startswith("--") else f"--data: {text}") from None
        return train, val, num_classes, 3
    try:
        train, test = fashion_mnist_loaders(
            args.data_root, batch_size=args.batch_size, train_subset=args.train_subset,
            test_subset=args.test_subset, seed=args.seed, download=args.download, num_workers=args.workers,
        )
    except DatasetNotFoundError as exc:
        raise CLIError(f"--data-root: {exc}") from None
    except ValueError as exc:
        raise CLIError(_subset_flags(exc)) from None
    return train, test, NUM_CLASSES, 1


def _check_out_folder(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out: {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise CLIError(f"--out: {out} exists and is not empty; pass --overwrite to replace it")


def _publish(tmp: Path, out: Path) -> None:
    """Move the finished temp folder to ``out`` (replacing it when it exists)."""
    backup = None
    if out.exists():
        backup = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, backup / out.name)
    try:
        os.replace(tmp, out)
    except BaseException:
        if backup is not None:
            os.replace(backup / out.name, out)
        raise
    finally:
        if backup is not None:
            shutil.rmtree(backup, ignore_errors=True)


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """The method options: typed flags plus ``--option KEY=VALUE`` (each at most once)."""
    options = method_options(args, getattr(args, "method_specs", []))
    generic: dict[str, Any] = {}
    for key, value in args.option or []:
        if key in generic:
            raise CLIError(f"--option: {key} given twice")
        if key in options:
            raise CLIError(f"--{key.replace('_', '-')} and --option {key}=... both given; use one")
        generic[key] = value
    return {**options, **generic}


def _say_resume(args: argparse.Namespace) -> None:
    """With ``--resume``: say where the run continues from, or that it starts afresh."""
    from ..train.checkpoint import CHECKPOINT_NAME

    if not args.resume:
        return
    path = Path(args.checkpoint_dir) / CHECKPOINT_NAME
    if path.is_file():
        info(args, f"resuming from {path}")
    else:
        info(args, f"--resume: no checkpoint at {path} yet; starting from the beginning")


def distillation(args: argparse.Namespace):
    """``--distill``/``--no-distill`` and the values as :class:`attnprune.Distillation`, ``"auto"`` or None."""
    from ..errors import DistillationError
    from ..train.distill import AUTO, Distillation

    given = {k: v for k, v in (("temperature", args.distill_temperature), ("weight", args.distill_weight))
             if v is not None}
    if args.distill is False:
        if given:
            flags = " and ".join(f"--distill-{k}" for k in given)
            raise CLIError(f"{flags} given with --no-distill; drop --no-distill (or leave {flags} out)")
        return None
    if args.distill is None and not given:
        return AUTO
    try:
        return Distillation(**given)
    except DistillationError as exc:
        text = str(exc)
        for k in given:
            text = text.replace(f"distill {k}", f"--distill-{k}")
        raise CLIError(text) from None


def written_files(folder: Path) -> list[str]:
    """The files under ``folder``, relative and sorted (the final ``wrote`` line)."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def run_prune(args: argparse.Namespace) -> int:
    """The ``prune`` subcommand (see ``attnprune prune --help``)."""
    import torch

    from .. import __version__
    from .._files import umask_mode, write_text
    from ..core.budget import check_ratio, check_round_to
    from ..deploy.export import export_onnx
    from ..deploy.serialize import save
    from ..methods import get_method, make_config
    from ..models import first_conv_channels
    from ..report.markdown import write_report
    from ..train import pipeline

    if args.resume and not args.checkpoint_dir:
        raise ValueError("--resume needs --checkpoint-dir (the folder holding checkpoint.pt)")
    if args.out is None and not args.dry_run:
        raise CLIError("--out is required (the output folder), unless --dry-run")
    out = Path(args.out) if args.out is not None else None
    if out is not None:
        _check_out_folder(out, args.overwrite)
    options = _options(args)
    # Validate everything cheap before loading data or training.
    try:
        check_ratio(args.ratio)
    except ValueError as exc:
        raise CLIError(f"--ratio: {exc}") from None
    if args.round_to != "auto":
        try:
            check_round_to(args.round_to)
        except ValueError as exc:
            raise CLIError(f"--round-to: {exc}") from None
    try:
        make_config(get_method(args.method), options)
    except (TypeError, ValueError) as exc:
        raise CLIError(f"--option: {exc}") from None
    distill = distillation(args)
    model_kind(args.model)  # fail early on a bad --model
    device = parse_device(args.device)

    info(args, f"loading data ({args.data})")
    train, test, num_classes, in_channels = loaders(args)
    torch.manual_seed(args.seed)  # the initial weights follow --seed (a resumed run must start from the same ones)
    model, base_kwargs = build_model_from_spec(args.model, num_classes, in_channels)
    if args.weights:
        head = load_weights(model, args.weights)
        if head:
            info(args, f"--weights: the output layer does not fit ({'; '.join(head)}); "
                       "it keeps its fresh initialisation")
    expand = in_channels == 1 and first_conv_channels(model) == 3  # torchvision takes RGB only
    fn = input_transform(expand, args.image_size if args.data == "fashion-mnist" else None)
    if fn is not None:
        train, test = MappedLoader(train, fn), MappedLoader(test, fn)
    example = next(iter(train))[0][:1].detach().cpu()

    _say_resume(args)
    info(args, f"pruning {args.model} with {args.method}: remove {100 * args.ratio:g}% of {args.target}")
    result = pipeline.prune(
        model, train, ratio=args.ratio, method=args.method, target=args.target,
        example_inputs=example, eval_loader=test, device=device, round_to=args.round_to,
        provider=args.provider, latency_batch=args.latency_batch, latency_threads=args.latency_threads,
        trained=args.trained, seed=args.seed, progress=not args.quiet, distill=distill,
        checkpoint_dir=None if args.dry_run else args.checkpoint_dir, resume=args.resume and not args.dry_run,
        dry_run=args.dry_run, **options,
    )
    if args.dry_run:  # prune() printed the plan; nothing was trained or written
        return 0
    history = getattr(result, "pruning_history", None)
    if history is None:
        raise RuntimeError("this attnprune's prune() does not return pruning_history; cannot save model.pt")
    pruned = result.model.to("cpu").eval()

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        save(pruned, tmp / "model.pt", base=args.model, base_kwargs=base_kwargs,
             pruning_history=history, example_inputs=example)
        info(args, "exporting model.onnx (with an ONNX Runtime parity check)")
        export_onnx(pruned, example, tmp / "model.onnx")
        write_report(result.report, tmp)
        command = {k: v for k, v in vars(args).items()
                   if k not in ("func", "method_specs") and not k.startswith(DEST_PREFIX)}
        command["method_options"] = options
        write_text(tmp / "command.json", json.dumps(
            {"attnprune_version": __version__, "torch": torch.__version__, "args": command},
            indent=2, default=str) + "\n")
        os.chmod(tmp, umask_mode(0o777))
        _publish(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(result.report.summary())
    print(f"wrote {out}/: {', '.join(written_files(out))}")
    return 0
