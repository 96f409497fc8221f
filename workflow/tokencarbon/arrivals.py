"""When the requests of a continuous-batching cell arrive: all at once (offline) or as a seeded
Poisson process at a request rate (latency-SLO studies).

    arrival_times_s(4, "poisson", request_rate_per_s=2.0, seed=0)  # [0.0, 0.506..., ...]
"""

from __future__ import annotations

import math

import numpy as np

from tokencarbon.errors import ConfigError

ARRIVALS = ("offline", "poisson")


def arrival_times_s(
    n: int, arrival: str, request_rate_per_s: float | None = None, seed: int = 0
) -> list[float]:
    """Arrival time of each of n requests, in seconds after serving starts, in request order.

    offline: every request at 0.0 (the whole set queued at once, as ML.ENERGY's max_num_seqs
    sweep and vLLM's benchmark with an infinite rate). poisson: the first request at 0.0, each
    next one an exponential gap of mean 1/request_rate_per_s later (a Poisson process, as vLLM's
    benchmark_serving sends them: a request, then a sleep). Gaps are drawn by inverse transform,
    gap_k = -ln(1 - u_k) / rate with u_k = numpy.random.default_rng(seed).random(n - 1)[k], so a
    schedule can be worked by hand from the generator's uniforms.

    Raises ConfigError naming the key for an unknown arrival, a missing or non-positive rate, or
    a rate given with offline arrivals.
    """
    if not isinstance(n, int) or n < 0:
        raise ConfigError(f"arrivals: n={n!r} requests; expected a whole number >= 0")
    if arrival not in ARRIVALS:
        raise ConfigError(f"serving.arrival: {arrival!r}; expected one of {list(ARRIVALS)}")
    if arrival == "offline":
        if request_rate_per_s is not None:
            raise ConfigError(
                f"serving.request_rate_per_s: {request_rate_per_s!r} with arrival 'offline', "
                "which queues every request at t=0; use arrival 'poisson' for a rate, or null"
            )
        return [0.0] * n
    if (
        isinstance(request_rate_per_s, bool)
        or not isinstance(request_rate_per_s, int | float)
        or not math.isfinite(request_rate_per_s)
        or request_rate_per_s <= 0
    ):
        raise ConfigError(
            f"serving.request_rate_per_s: {request_rate_per_s!r} with arrival 'poisson'; "
            "expected a finite number of requests per second > 0"
        )
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"serving.seed: {seed!r}; expected a whole number")
    if n == 0:
        return []
    uniforms = np.random.default_rng(seed).random(n - 1)
    gaps_s = -np.log1p(-uniforms) / float(request_rate_per_s)
    return [0.0] + np.cumsum(gaps_s).tolist()
