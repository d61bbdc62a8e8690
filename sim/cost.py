"""Roofline cost model of one serving iteration.

An iteration runs every layer over the batch's new tokens. For each op we count FLOPs and bytes
moved from the batch shape, the model, the dtypes and the tensor-parallel shard, and price it as

    tc = flops / (peak * gemm_compute_eff),  tm = bytes / (bandwidth * mem_eff)
    t_op = (tc^p + tm^p)^(1/p) + n_kernels * floor          (p = gemm_knee; p -> inf is the roofline max)

so a GEMM near the ridge point, where compute and memory traffic overlap imperfectly, is slower than
either bound, and a tiny one costs its kernel floor. Attention adds a per-sequence (decode) or per-call
and per-token (chunked prefill) cost. Under TP, two all-reduces per layer cost
`latency + 2(n-1)/n * bytes / busbw` (`allreduce_time`). The engine's host work per step
(`EngineProfile`) is added to the GPU time, or overlaps it (max) with async scheduling.
Efficiencies are named constants in `KernelConstants`, each with the measurement it comes from
(`constants_table()` lists them for the docs); `kernel_constants(gpu)` swaps in the values fitted for
Hopper parts. The "ideal" profile is the plain roofline: full peaks, plain max, no floors or overheads.

Decode attention is divided by its SM occupancy (work units = sequences x KV heads x Flash-Decoding splits,
filling waves of SMs). Variants priced from the same sums: sliding-window and local/global layers, linear
attention layers (ModelSpec fields), and the `CostModel` keyword arguments `flash_decoding`, `sparsity`
("2:4"), `kv_dtype="int4"`, `kv_eviction` and `int4_kernel` (docs/concepts/cost-model.md, "Variants").

Speed matters: the engine prices tens of thousands of iterations per run. A batch is summarised
by a `BatchShape` of a few sums; everything that depends only on the model, GPU and dtypes is
folded into per-op coefficients once (`CostModel.__init__`), the attention-free part of a step is
cached by (tokens, sampled sequences), and attention is priced from two sums in plain floats.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from functools import lru_cache
from importlib import resources

import yaml

from .attention_cost import H2O_BYTES_PER_HEAD_TOKEN, MLA_HEADS_PER_CTA, SPLIT_PARTIAL_FP32, AttentionPricing  # noqa: F401
from .collective_cost import (CollectivePricing, _expected_max_binomial, _validate_expert_parallel,  # noqa: F401
                              allreduce_time)
from .errors import CatalogError, ConfigError, DeploymentError, did_you_mean
from .hardware import DTYPE_BYTES, GPUSpec
from .models import ModelSpec

WEIGHT_DTYPES = ("bf16", "fp16", "fp8", "int8", "int4", "fp4")
KV_DTYPES = ("bf16", "fp16", "fp8", "int8", "int4")
SPARSITY = ("2:4",)
KV_EVICTION_KINDS = ("h2o", "streaming_llm")
INT4_KERNELS = ("tinygemm", "marlin")
# Which weight-only int4 GEMM an engine runs when `int4_kernel` is not given: gpt-fast calls PyTorch's tinygemm
# (torch.ops.aten._weight_int4pack_mm); vLLM / SGLang run AWQ/GPTQ checkpoints through Marlin, TensorRT-LLM its
# own fused weight-only GEMM; both stage activations once per tile, so only tinygemm pays a cost per row.
INT4_KERNEL_BY_ENGINE = {"gpt-fast": "tinygemm"}
# int4 KV cache: 4-bit values with an fp16 scale and zero point per head and token (lmdeploy's online KV
# quantisation, "per-head per-token asymmetric"), i.e. 0.5 byte + 4 bytes / head_dim per element.
KV_INT4_GROUP_BYTES = 4.0


@dataclass(frozen=True, slots=True)
class KernelConstants:
    """Achieved fractions of peak and fixed per-kernel costs (all calibrated on ../shared/reference/).

    The metadata of each field says where its value comes from; docs render it with `constants_table()`.
    experiments/validation/fit_kernels.py fits them; experiments/validation/kernels.py checks them.
    """

    gemm_compute_eff: float = field(default=0.736, metadata={
        "unit": "fraction of dense peak",
        "source": "Vidur A100 linear-op profiles (Llama-2-7B, Llama-3-8B, TP 1-8, 1-32k tokens): achieved "
                  "FLOP/s of the compute-bound cuBLAS GEMMs; least squares with the other gemm constants "
                  "(experiments/validation/fit_kernels.py, family gemm)"})
    gemm_knee: float = field(default=1.46, metadata={
        "unit": "exponent p",
        "source": "same profiles: GEMMs near the ridge point are slower than max(compute, memory) because the "
                  "two do not overlap perfectly; t = (tc^p + tm^p)^(1/p), p fitted (family gemm)"})
    mem_eff: float = field(default=0.811, metadata={
        "unit": "fraction of peak bandwidth",
        "source": "same profiles, weight-streaming GEMMs at 1-64 tokens (memory-bound GEMV), fitted with the "
                  "per-kernel floor (family gemm); cross-checked by gpt-fast bf16 batch-1 decode"})
    kernel_floor_s: float = field(default=5.0e-6, metadata={
        "unit": "s per kernel",
        "source": "same profiles: time of a small memory-bound GEMM beyond its bytes / bandwidth (launch, "
                  "ramp-up and tail of one kernel), fitted (family gemm)"})
    attn_decode_mem_eff: float = field(default=0.974, metadata={
        "unit": "fraction of peak bandwidth",
        "source": "Vidur A100 paged decode-attention points (Llama-2-7B, batch 1-128, context 32-1.7k): "
                  "KV bytes / time at full SM occupancy (the wave occupancy of batch x KV heads x splits is "
                  "modelled separately), fitted with attn_decode_seq_s (family attention)"})
    attn_decode_wave_s: float = field(default=0.0, metadata={
        "unit": "s per wave of thread blocks per layer",
        "source": "a fixed prologue per (sequence, KV head, split) thread block, paid once per wave of blocks "
                  "(ceil(blocks / SMs)). Left at 0: the Vidur A100 points (MHA only, where waves and sequences "
                  "move together) fit 2.5 us per wave + 0.36 us per sequence (attention p90 18.6% against "
                  "22.8%), but every GQA serving point says the fixed cost follows sequences: the vLLM H100 "
                  "runs fit the wave term to 0, and on the A100 it moved vLLM's Mixtral TP2 steps from +1% to "
                  "-4% and TensorRT-LLM's Llama-2-70B batch-240 throughput from +11% to +28% "
                  "(docs/VALIDATION.md). Kept so a kernel that behaves so can say it (kernel_overrides)"})
    attn_decode_seq_s: float = field(default=1.13e-6, metadata={
        "unit": "s per sequence per layer",
        "source": "same points: short-context decode attention costs a fixed time per sequence (the block-table "
                  "walk and the split-KV reduction of each sequence), fitted (family attention)"})
    attn_prefill_compute_eff: float = field(default=0.312, metadata={
        "unit": "fraction of dense peak",
        "source": "Vidur A100 prefill-attention points (chunks 64-288 over context 0-4k): causal FLOPs / time, "
                  "fitted with attn_prefill_floor_s (family attention)"})
    attn_prefill_floor_s: float = field(default=13.2e-6, metadata={
        "unit": "s per layer",
        "source": "same points: fixed cost of the chunked-prefill attention call (varlen metadata, paged-KV "
                  "gather) beyond the kernel floor, fitted (family attention)"})
    attn_prefill_token_s: float = field(default=5.7e-8, metadata={
        "unit": "s per query token per layer",
        "source": "same points: short chunks reach less of peak (partial query tiles, per-token K/V cache "
                  "write and rotary), fitted (family attention)"})
    elementwise_mem_eff: float = field(default=0.402, metadata={
        "unit": "fraction of peak bandwidth",
        "source": "Vidur A100 per-layer non-attention totals minus the four GEMMs (fused residual-add + RMSNorm "
                  "twice and SiLU-and-mul: 3 kernels per layer; 1,320 points, Llama-2-7B and Llama-3-8B, TP 1-8), "
                  "fitted (family elementwise)"})
    int8_weight_only_mem_eff: float = field(default=0.669, metadata={
        "unit": "fraction of peak bandwidth",
        "source": "gpt-fast A100 int8 weight-only batch-1 decode rows (dequantising GEMV), fitted (family gpt-fast)"})
    int4_weight_only_mem_eff: float = field(default=0.522, metadata={
        "unit": "fraction of peak bandwidth",
        "source": "gpt-fast A100 int4 (g32) weight-only batch-1 decode rows (tinygemm dequantising GEMV), "
                  "fitted with tinygemm's per-row term (tinygemm_row_wavefronts) in place (family gpt-fast; "
                  "0.498 without it)"})
    moe_expert_mem_eff: float = field(default=1.0, metadata={
        "unit": "fraction of peak bandwidth",
        "source": "cap on the bandwidth of the grouped expert GEMMs (they stream many small matrices); fitted on "
                  "the gpt-fast Mixtral-8x7B rows (family gpt-fast), where it went to the dense weight-streaming "
                  "efficiency: no MoE-specific penalty is visible, so 1.0 (experts stream like dense weights)"})
    tinygemm_row_wavefronts: float = field(default=1.0 / 64.0, metadata={
        "unit": "L1 wavefronts per weight element per activation row",
        "source": "derived from PyTorch's tinygemm kernel (aten/src/ATen/native/cuda/int4mm.cu, the int4 GEMM "
                  "gpt-fast calls): each thread block owns 8 output columns and walks K in 16-wide tiles, and "
                  "re-loads every activation row it multiplies with two 4-byte loads per tile (ALayout_RM::load); "
                  "rows lie in different cache lines, so each active row adds one L1 wavefront per load: 2 per "
                  "8 x 16 weight tile and row = 1/64 per weight element and row, at one wavefront per SM per "
                  "clock (GPUSpec.sm_clocks_per_s). The weights are dequantised once per 16-row tile, so this "
                  "per-row term is what grows with rows (H100 device check: docs/VALIDATION.md)"})
    flash_decoding_split_tokens: float = field(default=128.0, metadata={
        "unit": "KV tokens per split, at least",
        "source": "FlashAttention-2 split-KV decode (flash_api.cpp num_splits_heuristic): a split is at least "
                  "one key block (kBlockN = 128 for head_dim 128); splits are added while the (sequence, KV "
                  "head) work units fill less than one wave of SMs"})
    int4_dequant_flops: float = field(default=4.0, metadata={
        "unit": "FP32-pipe FLOP-equivalents per int4 element",
        "source": "instruction count of the standard int4 -> 16-bit conversion (FasterTransformer's "
                  "convert_i4x8: 4 LOP3 + 3 shifts + 4 HFMA2 per 8 values) plus one HFMA2 per 2 values for "
                  "scale and zero: ~2 CUDA-core instructions per value, 4 FLOP-equivalents at the FP32 peak "
                  "(an FMA counts 2); used for int4 KV caches in attention"})
    nccl_allreduce_latency_s: float = field(default=50e-6, metadata={
        "unit": "s per all-reduce",
        "source": "Vidur DGX-A100 NCCL all-reduce, 2/4/8 GPUs, messages >= 1 MiB: intercept of time vs "
                  "2(n-1)/n x bytes / bus bandwidth (NCCL's Simple protocol), fitted (family allreduce); "
                  "used for messages above the engine's small_allreduce_max_bytes"})


CONSTANTS = KernelConstants()


# Hopper parts (H100, H200, GH200): fitted on the vLLM H100 runs (experiments/validation/fit_vllm.py), which
# the A100 kernel families cannot see. name -> (value, source). `kernel_constants(gpu)` applies them.
HOPPER_PREFIXES = ("h100", "h200", "gh200")
HOPPER_OVERRIDES: dict[str, tuple[float, str]] = {
    "gemm_knee": (2.30, "vLLM H100 runs (experiments/validation/fit_vllm.py): mean TTFT, E2E and ITL per rate stage "
                        "of the 18 normal-load runs; Hopper GEMMs overlap weight streaming and math better near "
                        "the ridge point (A100 profiles: 1.46)"),
    "mem_eff": (0.847, "same fit: weight streaming on HBM3 (A100 profiles: 0.811); nearly degenerate with the "
                       "kernel floor (a fit with 3.5 us floors gave 0.81)"),
    "kernel_floor_s": (4.36e-6, "same fit: the small models' step times (hundreds of short kernels per step "
                                "replayed from CUDA graphs); A100 profiles: 5.0 us"),
    "attn_decode_seq_s": (0.127e-6, "same fit: FlashAttention's paged decode (vLLM V1 on H100) costs far less per "
                                    "sequence than the A100 paged-attention kernel Vidur profiled (1.1 us); a fit "
                                    "that may also charge per wave of thread blocks puts that term at 0"),
    "moe_expert_mem_eff": (0.747, "same fit: Llama-4-Scout FP8 and Mixtral-8x22B decode, vLLM's fused_moe kernel "
                                  "streams expert weights at 0.75 of peak (gpt-fast's A100 MoE kernel: no penalty)"),
}


def kernel_constants(gpu: GPUSpec | str | None = None, base: KernelConstants = CONSTANTS) -> KernelConstants:
    """The kernel constants for `gpu`: `base` with the per-generation values that replace the A100-fitted ones."""
    name = gpu if isinstance(gpu, str) or gpu is None else gpu.name
    if name and name.lower().startswith(HOPPER_PREFIXES) and HOPPER_OVERRIDES:
        return replace(base, **{k: v for k, (v, _) in HOPPER_OVERRIDES.items()})
    return base


def gpu_overrides_table() -> list[dict]:
    """The per-generation replacements of `kernel_constants` (for the docs)."""
    units = {f.name: f.metadata["unit"] for f in fields(KernelConstants)}
    return [{"name": k, "gpus": ", ".join(HOPPER_PREFIXES), "value": v, "unit": units[k], "source": src}
            for k, (v, src) in HOPPER_OVERRIDES.items()]


def constants_table(constants: KernelConstants = CONSTANTS) -> list[dict]:
    """Every cost-model constant with value, unit and source (for docs and `servesim catalog`)."""
    return [{"name": f.name, "value": getattr(constants, f.name), "unit": f.metadata["unit"],
             "source": f.metadata["source"]} for f in fields(constants)]


@dataclass(frozen=True, slots=True)
class EngineProfile:
    """Host-side cost of a serving step, which the roofline cannot see (see sim/catalog/engines.yaml)."""

    name: str
    description: str
    step_overhead_s: float
    per_seq_overhead_s: float
    per_prefill_seq_overhead_s: float
    cuda_graphs: bool
    kernel_launch_s: float
    source: str
    allreduce_latency_s: float = 25.0e-6   # per TP all-reduce up to small_allreduce_max_bytes
    small_allreduce_max_bytes: float = 2.0**20   # above: NCCL's bandwidth protocol (KernelConstants latency)
    frontend_latency_s: float = 0.0        # per request: API server, tokenisation, streaming the first/last token
    per_token_overhead_s: float = 0.0      # per new token of the step (host-side input preparation)
    async_scheduling: bool = False         # host work of the next step overlaps the GPU: step = max(host, GPU)
    kernel_overrides: dict = field(default_factory=dict)   # KernelConstants the engine's own kernels change
    roofline_only: bool = False
    quantized_lm_head: bool = False        # its weight-only quantization also converts the LM head (gpt-fast)

    def host_time(self, prefill_seqs: int, decode_seqs: int, tokens: int) -> float:
        """The host's work for one step (scheduling, input preparation): every cost model prices it here, with
        the same operations in the same order, so a fast-forwarded run and single steps agree to the bit."""
        return (self.step_overhead_s + self.per_seq_overhead_s * (prefill_seqs + decode_seqs)
                + self.per_prefill_seq_overhead_s * prefill_seqs + self.per_token_overhead_s * tokens)


@lru_cache(maxsize=1)
def _engine_profiles() -> dict[str, EngineProfile]:
    text = (resources.files("sim") / "catalog" / "engines.yaml").read_text()
    return {name: EngineProfile(name=name, **entry) for name, entry in yaml.safe_load(text).items()}


def list_engine_profiles() -> list[EngineProfile]:
    """Every engine profile of sim/catalog/engines.yaml."""
    return list(_engine_profiles().values())


def get_engine_profile(name: str) -> EngineProfile:
    """The engine profile `name` (case-insensitive), or a one-line CatalogError listing the choices."""
    profiles = _engine_profiles()
    try:
        return profiles[name.lower()]
    except KeyError:
        raise CatalogError(f"unknown engine profile {name!r}; choose one of: {', '.join(profiles)}"
                           f"{did_you_mean(name, profiles)}") from None


@dataclass(slots=True)
class BatchShape:
    """One iteration's work, as the few sums the cost model needs.

    tokens: new tokens in the step (prefill chunks + one per decoding sequence);
    sampled: sequences that produce a token this step (decodes and prefills that finish);
    prefill_attn: sum over prefilling sequences of q * (c + (q + 1) / 2), the causal score count / heads;
    prefill_kv: sum over prefilling sequences of (c + q), KV tokens their attention reads;
    prefill_tokens, prefill_seqs: new prompt tokens and sequences with prompt tokens in the step;
    decode_seqs: sequences decoding one token; decode_ctx: sum of (c + 1) over them.
    """

    tokens: int = 0
    sampled: int = 0
    prefill_attn: float = 0.0
    prefill_kv: int = 0
    prefill_tokens: int = 0
    prefill_seqs: int = 0
    decode_seqs: int = 0
    decode_ctx: int = 0

    @classmethod
    def prefill(cls, batch: int, prompt_len: int, context: int = 0) -> "BatchShape":
        """`batch` sequences computing `prompt_len` new tokens each on top of `context` cached ones."""
        q, c = prompt_len, context
        return cls(tokens=batch * q, sampled=batch, prefill_attn=batch * q * (c + (q + 1) / 2),
                   prefill_kv=batch * (c + q), prefill_tokens=batch * q, prefill_seqs=batch)

    @classmethod
    def decode(cls, batch: int, context: int) -> "BatchShape":
        """`batch` sequences decoding one token each at `context` tokens already in the KV cache."""
        return cls(tokens=batch, sampled=batch, decode_seqs=batch, decode_ctx=batch * (context + 1))

    def add_prefill(self, new_tokens: int, context: int, samples: bool) -> None:
        """Add one sequence's prompt chunk; `samples`: the chunk ends the prompt, so a token is sampled."""
        self.tokens += new_tokens
        self.prefill_tokens += new_tokens
        self.prefill_seqs += 1
        self.prefill_attn += new_tokens * (context + (new_tokens + 1) / 2)
        self.prefill_kv += context + new_tokens
        if samples:
            self.sampled += 1

    def add_decode(self, context: int) -> None:
        """Add one decoding sequence with `context` tokens in its KV cache."""
        self.tokens += 1
        self.sampled += 1
        self.decode_seqs += 1
        self.decode_ctx += context + 1


