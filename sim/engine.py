"""The serving engine: one SimPy process per model replica, running batch iterations.

Each iteration the scheduler policy picks the batch (`policies.batching`), the KV manager
allocates its blocks (`sim.kvcache`), the cost model prices it (`sim.cost`) and the process sleeps
for that long; then requests advance through the state machine of `sim.request`.

Fast-forward (exact): in fast mode, decoding requests live in a `DecodeCohort` (`sim.cohort`) and
are advanced lazily, so a step costs O(requests that change) rather than O(batch). When the
scheduler says the batch is *steady* (everyone decodes one token per step and nobody can join),
the steps up to the next change (a request finishing, a KV block shortage that could force a
preemption) are priced at once with `CostModel.decode_run_times` and the process sleeps through
them. An arrival interrupts such a run, which is cut at the end of the step in progress (one step
later with async scheduling, whose plan for the next step was already made): exactly where the
per-iteration loop would first see the arrival. A scheduler that implements `schedule_cohort`
also plans mixed steps against the cohort; whenever it cannot promise that every member simply
decodes (a token budget that would cut someone, blocks that could run out), it returns None and
the engine takes one exact step over materialised requests. Blocks are allocated, and requests
finish, in the same order as step by step, so `mode="fast"` and the reference `mode="iteration"`
give bit-identical timestamps (tests compare them).
"""
from __future__ import annotations

from bisect import bisect_left

from array import array
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import simpy

from .cohort import DecodeCohort
from .cost import BatchShape, CostModel
from .kvcache import KVCacheManager
from .request import FINISHED, KV_UNBOUNDED, PREEMPTED, REJECTED, RUNNING, SWAPPED, WAITING, Request

# Longest fast-forward run, in steps: bounds the size of the vectorised pricing arrays.
MAX_RUN_STEPS = 4096
#: Runs up to this many steps are priced with plain floats (`CostModel.decode_run_list`), longer ones with numpy.
SHORT_RUN = 48
#: Steps priced at first in a short run (then twice as many each time the run goes on uninterrupted).
RUN_CHUNK = 8


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Engine knobs, named as vLLM names them (validated in experiments.config)."""

    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    block_size: int = 16
    enable_chunked_prefill: bool = True
    enable_prefix_caching: bool = True
    max_model_len: int = 4096
    preemption_mode: str = "recompute"
    async_scheduling: bool = False   # vLLM V1 --async-scheduling: step n+1 is planned while step n runs


class _FCFS:
    """The default order of the waiting queue: arrival order, preempted requests back at the head."""

    is_fcfs = True

    @staticmethod
    def admitted(req: Request) -> None:
        """Nothing to account."""


def _newest(running: list[Request]) -> Request:
    """vLLM's victim: the most recently admitted running request."""
    return running[-1]


@dataclass(slots=True)
class ReplicaPolicies:
    """The replica-level policies besides the batching scheduler (`policies/` builds them from the config).

    ordering: the order of the waiting queue (``is_fcfs``, ``sort(list) -> list``, ``admitted(req)``);
    victim: ``(running) -> request`` to preempt when KV blocks run out; admission: ``admit(req, replica,
    now) -> bool`` at arrival (None admits everyone); reserve_tokens: KV tokens reserved per request at
    admission (contiguous allocation reserves max_model_len; 0 = paged, blocks as the sequence grows);
    swap: a `sim.swap.HostSwap` when preemption swaps KV to host memory (None: recompute);
    speculator: a speculative-decoding drafter (`policies.speculative`), None for plain decoding;
    tiers: `sim.kvtiers.KVTiers` (host / NVMe tiers below the GPU prefix cache), None without offload;
    pipeline: the `sim.pipeline.Pipeline` this replica (a virtual engine) shares with the others of its PP replica;
    eviction: a token-eviction policy (`policies.kv_eviction`, ``cap(req) -> tokens``), None keeps all KV.
    """

    ordering: object = field(default_factory=_FCFS)
    victim: object = _newest
    admission: object = None
    reserve_tokens: int = 0
    swap: object = None
    speculator: object = None
    tiers: object = None
    pipeline: object = None
    eviction: object = None


