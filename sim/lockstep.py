"""Data-parallel ranks that step together because their expert layers span all of them.

vLLM's `--data-parallel-size D --enable-expert-parallel` runs D engine cores, each with its own scheduler, KV cache
and attention (TP inside the rank), while every MoE layer spreads its experts over all D x tp GPUs: the layer's
dispatch and combine all-to-alls join the ranks, so they run their forward passes in lockstep, and a rank with
nothing to do runs a dummy batch to keep the collectives matched. One step of the group therefore lasts as long as
its slowest rank's own part (attention, dense layers, TP all-reduces, host) plus the expert layers over the tokens
of every rank: `max over ranks of CostModel.step_time(shape, moe_tokens=total)`.

The group runs one process for all its ranks: one event per step, or, when every working rank is in steady decode
(the same test a lone replica uses), one event per run of steps priced at once (`fast`), cut by an arrival exactly
where the per-step loop would have taken it in: a replica with work sees it two steps later under async scheduling
(one without), an idle one at the next step. The runs use each replica's decode cohort, rebuilt for the run and
written back after it. A dummy batch's own part (one token) is far below a working rank's, so idle ranks only add
their share of the tokens: none. (An arrival at exactly a step's end time, to the last bit, may be taken in a step
apart by the two modes: SimPy orders events of the same time by when they were scheduled, and the modes schedule
their step ends at different moments. Random arrival times never meet that.)
"""
from __future__ import annotations

from bisect import bisect_left

import simpy

from .cohort import DecodeCohort
from .engine import RUN_CHUNK, Replica, _shape_of