@dataclass(frozen=True, slots=True)
class OpCost:
    """One op of an iteration, summed over layers: what `servesim estimate` prints per row."""

    name: str
    time_s: float
    flops: float
    bytes: float
    bound: str          # "compute" | "memory" | "latency" | "network"

    @property
    def intensity(self) -> float:
        """Arithmetic intensity in FLOP per byte (the roofline's x axis)."""
        return self.flops / self.bytes if self.bytes else float("inf")


@dataclass(frozen=True, slots=True)
class _Linear:
    """A per-step op whose FLOPs and bytes are linear in (tokens, sampled): coefficients folded once."""

    name: str
    count: int                 # how many times per step (layers)
    flops_per_token: float
    flops_per_sample: float
    weight_bytes: float        # read once per step regardless of batch
    bytes_per_token: float
    bytes_per_sample: float
    compute_peak: float        # FLOP/s at full efficiency for this op's dtype
    bandwidth: float           # achievable bytes/s (efficiency folded in)
    kernels: int               # kernels per occurrence
    gemm: bool                 # compute efficiency depends on rows (tokens)
    moe_experts: int = 0       # >0: weights of only the experts the batch touches are read
    moe_top_k: int = 0
    row_s: float = 0.0         # seconds per activation row that do not shrink with batching (tinygemm int4)
    ep: int = 1                # >1: whole experts spread over ep GPUs; the busiest GPU's touched experts are read


