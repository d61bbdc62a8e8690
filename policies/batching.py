"""Batching schedulers: which requests run in the next iteration, and how many tokens each computes.

A scheduler is a registered plugin (kind ``"scheduler"``) with two methods:

- ``schedule(replica) -> list[(request, num_new_tokens)]``: admit, chunk and preempt (through
  ``replica.preempt(request)``) for one step; the replica then prices and runs the step.
- ``steady(replica) -> bool``: True when, until a request finishes or arrives, every following
  step would run exactly the current running set, one decode token each. The engine then
  fast-forwards over those steps instead of calling ``schedule`` for each.

The replica exposes ``waiting`` (a deque, head first), ``running`` (a list in admission order),
``kv`` (a `sim.kvcache.KVCacheManager`), ``engine`` (the `EngineConfig`) and ``admit(request, hits)``
/ ``preempt(request)``.
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
        cfg = rep.engine
        budget = cfg.max_num_batched_tokens
        kv = rep.kv
        running = rep.running
        batch = []
        preempted = False
        i = 0
        while i < len(running) and budget > 0:
            req = running[i]
            n = req.num_tokens - req.num_computed
            if n > budget:
                n = budget
            while not kv.grow(req.id, req.num_computed + n, req.hashes):
                victim = running[-1]
                rep.preempt(victim)          # removes it from running
                preempted = True
                if victim is req:
                    break
            else:
                batch.append((req, n))
                budget -= n
                i += 1
                continue
            break
        if preempted:
            return batch
        waiting = rep.waiting
        while waiting and budget > 0 and len(running) < cfg.max_num_seqs:
            req = waiting[0]
            hits = rep.prefix_hits(req)
            n = req.num_tokens - hits
            if n > budget:
                if not cfg.enable_chunked_prefill:
                    break
                n = budget
            if not kv.allocate(req.id, hits + n, req.hashes, hits, req.num_tokens):
                break
            waiting.popleft()
            rep.admit(req, hits)
            batch.append((req, n))
            budget -= n
        return batch

    def steady(self, rep) -> bool:
        if rep.waiting and len(rep.running) < rep.engine.max_num_seqs:
            return False
        if len(rep.running) > rep.engine.max_num_batched_tokens:
            return False
        for req in rep.running:
            if req.num_tokens - req.num_computed != 1:
                return False
        return True
