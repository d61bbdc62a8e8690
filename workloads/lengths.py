"""Token-length and waiting-time distributions, sampled vectorised with scipy.stats.

`sample_lengths(dist, n, rng)` returns ``n`` whole token counts (int64, each >= 1) from a
`workloads.config.LengthDist`; the sampler for each ``dist`` name is looked up in the registry
(kind ``"length"``), so a user can add one. Every draw is rounded to the nearest integer and
clipped to ``[max(1, min), max]``.

* ``lognormal`` is parameterised by its *mean* in tokens and the spread ``sigma`` of the underlying
  normal, as people describe prompt lengths ("about 550 tokens, long-tailed"):
  ``scipy.stats.lognorm(s=sigma, scale=mean * exp(-sigma**2 / 2))`` has exactly that mean.
* ``normal`` is rounded and raised to at least 1, so a mean within a few std of 0 is biased up.
* ``zipf`` draws k with P(k) proportional to k**-a (``scipy.stats.zipfian`` on 1..n, or ``zipf`` on
  1, 2, ... when unbounded) and returns ``k * scale`` tokens.
* ``empirical`` resamples rows of a trace file uniformly with replacement. `LengthPair` draws input
  and output lengths together: when both are empirical over the same source it draws whole rows,
  keeping the joint distribution (long prompts with their own outputs).

`sample_times(dist, n, rng)` draws waiting times (seconds, float64 >= 0) from a ``TimeDist``.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from sim.registry import get, register

from .dist_config import (EmpiricalLength, ExponentialTime, FixedLength, FixedTime, GammaTime, LognormalLength,
                          LognormalTime, NormalLength, UniformLength, UniformTime, ZipfLength)


def lognormal_scale(mean: float, sigma: float) -> float:
    """The scipy ``scale`` (= exp(mu)) of a log-normal with this mean and log-space sigma."""
    return mean * math.exp(-0.5 * sigma * sigma)


def _stats():
    from scipy import stats  # imported here: scipy.stats costs ~0.5 s of start-up for every CLI call

    return stats


def _whole(x: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(x, -(2.0**62), 2.0**62)).astype(np.int64)


@register("length", "fixed")
def fixed_lengths(dist: FixedLength, n: int, rng: np.random.Generator) -> np.ndarray:
    """Every length equal to ``value``."""
    return np.full(n, dist.value, dtype=np.int64)


@register("length", "uniform")
def uniform_lengths(dist: UniformLength, n: int, rng: np.random.Generator) -> np.ndarray:
    """Integers uniform on low..high (both included)."""
    return rng.integers(dist.low, dist.high, size=n, endpoint=True, dtype=np.int64)


@register("length", "normal")
def normal_lengths(dist: NormalLength, n: int, rng: np.random.Generator) -> np.ndarray:
    """Normal(mean, std), rounded."""
    if dist.std == 0:
        return np.full(n, round(dist.mean), dtype=np.int64)
    return _whole(_stats().norm.rvs(loc=dist.mean, scale=dist.std, size=n, random_state=rng))


@register("length", "lognormal")
def lognormal_lengths(dist: LognormalLength, n: int, rng: np.random.Generator) -> np.ndarray:
    """Log-normal with the given mean and log-space sigma, rounded."""
    return _whole(_stats().lognorm.rvs(dist.sigma, scale=lognormal_scale(dist.mean, dist.sigma), size=n,
                                       random_state=rng))


@register("length", "zipf")
def zipf_lengths(dist: ZipfLength, n: int, rng: np.random.Generator) -> np.ndarray:
    """Zipf ranks (bounded by n when given) times ``scale``."""
    st = _stats()
    if dist.n is not None:
        k = st.zipfian.rvs(dist.a, dist.n, size=n, random_state=rng)
    else:
        k = st.zipf.rvs(dist.a, size=n, random_state=rng)
    return np.asarray(k, dtype=np.int64) * dist.scale


def empirical_values(dist: EmpiricalLength, default_column: str = "input") -> tuple[np.ndarray, np.ndarray]:
    """(input, output) lengths of the rows an empirical distribution resamples."""
    from .formats import load_table  # formats imports pandas: keep it off the import path of this module

    table = load_table(dist.path, dist.format, columns=dist.columns, need_time=False)
    keep = (table.input_tokens > 0) & (table.output_tokens > 0)
    if dist.filter is not None:
        keep &= length_mask(table.input_tokens, table.output_tokens, dist.filter)
    if not keep.any():
        from sim.errors import TraceError

        raise TraceError(f"trace {dist.path}: no row is left to resample lengths from (every row is empty or "
                         f"filtered out); loosen the filter")
    return table.input_tokens[keep], table.output_tokens[keep]


def length_mask(inp: np.ndarray, out: np.ndarray, f: Any) -> np.ndarray:
    """Rows inside the bounds of a `LengthFilter`."""
    keep = np.ones(len(inp), dtype=bool)
    if f.min_input_tokens is not None:
        keep &= inp >= f.min_input_tokens
    if f.max_input_tokens is not None:
        keep &= inp <= f.max_input_tokens
    if f.min_output_tokens is not None:
        keep &= out >= f.min_output_tokens
    if f.max_output_tokens is not None:
        keep &= out <= f.max_output_tokens
    if f.max_total_tokens is not None:
        keep &= inp + out <= f.max_total_tokens
    return keep


@register("length", "empirical")
def empirical_lengths(dist: EmpiricalLength, n: int, rng: np.random.Generator,
                      default_column: str = "input") -> np.ndarray:
    """Rows of a trace file's column, resampled uniformly with replacement."""
    inp, out = empirical_values(dist)
    values = inp if (dist.column or default_column) == "input" else out
    return values[rng.integers(0, len(values), size=n)]