class RequestLog:
    """Per-request records as compact columns (arrays of doubles/ints), not objects.

    ``tenant`` is stored as a code into ``tenants`` (-1 = none) and returned as an object array of
    names (None where untagged); a missing SLO is NaN.
    """

    COLUMNS = ("request_id", "replica", "arrival_s", "first_scheduled_s", "first_token_s", "finish_s",
               "input_tokens", "output_tokens", "cached_tokens", "preemptions", "recomputed_tokens", "stage",
               "tenant", "priority", "slo_ttft_s", "slo_tpot_s", "kv_transfer_s", "prefill_replica")
    _TYPES = "qqddddqqqqqqqqddd" + "q"

    def __init__(self) -> None:
        self.cols = {c: array(t) for c, t in zip(self.COLUMNS, self._TYPES)}
        self.tenants: list[str] = []
        self._tenant_code: dict[str, int] = {}

    def add(self, r: Request) -> None:
        """Append a finished request's record (one value per column)."""
        c = self.cols
        c["request_id"].append(r.id)
        c["replica"].append(r.replica)
        c["arrival_s"].append(r.arrival)
        c["first_scheduled_s"].append(r.first_scheduled)
        c["first_token_s"].append(r.first_token)
        c["finish_s"].append(r.finish)
        c["input_tokens"].append(r.prompt_len)
        c["output_tokens"].append(r.generated)
        c["cached_tokens"].append(r.cached_tokens)
        c["preemptions"].append(r.preemptions)
        c["recomputed_tokens"].append(r.recomputed_tokens)
        c["stage"].append(r.stage)
        t = r.tenant
        if t is None:
            code = -1
        else:
            code = self._tenant_code.get(t)
            if code is None:
                code = self._tenant_code[t] = len(self.tenants)
                self.tenants.append(t)
        c["tenant"].append(code)
        c["priority"].append(r.priority)
        c["slo_ttft_s"].append(_NAN if r.slo_ttft_s is None else r.slo_ttft_s)
        c["slo_tpot_s"].append(_NAN if r.slo_tpot_s is None else r.slo_tpot_s)
        c["kv_transfer_s"].append(r.kv_transfer_s)
        c["prefill_replica"].append(r.replica if r.prefill_replica < 0 else r.prefill_replica)

    def __len__(self) -> int:
        return len(self.cols["request_id"])

    def arrays(self) -> dict[str, np.ndarray]:
        """The records as numpy arrays by column; ``tenant`` as names (None where untagged)."""
        out = {k: np.frombuffer(v, dtype=np.float64 if v.typecode == "d" else np.int64) if len(v) else
               np.zeros(0, dtype=np.float64 if v.typecode == "d" else np.int64) for k, v in self.cols.items()}
        names = np.array(self.tenants + [None], dtype=object)
        out["tenant"] = names[out["tenant"]]      # code -1 picks the trailing None
        return out


_NAN = float("nan")


class StepLog:
    """Online per-iteration aggregates: step durations weighted by the inter-token gaps they create."""

    def __init__(self) -> None:
        self.itl = array("d")          # duration of a step that emitted non-first tokens
        self.itl_weight = array("q")   # how many non-first tokens it emitted
        self.iterations = 0
        self.busy_s = 0.0
        self.tokens = 0
        self.batch_sum = 0              # sum over steps of running sequences (mean batch size)
        self.peak_kv_usage = 0.0
        self.preemptions = 0
        self.rejected = 0
        self.swap_outs = 0
        self.copy_wait_s = 0.0          # steps' wait for KV copies (swap, offload loads)
        self.drafted_tokens = 0         # speculative decoding: draft tokens proposed,
        self.accepted_tokens = 0        # and accepted by the target
        self.spec_steps = 0             # sequence-steps that speculated

    def add_gaps(self, end: float, prev: float, n: int, late: dict | None) -> None:
        """Inter-token gaps ending at `end` for a cohort's members: `n` whose last token came out at `prev`, and
        per `late` time the members that joined with their last token then (`DecodeCohort.emitted`)."""
        if n:
            self.itl.append(end - prev)
            self.itl_weight.append(n)
        if late:
            for t, m in late.items():
                self.itl.append(end - t)
                self.itl_weight.append(m)


