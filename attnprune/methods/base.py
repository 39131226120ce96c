"""The life cycle every pruning method follows, its config, and the registry.

A method is an object with a fixed life cycle (compare ``torch.ao.pruning``'s
``prepare -> step -> convert``):

1. :meth:`PruningMethod.attach` to an :class:`~attnprune.Instrumented` model:
   create the method's own parameters and hooks (it owns exactly those);
2. :meth:`~PruningMethod.phases` tells the schedule runner what to train before
   channels are removed; in every training step the runner calls
   :meth:`~PruningMethod.before_step`, adds :meth:`~PruningMethod.regularizer` to
   the task loss, and calls :meth:`~PruningMethod.after_step`;
3. :meth:`~PruningMethod.scores` gives one score per channel of every group, and
   :meth:`~PruningMethod.select` turns them into keep-masks meeting the budget;
4. on success only, :meth:`~PruningMethod.commit` writes what the method learned
   into the model's weights (e.g. ASWL's attention scales; default: nothing);
5. :meth:`~PruningMethod.detach` removes everything the method added and never
   changes a weight (it is also the only call on an error path); the pipeline
   then removes the closed channels and fine-tunes.

:class:`PruningMethod` is an abstract base class: a method implements
:meth:`~PruningMethod.scores` at least; everything else has a default. Methods
use the core through its public names only (:mod:`attnprune.core`: the cost
model's :meth:`~attnprune.core.cost.CostModel.dense` /
:meth:`~attnprune.core.cost.CostModel.removed`, :mod:`attnprune.core.budget`'s
``select_channels``, ``tolerance``, ``ramp``, ``check_reachable``,
:mod:`attnprune.core.filters`, and :class:`~attnprune.Instrumented`'s public
methods and properties).
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn

from ..core.budget import BudgetResult, check_ratio, check_round_to, check_target, select_channels
from ..core.instrument import Instrumented
from .options import option, validate

__all__ = [
    "TrainConfig",
    "Phase",
    "Context",
    "Budget",
    "PruningMethod",
    "register_method",
    "get_method",
    "available_methods",
    "make_config",
    "METHODS",
]

OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True)
class TrainConfig:
    """Options shared by every method (CPU-sized defaults).

    Attributes:
        warmup_epochs: Dense training before the method starts (skipped with
            ``trained=True``).
        finetune_epochs: Training after channels are removed.
        lr: Learning rate of the CNN weights (SGD with momentum by default).
        finetune_lr: Learning rate of fine-tuning (default: ``lr``).
        optimizer: ``"sgd"`` or ``"adam"`` for the CNN weights.
        momentum: SGD momentum.
        weight_decay: Weight decay of the CNN weights.
        steps_per_epoch: Cap on batches per epoch (None: the whole loader).
    """

    warmup_epochs: int = option(1, low=0)
    finetune_epochs: int = option(1, low=0)
    lr: float = option(0.05, low=0, low_open=True)
    finetune_lr: float | None = option(None, low=0, low_open=True)
    optimizer: str = option("sgd", choices=OPTIMIZERS)
    momentum: float = option(0.9, low=0, high=1, high_open=True)
    weight_decay: float = option(5e-4, low=0)
    steps_per_epoch: int | None = option(None, low=1)

    def __post_init__(self):
        validate(self)


@dataclass
class Phase:
    """One stretch of training in the schedule.

    Attributes:
        name: Shown in progress bars and the report's history.
        epochs: Passes over the loader.
        gates: Gate mode during the phase (``off``, ``analog``, ``binary``).
        train_model: Whether the CNN's weights train.
        train_method: Whether the method's own parameters train.
        lr: Learning rate of the CNN's weights.
        method_lr: Learning rate of the method's parameters.
        optimizer: ``"sgd"`` or ``"adam"`` for the CNN's weights.
        method_optimizer: Optimiser of the method's parameters.
        bn_eval: Run BatchNorm in eval mode (statistics used and left untouched).
        cycle: Index of the AN/CNN cycle the phase belongs to, if any.
    """

    name: str
    epochs: int
    gates: str = "off"
    train_model: bool = True
    train_method: bool = False
    lr: float = 0.05
    method_lr: float = 1e-3
    optimizer: str = "sgd"
    method_optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    bn_eval: bool = False
    cycle: int | None = None


@dataclass
class Context:
    """What a method may need from the training set-up.

    Attributes:
        batches: Callable returning an iterator of ``(inputs, targets)`` on the
            model's device (for methods that score with gradients).
        loss_fn: The task loss.
        seed: The run's seed (None: unseeded).
        steps_per_epoch: Training steps in one epoch, when known.
    """

    batches: Callable | None = None
    loss_fn: Callable | None = None
    seed: int | None = None
    steps_per_epoch: int | None = None


@dataclass(frozen=True)
class Budget:
    """What the user asked for: ``ratio`` of ``target`` removed, ``round_to`` channels."""

    ratio: float
    target: str = "params"
    round_to: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "ratio", check_ratio(self.ratio))
        check_target(self.target)
        object.__setattr__(self, "round_to", check_round_to(self.round_to))


class PruningMethod(abc.ABC):
    """Abstract base class of the pruning methods; subclasses implement :meth:`scores`.

    Register a subclass with :func:`register_method` (which sets ``name``) and give
    it a ``config_class`` (a frozen :class:`TrainConfig` subclass whose fields are
    :func:`~attnprune.methods.options.option` declarations).

    Attributes:
        normalize: How :meth:`select` makes scores of different groups comparable
            (see :mod:`attnprune.core.budget`); ``None`` for scores trained on one scale.
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type] = TrainConfig
    #: One-line citation of the method's paper (``attnprune methods`` shows it; docs/methods.md
    #: has the full references).
    paper: ClassVar[str] = ""
    normalize: ClassVar[str | None] = "mean"
    #: Whether the method removes whole channels (False: it zeroes weights, e.g. ASWL).
    structured: ClassVar[bool] = True
    #: Attributes saved by :meth:`state_dict` besides the parameters: whatever the
    #: method changes during training (counters, controller values, thresholds).
    state_attributes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config=None, **options):
        if config is not None and options:
            raise ValueError("pass either a config object or keyword options, not both")
        self.config = config if config is not None else make_config(type(self), options)
        self.inst: Instrumented | None = None
        self.budget: Budget | None = None
        self.handles: list = []

    # -- life cycle -------------------------------------------------------------
    def attach(self, inst: Instrumented, budget: Budget, context: Context | None = None) -> None:
        """Attach to an instrumented model; subclasses extend :meth:`setup`."""
        if self.inst is not None:
            raise RuntimeError(f"{self.name} is already attached")
        self.inst = inst
        self.budget = budget
        self.context = context or Context()
        self.setup()

    def setup(self) -> None:
        """Create the method's parameters and hooks (called by :meth:`attach`)."""

    def parameters(self) -> list[nn.Parameter]:
        """The method's own trainable parameters."""
        return []

    def phases(self, trained: bool = False) -> list[Phase]:
        """Training phases before channels are removed."""
        c = self.config
        if trained or c.warmup_epochs == 0:
            return []
        return [self.cnn_phase("warmup", c.warmup_epochs)]

    def cnn_phase(self, name: str, epochs: int, **kw) -> Phase:
        """A phase that trains the CNN's weights with the config's optimiser."""
        c = self.config
        return Phase(name=name, epochs=epochs, lr=kw.pop("lr", c.lr), optimizer=c.optimizer,
                     momentum=c.momentum, weight_decay=c.weight_decay, **kw)

    def start_phase(self, phase: Phase) -> None:
        """Called when a phase starts: set gate modes and values."""
        self.inst.mode = phase.gates

    def before_step(self, phase: Phase, step: int) -> None:
        """Called before every training step."""

    def regularizer(self, phase: Phase) -> torch.Tensor | None:
        """Extra loss term added to the task loss (None: nothing)."""
        return None

    def after_step(self, phase: Phase, step: int) -> None:
        """Called after every optimiser step."""

    @abc.abstractmethod
    def scores(self) -> list[torch.Tensor]:
        """One score per channel of every group, in root index space (higher = keep)."""

    def select(self) -> BudgetResult:
        """Keep-masks meeting the budget, from :meth:`scores`."""
        return self.select_at(self.budget.ratio)

    def select_at(self, ratio: float, scores: list[torch.Tensor] | None = None) -> BudgetResult:
        """Keep-masks removing ``ratio`` of the budget's target, from :meth:`scores`.

        For methods that prune in steps (a ramp, an iterative schedule): the budget's
        target, rounding and the method's :attr:`normalize` with another ratio.
        ``ratio <= 0`` keeps every channel.

        Args:
            ratio: Fraction of the budget's target to remove.
            scores: :meth:`scores` when the caller has them already (computed once).
        """
        b = self.budget
        if ratio <= 0:
            masks = [torch.ones(g.n_channels, dtype=torch.bool) for g in self.inst.groups]
            return BudgetResult(masks, 0.0, *self.inst.cost.count(masks), threshold=float("-inf"))
        return select_channels(self.inst.cost, self.scores() if scores is None else scores, ratio, b.target,
                               round_to=b.round_to, normalize=self.normalize)

    def report(self) -> dict:
        """Method-specific fields for the report."""
        return {}

    def commit(self, selection: BudgetResult) -> None:
        """Write what the method learned into the model's weights (success path only).

        Called once, after :meth:`select` and before :meth:`detach`, only when the
        run succeeds; an error path calls :meth:`detach` alone. Default: nothing.
        """

    def detach(self) -> None:
        """Remove every hook and parameter the method added. Safe to call twice.

        Never changes the model's weights (that is :meth:`commit`).
        """
        for h in self.handles:
            h.remove()
        self.handles = []

    def state_dict(self) -> dict:
        """The method's state, for checkpoints.

        Returns:
            ``{"p0": ..., "p1": ...}`` (copies of :meth:`parameters`, in order) plus
            ``{"attr.<name>": value}`` for every name in :attr:`state_attributes`
            that the method has (copies; numbers, strings, tensors, budget results,
            and lists, tuples and dicts of them).
        """
        state = {f"p{i}": p.detach().clone() for i, p in enumerate(self.parameters())}
        for name in self.state_attributes:
            if hasattr(self, name):
                state[f"attr.{name}"] = _encode_state(getattr(self, name))
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` into this method, attached to the same model.

        Raises:
            ValueError: The state has another number or shape of parameters.
        """
        params = self.parameters()
        saved = [k for k in state if k.startswith("p") and k[1:].isdigit()]
        if len(saved) != len(params):
            raise ValueError(f"{self.name}: the state has {len(saved)} parameters, the method {len(params)}")
        with torch.no_grad():
            for i, p in enumerate(params):
                value = state[f"p{i}"]
                if tuple(value.shape) != tuple(p.shape):
                    raise ValueError(f"{self.name}: parameter {i} has shape {tuple(p.shape)}, "
                                     f"the state {tuple(value.shape)}")
                p.copy_(value)
        for name in self.state_attributes:
            key = f"attr.{name}"
            if key in state:
                setattr(self, name, _decode_state(state[key], getattr(self, name, None)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"


def _encode_state(value):
    """A detached copy of ``value`` that ``torch.load(weights_only=True)`` reads back."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, BudgetResult):
        return {"__budget_result__": True, **{f.name: _encode_state(getattr(value, f.name))
                                              for f in dataclasses.fields(value)}}
    if isinstance(value, dict):
        return {k: _encode_state(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_encode_state(v) for v in value)
    return value


def _decode_state(value, current=None):
    """Inverse of :func:`_encode_state`; tensors go to ``current``'s device and dtype."""
    if isinstance(value, torch.Tensor):
        if isinstance(current, torch.Tensor):
            return value.to(device=current.device, dtype=current.dtype, copy=True)
        return value.clone()
    if isinstance(value, dict):
        if value.get("__budget_result__"):
            return BudgetResult(**{k: _decode_state(v) for k, v in value.items() if k != "__budget_result__"})
        return {k: _decode_state(v, current.get(k) if isinstance(current, dict) else None) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        like = current if isinstance(current, (list, tuple)) and len(current) == len(value) else [None] * len(value)
        return type(value)(_decode_state(v, c) for v, c in zip(value, like))
    return value


METHODS: dict[str, type[PruningMethod]] = {}


def register_method(name: str) -> Callable[[type[PruningMethod]], type[PruningMethod]]:
    """Class decorator adding a method to the registry; a duplicate name raises."""

    def deco(cls):
        if name in METHODS:
            raise ValueError(f"a pruning method named {name!r} is already registered ({METHODS[name].__name__})")
        cls.name = name
        METHODS[name] = cls
        return cls

    return deco


def available_methods() -> list[str]:
    """Registered method names, sorted."""
    return sorted(METHODS)


def get_method(name: str) -> type[PruningMethod]:
    """The method class registered under ``name``."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid methods: {available_methods()}")
    return METHODS[name]


def make_config(method_cls: type[PruningMethod], options: dict):
    """Build a method's config from keyword options, rejecting unknown ones."""
    cfg_cls = method_cls.config_class
    valid = [f.name for f in dataclasses.fields(cfg_cls)]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for method {method_cls.name!r}; valid options: {sorted(valid)}"
        )
    return cfg_cls(**options)
