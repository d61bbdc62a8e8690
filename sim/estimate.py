"""`estimate`: price one prefill or decode iteration and explain it op by op.

This is the capacity planner's first question ("how long does one step of this model take on this
GPU, and why") as a function; `servesim estimate` prints the same thing. With `offload` (a
`sim.weight_offload.Placement`) a model larger than the GPU is priced with its weights / KV streamed
from host memory or disk instead of refused; every estimate carries the energy per token at the
device's TDP (`sim.energy`), which is what an edge device's single-user decode is judged by.
"""
from __future__ import annotations

from dataclasses import dataclass

from .collective_cost import check_ep_degree
from .cost import BatchShape, CostModel, OpCost
from .energy import device_power_w, energy_per_token_j, is_unified_memory
from .errors import ConfigError
from .hardware import GPUSpec, get_gpu
from .memory import MemoryPlan, plan_memory
from .models import ModelSpec, get_model
from .weight_offload import OffloadedCostModel, OffloadHardware, Placement


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
    power_w: float | None = None        # TDP (or the power given); None when the catalogue has none
    unified_memory: bool = False        # edge SoC: CPU and GPU share one DRAM
    offload: dict | None = None         # the placement and where its bytes go, when offloaded
    ep: int = 1                         # GPUs the experts are spread over (1: sliced by TP)

    @property
    def energy_j(self) -> float | None:
        """Energy of the iteration at `power_w` per GPU over the replica's `tp` GPUs (the TDP model: busy at TDP)."""
        return None if self.power_w is None else self.power_w * self.tp * self.latency_s

    @property
    def energy_j_per_token(self) -> float | None:
        """Joules per token of the whole replica (all its GPUs): prompt tokens for prefill, generated tokens for
        decode."""
        if self.power_w is None:
            return None
        tokens = self.batch * (self.prompt_len if self.phase == "prefill" else 1)
        return energy_per_token_j(self.power_w * self.tp, self.latency_s, tokens)

    @property
    def bound(self) -> str:
        """The bound of the ops that take most of the time."""
        by: dict[str, float] = {}
        for op in self.breakdown:
            by[op.bound] = by.get(op.bound, 0.0) + op.time_s
        return max(by, key=by.get) if by else "latency"

    @property
    def tokens_per_s(self) -> float:
        """Tokens the replica (all its TP GPUs) processes per second: prompt tokens for prefill, generated tokens for
        decode."""
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
            "model": self.model, "gpu": self.gpu, "tp": self.tp, "ep": self.ep, "phase": self.phase,
            "batch": self.batch,
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
            "energy": {"power_w": self.power_w, "energy_j": self.energy_j,
                       "energy_j_per_token": self.energy_j_per_token, "unified_memory": self.unified_memory},
            "energy_j_per_token": self.energy_j_per_token, "power_w": self.power_w,
            "offload": self.offload,
        }


