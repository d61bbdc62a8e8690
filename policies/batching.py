"""Iteration-level batching schedulers: which requests run in the next step, and how many tokens each computes.

A scheduler is a registered plugin (kind ``"scheduler"``) with two methods:

- ``schedule(replica) -> list[(request, num_new_tokens)]``: admit, chunk and preempt (through
  ``replica.preempt(request)``) for one step; the replica then prices and runs the step.
- ``steady(replica) -> bool``: True when, until a request finishes or arrives, every following
  step would run exactly the current running set, one decode token each. The engine then
  fast-forwards over those steps instead of calling ``schedule`` for each.

Optional: ``schedule_cohort(replica)`` (plan a step while decoding requests sit in the replica's
lazy cohort, or return None for the exact path), ``shape(replica, batch)`` (price a step other than
by its real tokens: static batching's padding), ``wake_at(replica)`` (a time to plan again even if
nothing arrives: a batching timeout). A scheduler with options declares a nested pydantic
``Options`` model and is built as ``Scheduler(options)``; YAML gives them as ``scheduler_options``.

The replica exposes ``waiting`` (a deque, head first, already in the configured ordering),
``swapped`` (requests whose KV sits in host memory), ``running`` (a list in admission order), ``kv``
(a `sim.kvcache.KVCacheManager`), ``engine`` (the `EngineConfig`), ``prefilling`` (running requests
with prompt tokens left; O(1)), ``visible_until`` (waiting requests that arrived later are not seen
yet: async scheduling planned this step while the last one ran), ``ordering.is_fcfs``,
``prefix_hits(request)`` and ``offloaded_hits(request, hits)`` (more of the prefix in the host / NVMe tiers),
``allocate(request, tokens, hits)`` then ``admit(request, hits, loaded)``,
``grow_kv(request, tokens)`` / ``append_kv_block(request)`` (which keep the request's ``kv_slots`` in
step with its blocks), ``pick_victim()``, ``preempt(request)`` (recompute or swap, as configured) and
``swap_in(request, tokens)``.

This module holds the iteration-level family (Orca, vLLM V0 and V1, Sarathi-Serve);
`policies.request_batching` holds the request-level ones (static, dynamic).
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from sim.registry import register


@register("scheduler", "vllm")
class VLLMScheduler:
    """vLLM V1: one token budget per step; running requests first, then waiting ones.

    Each running request gets the tokens it still needs (a prompt chunk, or its one decode token)
    while the budget `max_num_batched_tokens` lasts; if its KV blocks cannot grow, a victim
    (`preemption_victim`, by default the most recently admitted) is preempted until they can.
    Waiting requests are admitted only in a step with no preemption, while `max_num_seqs` and the
    budget allow; with chunked prefill a prompt larger than the remaining budget is split, without
    it the request waits. Prefill and decode tokens share a step. Swapped-out requests (with
    `preemption_mode: swap`) come back before any new admission.
    """

    chunked: bool | None = None          # None: the engine's enable_chunked_prefill

    def __init__(self, options=None) -> None:
        self.options = options

    def _budget(self, rep) -> int:
        return rep.engine.max_num_batched_tokens

    def schedule(self, rep) -> list:
        """Plan one step over materialised requests: running requests first, then admissions (see the class
        docstring)."""
        budget = self._budget(rep)
        batch: list = []
        preempted, budget = self._schedule_running(rep, rep.running, batch, budget)
        if not preempted:
            self._admit(rep, batch, budget)
        return batch

    def _schedule_running(self, rep, order, batch: list, budget: int) -> tuple[bool, int]:
        """Give each request of `order` (running requests, in the policy's order) the tokens it needs while the
        budget lasts, preempting victims when blocks run out. Returns (preempted, budget left)."""
        running = rep.running
        preempted = False
        i = 0
        while i < len(order) and budget > 0:
            req = order[i]
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
                victim = rep.pick_victim()
                vi = len(order) - 1 if victim is order[-1] else order.index(victim)
                rep.preempt(victim)          # removes it from running
                if order is not running:
                    del order[vi]
                preempted = True
                if victim is req:
                    # vLLM stops its running loop here, which with its default victim (the newest, the last in the
                    # loop) leaves nobody behind; any other victim policy may pick a request with others after it,
                    # who still get their tokens: the victim's blocks are free now
                    scheduled = False
                    break
                if vi < i:
                    # it was scheduled earlier in this step: take its tokens back
                    i -= 1
                    for j, (r, m) in enumerate(batch):
                        if r is victim:
                            budget += m
                            del batch[j]
                            break
            if not scheduled:
                continue                     # `req` left `order`: index i holds the next request now
            batch.append((req, n))
            budget -= n
            i += 1
        return preempted, budget

    def schedule_cohort(self, rep) -> list | None:
        """The same policy when decoding requests sit in the replica's lazy cohort (`sim.cohort`).

        Valid only when every cohort member and every other running request gets all the tokens
        it wants and every block fits, so nobody is cut or preempted; otherwise return None and
        the engine runs `schedule` over materialised requests. Blocks are taken in running
        (admission) order, cohort members and prefilling requests interleaved, as `schedule` does.
        """
        plan = self._cohort_plan(rep)
        if plan is None:
            return None
        budget, demand, due = plan
        explicit = rep.explicit
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
        self._admit(rep, batch, budget - demand)
        return batch

    def _cohort_plan(self, rep) -> tuple[int, int, list] | None:
        """(budget, tokens the running requests want, the cohort's blocks due this step) when every running request
        gets all it wants and every block fits; else None (the exact path decides). Pops the due blocks."""
        if rep.swapped:
            return None
        budget = self._budget(rep)
        kv = rep.kv
        cohort = rep.cohort
        demand = cohort.size
        need = 0
        for req in rep.explicit:
            demand += req.num_tokens - req.num_computed
            need += kv.blocks_needed(req.id, min(req.num_tokens, req.kv_cap))
        if demand > budget:
            return None
        due = cohort.pop_due_blocks(cohort.tick + 1)
        if need + len(due) > kv.num_free_blocks:
            cohort.push_back(due)
            return None
        return budget, demand, due

    def _admit(self, rep, batch: list, budget: int, new: bool = True) -> None:
        """Bring back swapped requests, then (with `new`) admit waiting ones in order while the budget,
        max_num_seqs and the KV blocks allow."""
        cfg = rep.engine
        running = rep.running
        chunked = cfg.enable_chunked_prefill if self.chunked is None else self.chunked
        swapped = rep.swapped
        while swapped and budget > 0 and len(running) < cfg.max_num_seqs:
            req = swapped[0]
            n = req.num_tokens - req.num_computed
            if n > budget:
                if not chunked:
                    return
                n = budget
            if not rep.swap_in(req, req.num_computed + n):
                return                # swapped requests come back first: nothing new while they wait
            batch.append((req, n))
            budget -= n
        if not new:
            return
        waiting = rep.waiting
        visible_until = rep.visible_until
        fcfs = rep.ordering.is_fcfs
        i = 0
        while i < len(waiting) and budget > 0 and len(running) < cfg.max_num_seqs:
            req = waiting[i]
            if req.enqueued > visible_until:
                if fcfs:
                    break             # async scheduling: it arrived after this step was planned
                i += 1
                continue
            hits = rep.prefix_hits(req)
            loaded = rep.offloaded_hits(req, hits)     # more of the prefix in host / NVMe memory
            done = hits + loaded
            if req.preloaded > done:
                done = req.preloaded                   # its prompt's KV arrived from a prefill instance
            n = req.num_tokens - done
            if n > budget:
                if not chunked:
                    break
                n = budget
            if not rep.allocate(req, done + n, hits):
                break
            if i:
                del waiting[i]
            else:
                waiting.popleft()
            rep.admit(req, hits, loaded)
            batch.append((req, n))
            budget -= n

    def steady(self, rep) -> bool:
        """True when every following step would decode the current running set, one token each, until an arrival or
        a finish."""
        if rep.swapped or (rep.waiting and len(rep.running) < rep.engine.max_num_seqs):
            return False
        if len(rep.running) > self._budget(rep):
            return False
        return rep.prefilling == 0


@register("scheduler", "orca")
class OrcaScheduler(VLLMScheduler):
    """Orca (Yu et al., OSDI'22): iteration-level scheduling with selective batching, prompts never chunked.

    Every step each running request computes its next token and new requests join with their whole
    prompt (one step of prefill, mixed with the others' decodes) while `max_num_seqs` and the token
    budget allow; a prompt that does not fit the remaining budget waits. Orca reserved each
    request's maximum length up front: pair it with `kv_allocation: contiguous` for the original.
    """

    chunked = False


@register("scheduler", "sarathi")
class SarathiScheduler(VLLMScheduler):
    """Sarathi-Serve (Agrawal et al., OSDI'24): stall-free batching, decodes first, then prompt chunks, in a fixed token budget.

    Each step first gives every decoding request its token, then continues the partially computed
    prompts, then admits new ones, chunking prompts to fill exactly `token_budget` tokens, so a long
    prompt never stalls the decodes (the step time stays bounded). The paper's budget is 512 for
    strict latency targets (2048 for relaxed ones).
    """

    chunked = True

    class Options(BaseModel):
        """The options this plugin takes in YAML (validated at the config boundary)."""
        model_config = ConfigDict(extra="forbid")
        token_budget: PositiveInt = Field(512, description="Tokens per step (decodes + prompt chunks); Sarathi-Serve "
                                                            "uses 512 under strict TBT targets, 2048 under relaxed ones.")

    def __init__(self, options: "SarathiScheduler.Options | None" = None) -> None:
        super().__init__(options or self.Options())

    def _budget(self, rep) -> int:
        return self.options.token_budget

    def schedule(self, rep) -> list:
        """Decodes first, then ongoing prompt chunks, then admissions."""
        budget = self._budget(rep)
        batch: list = []
        running = rep.running
        order = [r for r in running if r.is_decoding] + [r for r in running if not r.is_decoding]
        preempted, budget = self._schedule_running(rep, order, batch, budget)
        if not preempted:
            self._admit(rep, batch, budget)
        return batch

    def schedule_cohort(self, rep) -> list | None:
        """Everyone gets all their tokens (else None): decodes' blocks first, then the prompts', as `schedule`
        allocates them."""
        if any(r.is_decoding for r in rep.explicit):
            return None
        plan = self._cohort_plan(rep)
        if plan is None:
            return None
        budget, demand, due = plan
        explicit = rep.explicit
        for _, _, member in due:
            rep.append_kv_block(member)
        batch = []
        for req in explicit:
            rep.grow_kv(req, req.num_tokens)
            batch.append((req, req.num_tokens - req.num_computed))
        self._admit(rep, batch, budget - demand)
        return batch


@register("scheduler", "vllm-v0")
class VLLMV0Scheduler(VLLMScheduler):
    """vLLM V0 (Kwon et al., SOSP'23) default scheduler: prefill-priority steps; prefill and decode never share a step.

    When waiting requests fit (whole prompts within `max_num_batched_tokens`, `max_num_seqs` and the
    free KV blocks), the step is prefill-only: it admits as many as fit, in order, and running
    requests wait. Otherwise every running request decodes one token; when blocks run out, victims
    are preempted (recompute, or swap with `preemption_mode: swap`). Swapped requests come back
    before new prompts are admitted.
    """

    chunked = False

    def schedule(self, rep) -> list:
        """A prefill-only step when any waiting request fits, else a decode-only step."""
        batch: list = []
        if not rep.swapped and rep.waiting:
            self._admit(rep, batch, self._budget(rep))
            if batch:
                return batch
        preempted, budget = self._schedule_running(rep, rep.running, batch, self._budget(rep))
        if not preempted and rep.swapped:
            self._admit(rep, batch, budget, new=False)
        return batch

    def schedule_cohort(self, rep) -> list | None:
        """Prefill steps leave the cohort idle; decode steps are the cohort's own (blocks permitting)."""
        if rep.swapped or rep.explicit:
            return None
        if rep.waiting:
            batch: list = []
            self._admit(rep, batch, self._budget(rep))
            if batch:
                rep.cohort_idle = True
                return batch
        cohort = rep.cohort
        due = cohort.pop_due_blocks(cohort.tick + 1)
        if len(due) > rep.kv.num_free_blocks:
            cohort.push_back(due)
            return None
        for _, _, member in due:
            rep.append_kv_block(member)
        return []


__all__ = ["VLLMScheduler", "OrcaScheduler", "SarathiScheduler", "VLLMV0Scheduler"]
