"""Sequence (context) parallelism: one long prompt's tokens and KV spread over `degree` GPUs.

A 1M-token prompt of Llama-3.1-8B needs 128 GiB of KV (bf16), more than one H100 holds. With
sequence parallelism (SP) a replica spans ``tp x sp`` GPUs: `sp` ranks, each a TP group holding the
TP-sharded weights (replicated over the ranks, so `weight_bytes_per_gpu` is the wrapped model's).
Each rank holds 1/sp of every sequence's KV (`kv_bytes_per_token_per_gpu` is divided by sp, so the
replica's KV pool holds sp times the tokens) and runs the linear layers on its 1/sp slice of the
prompt's tokens. Attention needs every key, and the two standard schemes differ in what they move:

- **ring** (Ring Attention, Liu et al. 2023, arXiv:2310.01889; pass-KV as in Meta's "Context
  Parallelism for Scalable Million-Token Inference", arXiv:2411.01783): the ranks form a ring; each
  keeps its query block and the KV blocks travel around. In each of sp steps a rank computes its
  queries against the block it holds while it sends that block on, so a layer takes
  ``(sp - 1) x max(block compute, block transfer) + block compute``. Tokens are assigned in the
  load-balanced (zigzag) order of Llama 3's context parallelism, so every block holds ~1/sp^2 of
  the causal pairs; each step is one attention kernel call (its fixed cost paid per step, the
  per-query-token work once). Communication hides while a block's compute outlasts its transfer: a
  rank's query block must exceed about ``attention FLOP/s x KV bytes per token / (FLOPs per pair x
  link bandwidth)`` tokens (`ring_hiding_block_tokens`; for a chunk over a long cached context
  ~210 for Llama-3.1-8B on NVLink 4, ~1,500 on PCIe Gen5 or IB NDR, twice that for a whole
  prompt); shorter blocks (small chunks over many ranks) expose it.
- **ulysses** (DeepSpeed-Ulysses, Jacobs et al. 2023, arXiv:2309.14509): an all-to-all turns the
  sequence split of q, k, v into a head split, each rank runs attention over the whole sequence for
  heads/sp heads, and a fourth all-to-all turns the output back. Nothing overlaps, but the bytes
  are small (one rank's tokens' q, k, v and output per layer); sp must divide each TP rank's heads.
  K and V are kept sequence-sharded as projected (1/sp per rank), so the cached context of a later
  chunk is exchanged too.

Decode (both kinds): every rank runs the linear layers for the decoding tokens (the weights are
replicated; this avoids broadcasting the residual stream), attends over its 1/sp of each sequence's
KV, and the partial outputs and log-sum-exps are combined per layer (flash-decoding's split-KV
reduction across GPUs, as in Mnemosyne's KV parallelism, arXiv:2409.17264): one all-gather of
``seqs x heads x (head_dim + 1)`` fp32 values, latency + bytes.

The wrapper prices the slowest rank (ceil of the token split) through the wrapped model's public
methods, so whatever that model prices (GPU, dtypes, kernels, TP all-reduces) carries over. Links are
one per-GPU bandwidth and one latency per message (`wrap`), derived from the placement's path on the
topology (the SP ring's narrowest hop), plus optionally the placement's all-to-all. Degree 1 is the
wrapped model, exactly.
"""
from __future__ import annotations

import math
from collections.abc import Callable

from .cost import BatchShape, CostModel, OpCost
from .errors import ConfigError
from .hardware import DTYPE_BYTES, get_link
from .memory import plan_memory

SP_KINDS = ("ring", "ulysses")

# Decode's cross-rank combine moves each head's partial output and its log-sum-exp in fp32, as
# flash-decoding's split-KV reduction keeps them (FlashAttention-2 `flash_attn_with_kvcache`
# num_splits path: out_accum / softmax_lse_accum are float32).
PARTIAL_BYTES = 4

_ATTENTION_ROWS = ("attention_prefill", "attention_decode", "engine_overhead")


