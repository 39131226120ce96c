"""``attnprune prune --weights FILE``: load a dense state dict, allowing another output layer.

Every key of the file must name a parameter or buffer of the model with the same
shape, and every one of the model's must be in the file, except for the model's
output layer (:func:`output_layer`): starting from weights trained for another
number of classes (ImageNet weights for a 10-class data set) is the usual case,
so an output layer whose shapes differ keeps its fresh initialisation and the CLI
says so. Any other difference is one error listing the keys and shapes.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from .common import CLIError

__all__ = ["output_layer", "weight_mismatches", "load_weights"]

_SHOWN = 8


def output_layer(model: nn.Module) -> str | None:
    """The name of the layer that produces the logits.

    timm models name it (``get_classifier()``); otherwise it is the last module,
    in registration order, that holds a weight of two or more dimensions (a
    torchvision model's ``fc`` or ``classifier.N``).
    """
    get = getattr(model, "get_classifier", None)
    if callable(get):
        head = get()
        for name, module in model.named_modules():
            if module is head and name:
                return name
    last = None
    for name, module in model.named_modules():
        w = getattr(module, "weight", None)
        if name and isinstance(w, nn.Parameter) and w.dim() >= 2 and not list(module.children()):
            last = name
    return last


def weight_mismatches(model: nn.Module, state: dict) -> tuple[list[str], list[str], list[str], list[str]]:
    """``(missing, unexpected, wrong_shape, head)`` keys of ``state`` against ``model``.

    ``head`` are the output layer's keys whose shapes differ (re-initialised); they
    are not in ``wrong_shape``. Every entry of ``wrong_shape`` and ``head`` reads
    ``"key: file (1000, 512), model (10, 512)"``.
    """
    own = model.state_dict()
    head_name = output_layer(model)
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong, head = [], []
    for k, v in state.items():
        if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape):
            entry = f"{k}: file {tuple(v.shape)}, model {tuple(own[k].shape)}"
            is_head = head_name is not None and k.rsplit(".", 1)[0] == head_name
            (head if is_head else wrong).append(entry)
    return missing, unexpected, wrong, head


def _listed(what: str, keys: list[str]) -> str:
    more = f", ... and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
    return f"{what} ({len(keys)}): {', '.join(keys[:_SHOWN])}{more}"


def _prefix_hint(missing: list[str], unexpected: list[str]) -> str:
    for prefix in ("module.", "model.", "_orig_mod."):
        if unexpected and all(k.startswith(prefix) for k in unexpected) and \
                {k[len(prefix):] for k in unexpected} >= set(missing):
            return (f"; every key of the file starts with {prefix!r} (a wrapped model, e.g. DataParallel, "
                    f"DistributedDataParallel or torch.compile): save the state dict without that prefix")
    return ""


def load_weights(model: nn.Module, path: str) -> list[str]:
    """Load ``path`` (``torch.load(weights_only=True)``) into ``model``.

    Returns:
        The output layer's keys left freshly initialised because their shapes
        differ (each ``"key: file (...), model (...)"``); empty when all fit.

    Raises:
        CLIError: The file is missing, unreadable, not a dense state dict, or
            differs from the model anywhere but in the output layer (the message
            lists the missing and unexpected keys and the wrong shapes).
    """
    import torch

    p = Path(path)
    if not p.is_file():
        raise CLIError(f"--weights: file not found: {path}")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        text = " ".join(str(exc).split())
        raise CLIError(f"--weights: cannot read {path} with torch.load(weights_only=True): {text}") from None
    if isinstance(state, dict) and "format" in state and "pruning_history" in state:
        raise CLIError(f"--weights: {path} is a pruned attnprune model; --weights expects a dense state dict")
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CLIError(f"--weights: {path} must hold a state dict, got {type(state).__name__}")
    missing, unexpected, wrong, head = weight_mismatches(model, state)
    if missing or unexpected or wrong:
        parts = [_listed(w, k) for w, k in (("missing keys", missing), ("unexpected keys", unexpected),
                                            ("wrong shapes", wrong)) if k]
        raise CLIError(f"--weights: {path} does not fit the model (only the output layer "
                       f"{output_layer(model)!r} may differ): {'; '.join(parts)}{_prefix_hint(missing, unexpected)}")
    skip = {entry.split(":", 1)[0] for entry in head}
    fitting = {k: v for k, v in state.items() if k not in skip}
    result = model.load_state_dict(fitting, strict=False)
    if result.unexpected_keys or set(result.missing_keys) - skip:  # pragma: no cover - checked above
        raise CLIError(f"--weights: {path} does not fit the model: {result}")
    return head
