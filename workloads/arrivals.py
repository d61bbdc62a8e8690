"""Arrival processes: Poisson arrivals in constant-rate stages.

Stage k starts at the sum of the earlier stages' durations and sends exactly
``round(rate * duration_s)`` requests separated by i.i.d. Exp(rate) gaps, the first one gap
after the stage start, as inference-perf schedules a stage (a count of requests at a rate). The
count is kept even when the gaps run past the stage end; when that makes a stage overlap the
next, the two streams are merged in time order (a stable sort, so ties keep stage order), and
each request remembers the stage that sent it. No clipping of gaps (Vidur clips its "Poisson" at
3x the mean; we do not).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np


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
