"""Deprecated module paths of attnprune 0.1, kept as aliases of their new homes."""

from __future__ import annotations

import importlib
import sys
import warnings

__all__ = ["alias"]


def alias(old: str, new: str) -> None:
    """Make module ``old`` the module ``new``, with a ``DeprecationWarning``.

    Called from the old module's file, so ``import old`` keeps working (private
    names included) and names the new path once.
    """
    warnings.warn(f"{old} is deprecated since attnprune 0.2; import {new} instead",
                  DeprecationWarning, stacklevel=3)
    sys.modules[old] = importlib.import_module(new)
