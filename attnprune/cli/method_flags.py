"""Typed command-line flags for a method's options, generated from its option schema.

``attnprune prune --method X`` gets one flag per field of X's config
(:func:`attnprune.methods.options.option_specs`): ``lr`` becomes ``--lr``,
``steps_per_epoch`` becomes ``--steps-per-epoch``. Each flag's help shows the
option's one-line description, what it accepts and X's default; a bool option
is ``--flag/--no-flag``; an option that may be None accepts ``none``. Values are
checked against the schema after parsing, so a bad one is reported as a single
``attnprune: error: --lr: must be ...`` line (exit code 2).

The command line is parsed in two passes: :func:`method_in` finds ``--method``
(default :data:`attnprune.DEFAULT_METHOD`), then that method's flags are added
to the parser (:func:`add_method_flags`) and the whole line is parsed.

``--option KEY=VALUE`` (attnprune 0.1) stays as the generic form: it reaches an
option whose name a prune flag already uses, and keeps 0.1 scripts working.
"""

from __future__ import annotations

import argparse
import ast
from collections.abc import Sequence
from typing import Any

from ..methods.options import OptionSpec, option_specs
from .common import CLIError

__all__ = ["DEST_PREFIX", "method_in", "flag_name", "add_method_flags", "method_options", "convert",
           "parse_option"]

DEST_PREFIX = "method_option."
"""Namespace attributes of method flags are named ``DEST_PREFIX + option name``."""

_METAVARS = {int: "INT", float: "FLOAT", str: "STR", bool: "BOOL"}


def method_in(argv: Sequence[str], default: str) -> str:
    """First pass: the ``--method`` of a ``prune`` command line (``default`` when absent).

    Only a ``prune`` command line is searched; an unknown name is returned as is
    (the full parse then reports it with the valid choices).
    """
    argv = list(argv)
    if not argv or argv[0] != "prune":
        return default
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--method", default=default)
    known, _ = first.parse_known_args(argv[1:])
    return known.method


def flag_name(option: str) -> str:
    """``"steps_per_epoch"`` -> ``"--steps-per-epoch"``."""
    return "--" + option.replace("_", "-")


def _plain(text: str) -> str:
    return text.replace("``", "").replace(":class:", "").replace("%", "%%")


def _shown(value: Any) -> str:
    return "none" if value is None else str(value)


def add_method_flags(parser: argparse.ArgumentParser, method: str, taken: set[str]) -> list[OptionSpec]:
    """Add one flag per option of ``method`` to ``parser``, in an argument group of their own.

    Args:
        parser: The ``prune`` subparser.
        method: A registered method name (unknown names add nothing).
        taken: Flags the parser has already; an option whose flag is taken gets
            none (set it with ``--option``).

    Returns:
        The specs that got a flag.
    """
    from ..methods import available_methods, get_method

    if method not in available_methods():
        return []
    cls = get_method(method)
    group = parser.add_argument_group(f"options of method {method!r} ({cls.config_class.__name__})")
    added = []
    for spec in option_specs(cls.config_class):
        flag = flag_name(spec.name)
        if flag in taken:
            continue
        what = spec.describe().replace("%", "%%")
        help_text = f"{_plain(spec.help)} [{what}; default: {_shown(spec.default)}]".lstrip()
        dest = DEST_PREFIX + spec.name
        if spec.kind is bool and not spec.optional and spec.choices is None:
            group.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=help_text)
        else:
            if spec.choices is not None:
                metavar = "{" + ",".join(_shown(c) for c in spec.choices) + "}"
            else:
                metavar = _METAVARS[spec.kind] + ("|none" if spec.optional else "")
            group.add_argument(flag, dest=dest, metavar=metavar, default=argparse.SUPPRESS, help=help_text)
        added.append(spec)
    return added


def convert(spec: OptionSpec, text: Any) -> Any:
    """The value of a flag's text, checked against ``spec``.

    Raises:
        ValueError: ``"must be <what spec accepts>, got '<text>'"``.
    """
    if not isinstance(text, str):  # a bool flag's True/False
        value = text
    elif text.strip().lower() == "none" and (spec.optional or (spec.choices is not None and None in spec.choices)):
        return None
    else:
        raw = text.strip()
        try:
            if spec.kind is bool:
                lowered = raw.lower()
                if lowered not in ("true", "false", "yes", "no", "1", "0"):
                    raise ValueError
                value = lowered in ("true", "yes", "1")
            elif spec.kind is int:
                value = int(raw)
            elif spec.kind is float:
                value = float(raw)
            else:
                value = raw
        except ValueError:
            raise ValueError(f"must be {spec.describe()}, got {text!r}") from None
    try:
        spec.check(value)
    except ValueError:
        raise ValueError(f"must be {spec.describe()}, got {text!r}") from None
    return value


def method_options(args: argparse.Namespace, specs: list[OptionSpec]) -> dict[str, Any]:
    """The options given as typed flags, converted and checked.

    Raises:
        CLIError: ``--flag: must be ..., got ...`` for the first bad value.
    """
    by_name = {s.name: s for s in specs}
    options = {}
    for dest, text in vars(args).items():
        if dest.startswith(DEST_PREFIX):
            name = dest[len(DEST_PREFIX):]
            try:
                options[name] = convert(by_name[name], text)
            except ValueError as exc:
                raise CLIError(f"{flag_name(name)}: {exc}") from None
    return options


def parse_option(text: str) -> tuple[str, Any]:
    """argparse type of ``--option KEY=VALUE``: the value is a Python literal, else a string."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"must be KEY=VALUE (e.g. lr=0.01), got {text!r}")
    try:
        value = ast.literal_eval(raw.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        value = raw.strip()
    return key, value
