"""Arrival processes: when open-loop requests arrive.

Every process is a function ``sampler(cfg, rng) -> (times, stage)`` registered under kind
``"arrival"`` with the name its config's ``process`` field carries: float64 times in seconds,
non-decreasing from 0, and an int64 stage label per arrival (None when the process has no stages).
`arrival_times` looks the sampler up. Nothing is clipped (Vidur clips its "Poisson" at 3x the mean
gap; we do not).

* ``poisson`` / ``gamma``: renewal processes with i.i.d. exponential / gamma gaps (gamma with shape
  ``1 / cv**2`` has the requested mean gap ``1 / rate`` and coefficient of variation ``cv``), the first
  arrival one gap after 0.
* ``mmpp`` / ``on_off``: a hidden continuous-time Markov chain holds each state for an exponential
  time and the arrivals in a sojourn of length ``L`` at rate ``r`` are ``Poisson(r L)`` points placed
  uniformly in it (the same law as a Poisson process on it). The first state is drawn from the
  time-stationary distribution, so the long-run rate is ``sum(pi_i r_i)`` from t = 0.
* ``diurnal``: a non-homogeneous Poisson process sampled exactly by thinning: candidates at the
  peak rate, each kept with probability ``rate(t) / peak``.
* ``stages``: Poisson in constant-rate stages, inference-perf style (below).
* ``replay``: a recorded trace's own times.

Stages: stage k starts at the sum of the earlier stages' durations and sends exactly
``round(rate * duration_s)`` requests separated by i.i.d. Exp(rate) gaps, the first one gap after
the stage start, as inference-perf schedules a stage (a count of requests at a rate). The count is
kept even when the gaps run past the stage end; when that makes a stage overlap the next, the two
streams are merged in time order (a stable sort, so ties keep stage order), and each request
remembers the stage that sent it.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from sim.errors import TraceError
from sim.registry import get, register, register_lazy


class _StageLike(Protocol):
    rate: float
    duration_s: float


def stage_counts(stages: Sequence[_StageLike]) -> list[int]:
    """Requests per stage: ``round(rate * duration_s)``."""
    return [int(round(s.rate * s.duration_s)) for s in stages]


def poisson_stage_arrivals(stages: Sequence[_StageLike],
                           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Arrival times (float64, non-decreasing) and the stage index of each arrival."""
    times, labels = [], []
    start = 0.0
    for k, (s, n) in enumerate(zip(stages, stage_counts(stages))):
        gaps = rng.exponential(1.0 / s.rate, size=n)
        times.append(start + np.cumsum(gaps))
        labels.append(np.full(n, k, dtype=np.int64))
        start += s.duration_s
    if not times:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    t = np.concatenate(times)
    lab = np.concatenate(labels)
    if len(t) > 1 and np.any(t[1:] < t[:-1]):
        order = np.argsort(t, kind="stable")
        t, lab = t[order], lab[order]
    return t, lab


