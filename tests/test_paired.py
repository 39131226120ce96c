"""Paired statistics (attnprune.report.paired) on numbers worked by hand."""

from __future__ import annotations

import math

import pytest

from attnprune.report.paired import T975, paired_difference, t_quantile


def test_tie_worked_by_hand():
    # a - b = [1, 0, 1]; mean = 2/3; deviations 1/3, -2/3, 1/3; squares 1/9 + 4/9 + 1/9 = 2/3;
    # variance (n - 1 = 2) = 1/3; sd = 0.577350; se = sd / sqrt(3) = 1/3;
    # t(0.975, df 2) = 4.302653; half-width = 4.302653 / 3 = 1.434218;
    # interval (0.666667 - 1.434218, 0.666667 + 1.434218) = (-0.767551, 2.100884): contains 0, a tie.
    c = paired_difference([92.0, 91.5, 93.0], [91.0, 91.5, 92.0])
    assert c.n == 3
    assert c.mean == pytest.approx(2 / 3)
    assert c.sd == pytest.approx(0.5773503, abs=1e-6)
    assert c.half_width == pytest.approx(1.434218, abs=1e-6)
    assert (c.low, c.high) == (pytest.approx(-0.767551, abs=1e-6), pytest.approx(2.100884, abs=1e-6))
    assert (c.wins, c.ties, c.losses) == (2, 1, 0)
    assert c.verdict == "tie"


def test_better_and_worse_worked_by_hand():
    # a - b = [2, 3, 4, 3]; mean 3; deviations -1, 0, 1, 0; squares sum 2; variance 2/3;
    # sd = 0.816497; se = sd / 2 = 0.408248; t(0.975, df 3) = 3.182446; half-width 1.299228;
    # interval (1.700772, 4.299228): above 0, "better"; the same pairs swapped are "worse".
    a, b = [72.0, 70.5, 71.0, 69.0], [70.0, 67.5, 67.0, 66.0]
    c = paired_difference(a, b)
    assert c.mean == pytest.approx(3.0)
    assert c.sd == pytest.approx(0.816497, abs=1e-6)
    assert c.half_width == pytest.approx(1.299228, abs=1e-6)
    assert c.low == pytest.approx(1.700772, abs=1e-6)
    assert (c.wins, c.ties, c.losses, c.verdict) == (4, 0, 0, "better")
    r = paired_difference(b, a)
    assert r.mean == pytest.approx(-3.0) and r.high == pytest.approx(-1.700772, abs=1e-6)
    assert (r.wins, r.losses, r.verdict) == (0, 4, "worse")


def test_pairing_matters():
    # the same values unpaired would overlap; paired, the constant difference 0.5 has sd 0
    c = paired_difference([90.0, 80.0, 70.0], [89.5, 79.5, 69.5])
    assert c.sd == pytest.approx(0.0, abs=1e-9) and c.verdict == "better"


@pytest.mark.parametrize("a, b, match", [
    ([1.0], [0.0], "at least 2 pairs"),
    ([1.0, 2.0], [0.0], "same length"),
    ([1.0, float("nan")], [0.0, 1.0], "non-finite"),
    ([1.0, 2.0], [0.0, float("inf")], "non-finite"),
    ("ab", [0.0, 1.0], "sequence of numbers"),
])
def test_bad_input(a, b, match):
    with pytest.raises(ValueError, match=match):
        paired_difference(a, b)


def test_t_quantile_fallbacks():
    assert t_quantile(4) == T975[4]
    assert t_quantile(35) == T975[30]  # between table entries: the smaller df (wider)
    assert t_quantile(10_000) == pytest.approx(1.96, abs=1e-3)
    with pytest.raises(ValueError, match="df"):
        t_quantile(0)


def test_table_against_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df, q in T975.items():
        assert q == pytest.approx(stats.t.ppf(0.975, df), abs=1e-6), df
    for df in (31, 45, 70, 110):  # conservative between entries, never narrower
        assert t_quantile(df) >= stats.t.ppf(0.975, df)
        assert t_quantile(df) - stats.t.ppf(0.975, df) < 0.02
    assert math.isclose(t_quantile(500), stats.norm.ppf(0.975), abs_tol=1e-6)
