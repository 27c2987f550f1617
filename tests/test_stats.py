"""Intervals and the paired test against values computed by hand (and published tables)."""

from __future__ import annotations

import pytest

from harness.stats import mcnemar_exact, mean_class_interval, wilson_interval


def test_wilson_matches_the_published_values():
    # 8/10 and 0/10 at 95%: (0.4902, 0.9433) and (0, 0.2775), as in Newcombe (1998), table I
    assert wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson_interval(0, 0) is None
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_wilson_narrows_like_one_over_root_n():
    low, high = wilson_interval(7_000, 10_000)          # hand: 0.7 +- 1.96 * sqrt(.21 / 1e4)
    assert (low, high) == pytest.approx((0.7 - 0.00898, 0.7 + 0.00898), abs=2e-4)


def test_mean_class_interval_by_hand():
    # classes at 3/4 and 1/2: mean 0.625; Agresti-Coull variances (5/8)(3/8)/4 and (3/6)(3/6)/2,
    # sum / 2^2 = 0.0458984; half width 1.959964 * 0.2142392 = 0.419900
    low, high = mean_class_interval([3, 1], [4, 2])
    assert low == pytest.approx(0.625 - 0.419900, abs=1e-5) and high == 1.0   # clipped
    assert mean_class_interval([0, 0], [0, 0]) is None
    assert mean_class_interval([3, 1, 0], [4, 2, 0]) == (low, high)           # empty classes skipped


def test_mcnemar_exact_by_hand():
    # 1 vs 9 discordant pairs: 2 * (C(10,0) + C(10,1)) / 2^10 = 22 / 1024
    assert mcnemar_exact(1, 9) == pytest.approx(22 / 1024)
    assert mcnemar_exact(9, 1) == pytest.approx(22 / 1024)
    assert mcnemar_exact(5, 5) == 1.0                     # capped: the two tails overlap
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(0, 6) == pytest.approx(2 / 64)   # 0.03125
