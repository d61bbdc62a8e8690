"""Offloading for one GPU: weights, KV cache and activations spread over GPU, host DRAM and disk.

FlexGen (Sheng et al., ICML'23) and DeepSpeed ZeRO-Inference run a model larger than the GPU by keeping
part of it in host DRAM or on NVMe and streaming each layer in before it runs. A `Placement` is FlexGen's
policy vector: the fractions of weights, KV cache and activations on the GPU and in host DRAM (the rest on
disk), whether attention over offloaded KV runs on the CPU, whether loads overlap compute (double
buffering), and the GPU micro-batch of the zig-zag block schedule.

`OffloadedCostModel` wraps a `sim.cost.CostModel` and prices one iteration layer by layer:

    per layer   t = max(GPU compute, CPU attention, PCIe host->GPU, PCIe GPU->host, disk read, disk write)
    per step    L x t + the first layer's un-overlapped load + once-per-step ops + engine host overhead

(with `overlap=False` the terms of a layer add up instead). A layer's offloaded weights cross PCIe once
per step for the whole batch (the zig-zag schedule runs every micro-batch through a layer before moving
on), so the load is amortised over the batch and throughput grows with batch until compute or the KV
traffic dominates: the best batch depends on the placement (`best_policy` searches both).

`sim.powerinfer.HotColdCostModel` is PowerInfer's split (Song et al., SOSP'24): the hot fraction of each FFN's neurons
stays on the GPU, the cold rest is computed by the CPU from host DRAM, and the inactive neurons of a
ReLU FFN (`activation_sparsity`) are skipped on both sides.

Not modelled: link latencies per copy (microseconds against transfers of milliseconds), pinned-memory
staging, compression (FlexGen's 4-bit mode), the sparsity predictors' own cost.
"""
from __future__ import annotations

import math

from dataclasses import dataclass, replace

from .cost import BatchShape, CostModel, OpCost
from .errors import ConfigError, DeploymentError
from .hardware import DTYPE_BYTES, GPUSpec, get_link
from .memory import NON_TORCH_OVERHEAD_BYTES

# Host CPU compute rate for CPU attention and cold FFN rows, FLOP/s: 16 cores x 2.0 GHz x 32 fp32 FLOP per
# cycle (one AVX-512 FMA port: 16 lanes x 2), the peak of a 16-core 2.0 GHz Xeon such as the GCP n1
# host of FlexGen's T4 experiments ("Intel Xeon @ 2.00GHz", FlexGen Table 1). A parameter: pass yours.
DEFAULT_HOST_FLOPS = 16 * 2.0e9 * 32
# Host DRAM of the CPU side (bandwidth of CPU attention / cold rows) and the disk, by link catalogue key.
DEFAULT_HOST_MEMORY_LINK = "host-ddr4"
DEFAULT_DISK_LINK = "nvme-gen4"

# Ops of `CostModel.breakdown` that run once per step (not per layer), and the attention and FFN rows.
PER_STEP_OPS = frozenset({"embedding", "lm_head", "sampling"})
ATTENTION_OPS = frozenset({"attention_prefill", "attention_decode"})
FFN_OPS = frozenset({"mlp_up_gate", "mlp_down"})
_SKIP = "engine_overhead"


