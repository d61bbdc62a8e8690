"""A request's state inside a replica, and the state machine it moves through.

    WAITING --schedule--> RUNNING (prompt chunks, then one token per step) --last token--> FINISHED
       ^                      |
       +----- PREEMPTED <-----+   (recompute: KV freed, the prompt and the tokens generated so far
       |                      |    are computed again when it is scheduled next)
       |                      +--> SWAPPED --swap in--> RUNNING   (swap: KV copied to host memory and back)
       +--> REJECTED               (admission control refused it at arrival)

Token accounting follows vLLM V1: `num_tokens` is prompt + generated tokens, `num_computed` the
tokens whose KV is in the cache. Each step a running request computes `num_tokens - num_computed`
tokens (its whole remaining prompt, a chunk of it, or the one token it sampled last); when
`num_computed` reaches `num_tokens` it samples the next token.
"""
from __future__ import annotations

WAITING, RUNNING, PREEMPTED, FINISHED = "waiting", "running", "preempted", "finished"
SWAPPED = "swapped"      # preempted by swap: its KV sits in host memory until it is swapped back in
REJECTED = "rejected"    # refused at arrival by admission control
#: A KV capacity that never runs out: a request under token eviction whose blocks hold its whole budget gets
#: ``kv_slots = KV_UNBOUNDED`` (new tokens overwrite evicted slots; no block is ever added again).
KV_UNBOUNDED = 1 << 50


class Request:
    """One request in a replica. Slotted: the engine touches these on its hot path."""

    __slots__ = ("id", "arrival", "prompt_len", "output_len", "segments", "hashes", "num_tokens",
                 "num_computed", "generated", "state", "first_scheduled", "first_token", "finish",
                 "preemptions", "cached_tokens", "recomputed_tokens", "session_id", "stage", "replica", "kv_slots", "seq", "lazy_tick",
                 "tenant", "priority", "slo_ttft_s", "slo_tpot_s", "output_key", "swapped_blocks", "preloaded", "last_token",
                 "kv_transfer_s", "prefill_replica", "images", "difficulty", "cache_hit", "encoder_s", "model", "kv_cap", "enqueued",
                 "admitted")

    def __init__(self, rid: int, arrival: float, prompt_len: int, output_len: int, segments=None,
                 session_id: str | None = None, stage: int = 0, tenant: str | None = None, priority: int = 0,
                 slo_ttft_s: float | None = None, slo_tpot_s: float | None = None) -> None:
        self.id = rid
        self.arrival = arrival
        self.enqueued = arrival    # when a replica got it: later than arrival after a front-end stage's delay
        self.prompt_len = prompt_len
        self.output_len = output_len
        self.segments = segments
        self.hashes: tuple[int, ...] = ()
        self.num_tokens = prompt_len
        self.num_computed = 0
        self.generated = 0
        self.state = WAITING
        self.first_scheduled = -1.0
        self.first_token = -1.0
        self.finish = -1.0
        self.last_token = -1.0     # when its latest token came out (inter-token gaps); lazy inside a decode cohort
        self.preemptions = 0
        self.cached_tokens = 0
        self.recomputed_tokens = 0
        self.session_id = session_id
        self.stage = stage
        self.replica = 0
        self.kv_slots = 0          # tokens the request's KV blocks can hold (blocks x block_size)
        self.seq = -1              # admission order in its replica (the running list is sorted by it)
        self.lazy_tick = -1        # >= 0 while in the replica's decode cohort (sim.cohort)
        self.output_key = None     # cache the generated tokens under this key when finished (sessions)
        self.tenant = tenant            # request class (workloads.classes): who sent it,
        self.priority = priority        # how urgent it is (policies decide what that means),
        self.slo_ttft_s = slo_ttft_s    # and the latency it was promised (None: no target)
        self.slo_tpot_s = slo_tpot_s
        self.swapped_blocks = 0         # KV blocks held in host memory while SWAPPED
        self.preloaded = 0              # prompt tokens whose KV arrived from elsewhere (a prefill instance)
        self.admitted = False           # passed admission control once (a decode pool or escalation tier: not again)
        self.kv_transfer_s = 0.0        # time its KV spent moving between instances (PD disaggregation)
        self.prefill_replica = -1       # the instance that ran its prompt, when not this one
        self.images = None              # ((image id, encoder tokens), ...) of a multimodal prompt (workload)
        self.difficulty = None          # a difficulty score in [0, 1] for cascade routing (workload / trace)
        self.cache_hit = None           # a result-cache hit flag given by the trace (None: the cache decides)
        self.encoder_s = 0.0            # encoder work the replica runs in the step that first schedules it
        self.model = None               # which model served it, in a multi-model deployment
        self.kv_cap = KV_UNBOUNDED      # most tokens of KV it may hold (token eviction: policies.kv_eviction)

    @property
    def is_decoding(self) -> bool:
        """True once the request samples one token per step (its prompt is fully computed)."""
        return self.generated > 0 and self.num_tokens - self.num_computed == 1

    def __repr__(self) -> str:
        return (f"Request({self.id}, {self.state}, computed={self.num_computed}/{self.num_tokens}, "
                f"generated={self.generated}/{self.output_len})")
