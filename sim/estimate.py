"""`estimate`: price one prefill or decode iteration and explain it op by op.

This is the capacity planner's first question ("how long does one step of this model take on this
GPU, and why") as a function; `servesim estimate` prints the same thing.
"""
from __future__ import annotations

from dataclasses import dataclass

from .cost import BatchShape, CostModel, OpCost
from .errors import ConfigError
from .hardware import GPUSpec, get_gpu
from .memory import MemoryPlan, plan_memory
from .models import ModelSpec, get_model


@dataclass(frozen=True)
class Estimate:
    """One iteration's cost with its op-by-op breakdown and the replica's memory plan."""

    model: str
    gpu: str
    tp: int
    phase: str
    batch: int
    prompt_len: int
    context: int
    weight_dtype: str
    kv_dtype: str
    engine: str
    latency_s: float
    flops: float            # per GPU
    bytes: float            # per GPU
    breakdown: list[OpCost]
    memory: MemoryPlan
    kv_fits: bool
    peak_flops: float
    peak_bw: float

    @property
    def bound(self) -> str:
        """The bound of the ops that take most of the time."""
        by: dict[str, float] = {}
        for op in self.breakdown:
            by[op.bound] = by.get(op.bound, 0.0) + op.time_s
        return max(by, key=by.get) if by else "latency"

    @property
    def tokens_per_s(self) -> float:
        """Tokens processed per second: prompt tokens for prefill, generated tokens for decode."""
        tokens = self.batch * (self.prompt_len if self.phase == "prefill" else 1)
        return tokens / self.latency_s

    @property
    def mfu(self) -> float:
        """Model FLOPs utilisation: achieved FLOP/s of the iteration over the GPU's peak."""
        return self.flops / self.latency_s / self.peak_flops

    @property
    def mbu(self) -> float:
        """Memory bandwidth utilisation: achieved bytes/s of the iteration over the GPU's peak bandwidth."""
        return self.bytes / self.latency_s / self.peak_bw

    def as_dict(self) -> dict:
        """Everything the estimate holds, as a JSON-ready dict (what `servesim estimate --json` prints)."""
        mem = self.memory
        return {
            "model": self.model, "gpu": self.gpu, "tp": self.tp, "phase": self.phase, "batch": self.batch,
            "prompt_len": self.prompt_len, "context": self.context, "weight_dtype": self.weight_dtype,
            "kv_dtype": self.kv_dtype, "engine": self.engine,
            "latency_s": self.latency_s, "flops": self.flops, "bytes": self.bytes,
            "intensity": self.flops / self.bytes if self.bytes else None, "bound": self.bound,
            "mfu": self.mfu, "mbu": self.mbu, "tokens_per_s": self.tokens_per_s,
            "breakdown": [{"name": o.name, "time_s": o.time_s, "flops": o.flops, "bytes": o.bytes,
                           "intensity": o.intensity if o.bytes else None, "bound": o.bound}
                          for o in self.breakdown],
            "memory": {"weights_gb": mem.weights_gb, "activation_gb": mem.activation_gb,
                       "usable_gb": mem.usable_gb, "kv_gb": mem.kv_gb,
                       "kv_bytes_per_token": mem.kv_bytes_per_token, "max_kv_tokens": mem.max_kv_tokens,
                       "num_blocks": mem.num_blocks, "kv_fits": self.kv_fits},
        }


def estimate(model: str | ModelSpec, gpu: str | GPUSpec, *, tp: int = 1, batch: int = 1,
             prompt_len: int | None = None, context: int | None = None, phase: str | None = None,
             weight_dtype: str | None = None, kv_dtype: str | None = None, engine: str = "vllm",
             gpu_memory_utilization: float = 0.9, flash_attention: bool = True) -> Estimate:
    """Price one iteration: prefill of `batch` prompts of `prompt_len` new tokens each (after `context`
    cached tokens, 0 by default), or decode of `batch` sequences at `context` tokens. Raises
    DeploymentError only if the weights do not fit."""
    spec = model if isinstance(model, ModelSpec) else get_model(model)
    dev = gpu if isinstance(gpu, GPUSpec) else get_gpu(gpu)
    phase = phase or ("prefill" if prompt_len is not None else "decode")
    if batch < 1:
        raise ConfigError(f"--batch must be >= 1, got {batch}")
    if phase == "prefill":
        if not prompt_len or prompt_len < 1:
            raise ConfigError("prefill needs --prompt-len >= 1")
        if context is not None and context < 0:
            raise ConfigError("--context must be >= 0 (tokens already in the KV cache)")
        # a prefill may extend cached context (prefix-cache hit, or a later chunk of a chunked prefill)
        context = context or 0
        shape, ctx_tokens = BatchShape.prefill(batch, prompt_len, context), context + prompt_len
    elif phase == "decode":
        if context is None or context < 0:
            raise ConfigError("decode needs --context >= 0 (tokens already in the KV cache)")
        shape, ctx_tokens, prompt_len = BatchShape.decode(batch, context), context + 1, 0
    else:
        raise ConfigError(f"--phase must be prefill or decode, got {phase!r}")
    cost = CostModel(spec, dev, tp=tp, weight_dtype=weight_dtype, kv_dtype=kv_dtype, engine=engine,
                     flash_attention=flash_attention)
    # Refuse only a replica whose weights cannot be loaded; a batch too large for the memory left
    # (its KV, or its profiling activations) is still priced and flagged kv_fits=False.
    plan_memory(cost, gpu_memory_utilization, max_num_batched_tokens=1, max_num_seqs=1, block_size=16)
    mem = plan_memory(cost, gpu_memory_utilization, max_num_batched_tokens=min(shape.tokens, 8192),
                      max_num_seqs=batch, block_size=16, strict=False)
    ops = cost.breakdown(shape)
    latency = sum(o.time_s for o in ops)
    return Estimate(spec.name, dev.name, tp, phase, batch, prompt_len, context, cost.weight_dtype, cost.kv_dtype,
                    cost.engine.name, latency, sum(o.flops for o in ops), sum(o.bytes for o in ops), ops, mem,
                    kv_fits=batch * -(-ctx_tokens // mem.block_size) <= mem.num_blocks,   # whole blocks per sequence
                    peak_flops=dev.peak_flops(cost._compute_dtype()), peak_bw=dev.memory_bw)
