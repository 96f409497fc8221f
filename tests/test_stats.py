"""Bootstrap intervals and CV against values worked out by hand."""

import math

import numpy as np
import pytest

from tokencarbon.errors import ConfigError
from tokencarbon.stats import bootstrap_ci, coefficient_of_variation


def test_percentile_interval_of_three_values_by_enumerating_all_27_resamples():
    # Values 1, 2, 6: the 27 resamples (with replacement, ordered) have sums, by how many 1s, 2s
    # and 6s they hold (count = multinomial coefficient):
    #   111 -> 3 (x1), 112 -> 4 (x3), 122 -> 5 (x3), 222 -> 6 (x1), 116 -> 8 (x3), 126 -> 9 (x6),
    #   226 -> 10 (x3), 166 -> 13 (x3), 266 -> 14 (x3), 666 -> 18 (x1); 1+3+3+1+3+6+3+3+3+1 = 27.
    # Sorted sums: index 0: 3; 1-3: 4; ...; 23-25: 14; 26: 18.
    # 95 %: quantiles 0.025 and 0.975, linear: positions 0.025 x 26 = 0.65 and 0.975 x 26 = 25.35.
    #   low sum = 3 + 0.65 x (4 - 3) = 3.65 -> mean 3.65 / 3 = 1.216667
    #   high sum = 14 + 0.35 x (18 - 14) = 15.4 -> mean 15.4 / 3 = 5.133333
    low, high = bootstrap_ci([1.0, 2.0, 6.0])
    assert low == pytest.approx(3.65 / 3)
    assert high == pytest.approx(15.4 / 3)
    # The order of the values does not matter, nor the seed (the enumeration is exact).
    assert bootstrap_ci([6.0, 1.0, 2.0], seed=7) == pytest.approx((low, high))


def test_two_values_and_a_90_percent_interval():
    # Values 10, 20: resamples 10+10, 10+20, 20+10, 20+20 -> means 10, 15, 15, 20.
    # 90 %: positions 0.05 x 3 = 0.15 -> 10 + 0.15 x 5 = 10.75; 0.95 x 3 = 2.85 -> 15 + 0.85 x 5
    # = 19.25.
    assert bootstrap_ci([10.0, 20.0], confidence=0.90) == pytest.approx((10.75, 19.25))


def test_large_samples_are_resampled_with_the_seed():
    rng = np.random.default_rng(1)
    x = rng.normal(100.0, 5.0, size=30)
    a = bootstrap_ci(x, seed=3)
    assert a == bootstrap_ci(x, seed=3)  # seeded: reproducible
    assert a != bootstrap_ci(x, seed=4)
    # The mean's standard error is ~5 / sqrt(30) = 0.91; the 95 % interval spans ~ +-1.96 x 0.91
    # = +-1.8 around the sample mean; allow 1.2 to 2.4 each side.
    m = x.mean()
    assert 1.2 < m - a[0] < 2.4 and 1.2 < a[1] - m < 2.4


def test_one_value_has_no_interval_and_bad_inputs_are_named():
    assert all(math.isnan(v) for v in bootstrap_ci([3.0]))
    with pytest.raises(ConfigError, match="confidence"):
        bootstrap_ci([1.0, 2.0], confidence=95)
    with pytest.raises(ValueError, match="finite"):
        bootstrap_ci([1.0, float("nan")])


def test_coefficient_of_variation():
    # 1, 2, 6: mean 3; deviations -2, -1, 3; squares 4 + 1 + 9 = 14; / (3 - 1) = 7; sd 2.6458;
    # CV = 2.6458 / 3 = 0.88192.
    assert coefficient_of_variation([1.0, 2.0, 6.0]) == pytest.approx(7**0.5 / 3)
    assert math.isnan(coefficient_of_variation([1.0]))


def test_exact_only_up_to_n_resamples():
    # 1, 2, 6 with n_resamples 20 (< 27): random draws, seeded, so no longer the exact interval.
    low, high = bootstrap_ci([1.0, 2.0, 6.0], n_resamples=20, seed=0)
    assert (low, high) == bootstrap_ci([1.0, 2.0, 6.0], n_resamples=20, seed=0)
    assert (low, high) != pytest.approx((3.65 / 3, 15.4 / 3))
