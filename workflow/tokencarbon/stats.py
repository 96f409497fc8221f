"""Uncertainty over repeats: seeded percentile-bootstrap confidence intervals and the coefficient
of variation. numpy only (scipy is not a dependency; scipy.stats.bootstrap's "percentile" method
computes the same interval from random resamples)."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np

from tokencarbon.errors import ConfigError

DEFAULT_CONFIDENCE = 0.95
DEFAULT_RESAMPLES = 10_000
DEFAULT_SEED = 0


def bootstrap_ci(
    values: np.ndarray | list[float],
    statistic: Callable[[np.ndarray], np.ndarray] = lambda x: x.mean(axis=-1),
    *,
    confidence: float = DEFAULT_CONFIDENCE,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> tuple[float, float]:
    """Percentile-bootstrap interval (low, high) of statistic(values) at `confidence`.

    values: 1-D, one per repeat. statistic maps an array of shape (m, n) of resamples to m values
    (default: the mean). With n values there are n^n equally likely resamples: when n^n <=
    n_resamples they are all enumerated, so the interval is the exact bootstrap one (n <= 5 at
    the default 10,000), else n_resamples draws from numpy's PCG64 seeded with `seed`. The
    interval's ends are the (1 - confidence)/2 and (1 + confidence)/2 quantiles of the resampled
    statistics, numpy's "linear" quantile (Efron & Tibshirani 1993, ch. 13, percentile interval).
    (NaN, NaN) for fewer than 2 values: one repeat says nothing about its spread.
    Raises ConfigError for confidence outside (0, 1) or n_resamples < 1, ValueError for non-finite
    values.
    """
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence {confidence!r}: must lie in (0, 1), e.g. 0.95")
    if n_resamples < 1:
        raise ConfigError(f"n_resamples {n_resamples!r}: must be >= 1")
    x = np.asarray(values, dtype=float)
    if x.ndim != 1:
        raise ValueError(f"values of shape {x.shape}: give one value per repeat (1-D)")
    if not np.isfinite(x).all():
        raise ValueError(f"values {x.tolist()}: every value must be finite")
    n = len(x)
    if n < 2:
        return float("nan"), float("nan")
    if n**n <= n_resamples:
        index = np.array(list(itertools.product(range(n), repeat=n)))
    else:
        index = np.random.Generator(np.random.PCG64(seed)).integers(0, n, size=(n_resamples, n))
    stats = np.asarray(statistic(x[index]), dtype=float)
    alpha = 1 - confidence
    low, high = np.quantile(stats, [alpha / 2, 1 - alpha / 2], method="linear")
    return float(low), float(high)


def coefficient_of_variation(values: np.ndarray | list[float]) -> float:
    """Sample standard deviation (ddof 1) over the mean; NaN for fewer than 2 values or mean 0."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2 or x.mean() == 0:
        return float("nan")
    return float(x.std(ddof=1) / x.mean())
