"""The ``attnprune`` command line: prune, export, bench and report.

Examples:
    Prune ResNet-20 on Fashion-MNIST to half its parameters, writing the model,
    its ONNX export and a report into ``run/``::

        attnprune prune --model resnet20 --ratio 0.5 --method paam --out run

    List the methods, their papers and options (types, defaults, one line each)::

        attnprune methods
        attnprune methods paam

    A method's options are typed flags (``attnprune prune --method paam --help``
    lists them with their defaults)::

        attnprune prune --method paam --lr 0.01 --steps-per-epoch 50 --lam none --out run

    Re-export, time against the unpruned architecture, regenerate the report::

        attnprune export --model-file run/model.pt --out run/model_b.onnx
        attnprune bench --pruned run/model.pt --batch-sizes 1,8 --markdown run/bench.md
        attnprune report --report run/report.json

Exit codes: 0 on success, 2 for a bad argument (the message names it and the
valid choices), 1 for other failures (a file that cannot be written: one line, no traceback),
130 when interrupted.

Modules: :mod:`~attnprune.cli.parser` (the parser),
:mod:`~attnprune.cli.method_flags` (typed flags from the option schema),
:mod:`~attnprune.cli.prune_command`, :mod:`~attnprune.cli.weights` (``--weights``),
:mod:`~attnprune.cli.deploy_commands` (export, bench, report),
:mod:`~attnprune.cli.shapes` (``--input-shape``), :mod:`~attnprune.cli.methods_command`,
:mod:`~attnprune.cli.wording` (library messages in CLI words) and :mod:`~attnprune.cli.common`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from .common import PROG, CLIError, os_error_message
from .parser import build_parser, method_in
from .wording import cli_wording

__all__ = ["main", "build_parser", "CLIError"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``attnprune`` command.

    Args:
        argv: Arguments without the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit code: 0 on success, 2 for a bad argument, 1 for another failure,
        130 when interrupted.
    """
    from ..errors import AttnpruneError
    from ..train.pipeline import DEFAULT_METHOD

    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(method_in(argv, DEFAULT_METHOD))
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
        print(f"{PROG}: error: {cli_wording(str(exc))}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as exc:  # bad budget, options, model, data
        print(f"{PROG}: error: {cli_wording(str(exc))}", file=sys.stderr)
        return 2
    except AttnpruneError as exc:
        print(f"{PROG}: error: {type(exc).__name__}: {cli_wording(str(exc))}", file=sys.stderr)
        return 1
    except OSError as exc:  # a folder or file that cannot be written or read
        print(f"{PROG}: error: {os_error_message(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