@dataclass(frozen=True)
class Placement:
    """Where weights, KV cache and activations live (FlexGen's policy vector); the disk holds the rest.

    `cpu_attention`: decode attention over the KV held off the GPU runs on the CPU where the KV is (only
    q/k/v and the output cross PCIe), FlexGen's --cpu-cache-compute. `overlap`: the next layer's loads
    run while this layer computes (double buffering). `gpu_batch`: sequences per GPU micro-batch of the
    zig-zag schedule (None: the whole batch at once); each layer's weights are loaded once for all of them.
    """

    weights_gpu: float = 1.0
    weights_cpu: float = 0.0
    kv_gpu: float = 1.0
    kv_cpu: float = 0.0
    act_gpu: float = 1.0
    act_cpu: float = 0.0
    cpu_attention: bool = False
    overlap: bool = True
    gpu_batch: int | None = None

    def __post_init__(self) -> None:
        for kind in ("weights", "kv", "act"):
            g, c = getattr(self, f"{kind}_gpu"), getattr(self, f"{kind}_cpu")
            for name, v in ((f"{kind}_gpu", g), (f"{kind}_cpu", c)):
                if not 0.0 <= v <= 1.0:
                    raise ConfigError(f"offload.{name} must be a fraction in [0, 1], got {v!r}")
            if g + c > 1.0 + 1e-9:
                raise ConfigError(f"offload.{kind}_gpu + offload.{kind}_cpu = {g + c:g} exceeds 1; the disk "
                                  f"takes 1 - gpu - cpu, so lower one of them")
        if self.gpu_batch is not None and self.gpu_batch < 1:
            raise ConfigError(f"offload.gpu_batch must be >= 1 (or unset), got {self.gpu_batch!r}")

    @property
    def weights_disk(self) -> float:
        """The fraction of the weights on disk: 1 - gpu - cpu."""
        return max(0.0, 1.0 - self.weights_gpu - self.weights_cpu)

    @property
    def kv_disk(self) -> float:
        """The fraction of the kv on disk: 1 - gpu - cpu."""
        return max(0.0, 1.0 - self.kv_gpu - self.kv_cpu)

    @property
    def act_disk(self) -> float:
        """The fraction of the act on disk: 1 - gpu - cpu."""
        return max(0.0, 1.0 - self.act_gpu - self.act_cpu)

    @classmethod
    def from_percent(cls, wg: float, wc: float, cg: float, cc: float, hg: float, hc: float, **kw) -> "Placement":
        """FlexGen's `--percent wg wc cg cc hg hc` (percentages of weights, cache, hidden states)."""
        return cls(wg / 100, wc / 100, cg / 100, cc / 100, hg / 100, hc / 100, **kw)

    @classmethod
    def parse(cls, text: str) -> "Placement":
        """`"gpu=0.2,cpu=0.8"` (weights), plus optional `kv_gpu=`, `kv_cpu=`, `act_gpu=`, `act_cpu=`,
        `cpu_attention=1`, `overlap=0`, `gpu_batch=N`: the CLI's `--offload` value."""
        alias = {"gpu": "weights_gpu", "cpu": "weights_cpu", "disk": "weights_disk"}
        kw: dict = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, sep, val = part.partition("=")
            key = alias.get(key.strip(), key.strip())
            if not sep or key not in (*cls.__dataclass_fields__, "weights_disk"):
                raise ConfigError(f"--offload: cannot read {part!r}; use e.g. gpu=0.2,cpu=0.8 (weights) with "
                                  f"optional kv_gpu=, kv_cpu=, act_gpu=, act_cpu=, cpu_attention=1, gpu_batch=N")
            v = val.strip().lower()
            if key in ("cpu_attention", "overlap"):
                if v not in _FLAGS:
                    raise ConfigError(f"--offload: {key}={val!r}; use 1 or 0 (true / false)")
                kw[key] = _FLAGS[v]
                continue
            try:
                kw[key] = int(val) if key == "gpu_batch" else float(val)
            except ValueError:
                raise ConfigError(f"--offload: {key}={val!r} is not a number") from None
        # each of weights / kv / act: the fractions not given are what the given ones leave (the disk takes the rest)
        for kind in ("weights", "kv", "act"):
            g, c, d = (kw.pop(f"{kind}_{t}", None) if t == "disk" else kw.get(f"{kind}_{t}") for t in ("gpu", "cpu", "disk"))
            given = [x for x in (g, c, d) if x is not None]
            if len(given) == 3 and abs(sum(given) - 1.0) > 1e-9:
                raise ConfigError(f"--offload: {kind} fractions gpu + cpu + disk = {sum(given):g}; they must add to 1")
            if g is None and given:
                kw[f"{kind}_gpu"] = max(0.0, 1.0 - sum(given))
            elif c is None and d is not None:
                kw[f"{kind}_cpu"] = max(0.0, 1.0 - g - d)
        return cls(**kw)

    def label(self) -> str:
        """Short text: weights/KV as gpu/cpu/disk percentages."""
        w = f"W {self.weights_gpu:.0%}/{self.weights_cpu:.0%}/{self.weights_disk:.0%}"
        c = f"KV {self.kv_gpu:.0%}/{self.kv_cpu:.0%}/{self.kv_disk:.0%}"
        return f"{w}, {c}" + (", CPU attention" if self.cpu_attention else "")


