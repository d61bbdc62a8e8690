"""GPU memory of a replica: weights, activation workspace, and how many KV blocks fit, as vLLM computes it.

vLLM takes `gpu_memory_utilization` of the device's memory, subtracts the weights, the peak
activation of a profiling forward pass over `max_num_batched_tokens` tokens, and memory outside
PyTorch's allocator (CUDA context, NCCL and cuBLAS workspaces, CUDA graphs); what remains is cut
into KV blocks of `block_size` tokens.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from .cost import CostModel
from .errors import DeploymentError
from .hardware import DTYPE_BYTES

GIB = 2**30

# The constants below are fitted (experiments/validation/fit_vllm.py, `fit_memory`) on the KV block
# counts vLLM v0.15.1 logged for the runs of ../shared/reference/vllm_runs/experiments.csv (kv_blocks_gpu,
# 10 distinct text-model deployments, H100, TP 1-4); docs/VALIDATION.md has the per-run table.
#
# Memory outside the weights, the activations and the KV cache, per GPU: CUDA context and graphs, NCCL
# and cuBLAS workspaces, allocator slack.
NON_TORCH_OVERHEAD_BYTES = 0.817 * GIB
# Peak activation of the profiling forward pass per token, in units of (hidden + 2 x intermediate / tp) x
# activation bytes: the SwiGLU gate/up output and the residual stream, with the allocator's reuse.
ACTIVATION_FACTOR = 1.65
# The sampler's profiling pass holds this many fp32 [max_num_seqs, vocab] tensors at its peak (logits,
# a second full-vocabulary buffer, e.g. the probabilities).
SAMPLER_VOCAB_COPIES = 1.8


@dataclass(frozen=True, slots=True)
class MemoryPlan:
    """Where one GPU's memory goes, and the KV capacity that results."""

    usable_gb: float               # device memory x gpu_memory_utilization, GB (1e9)
    weights_gb: float
    activation_gb: float
    overhead_gb: float
    kv_gb: float
    kv_bytes_per_token: float      # per GPU
    block_size: int
    num_blocks: int
    max_kv_tokens: int

    def as_dict(self) -> dict:
        """The plan as a plain dict (for JSON)."""
        return asdict(self)


def plan_memory(cost: CostModel, gpu_memory_utilization: float = 0.9, max_num_batched_tokens: int = 8192,
                max_num_seqs: int = 256, block_size: int = 16, strict: bool = True, *,
                overhead_bytes: float | None = None, activation_factor: float | None = None,
                sampler_copies: float | None = None, extra_weight_bytes: float = 0.0,
                extra_kv_bytes_per_token: float = 0.0, pipeline_stages: int = 1) -> MemoryPlan:
    """KV capacity of one replica. With `strict`, refuse a deployment whose weights do not fit.

    `extra_weight_bytes` / `extra_kv_bytes_per_token` (per GPU) are a speculative draft model's, held beside the
    target's. With `pipeline_stages` each GPU holds 1/pp of the layers' weights and KV (split evenly). The other
    keyword-only arguments replace the module's fitted constants (for fitting them)."""
    overhead = NON_TORCH_OVERHEAD_BYTES if overhead_bytes is None else overhead_bytes
    act_factor = ACTIVATION_FACTOR if activation_factor is None else activation_factor
    copies = SAMPLER_VOCAB_COPIES if sampler_copies is None else sampler_copies
    m, t = cost.model, cost.tp
    usable = cost.gpu.usable_memory_bytes * gpu_memory_utilization
    weights = (cost.weight_bytes_per_gpu + extra_weight_bytes) / pipeline_stages
    ab = DTYPE_BYTES[cost.act_dtype]
    inter = (m.moe_intermediate_size * m.experts_per_token if m.is_moe else m.intermediate_size)
    activation = (act_factor * max_num_batched_tokens * (m.hidden_size + 2 * inter / t) * ab
                  + copies * max_num_seqs * m.vocab_size * 4.0)
    free = usable - weights - activation - overhead
    if strict and free <= 0:
        raise DeploymentError(
            f"{m.name} does not fit on {cost.gpu.name} with tp={t}, pp={pipeline_stages}: weights {weights / 1e9:.1f} GB + activations "
            f"{activation / 1e9:.1f} GB + overhead {overhead / 1e9:.1f} GB per GPU exceed "
            f"{usable / 1e9:.1f} GB usable (gpu_memory_utilization={gpu_memory_utilization}); "
            f"raise tp (or pp), use a smaller weight_dtype, or a larger GPU")
    kv_tok = (cost.kv_bytes_per_token_per_gpu + extra_kv_bytes_per_token) / pipeline_stages
    num_blocks = max(0, int(free // (kv_tok * block_size)))
    return MemoryPlan(usable / 1e9, weights / 1e9, activation / 1e9, overhead / 1e9,
                      max(free, 0) / 1e9, kv_tok, block_size, num_blocks, num_blocks * block_size)
