"""The ``attnprune`` command line: prune, export, bench and report.

Examples:
    Prune ResNet-20 on Fashion-MNIST to half its parameters, writing the model,
    its ONNX export and a report into ``run/``::

        attnprune prune --model resnet20 --ratio 0.5 --method paam --out run

    Re-export, time against the unpruned architecture, regenerate the report::

        attnprune export --model-file run/model.pt --out run/model_b.onnx
        attnprune bench --pruned run/model.pt --batch-sizes 1,8 --markdown run/bench.md
        attnprune report --report run/report.json

Exit codes: 0 on success, 2 for a bad argument (the message names it and the
valid choices), 1 for other failures, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

__all__ = ["main", "build_parser", "CLIError"]

PROG = "attnprune"


class CLIError(Exception):
    """A bad command-line argument; printed as ``attnprune: error: ...`` with exit code 2."""


# --------------------------------------------------------------------------- #
# Argument types
# --------------------------------------------------------------------------- #
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an int >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an int >= 1, got {value}")
    return value


def _nonneg_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an int >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an int >= 0, got {value}")
    return value


def _int_list(text: str) -> list[int]:
    try:
        values = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be comma-separated ints >= 1 such as 1,3,28,28, got {text!r}"
        ) from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"must be comma-separated ints >= 1 such as 1,3,28,28, got {text!r}")
    return values


def _option(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"must be KEY=VALUE (e.g. lr=0.01), got {text!r}")
    try:
        value = ast.literal_eval(raw.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        value = raw.strip()
    return key, value


# --------------------------------------------------------------------------- #
# Helpers
# --------------------------------------------------------------------------- #
def _info(args: argparse.Namespace, message: str) -> None:
    if not getattr(args, "quiet", False):
        print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def _model_kind(spec: str, flag: str = "--model") -> str:
    """``"name"`` or ``"factory"``; raises :class:`CLIError` for anything else."""
    from .deploy.serialize import resolve_factory
    from .models import MODELS, torchvision_model_names

    if ":" in spec:
        try:
            resolve_factory(spec)
        except ValueError as exc:
            raise CLIError(f"{flag}: {exc}") from None
        return "factory"
    if spec in MODELS or spec in torchvision_model_names():
        return "name"
    raise CLIError(
        f"{flag}: unknown model {spec!r}; valid choices: the package's models "
        f"({', '.join(MODELS)}), any torchvision classification model name (e.g. resnet18, "
        "mobilenet_v2, vgg11_bn; see attnprune.models.torchvision_model_names()), or a "
        "factory written module:function"
    )


def _build(spec: str, kind: str, num_classes: int, in_channels: int) -> tuple[Any, dict]:
    """The dense model, and the constructor kwargs to record for reloading."""
    from .deploy.serialize import _call_factory, resolve_factory
    from .models import build_model

    kwargs = {"num_classes": num_classes, "in_channels": in_channels}
    if kind == "name":
        return build_model(spec, **kwargs), kwargs
    factory = resolve_factory(spec)
    try:
        model = _call_factory(factory, kwargs, f"the model factory {spec!r}")
    except TypeError as exc:
        raise CLIError(f"--model: calling {spec!r} failed: {exc}") from None
    import inspect

    try:
        params = inspect.signature(factory).parameters
        accepts_all = any(p.kind is p.VAR_KEYWORD for p in params.values())
        recorded = {k: v for k, v in kwargs.items() if accepts_all or k in params}
    except (TypeError, ValueError):
        recorded = kwargs
    return model, recorded


def _parse_device(text: str | None):
    import torch

    if text is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise CLIError(f"--device: invalid device {text!r}; valid examples: cpu, cuda, cuda:0") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device: {text!r} requested but CUDA is not available; use --device cpu")
    return device


class _MappedLoader:
    """Wraps a loader, transforming each batch's inputs (channel expansion, resize)."""

    def __init__(self, loader, fn: Callable):
        self.loader = loader
        self.fn = fn

    def __iter__(self):
        for x, y in self.loader:
            yield self.fn(x), y

    def __len__(self) -> int:
        return len(self.loader)


def _input_transform(expand_rgb: bool, size: int | None) -> Callable | None:
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


