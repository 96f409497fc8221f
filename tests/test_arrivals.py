"""Arrival schedules of continuous-batching cells: offline, and seeded Poisson worked by hand."""

import math

import numpy as np
import pytest

from tokencarbon.arrivals import arrival_times_s
from tokencarbon.errors import ConfigError


def test_offline_queues_every_request_at_zero():
    assert arrival_times_s(3, "offline") == [0.0, 0.0, 0.0]
    assert arrival_times_s(0, "offline") == []


def test_poisson_schedule_worked_by_hand():
    # numpy's PCG64 seeded 0 draws the uniforms 0.6369616873214543, 0.2697867137638703,
    # 0.04097352393619469 (np.random.default_rng(0).random(3), the generator's own stream).
    # At 2 requests/s each gap is -ln(1 - u) / 2:
    #   -ln(0.3630383127) / 2 = 1.0132469 / 2 = 0.5066235
    #   -ln(0.7302132862) / 2 = 0.3144186 / 2 = 0.1572093   -> 0.5066235 + 0.1572093 = 0.6638328
    #   -ln(0.9590264761) / 2 = 0.0418366 / 2 = 0.0209183   -> 0.6638328 + 0.0209183 = 0.6847511
    # and the first request arrives at 0 (a request, then a gap, as vLLM's benchmark sends them).
    times = arrival_times_s(4, "poisson", request_rate_per_s=2.0, seed=0)
    assert times == pytest.approx([0.0, 0.5066235, 0.6638328, 0.6847511], abs=1e-6)


def test_poisson_is_seeded_and_rate_scales_the_gaps():
    a = arrival_times_s(50, "poisson", request_rate_per_s=4.0, seed=7)
    assert a == arrival_times_s(50, "poisson", request_rate_per_s=4.0, seed=7)
    assert a != arrival_times_s(50, "poisson", request_rate_per_s=4.0, seed=8)
    # Same uniforms, twice the rate: every time halves.
    b = arrival_times_s(50, "poisson", request_rate_per_s=8.0, seed=7)
    assert b == pytest.approx([t / 2 for t in a])
    assert all(y >= x for x, y in zip(a, a[1:]))  # arrivals in request order


def test_poisson_mean_gap_is_one_over_the_rate():
    # 20,000 gaps of an exponential with mean 0.25 s: the sample mean's standard error is
    # 0.25 / sqrt(19,999) = 0.0018 s, so 0.25 +- 0.01 is more than 5 standard errors wide.
    times = arrival_times_s(20_000, "poisson", request_rate_per_s=4.0, seed=3)
    assert np.mean(np.diff(times)) == pytest.approx(0.25, abs=0.01)


@pytest.mark.parametrize(
    ("n", "arrival", "rate", "message"),
    [
        (3, "bursty", None, r"serving.arrival: 'bursty'; expected one of \['offline', 'poisson'\]"),
        (3, "poisson", None, "serving.request_rate_per_s: None with arrival 'poisson'"),
        (3, "poisson", 0.0, "request_rate_per_s: 0.0 .* > 0"),
        (3, "poisson", -1, "request_rate_per_s: -1 "),
        (3, "poisson", math.inf, "request_rate_per_s: inf "),
        (3, "poisson", math.nan, "request_rate_per_s: nan "),
        (3, "offline", 2.0, "request_rate_per_s: 2.0 with arrival 'offline'"),
        (-1, "offline", None, "n=-1 requests"),
    ],
)
def test_bad_arrival_settings_name_the_key(n, arrival, rate, message):
    with pytest.raises(ConfigError, match=message):
        arrival_times_s(n, arrival, request_rate_per_s=rate)