def estimate(model: str | ModelSpec, gpu: str | GPUSpec, *, tp: int = 1, batch: int = 1,
             prompt_len: int | None = None, context: int | None = None, phase: str | None = None,
             weight_dtype: str | None = None, kv_dtype: str | None = None, engine: str = "vllm",
             gpu_memory_utilization: float = 0.9, flash_attention: bool = True,
             offload: Placement | str | None = None, offload_hardware: OffloadHardware | None = None,
             power_w: float | None = None, ep: int = 1) -> Estimate:
    """Price one iteration: prefill of `batch` prompts of `prompt_len` new tokens each (after `context`
    cached tokens, 0 by default), or decode of `batch` sequences at `context` tokens. Raises
    DeploymentError only if the weights do not fit (on the GPU, or, with `offload`, in the GPU's share).

    `offload`: a `Placement` (or its text form, "gpu=0.2,cpu=0.8") of weights / KV across GPU, host and
    disk, priced by `sim.weight_offload.OffloadedCostModel` on `offload_hardware` (default: the GPU's
    host link, catalogue host DRAM and NVMe). `power_w` replaces the device's TDP for the energy figures.
    `ep`: expert parallelism for MoE models, 1 (experts sliced by TP), `tp` (whole experts over the replica's GPUs)
    or a multiple of `tp` (one replica of a data-parallel group whose experts span ep GPUs, every replica with a
    batch like this one)."""
    spec = model if isinstance(model, ModelSpec) else get_model(model)
    dev = gpu if isinstance(gpu, GPUSpec) else get_gpu(gpu)
    phase = phase or ("prefill" if prompt_len is not None else "decode")
    if batch < 1:
        raise ConfigError(f"--batch (batch=) must be >= 1, got {batch}")
    if phase == "prefill":
        if not prompt_len or prompt_len < 1:
            raise ConfigError("prefill needs --prompt-len (prompt_len=) >= 1")
        if context is not None and context < 0:
            raise ConfigError("--context (context=) must be >= 0 (tokens already in the KV cache)")
        # a prefill may extend cached context (prefix-cache hit, or a later chunk of a chunked prefill)
        context = context or 0
        shape, ctx_tokens = BatchShape.prefill(batch, prompt_len, context), context + prompt_len
    elif phase == "decode":
        if context is None or context < 0:
            raise ConfigError("decode needs --context (context=) >= 0: the tokens already in each sequence's KV cache")
        shape, ctx_tokens, prompt_len = BatchShape.decode(batch, context), context + 1, 0
    else:
        raise ConfigError(f"--phase (phase=) must be prefill or decode, got {phase!r}")
    longest = context + prompt_len if phase == "prefill" else context
    if longest > spec.max_position_embeddings:
        # as vLLM refuses a max_model_len beyond the model's: its positions were never trained (or scaled) that far
        raise ConfigError(f"{longest:,} tokens of context exceed {spec.name}'s {spec.max_position_embeddings:,} "
                          f"(max_position_embeddings); use a shorter --context / --prompt-len or a longer-context "
                          f"model")
    check_ep_degree(ep, tp, f"--ep {ep}")
    if ep > 1 and offload is not None:
        raise ConfigError("--ep with --offload is not modelled; use one of them")
    cost = CostModel(spec, dev, tp=tp, weight_dtype=weight_dtype, kv_dtype=kv_dtype, engine=engine,
                     flash_attention=flash_attention, expert_parallel=ep > 1, ep_size=ep if ep > 1 else None)
    base = cost
    if offload is not None:
        placement = Placement.parse(offload) if isinstance(offload, str) else offload
        cost = OffloadedCostModel(cost, placement, offload_hardware)
        cost.check_weights_fit()
    # Refuse only a replica whose weights cannot be loaded; a batch too large for the memory left
    # (its KV, or its profiling activations) is still priced and flagged kv_fits=False.
    plan_memory(cost, gpu_memory_utilization, max_num_batched_tokens=1, max_num_seqs=1, block_size=16)
    mem = plan_memory(cost, gpu_memory_utilization, max_num_batched_tokens=min(shape.tokens, 8192),
                      max_num_seqs=batch, block_size=16, strict=False)
    ops = cost.breakdown(shape)
    latency = sum(o.time_s for o in ops)
    blocks_needed = batch * -(-ctx_tokens // mem.block_size)       # whole blocks per sequence
    kv_fits = blocks_needed <= mem.num_blocks
    off = None
    if isinstance(cost, OffloadedCostModel):
        p, lc = cost.placement, cost.layer_cost(shape)
        capacity = cost.kv_capacity_tokens(mem.kv_gb * 1e9)
        kv_fits = blocks_needed * mem.block_size <= capacity
        off = {"placement": {k: getattr(p, k) for k in ("weights_gpu", "weights_cpu", "weights_disk", "kv_gpu",
                                                        "kv_cpu", "kv_disk", "act_gpu", "act_cpu", "cpu_attention",
                                                        "overlap", "gpu_batch")},
               "pcie_gbps": cost.hw.pcie_bw / 1e9, "disk_read_gbps": cost.hw.disk_read_bw / 1e9,
               "h2d_bytes": lc.h2d_bytes * cost.layers, "h2d_s": lc.h2d * cost.layers,
               "transfer_bound": max(lc.h2d, lc.d2h, lc.disk_read, lc.disk_write) > max(lc.gpu, lc.cpu),
               "kv_capacity_tokens": capacity, "full_weights_gb": base.weight_bytes_per_gpu / 1e9}
    return Estimate(spec.name, dev.name, tp, phase, batch, prompt_len, context, cost.weight_dtype, cost.kv_dtype,
                    cost.engine.name, latency, sum(o.flops for o in ops), sum(o.bytes for o in ops), ops, mem,
                    kv_fits=kv_fits, peak_flops=dev.peak_flops(base._compute_dtype()), peak_bw=dev.memory_bw,
                    power_w=device_power_w(dev, power_w), unified_memory=is_unified_memory(dev), offload=off,
                    ep=ep)
