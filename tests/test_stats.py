"""Tests of core.stats' intervals of a difference in accuracy: the paired bootstrap the transfer verdict uses, and
Newcombe's unpaired interval for accuracies whose per-example answers were not kept."""

from __future__ import annotations

import numpy as np
import pytest

from core import stats


def test_newcombe_interval_matches_the_published_examples() -> None:
    # Newcombe (1998), Statistics in Medicine 17:873-890, table II, method 10: 56/70 - 48/80 and 9/10 - 3/10.
    difference, (low, high) = stats.unpaired_difference_interval(56, 70, 48, 80)
    assert difference == pytest.approx(0.2) and (low, high) == pytest.approx((0.0524, 0.3339), abs=1e-4)
    _, interval = stats.unpaired_difference_interval(9, 10, 3, 10)
    assert interval == pytest.approx([0.1705, 0.8090], abs=1e-4)


def test_paired_interval_is_about_the_difference_on_the_same_examples() -> None:
    rng = np.random.default_rng(1)
    baseline = rng.random(200) < 0.7
    better = baseline.copy()
    better[np.flatnonzero(~baseline)[:16]] = True  # right on 16 more of the same examples, wrong on none more
    difference, (low, high) = stats.paired_difference_interval(better, baseline)
    assert difference == pytest.approx(16 / 200)
    assert 0 < low < difference < high, "never worse and 16 better out of 200: the whole interval is above 0"
    _, unpaired = stats.unpaired_difference_interval(int(better.sum()), 200, int(baseline.sum()), 200)
    assert unpaired[0] < 0 < low, "treating the same examples as independent would not see it"
    assert stats.paired_difference_interval(better, baseline) == (difference, [low, high]), "seeded"
    assert stats.paired_difference_interval(baseline, baseline) == (0.0, [0.0, 0.0])
    with pytest.raises(ValueError, match="same examples"):
        stats.paired_difference_interval([1, 0], [1, 0, 1])
