"""Arms and grids of the quality benchmark: which method, which options, how many passes.

Every arm gets the same number of passes over the training data after its
starting point (``passes``; AN-only passes count). Baselines have every training
option pinned (so a later change of a library default changes the default arm
only); the default arm is :data:`attnprune.train.pipeline.DEFAULT_METHOD` with its
own defaults except the schedule. Every arm is pruned with ``round_to=1`` and no
per-group cap (this version has none), and uses its method's own normalisation.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import json
from dataclasses import dataclass, field

import torch

import attnprune
from attnprune.methods import Budget, Context, get_method, make_config
from attnprune.train.pipeline import DEFAULT_METHOD

__all__ = ["Arm", "arm", "variant_arm", "parse_variant", "GRIDS", "BASELINES", "WARMUP_PASSES", "phase_plan",
           "resolve_arms"]

BASELINES = ("l1", "taylor", "taylor-iterative", "slim")
#: Passes of the warm-up start (PAAM's from-scratch use).
WARMUP_PASSES = 2
#: Training options every baseline runs with, written out (today's defaults).
PINNED = dict(lr=0.05, finetune_lr=0.05, optimizer="sgd", momentum=0.9, weight_decay=5e-4, steps_per_epoch=None,
              distill=False)
PINNED_METHOD = {
    "l1": {},
    "random": {},
    "taylor": dict(taylor_batches=8),
    "taylor-iterative": dict(taylor_batches=8, prune_steps=4, ramp_fraction=0.5),
    "slim": dict(sparsity=1e-4),
}


def _schedule(method: str, passes: int, trained: bool = True) -> dict:
    """Schedule options giving ``passes`` passes after the starting point."""
    if passes < 2:
        raise ValueError(f"passes must be >= 2 (one to prune or learn, one to train), got {passes}")
    if method in ("paam", "sbf"):
        return dict(cycles=1, an_epochs=1, cnn_epochs=1, finetune_epochs=passes - 2)
    if method in ("abp", "aswl-structured"):
        return dict(joint_epochs=passes - 1, ramp_epochs=max((passes - 1) // 2, 1), finetune_epochs=1)
    if method == "slim":  # from a warm-up start its penalty runs in the warm-up itself
        return dict(sparsity_epochs=1, finetune_epochs=passes - 1) if trained else dict(finetune_epochs=passes)
    if method == "taylor-iterative":
        return dict(prune_epochs=passes // 2, finetune_epochs=passes - passes // 2)
    if method in ("l1", "taylor", "random"):
        return dict(finetune_epochs=passes)
    raise ValueError(f"no equal-passes schedule for method {method!r}")


@dataclass(frozen=True)
class Arm:
    """One arm: a name, the method it runs (``"dense"`` for the ceiling) and its options."""

    name: str
    method: str
    options: dict = field(default_factory=dict)
    trained: bool = True

    @property
    def is_ceiling(self) -> bool:
        return self.method == "dense"


def arm(name: str, passes: int, start: str = "trained") -> Arm:
    """The arm called ``name`` for ``passes`` passes after a ``start`` ("trained"/"warmup") starting point.

    Raises:
        ValueError: An unknown arm name (the message lists the valid ones).
    """
    trained = start == "trained"
    warm = {} if trained else {"warmup_epochs": WARMUP_PASSES}
    if name == "ceiling":
        return Arm(name, "dense", {"epochs": passes + (0 if trained else WARMUP_PASSES), "lr": 0.05}, trained)
    if name == "default":
        return Arm(name, DEFAULT_METHOD, {**_schedule(DEFAULT_METHOD, passes), **warm}, trained)
    if name in PINNED_METHOD or name in BASELINES:
        opts = {**PINNED, **PINNED_METHOD[name], **_schedule(name, passes, trained), **({"warmup_epochs": 0} if trained
                                                                                else warm)}
        return Arm(name, name, opts, trained)
    if name == "paam-kq":
        return Arm(name, "paam", {"variant": "kq", **_schedule("paam", passes), **warm}, trained)
    if name in ("sbf", "abp", "aswl-structured"):
        return Arm(name, name, {**_schedule(name, passes), **(warm or {"warmup_epochs": 0})}, trained)
    raise ValueError(f"unknown arm {name!r}; valid arms: {sorted(ARM_NAMES)} (and 'best-baseline' in presets)")


def parse_variant(text: str) -> tuple[str, dict]:
    """``"NAME:key=value,key=value"`` as ``(NAME, options)``; values read as JSON where they parse.

    Raises:
        ValueError: No name, a name that is already an arm, or an option without ``=``.
    """
    name, _, rest = text.partition(":")
    if not name or name in ARM_NAMES or name == "best-baseline":
        raise ValueError(f"a variant needs a new arm name before ':' (not one of {sorted(ARM_NAMES)}), got {text!r}")
    options = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ValueError(f"variant {name!r}: options are key=value, got {item!r}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return name, options


def variant_arm(name: str, options: dict, passes: int, start: str = "trained") -> Arm:
    """The default arm with some options changed (tuning on the validation split).

    ``options["method"]``, when given, names another method: a baseline with its
    pinned options, or a learned method with its equal-passes schedule; the other
    entries override that method's options (``prune()`` arguments such as
    ``distill`` or ``max_group_ratio`` included).
    """
    options = dict(options)
    method = options.pop("method", DEFAULT_METHOD)
    base = arm("default", passes, start)
    if method in PINNED_METHOD:  # a baseline keeps its pinned options (e.g. a distilled baseline)
        base = arm(method, passes, start)
    elif method != DEFAULT_METHOD:
        warm = {} if start == "trained" else {"warmup_epochs": WARMUP_PASSES}
        base = Arm(name, method, {**_schedule(method, passes), **(warm or {"warmup_epochs": 0})}, base.trained)
    return Arm(name, method, {**base.options, **options}, base.trained)


ARM_NAMES = ("ceiling", "default", "random", *BASELINES, "paam-kq", "sbf", "abp", "aswl-structured")

#: Named presets: each writes its own result file ``results/quality-<grid>.jsonl``.
GRIDS = {
    "gating": dict(model="resnet20", start="trained", target="params", seeds=[0, 1, 2, 3, 4],
                   ratios=[0.5, 0.7, 0.9],
                   arms=["ceiling", "random", "l1", "taylor", "taylor-iterative", "slim", "default"]),
    "warmup": dict(model="resnet20", start="warmup", target="params", seeds=[0, 1, 2], ratios=[0.7, 0.9],
                   arms=["default", "best-baseline", "random"]),
    "learned": dict(model="resnet20", start="trained", target="params", seeds=[0, 1, 2], ratios=[0.5, 0.7],
                    arms=["paam-kq", "sbf", "abp", "aswl-structured", "default", "best-baseline", "random"]),
    "macs": dict(model="resnet20", start="trained", target="macs", seeds=[0, 1, 2], ratios=[0.5, 0.7],
                 arms=["default", "best-baseline", "random"]),
    "resnet56": dict(model="resnet56", start="trained", target="params", seeds=[0, 1, 2], ratios=[0.5, 0.9],
                     arms=["default", "best-baseline", "random"], train_size_factor=0.5),
}


def resolve_arms(names: list[str], gating_rows: list[dict]) -> list[str]:
    """Replace ``best-baseline`` by the baseline with the best mean top-1 over the gating rows.

    Raises:
        ValueError: ``best-baseline`` is asked for and the gating grid has no baseline rows.
    """
    if "best-baseline" not in names:
        return list(names)
    means = {}
    for b in BASELINES:
        accs = [r["accuracy"] for r in gating_rows if r.get("arm") == b]
        if accs:
            means[b] = sum(accs) / len(accs)
    if not means:
        raise ValueError("'best-baseline' is resolved from the gating grid's results, which have no baseline "
                         "rows yet: run `--grid gating` first, or name the arms with --arms")
    best = max(means, key=means.get)
    return list(dict.fromkeys(best if n == "best-baseline" else n for n in names))


#: Arm options that are ``attnprune.prune`` arguments (e.g. ``max_group_ratio``), not method options.
PRUNE_ARGUMENTS = frozenset(inspect.signature(attnprune.prune).parameters) - {"options"}


def method_options(options: dict) -> dict:
    """The entries of an arm's options that configure its method (not ``prune()`` arguments)."""
    return {k: v for k, v in options.items() if k not in PRUNE_ARGUMENTS}