def _subset(dataset, n: int | None, seed: int, flag: str):
    import torch
    from torch.utils.data import Subset

    if n is None:
        return dataset
    if n > len(dataset):
        raise CLIError(f"{flag}: {n} exceeds the {len(dataset)} samples available")
    index = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n]
    return Subset(dataset, index.tolist())


def _image_folder_loaders(args: argparse.Namespace):
    import torch
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    root = Path(args.data)
    missing = [s for s in ("train", "val") if not (root / s).is_dir()]
    if not root.is_dir() or missing:
        raise CLIError(
            f"--data: {args.data!r} is neither 'fashion-mnist' nor a folder with train/ and val/ "
            f"ImageFolder subfolders (missing: {', '.join(missing) if root.is_dir() else 'the folder itself'})"
        )
    size = args.image_size or 224
    tf = transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor()])
    try:
        train = datasets.ImageFolder(str(root / "train"), transform=tf)
        val = datasets.ImageFolder(str(root / "val"), transform=tf)
    except (FileNotFoundError, RuntimeError) as exc:
        raise CLIError(f"--data: {exc}") from None
    if train.classes != val.classes:
        raise CLIError(
            f"--data: train/ and val/ must hold the same class folders; "
            f"train: {train.classes}, val: {val.classes}"
        )
    train_set = _subset(train, args.train_subset, args.seed, "--train-subset")
    val_set = _subset(val, args.test_subset, args.seed, "--test-subset")
    train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True,
                              generator=torch.Generator().manual_seed(args.seed))
    val_loader = DataLoader(val_set, batch_size=args.batch_size, shuffle=False)
    return train_loader, val_loader, len(train.classes), 3


def _loaders(args: argparse.Namespace):
    """``(train, eval, num_classes, in_channels)`` for ``--data``."""
    if args.data != "fashion-mnist":
        return _image_folder_loaders(args)
    from .data import NUM_CLASSES, DatasetNotFoundError, fashion_mnist_loaders

    try:
        train, test = fashion_mnist_loaders(
            args.data_root, batch_size=args.batch_size, train_subset=args.train_subset,
            test_subset=args.test_subset, seed=args.seed,
        )
    except DatasetNotFoundError as exc:
        raise CLIError(f"--data-root: {exc}") from None
    except ValueError as exc:
        raise CLIError(str(exc).replace("train_subset", "--train-subset").replace("test_subset", "--test-subset")) from None
    return train, test, NUM_CLASSES, 1