def _clip(dist: Any, x: np.ndarray) -> np.ndarray:
    lo = max(1, dist.min or 1)
    return np.clip(x, lo, dist.max) if dist.max is not None else np.maximum(x, lo)


def sample_lengths(dist: Any, n: int, rng: np.random.Generator, side: str = "input") -> np.ndarray:
    """Draw ``n`` token lengths (int64, >= 1) from ``dist`` with ``rng``; `side` (input / output) is the trace
    column an empirical distribution resamples when it names none."""
    sampler = get("length", dist.dist)
    values = sampler(dist, n, rng, default_column=side) if dist.dist == "empirical" else sampler(dist, n, rng)
    return _clip(dist, np.asarray(values, dtype=np.int64))


class LengthPair:
    """Draws (input, output) lengths in blocks, jointly when both come from the same trace rows.

    Successive ``draw`` calls continue the same streams, so drawing 10 then 20 gives the same
    lengths as drawing 30 at once (closed-loop clients draw as they go).
    """

    def __init__(self, input_len: Any, output_len: Any, rng_in: np.random.Generator,
                 rng_out: np.random.Generator) -> None:
        self.input_len, self.output_len = input_len, output_len
        self.rng_in, self.rng_out = rng_in, rng_out
        self.joint = (isinstance(input_len, EmpiricalLength) and isinstance(output_len, EmpiricalLength)
                      and input_len.source_key() == output_len.source_key())
        self._rows: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def _empirical(self, dist: EmpiricalLength, side: str) -> np.ndarray:
        rows = self._rows.get(side)
        if rows is None:
            rows = self._rows[side] = empirical_values(dist)
        return rows[0] if (dist.column or side) == "input" else rows[1]

    def _one(self, dist: Any, side: str, n: int, rng: np.random.Generator) -> np.ndarray:
        if isinstance(dist, EmpiricalLength):
            v = self._empirical(dist, side)
            return _clip(dist, v[rng.integers(0, len(v), size=n)])
        return sample_lengths(dist, n, rng, side)

    def draw(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """`n` (input, output) length pairs; whole rows of one source when both are empirical over it."""
        if self.joint:
            vin = self._empirical(self.input_len, "input")
            vout = self._empirical(self.output_len, "output")
            idx = self.rng_in.integers(0, len(vin), size=n)
            return _clip(self.input_len, vin[idx]), _clip(self.output_len, vout[idx])
        return (self._one(self.input_len, "input", n, self.rng_in),
                self._one(self.output_len, "output", n, self.rng_out))


def sample_times(dist: Any, n: int, rng: np.random.Generator) -> np.ndarray:
    """Draw ``n`` waiting times in seconds (float64, >= 0) from a ``TimeDist``."""
    if isinstance(dist, FixedTime):
        return np.full(n, float(dist.value))
    st = _stats()
    if isinstance(dist, ExponentialTime):
        x = st.expon.rvs(scale=dist.mean, size=n, random_state=rng)
    elif isinstance(dist, UniformTime):
        x = st.uniform.rvs(loc=dist.low, scale=dist.high - dist.low, size=n, random_state=rng)
    elif isinstance(dist, LognormalTime):
        x = st.lognorm.rvs(dist.sigma, scale=lognormal_scale(dist.mean, dist.sigma), size=n, random_state=rng)
    elif isinstance(dist, GammaTime):
        k = 1.0 / (dist.cv * dist.cv)
        x = st.gamma.rvs(k, scale=dist.mean / k, size=n, random_state=rng)
    else:  # pragma: no cover - the config union is closed
        raise TypeError(f"unknown time distribution {dist!r}")
    return np.asarray(x, dtype=np.float64)