def default_link(cost: CostModel) -> tuple[float, float]:
    """(achievable bytes/s per direction, latency s) of the GPU's own scale-up link (its host link when it has
    none): the SP ring inside one server. Across servers pass the fabric's figures to `wrap`."""
    spec = get_link(cost.gpu.scaleup or cost.gpu.host_link)
    return spec.bandwidth, spec.latency_us * 1e-6


class SequenceParallelCostModel:
    """A `CostModel` for a replica of `degree` SP ranks (each a TP group of the wrapped model).

    Same interface as `CostModel`: `step_time`, `decode_run_times`, `breakdown`, the memory figures
    `plan_memory` reads; anything else is the wrapped model's. It prices through the wrapped model's public
    methods only: `breakdown` (the linear ops for a rank's tokens, cached; one attention call per ring step)
    and `decode_attention_time` (decode attention over a rank's slice of the context)."""

    __slots__ = ("_inner", "degree", "kind", "link_bw", "link_latency", "combine_latency", "alltoall", "_rep",
                 "_comb_bytes", "_q_bytes", "_lin", "_per_query")

    def __init__(self, cost: CostModel, degree: int, kind: str = "ring", link_bw: float | None = None,
                 link_latency: float | None = None, alltoall: Callable[[float], float] | None = None) -> None:
        """`link_bw`, `link_latency`: bytes/s per direction and seconds per message of the SP ring's narrowest hop
        (default: the GPU's scale-up link); `alltoall(bytes_per_gpu) -> s`: the placement's all-to-all over the SP
        ranks (Ulysses; default: latency + (sp - 1)/sp x bytes / link_bw)."""
        if isinstance(degree, bool) or not isinstance(degree, int) or degree < 1:
            raise ConfigError(f"parallelism.sp must be an integer >= 1, got {degree!r}")
        if kind not in SP_KINDS:
            raise ConfigError(f"parallelism.sp_type {kind!r} is not one of {', '.join(SP_KINDS)}")
        bw, lat = default_link(cost)
        link_bw = bw if link_bw is None else float(link_bw)
        link_latency = lat if link_latency is None else float(link_latency)
        if not link_bw > 0:
            raise ConfigError(f"sequence-parallel link bandwidth must be > 0 bytes/s, got {link_bw!r}")
        if not link_latency >= 0:
            raise ConfigError(f"sequence-parallel link latency must be >= 0 s, got {link_latency!r}")
        self._inner, self.degree, self.kind = cost, degree, kind
        self.link_bw, self.link_latency, self.alltoall = link_bw, link_latency, alltoall
        # the decode combine is a small-message collective, like a TP all-reduce of a decode step: the engine's
        # own small-collective latency (engines.yaml allreduce_latency_s), or the link's if that is slower
        self.combine_latency = max(cost.engine.allreduce_latency_s, link_latency)
        m, tp = cost.model, cost.tp
        heads = m.num_heads // tp
        self._rep = 1.0
        if kind == "ulysses" and degree > 1:
            if m.attention_type == "mla":
                raise ConfigError(f"parallelism.sp_type: ulysses splits KV heads, and {m.name}'s MLA latent has none; "
                                  f"use parallelism.sp_type: ring")
            if heads % degree:
                raise ConfigError(f"parallelism.sp={degree} with sp_type: ulysses must divide the {heads} attention "
                                  f"heads of each TP rank ({m.name}, tp={tp}); use an sp that divides {heads}, "
                                  f"or sp_type: ring")
            kv_local = max(1, m.num_kv_heads // tp)
            if kv_local % degree and degree % kv_local:
                raise ConfigError(f"parallelism.sp={degree} with sp_type: ulysses must divide, or be a multiple of, "
                                  f"the {kv_local} KV heads of each TP rank ({m.name}, tp={tp}); use sp_type: ring")
            # fewer KV heads than ranks: each KV head goes to sp / kv_local ranks (GQA groups split over ranks)
            self._rep = max(1.0, degree / kv_local)
        v_dim = m.kv_lora_rank if m.attention_type == "mla" else m.head_dim   # MLA combines in the latent space
        self._comb_bytes = heads * (v_dim + 1) * PARTIAL_BYTES
        # Ulysses: a query token's q goes out and its attention output comes back, every layer
        self._q_bytes = 2 * heads * m.head_dim * DTYPE_BYTES[cost.act_dtype]
        self._lin: dict[tuple[int, int], float] = {}
        # the wrapped model's per-query-token attention cost beyond the roofline (rotary, the KV write, partial
        # tiles), which a ring pays once per token, not once per step: the slope in query tokens of a call whose
        # compute (1e12 pairs) dwarfs its memory traffic
        big = 1 << 20
        self._per_query = (self._attention_call(1, big, 1e12, 0).time_s
                           - self._attention_call(1, 0, 1e12, 0).time_s) / big

    # ----------------------------------------------------------------- what plan_memory and the engine read
    def __getattr__(self, name: str):
        if name == "_inner":                       # not set yet (copy / unpickling): no recursion
            raise AttributeError(name)
        return getattr(self._inner, name)

    @property
    def inner(self) -> CostModel:
        """The wrapped (one rank's) cost model."""
        return self._inner

    @property
    def gpus_per_replica(self) -> int:
        """GPUs one replica spans: tp x sp."""
        return self._inner.tp * self.degree

    @property
    def weight_bytes_per_gpu(self) -> float:
        """The wrapped model's: weights are TP-sharded and replicated on every SP rank."""
        return self._inner.weight_bytes_per_gpu

    @property
    def kv_bytes_per_token_per_gpu(self) -> float:
        """KV bytes per token on each GPU: 1/sp of the wrapped model's (both kinds keep KV sequence-sharded)."""
        return self._inner.kv_bytes_per_token_per_gpu / self.degree

    # ----------------------------------------------------------------- pieces, all layers
    def _linear(self, tokens: int, sampled: int) -> float:
        """Every op but attention and host overhead for a rank's `tokens` rows: the wrapped model's breakdown
        rows (TP all-reduces included), cached by shape as `CostModel` caches its own."""
        key = (tokens, sampled)
        t = self._lin.get(key)
        if t is None:
            rows = self._inner.breakdown(BatchShape(tokens=tokens, sampled=sampled))
            t = sum(r.time_s for r in rows if r.name not in _ATTENTION_ROWS)
            self._lin[key] = t
        return t

    def _attention_call(self, seqs: int, q: int, pairs: float, kv: float) -> OpCost:
        """One prefill-attention call over all layers (`seqs` sequences, `q` query tokens, `pairs` query-key
        pairs, `kv` KV tokens read), priced by the wrapped model."""
        b = BatchShape(prefill_seqs=seqs, prefill_tokens=q, prefill_attn=pairs, prefill_kv=kv)
        for r in self._inner.breakdown(b):
            if r.name == "attention_prefill":
                return r
        return OpCost("attention_prefill", 0.0, 0.0, 0.0, "latency")

    def _prefill(self, b: BatchShape) -> tuple[float, OpCost, float]:
        """Prefill attention on the slowest rank: (seconds, the attention compute as an op row, bytes sent to
        other ranks); seconds - compute is the communication that shows."""
        d, L = self.degree, self._inner.model.num_layers
        if d == 1:
            r = self._attention_call(b.prefill_seqs, b.prefill_tokens, b.prefill_attn, b.prefill_kv)
            return r.time_s, r, 0.0
        qd, kd = -(-b.prefill_tokens // d), -(-b.prefill_kv // d)
        kv_tok = self._inner.kv_bytes_per_token_per_gpu          # all layers
        if self.kind == "ring":
            # zigzag order: each of the sp blocks holds ~1/sp^2 of the causal pairs; one kernel call per block,
            # the per-query-token work once
            r = self._attention_call(b.prefill_seqs, qd, b.prefill_attn / (d * d), kd)
            once = self._per_query * qd
            c = r.time_s - once
            x = L * self.link_latency + kd * kv_tok / self.link_bw
            total = (d - 1) * max(c, x) + c + once
            row = OpCost("attention_prefill", d * c + once, d * r.flops, d * r.bytes, r.bound)
            return total, row, (d - 1) * kd * kv_tok
        kr = kd * self._rep                                          # heads/sp over the whole sequence
        r = self._attention_call(b.prefill_seqs, qd, b.prefill_attn / d, kr)
        q_out, kv = qd * self._q_bytes * L, kr * kv_tok             # q out and output back; k and v out
        if self.alltoall is None:
            comm = 4 * L * self.link_latency + (d - 1) / d * (q_out + kv) / self.link_bw
        else:
            comm = 2 * L * self.alltoall(q_out / (2 * L)) + 2 * L * self.alltoall(kv / (2 * L))
        return r.time_s + comm, r, (d - 1) / d * (q_out + kv)

    def _combine(self, seqs: int) -> float:
        """All layers: the decode partials' all-gather over the SP ranks (0 with one rank)."""
        d = self.degree
        if d == 1:
            return 0.0
        return self._inner.model.num_layers * (self.combine_latency + (d - 1) * seqs * self._comb_bytes / self.link_bw)

    def _host(self, prefill_seqs: int, decode_seqs: int, tokens: int) -> float:
        return self._inner.engine.host_time(prefill_seqs, decode_seqs, tokens)

    def _local_tokens(self, b: BatchShape) -> int:
        """New tokens on the slowest rank: its slice of the prompt tokens, and every decoding token."""
        return -(-b.prefill_tokens // self.degree) + (b.tokens - b.prefill_tokens)

    # ----------------------------------------------------------------- pricing
    def step_time(self, b: BatchShape) -> float:
        """Seconds for one iteration of batch `b` on the slowest SP rank, engine overhead included."""
        if self.degree == 1:
            return self._inner.step_time(b)
        return self._step(b)

    def _step(self, b: BatchShape) -> float:
        if b.tokens == 0:
            return 0.0
        t = self._linear(self._local_tokens(b), b.sampled)
        if b.prefill_seqs:
            t += self._prefill(b)[0]
        if b.decode_seqs:
            seqs = b.decode_seqs
            t += self._inner.decode_attention_time(seqs, b.decode_ctx / self.degree) + self._combine(seqs)
        host = self._host(b.prefill_seqs, b.decode_seqs, b.tokens)
        return max(t, host) if self._inner.engine.async_scheduling else t + host

    def decode_run_times(self, seqs: int, ctx_sum: int, steps: int):
        """Times of `steps` pure-decode iterations (as `CostModel.decode_run_times`), each equal to `step_time`."""
        if self.degree == 1:
            return self._inner.decode_run_times(seqs, ctx_sum, steps)
        import numpy as np

        base = self._linear(seqs, seqs)
        ctx = (ctx_sum + seqs * np.arange(steps, dtype=np.float64)) / self.degree
        attn = self._inner.decode_attention_time(seqs, ctx) + self._combine(seqs)
        host = self._host(0, seqs, seqs)
        return np.maximum(base + attn, host) if self._inner.engine.async_scheduling else base + attn + host

    def breakdown(self, b: BatchShape) -> list[OpCost]:
        """Per-op costs of one iteration on the slowest rank; SP adds network rows (sp_ring_exposed: the ring's
        transfers that compute does not hide; sp_alltoall; sp_decode_combine). Sums to `step_time`."""
        inner = self._inner
        if self.degree == 1:
            return inner.breakdown(b)
        d = self.degree
        local = BatchShape(tokens=self._local_tokens(b), sampled=b.sampled)
        rows = [r for r in inner.breakdown(local) if r.name not in _ATTENTION_ROWS]
        attn: list[OpCost] = []
        if b.prefill_seqs:
            total, row, sent = self._prefill(b)
            attn.append(row)
            name = "sp_ring_exposed" if self.kind == "ring" else "sp_alltoall"
            attn.append(OpCost(name, total - row.time_s, 0.0, sent, "network"))
        if b.decode_seqs:
            shape = BatchShape(decode_seqs=b.decode_seqs, decode_ctx=b.decode_ctx / d)
            attn += [r for r in inner.breakdown(shape) if r.name == "attention_decode"]
            attn.append(OpCost("sp_decode_combine", self._combine(b.decode_seqs), 0.0,
                               inner.model.num_layers * (d - 1) * b.decode_seqs * self._comb_bytes, "network"))
        out = rows[:1] + attn + rows[1:]
        overhead = self._host(b.prefill_seqs, b.decode_seqs, b.tokens)
        if inner.engine.async_scheduling:
            overhead = max(overhead - sum(r.time_s for r in out), 0.0)
        if overhead:
            out.append(OpCost("engine_overhead", overhead, 0.0, 0.0, "latency"))
        return [r for r in out if r.time_s > 0 or r.flops > 0]

    def __repr__(self) -> str:
        return (f"SequenceParallelCostModel({self._inner.model.name}, {self._inner.gpu.name}, tp={self._inner.tp}, "
                f"sp={self.degree} {self.kind}, link {self.link_bw / 1e9:.0f} GB/s)")


def wrap(cost: CostModel, degree: int, kind: str = "ring", p2p_bw: float | None = None,
         p2p_latency: float | None = None, alltoall: Callable[[float], float] | None = None,
         ) -> CostModel | SequenceParallelCostModel:
    """The cost model of a replica with `degree` SP ranks of `cost`'s TP group (`cost` itself when degree is 1).

    `p2p_bw`: achievable bytes/s per direction each GPU gets on the SP ring's narrowest hop; `p2p_latency`:
    seconds per message on it; `alltoall(bytes_per_gpu) -> s`: the placement's all-to-all (Ulysses). Default:
    the GPU's scale-up link from the catalogue (one server)."""
    sp = SequenceParallelCostModel(cost, degree, kind, p2p_bw, p2p_latency, alltoall)
    return cost if degree == 1 else sp


def max_prompt_tokens(cost: CostModel, degree: int, gpu_memory_utilization: float = 0.9, *, kind: str = "ring",
                      max_num_batched_tokens: int = 8192, block_size: int = 16) -> int:
    """The longest single prompt (prompt + output tokens of KV) a replica of `degree` SP ranks of `cost` holds:
    its KV pool in tokens, as `plan_memory` sizes it, each rank profiling its 1/sp of a `max_num_batched_tokens`
    step. Raises DeploymentError when the weights do not fit."""
    sp = SequenceParallelCostModel(cost, degree, kind, 1.0, 0.0)      # the link does not change memory
    plan = plan_memory(sp, gpu_memory_utilization, max_num_batched_tokens=math.ceil(max_num_batched_tokens / degree),
                       max_num_seqs=1, block_size=block_size)
    return plan.max_kv_tokens


def ring_hiding_block_tokens(cost: CostModel, link_bw: float, causal: bool = True) -> float:
    """Query tokens per rank above which a ring step's attention compute outlasts its KV block's transfer, so the
    transfer hides: attention FLOP/s x KV bytes per token / (FLOPs per query-key pair x link bytes/s), twice that
    for a whole causal prompt (a block pairs each query with half its keys on average), once for a chunk over a
    long cached context. The FLOP rate is the wrapped model's on a large call (kernel floors aside)."""
    probe = BatchShape.prefill(1, 65_536)
    row = next(r for r in cost.breakdown(probe) if r.name == "attention_prefill")
    rate, per_pair = row.flops / row.time_s, row.flops / probe.prefill_attn
    return (2.0 if causal else 1.0) * rate * cost.kv_bytes_per_token_per_gpu / (per_pair * link_bw)


__all__ = ["PARTIAL_BYTES", "SP_KINDS", "SequenceParallelCostModel", "default_link", "max_prompt_tokens",
           "ring_hiding_block_tokens", "wrap"]
