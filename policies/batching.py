"""Batching schedulers: which requests run in the next iteration, and how many tokens each computes.

A scheduler is a registered plugin (kind ``"scheduler"``) with two methods:

- ``schedule(replica) -> list[(request, num_new_tokens)]``: admit, chunk and preempt (through
  ``replica.preempt(request)``) for one step; the replica then prices and runs the step.
- ``steady(replica) -> bool``: True when, until a request finishes or arrives, every following
  step would run exactly the current running set, one decode token each. The engine then
  fast-forwards over those steps instead of calling ``schedule`` for each.

The replica exposes ``waiting`` (a deque, head first), ``running`` (a list in admission order),
``kv`` (a `sim.kvcache.KVCacheManager`), ``engine`` (the `EngineConfig`), ``prefilling`` (running
requests with prompt tokens left; O(1)), ``visible_until`` (waiting requests that arrived later are not
seen yet: async scheduling planned this step while the last one ran), ``prefix_hits(request)``,
``admit(request, hits)`` (after ``kv.allocate``), ``grow_kv(request, tokens)`` / ``append_kv_block(request)``
(which keep the request's ``kv_slots`` in step with its blocks) and ``preempt(request)``.
"""
from __future__ import annotations

from sim.registry import register


@register("scheduler", "vllm")
class VLLMScheduler:
    """vLLM V1: one token budget per step; running requests first, then waiting ones (FCFS).

    Each running request gets the tokens it still needs (a prompt chunk, or its one decode token)
    while the budget `max_num_batched_tokens` lasts; if its KV blocks cannot grow, the most recently
    admitted running request is preempted (recompute) until they can. Waiting requests are admitted
    only in a step with no preemption, while `max_num_seqs` and the budget allow; with chunked
    prefill a prompt larger than the remaining budget is split, without it the request waits.
    Prefill and decode tokens share a step.
    """

    def schedule(self, rep) -> list:
        """Plan one step over materialised requests: running requests first, then admissions (see the class
        docstring)."""
        cfg = rep.engine
        budget = cfg.max_num_batched_tokens
        running = rep.running
        batch = []
        preempted = False
        i = 0
        while i < len(running) and budget > 0:
            req = running[i]
            c = req.num_computed
            n = req.num_tokens - c
            if n == 1 and c < req.kv_slots:
                # hot path: a decode token that fits the blocks the request holds needs no allocation
                batch.append((req, 1))
                budget -= 1
                i += 1
                continue
            if n > budget:
                n = budget
            # prompt chunks always go through grow_kv() so the blocks they fill get registered for prefix caching
            scheduled = True
            while not rep.grow_kv(req, c + n):
                victim = running[-1]
                rep.preempt(victim)          # removes it from running
                preempted = True
                if victim is req:
                    scheduled = False
                    break
            if not scheduled:
                break
            batch.append((req, n))
            budget -= n
            i += 1
        if not preempted:
            self._admit(rep, batch, budget)
        return batch

    def schedule_cohort(self, rep) -> list | None:
        """The same policy when decoding requests sit in the replica's lazy cohort (`sim.cohort`).

        Valid only when every cohort member and every other running request gets all the tokens
        it wants and every block fits, so nobody is cut or preempted; otherwise return None and
        the engine runs `schedule` over materialised requests. Blocks are taken in running
        (admission) order, cohort members and prefilling requests interleaved, as `schedule` does.
        """
        cfg = rep.engine
        kv = rep.kv
        cohort = rep.cohort
        explicit = rep.explicit
        demand = cohort.size
        need = 0
        for req in explicit:
            demand += req.num_tokens - req.num_computed
            need += kv.blocks_needed(req.id, req.num_tokens)
        if demand > cfg.max_num_batched_tokens:
            return None
        due = cohort.pop_due_blocks(cohort.tick + 1)
        if need + len(due) > kv.num_free_blocks:
            cohort.push_back(due)
            return None
        batch = []
        d = 0
        for req in explicit:
            while d < len(due) and due[d][1] < req.seq:
                rep.append_kv_block(due[d][2])
                d += 1
            rep.grow_kv(req, req.num_tokens)        # fits: the pool was checked above
            batch.append((req, req.num_tokens - req.num_computed))
        for _, _, member in due[d:]:
            rep.append_kv_block(member)
        self._admit(rep, batch, cfg.max_num_batched_tokens - demand)
        return batch

    def _admit(self, rep, batch: list, budget: int) -> None:
        """Admit waiting requests (FCFS) while the budget, max_num_seqs and the KV blocks allow."""
        cfg = rep.engine
        kv = rep.kv
        waiting = rep.waiting
        running = rep.running
        visible_until = rep.visible_until
        while waiting and budget > 0 and len(running) < cfg.max_num_seqs:
            req = waiting[0]
            if req.arrival > visible_until:
                break                 # async scheduling: it arrived after this step was planned
            hits = rep.prefix_hits(req)
            n = req.num_tokens - hits
            if n > budget:
                if not cfg.enable_chunked_prefill:
                    break
                n = budget
            # hit accounting counts prompts as sent, not a preempted request's recomputation
            if not kv.allocate(req.id, hits + n, req.hashes, hits, req.num_tokens, count=not req.preemptions):
                break
            waiting.popleft()
            rep.admit(req, hits)
            batch.append((req, n))
            budget -= n

    def steady(self, rep) -> bool:
        """True when every following step would decode the current running set, one token each, until an arrival or
        a finish."""
        if rep.waiting and len(rep.running) < rep.engine.max_num_seqs:
            return False
        if len(rep.running) > rep.engine.max_num_batched_tokens:
            return False
        return rep.prefilling == 0
