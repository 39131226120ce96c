"""One option schema for every method config.

Each field of a method's config dataclass declares its type (the annotation), its
range or choices (:func:`option`) and its help (the class docstring's
``Attributes:`` entry). :func:`validate` checks every field from that schema, so a
new option is checked without new code; :func:`option_specs` serves the same
schema to the CLI (typed flags) and to ``attnprune methods``.

Example:
    >>> @dataclass(frozen=True)
    ... class MyConfig(TrainConfig):
    ...     '''Attributes:
    ...         temperature: Softness of the gates.'''
    ...     temperature: float = option(1.0, low=0.0, low_open=True)
    ...     def __post_init__(self):
    ...         validate(self)
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
import types
import typing
from dataclasses import dataclass
from typing import Any

__all__ = ["option", "OptionSpec", "option_specs", "validate"]

_KEY = "attnprune_option"
_KINDS = (bool, int, float, str)


@dataclass(frozen=True)
class _Bounds:
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple | None = None


def option(default: Any, *, low: float | None = None, high: float | None = None, low_open: bool = False,
           high_open: bool = False, choices: tuple | None = None) -> Any:
    """A config field with its valid range or choices.

    Args:
        default: The default value.
        low: Smallest valid value (numbers).
        high: Largest valid value (numbers).
        low_open: ``low`` itself is not valid.
        high_open: ``high`` itself is not valid.
        choices: The valid values (strings, or None where the annotation allows it).
    """
    bounds = _Bounds(low, high, low_open, high_open, tuple(choices) if choices is not None else None)
    return dataclasses.field(default=default, metadata={_KEY: bounds})


@dataclass(frozen=True)
class OptionSpec:
    """What one option accepts.

    Attributes:
        name: The field's name.
        kind: ``bool``, ``int``, ``float`` or ``str``.
        optional: Whether None is valid.
        default: The default value.
        help: One line from the config's docstring.
        low, high, low_open, high_open: The numeric range (None: unbounded).
        choices: The valid values of a choice option.
    """

    name: str
    kind: type
    optional: bool
    default: Any
    help: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple | None = None

    def describe(self) -> str:
        """The valid values in words, e.g. ``"a number > 0"`` or ``"one of ('a', 'b')"``."""
        if self.choices is not None:
            text = f"one of {self.choices}"
        elif self.kind is bool:
            text = "True or False"
        else:
            text = "an int" if self.kind is int else ("a number" if self.kind is float else "a string")
            parts = []
            if self.low is not None:
                parts.append(f"{'>' if self.low_open else '>='} {self.low:g}")
            if self.high is not None:
                parts.append(f"{'<' if self.high_open else '<='} {self.high:g}")
            if parts:
                text += " " + " and ".join(parts)
            if self.kind is float:
                text += " (finite)"
        return text + (" or None" if self.optional and (self.choices is None or None not in self.choices) else "")

    def check(self, value: Any, owner: str = "") -> None:
        """Raise ``ValueError`` naming the option when ``value`` is not valid."""
        if value is None and (self.optional or (self.choices is not None and None in self.choices)):
            return
        if not self._fits(value):
            where = f" of {owner}" if owner else ""
            raise ValueError(f"option {self.name!r}{where} must be {self.describe()}, got {value!r}")

    def _fits(self, value: Any) -> bool:
        if self.choices is not None:
            return any(value == c and type(value) is type(c) for c in self.choices)
        if self.kind is bool:
            return isinstance(value, bool)
        if isinstance(value, bool):
            return False
        if self.kind is int and not isinstance(value, int):
            return False
        if self.kind is float and not (isinstance(value, (int, float)) and math.isfinite(value)):
            return False
        if self.kind is str:
            return isinstance(value, str)
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            return False
        return True


def _kind(annotation) -> tuple[type, bool]:
    """``(kind, optional)`` of a field annotation such as ``float | None``."""
    args = typing.get_args(annotation) if isinstance(annotation, types.UnionType) or \
        typing.get_origin(annotation) is typing.Union else (annotation,)
    optional = type(None) in args
    kinds = [a for a in args if a is not type(None)]
    if len(kinds) != 1 or kinds[0] not in _KINDS:
        raise TypeError(f"a config option must be annotated bool, int, float or str (optionally | None), "
                        f"got {annotation!r}")
    return kinds[0], optional


def _docstring_help(cls) -> dict[str, str]:
    """First line of each ``Attributes:`` entry of ``cls`` and its bases."""
    found: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        doc = inspect.getdoc(klass) or ""
        if "Attributes:" not in doc:
            continue
        block = doc.split("Attributes:", 1)[1]
        entries = re.findall(r"^\s{4}(\w+): (.+?)(?=^\s{4}\w+: |\Z)", block, flags=re.M | re.S)
        for name, text in entries:
            found[name] = " ".join(text.split())
    return found


def _bounds(cls, name: str) -> _Bounds:
    """The nearest :func:`option` metadata for ``name`` along ``cls``'s MRO.

    A subclass that only changes a default (``warmup_epochs: int = 0``) keeps the
    range its base declared.
    """
    for klass in cls.__mro__:
        fields = getattr(klass, "__dataclass_fields__", {})
        if name in fields and _KEY in fields[name].metadata:
            return fields[name].metadata[_KEY]
    return _Bounds()


def option_specs(config_cls) -> list[OptionSpec]:
    """The schema of a config dataclass: one :class:`OptionSpec` per field, in order."""
    hints = typing.get_type_hints(config_cls)
    helps = _docstring_help(config_cls)
    specs = []
    for f in dataclasses.fields(config_cls):
        kind, optional = _kind(hints[f.name])
        b = _bounds(config_cls, f.name)
        specs.append(OptionSpec(f.name, kind, optional, f.default, helps.get(f.name, ""), b.low, b.high,
                                b.low_open, b.high_open, b.choices))
    return specs


def validate(config) -> None:
    """Check every field of ``config`` against its schema.

    Raises:
        ValueError: A field's value is not valid (the message names the option and
            what it accepts).
    """
    owner = type(config).__name__
    for spec in option_specs(type(config)):
        spec.check(getattr(config, spec.name), owner)
