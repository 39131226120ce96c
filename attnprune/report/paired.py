"""Paired statistics of two arms measured on the same seeds.

Two arms of a benchmark that start from the same checkpoint with the same seed
differ only by the method, so their per-seed difference is the quantity to judge:
:func:`paired_difference` gives its mean, standard deviation, the two-sided 95%
Student-t interval of the mean and its half-width, wins/ties/losses over the seeds,
and a verdict that is ``"better"`` or ``"worse"`` only when the interval excludes 0
(otherwise ``"tie"``).

The t quantiles come from a table (:data:`T975`, the 0.975 quantiles of Student's
t, df 1-30 and 40, 50, 60, 80, 100, 120); a df between two tabulated ones uses the
smaller df (a slightly wider, conservative interval) and a df above 120 falls back
to the normal quantile 1.96. No statistics library is needed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["T975", "PairedComparison", "paired_difference", "t_quantile", "VERDICTS"]

#: Two-sided 95% quantiles of Student's t (``t.ppf(0.975, df)``), by degrees of freedom.
T975: dict[int, float] = {
    1: 12.706204736, 2: 4.302652730, 3: 3.182446305, 4: 2.776445105, 5: 2.570581836,
    6: 2.446911851, 7: 2.364624252, 8: 2.306004135, 9: 2.262157163, 10: 2.228138852,
    11: 2.200985160, 12: 2.178812830, 13: 2.160368656, 14: 2.144786688, 15: 2.131449546,
    16: 2.119905299, 17: 2.109815578, 18: 2.100922040, 19: 2.093024054, 20: 2.085963447,
    21: 2.079613845, 22: 2.073873068, 23: 2.068657610, 24: 2.063898562, 25: 2.059538553,
    26: 2.055529439, 27: 2.051830516, 28: 2.048407142, 29: 2.045229642, 30: 2.042272456,
    40: 2.021075390, 50: 2.008559112, 60: 2.000297822, 80: 1.990063421, 100: 1.983971519,
    120: 1.979930405,
}
NORMAL975 = 1.959963985
VERDICTS = ("better", "tie", "worse")


def t_quantile(df: int) -> float:
    """The two-sided 95% Student-t quantile for ``df`` degrees of freedom.

    Args:
        df: Degrees of freedom, an int >= 1.

    Returns:
        The tabulated quantile; for an untabulated df up to 120, the one of the
        next smaller tabulated df (conservative); above 120, 1.96 (normal).

    Raises:
        ValueError: ``df`` is not an int >= 1.
    """
    if isinstance(df, bool) or not isinstance(df, int) or df < 1:
        raise ValueError(f"df must be an int >= 1, got {df!r}")
    if df in T975:
        return T975[df]
    if df > max(T975):
        return NORMAL975
    return T975[max(k for k in T975 if k < df)]


@dataclass(frozen=True)
class PairedComparison:
    """Arm ``a`` against arm ``b`` over paired values (``a - b`` per pair).

    Attributes:
        n: Number of pairs (seeds).
        mean: Mean of the paired differences ``a - b``.
        sd: Sample standard deviation of the differences (n - 1 in the denominator).
        t: The t quantile used (df = n - 1).
        low: Lower end of the 95% interval of the mean difference.
        high: Upper end of the interval.
        half_width: ``t * sd / sqrt(n)``.
        wins: Pairs where ``a`` is higher than ``b`` (by more than the tie tolerance).
        ties: Pairs within the tie tolerance.
        losses: Pairs where ``a`` is lower.
        verdict: ``"better"`` (interval above 0), ``"worse"`` (below 0) or ``"tie"``.
    """

    n: int
    mean: float
    sd: float
    t: float
    low: float
    high: float
    half_width: float
    wins: int
    ties: int
    losses: int
    verdict: str

    def to_dict(self) -> dict:
        """A JSON-serialisable dict of the fields."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _values(name: str, values: Sequence[float]) -> list[float]:
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a sequence of numbers, got {values!r}") from None
    bad = [v for v in out if not math.isfinite(v)]
    if bad:
        raise ValueError(f"{name} holds a non-finite value ({bad[0]}); every paired value must be a finite number")
    return out


def paired_difference(a: Sequence[float], b: Sequence[float], *, tie_tol: float = 1e-9) -> PairedComparison:
    """Paired comparison of ``a`` against ``b`` (one value of each per seed, same order).

    Args:
        a: Per-seed values of the arm judged (e.g. top-1 in %).
        b: Per-seed values of the arm it is compared with, paired with ``a``.
        tie_tol: Pairs with ``|a - b| <= tie_tol`` count as ties in wins/ties/losses.

    Returns:
        A :class:`PairedComparison`.

    Raises:
        ValueError: Fewer than 2 pairs, ``a`` and ``b`` of different lengths, a
            NaN or infinite value, or a negative ``tie_tol``.
    """
    a = _values("a", a)
    b = _values("b", b)
    if len(a) != len(b):
        raise ValueError(f"a and b must be paired (the same length), got {len(a)} and {len(b)} values")
    if len(a) < 2:
        raise ValueError(f"a paired comparison needs at least 2 pairs, got {len(a)}")
    if not (isinstance(tie_tol, (int, float)) and math.isfinite(tie_tol) and tie_tol >= 0):
        raise ValueError(f"tie_tol must be a number >= 0, got {tie_tol!r}")
    d = [x - y for x, y in zip(a, b)]
    n = len(d)
    mean = sum(d) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in d) / (n - 1))
    t = t_quantile(n - 1)
    half = t * sd / math.sqrt(n)
    low, high = mean - half, mean + half
    wins = sum(v > tie_tol for v in d)
    losses = sum(v < -tie_tol for v in d)
    verdict = "better" if low > 0 else "worse" if high < 0 else "tie"
    return PairedComparison(n=n, mean=mean, sd=sd, t=t, low=low, high=high, half_width=half, wins=wins,
                            ties=n - wins - losses, losses=losses, verdict=verdict)