def arrival_times(cfg: Any, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """Times (and stage labels) of the arrival process ``cfg`` (registry kind ``"arrival"``)."""
    return get("arrival", cfg.process)(cfg, rng)


def _stats():
    from scipy import stats  # lazy: scipy.stats costs ~0.5 s of start-up

    return stats


def renewal(gaps: Callable[[int], np.ndarray], mean_gap: float, *, duration_s: float | None,
            num_requests: int | None) -> np.ndarray:
    """Arrival times of a renewal process from a gap sampler: ``num_requests`` of them, or all before
    ``duration_s`` (gaps drawn in blocks, so the stream does not depend on how far it is read)."""
    if num_requests is not None:
        return np.cumsum(gaps(num_requests))
    block = int(duration_s / mean_gap * 1.05 + 10 * math.sqrt(duration_s / mean_gap) + 64)
    parts, t0 = [], 0.0
    while True:
        t = t0 + np.cumsum(gaps(block))
        if t[-1] >= duration_s:
            parts.append(t[t < duration_s])
            break
        parts.append(t)
        t0 = float(t[-1])
    return np.concatenate(parts)


@register("arrival", "poisson")
def poisson_arrivals(cfg: Any, rng: np.random.Generator) -> tuple[np.ndarray, None]:
    """Poisson arrivals at a constant rate."""
    scale = 1.0 / cfg.rate
    t = renewal(lambda n: _stats().expon.rvs(scale=scale, size=n, random_state=rng), scale,
                duration_s=cfg.duration_s, num_requests=cfg.num_requests)
    return t, None


@register("arrival", "gamma")
def gamma_arrivals(cfg: Any, rng: np.random.Generator) -> tuple[np.ndarray, None]:
    """Gamma-renewal arrivals with a given rate and gap CV (bursty when cv > 1)."""
    k = 1.0 / (cfg.cv * cfg.cv)
    scale = 1.0 / (cfg.rate * k)
    t = renewal(lambda n: _stats().gamma.rvs(k, scale=scale, size=n, random_state=rng), 1.0 / cfg.rate,
                duration_s=cfg.duration_s, num_requests=cfg.num_requests)
    return t, None


def mmpp_stationary(rates: Sequence[float], dwell: Sequence[float],
                    transitions: Sequence[Sequence[float]] | None) -> np.ndarray:
    """Long-run fraction of time in each state: the jump chain's stationary law weighted by dwell."""
    n = len(rates)
    if transitions is None:
        nu = np.full(n, 1.0 / n)
    else:
        p = np.asarray(transitions, dtype=np.float64)
        w, v = np.linalg.eig(p.T)
        nu = np.abs(np.real(v[:, np.argmin(np.abs(w - 1.0))]))
        nu /= nu.sum()
    pi = nu * np.asarray(dwell, dtype=np.float64)
    return pi / pi.sum()


def mmpp_mean_rate(rates: Sequence[float], dwell: Sequence[float],
                   transitions: Sequence[Sequence[float]] | None = None) -> float:
    """The long-run arrival rate of an MMPP."""
    return float(np.dot(mmpp_stationary(rates, dwell, transitions), rates))


def _mmpp(rates: Sequence[float], dwell: Sequence[float], transitions, duration_s: float | None,
          num_requests: int | None, rng: np.random.Generator) -> np.ndarray:
    n_states = len(rates)
    r = np.asarray(rates, dtype=np.float64)
    d = np.asarray(dwell, dtype=np.float64)
    pi = mmpp_stationary(rates, dwell, transitions)
    state = int(rng.choice(n_states, p=pi))
    mean_rate = float(np.dot(pi, r))
    cycle = float(d.mean())
    horizon = duration_s if duration_s is not None else num_requests / mean_rate
    block = max(16, int(horizon / cycle * 1.2) + 16)
    cum = np.cumsum(np.asarray(transitions, dtype=np.float64), axis=1) if transitions is not None else None
    parts, t0, count = [], 0.0, 0
    while True:
        if cum is None:
            states = (state + np.arange(block)) % n_states
        else:
            u = rng.random(block)
            states = np.empty(block, dtype=np.int64)
            s = state
            for i in range(block):  # a Markov chain is sequential; blocks are a few hundred sojourns
                states[i] = s
                s = min(int(np.searchsorted(cum[s], u[i], side="right")), n_states - 1)
        lens = rng.exponential(d[states])
        starts = t0 + np.concatenate(([0.0], np.cumsum(lens)[:-1]))
        counts = rng.poisson(r[states] * lens)
        times = np.repeat(starts, counts) + rng.random(int(counts.sum())) * np.repeat(lens, counts)
        times.sort()
        parts.append(times)
        count += len(times)
        t0 = float(starts[-1] + lens[-1])
        state = int((states[-1] + 1) % n_states) if cum is None else s
        if duration_s is not None and t0 >= duration_s:
            t = np.concatenate(parts)
            return t[t < duration_s]
        if num_requests is not None and count >= num_requests:
            return np.concatenate(parts)[:num_requests]


@register("arrival", "mmpp")
def mmpp_arrivals(cfg: Any, rng: np.random.Generator) -> tuple[np.ndarray, None]:
    """Markov-modulated Poisson arrivals."""
    return _mmpp(cfg.rates, cfg.mean_dwell_s, cfg.transitions, cfg.duration_s, cfg.num_requests, rng), None


@register("arrival", "on_off")
def on_off_arrivals(cfg: Any, rng: np.random.Generator) -> tuple[np.ndarray, None]:
    """Poisson bursts during exponential ON periods, silence during OFF periods."""
    return _mmpp([cfg.rate, 0.0], [cfg.mean_on_s, cfg.mean_off_s], None, cfg.duration_s, cfg.num_requests,
                 rng), None


def diurnal_rate(cfg: Any, base_dir: str | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """The rate function rate(t) of a diurnal config (vectorised)."""
    if cfg.mean_rate is not None:
        w = 2.0 * math.pi / cfg.period_s
        return lambda t: cfg.mean_rate * (1.0 + cfg.amplitude * np.cos(w * (np.asarray(t) - cfg.peak_at_s)))
    if cfg.points is not None:
        xs = np.array([p[0] for p in cfg.points], dtype=np.float64)
        ys = np.array([p[1] for p in cfg.points], dtype=np.float64)
    else:
        xs, ys = read_rate_curve(cfg.curve_path)
    ys = ys * cfg.rate_scale
    return lambda t: np.interp(t, xs, ys)


def read_rate_curve(path: str) -> tuple[np.ndarray, np.ndarray]:
    """A rate curve CSV (columns time_s, rate), validated: times increasing, rates >= 0."""
    from .formats import read_frame, require_columns
    from .validate import Locator as _Locator, numeric as _numeric

    df = read_frame(path, required=("time_s", "rate"))
    require_columns(df, path, ("time_s", "rate"))
    loc = _Locator(path, csv=True)
    t = _numeric(df, "time_s", loc)
    r = _numeric(df, "rate", loc)
    for col, x in (("time_s", t), ("rate", r)):
        bad = np.flatnonzero(~np.isfinite(x) | (x < 0))
        if len(bad):
            raise TraceError(f"{loc(int(bad[0]), col)}: value {x[bad[0]]} must be a finite number >= 0")
    bad = np.flatnonzero(np.diff(t) <= 0)
    if len(bad):
        raise TraceError(f"{loc(int(bad[0]) + 1, 'time_s')}: times must increase; sort the curve")
    if r.max() <= 0:
        raise TraceError(f"rate curve {path}: every rate is 0; nothing would arrive")
    return t, r


@register("arrival", "diurnal")
def diurnal_arrivals(cfg: Any, rng: np.random.Generator) -> tuple[np.ndarray, None]:
    """Poisson arrivals whose rate follows a sinusoid or a rate curve (exact thinning)."""
    rate = diurnal_rate(cfg)
    if cfg.mean_rate is not None:
        peak = cfg.mean_rate * (1.0 + cfg.amplitude)
    else:
        # the curve is piecewise linear: its maximum over [0, T] is at a knot or an end
        xs = np.array([p[0] for p in cfg.points]) if cfg.points is not None else read_rate_curve(cfg.curve_path)[0]
        grid = np.concatenate(([0.0, cfg.duration_s], xs[(xs > 0) & (xs < cfg.duration_s)]))
        peak = float(np.max(rate(grid)))
    n = int(rng.poisson(peak * cfg.duration_s))
    cand = np.sort(rng.random(n) * cfg.duration_s)
    keep = rng.random(n) * peak < rate(cand)
    return cand[keep], None


@register("arrival", "stages")
def stages_arrivals(cfg: Any, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Poisson arrivals in constant-rate stages with exact per-stage counts."""
    return poisson_stage_arrivals(cfg.stages, rng)


@register("arrival", "replay")
def replay_arrivals(cfg: Any, rng: np.random.Generator | None = None) -> tuple[np.ndarray, None]:
    """A trace's own arrival times (sorted, scaled by time_scale)."""
    from .formats import load_table

    table = load_table(cfg.path, cfg.format, columns=cfg.columns, need_time=True)
    t = table.arrival_s * cfg.time_scale
    if cfg.max_requests is not None:
        t = t[:cfg.max_requests]
    return t, None


register_lazy("arrival", "closed_loop", "workloads.closed_loop:ClosedLoopClients")
