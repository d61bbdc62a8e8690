"""Pipeline parallelism: the stages of one replica, shared by the virtual engines that feed it.

With PP = p, a replica's layers are split over p stages (each a TP group). vLLM keeps p batches in
flight, one per *virtual engine*, each with its own scheduler and share of the KV blocks: while
stage 2 runs batch A, stage 1 already runs batch B. A step of one virtual engine therefore takes
the p stages one after the other (plus the activations' hop between stages), and each stage takes
one batch at a time, first come first served. When only one virtual engine has work, every stage
idles (p - 1) / p of the time: the pipeline bubble.

`Pipeline.run` books a step on the stages at the moment it is planned. Steps are planned in time
order, so each stage's queue is served in that order, exactly as the stages would run them. The
per-stage time is the step's time over p (layers split evenly; the LM head and the host's share
are spread too).
"""
from __future__ import annotations

from collections.abc import Callable


class Pipeline:
    """Busy-until times and busy totals of a replica's p stages."""

    __slots__ = ("stages", "free_at", "busy_s", "_p2p")

    def __init__(self, stages: int, p2p: Callable[[int, int], float]) -> None:
        """`p2p(stage, tokens)`: seconds to hand `tokens` tokens' activations from `stage` to the next."""
        self.stages = stages
        self.free_at = [0.0] * stages
        self.busy_s = [0.0] * stages
        self._p2p = p2p

    def run(self, start: float, step_s: float, tokens: int) -> float:
        """Book a step planned at `start` whose whole-model time is `step_s`; return when its last stage ends."""
        per_stage = step_s / self.stages
        t = start
        free, busy = self.free_at, self.busy_s
        last = self.stages - 1
        for s in range(self.stages):
            if free[s] > t:
                t = free[s]
            t += per_stage
            free[s] = t
            busy[s] += per_stage
            if s < last:
                t += self._p2p(s, tokens)
        return t

    def utilisation(self, span: float) -> list[float]:
        """Busy fraction of each stage over `span` seconds."""
        return [b / span if span > 0 else 0.0 for b in self.busy_s]
