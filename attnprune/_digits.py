"""Printing fractions with enough digits: 0.999999 must not read "1.000"."""

from __future__ import annotations

__all__ = ["fraction_texts"]


def fraction_texts(*values: float, decimals: int = 3, most: int = 9) -> list[str]:
    """``values`` printed with the fewest decimals (at least ``decimals``) that keep them honest.

    Digits are added, up to ``most``, until no value that is not exactly 0 or 1
    prints as 0 or 1, and values that differ print differently.

    Example:
        >>> fraction_texts(0.98, 0.5)
        ['0.980', '0.500']
        >>> fraction_texts(0.999999, 0.97)
        ['0.999999', '0.970000']
    """
    for d in range(decimals, most + 1):
        texts = [f"{v:.{d}f}" for v in values]
        edge = any(float(t) in (0.0, 1.0) and float(v) not in (0.0, 1.0) for t, v in zip(texts, values))
        merged = len(set(texts)) < len(set(float(v) for v in values))
        if not edge and not merged:
            return texts
    return [f"{v:.{most}f}" for v in values]
