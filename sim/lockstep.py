"""Data-parallel ranks that step together because their expert layers span all of them.

vLLM's `--data-parallel-size D --enable-expert-parallel` runs D engine cores, each with its own scheduler, KV cache
and attention (TP inside the rank), while every MoE layer spreads its experts over all D x tp GPUs: the layer's
dispatch and combine all-to-alls join the ranks, so they run their forward passes in lockstep, and a rank with
nothing to do runs a dummy batch to keep the collectives matched. One step of the group therefore lasts as long as
its slowest rank's own part (attention, dense layers, TP all-reduces, host) plus the expert layers over the tokens
of every rank: `max over ranks of CostModel.step_time(shape, moe_tokens=total)`.

The group runs one process for all its ranks, one event per step (no fast-forward: a step's length depends on
every rank's batch, and a rank's batch change ends a run for all of them). A dummy batch's own part (one token)
is far below a working rank's, so idle ranks only add their share of the tokens: none.
"""
from __future__ import annotations

import simpy

from .engine import Replica, _shape_of


class LockstepGroup:
    """Steps `ranks` (Replicas built with `own_loop=False` and cost models with `ep_size` = their GPUs together)
    in lockstep; each keeps its own waiting queue, scheduler, KV cache and request records."""

    def __init__(self, env: simpy.Environment, ranks: list[Replica]) -> None:
        if not ranks or any(r.proc is not None for r in ranks):
            raise ValueError("a lockstep group needs ranks built with own_loop=False")
        self.env, self.ranks = env, list(ranks)
        self.clock = 0.0
        self.steps = 0                    # group steps (each rank counts the steps it had work in)
        self.proc = env.process(self._loop())

    def _busy(self) -> bool:
        return any(r.waiting or r.running or r.swapped for r in self.ranks)

    def _sleep(self):
        """Wait for an arrival at any rank (or the earliest scheduler wake-up time), then replan at once."""
        env = self.env
        wake = env.event()
        for r in self.ranks:
            r._wake = wake                 # Replica.enqueue triggers it
        times = (r._wake_at(r) for r in self.ranks if r._wake_at is not None)
        wake_at = min((t for t in times if t is not None and t > env.now), default=None)
        if wake_at is not None and wake_at > env.now:
            yield wake | env.timeout(wake_at - env.now)
        else:
            yield wake
        self.clock = max(self.clock, env.now)
        for r in self.ranks:
            r.clock = self.clock
            r.visible_until = float("inf")

    def _loop(self):
        env = self.env
        ranks = self.ranks
        while True:
            if not self._busy():
                yield from self._sleep()
                continue
            plans = []
            for r in ranks:
                batch = []
                if r.waiting or r.running or r.swapped:
                    r._order_waiting()
                    batch = r.scheduler.schedule(r)
                    if not batch and r.waiting and r.waiting[0].enqueued > r.visible_until:
                        # as Replica._idle: an engine left empty plans again at once and sees what async
                        # scheduling's lag hid
                        r.visible_until = float("inf")
                        batch = r.scheduler.schedule(r)
                plans.append(batch)
            if not any(plans):
                # as Replica._idle: requests hidden only by async scheduling's lag are planned at once
                if any(r.waiting and r.waiting[0].enqueued > r.visible_until for r in ranks):
                    for r in ranks:
                        r.visible_until = float("inf")
                    continue
                yield from self._sleep()
                continue
            copies = [env.process(r._flush_copies()) for r in ranks if r._copies_pending()]
            if copies:
                yield env.all_of(copies)              # each replica's copies run on its own paths, side by side
            start = max(self.clock, env.now)
            shapes = [(r, batch, r._shape(r, batch) if r._shape is not None else _shape_of(batch))
                      for r, batch in zip(ranks, plans) if batch]
            moe_tokens = sum(shape.tokens for _, _, shape in shapes)
            work = max(r.cost.step_time(shape, moe_tokens) + r._take_extra() for r, _, shape in shapes)
            end = start + work
            yield env.timeout(end - env.now)
            self.clock = end
            self.steps += 1
            for r, batch in zip(ranks, plans):
                dt = end - r.clock
                r.clock = end
                # async scheduling planned the next step of a working replica when this one started; an idle
                # replica (a dummy batch) picks up what arrived meanwhile at the next step
                r.visible_until = start if (r.engine.async_scheduling and batch) else end
                if batch:
                    r._finish_step(batch, dt, end)