def _load_weights(model, path: str) -> None:
    import torch

    p = Path(path)
    if not p.is_file():
        raise CLIError(f"--weights: file not found: {path}")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise CLIError(f"--weights: cannot read {path} with torch.load(weights_only=True): {exc}") from None
    if isinstance(state, dict) and "format" in state and "pruning_history" in state:
        raise CLIError(f"--weights: {path} is a pruned attnprune model; --weights expects a dense state dict")
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CLIError(f"--weights: {path} must hold a state dict, got {type(state).__name__}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CLIError(f"--weights: {path} does not fit the model: {str(exc).splitlines()[0]}") from None


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


def _input_shape(args: argparse.Namespace, info: dict | None) -> list[int]:
    if args.input_shape is not None:
        return args.input_shape
    shape = info.get("example_shape") if info else None
    if isinstance(shape, list) and shape and all(isinstance(d, int) for d in shape):
        return [1, *shape[1:]]
    raise CLIError("--input-shape is required: the model file records no example input shape (e.g. 1,3,224,224)")


def _read_info(path: str, flag: str) -> dict:
    from .deploy.serialize import read_info

    try:
        return read_info(path)
    except FileNotFoundError:
        raise CLIError(f"{flag}: model file not found: {path}") from None
    except ValueError as exc:
        raise CLIError(f"{flag}: {exc}") from None


def _load_model(path: str, flag: str, base: str | None):
    from .deploy.serialize import load

    info = _read_info(path, flag)
    recorded = info["base"]
    if base is None and (recorded is None or ":" in recorded):
        hint = "--base module:function" if recorded is None else f"--base {recorded}"
        raise CLIError(
            f"{flag}: {path} was saved with a user-defined base architecture "
            f"({recorded or 'not recorded'}); pass {hint} to rebuild it (factories named in a "
            "file are never imported automatically)"
        )
    try:
        return load(path, base=base)
    except ValueError as exc:
        raise CLIError(f"{flag}: {exc}") from None


# --------------------------------------------------------------------------- #
# Subcommands
# --------------------------------------------------------------------------- #
def _cmd_prune(args: argparse.Namespace) -> int:
    import torch

    from .train import pipeline as api
    from .core.budget import check_ratio, check_round_to
    from .deploy.export import export_onnx
    from .deploy.serialize import save
    from .methods import get_method, make_config
    from .models import needs_rgb
    from ._files import umask_mode as _umask_mode
    from .report.markdown import write_report

    if args.resume and not args.checkpoint_dir:
        raise ValueError("--resume needs --checkpoint-dir (the folder holding checkpoint.pt)")
    out = Path(args.out)
    _check_out_folder(out, args.overwrite)
    options: dict[str, Any] = {}
    for key, value in args.option or []:
        if key in options:
            raise CLIError(f"--option: {key} given twice")
        options[key] = value
    for flag, key in (("--warmup-epochs", "warmup_epochs"), ("--finetune-epochs", "finetune_epochs")):
        value = getattr(args, key)
        if value is not None:
            if key in options:
                raise CLIError(f"{flag} and --option {key}=... both given; use one")
            options[key] = value
    # Validate everything cheap before loading data or training.
    try:
        check_ratio(args.ratio)
    except ValueError as exc:
        raise CLIError(f"--ratio: {exc}") from None
    try:
        check_round_to(args.round_to)
    except ValueError as exc:
        raise CLIError(f"--round-to: {exc}") from None
    try:
        make_config(get_method(args.method), options)
    except (TypeError, ValueError) as exc:
        raise CLIError(f"--option: {exc}") from None
    kind = _model_kind(args.model)
    device = _parse_device(args.device)

    _info(args, f"loading data ({args.data})")
    train, test, num_classes, in_channels = _loaders(args)
    model, base_kwargs = _build(args.model, kind, num_classes, in_channels)
    if args.weights:
        _load_weights(model, args.weights)
    expand = kind == "name" and in_channels == 1 and needs_rgb(args.model)
    size = args.image_size if args.data == "fashion-mnist" else None
    fn = _input_transform(expand, size)
    if fn is not None:
        train, test = _MappedLoader(train, fn), _MappedLoader(test, fn)
    first = next(iter(train))[0]
    example = first[:1].detach().cpu()

    _info(args, f"pruning {args.model} with {args.method}: remove {100 * args.ratio:g}% of {args.target}")
    result = api.prune(
        model, train, ratio=args.ratio, method=args.method, target=args.target,
        example_inputs=example, eval_loader=test, device=device, round_to=args.round_to,
        trained=args.trained, seed=args.seed, progress=not args.quiet,
        checkpoint_dir=args.checkpoint_dir, resume=args.resume, **options,
    )
    history = getattr(result, "pruning_history", None)
    if history is None:
        raise RuntimeError("this attnprune's prune() does not return pruning_history; cannot save model.pt")
    pruned = result.model.to("cpu").eval()

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        save(pruned, tmp / "model.pt", base=args.model, base_kwargs=base_kwargs,
             pruning_history=history, example_inputs=example)
        _info(args, "exporting model.onnx (with an ONNX Runtime parity check)")
        export_onnx(pruned, example, tmp / "model.onnx")
        write_report(result.report, tmp)
        from . import __version__

        command = {k: v for k, v in vars(args).items() if k != "func"}
        (tmp / "command.json").write_text(
            json.dumps({"attnprune_version": __version__, "torch": torch.__version__, "args": command},
                       indent=2, default=str) + "\n", encoding="utf-8")
        os.chmod(tmp, _umask_mode(0o777))
        _publish(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(result.report.summary())
    print(f"wrote {out}/: model.pt, model.onnx, report.md, report.json")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    import torch

    from .deploy.export import export_onnx

    info = _read_info(args.model_file, "--model-file")
    shape = _input_shape(args, info)
    model = _load_model(args.model_file, "--model-file", args.base)
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
        return _load_model(spec, flag, base)
    from .models import build_model

    _model_kind(spec, flag)
    if ":" in spec:
        model, _ = _build(spec, "factory", num_classes, in_channels)
        return model.eval()
    return build_model(spec, num_classes=num_classes, in_channels=in_channels).eval()


def _cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from .deploy.bench import benchmark
    from .deploy.serialize import load_base

    pruned_is_file = Path(args.pruned).suffix.lower() != ".onnx"
    info = _read_info(args.pruned, "--pruned") if pruned_is_file else None
    shape = _input_shape(args, info)
    kw = (info or {}).get("base_kwargs", {})
    num_classes = args.num_classes or kw.get("num_classes") or 10
    in_channels = shape[1] if len(shape) > 1 else 3
    pruned = _bench_entry(args.pruned, "--pruned", args.base, num_classes, in_channels)
    if args.dense is not None:
        dense = _bench_entry(args.dense, "--dense", args.base, num_classes, in_channels)
    elif info is not None:
        if args.base is None and (info["base"] is None or ":" in info["base"]):
            raise CLIError(f"--dense or --base is required: {args.pruned} records no registered base name")
        try:
            dense = load_base(args.pruned, base=args.base)
        except ValueError as exc:
            raise CLIError(f"--dense is required: {exc}") from None
    else:
        raise CLIError("--dense is required when --pruned is an .onnx file")
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
        p = Path(args.markdown)
        p.parent.mkdir(parents=True, exist_ok=True)
        from .report.markdown import _write_text

        _write_text(p, md + "\n")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .report.markdown import read_report, render_markdown, write_report

    try:
        report = read_report(args.report)
    except FileNotFoundError as exc:
        raise CLIError(f"--report: {exc}") from None
    except ValueError as exc:
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


# --------------------------------------------------------------------------- #
# Parser
# --------------------------------------------------------------------------- #
def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``attnprune`` command (one subparser per subcommand)."""
    from . import __version__
    from .train.pipeline import DEFAULT_METHOD
    from .core.budget import TARGETS
    from .deploy.export import PROVIDERS
    from .methods import available_methods

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Learn which channels of a CNN to remove, remove them, export and benchmark the result.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("prune", help="prune a model and write model.pt, model.onnx and a report",
                       description="Prune a model on a dataset; write model.pt, model.onnx, report.json, "
                                   "report.md and figures into --out (atomically: all or nothing).")
    p.add_argument("--model", default="resnet20",
                   help="resnet20/32/44/56/110, any torchvision classification name (resnet18, "
                        "mobilenet_v2, ...) or a factory module:function called with the num_classes and "
                        "in_channels it accepts (default: %(default)s)")
    p.add_argument("--weights", metavar="FILE", help="dense state dict to load into the model before pruning")
    p.add_argument("--data", default="fashion-mnist",
                   help="'fashion-mnist' or a folder with train/ and val/ ImageFolder subfolders (default: %(default)s)")
    p.add_argument("--data-root", metavar="DIR", help="folder holding the Fashion-MNIST IDX files "
                   "(default: $ATTNPRUNE_DATA, /usr/share/datasets/fashion-mnist, the cache)")
    p.add_argument("--image-size", type=_positive_int, metavar="N",
                   help="resize images to NxN (ImageFolder default 224; Fashion-MNIST default 28)")
    p.add_argument("--train-subset", type=_positive_int, metavar="N", help="use N training samples")
    p.add_argument("--test-subset", type=_positive_int, metavar="N", help="use N evaluation samples")
    p.add_argument("--batch-size", type=_positive_int, default=128, metavar="N", help="default: %(default)s")
    p.add_argument("--ratio", type=float, default=0.5,
                   help="fraction of --target to remove, in (0, 1) (default: %(default)s)")
    p.add_argument("--method", choices=available_methods(), default=DEFAULT_METHOD,
                   help="pruning method (default: %(default)s)")
    p.add_argument("--target", choices=list(TARGETS), default="params", help="default: %(default)s")
    p.add_argument("--round-to", type=_positive_int, metavar="N", help="keep a multiple of N channels per group")
    p.add_argument("--warmup-epochs", type=_nonneg_int, metavar="N", help="dense training epochs before pruning")
    p.add_argument("--finetune-epochs", type=_nonneg_int, metavar="N", help="training epochs after removal")
    p.add_argument("--option", type=_option, action="append", metavar="KEY=VALUE",
                   help="a method option (repeatable), e.g. --option lr=0.01 --option steps_per_epoch=50; "
                        "values are Python literals, else strings")
    p.add_argument("--trained", action="store_true",
                   help="the model is trained already (e.g. loaded with --weights): skip the warm-up; "
                        "no weights are downloaded")
    p.add_argument("--pretrained", dest="trained", action="store_true",
                   help="deprecated alias of --trained")
    p.add_argument("--seed", type=_nonneg_int, default=0, help="default: %(default)s")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available, else cpu)")
    p.add_argument("--checkpoint-dir", metavar="DIR",
                   help="write a checkpoint here at every epoch end (outside --out, so it survives a failure)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --checkpoint-dir")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (must be empty or new)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars or status messages")
    p.set_defaults(func=_cmd_prune)

    p = sub.add_parser("export", help="export a saved model.pt to ONNX",
                       description="Reload a model.pt and export it to ONNX with an ONNX Runtime parity check.")
    p.add_argument("--model-file", required=True, metavar="FILE", help="a model.pt written by 'attnprune prune'")
    p.add_argument("--out", required=True, metavar="FILE", help="destination .onnx file")
    p.add_argument("--input-shape", type=_int_list, metavar="N,C,H,W",
                   help="example input shape (default: the one recorded in the model file, batch 1)")
    p.add_argument("--base", metavar="SPEC", help="base architecture (name or module:function) when the "
                   "file was saved with a user-defined one")
    p.add_argument("--opset", type=_positive_int, help="ONNX opset (default: the exporter's)")
    p.add_argument("--static-batch", action="store_true", help="fixed batch size instead of a dynamic batch axis")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("bench", help="time dense vs. pruned with ONNX Runtime",
                       description="Time the dense and pruned models with ONNX Runtime in interleaved rounds.")
    p.add_argument("--pruned", required=True, metavar="FILE", help="model.pt (or .onnx) of the pruned model")
    p.add_argument("--dense", metavar="SPEC",
                   help="model.pt, .onnx, a model name or module:function (default: the unpruned "
                        "architecture recorded in --pruned, randomly initialised)")
    p.add_argument("--base", metavar="SPEC", help="base architecture for files saved with a user-defined one")
    p.add_argument("--input-shape", type=_int_list, metavar="N,C,H,W",
                   help="example input shape (default: recorded in --pruned)")
    p.add_argument("--num-classes", type=_positive_int, metavar="N",
                   help="classes of a --dense given by name (default: recorded in --pruned, else 10)")
    p.add_argument("--batch-sizes", type=_int_list, default=[1], metavar="B1,B2",
                   help="batch sizes to time, e.g. 1,8 (default: 1)")
    p.add_argument("--threads", type=_positive_int, metavar="N", help="intra-op threads (default: all usable CPUs)")
    p.add_argument("--rounds", type=_positive_int, default=15, metavar="N", help="default: %(default)s")
    p.add_argument("--warmup", type=_nonneg_int, default=3, metavar="N", help="untimed calls (default: %(default)s)")
    p.add_argument("--provider", choices=list(PROVIDERS), default="cpu", help="default: %(default)s")
    p.add_argument("--json", metavar="FILE", help="also write the full result as JSON")
    p.add_argument("--markdown", metavar="FILE", help="also write the tables as Markdown")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("report", help="print or regenerate a report from report.json",
                       description="Print the Markdown summary of a report.json, or regenerate report.md "
                                   "and figures into --out.")
    p.add_argument("--report", required=True, metavar="FILE", help="report.json written by 'attnprune prune'")
    p.add_argument("--out", metavar="DIR", help="write report.json, report.md and figures here instead of printing")
    p.add_argument("--bench", metavar="FILE", help="a bench JSON (attnprune bench --json) to append")
    p.set_defaults(func=_cmd_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``attnprune`` command.

    Args:
        argv: Arguments without the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit code: 0 on success, 2 for a bad argument, 1 for another failure,
        130 when interrupted.
    """
    from .errors import AttnpruneError

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or an argparse error (already printed)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except CLIError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as exc:  # bad budget, options, model, data
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except AttnpruneError as exc:
        print(f"{PROG}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
