"""What every ``attnprune`` subcommand shares: the error type, argument types, devices, model files."""

from __future__ import annotations

import argparse
import sys

from ..errors import AttnpruneError

__all__ = [
    "PROG",
    "CLIError",
    "info",
    "positive_int",
    "nonneg_int",
    "int_list",
    "parse_device",
    "model_kind",
    "build_model_from_spec",
    "read_model_info",
    "load_model_file",
    "input_shape",
    "os_error_message",
]

PROG = "attnprune"


class CLIError(AttnpruneError):
    """A bad command-line argument; printed as ``attnprune: error: ...`` with exit code 2."""


def info(args: argparse.Namespace, message: str) -> None:
    """A status line on stderr, unless ``--quiet``."""
    if not getattr(args, "quiet", False):
        print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def _int_at_least(minimum: int):
    """An argparse type: an int >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an int >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an int >= {minimum}, got {value}")
        return value

    return parse


#: argparse type: an int >= 1.
positive_int = _int_at_least(1)
#: argparse type: an int >= 0.
nonneg_int = _int_at_least(0)


def int_list(text: str) -> list[int]:
    """argparse type: comma-separated ints >= 1 (``1,3,28,28``)."""
    try:
        values = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"must be comma-separated ints >= 1 such as 1,3,28,28, got {text!r}")
    return values


def parse_device(text: str | None):
    """``--device``: a torch device (default: cuda if available, else cpu)."""
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


def model_kind(spec: str, flag: str = "--model") -> str:
    """``"name"`` or ``"factory"`` (see :func:`attnprune.models.model_spec_kind`); CLIError otherwise."""
    from ..models import model_spec_kind

    try:
        return model_spec_kind(spec)
    except ValueError as exc:
        raise CLIError(f"{flag}: {exc}") from None


def build_model_from_spec(spec: str, num_classes: int, in_channels: int, flag: str = "--model"):
    """The dense model of ``spec`` and the constructor kwargs to record (CLIError on failure)."""
    from ..models import build_from_spec

    model_kind(spec, flag)
    try:
        return build_from_spec(spec, num_classes, in_channels)
    except TypeError as exc:
        raise CLIError(f"{flag}: calling {spec!r} failed: {exc}") from None


def read_model_info(path: str, flag: str) -> dict:
    """The header of a model file (CLIError naming ``flag`` when it is missing or not one)."""
    from ..deploy.serialize import read_info

    try:
        return read_info(path)
    except FileNotFoundError:
        raise CLIError(f"{flag}: model file not found: {path}") from None
    except ValueError as exc:
        raise CLIError(f"{flag}: {exc}") from None


def load_model_file(path: str, flag: str, base: str | None):
    """A pruned model from ``path``; a user-defined base needs ``--base`` (never imported implicitly)."""
    from ..deploy.serialize import load
    from ..models import is_factory_spec

    recorded = read_model_info(path, flag)["base"]
    if base is None and (recorded is None or is_factory_spec(recorded)):
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


def input_shape(args: argparse.Namespace, header: dict | None) -> list[int]:
    """``--input-shape``, else the example shape recorded in the model file (batch 1)."""
    if args.input_shape is not None:
        return args.input_shape
    shape = header.get("example_shape") if header else None
    if isinstance(shape, list) and shape and all(isinstance(d, int) for d in shape):
        return [1, *shape[1:]]
    raise CLIError("--input-shape is required: the model file records no example input shape (e.g. 1,3,224,224)")


def os_error_message(exc: OSError) -> str:
    """One line for a failed file operation: what failed, on which path, and why."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.filename is not None:
        return f"{reason}: {exc.filename}" + (f" -> {exc.filename2}" if exc.filename2 is not None else "")
    return reason
