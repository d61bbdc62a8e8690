"""What a multimodal encoder (a ViT, a Whisper-style audio tower) costs: its catalogue and a roofline price.

The encoders of multimodal LLMs are plain bidirectional transformers over a fixed number of positions per
item (an image tile's patches, a 30 s audio window's frames), followed by a projector into the LLM's
hidden size. One encoder call over ``items`` items (and ``tokens`` projected tokens) is priced op by op with
the formula and the calibrated constants of `sim.cost`:

    t_op = (tc^p + tm^p)^(1/p) + kernels * floor,  tc = flops / (peak * eff),  tm = bytes / (bw * eff)

per layer: the QKV, O and MLP GEMMs over ``items x positions`` rows, bidirectional attention over each
item's ``positions^2`` pairs (priced at `attn_prefill_compute_eff`, FlashAttention without the causal half
skipped), two LayerNorms, two residual adds and the activation (memory-bound elementwise kernels), and under
TP two all-reduces; once per call the patch / conv embedding (``stem``) and the projector GEMMs. The tower
runs eagerly (vLLM does not capture the encoder in CUDA graphs), so each kernel costs at least the engine's
host launch time. Pooling, the CLS token and position embeddings are below the roofline's resolution and
left out. Architecture numbers come from ``sim/catalog/encoders.yaml`` (each entry names its source).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache
from importlib import resources

import yaml

from sim.cost import EngineProfile, OpCost, get_engine_profile, kernel_constants
from sim.errors import CatalogError, did_you_mean
from sim.hardware import DTYPE_BYTES, GPUSpec, get_link

#: Elementwise bytes moved per position per layer, in units of hidden_size activations: two LayerNorms
#: (read + write h each: 4h) and two residual adds (read 2h, write h each: 6h); the activation adds
#: read + write of the MLP's intermediate width. Counted from the architecture, not fitted.
ELEMENTWISE_H_PER_ROW = 10
#: Elementwise kernels per layer: two LayerNorms, two residual adds, the activation (biases are fused into
#: the GEMMs' epilogues).
ELEMENTWISE_KERNELS = 5


@dataclass(frozen=True, slots=True)
class EncoderSpec:
    """One encoder tower as sim/catalog/encoders.yaml describes it (see the file's header for the fields)."""

    name: str
    display_name: str
    modality: str
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_layers: int
    layers_run: int
    mlp: str
    positions_per_item: int
    tokens_per_item: int
    stem: tuple[tuple[int, int], ...]
    projector_in: int
    projector_layers: int
    source: str = ""

    @property
    def params(self) -> float:
        """Parameters of the tower's layers that run and of its stem (the projector, sized by the LLM, not included)."""
        h, i = self.hidden_size, self.intermediate_size
        mats = 3 if self.mlp == "swiglu" else 2
        return self.layers_run * (4 * h * h + mats * h * i) + sum(k * h for _, k in self.stem)


_INT = ("hidden_size", "intermediate_size", "num_heads", "num_layers", "layers_run", "positions_per_item",
        "tokens_per_item", "projector_in", "projector_layers")


@lru_cache(maxsize=1)
def _catalogue() -> dict[str, EncoderSpec]:
    where = "sim/catalog/encoders.yaml"
    try:
        data = yaml.safe_load((resources.files("sim") / "catalog" / "encoders.yaml").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CatalogError(f"{where}: catalogue file is missing from the installed package") from None
    out = {}
    for key, e in (data or {}).items():
        if not isinstance(e, dict):
            raise CatalogError(f"{where}: entry {key!r} must be a mapping of fields")
        for f in _INT:
            if not isinstance(e.get(f), int) or e[f] < (0 if f == "projector_layers" else 1):
                raise CatalogError(f"{where}: {key}.{f} must be a positive integer (got {e.get(f)!r})")
        if e["layers_run"] > e["num_layers"] or e["hidden_size"] % e["num_heads"]:
            raise CatalogError(f"{where}: {key}: layers_run must be <= num_layers and num_heads must divide "
                               f"hidden_size")
        if e.get("mlp") not in ("gelu", "swiglu"):
            raise CatalogError(f"{where}: {key}.mlp must be gelu or swiglu (got {e.get('mlp')!r})")
        stem = tuple((int(r), int(k)) for r, k in e.get("stem", ()))
        out[key.lower()] = EncoderSpec(name=key.lower(), stem=stem,
                                       **{k: v for k, v in e.items() if k != "stem"})
    return out


def list_encoders() -> list[EncoderSpec]:
    """Every catalogued encoder, by name."""
    return [v for _, v in sorted(_catalogue().items())]


def get_encoder(name: str) -> EncoderSpec:
    """The encoder `name` (case-insensitive), or a one-line CatalogError listing the choices."""
    cat = _catalogue()
    spec = cat.get(str(name).lower())
    if spec is None:
        raise CatalogError(f"unknown encoder {name!r}; choose one of: {', '.join(sorted(cat))}"
                           f"{did_you_mean(str(name), cat)}")
    return spec


@dataclass(frozen=True, slots=True)
class _Op:
    """One op of an encoder call, linear in its rows: rows = per_item * items, or tokens when per_item is 0."""

    name: str
    count: int              # occurrences per call (layers)
    per_item: int           # rows per item (0: one row per projected token)
    flops_per_row: float
    const_bytes: float      # weights, read once per call
    bytes_per_row: float
    rate: float             # FLOP/s with the efficiency folded in
    bw: float               # bytes/s with the efficiency folded in
    kernels: int
    smooth: bool            # GEMM: the knee-smoothed max; else the plain max


class EncoderCost:
    """Prices encoder calls of `spec` on `gpu` (sharded over `tp` GPUs) for an LLM of hidden size `llm_hidden`."""

    def __init__(self, spec: EncoderSpec, gpu: GPUSpec, *, tp: int = 1, engine: str | EngineProfile = "vllm",
                 llm_hidden: int = 4096, dtype: str = "bf16") -> None:
        self.spec, self.gpu, self.tp, self.llm_hidden, self.dtype = spec, gpu, tp, llm_hidden, dtype
        self.engine = engine if isinstance(engine, EngineProfile) else get_engine_profile(engine)
        k = kernel_constants(gpu)
        if self.engine.kernel_overrides:
            k = replace(k, **self.engine.kernel_overrides)
        ideal = self.engine.roofline_only
        eff = (lambda v: 1.0) if ideal else (lambda v: v)
        self._knee = math.inf if ideal else k.gemm_knee
        # eager execution: every kernel pays the host launch when that exceeds the GPU-side floor
        self._floor = 0.0 if ideal else max(k.kernel_floor_s, self.engine.kernel_launch_s)
        peak, bw = gpu.peak_flops(dtype), gpu.memory_bw
        gemm_rate, gemm_bw = peak * eff(k.gemm_compute_eff), bw * eff(k.mem_eff)
        ew_bw = bw * eff(k.elementwise_mem_eff)
        ab = DTYPE_BYTES[dtype]
        h, inter, n, L, t = spec.hidden_size, spec.intermediate_size, spec.positions_per_item, spec.layers_run, tp
        mats = 3 if spec.mlp == "swiglu" else 2
        ops: list[_Op] = []

        def gemm(name, count, per_item, k_in, n_out):
            ops.append(_Op(name, count, per_item, 2.0 * k_in * n_out, k_in * n_out * ab, (k_in + n_out) * ab,
                           gemm_rate, gemm_bw, 1, True))

        for i, (rows, k_in) in enumerate(spec.stem):
            gemm(f"stem{i}", 1, rows, k_in, h)
        gemm("qkv_proj", L, n, h, 3 * h / t)
        ops.append(_Op("attention", L, 1, 4.0 * n * n * h / t, 0.0, 4.0 * n * h / t * ab,
                       peak * eff(k.attn_prefill_compute_eff), gemm_bw, 1, False))
        gemm("o_proj", L, n, h / t, h)
        gemm("mlp_up", L, n, h, (mats - 1) * inter / t)
        gemm("mlp_down", L, n, inter / t, h)
        ops.append(_Op("elementwise", L, n, 0.0, 0.0, (ELEMENTWISE_H_PER_ROW * h + 2 * inter / t) * ab,
                       math.inf, ew_bw, ELEMENTWISE_KERNELS, False))
        for j in range(spec.projector_layers):
            gemm(f"projector{j}", 1, 0, spec.projector_in if j == 0 else llm_hidden / t,
                 llm_hidden / t if j == 0 else llm_hidden)
        self._ops = ops
        self._allreduce = (0.0, 0.0, 0.0, 0.0)
        if t > 1:
            link = get_link(gpu.scaleup or gpu.host_link)
            lbw = link.bw_gbps_per_direction * 1e9 * (1.0 if ideal else link.achievable_fraction)
            small = 0.0 if ideal else self.engine.allreduce_latency_s
            large = 0.0 if ideal else max(small, k.nccl_allreduce_latency_s)
            self._allreduce = (small, large, self.engine.small_allreduce_max_bytes, 2.0 * (t - 1) / t / lbw)
        self._cache: dict[tuple[int, int], float] = {}

    def weight_bytes_per_gpu(self) -> float:
        """Encoder weight bytes each GPU of the TP group holds (stem, layers run, projector)."""
        return sum(op.const_bytes * op.count for op in self._ops)

    def call_time(self, items: int, tokens: int) -> float:
        """Seconds of one encoder call over `items` items producing `tokens` projected tokens (cached by shape)."""
        key = (items, tokens)
        t = self._cache.get(key)
        if t is None:
            t = self._cache[key] = sum(op.time_s for op in self.breakdown(items, tokens))
        return t

    def breakdown(self, items: int, tokens: int) -> list[OpCost]:
        """Per-op costs of one call (summed over layers), as `sim.cost.OpCost` rows."""
        if items <= 0:
            return []
        out = []
        p, floor = self._knee, self._floor
        for op in self._ops:
            rows = op.per_item * items if op.per_item else tokens
            flops = op.flops_per_row * rows
            nbytes = op.const_bytes + op.bytes_per_row * rows
            tc, tm = flops / op.rate, nbytes / op.bw
            if op.smooth and p != math.inf and tc and tm:
                body = (tc ** p + tm ** p) ** (1.0 / p)
            else:
                body = max(tc, tm)
            out.append(OpCost(op.name, op.count * (body + op.kernels * floor), op.count * flops,
                              op.count * nbytes, "compute" if tc >= tm else "memory"))
        small, large, limit, per_byte = self._allreduce
        if per_byte:
            msg = items * self.spec.positions_per_item * self.spec.hidden_size * DTYPE_BYTES[self.dtype]
            count = 2 * self.spec.layers_run
            out.append(OpCost("tp_allreduce", count * ((small if msg <= limit else large) + msg * per_byte), 0.0,
                              count * msg, "network"))
        return out


__all__ = ["EncoderCost", "EncoderSpec", "get_encoder", "list_encoders", "ELEMENTWISE_H_PER_ROW",
           "ELEMENTWISE_KERNELS"]