class Replica:
    """One model replica (a TP group) serving requests with a batching scheduler."""

    def __init__(self, env: simpy.Environment, index: int, cost: CostModel, kv: KVCacheManager,
                 engine: EngineConfig, scheduler, log: RequestLog, mode: str = "fast",
                 policies: ReplicaPolicies | None = None, own_loop: bool = True) -> None:
        self.env, self.index, self.cost, self.kv, self.engine = env, index, cost, kv, engine
        self.scheduler = scheduler
        self.log = log
        self.steps = StepLog()
        self.waiting: deque[Request] = deque()
        self.swapped: deque[Request] = deque()     # preempted by swap: KV in host memory, in swap-out order
        self.running: list[Request] = []
        p = policies or ReplicaPolicies()
        self.ordering = p.ordering
        self.pick_victim = lambda: p.victim(self.running)
        self.admission = p.admission
        self.reserve_tokens = p.reserve_tokens
        self.swap = p.swap
        self.spec = p.speculator
        self.tiers = p.tiers
        self.eviction = p.eviction
        self.pipeline = p.pipeline
        self._copier = self.swap is not None or self.tiers is not None    # KV copies may be queued for a step
        if self.tiers is not None:
            kv.evict_hook = self.tiers.evicted
        self._sorted = True                 # the waiting queue is in the ordering's order
        self.rejected: list[Request] = []   # refused by admission control (counted, never lost)
        # speculative decoding advances sequences by a sampled number of tokens per step, and a pipeline stage serves
        # the virtual engines' steps in the order they are planned: exact steps only
        self.fast = own_loop and mode == "fast" and self.spec is None and self.pipeline is None
        self._shape = getattr(scheduler, "shape", None)
        self._wake_at = getattr(scheduler, "wake_at", None)
        self.cohort_idle = False            # set by a scheduler for a step in which the cohort does not decode
        self.clock = 0.0                    # exact end time of the last step (our own float, not env.now)
        self._wake = env.event()
        self._run_ends: list | None = None   # cumulative end times of an interruptible run
        # the cost model's plain-float pricing of a short decode run, when it has one (wrappers may not)
        # (looked up on the class: a wrapper that forwards unknown attributes must not lend its inner model's method)
        self._run_list = cost.decode_run_list if hasattr(type(cost), "decode_run_list") else None
        self._admitted = 0
        self.extra_step_s = 0.0      # seconds added to the next step (inline multimodal encoding); see _take_extra
        self.kv_observed = False     # set when a router / autoscaler reads this replica's KV state between steps
        self.on_finish = None       # callback(request) when a request completes (closed-loop clients, routers)
        self.on_admit = None        # callback(request) when a request is first scheduled (layer-wise KV streaming)
        # Arrivals up to this time may be scheduled at the current scheduling point. With async
        # scheduling the plan for the next step was made when the last step started, so requests that
        # arrived during that step wait one more step (unless the replica was idle).
        self.visible_until = float("inf")
        self._lag = 2 if engine.async_scheduling else 1     # steps an interrupted run still runs
        # Fast mode keeps decoding requests in a lazily advanced cohort. A scheduler with
        # `schedule_cohort` plans every step against it; any other scheduler runs exact steps and the
        # cohort is built only for fast-forward runs of steady decode.
        self.cohort = DecodeCohort(engine.block_size) if self.fast else None
        self._schedule_cohort = getattr(scheduler, "schedule_cohort", None)
        self._live = False                  # the cohort holds the decoding requests right now
        self.explicit: list[Request] = []   # while live: running requests outside the cohort (prefilling)
        # (start, end, tokens, batch size) per step when the caller asks for it (timeline, Chrome trace);
        # None (the default) records nothing
        self.step_records: list | None = None
        # a rank of a lockstep group (sim.lockstep) is stepped by its group's process, not by a loop of its own
        self.proc = env.process(self._loop()) if own_loop else None

    # ------------------------------------------------------------ arrivals and policy hooks
    def enqueue(self, req: Request) -> None:
        """Accept an arriving request: hash its prompt blocks, queue it and wake (or interrupt) the replica loop."""
        req.replica = self.index
        now = self.env.now
        if now > req.enqueued:
            req.enqueued = now        # handed over late (a front-end stage, a KV transfer, an escalation): visible from now
        if self.admission is not None and not req.admitted:
            if not self.admission.admit(req, self, self.env.now):
                req.state = REJECTED
                self.steps.rejected += 1
                self.rejected.append(req)
                if self.on_finish is not None:
                    self.on_finish(req)       # the client hears the refusal at once
                return
            req.admitted = True           # admission happens once, at entry: not again after a KV transfer or escalation
        if self.eviction is not None:
            req.kv_cap = self.eviction.cap(req)
        if self.engine.enable_prefix_caching and req.segments is not None and not req.hashes:
            req.hashes = self.kv.block_hashes(req.segments, req.prompt_len)
        self.waiting.append(req)
        self._sorted = False
        if self._run_ends is not None:
            # a fast-forwarded run is in progress: cut it (checked first: a wake event left untriggered by a
            # scheduler's timed wake-up must not swallow the arrival)
            self._run_ends = None
            self.proc.interrupt()
        elif not self._wake.triggered:
            self._wake.succeed()

    @property
    def outstanding(self) -> int:
        """Requests waiting, swapped out or running on this replica."""
        return len(self.waiting) + len(self.swapped) + len(self.running)

    @property
    def prefilling(self) -> int:
        """Running requests that are not simply decoding: prompt (or recompute) tokens still to process,
        or no token sampled yet."""
        if self._live:
            return len(self.explicit)
        return sum(1 for r in self.running if not r.is_decoding)

    def prefix_hits(self, req: Request) -> int:
        """Prompt tokens of `req` already in the prefix cache (whole blocks, capped at prompt - 1)."""
        if not self.engine.enable_prefix_caching or not req.hashes:
            return 0
        return self.kv.lookup(req.hashes, req.num_tokens)

    def allocate(self, req: Request, tokens: int, hits: int) -> bool:
        """Take KV blocks for a request about to be admitted: `tokens` tokens of which `hits` are cached prefix
        (contiguous allocation reserves `reserve_tokens` at once). False, changing nothing, when the pool is short."""
        if tokens < self.reserve_tokens:
            tokens = self.reserve_tokens
        if tokens > req.kv_cap:
            tokens = req.kv_cap
        # hit accounting counts prompts as sent, not a preempted request's recomputation
        return self.kv.allocate(req.id, tokens, req.hashes, hits, req.num_tokens, count=not req.preemptions)

    def offloaded_hits(self, req: Request, hits: int) -> int:
        """Prompt tokens past the `hits` the GPU cache holds that the host / NVMe tiers hold (whole blocks, capped
        at prompt - 1)."""
        tiers = self.tiers
        if tiers is None or not req.hashes:
            return 0
        bs = self.engine.block_size
        # a disaggregated request's prompt KV has arrived from its prefill instance: nothing to load for that part
        limit = min((req.num_tokens - 1) // bs, len(req.hashes))
        if req.preloaded:
            limit = min(limit, hits // bs)
        return tiers.lookup(req.hashes, hits // bs, limit) * bs

    def admit(self, req: Request, hits: int, loaded: int = 0) -> None:
        """Move a waiting request to running with `hits` tokens cached on the GPU and `loaded` more to load from the
        offload tiers before the step (the scheduler has allocated its blocks)."""
        if req.first_scheduled < 0:
            req.first_scheduled = self.clock
            req.cached_tokens = hits + loaded
            if self.on_admit is not None:
                self.on_admit(req)
            if req.encoder_s:             # its images are encoded on this replica, in this step
                self.extra_step_s += req.encoder_s
                req.encoder_s = 0.0
        elif not req.preloaded:
            req.recomputed_tokens += req.num_tokens - hits - loaded
        if loaded:
            bs = self.engine.block_size
            self.tiers.load(req.hashes[hits // bs:(hits + loaded) // bs])
            hits += loaded
        if req.preloaded > hits:
            hits = req.preloaded          # its prompt's KV arrived from the prefill instance
        req.num_computed = hits
        self._start_running(req)
        if not self.ordering.is_fcfs:
            self.ordering.admitted(req)
            self._sorted = False

    def grow_kv(self, req: Request, tokens: int) -> bool:
        """Extend `req`'s KV blocks to hold `tokens` tokens (registering prompt blocks they fill for
        prefix caching); False, changing nothing, when the pool is short."""
        cap = req.kv_cap
        if tokens > cap:
            tokens = cap
        if not self.kv.grow(req.id, tokens, req.hashes):
            return False
        bs = self.engine.block_size
        slots = -(-tokens // bs) * bs
        if slots >= cap:
            slots = KV_UNBOUNDED          # its blocks hold its whole budget: eviction makes room from now on
        if slots > req.kv_slots:
            req.kv_slots = slots
        return True

    def append_kv_block(self, req: Request) -> None:
        """One more block for a decoding request at a block boundary (the caller checked the pool)."""
        if not self.kv.append_block(req.id):
            raise RuntimeError(f"no free KV block for request {req.id}; the caller must check the pool")
        req.kv_slots += self.engine.block_size
        if req.kv_slots >= req.kv_cap:
            req.kv_slots = KV_UNBOUNDED

    def preempt(self, req: Request) -> None:
        """Preempt a running request: swap its KV out to host memory when swap is configured and the host has
        room, else recompute (free the KV, keeping its full blocks cacheable, and requeue it at the head)."""
        self.running.remove(req)
        swap = self.swap
        if swap is not None:
            n = self.kv.num_blocks_of(req.id)
            if swap.reserve(n):
                self.kv.free(req.id)
                req.kv_slots = 0
                req.state = SWAPPED
                req.preemptions += 1
                st = self.steps
                st.preemptions += 1
                st.swap_outs += 1
                req.swapped_blocks = n
                self.swapped.append(req)
                return
        if self.engine.enable_prefix_caching:
            segs = (req.segments or ((("req", req.id), req.prompt_len),)) + ((("out", req.id), req.generated),)
            req.hashes = self.kv.block_hashes(segs, req.num_computed)
        self.kv.free(req.id, req.hashes)
        req.num_computed = 0
        req.preloaded = 0
        req.kv_slots = 0
        req.state = PREEMPTED
        req.preemptions += 1
        self.steps.preemptions += 1
        self.waiting.appendleft(req)
        self._sorted = False

    def swap_in(self, req: Request, tokens: int) -> bool:
        """Bring the head of the swapped queue back: blocks for `tokens` tokens on the GPU and a host-to-GPU copy of
        what it had (paid at the start of the step). False, changing nothing, when the pool is short."""
        # the copy brings back the prompt blocks it had: registered for prefix caching at once, as an admission does
        # (left to the next block boundary, only the per-iteration loop would get to it: fast-forward never grows)
        hashes = req.hashes if self.engine.enable_prefix_caching else ()
        if not self.kv.allocate(req.id, min(tokens, req.kv_cap), hashes, count=False):
            return False
        self.swapped.popleft()
        self.swap.release(req.swapped_blocks)
        req.swapped_blocks = 0
        self._start_running(req)
        return True

    def _start_running(self, req: Request) -> None:
        """Join the running list (last in admission order) holding the blocks just allocated for it."""
        req.state = RUNNING
        req.seq = self._admitted
        self._admitted += 1
        slots = self.kv.num_blocks_of(req.id) * self.engine.block_size
        req.kv_slots = KV_UNBOUNDED if slots >= req.kv_cap else slots
        self.running.append(req)
        if self._live:
            self.explicit.append(req)

    # ------------------------------------------------------------ the loop
    def _loop(self):
        env = self.env
        while True:
            if not self.waiting and not self.running and not self.swapped:
                self._wake = env.event()
                yield self._wake
                self.clock = env.now
                self.visible_until = float("inf")
            if self.fast:
                yield from self._cohort_iteration()
            else:
                yield from self._exact_step()

    def _order_waiting(self) -> None:
        """Put the waiting queue in the configured order (FCFS needs nothing: arrivals append, preemptions go to
        the head)."""
        if not self._sorted:
            self._sorted = True
            if len(self.waiting) > 1 and not self.ordering.is_fcfs:
                ordered = self.ordering.sort(list(self.waiting))
                self.waiting.clear()
                self.waiting.extend(ordered)

    def _exact_step(self):
        """One iteration over materialised requests (the reference semantics)."""
        env = self.env
        self._order_waiting()
        batch = self.scheduler.schedule(self)
        if not batch:
            yield from self._idle()
            return
        start = self.clock
        if self._copies_pending():
            yield from self._flush_copies()
            start = max(start, env.now)
        if self.spec is not None:
            yield from self._speculative_step(batch, start)
            return
        shape = self._shape(self, batch) if self._shape is not None else _shape_of(batch)
        work = self.cost.step_time(shape) + self._take_extra()
        if self.pipeline is not None:
            end = self.pipeline.run(start, work, shape.tokens)
        else:
            end = start + work
        yield env.timeout(end - env.now)
        dt = end - self.clock
        self.clock = end
        self.visible_until = start if self.engine.async_scheduling else end
        self._finish_step(batch, dt, end)

    def _take_extra(self) -> float:
        """Work added to this step beyond the batch's model pass (a multimodal encoder run inline), then reset."""
        extra = self.extra_step_s
        self.extra_step_s = 0.0
        return extra

    def _copies_pending(self) -> bool:
        return (self.swap is not None and self.swap.pending) or (self.tiers is not None and self.tiers.pending)

    def _flush_copies(self):
        """Run the KV copies the step's plan queued (swap out/in, loads from the offload tiers) and wait for them:
        vLLM issues them on the compute stream before the forward pass."""
        t0 = self.env.now
        if self.swap is not None and self.swap.pending:
            yield from self.swap.flush(self.env)
        if self.tiers is not None and self.tiers.pending:
            yield from self.tiers.flush(self.env)
        self.steps.copy_wait_s += self.env.now - t0

    def _speculative_step(self, batch, start: float):
        """One step with speculative decoding: each decoding sequence verifies its pending token plus up to K
        drafts (K + 1 positions, priced as a chunk of that many tokens) after the drafter's K steps, then advances
        by the accepted drafts + 1. A sequence whose blocks cannot hold the drafts decodes plainly."""
        env = self.env
        spec = self.spec
        K = spec.k
        shape = BatchShape()
        plain = []
        speculating = []
        draft_ctx = 0
        for req, n in batch:
            c = req.num_computed
            if req.generated and req.num_tokens - c == 1:
                k = min(K, req.output_len - req.generated - 1)
                if k > 0 and self.grow_kv(req, c + 1 + k):
                    shape.add_prefill(1 + k, c, True)
                    shape.sampled += k            # the target's logits at every verified position
                    speculating.append((req, k))
                    draft_ctx += c
                    continue
                shape.add_decode(c)
            else:
                shape.add_prefill(n, c, c + n == req.num_tokens)
            plain.append((req, n))
        dt = self.cost.step_time(shape) + self._take_extra()
        if speculating:
            dt += spec.draft_time(len(speculating), draft_ctx)
        end = start + dt
        yield env.timeout(end - env.now)
        step_dt = end - self.clock
        self.clock = end
        self.visible_until = start if self.engine.async_scheduling else end
        tokens, gaps, done, _ = self._advance(plain, end)
        st = self.steps
        if speculating:
            accepted = spec.sample_accepted(len(speculating))
            for (req, k), a in zip(speculating, accepted):
                t = req.last_token
                gaps[t] = gaps.get(t, 0) + 1          # its tokens of this step arrive together
                req.last_token = end
                a = min(int(a), k)
                req.num_computed += 1 + a
                req.num_tokens = req.num_computed + 1
                req.generated += 1 + a
                tokens += 1 + a
                st.drafted_tokens += k
                st.accepted_tokens += a
                if req.generated >= req.output_len:
                    done.append(req)
            st.spec_steps += len(speculating)
            done.sort(key=_by_seq)
        self._account(step_dt, end, tokens, len(batch), gaps)
        for req in done:
            self._complete(req, end)

    def _idle(self):
        """Nothing to run. If waiting requests were only hidden by async scheduling, the engine plans
        again at once and sees them; otherwise (nothing fits) it waits for an arrival, or for the scheduler's
        own wake-up time (a batching timeout)."""
        if self.waiting and self.waiting[0].enqueued > self.visible_until:
            self.visible_until = float("inf")
            return
        self._wake = self.env.event()
        wake_at = self._wake_at(self) if self._wake_at is not None else None
        if wake_at is not None and wake_at > self.env.now:
            yield self._wake | self.env.timeout(wake_at - self.env.now)
        else:
            yield self._wake
        self.clock = max(self.clock, self.env.now)
        self.visible_until = float("inf")

    def _finish_step(self, batch, dt: float, end: float) -> None:
        tokens, gaps, done, _ = self._advance(batch, end)
        self._account(dt, end, tokens, len(batch), gaps)
        for req in done:
            self._complete(req, end)

    @staticmethod
    def _advance(batch, end: float):
        """Apply a finished step to the requests in `batch`: computed tokens, sampled tokens, the first
        token's time. Returns (tokens, {previous token time: tokens whose gap ends now}, finished, now decoding)
        in batch order."""
        tokens = 0
        gaps: dict[float, int] = {}
        done = []
        decoding = []
        for req, n in batch:
            tokens += n
            c = req.num_computed + n
            req.num_computed = c
            if c == req.num_tokens:
                g = req.generated
                if g:
                    t = req.last_token
                    gaps[t] = gaps.get(t, 0) + 1
                else:
                    req.first_token = end
                req.last_token = end
                g += 1
                req.generated = g
                req.num_tokens = c + 1
                if g >= req.output_len:
                    done.append(req)
                else:
                    decoding.append(req)
        return tokens, gaps, done, decoding

    def _account(self, dt: float, end: float, tokens: int, batch: int, gaps: dict) -> None:
        """Per-step aggregates of one iteration; `gaps` maps the previous token's time to the number of
        sequences whose inter-token gap ends at `end`."""
        st = self.steps
        st.iterations += 1
        st.busy_s += dt
        st.batch_sum += batch
        st.tokens += tokens
        if self.step_records is not None:
            self.step_records.append((end - dt, end, tokens, batch))
        if gaps:
            for t, n in gaps.items():
                st.itl.append(end - t)
                st.itl_weight.append(n)
        usage = self.kv.usage
        if usage > st.peak_kv_usage:
            st.peak_kv_usage = usage

    def _complete(self, req: Request, end: float) -> None:
        req.finish = end
        req.state = FINISHED
        self.running.remove(req)
        if req.output_key is not None and self.engine.enable_prefix_caching:
            # vLLM keeps a finished request's full blocks cached; only a later prompt that contains
            # this output (the next turn of a conversation) can hit them, so only those are hashed
            segs = (req.segments or ((("req", req.id), req.prompt_len),)) + ((req.output_key, req.generated),)
            self.kv.free(req.id, self.kv.block_hashes(segs, req.num_computed))
        else:
            self.kv.free(req.id)
        self.log.add(req)
        if self.on_finish is not None:
            self.on_finish(req)

    # ------------------------------------------------------------ cohort mode
    def _cohort_iteration(self):
        cohort = self.cohort
        if self.running and self.scheduler.steady(self):
            if not self._live:
                self._rebuild_cohort()
            k = self._cohort_run_length()
            if k >= 1:
                yield from self._cohort_run(k)
                return
        if not self._sorted:
            self._order_waiting()
        batch = self._schedule_cohort(self) if self._schedule_cohort is not None and self._live else None
        if batch is None:
            # the exact path: materialise everyone and run one step; a cohort-planning scheduler gets
            # its cohort back at once, any other only when the batch is steady again
            if self._live:
                cohort.clear(self.running)
                self.explicit = []
                self._live = False
            yield from self._exact_step()
            if self._schedule_cohort is not None:
                self._rebuild_cohort()
            return
        if not batch and not cohort.size:
            yield from self._idle()
            return
        yield from self._cohort_step(batch)

    def _rebuild_cohort(self) -> None:
        cohort = self.cohort
        explicit = []
        for req in self.running:
            if req.is_decoding:
                cohort.add(req)
            else:
                explicit.append(req)
        self.explicit = explicit
        self._live = True

    def _cohort_run_length(self) -> int:
        cohort = self.cohort
        if self.tiers is not None or self.kv_observed:
            # a new block may evict a cached one, whose copy down to the offload tier must start when the exact loop
            # would start it; and a router or autoscaler that reads KV usage or the prefix cache mid-run must see what
            # the exact loop shows: run only on the blocks the members hold (the boundary step is then an exact one)
            k_kv = cohort.min_slack()
        else:
            k_kv = (self.kv.num_free_blocks // cohort.size) * self.engine.block_size + cohort.min_slack()
        return min(cohort.steps_to_finish(), k_kv, MAX_RUN_STEPS)

    def _cohort_decoders(self) -> tuple[int, bool]:
        """(cohort members decoding in the step being planned, whether the cohort sits out): all of them, or none on
        a prefill-only step (vllm-v0, where the scheduler sets `cohort_idle`); consumes the flag."""
        if self.cohort_idle:
            self.cohort_idle = False
            return 0, True
        return self.cohort.size, False

    def _cohort_step(self, batch):
        """One iteration: the cohort decodes one token each; `batch` holds everyone else's work."""
        cohort = self.cohort
        seqs, idle = self._cohort_decoders()
        prev = start = self.clock
        if self._copier and self._copies_pending():
            yield from self._flush_copies()
            start = max(start, self.env.now)
        if self.extra_step_s:
            # the same association as the per-iteration step: start + (model pass + encoder)
            end = start + (self.cost.step_time(_shape_of(batch, seqs, cohort.ctx if seqs else 0)) + self._take_extra())
        else:
            end = start + self.cost.step_time(_shape_of(batch, seqs, cohort.ctx if seqs else 0))
        yield self.env.timeout(end - self.env.now)
        self._finish_cohort_step(batch, seqs, idle, end - prev, start, end)

    def _finish_cohort_step(self, batch, seqs: int, idle: bool, dt: float, start: float, end: float) -> None:
        """Apply a finished cohort-mode step (`seqs` cohort decoders, none when the cohort sat it out; `batch`
        everyone else's work) that ran from `start` to `end`. Shared by the replica's own loop and a lockstep
        group's (sim.lockstep)."""
        cohort = self.cohort
        self.clock = end
        self.visible_until = start if self.engine.async_scheduling else end
        if not idle:
            cohort.advance(1)
        tokens, gaps, done, joiners = self._advance(batch, end) if batch else (0, None, [], None)
        self._account(dt, end, tokens + seqs, len(batch) + seqs, gaps)
        if seqs:
            # the cohort's gaps, as their own entries (the same values the per-iteration loop merges)
            self.steps.add_gaps(end, *cohort.emitted(end))
        if joiners:
            explicit = self.explicit
            for req in joiners:
                explicit.remove(req)
                cohort.add(req)
        finished = cohort.pop_finished()
        if done:
            explicit = self.explicit
            for req in done:
                explicit.remove(req)
            if finished:
                done.extend(finished)
                done.sort(key=_by_seq)
        else:
            done = finished
        for req in done:
            self._complete(req, end)

    def _cohort_run(self, k: int):
        """k steady steps of the cohort, priced at once; cut short by an arrival."""
        env = self.env
        cohort = self.cohort
        seqs = cohort.size
        clock = self.clock
        if k <= SHORT_RUN and self._run_list is not None:
            # a short run (the usual one under steady arrivals): plain floats beat a dozen numpy calls, priced a
            # few steps at a time because an arrival usually cuts the run before its end
            times: list = []
            ends: list = []
            self._run_ends = ends
            done = 0
            while True:
                self._price_more(times, ends, seqs, clock, min(k, max(RUN_CHUNK, 2 * len(ends))))
                try:
                    yield env.timeout(ends[-1] - env.now)
                except simpy.Interrupt:
                    done = min(bisect_left(ends, env.now) + self._lag_at(env.now, clock), k)
                    if done > len(ends):                 # the lag reaches past what was priced
                        self._price_more(times, ends, seqs, clock, done)
                    yield env.timeout(max(ends[done - 1] - env.now, 0.0))
                    break
                if len(ends) == k:
                    done = k
                    break
        else:
            arr = self.cost.decode_run_times(seqs, cohort.ctx, k)
            # cumsum adds sequentially, as the loop in _price_more does: both paths give the same end times
            ends = np.cumsum(np.concatenate(([clock], arr)))[1:].tolist()
            times = arr.tolist()
            self._run_ends = ends
            try:
                yield env.timeout(ends[-1] - env.now)
                done = k
            except simpy.Interrupt:
                j = bisect_left(ends, env.now)
                done = min(j + self._lag_at(env.now, clock), k)
                yield env.timeout(max(ends[done - 1] - env.now, 0.0))
        self._run_ends = None
        self._commit_run(done, ends, times, clock)

    def _lag_at(self, now: float, clock: float) -> int:
        """Steps an interrupted run still runs for an arrival at `now` (the run started at `clock`): under async
        scheduling the step after the one in progress was planned already, unless the arrival came at the very
        start of the run, when the plan of the first step had been made but the second's had not."""
        return self._lag if now > clock else 1

    def _commit_run(self, done: int, ends: list, times: list, clock: float) -> None:
        """Apply the first `done` steps of a priced cohort run that started at `clock` (step lengths `times`, end
        times `ends`): blocks at the members' boundaries, counters, step aggregates and inter-token gaps, finished
        requests. Shared by the replica's own runs and a lockstep group's (sim.lockstep)."""
        cohort = self.cohort
        seqs = cohort.size
        kv = self.kv
        due = cohort.pop_due_blocks(cohort.tick + done)
        if due:
            # _cohort_run_length guaranteed the pool holds them all
            members = [entry[2] for entry in due]
            kv.append_blocks([req.id for req in members])
            bs = self.engine.block_size
            for req in members:
                slots = req.kv_slots + bs
                req.kv_slots = slots if slots < req.kv_cap else KV_UNBOUNDED
        cohort.advance(done)
        st = self.steps
        st.iterations += done
        st.busy_s += sum(times[:done])
        st.batch_sum += done * seqs
        st.tokens += done * seqs
        end = ends[done - 1]
        prev, n, late = cohort.emitted(end)
        if n == seqs and prev == clock:
            # the usual case: everyone's last token came out at the run's start, so every gap is one step
            gaps = [ends[0] - clock]
            gaps += [ends[i] - ends[i - 1] for i in range(1, done)]
            st.itl.extend(gaps)
            st.itl_weight.extend([seqs] * done)
        else:
            st.add_gaps(ends[0], prev, n, late)   # the first step's gaps start at each member's last token
            if done > 1:
                st.itl.extend([ends[i] - ends[i - 1] for i in range(1, done)])
                st.itl_weight.extend([seqs] * (done - 1))
        usage = kv.usage
        if usage > st.peak_kv_usage:
            st.peak_kv_usage = usage
        if self.step_records is not None:
            self._record_run(ends[:done], seqs)
        last_start = ends[done - 2] if done >= 2 else clock
        self.visible_until = last_start if self.engine.async_scheduling else end
        self.clock = end
        for req in cohort.pop_finished():
            self._complete(req, end)

    def _price_more(self, times: list, ends: list, seqs: int, clock: float, upto: int) -> None:
        """Extend a short run's step times and end times to `upto` steps (the cohort's context grows by `seqs`
        per step; the ints stay exact, so pricing in pieces gives the same floats as pricing at once)."""
        have = len(ends)
        if upto <= have:
            return
        more = self._run_list(seqs, self.cohort.ctx + seqs * have, upto - have)
        t = ends[-1] if ends else clock
        for x in more:
            t = t + x
            ends.append(t)
        times.extend(more)

    def _record_run(self, e: list, seqs: int) -> None:
        """Step records of a fast-forwarded run (called before `clock` moves to its end)."""
        n = len(e)
        self.step_records.extend(zip([self.clock] + e[:-1], e, [seqs] * n, [seqs] * n))

    # ------------------------------------------------------------ fast-forward


def _shape_of(batch, decodes: int = 0, ctx: int = 0) -> BatchShape:
    """The cost model's view of a step: prompt chunks one by one, decodes as a count and a context sum
    (`decodes`/`ctx` start with the cohort's, whose members are not in `batch`)."""
    shape = BatchShape()
    for req, n in batch:
        c = req.num_computed
        if req.generated and req.num_tokens - c == 1:      # Request.is_decoding, inlined: per request per step
            decodes += 1
            ctx += c + 1
        else:
            shape.add_prefill(n, c, c + n == req.num_tokens)
    shape.tokens += decodes
    shape.sampled += decodes
    shape.decode_seqs = decodes
    shape.decode_ctx = ctx
    return shape


def _by_seq(req: Request) -> int:
    return req.seq


def request_from_spec(spec) -> Request:
    """The engine's mutable request for a workload's RequestSpec."""
    req = Request(spec.request_id, spec.arrival_s, spec.input_tokens, spec.output_tokens, spec.segments,
                  spec.session_id, spec.stage, spec.tenant, spec.priority, spec.slo_ttft_s, spec.slo_tpot_s)
    req.output_key = spec.output_key
    if spec.images is not None:
        req.images = spec.images
    req.difficulty = spec.difficulty
    req.cache_hit = spec.cache_hit
    return req


def drive_arrivals(env: simpy.Environment, requests, route, on_arrival=None):
    """SimPy process feeding requests (an iterable of RequestSpec in arrival order) to `route(req)`."""
    for spec in requests:
        if spec.arrival_s > env.now:
            yield env.timeout(spec.arrival_s - env.now)
        req = request_from_spec(spec)
        if on_arrival is not None:
            on_arrival(req)
        route(req)


__all__ = ["EngineConfig", "Replica", "RequestLog", "StepLog", "drive_arrivals", "request_from_spec", "MAX_RUN_STEPS",
           "WAITING", "RUNNING"]
