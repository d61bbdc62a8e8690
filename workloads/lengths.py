"""Token-length distributions, sampled vectorised.

`sample_lengths(dist, n, rng)` returns ``n`` whole token counts (int64, each >= 1) from a
`workloads.config.LengthDist`. The log-normal is parameterised by its *mean* in tokens and the
spread ``sigma`` of the underlying normal, as people describe prompt lengths ("about 550 tokens,
long-tailed"): ``scipy.stats.lognorm(s=sigma, scale=mean * exp(-sigma**2 / 2))`` has exactly
that mean. Samples are rounded to the nearest integer and clipped to ``[max(1, min), max]``.
"""
from __future__ import annotations

import math

import numpy as np

from .config import FixedLength, LognormalLength, UniformLength


def lognormal_scale(mean: float, sigma: float) -> float:
    """The scipy ``scale`` (= exp(mu)) of a log-normal with this mean and log-space sigma."""
    return mean * math.exp(-0.5 * sigma * sigma)


def sample_lengths(dist: FixedLength | UniformLength | LognormalLength, n: int,
                   rng: np.random.Generator) -> np.ndarray:
    """Draw ``n`` token lengths (int64, >= 1) from ``dist`` with ``rng``."""
    if isinstance(dist, FixedLength):
        out = np.full(n, dist.value, dtype=np.int64)
    elif isinstance(dist, UniformLength):
        out = rng.integers(dist.low, dist.high, size=n, endpoint=True, dtype=np.int64)
    elif isinstance(dist, LognormalLength):
        from scipy import stats  # imported here: scipy.stats costs ~0.5 s of start-up for every CLI call

        x = stats.lognorm.rvs(dist.sigma, scale=lognormal_scale(dist.mean, dist.sigma), size=n,
                              random_state=rng)
        out = np.rint(np.minimum(x, 2.0**62)).astype(np.int64)
    else:  # pragma: no cover - the config union is closed
        raise TypeError(f"unknown length distribution {dist!r}")
    lo = max(1, dist.min or 1)
    return np.clip(out, lo, dist.max) if dist.max is not None else np.maximum(out, lo)