_QUANTIZED = ("fp8", "int8", "int4", "fp4")   # weight dtypes of quantized checkpoints (the activations stay 16-bit)
# Bytes per stored weight element, block scales included: int4 (GPTQ/AWQ, group 128) adds an fp16 scale and zero per
# 128 values (1/32 byte each); fp4 is NVFP4's layout, an fp8 scale per 16 values (OCP MXFP4: an 8-bit scale per 32,
# 1/32 byte less per element).
_SCALE_BYTES = {"int4": 1.0 / 32, "fp4": 1.0 / 16}


def weight_element_bytes(dtype: str) -> float:
    """Stored bytes per weight element of `dtype`, with the block scales of the 4-bit formats."""
    return DTYPE_BYTES[dtype] + _SCALE_BYTES.get(dtype, 0.0)


class CostModel(AttentionPricing, CollectivePricing):
    """Prices iterations of one model replica (TP shard) on one GPU type.

    Variants (see docs/concepts/cost-model.md, "Variants"): ``flash_decoding`` (split-KV decode attention
    that fills the SMs), ``sparsity="2:4"`` (sparse tensor cores), ``kv_dtype="int4"``, ``kv_eviction``
    (decode attention over the retained KV only) and ``int4_kernel`` (tinygemm's per-row cost); the model's
    own sliding-window, local/global and linear-attention layers are priced from its ModelSpec.
    """

    def __init__(self, model: ModelSpec, gpu: GPUSpec, tp: int = 1, weight_dtype: str | None = None,
                 kv_dtype: str | None = None, engine: str | EngineProfile = "vllm",
                 act_dtype: str = "bf16", constants: KernelConstants | None = None,
                 flash_attention: bool = True, allreduce: tuple[float, float] | None = None,
                 flash_decoding: bool = True, sparsity: str | None = None,
                 kv_eviction: tuple[str, float, int] | None = None, int4_kernel: str | None = None,
                 expert_parallel: bool = False, expert_skew: float = 1.0,
                 alltoall: "Callable[[float], float] | None" = None, ep_size: int | None = None) -> None:
        self.model, self.gpu, self.tp = model, gpu, tp
        # expert parallelism: each GPU of the TP group holds num_experts / tp whole experts (instead of a 1/tp slice
        # of every expert); a MoE layer dispatches each token's hidden state to its top-k experts' GPUs and combines
        # the results back, two all-to-alls that replace the layer's FFN all-reduce; the hottest GPU gets
        # `expert_skew` x the mean expert load. `alltoall(bytes_per_gpu) -> s` prices one all-to-all on the
        # placement's path (topologies.collectives.alltoall_time); None: the GPU's scale-up link.
        # `ep_size` (default tp): the GPUs the experts are spread over. Larger than tp for vLLM's data-parallel
        # attention with expert parallelism (--data-parallel-size D --enable-expert-parallel: ep = D x tp), where
        # the MoE layers of D lockstep replicas run on the tokens of all of them (`step_time(b, moe_tokens)`).
        self.ep_size = int(ep_size or tp) if expert_parallel else 1
        self.expert_parallel = bool(expert_parallel) and model.is_moe and self.ep_size > 1
        # data-parallel ranks whose tokens the expert layers see; a step priced without them assumes balanced ranks
        self._dp_ranks = self.ep_size // tp if self.expert_parallel and self.ep_size > tp else 1
        self.expert_skew = expert_skew
        self._alltoall = alltoall
        # (bus bandwidth B/s, latency s) of the TP group's real all-reduce path when a placement knows it
        # (topologies.collectives.allreduce_params); None: the GPU's own scale-up link
        self.allreduce = allreduce
        self.weight_dtype = (weight_dtype or model.default_weight_dtype).lower()
        self.kv_dtype = (kv_dtype or ("bf16" if self.weight_dtype in ("int8", "int4", "fp8") else
                                      self.weight_dtype if self.weight_dtype in KV_DTYPES else "bf16")).lower()
        self.act_dtype = act_dtype
        self.engine = engine if isinstance(engine, EngineProfile) else get_engine_profile(engine)
        # explicit constants are used as given; by default the GPU generation's (see kernel_constants); then
        # what the engine's own kernels change (e.g. TensorRT-LLM fuses the norms into its plugins)
        constants = kernel_constants(gpu) if constants is None else constants
        if self.engine.kernel_overrides:
            constants = replace(constants, **self.engine.kernel_overrides)
        self.k = constants
        self.flash_attention = flash_attention
        self.flash_decoding = flash_decoding
        self.sparsity = sparsity
        self.kv_eviction = tuple(kv_eviction) if kv_eviction is not None else None
        self.int4_kernel = int4_kernel or INT4_KERNEL_BY_ENGINE.get(self.engine.name, "marlin")
        _validate(model, gpu, tp, self.weight_dtype, self.kv_dtype)
        _validate_variants(gpu, sparsity, self.kv_eviction, self.int4_kernel)
        if expert_parallel:
            _validate_expert_parallel(model, self.ep_size, expert_skew)
        ideal = self.engine.roofline_only
        self._ideal = ideal
        # without CUDA graphs the host launches every kernel: each costs at least the launch time
        self._floor = 0.0 if ideal else (constants.kernel_floor_s if self.engine.cuda_graphs
                                         else max(constants.kernel_floor_s, self.engine.kernel_launch_s))
        self._knee = math.inf if ideal else constants.gemm_knee
        self._dec_wave = 0.0 if ideal else constants.attn_decode_wave_s
        self._dec_seq = 0.0 if ideal else constants.attn_decode_seq_s
        # decode attention is one kernel, two when Flash-Decoding splits the KV (partials, then their reduction;
        # `_decode_attention`); chunked prefill one varlen call with a fixed cost of its own and a cost per query
        # token. _dec_floor (two kernels) is kept for sim.sequence_parallel's own decode formula.
        self._dec_floor = 2 * self._floor
        self._pre_floor = 0.0 if ideal else self._floor + constants.attn_prefill_floor_s
        self._pre_tok = 0.0 if ideal else constants.attn_prefill_token_s
        self._ops = self._build_linear_ops()
        self._attn = self._attention_coefficients()
        plain = self._plain_decode_pricer()
        if plain is not None:
            self._decode_scalar = plain           # the hot path without the variants' branches
        self._collective = self._allreduce_coefficients()
        self._cache: dict[tuple[int, int], float] = {}

    def __getstate__(self) -> dict:
        # the plain-case decode closure does not pickle (sweeps and Ray ship cost models); it is rebuilt on load
        state = self.__dict__.copy()
        state.pop("_decode_scalar", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        plain = self._plain_decode_pricer()
        if plain is not None:
            self._decode_scalar = plain

    # ----------------------------------------------------------------- set-up
    def _eff(self, value: float) -> float:
        return 1.0 if self._ideal else value

    def _compute_dtype(self) -> str:
        """GEMMs run at fp8 (fp4) only when weights are fp8 (fp4) and the part has such tensor cores (W8A8, NVFP4
        on Blackwell); otherwise weight-only formats are dequantised into the activation dtype."""
        if self.weight_dtype in ("fp8", "fp4") and self.gpu.peak_tflops.get(self.weight_dtype):
            return self.weight_dtype
        return self.act_dtype

    def _weight_bandwidth(self) -> float:
        eff = {"int8": self.k.int8_weight_only_mem_eff, "int4": self.k.int4_weight_only_mem_eff}.get(
            self.weight_dtype, self.k.mem_eff)
        if self.weight_dtype == "fp8" and not self.gpu.peak_tflops.get("fp8"):
            eff = self.k.int8_weight_only_mem_eff          # fp8 weight-only (Marlin-style) on pre-Hopper parts
        if self.weight_dtype == "fp4" and not self.gpu.peak_tflops.get("fp4"):
            eff = self.k.int4_weight_only_mem_eff          # fp4 dequantised by a weight-only 4-bit GEMM (Marlin MXFP4)
        return self.gpu.memory_bw * self._eff(eff)

    @property
    def sparse_weight_factor(self) -> float:
        """Bytes of a 2:4-sparse weight matrix relative to dense: half the values plus 2 bits of index metadata
        per kept value (NVIDIA's compressed format), i.e. 0.5 + 1 bit per original element (0.5625 at 16 bit)."""
        return self._sparse_factor(DTYPE_BYTES[self.weight_dtype])

    def _sparse_factor(self, elem_bytes: float) -> float:
        """`sparse_weight_factor` for weights of `elem_bytes` bytes (1.0 when the model is dense)."""
        return 0.5 + 1.0 / (8.0 * elem_bytes) if self.sparsity == "2:4" else 1.0

    def _row_time(self, elements: float) -> float:
        """Seconds per activation row of a tinygemm int4 GEMM over `elements` weights (0 for other kernels)."""
        rate = self.gpu.sm_clocks_per_s
        if self._ideal or self.weight_dtype != "int4" or self.int4_kernel != "tinygemm" or not rate:
            return 0.0
        return elements * self.k.tinygemm_row_wavefronts / rate

    def _build_linear_ops(self) -> list[_Linear]:
        m, t = self.model, self.tp
        wb = weight_element_bytes(self.weight_dtype)  # group scales
        ab = DTYPE_BYTES[self.act_dtype]
        peak = self.gpu.peak_flops(self._compute_dtype())
        wbw = self._weight_bandwidth()
        peak16 = self.gpu.peak_flops(self.act_dtype)
        bw16 = self.gpu.memory_bw * self._eff(self.k.mem_eff)
        ew_bw = self.gpu.memory_bw * self._eff(self.k.elementwise_mem_eff)
        h, L = m.hidden_size, m.num_layers
        # 2:4 sparsity: the transformer blocks' GEMMs run at twice the tensor rate on half the weights (+ metadata)
        sf = self.sparse_weight_factor
        sparse_peak = peak * (2.0 if self.sparsity == "2:4" else 1.0)
        ops: list[_Linear] = []

        def gemm(name, count, k_in, n_out, kernels=1):
            ops.append(_Linear(name, count, 2.0 * k_in * n_out, 0.0, k_in * n_out * wb * sf, (k_in + n_out) * ab,
                               0.0, sparse_peak, wbw, kernels, True, row_s=self._row_time(k_in * n_out)))

        def gemm_16bit(name, count, k_in, n_out, kernels=1):
            # a projection the checkpoint keeps in the activation dtype: 16-bit weight streaming and math (2:4
            # sparse at the 16-bit layout's factor when the model is sparse)
            ops.append(_Linear(name, count, 2.0 * k_in * n_out, 0.0, k_in * n_out * ab * self._sparse_factor(ab),
                               (k_in + n_out) * ab, 0.0, peak16 * (2.0 if self.sparsity == "2:4" else 1.0), bw16,
                               kernels, True))

        attn_gemm = gemm_16bit if self._attention_unquantized else gemm
        if m.attention_type == "mla":
            qkv_params = m.attention_params_per_layer - m.num_heads * m.v_head_dim * h
            attn_gemm("qkv_proj", L, h, qkv_params / h / t, kernels=3)
            attn_gemm("o_proj", L, m.num_heads * m.v_head_dim / t, h)
        else:
            kv_heads = max(1, m.num_kv_heads // t) if m.num_kv_heads >= t else 1
            attn_gemm("qkv_proj", L, h, (m.num_heads / t + 2 * kv_heads) * m.head_dim)
            attn_gemm("o_proj", L, m.num_heads * m.head_dim / t, h)
        mats = m.ffn_matrices
        dense_layers = m.num_dense_layers
        if dense_layers:
            inter = m.intermediate_size / t
            gemm("mlp_up_gate", dense_layers, h, (mats - 1) * inter)
            gemm("mlp_down", dense_layers, inter, h)
        if m.is_moe:
            moe_layers = m.num_moe_layers
            ops.append(_Linear("moe_router", moe_layers, 2.0 * h * m.num_experts, 0.0, h * m.num_experts * ab,
                               h * ab, 0.0, peak, self.gpu.memory_bw * self._eff(self.k.mem_eff), 1, True))
            e_inter = m.moe_intermediate_size / t
            expert_bw = self.gpu.memory_bw * self._eff(min(self.k.moe_expert_mem_eff, wbw / self.gpu.memory_bw))
            # the hottest GPU's share of the token work: 1/tp of every token's experts under TP (every GPU computes a
            # slice of every expert), skew/ep of them under EP (whole experts, unevenly loaded)
            work = 1.0
            if self.expert_parallel:
                e_inter, work = m.moe_intermediate_size, self.expert_skew / self.ep_size
            ops.append(_Linear("moe_experts", moe_layers, work * m.experts_per_token * 2.0 * mats * h * e_inter, 0.0,
                               mats * h * e_inter * wb * sf,
                               work * m.experts_per_token * (2 * h + mats * e_inter) * ab, 0.0,
                               sparse_peak, expert_bw, 3, True, m.num_experts, m.experts_per_token,
                               row_s=self._row_time(work * m.experts_per_token * mats * h * e_inter),
                               ep=self.ep_size))
            shared = m.shared_expert_intermediate_size or m.num_shared_experts * m.moe_intermediate_size
            if shared:
                gemm("moe_shared_expert", moe_layers, h, mats * shared / t, kernels=2)
        # two fused residual-add + RMSNorm kernels and the SiLU-and-mul per layer (3 kernels), plus the bytes of
        # rotary and the KV-cache write: memory-bound elementwise work
        kv_write = self.kv_bytes_per_token_per_gpu / L
        inter_act = (m.moe_intermediate_size * m.experts_per_token if m.is_moe else m.intermediate_size) / t
        ops.append(_Linear("elementwise", L, 12.0 * h, 0.0, 0.0, (6 * h + 3 * inter_act) * ab + kv_write, 0.0,
                           peak, ew_bw, 3, False))
        # once per step: embedding gather, final norm, LM head on sampled rows, sampling over the vocab
        ops.append(_Linear("embedding", 1, 0.0, 0.0, 0.0, 2 * h * ab, 0.0, peak, ew_bw, 2, False))
        # quantized checkpoints keep the LM head in the activation dtype (vLLM quantizes only the decoder's linear
        # layers; GPTQ/AWQ/compressed-tensors and TensorRT-LLM exclude lm_head by default): a 16-bit GEMM whatever
        # the weight dtype, unless the engine's own quantizer converts it too (gpt-fast: every nn.Linear)
        vocab = m.vocab_size / t
        if self.engine.quantized_lm_head:
            ops.append(_Linear("lm_head", 1, 0.0, 2.0 * h * vocab, h * vocab * wb, 0.0, (h + vocab) * ab,
                               peak, wbw, 1, True, row_s=self._row_time(h * vocab)))
        else:
            ops.append(_Linear("lm_head", 1, 0.0, 2.0 * h * vocab, h * vocab * ab, 0.0, (h + vocab) * ab,
                               peak16, bw16, 1, True))
        ops.append(_Linear("sampling", 1, 0.0, 5.0 * m.vocab_size, 0.0, 0.0, 3 * 4.0 * m.vocab_size,
                           peak, ew_bw, 3, False))
        return ops

    # ----------------------------------------------------------------- memory
    @property
    def _kv_elem_bytes(self) -> float:
        """Bytes of one cached K/V element: the dtype, plus for int4 an fp16 scale and zero per head and token."""
        if self.kv_dtype != "int4":
            return DTYPE_BYTES[self.kv_dtype]
        m = self.model
        group = (m.kv_lora_rank + m.qk_rope_head_dim) if m.attention_type == "mla" else m.head_dim
        return DTYPE_BYTES["int4"] + KV_INT4_GROUP_BYTES / group

    @property
    def _attention_unquantized(self) -> bool:
        """The attention projections run in the activation dtype although the weights are quantized."""
        return "attention" in self.model.unquantized_modules and self.weight_dtype in _QUANTIZED

    @property
    def weight_bytes_per_gpu(self) -> float:
        """Weight bytes each GPU of the TP group holds (int4 includes its group scales; quantized checkpoints
        keep the embedding, LM head, norms and routers in the activation dtype, as the step cost prices them;
        2:4 sparsity shrinks the transformer blocks' matrices to `sparse_weight_factor`)."""
        wb = weight_element_bytes(self.weight_dtype)
        ab = DTYPE_BYTES[self.act_dtype]
        m = self.model
        # kept in the activation dtype by quantized checkpoints: embedding, LM head, norms, routers, and the attention
        # projections where the checkpoint says so (ModelSpec.unquantized_modules)
        head_16bit = 0.0 if self.engine.quantized_lm_head else m.lm_head_params
        sixteen = m.embedding_params + head_16bit + m.norm_params + m.num_moe_layers * m.router_params
        # attention kept 16-bit by the checkpoint: its own bytes, 2:4-sparse at the 16-bit factor when sparse
        attn16 = m.num_layers * m.attention_params_per_layer if self._attention_unquantized else 0.0
        if self.weight_dtype not in _QUANTIZED:
            sixteen = 0.0                                   # an unquantized model: one dtype throughout
        sparse = 0.0
        if self.sparsity:
            sparse = (m.total_params - m.embedding_params - m.lm_head_params - m.norm_params
                      - m.num_moe_layers * m.router_params - attn16)
        dense = m.total_params - sixteen - attn16 - sparse
        experts = 0.0
        if self.expert_parallel and self.ep_size != self.tp:
            # whole experts spread over ep_size GPUs instead of a 1/tp slice of each: count them apart
            experts = m.num_moe_layers * m.num_experts * m.expert_params
            if self.sparsity:
                sparse -= experts
            else:
                dense -= experts
            experts_bytes = experts * wb * (self.sparse_weight_factor if self.sparsity else 1.0) / self.ep_size
        else:
            experts_bytes = 0.0
        return (dense * wb + sparse * wb * self.sparse_weight_factor + sixteen * ab
                + attn16 * ab * self._sparse_factor(ab)) / self.tp + experts_bytes

    @property
    def kv_bytes_per_token_per_gpu(self) -> float:
        """KV bytes one token occupies on each GPU of the TP group (KV heads are replicated when TP > heads);
        softmax-attention layers only (linear-attention layers keep `linear_state_bytes_per_seq`)."""
        m = self.model
        kb = self._kv_elem_bytes
        if m.attention_type == "mla":
            return m.kv_bytes_per_token(kb)                 # the latent is replicated on every rank
        shards = min(self.tp, m.num_kv_heads)
        return m.kv_bytes_per_token(kb) / shards

    @property
    def linear_state_bytes_per_seq(self) -> float:
        """Fixed recurrent-state bytes (fp32) one sequence holds on each GPU across the linear-attention
        layers, whatever its length (0 without such layers): what a memory planner reserves per sequence."""
        return self.model.linear_state_bytes_per_seq(4.0) / self.tp

    # ----------------------------------------------------------------- pricing
    def _linear_time(self, tokens: int, sampled: int) -> float:
        """Time of every op but attention and engine overhead; cached (decode runs repeat shapes)."""
        if self._dp_ranks > 1:
            return self._group_linear_time(tokens, sampled, tokens * self._dp_ranks)
        key = (tokens, sampled)
        t = self._cache.get(key)
        if t is None:
            t = sum(self._op_cost(op, tokens, sampled).time_s for op in self._ops) + self._allreduce_time(tokens)
            self._cache[key] = t
        return t

    def _group_linear_time(self, tokens: int, sampled: int, moe_tokens: int) -> float:
        """`_linear_time` of one data-parallel rank whose expert layers (and their all-to-alls) run on the
        `moe_tokens` tokens of every rank of its lockstep group."""
        key = (tokens, sampled, moe_tokens)
        t = self._cache.get(key)
        if t is None:
            t = sum(self._op_cost(op, moe_tokens if op.moe_experts else tokens, sampled).time_s for op in self._ops)
            t += self._allreduce_time(tokens, moe_tokens)
            self._cache[key] = t
        return t

    def _op_cost(self, op: _Linear, tokens: int, sampled: int) -> OpCost:
        flops = op.flops_per_token * tokens + op.flops_per_sample * sampled
        rows = tokens if op.flops_per_token else sampled
        weights = op.weight_bytes
        if op.moe_experts:
            p = 1.0 - (1.0 - op.moe_top_k / op.moe_experts) ** max(rows, 0)   # chance an expert is touched
            if op.ep > 1:
                # whole experts on ep GPUs: the step waits for the GPU that touched the most of its own experts
                touched = _expected_max_binomial(op.moe_experts // op.ep, p, op.ep)
            else:
                touched = op.moe_experts * p
            weights = op.weight_bytes * touched
        nbytes = weights + op.bytes_per_token * tokens + op.bytes_per_sample * sampled
        if rows <= 0:
            return OpCost(op.name, 0.0, 0.0, 0.0, "latency")
        tc = flops / (op.compute_peak * self._eff(self.k.gemm_compute_eff))
        if op.row_s:
            # tinygemm's per-row activation loads run beside the tensor cores: the slower of the two shows
            tc = max(tc, rows * op.row_s)
        tm = nbytes / op.bandwidth
        floor = op.kernels * self._floor
        p = self._knee
        # the roofline's max, smoothed near the ridge point where compute and memory traffic overlap imperfectly
        body = max(tc, tm) if p == math.inf or not (tc and tm) else (tc ** p + tm ** p) ** (1.0 / p)
        t = body + floor
        bound = "compute" if tc >= tm else "memory"
        if floor > body:
            bound = "latency"
        return OpCost(op.name, op.count * t, op.count * flops, op.count * nbytes, bound)

    def linear_time(self, rows: int, k_in: float, n_out: float, kernels: int = 1) -> float:
        """Seconds of one (k_in x n_out) weight GEMM over `rows` activation rows with this model's weight dtype,
        bandwidth, knee, floor and int4 kernel: the pricing of every projection, exposed for kernel checks."""
        wb = weight_element_bytes(self.weight_dtype)
        ab = DTYPE_BYTES[self.act_dtype]
        peak = self.gpu.peak_flops(self._compute_dtype()) * (2.0 if self.sparsity == "2:4" else 1.0)
        op = _Linear("gemm", 1, 2.0 * k_in * n_out, 0.0, k_in * n_out * wb * self.sparse_weight_factor,
                     (k_in + n_out) * ab, 0.0, peak, self._weight_bandwidth(), kernels, True,
                     row_s=self._row_time(k_in * n_out))
        return self._op_cost(op, rows, rows).time_s

    def step_time(self, b: BatchShape, moe_tokens: int | None = None) -> float:
        """Seconds for one iteration of batch `b`, engine overhead included. `moe_tokens`: the tokens the expert
        layers run on when they span a lockstep data-parallel group (`sim.lockstep`); default the batch's own, or with
        `ep_size` > tp that of every rank holding a batch like this one."""
        if b.tokens == 0:
            return 0.0
        if moe_tokens is None or not self.expert_parallel:
            t = self._linear_time(b.tokens, b.sampled)
        else:
            t = self._group_linear_time(b.tokens, b.sampled, moe_tokens)
        if b.prefill_seqs:
            t += self._prefill_attention(b)
        if b.decode_seqs:
            t += self._decode_scalar(b.decode_seqs, b.decode_ctx)
        e = self.engine
        host = e.host_time(b.prefill_seqs, b.decode_seqs, b.tokens)
        return max(t, host) if e.async_scheduling else t + host

    def decode_run_times(self, seqs: int, ctx_sum: int, steps: int):
        """Times of `steps` consecutive pure-decode iterations of `seqs` sequences whose context sum starts
        at `ctx_sum` (sum of c + 1) and grows by `seqs` per step. Returns a numpy array.

        The arithmetic is the one `step_time` does, element by element, so a fast-forward over these
        steps lands on exactly the timestamps the per-iteration loop would produce.
        """
        import numpy as np

        base = self._linear_time(seqs, seqs)
        ctx = ctx_sum + seqs * np.arange(steps, dtype=np.float64)
        attn = self._decode_attention(seqs, ctx, np)
        e = self.engine
        host = e.host_time(0, seqs, seqs)
        return np.maximum(base + attn, host) if e.async_scheduling else base + attn + host

    def decode_run_list(self, seqs: int, ctx_sum: int, steps: int) -> list[float]:
        """`decode_run_times` as a list of plain floats, computed without numpy (faster for a few steps): the
        same operations on the same values, so the same times to the last bit."""
        base = self._linear_time(seqs, seqs)
        e = self.engine
        host = e.host_time(0, seqs, seqs)
        attn = self._decode_scalar
        out = []
        for i in range(steps):
            t = base + attn(seqs, ctx_sum + seqs * float(i))
            if e.async_scheduling:
                t = t if t > host else host
            else:
                t = t + host
            out.append(t)
        return out

    def breakdown(self, b: BatchShape) -> list[OpCost]:
        """Per-op costs of one iteration (summed over layers), in execution order, for `estimate`."""
        moe_rows = b.tokens * self._dp_ranks
        rows = [self._op_cost(op, moe_rows if op.moe_experts else b.tokens, b.sampled) for op in self._ops]
        attn_rows = []
        if b.prefill_seqs:
            t, fl, by, bound = self._prefill_attention(b, detail=True)
            attn_rows.append(OpCost("attention_prefill", t, fl, by, bound))
        if b.decode_seqs:
            t, fl, by, bound = self._decode_attention(b.decode_seqs, b.decode_ctx, detail=True)
            attn_rows.append(OpCost("attention_decode", t, fl, by, bound))
        out = rows[:1] + attn_rows + rows[1:]
        if self._collective[3] or self.expert_parallel:
            msg = b.tokens * self.model.hidden_size * DTYPE_BYTES[self.act_dtype]
            if self.expert_parallel:
                m = self.model
                ep = m.num_moe_layers * 2 * self._ep_alltoall(moe_rows)
                out.append(OpCost("tp_allreduce", self._allreduce_time(b.tokens, moe_rows) - ep, 0.0,
                                  (m.num_layers + m.num_dense_layers) * msg, "network"))
                moe_msg = moe_rows * m.hidden_size * DTYPE_BYTES[self.act_dtype]
                out.append(OpCost("ep_alltoall", ep, 0.0,
                                  m.num_moe_layers * 2 * moe_msg * m.experts_per_token / self.ep_size, "network"))
            else:
                out.append(OpCost("tp_allreduce", self._allreduce_time(b.tokens), 0.0,
                                  2 * self.model.num_layers * msg, "network"))
        e = self.engine
        overhead = e.host_time(b.prefill_seqs, b.decode_seqs, b.tokens)
        if e.async_scheduling:
            # the host prepares the next step while this one runs: only what the GPU time does not hide shows
            overhead = max(overhead - sum(r.time_s for r in out), 0.0)
        if overhead:
            out.append(OpCost("engine_overhead", overhead, 0.0, 0.0, "latency"))
        return [r for r in out if r.time_s > 0 or r.flops > 0]


def _validate(model: ModelSpec, gpu: GPUSpec, tp: int, weight_dtype: str, kv_dtype: str) -> None:
    if tp < 1:
        raise ConfigError(f"parallelism.tp must be >= 1, got {tp}")
    if model.num_heads % tp:
        raise DeploymentError(f"tp={tp} does not divide {model.name}'s {model.num_heads} attention heads; "
                              f"use a tp that divides {model.num_heads}")
    if model.attention_type != "mla" and model.num_kv_heads % tp and tp % model.num_kv_heads:
        raise DeploymentError(f"tp={tp} does not divide {model.name}'s {model.num_kv_heads} KV heads "
                              f"(nor is a multiple of it); choose another tp")
    if weight_dtype not in WEIGHT_DTYPES:
        raise ConfigError(f"model.weight_dtype {weight_dtype!r} is not one of {', '.join(WEIGHT_DTYPES)}")
    if kv_dtype not in KV_DTYPES:
        raise ConfigError(f"model.kv_dtype {kv_dtype!r} is not one of {', '.join(KV_DTYPES)}")


def _validate_variants(gpu: GPUSpec, sparsity: str | None, eviction: tuple | None, int4_kernel: str) -> None:
    if sparsity is not None:
        if sparsity not in SPARSITY:
            raise ConfigError(f"model.sparsity {sparsity!r} is not one of {', '.join(SPARSITY)} (or null for dense)")
        if not gpu.structured_sparsity:
            raise ConfigError(f"model.sparsity '2:4' needs sparse tensor cores (NVIDIA Ampere or later, AMD CDNA3); "
                              f"{gpu.name} has none: drop model.sparsity or pick such a GPU")
    if eviction is not None:
        ok = (len(eviction) == 3 and eviction[0] in KV_EVICTION_KINDS
              and isinstance(eviction[1], (int, float)) and 0.0 < eviction[1] <= 1.0
              and isinstance(eviction[2], int) and not isinstance(eviction[2], bool) and eviction[2] >= 1)
        if not ok:
            raise ConfigError(f"kv_eviction {eviction!r} must be (kind, retained_fraction, budget_tokens) with kind "
                              f"in {', '.join(KV_EVICTION_KINDS)}, 0 < retained_fraction <= 1 and budget_tokens >= 1")
    if int4_kernel not in INT4_KERNELS:
        raise ConfigError(f"int4_kernel {int4_kernel!r} is not one of {', '.join(INT4_KERNELS)}")


__all__ = ["BatchShape", "CostModel", "EngineProfile", "KernelConstants", "OpCost", "CONSTANTS", "HOPPER_OVERRIDES",
           "allreduce_time", "constants_table", "get_engine_profile", "gpu_overrides_table", "kernel_constants",
           "list_engine_profiles", "weight_element_bytes"]
