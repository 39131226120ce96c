"""Library messages in command-line words: ``pass --download``, not ``pass download=True``.

The library's errors name its keyword arguments; printed by the CLI they name the
flags instead (:func:`cli_wording`, applied to every ``attnprune: error:`` line).
"""

from __future__ import annotations

import re

__all__ = ["API_TO_CLI", "cli_wording"]

API_TO_CLI: tuple[tuple[str, str], ...] = (
    ("pass download=True", "pass --download"),
    ("resume=True needs checkpoint_dir", "--resume needs --checkpoint-dir"),
    ("or resume=False to start over", "or leave out --resume to start over"),
    ("resume=False", "no --resume"),
    ("resume=True", "--resume"),
    ("trained=True", "--trained"),
    ("pretrained=False", "no --pretrained"),
    ("download=True", "--download"),
)
"""Phrases of library messages and their command-line form, replaced in this order."""

_ARGUMENTS = ("checkpoint_dir", "train_subset", "test_subset", "round_to", "batch_size", "image_size",
              "val_fraction", "input_shape", "num_workers")
_ARGUMENT_RE = re.compile(r"(?<![\w.\-])(" + "|".join(_ARGUMENTS) + r")\b")
_FLAG_OF = {"num_workers": "workers"}


def cli_wording(message: str) -> str:
    """``message`` with the library's argument names replaced by the CLI's flags.

    Example:
        >>> cli_wording("pass download=True to fetch them")
        'pass --download to fetch them'
        >>> cli_wording("train_subset=70000 exceeds the 60000 samples available")
        '--train-subset=70000 exceeds the 60000 samples available'
    """
    for api, cli in API_TO_CLI:
        message = message.replace(api, cli)

    def flag(m: re.Match) -> str:
        name = _FLAG_OF.get(m.group(1), m.group(1))
        return "--" + name.replace("_", "-")

    return _ARGUMENT_RE.sub(flag, message)
