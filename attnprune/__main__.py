"""``python -m attnprune``: the command line (see :mod:`attnprune.cli`)."""

from .cli import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
