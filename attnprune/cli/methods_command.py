"""``attnprune methods [NAME]``: each registered method, its paper and its options.

The options come from the method's option schema
(:func:`attnprune.methods.options.option_specs`): name (as the ``prune`` flag),
type, default, what it accepts and the first line of its docstring entry. The
paper is the method class's ``paper`` attribute.
"""

from __future__ import annotations

import argparse

from .common import CLIError
from .method_flags import flag_name
from .wording import cli_wording

__all__ = ["describe_method", "run_methods"]

_TYPES = {bool: "bool", int: "int", float: "float", str: "str"}


def _plain(text: str) -> str:
    return cli_wording(text.replace("``", "").replace(":class:", "").replace("`", "")).rstrip(".")


def _shown(value) -> str:
    return "none" if value is None else str(value)


def describe_method(name: str) -> str:
    """The text ``attnprune methods NAME`` prints for the registered method ``name``."""
    from ..methods import get_method
    from ..methods.options import option_specs

    cls = get_method(name)
    summary = (cls.__doc__ or "").strip().splitlines()
    lines = [f"{name}: {summary[0].strip() if summary else cls.__name__}",
             f"  paper: {cls.paper or 'not recorded'}"]
    specs = option_specs(cls.config_class)
    if specs:
        lines.append("  options (flags of 'attnprune prune --method " + name + "', or --option KEY=VALUE):")
    for s in specs:
        kind = _TYPES.get(s.kind, s.kind.__name__) + (" | none" if s.optional else "")
        lines.append(f"    {flag_name(s.name)} ({kind}, default {_shown(s.default)}): "
                     f"{_plain(s.help) or s.name}; {s.describe()}")
    return "\n".join(lines)


def run_methods(args: argparse.Namespace) -> int:
    """The ``methods`` subcommand: describe one method, or all of them."""
    from ..methods import available_methods

    names = available_methods()
    if args.name is not None and args.name not in names:
        raise CLIError(f"methods: unknown method {args.name!r}; valid choices: {', '.join(names)}")
    chosen = [args.name] if args.name is not None else names
    print("\n\n".join(describe_method(n) for n in chosen))
    if args.name is None:
        print("\nSee docs/methods.md for what each method learns and the full references.")
    return 0