def phase_plan(a: Arm, model: torch.nn.Module, example: torch.Tensor, ratio: float, target: str,
               steps_per_epoch: int) -> dict:
    """Passes and the optimizer steps that change CNN weights, from the method's own phases.

    The method is attached to an instrumented copy of ``model`` only to ask it for
    its phases (``phases(trained=...)``), then detached; the fine-tuning epochs are
    added.
    """
    if a.is_ceiling:
        epochs = a.options["epochs"]
        return {"passes": epochs, "cnn_epochs": epochs, "cnn_steps": epochs * steps_per_epoch, "phases": [
            {"name": "ceiling", "epochs": epochs, "train_model": True}]}
    cls = get_method(a.method)
    config = make_config(cls, method_options(a.options))
    inst = attnprune.instrument(copy.deepcopy(model), example)
    method = cls(config)
    try:
        method.attach(inst, Budget(ratio, target), Context(steps_per_epoch=steps_per_epoch))
        phases = method.phases(trained=a.trained)
    finally:
        method.detach()
        inst.remove()
    plan = [{"name": p.name, "epochs": p.epochs, "train_model": p.train_model} for p in phases]
    plan.append({"name": "finetune", "epochs": config.finetune_epochs, "train_model": True})
    cnn_epochs = sum(p["epochs"] for p in plan if p["train_model"])
    return {"passes": sum(p["epochs"] for p in plan), "cnn_epochs": cnn_epochs,
            "cnn_steps": cnn_epochs * steps_per_epoch, "phases": plan,
            "config": dataclasses.asdict(config), "normalize": method.normalize}