@dataclass(frozen=True)
class OffloadHardware:
    """Bandwidths (B/s, achievable) and capacities (bytes) of the tiers beside the GPU."""

    pcie_bw: float            # host <-> GPU, each direction (PCIe is full duplex)
    disk_read_bw: float
    disk_write_bw: float
    host_mem_bw: float        # what the CPU reads from DRAM (CPU attention, cold FFN rows)
    host_flops: float
    host_memory_bytes: float
    disk_bytes: float
    pcie_latency_s: float = 0.0

    @classmethod
    def for_gpu(cls, gpu: GPUSpec, *, host_memory_gb: float | None = None, disk: str = DEFAULT_DISK_LINK,
                disk_gb: float | None = None, disk_read_gbps: float | None = None,
                disk_write_gbps: float | None = None, host_memory: str = DEFAULT_HOST_MEMORY_LINK,
                host_mem_gbps: float | None = None, host_flops: float = DEFAULT_HOST_FLOPS,
                pcie_gbps: float | None = None) -> "OffloadHardware":
        """The GPU's own host link (catalogue), a disk and a host memory from the link catalogue; each figure
        can be replaced (GB/s are 1e9 B/s, achievable). The disk's write bandwidth defaults to its read
        bandwidth (the catalogue lists sequential reads only)."""
        if gpu.host_link == "soc-unified-memory":
            # an SoC's CPU and GPU share one DRAM: there is no host tier for weights or KV to move to
            raise ConfigError(f"offload / powerinfer move weights and KV to host memory over PCIe, but "
                              f"{gpu.name}'s CPU and GPU share one memory; remove them and pick a model that fits "
                              f"(a smaller one, or a 4-bit weight_dtype)")
        for key, value in (("host_memory_gb", host_memory_gb), ("disk_gb", disk_gb), ("disk_read_gbps", disk_read_gbps),
                           ("disk_write_gbps", disk_write_gbps), ("host_mem_gbps", host_mem_gbps),
                           ("host_flops", host_flops), ("pcie_gbps", pcie_gbps)):
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ConfigError(f"offload hardware {key} must be a finite number > 0, got {value!r}; leave it "
                                  f"out for the catalogue's figure")
        link = get_link(gpu.host_link)
        d, h = get_link(disk), get_link(host_memory)
        read = disk_read_gbps * 1e9 if disk_read_gbps else d.bandwidth
        mem_gb = host_memory_gb if host_memory_gb is not None else (h.capacity_gb or 0.0)
        return cls(pcie_bw=pcie_gbps * 1e9 if pcie_gbps else link.bandwidth, disk_read_bw=read,
                   disk_write_bw=disk_write_gbps * 1e9 if disk_write_gbps else read,
                   host_mem_bw=host_mem_gbps * 1e9 if host_mem_gbps else h.bandwidth, host_flops=host_flops,
                   host_memory_bytes=mem_gb * 1e9, disk_bytes=(disk_gb if disk_gb is not None
                                                               else d.capacity_gb or 0.0) * 1e9,
                   pcie_latency_s=link.latency_us * 1e-6)


_FLAGS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


@dataclass(frozen=True, slots=True)
class LayerCost:
    """One layer of one step, seconds: the parallel streams that double buffering overlaps."""

    gpu: float
    cpu: float
    h2d: float
    d2h: float
    disk_read: float
    disk_write: float
    h2d_bytes: float
    fill: float              # the first layer's load, which nothing hides

    def time(self, overlap: bool) -> float:
        """The layer's seconds: the slowest stream with double buffering, their sum without."""
        io = (self.h2d, self.d2h, self.disk_read, self.disk_write)
        return max(self.gpu, self.cpu, *io) if overlap else self.gpu + self.cpu + sum(io)


