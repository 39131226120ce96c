"""The one check of an integer argument (type and lower bound), shared by data, models and bench."""

from __future__ import annotations

__all__ = ["check_int"]


def check_int(name: str, value: object, minimum: int) -> int:
    """``value`` when it is an int (not a bool) >= ``minimum``.

    Raises:
        TypeError: ``"<name> must be an int, got <type>"``.
        ValueError: ``"<name> must be >= <minimum>, got <value>"``.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value