class LockstepGroup:
    """Steps `ranks` (Replicas built with `own_loop=False` and cost models with `ep_size` = their GPUs together)
    in lockstep; each keeps its own waiting queue, scheduler, KV cache and request records."""

    def __init__(self, env: simpy.Environment, ranks: list[Replica], fast: bool = True) -> None:
        if not ranks or any(r.proc is not None for r in ranks):
            raise ValueError("a lockstep group needs ranks built with own_loop=False")
        self.env, self.ranks = env, list(ranks)
        self.clock = 0.0
        self.steps = 0                    # group steps (each rank counts the steps it had work in)
        self.fast = fast
        if fast:
            for r in self.ranks:
                r.cohort = DecodeCohort(r.engine.block_size)
        self.proc = env.process(self._loop())
        for r in self.ranks:
            r.proc = self.proc            # an arrival during a run interrupts the group (Replica.enqueue)

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
        if wake_at is not None:
            yield wake | env.timeout(wake_at - env.now)
        else:
            yield wake
        self.clock = max(self.clock, env.now)
        for r in self.ranks:
            r.clock = self.clock
            r.visible_until = float("inf")

    def _steady(self) -> list[Replica] | None:
        """The working ranks when every one of them would decode its running set for the next steps; else None."""
        busy = []
        for r in self.ranks:
            if r.waiting or r.running or r.swapped:
                if (not r.running or not r.scheduler.steady(r) or r.extra_step_s or r._copies_pending()
                        or r.spec is not None or r.pipeline is not None):
                    return None
                busy.append(r)
        return busy or None

    def _run(self, busy: list[Replica]):
        """Up to k steady decode steps of every working rank at once (k: the first finish or KV-block shortage of any
        of them). Returns the steps run (0: none possible, nothing changed)."""
        env = self.env
        for r in busy:
            if not r._live:
                r._rebuild_cohort()
        k = min(r._cohort_run_length() for r in busy)
        if k < 1:
            return 0
        members = [(r, r.cohort.size, r.cohort.ctx) for r in busy]
        moe_tokens = sum(size for _, size, _ in members)
        clock = self.clock
        times: list[float] = []
        ends: list[float] = []

        pricers = [_decode_pricer(r.cost, size, ctx, moe_tokens) for r, size, ctx in members]

        def price(upto: int) -> None:
            # each step exactly as the per-step loop prices it: the slowest rank's decode with the group's tokens
            t = ends[-1] if ends else clock
            for i in range(len(ends), upto):
                x = max(p(i) for p in pricers)
                t = t + x
                times.append(x)
                ends.append(t)

        lag = busy[0]._lag
        working = set(map(id, busy))
        target = k
        for r in self.ranks:
            r._run_ends = ends
        while True:
            if len(ends) < target:
                price(min(target, max(RUN_CHUNK, 2 * len(ends))))
            upto = min(target, len(ends))
            try:
                yield env.timeout(ends[upto - 1] - env.now)
            except simpy.Interrupt:
                # the step in progress ends as planned; a working rank's plan for the next one is made already
                # under async scheduling, an idle rank takes the request at the next step: the run ends at the
                # earliest of the receivers' takes
                receivers = [r for r in self.ranks if r._run_ends is None]
                if not receivers:
                    continue             # a second interrupt for arrivals an earlier one already counted
                for r in receivers:
                    r._run_ends = ends
                step = bisect_left(ends, env.now)
                at_work = env.now > clock and all(id(r) in working for r in receivers)
                cut = step + (lag if at_work else 1)
                target = min(target, cut)
                if target > len(ends):
                    price(target)
                continue
            if upto >= target:
                break
        for r in self.ranks:
            r._run_ends = None
        done = target
        end = ends[done - 1]
        for r in busy:
            r._commit_run(done, ends, times, clock)
            if r._schedule_cohort is None:
                self._leave(r)       # a scheduler that cannot plan against the cohort works on materialised requests
        for r in self.ranks:
            if id(r) not in working:
                r.clock = end
                r.visible_until = end
        self.clock = end
        self.steps += done
        return done

    @staticmethod
    def _leave(r: Replica) -> None:
        """Write a rank's cohort back into its requests: the per-step loop works on materialised requests."""
        if r._live:
            r.cohort.clear(r.running)
            r.explicit = []
            r._live = False

    def _loop(self):
        env = self.env
        ranks = self.ranks
        while True:
            if not self._busy():
                yield from self._sleep()
                continue
            if self.fast:
                busy = self._steady()
                if busy is not None:
                    ran = yield from self._run(busy)
                    if ran:
                        continue
            plans = [self._plan(r) for r in ranks]
            if not any(p is not None for p in plans):
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
            shapes = [(r, plan[2]) for r, plan in zip(ranks, plans) if plan is not None]
            moe_tokens = sum(shape.tokens for _, shape in shapes)
            work = max(r.cost.step_time(shape, moe_tokens) + r._take_extra() for r, shape in shapes)
            end = start + work
            yield env.timeout(end - env.now)
            self.clock = end
            self.steps += 1
            for r, plan in zip(ranks, plans):
                dt = end - r.clock
                if plan is None:
                    # an idle replica (a dummy batch) picks up what arrived meanwhile at the next step
                    r.clock = end
                    r.visible_until = end
                    continue
                batch, cohort, _, seqs, idle = plan
                if cohort:
                    r._finish_cohort_step(batch, seqs, idle, dt, start, end)
                    continue
                r.clock = end
                # async scheduling planned the next step of a working replica when this one started
                r.visible_until = start if r.engine.async_scheduling else end
                r._finish_step(batch, dt, end)
                if self.fast and r._schedule_cohort is not None:
                    r._rebuild_cohort()

    def _plan(self, r: Replica):
        """One rank's part of the next step: (batch, planned against its cohort?, shape, cohort decoders, cohort sits
        out) or None when it has nothing to run. As a lone replica plans: against its live cohort when its
        scheduler can (`schedule_cohort`), else over materialised requests; an engine left empty plans again at
        once and sees what async scheduling's lag hid."""
        if not (r.waiting or r.running or r.swapped):
            return None
        r._order_waiting()
        for _ in range(2):
            if r._live:
                batch = r._schedule_cohort(r) if r._schedule_cohort is not None else None
                if batch is None:
                    self._leave(r)          # the exact path decides this step
                elif batch or r.cohort.size:
                    seqs, idle = r._cohort_decoders()
                    return batch, True, _shape_of(batch, seqs, r.cohort.ctx if seqs else 0), seqs, idle
            if not r._live:
                batch = r.scheduler.schedule(r)
                if batch:
                    shape = r._shape(r, batch) if r._shape is not None else _shape_of(batch)
                    return batch, False, shape, 0, False
            if not (r.waiting and r.waiting[0].enqueued > r.visible_until):
                return None
            r.visible_until = float("inf")
        return None


def _decode_pricer(cost, size: int, ctx: int, moe_tokens: int):
    """Step i of a steady run for one rank (`size` decoders, context sum `ctx` at the start): `cost.step_time` of
    that decode batch with the group's expert tokens, with its run-constant parts (the linear ops, the host time)
    looked up once; the same float operations as `step_time`, so the same times to the bit."""
    if not (getattr(cost, "expert_parallel", False) and hasattr(cost, "_group_linear_time")):
        return lambda i: cost.step_time(_shape_of((), size, ctx + size * i), moe_tokens)
    base = cost._group_linear_time(size, size, moe_tokens)
    attn = cost._decode_scalar
    e = cost.engine
    host = e.host_time(0, size, size)
    overlap = e.async_scheduling

    def price(i: int) -> float:
        t = base + attn(size, ctx + size * i)
        if overlap:
            return t if t > host else host
        return t + host

    return price