def _split(b: BatchShape, k: int) -> BatchShape:
    """One of `k` equal micro-batches of `b` (counts rounded up, sums divided)."""
    if k == 1:
        return b
    return BatchShape(tokens=-(-b.tokens // k), sampled=-(-b.sampled // k), prefill_attn=b.prefill_attn / k,
                      prefill_kv=b.prefill_kv / k, prefill_tokens=-(-b.prefill_tokens // k),
                      prefill_seqs=-(-b.prefill_seqs // k), decode_seqs=-(-b.decode_seqs // k),
                      decode_ctx=b.decode_ctx / k)


class OffloadedCostModel:
    """A `CostModel` whose weights / KV / activations are placed by a `Placement`; same pricing interface."""

    def check_weights_fit(self) -> None:
        """Refuse a placement whose weights alone overflow the host memory or the disk (`fits` also counts KV)."""
        p, base = self.placement, self.base
        for tier, share, room in (("host memory", p.weights_cpu, self.hw.host_memory_bytes),
                                  ("disk", p.weights_disk, self.hw.disk_bytes)):
            need = share * base.weight_bytes_per_gpu
            if need > room:
                raise DeploymentError(f"{share:.0%} of {base.model.name}'s weights ({need / 1e9:.1f} GB) do not fit "
                                      f"in the {room / 1e9:.0f} GB of {tier}; move them to another tier or give "
                                      f"more {tier}")

    def __init__(self, base: CostModel, placement: Placement, hardware: OffloadHardware | None = None) -> None:
        if base.tp != 1:
            raise ConfigError("offload is for one GPU: set parallelism.tp=1")
        self.base, self.placement = base, placement
        self.hw = hardware or OffloadHardware.for_gpu(base.gpu)
        self.model, self.gpu, self.tp, self.engine = base.model, base.gpu, base.tp, base.engine
        self.weight_dtype, self.kv_dtype, self.act_dtype = base.weight_dtype, base.kv_dtype, base.act_dtype
        m = base.model
        L = self.layers = m.num_layers
        self._w_layer = base.weight_bytes_per_gpu / L           # embedding and head spread over the layers
        self._kv_layer = base.kv_bytes_per_token_per_gpu / L
        ab = DTYPE_BYTES[base.act_dtype]
        self._act_tok = m.hidden_size * ab
        self._q_tok = m.num_heads * m.head_dim * ab
        self._attn_flops_tok = 4.0 * m.num_heads * m.head_dim   # QK^T and PV per cached token per layer
        self._cache: dict[tuple, tuple[float, float, float]] = {}

    # ------------------------------------------------------------------ memory
    @property
    def weight_bytes_per_gpu(self) -> float:
        """GPU-resident weights plus the buffers the streamed share is loaded into (two with overlap)."""
        p = self.placement
        off = 1.0 - p.weights_gpu
        return p.weights_gpu * self.base.weight_bytes_per_gpu + (2 if p.overlap else 1) * off * self._w_layer * (off > 0)

    @property
    def kv_bytes_per_token_per_gpu(self) -> float:
        """GPU bytes per cached token: the resident KV share, plus a double buffer of one layer's share of
        the offloaded rest (streamed in for GPU attention, staged out with CPU attention)."""
        p = self.placement
        off = 1.0 - p.kv_gpu
        return p.kv_gpu * self.base.kv_bytes_per_token_per_gpu + 2 * off * self._kv_layer

    def kv_capacity_tokens(self, gpu_kv_bytes: float) -> int:
        """KV tokens that fit in every tier at once: the GPU's `gpu_kv_bytes`, the host DRAM left after its
        weights, the disk left after its weights (the engine's KV capacity for this placement)."""
        p, full = self.placement, self.base.kv_bytes_per_token_per_gpu
        W = self.base.weight_bytes_per_gpu
        caps = [gpu_kv_bytes / self.kv_bytes_per_token_per_gpu]
        if p.kv_cpu > 0:
            caps.append(max(0.0, self.hw.host_memory_bytes - p.weights_cpu * W) / (p.kv_cpu * full))
        if p.kv_disk > 0:
            caps.append(max(0.0, self.hw.disk_bytes - p.weights_disk * W) / (p.kv_disk * full))
        return max(0, int(min(caps)))

    def memory_use(self, batch: int, prompt_len: int, gen_len: int) -> dict[str, float]:
        """Peak bytes on the GPU, in host DRAM and on disk for `batch` sequences of prompt + generation."""
        p, base, m = self.placement, self.base, self.model
        W, full = base.weight_bytes_per_gpu, base.kv_bytes_per_token_per_gpu
        tokens = batch * (prompt_len + gen_len)
        gbs = min(p.gpu_batch or batch, batch)
        ab = DTYPE_BYTES[base.act_dtype]
        # one micro-batch's prefill working set: residual in/out and the FFN's intermediate; naive attention
        # also materialises the score matrix (heads x s x s)
        work = gbs * prompt_len * (2 * m.hidden_size + m.intermediate_size) * ab
        if not base.flash_attention:
            work += gbs * m.num_heads * prompt_len * prompt_len * ab
        hidden = batch * prompt_len * self._act_tok     # hidden states of the whole batch between layers
        stream = 0.0 if p.kv_gpu >= 1 else 2 * (1 - p.kv_gpu) * self._kv_layer * gbs * (prompt_len + gen_len)
        gpu = (self.weight_bytes_per_gpu + p.kv_gpu * full * tokens + stream + p.act_gpu * hidden + work
               + NON_TORCH_OVERHEAD_BYTES)
        host = (p.weights_cpu * W + 2 * p.weights_disk * self._w_layer + p.kv_cpu * full * tokens
                + p.act_cpu * hidden)
        disk = p.weights_disk * W + p.kv_disk * full * tokens + p.act_disk * hidden
        return {"gpu": gpu, "host": host, "disk": disk}

    def fits(self, batch: int, prompt_len: int, gen_len: int) -> bool:
        """All three tiers hold `memory_use`."""
        use = self.memory_use(batch, prompt_len, gen_len)
        return (use["gpu"] <= self.gpu.usable_memory_bytes and use["host"] <= self.hw.host_memory_bytes
                and use["disk"] <= self.hw.disk_bytes)

    # ------------------------------------------------------------------ pricing
    def _micro_batches(self, b: BatchShape) -> int:
        seqs = b.prefill_seqs + b.decode_seqs
        g = self.placement.gpu_batch
        return max(1, -(-seqs // g)) if g else 1

    def _gpu_parts(self, b: BatchShape) -> tuple[float, float, float]:
        """(per-layer GPU seconds, once-per-step GPU seconds, GPU decode-attention seconds per layer) of `b`
        run as k micro-batches, from the wrapped model's op breakdown."""
        k = self._micro_batches(b)
        mb = _split(b, k)
        key = (k, mb.tokens, mb.sampled, mb.prefill_attn, mb.prefill_kv, mb.prefill_tokens, mb.prefill_seqs,
               mb.decode_seqs, mb.decode_ctx)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        layer = step = attn_dec = 0.0
        for op in self.base.breakdown(mb):
            if op.name == _SKIP:
                continue
            if op.name in PER_STEP_OPS:
                step += op.time_s
            elif op.name == "attention_decode":
                attn_dec += op.time_s
            else:
                layer += op.time_s
        L = self.layers
        out = (k * layer / L, k * step, k * attn_dec / L)
        if len(self._cache) > 4096:
            self._cache.clear()
        self._cache[key] = out
        return out

    def layer_cost(self, b: BatchShape) -> LayerCost:
        """One layer of step `b`: GPU and CPU compute and the bytes each link moves, as seconds."""
        p, hw = self.placement, self.hw
        gpu_layer, _, attn_dec = self._gpu_parts(b)
        kv_l, w_l, act = self._kv_layer, self._w_layer, self._act_tok
        new = b.tokens
        ctx_dec = b.decode_ctx - b.decode_seqs            # cached tokens the decodes read
        ctx_pre = b.prefill_kv - b.prefill_tokens         # cached tokens the prompt chunks read
        off_w, off_kv, off_act = 1.0 - p.weights_gpu, 1.0 - p.kv_gpu, 1.0 - p.act_gpu
        h2d = off_w * w_l + off_act * new * act + off_kv * ctx_pre * kv_l
        d2h = off_kv * new * kv_l + off_act * new * act
        disk_r = p.weights_disk * w_l + p.kv_disk * (ctx_dec + ctx_pre) * kv_l + p.act_disk * new * act
        disk_w = p.kv_disk * new * kv_l + p.act_disk * new * act
        cpu = 0.0
        if p.cpu_attention and b.decode_seqs and off_kv > 0:
            # the CPU attends over the off-GPU share where it lies; q goes out, the output comes back
            gpu_layer += attn_dec * p.kv_gpu
            d2h += off_kv * b.decode_seqs * self._q_tok
            h2d += off_kv * b.decode_seqs * act
            cpu = max(off_kv * ctx_dec * kv_l / hw.host_mem_bw, off_kv * ctx_dec * self._attn_flops_tok / hw.host_flops)
        else:
            gpu_layer += attn_dec
            h2d += off_kv * ctx_dec * kv_l
        t_h2d, t_dr = h2d / hw.pcie_bw, disk_r / hw.disk_read_bw
        fill = (t_h2d + t_dr) if p.overlap else 0.0
        return LayerCost(gpu_layer, cpu, t_h2d, d2h / hw.pcie_bw, t_dr, disk_w / hw.disk_write_bw, h2d, fill)

    def _host(self, b: BatchShape) -> float:
        return self.engine.host_time(b.prefill_seqs, b.decode_seqs, b.tokens)

    def step_time(self, b: BatchShape) -> float:
        """Seconds for one iteration of batch `b` (the whole effective batch; weights loaded once per layer)."""
        if b.tokens == 0:
            return 0.0
        lc = self.layer_cost(b)
        t = self.layers * lc.time(self.placement.overlap) + lc.fill + self._gpu_parts(b)[1]
        host = self._host(b)
        return max(t, host) if self.engine.async_scheduling else t + host

    def decode_run_times(self, seqs: int, ctx_sum: int, steps: int):
        """Times of `steps` pure-decode iterations (context sum starting at `ctx_sum`, growing by `seqs`),
        each exactly `step_time` of that step's shape. Returns a numpy array."""
        import numpy as np

        return np.array([self.step_time(BatchShape(tokens=seqs, sampled=seqs, decode_seqs=seqs,
                                                   decode_ctx=ctx_sum + i * seqs)) for i in range(steps)],
                        dtype=np.float64)

    def breakdown(self, b: BatchShape) -> list[OpCost]:
        """Per-op costs of one iteration; the time the GPU waits for the CPU or for transfers is a row of its
        own (`cpu_attention`, `offload_io`), so the rows add up to `step_time`."""
        if b.tokens == 0:
            return []
        p, k, L = self.placement, self._micro_batches(b), self.layers
        rows = []
        for op in self.base.breakdown(_split(b, k)):
            if op.name == _SKIP:
                continue
            scale = k * (p.kv_gpu if op.name == "attention_decode" and p.cpu_attention else 1.0)
            rows.append(replace(op, time_s=op.time_s * scale, flops=op.flops * scale, bytes=op.bytes * scale))
        lc = self.layer_cost(b)
        io = max(lc.h2d, lc.d2h, lc.disk_read, lc.disk_write) if p.overlap else lc.h2d + lc.d2h + lc.disk_read + lc.disk_write
        cpu_extra = max(lc.gpu, lc.cpu) - lc.gpu if p.overlap else lc.cpu
        io_extra = (max(lc.gpu, lc.cpu, io) - max(lc.gpu, lc.cpu) if p.overlap else io) * L + lc.fill
        if cpu_extra > 0:
            rows.append(OpCost("cpu_attention", L * cpu_extra, 0.0, 0.0, "memory"))
        if io_extra > 0 or lc.h2d_bytes:
            rows.append(OpCost("offload_io", io_extra, 0.0, L * lc.h2d_bytes, "network"))
        gpu_sum = sum(r.time_s for r in rows)
        host = self._host(b)
        overhead = max(host - gpu_sum, 0.0) if self.engine.async_scheduling else host
        if overhead:
            rows.append(OpCost("engine_overhead", overhead, 0.0, 0.0, "latency"))
        return [r for r in rows if r.time_s > 0 or r.flops > 0 or r.bytes > 0]

    def _compute_dtype(self) -> str:
        return self.base._compute_dtype()


@dataclass(frozen=True)
class PolicyResult:
    """One evaluated policy: placement, effective batch, and its generation throughput."""

    placement: Placement
    batch: int
    prefill_s: float
    decode_s: float
    gen_len: int
    memory: dict

    @property
    def throughput(self) -> float:
        """Generated tokens per second over prefill + decode (FlexGen's generation throughput)."""
        return self.batch * self.gen_len / (self.prefill_s + self.decode_s)


def generation_time(cost: OffloadedCostModel, batch: int, prompt_len: int, gen_len: int,
                    exact: bool = True) -> tuple[float, float]:
    """(prefill seconds, decode seconds) to generate `gen_len` tokens for `batch` prompts of `prompt_len`:
    one prefill (which samples the first token) and gen_len - 1 decode steps. `exact=False` prices the decode
    steps by the trapezoid of the first and last (a slight over-estimate: the step time is convex in context)."""
    prefill = cost.step_time(BatchShape.prefill(batch, prompt_len))
    n = gen_len - 1
    if n <= 0:
        return prefill, 0.0
    ctx0 = batch * (prompt_len + 1)
    if exact:
        return prefill, float(cost.decode_run_times(batch, ctx0, n).sum())
    first = cost.step_time(BatchShape(tokens=batch, sampled=batch, decode_seqs=batch, decode_ctx=ctx0))
    last = cost.step_time(BatchShape(tokens=batch, sampled=batch, decode_seqs=batch,
                                     decode_ctx=ctx0 + (n - 1) * batch))
    return prefill, n * (first + last) / 2


def evaluate_policy(base: CostModel, placement: Placement, batch: int, prompt_len: int, gen_len: int,
                    hardware: OffloadHardware | None = None, exact: bool = True) -> PolicyResult:
    """Price one policy (placement + effective batch) for the offline job prompt_len -> gen_len."""
    cost = OffloadedCostModel(base, placement, hardware)
    pre, dec = generation_time(cost, batch, prompt_len, gen_len, exact)
    return PolicyResult(placement, batch, pre, dec, gen_len, cost.memory_use(batch, prompt_len, gen_len))


FRACTIONS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
KV_SPLITS = ((1.0, 0.0), (0.0, 1.0), (0.0, 0.0), (0.5, 0.5))
GPU_BATCHES = (1, 2, 4, 8, 16, 32, 48, 64, 96, 128)
NUM_GPU_BATCHES = (1, 2, 4, 8, 16)


def candidate_placements(fractions=FRACTIONS, kv_splits=KV_SPLITS) -> list[Placement]:
    """The grid FlexGen's search walks: weight splits x KV splits x activations on GPU or CPU x CPU attention."""
    out = []
    for wg in fractions:
        for wc in fractions:
            if wg + wc > 1.0 + 1e-9:
                continue
            for cg, cc in kv_splits:
                for hg in (1.0, 0.0):
                    for cpu_attn in ((False, True) if cg < 1.0 else (False,)):
                        out.append(Placement(wg, min(wc, 1.0 - wg), cg, cc, hg, 1.0 - hg, cpu_attention=cpu_attn))
    return out


def best_policy(base: CostModel, prompt_len: int, gen_len: int, hardware: OffloadHardware | None = None, *,
                placements: list[Placement] | None = None, gpu_batches=GPU_BATCHES,
                num_gpu_batches=NUM_GPU_BATCHES, top: int = 5) -> PolicyResult:
    """The placement and batch (GPU micro-batch x number of micro-batches) that maximise generation
    throughput within the GPU, host DRAM and disk capacities: a grid search like FlexGen's (which solves
    an LP per batch size). Ranks by the trapezoid decode estimate, then prices the best `top` exactly."""
    hw = hardware or OffloadHardware.for_gpu(base.gpu)
    scored = []
    for pl in placements or candidate_placements():
        for gbs in gpu_batches:
            p = replace(pl, gpu_batch=gbs)
            cost = OffloadedCostModel(base, p, hw)
            for k in num_gpu_batches:
                if not cost.fits(gbs * k, prompt_len, gen_len):
                    break                          # more micro-batches only need more memory
                pre, dec = generation_time(cost, gbs * k, prompt_len, gen_len, exact=False)
                scored.append((gbs * k * gen_len / (pre + dec), p, gbs * k))
    if not scored:
        raise ConfigError(f"no offload policy fits {base.model.name} on {base.gpu.name} with "
                          f"{hw.host_memory_bytes / 1e9:.0f} GB host memory and {hw.disk_bytes / 1e9:.0f} GB disk; "
                          f"add host memory or disk")
    scored.sort(key=lambda s: -s[0])
    best = [evaluate_policy(base, p, bs, prompt_len, gen_len, hw) for _, p, bs in scored[:top]]
    return max(best, key=lambda r: r.throughput)


def max_batch(base: CostModel, placement: Placement, prompt_len: int, gen_len: int,
              hardware: OffloadHardware | None = None, limit: int = 4096) -> int:
    """Largest batch (micro-batch = batch) that fits all tiers with `placement`; 0 if none."""
    lo, hi = 0, limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if OffloadedCostModel(base, replace(placement, gpu_batch=None), hardware).fits(mid, prompt_len, gen_len):
            lo = mid
        else:
            hi = mid - 1
    return lo


__all__ = ["DEFAULT_HOST_FLOPS", "LayerCost", "OffloadHardware", "OffloadedCostModel",
           "Placement", "PolicyResult", "best_policy", "candidate_placements", "evaluate_policy",
           "generation_time", "max_batch"]


def __getattr__(name: str):
    """`HotColdCostModel` moved to `sim.powerinfer`; still importable from here."""
    if name == "HotColdCostModel":
        from .powerinfer import HotColdCostModel
        return HotColdCostModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
