"""Multi-model routing by difficulty (a model cascade): easy requests to a small model, hard ones to a large one.

Each request carries a difficulty score in [0, 1] (``difficulty``, from the workload or a trace column;
requests without one get the cascade's ``default_difficulty``, or a uniform draw from the run's seed).
Tier k takes the scores in ``(max_difficulty[k-1], max_difficulty[k]]`` (the first tier from 0, the last
to 1), so with uniform scores a tier gets the width of its band. A tier may escalate: a fraction of the
answers it gives is judged inadequate and the request is sent again, whole, to the next tier once the
first answer is finished (the cascade pattern of FrugalGPT, Chen et al. 2023, with the quality judgment
given as a rate). Escalation is drawn when the request arrives, independently per tier, so a run is
reproducible from its seed and the escalated share of a tier is its ``escalate_fraction``.

Quality per tier is out of scope: the cascade prices latency and GPU cost only.
"""
from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

import numpy as np

from sim.request import Request


class DifficultyCascade:
    """Which tiers serve a request, in order: the tier of its difficulty, then any escalations."""

    def __init__(self, bounds: Sequence[float | None], escalate: Sequence[float], default_difficulty: float | None,
                 rng: np.random.Generator) -> None:
        # the last tier takes everything above the previous bound
        self.bounds = [float(b) for b in bounds[:-1]]
        self.escalate = [float(e) for e in escalate]
        self.default = default_difficulty
        self.rng = rng
        self.routed = [0] * len(escalate)       # requests whose first tier is k
        self.escalated = [0] * len(escalate)    # requests sent on from tier k to k + 1

    def difficulty(self, req: Request) -> float:
        """The request's score, or the default (a uniform draw when none is configured); set on the request."""
        d = req.difficulty
        if d is None:
            d = self.default if self.default is not None else float(self.rng.random())
            req.difficulty = d
        return d

    def tier_of(self, difficulty: float) -> int:
        """The first tier whose max_difficulty is >= `difficulty`."""
        return bisect_left(self.bounds, difficulty)

    def path(self, req: Request) -> list[int]:
        """Tiers that run `req`, first to last (the last one's answer is the one returned)."""
        k = self.tier_of(self.difficulty(req))
        self.routed[k] += 1
        tiers = [k]
        esc = self.escalate
        while esc[k] and self.rng.random() < esc[k]:
            self.escalated[k] += 1
            k += 1
            tiers.append(k)
        return tiers


__all__ = ["DifficultyCascade"]
