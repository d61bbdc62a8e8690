"""Kernel-level validation of the cost model: six families of reference measurements.

    python -m experiments.validation.kernels            # print the tables, rewrite docs/VALIDATION.md's section

Each family is a list of `Point`s (what was measured, what `sim.cost.CostModel` predicts for the
same shape); the error of a point is predicted / measured - 1. The families and what they fix:

1. gpt-fast   batch-1 decode tokens/s on A100 (bf16, int8/int4 weight-only, TP 1-8, dense and MoE):
              weight-streaming bandwidth, weight-only dequantisation, MoE expert streaming, gpt-fast's
              per-step and per-all-reduce host cost.
2. trtllm     TensorRT-LLM static-batch throughput and batch-1 TTFT (A100 FP16, L40S FP8): large-GEMM
              compute efficiency end to end, TensorRT-LLM's step cost.
3. gemm       Vidur A100 per-layer GEMM times against tokens and TP: the GEMM efficiency curve
              (compute and memory efficiency, the knee between them, the per-kernel floor).
4. attention  Vidur A100 attention kernel times (paged decode, chunked prefill).
5. allreduce  NCCL all-reduce on a DGX A100 (2/4/8 GPUs): bus bandwidth and the per-call latency.
6. splitwise  Splitwise Llama-2-70B (TP 2/4/8) and BLOOM-176B (TP 8) prefill and decode times as ratios between points:
              how time scales with prompt length, batch, context and TP (its engine is overhead-heavy).

Besides, `device_points` compares the model with kernels timed on a lent H100 (bf16 and int4 tinygemm GEMMs,
decode and prefill attention, copy bandwidth): a check of the model's structure, not a calibration target.

The data are copies in `experiments/validation/data/` (see its README for provenance).
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from sim.cost import CONSTANTS, BatchShape, CostModel, EngineProfile, KernelConstants, allreduce_time, \
    get_engine_profile
from sim.hardware import get_gpu, get_link
from sim.models import ModelSpec, get_model

DATA = Path(__file__).resolve().parent / "data"
DOC = Path(__file__).resolve().parents[2] / "docs" / "VALIDATION.md"
A100 = "a100-sxm-80gb"

# Targets every family must meet (|predicted / measured - 1|).
TARGET_MEDIAN = 0.10
TARGET_P90 = 0.25

# Which constants each family calibrates (names of KernelConstants fields or "<profile>.<field>").
CALIBRATES = {
    "gpt-fast": ["int8_weight_only_mem_eff", "int4_weight_only_mem_eff (with tinygemm's derived per-row term)",
                 "moe_expert_mem_eff (went to 1)",
                 "gpt-fast.step_overhead_s", "gpt-fast.allreduce_latency_s"],
    "trtllm": ["trtllm.step_overhead_s", "trtllm.allreduce_latency_s",
               "(end-to-end check of the GEMM and attention constants, A100 FP16 and L40S FP8)"],
    "gemm": ["gemm_compute_eff", "mem_eff", "gemm_knee", "kernel_floor_s"],
    "elementwise": ["elementwise_mem_eff"],
    "attention": ["attn_decode_mem_eff", "attn_decode_seq_s (decode with SM wave occupancy and Flash-Decoding "
                  "splits; attn_decode_wave_s left at 0)", "attn_prefill_compute_eff", "attn_prefill_floor_s",
                  "attn_prefill_token_s"],
    "allreduce": ["nccl_allreduce_latency_s", "links.yaml nvlink3 achievable_fraction (check)"],
    "splitwise": ["splitwise.step_overhead_s", "splitwise.per_seq_overhead_s",
                  "splitwise.per_prefill_seq_overhead_s", "splitwise.allreduce_latency_s"],
}


@dataclass(frozen=True, slots=True)
class Point:
    """One measurement and its prediction."""

    family: str
    label: str
    measured: float
    predicted: float
    unit: str

    @property
    def error(self) -> float:
        return self.predicted / self.measured - 1.0


# ----------------------------------------------------------------------------- helpers

def _profile(name: str, overrides: dict | None) -> EngineProfile:
    p = get_engine_profile(name)
    if overrides and name in overrides:
        p = dataclasses.replace(p, **overrides[name])
    return p


@lru_cache(maxsize=None)
def _model(name: str) -> ModelSpec:
    if name == "gpt-j-6b":
        # EleutherAI/gpt-j-6b config.json: not in the catalogue (an older architecture), only here.
        return ModelSpec(name="gpt-j-6b", hf_id="EleutherAI/gpt-j-6b", architecture="GPTJForCausalLM",
                         hidden_size=4096, num_layers=28, num_heads=16, num_kv_heads=16, head_dim=256,
                         intermediate_size=16384, vocab_size=50400, max_position_embeddings=2048,
                         ffn_type="gelu", attention_type="mha", default_weight_dtype="fp16")
    return get_model(name)


def _cost(model: str, gpu: str, tp: int, engine: EngineProfile, k: KernelConstants,
          weight_dtype: str | None = None) -> CostModel:
    return CostModel(_model(model), get_gpu(gpu), tp=tp, weight_dtype=weight_dtype, engine=engine, constants=k)


_MODEL_NAMES = {"llama-2-7b": "llama-2-7b", "llama-2-70b": "llama-2-70b", "llama-3.1-8b": "llama-3.1-8b",
                "llama-3.1-70b": "llama-3.1-70b", "llama-3.1-405b": "llama-3.1-405b",
                "mixtral-8x7b": "mixtral-8x7b", "llama(-2) 7b": "llama-2-7b", "llama(-2) 70b": "llama-2-70b",
                "gpt-j-6b": "gpt-j-6b"}


def _dtype(precision: str) -> str:
    p = precision.lower()
    for key in ("int4", "int8", "fp8"):
        if key in p:
            return key
    return "fp16" if "16" in p and "bf" not in p else "bf16"


@lru_cache(maxsize=1)
def published() -> pd.DataFrame:
    return pd.read_csv(DATA / "published_points.csv")


# ----------------------------------------------------------------------------- 1. gpt-fast

# gpt-fast's benchmark generates 200 tokens after a 5-token prompt: the mean context is ~105 tokens.
GPTFAST_CONTEXT = 105


def gptfast_points(k: KernelConstants = CONSTANTS, profiles: dict | None = None) -> list[Point]:
    d = published()
    d = d[d.engine.str.startswith("gpt-fast") & (d.metric == "decode_tokens_per_s_per_user")
          & (d.gpu == "A100-SXM-80GB")]
    eng = _profile("gpt-fast", profiles)
    out = []
    for r in d.itertuples():
        model = _MODEL_NAMES.get(r.model.lower())
        if model is None:
            continue
        tp, wd = int(r.tp), _dtype(r.precision)
        cost = _cost(model, A100, tp, eng, k, weight_dtype=wd)
        t = cost.step_time(BatchShape.decode(1, GPTFAST_CONTEXT))
        out.append(Point("gpt-fast", f"{model} {wd} tp{tp}", float(r.value), 1.0 / t, "tok/s"))
    return out


# ----------------------------------------------------------------------------- 2. TensorRT-LLM

def static_batch_time(cost: CostModel, batch: int, isl: int, osl: int) -> float:
    """One static batch: prefill every prompt in one step (the first token), then osl-1 decode steps
    whose context grows by one token each (gptSessionBenchmark's context and generation phases)."""
    t = cost.step_time(BatchShape.prefill(batch, isl))
    if osl > 1:
        t += float(cost.decode_run_times(batch, batch * (isl + 1), osl - 1).sum())
    return t


def trtllm_points(k: KernelConstants = CONSTANTS, profiles: dict | None = None) -> list[Point]:
    d = published()
    d = d[d.engine.str.startswith("TensorRT-LLM")]
    eng = _profile("trtllm", profiles)
    gpus = {"A100-SXM-80GB": A100, "L40S-48GB": "l40s"}
    out = []
    for r in d.itertuples():
        model = _MODEL_NAMES[r.model.lower()]
        gpu, tp, wd = gpus[r.gpu], int(r.tp), _dtype(r.precision)
        batch = int(re.search(r"batch=(\d+)", r.batch_or_rate).group(1))
        cost = _cost(model, gpu, tp, eng, k, weight_dtype=wd)
        isl = int(r.isl)
        tag = f"{model} {gpu.split('-')[0]} {wd} tp{tp} b{batch} {isl}/"
        if r.metric == "output_throughput":
            # per GPU: the H100 table of the same page says so, and only per GPU do the 70B TP4 rows fit
            # their own prefill FLOPs (b120 2048/128: 79 tok/s in total would need 194 s for 38 s of GEMMs)
            osl = int(r.osl)
            pred = batch * osl / static_batch_time(cost, batch, isl, osl) / tp
            out.append(Point("trtllm", tag + f"{osl} tput/GPU", float(r.value), pred, "tok/s"))
        elif r.metric.startswith("ttft"):
            pred = cost.step_time(BatchShape.prefill(1, isl)) * 1e3
            out.append(Point("trtllm", tag + "1 ttft", float(r.value), pred, "ms"))
        elif r.metric == "decode_tokens_per_s_per_user":
            pred = 1.0 / cost.step_time(BatchShape.decode(1, isl + 64))
            out.append(Point("trtllm", tag + "b1 decode", float(r.value), pred, "tok/s"))
    return out


# ----------------------------------------------------------------------------- 3. Vidur GEMMs

VIDUR_LINEAR = {"llama-2-7b": "vidur_a100_Llama-2-7b-hf_linear_ops_summary.csv",
                "llama-3.1-8b": "vidur_a100_Meta-Llama-3-8B_linear_ops_summary.csv"}
GEMM_OPS = ("qkv_proj", "o_proj", "mlp_up_gate", "mlp_down")


@lru_cache(maxsize=None)
def _vidur_linear(model: str) -> pd.DataFrame:
    d = pd.read_csv(DATA / "measured" / VIDUR_LINEAR[model])
    # repeated rows (same tp, tokens) are separate profiles: keep their median
    return d.groupby(["tp", "num_tokens"], as_index=False)[[f"{o}_ms" for o in GEMM_OPS]].median()


def gemm_points(k: KernelConstants = CONSTANTS, profiles: dict | None = None) -> list[Point]:
    eng = _profile("kernels", profiles)
    out = []
    for model in VIDUR_LINEAR:
        d = _vidur_linear(model)
        for tp, rows in d.groupby("tp"):
            cost = _cost(model, A100, int(tp), eng, k)
            L = cost.model.num_layers
            for r in rows.itertuples():
                ops = {o.name: o for o in cost.breakdown(BatchShape.prefill(1, int(r.num_tokens)))}
                for op in GEMM_OPS:
                    meas = getattr(r, f"{op}_ms")
                    out.append(Point("gemm", f"{model} tp{tp} {op} M={r.num_tokens}", meas,
                                     ops[op].time_s / L * 1e3, "ms"))
    return out


def elementwise_points(k: KernelConstants = CONSTANTS, profiles: dict | None = None) -> list[Point]:
    """Vidur's per-layer non-attention total minus its four GEMMs: the norms, activation, residual adds
    (the cost model's `elementwise` op), every 8th token count."""
    eng = _profile("kernels", profiles)
    out = []
    for model in VIDUR_LINEAR:
        d = pd.read_csv(DATA / "measured" / VIDUR_LINEAR[model]).groupby(
            ["tp", "num_tokens"], as_index=False).median(numeric_only=True)
        d = d[(d.num_tokens <= 16) | (d.num_tokens % 64 == 0)]
        rest = d.per_layer_nonattn_total_ms - d[[f"{o}_ms" for o in GEMM_OPS]].sum(axis=1)
        for tp, rows in d.assign(rest=rest).groupby("tp"):
            cost = _cost(model, A100, int(tp), eng, k)
            L = cost.model.num_layers
            for r in rows.itertuples():
                op = next(o for o in cost.breakdown(BatchShape.prefill(1, int(r.num_tokens))) if o.name == "elementwise")
                out.append(Point("elementwise", f"{model} tp{tp} M={r.num_tokens}", r.rest, op.time_s / L * 1e3, "ms"))
    return out


# ----------------------------------------------------------------------------- 4. Vidur attention

def attention_points(k: KernelConstants = CONSTANTS, profiles: dict | None = None) -> list[Point]:
    d = pd.read_csv(DATA / "measured" / "vidur_a100_attention_points.csv")
    eng = _profile("kernels", profiles)
    names = {"meta-llama/Llama-2-7b-hf": "llama-2-7b", "meta-llama/Meta-Llama-3-8B": "llama-3.1-8b"}
    out = []
    for r in d.itertuples():
        model = names[r.model]
        cost = _cost(model, A100, int(r.tp), eng, k)
        L = cost.model.num_layers
        b, ctx = int(r.batch_size), int(r.kv_cache_size)
        if r.kind == "attention_decode":
            shape = BatchShape.decode(b, ctx)
            name, meas, tag = "attention_decode", r.attn_decode_ms, f"{model} decode b{b} ctx{ctx}"
        else:
            q = int(r.prefill_chunk_size)
            shape = BatchShape.prefill(b, q, ctx)
            name, meas, tag = "attention_prefill", r.attn_prefill_ms, f"{model} prefill q{q} ctx{ctx}"
        op = next(o for o in cost.breakdown(shape) if o.name == name)
        out.append(Point("attention", tag, float(meas), op.time_s / L * 1e3, "ms"))
    return out


# ----------------------------------------------------------------------------- 5. all-reduce

def allreduce_points(k: KernelConstants = CONSTANTS, profiles: dict | None = None,
                     min_bytes: int = 0) -> list[Point]:
    """Intra-node rows (num_workers == devices_per_node); the acceptance metric uses >= 1 MiB."""
    d = pd.read_csv(DATA / "measured" / "vidur_a100_dgx_all_reduce_summary.csv")
    d = d[(d.num_workers == d.devices_per_node) & (d.size_bytes >= min_bytes)]
    link = get_link(get_gpu(A100).scaleup)
    bw = link.bw_gbps_per_direction * 1e9 * link.achievable_fraction
    out = []
    for r in d.itertuples():
        n, s = int(r.num_workers), float(r.size_bytes)
        pred = allreduce_time(s, n, bw, k.nccl_allreduce_latency_s)
        out.append(Point("allreduce", f"n{n} {int(s)} B", float(r.median_ms), pred * 1e3, "ms"))
    return out


# ----------------------------------------------------------------------------- 6. Splitwise

SPLITWISE_MODELS = {"llama2-70b": "llama-2-70b", "bloom-176b": "bloom-176b"}   # Splitwise's names -> catalogue


def _splitwise_rows() -> pd.DataFrame:
    d = pd.read_csv(DATA / "measured" / "splitwise_a100_perf_summary.csv")
    d = d[d.model.isin(list(SPLITWISE_MODELS))]
    return d[~((d.tp == 2) & (d.batch_size == 64))]          # the README: TP2 batch-64 rows look truncated


def splitwise_points(k: KernelConstants = CONSTANTS, profiles: dict | None = None) -> list[Point]:
    """Ratios of each row's prefill and per-step decode time to the same model and TP's reference row (prompt
    512, batch 1, 128 tokens), and of the reference rows across TP (to TP 8)."""
    eng = _profile("splitwise", profiles)
    d = _splitwise_rows()
    pred, meas = {}, {}
    for r in d.itertuples():
        cost = _cost(SPLITWISE_MODELS[r.model], A100, int(r.tp), eng, k, weight_dtype="fp16")
        b, p, n = int(r.batch_size), int(r.prompt_size), int(r.token_size)
        prefill = cost.step_time(BatchShape.prefill(b, p))
        steps = max(n - 1, 1)
        decode = float(cost.decode_run_times(b, b * (p + 1), steps).mean())
        key = (r.model, r.tp, p, b, n)
        pred[key] = (prefill, decode)
        meas[key] = (r.prompt_time_ms_median, r.token_time_ms_median)
    out = []
    for model in SPLITWISE_MODELS:
        tag = "" if model == "llama2-70b" else f"{SPLITWISE_MODELS[model]} "
        tps = sorted({key[1] for key in meas if key[0] == model})
        for tp in tps:
            ref = (model, tp, 512, 1, 128)
            for key in sorted(k_ for k_ in meas if k_[:2] == (model, tp) and k_ != ref):
                _, _, p, b, n = key
                for i, phase in enumerate(("prefill", "decode")):
                    if phase == "prefill" and n != 128:
                        continue                               # same prefill as the reference: no information
                    m = meas[key][i] / meas[ref][i]
                    s = pred[key][i] / pred[ref][i]
                    out.append(Point("splitwise", f"{tag}tp{tp} {phase} p{p} b{b} n{n} / p512 b1", m, s, "ratio"))
            if tp != 8 and 8 in tps:
                for i, phase in enumerate(("prefill", "decode")):
                    m = meas[ref][i] / meas[(model, 8, 512, 1, 128)][i]
                    s = pred[ref][i] / pred[(model, 8, 512, 1, 128)][i]
                    out.append(Point("splitwise", f"{tag}{phase} p512 b1 tp{tp} / tp8", m, s, "ratio"))
    return out


# ----------------------------------------------------------------------------- H100 device checks

DEVICE_JSON = DATA / "measured" / "h100_kernels_device.json"
DEVICE_GPU = "h100-sxm-80gb"
# The device rows' Llama-3.1-8B attention shape (32 query heads, 8 KV heads, head_dim 128): one layer of it.
DEVICE_ATTN_MODEL = "llama-3.1-8b"


@lru_cache(maxsize=1)
def device_rows() -> tuple[dict, ...]:
    """Rows of experiments/validation/data/measured/h100_kernels_device.json (measured on a lent H100 with
    experiments/validation/device/measure_kernels.py). The int8 "compiled" rows time torch.compile's host path,
    not a kernel, and are left out."""
    import json

    data = json.loads(DEVICE_JSON.read_text())
    return tuple(r for r in data["rows"] if r["kind"] != "gemm_int8_compiled")


def device_points(k: KernelConstants | None = None) -> dict[str, list[Point]]:
    """The cost model against the H100 device rows, per family. A check of the model's structure (how time
    grows with rows, batch and context), never a calibration target: no constant is fitted to these rows.
    Every prediction uses the "kernels" profile (kernel constants only, no host cost) and the Hopper constants."""
    gpu = get_gpu(DEVICE_GPU)
    spec = _model(DEVICE_ATTN_MODEL)
    eng = get_engine_profile("kernels")
    kw = {} if k is None else {"constants": k}
    bf16 = CostModel(spec, gpu, weight_dtype="bf16", engine=eng, **kw)
    int4 = CostModel(spec, gpu, weight_dtype="int4", engine=eng, int4_kernel="tinygemm", **kw)
    naive = CostModel(spec, gpu, weight_dtype="bf16", engine=eng, flash_attention=False, **kw)
    L = spec.num_layers
    out: dict[str, list[Point]] = {"copy": [], "gemm bf16": [], "int4 tinygemm": [], "decode attention": [],
                                   "prefill attention (flash)": [], "prefill attention (math)": []}
    for r in device_rows():
        kind, meas = r["kind"], float(r["time_s"]) * 1e6
        if kind == "copy":
            # a device-to-device copy reads and writes: weight-streaming efficiency plus one kernel floor
            pred = (r["bytes"] / (gpu.memory_bw * bf16.k.mem_eff) + bf16.k.kernel_floor_s) * 1e6
            out["copy"].append(Point("copy", f"{r['bytes'] / 2**20:.0f} MiB", meas, pred, "us"))
        elif kind in ("gemm_bf16", "gemm_int4_tinygemm"):
            cost = bf16 if kind == "gemm_bf16" else int4
            pred = cost.linear_time(r["m"], r["k"], r["n"]) * 1e6
            fam = "gemm bf16" if kind == "gemm_bf16" else "int4 tinygemm"
            out[fam].append(Point(fam, f"{r['shape']} M={r['m']}", meas, pred, "us"))
        elif kind == "attn_decode":
            b, c = int(r["batch"]), int(r["context"])
            pred = bf16.decode_attention_time(b, b * c) / L * 1e6
            out["decode attention"].append(Point("decode attention", f"B={b} C={c}", meas, pred, "us"))
        elif kind == "attn_prefill":
            n = int(r["length"])
            cost, fam = (bf16, "prefill attention (flash)") if r["backend"] == "flash" else \
                (naive, "prefill attention (math)")
            op = next(o for o in cost.breakdown(BatchShape.prefill(1, n)) if o.name == "attention_prefill")
            out[fam].append(Point(fam, f"L={n}", meas, op.time_s / L * 1e6, "us"))
    out.update(device_extra_points(gpu, eng))
    return {name: pts for name, pts in out.items() if pts}


DEVICE_EXTRAS_JSON = DATA / "measured" / "h100_extras_device.json"


def device_extra_points(gpu, eng) -> dict[str, list[Point]]:
    """The second device file (experiments/validation/device/measure_extras.py): the CLIP ViT-L/14-336 tower against
    `policies.encoder_cost` (24 layers, no projector, as Hugging Face's CLIPVisionModel runs it), and 2:4 sparse
    GEMMs against `CostModel(sparsity="2:4")`. PyTorch's `_weight_int8pack_mm` rows are not compared: that kernel is
    not what gpt-fast runs (it reads 0.2 TB/s at one row on an H100)."""
    import dataclasses
    import json

    from policies.encoder_cost import EncoderCost, get_encoder

    if not DEVICE_EXTRAS_JSON.exists():
        return {}
    rows = json.loads(DEVICE_EXTRAS_JSON.read_text())["rows"]
    clip = dataclasses.replace(get_encoder("clip-vit-l-336"), layers_run=24, projector_layers=0)
    vit = EncoderCost(clip, gpu, engine=eng, llm_hidden=4096)
    sparse = CostModel(_model(DEVICE_ATTN_MODEL), gpu, weight_dtype="bf16", engine=eng, sparsity="2:4")
    dense = CostModel(_model(DEVICE_ATTN_MODEL), gpu, weight_dtype="bf16", engine=eng)
    fp8 = CostModel(_model(DEVICE_ATTN_MODEL), gpu, weight_dtype="fp8", engine=eng)
    mixtral = CostModel(_model("mixtral-8x7b"), gpu, weight_dtype="bf16", engine=eng)
    out: dict[str, list[Point]] = {"ViT encoder (CLIP-L/336)": [], "2:4 sparse GEMM speed-up": [], "gemm fp8 (W8A8)": [],
                                   "MoE experts (Mixtral, grouped GEMM)": []}
    for r in rows:
        if r["kind"] == "vit_clip_l336":
            b = int(r["batch"])
            pred = vit.call_time(b, b * clip.tokens_per_item) * 1e6
            out["ViT encoder (CLIP-L/336)"].append(Point("vit", f"batch {b}", float(r["time_s"]) * 1e6, pred, "us"))
        elif r["kind"] == "gemm_bf16_2to4":
            m, k, n = r["m"], r["k"], r["n"]
            measured = r["dense_time_s"] / r["time_s"]
            predicted = dense.linear_time(m, k, n) / sparse.linear_time(m, k, n)
            out["2:4 sparse GEMM speed-up"].append(Point("2:4", f"{r['shape']} M={m}", measured, predicted, "x"))
        elif r["kind"] == "gemm_fp8":
            pred = fp8.linear_time(r["m"], r["k"], r["n"]) * 1e6
            out["gemm fp8 (W8A8)"].append(Point("fp8", f"{r['shape']} M={r['m']}", float(r["time_s"]) * 1e6, pred,
                                                "us"))
        elif r["kind"] == "moe_grouped_ffn":
            t = int(r["tokens"])
            layer = next(o for o in mixtral.breakdown(BatchShape.decode(t, 1)) if o.name == "moe_experts")
            pred = layer.time_s / mixtral.model.num_moe_layers * 1e6
            out["MoE experts (Mixtral, grouped GEMM)"].append(Point("moe", f"{t} tokens", float(r["time_s"]) * 1e6,
                                                                    pred, "us"))
    return out


DEVICE_NOTES = {
    "ViT encoder (CLIP-L/336)": "policies/encoder_cost.py's roofline of the vision tower (GEMMs at the Hopper GEMM "
                                "constants, bidirectional attention over 577 positions, kernel floors); no encoder "
                                "measurement exists in ../shared/reference, so this is its only check",
    "gemm fp8 (W8A8)": "fp8 weights and activations (torch._scaled_mm, per-tensor scales) priced at the fp8 peak "
                       "and byte count with the bf16 GEMM constants",
    "MoE experts (Mixtral, grouped GEMM)": "moe_experts of one layer: the touched experts' weights at "
                                           "moe_expert_mem_eff (fitted on vLLM's fused_moe runs) and the routed "
                                           "tokens' FLOPs, against torch._grouped_mm (gate/up, SiLU-and-mul, down) "
                                           "with uniform routing; the model's expected touched experts (1 - (1 - "
                                           "k/E)^tokens) vs the measured kernel's exact count",
    "2:4 sparse GEMM speed-up": "dense time / sparse time; the model doubles the tensor rate and streams 0.56x the "
                                "weights (datasheet ceiling). PyTorch's semi-structured kernels give 1.0-1.4x at "
                                "1k-8k rows and run slower than dense below 256 rows (metadata decode, no "
                                "GEMV path), so the model is optimistic for decode",
    "gemm bf16": "the GEMM roofline with the Hopper knee and floor (fitted on vLLM H100 runs, not on these rows)",
    "int4 tinygemm": "weight streaming at int4_weight_only_mem_eff (A100 gpt-fast fit) with tinygemm's per-row term "
                     "(1/64 L1 wavefront per weight and row at SMs x clock, derived from the kernel source): "
                     "per-row slope 5.0 us vs 5.5 measured on the 70B qkv shape; M=1 is ~20% slow",
    "decode attention": "KV bytes at attn_decode_mem_eff / wave occupancy of batch x KV heads x Flash-Decoding "
                        "splits, + floors; batch x 8 KV heads >= 2 waves (no split) runs ~20% slower than "
                        "modelled: PyTorch's FlashAttention-2 pads the 4 query rows per KV head to a 128-row "
                        "tile and becomes compute-bound at ~310 TFLOP/s (not modelled)",
    "prefill attention (flash)": "causal FLOPs at attn_prefill_compute_eff (A100 fit) + the per-call (13.2 us) and "
                                 "per-token (57 ns) terms fitted on vLLM's chunked-prefill calls (paged-KV gather, "
                                 "KV write, rotary), which a bare SDPA call does not pay: too slow at short L; the "
                                 "FLOP term alone is +7% at L=16384",
    "prefill attention (math)": "flash_attention=False prices one write and one read of the causal half of the "
                                "scores; PyTorch's math path materialises the full L x L scores in several "
                                "passes (mask, fp32 softmax, cast, GQA-expanded K/V): ~10x more traffic, not "
                                "modelled",
    "copy": "bytes / (peak x mem_eff) + one kernel floor; a copy reads and writes (0.73 of peak measured at "
            "8 GiB against mem_eff 0.847)",
}


def device_table(results: dict[str, list[Point]]) -> pd.DataFrame:
    rows = [{"family": name, **{key: v for key, v in summarize(pts).items() if key != "ok"}}
            for name, pts in results.items()]
    return pd.DataFrame(rows)


def _device_markdown(results: dict[str, list[Point]]) -> list[str]:
    import json

    meta = json.loads(DEVICE_JSON.read_text())["meta"]
    lines = ["### H100 kernel checks (check, not calibration)", "",
             f"The cost model against kernels timed on a lent {meta['device']} ({meta['sms']} SMs; torch "
             f"{meta['torch']}, CUDA {meta['cuda']}; CUDA-graph timed medians; script `{meta['script']}`, data "
             "`experiments/validation/data/measured/h100_kernels_device.json`). These rows check the model's "
             "*structure*; no constant is fitted to them. The error is predicted / measured - 1.", "",
             "| family | n | median abs err | p90 abs err | worst point | what the model does |",
             "|---|---:|---:|---:|---|---|"]
    for name, pts in results.items():
        s = summarize(pts)
        lines.append(f"| {name} | {s['n']} | {100 * s['median']:.1f}% | {100 * s['p90']:.1f}% | {s['worst']} | "
                     f"{DEVICE_NOTES.get(name, '')} |")
    lines.append("")
    for name in ("int4 tinygemm", "decode attention", "ViT encoder (CLIP-L/336)", "2:4 sparse GEMM speed-up"):
        pts = results.get(name, [])
        if not pts:
            continue
        lines += [f"#### {name} (H100)", "", "| point | measured | predicted | error |", "|---|---:|---:|---:|"]
        for p in pts:
            lines.append(f"| {p.label} | {p.measured:.4g} {p.unit} | {p.predicted:.4g} | {100 * p.error:+.1f}% |")
        lines.append("")
    return lines


FAMILIES = {"gpt-fast": gptfast_points, "trtllm": trtllm_points, "gemm": gemm_points, "elementwise": elementwise_points,
            "attention": attention_points, "allreduce": lambda k=CONSTANTS, p=None: allreduce_points(k, p),
            "splitwise": splitwise_points}
# The all-reduce acceptance metric uses messages of at least 1 MiB; the table also reports all sizes.
ACCEPT_FILTERS = {"allreduce": lambda pts: [p for p in pts if int(p.label.split()[1]) >= 2**20]}


def evaluate(k: KernelConstants = CONSTANTS, profiles: dict | None = None,
             families: tuple[str, ...] | None = None) -> dict[str, list[Point]]:
    return {name: fn(k, profiles) for name, fn in FAMILIES.items() if families is None or name in families}


def summarize(points: list[Point]) -> dict:
    err = np.abs(np.array([p.error for p in points]))
    worst = points[int(err.argmax())]
    return {"n": len(points), "median": float(np.median(err)), "p90": float(np.quantile(err, 0.9)),
            "worst": f"{worst.label}: {worst.predicted:.4g} vs {worst.measured:.4g} {worst.unit} "
                     f"({100 * worst.error:+.0f}%)",
            "ok": bool(np.median(err) <= TARGET_MEDIAN and np.quantile(err, 0.9) <= TARGET_P90)}


def report(results: dict[str, list[Point]]) -> pd.DataFrame:
    rows = []
    for name, pts in results.items():
        accept = ACCEPT_FILTERS.get(name, lambda x: x)(pts)
        s = summarize(accept)
        rows.append({"family": name, **s, "calibrates": ", ".join(CALIBRATES[name])})
        if len(accept) != len(pts):
            s_all = summarize(pts)
            rows.append({"family": f"{name} (all sizes)", **s_all, "ok": None,
                         "calibrates": "(reported, not the acceptance metric)"})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- docs

def _markdown(table: pd.DataFrame, results: dict[str, list[Point]], k: KernelConstants) -> str:
    from sim.cost import constants_table, gpu_overrides_table, list_engine_profiles

    lines = ["## Kernel families", "",
             "Generated by `python -m experiments.validation.kernels` (do not edit by hand). Error of a point: "
             "predicted / measured - 1; targets per family: median |error| <= "
             f"{TARGET_MEDIAN:.0%}, p90 <= {TARGET_P90:.0%}.", "",
             "| family | n | median abs err | p90 abs err | meets target | worst point | calibrates |",
             "|---|---:|---:|---:|:---:|---|---|"]
    for r in table.itertuples():
        ok = "" if r.ok is None else ("yes" if r.ok else "**no**")
        lines.append(f"| {r.family} | {r.n} | {100 * r.median:.1f}% | {100 * r.p90:.1f}% | {ok} | {r.worst} | "
                     f"{r.calibrates} |")
    lines += ["", "### Points of the small families", ""]
    for name in ("gpt-fast", "trtllm", "attention", "splitwise"):
        if name not in results:
            continue
        lines += [f"#### {name}", "", "| point | measured | predicted | error |", "|---|---:|---:|---:|"]
        for p in results[name]:
            lines.append(f"| {p.label} | {p.measured:.4g} {p.unit} | {p.predicted:.4g} | {100 * p.error:+.1f}% |")
        lines.append("")
    if DEVICE_JSON.exists():
        lines += _device_markdown(device_points())
    lines += ["### Kernel constants", "", "| constant | value | unit | source |", "|---|---:|---|---|"]
    for row in constants_table(k):
        lines.append(f"| `{row['name']}` | {row['value']:.4g} | {row['unit']} | {row['source']} |")
    lines += ["", "### Hopper replacements (`sim.cost.kernel_constants`)", "",
              "| constant | GPUs | value | unit | source |", "|---|---|---:|---|---|"]
    for row in gpu_overrides_table():
        lines.append(f"| `{row['name']}` | {row['gpus']} | {row['value']:.4g} | {row['unit']} | {row['source']} |")
    lines += ["", "### Engine profiles (sim/catalog/engines.yaml)", "",
              "| profile | step_overhead_s | per_seq_overhead_s | per_prefill_seq_overhead_s | allreduce_latency_s "
              "| small_allreduce_max_bytes | async_scheduling | frontend_latency_s | source |",
              "|---|---:|---:|---:|---:|---:|:---:|---:|---|"]
    for p in list_engine_profiles():
        lines.append(f"| {p.name} | {p.step_overhead_s:.3g} | {p.per_seq_overhead_s:.3g} | "
                     f"{p.per_prefill_seq_overhead_s:.3g} | {p.allreduce_latency_s:.3g} | "
                     f"{p.small_allreduce_max_bytes:.3g} | {'yes' if p.async_scheduling else ''} | "
                     f"{p.frontend_latency_s:.3g} | {p.source} |")
    return "\n".join(lines) + "\n"


def write_section(doc: Path, marker: str, body: str) -> None:
    """Replace the text between `<!-- BEGIN marker -->` and `<!-- END marker -->` (append if absent)."""
    begin, end = f"<!-- BEGIN {marker} -->", f"<!-- END {marker} -->"
    text = doc.read_text() if doc.exists() else "# Validation of servesim against real measurements\n\n"
    block = f"{begin}\n{body}{end}\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="Compare the cost model with the kernel-level reference families.")
    ap.add_argument("--no-doc", action="store_true", help="print only; do not rewrite docs/VALIDATION.md")
    ap.add_argument("--points", metavar="FAMILY", help="also print every point of this family")
    a = ap.parse_args(argv)
    results = evaluate()
    table = report(results)
    with pd.option_context("display.width", 250, "display.max_colwidth", 90):
        print(table.drop(columns=["calibrates"]).to_string(index=False,
                                                          formatters={"median": "{:.1%}".format,
                                                                      "p90": "{:.1%}".format}))
    if DEVICE_JSON.exists():
        dev = device_points()
        print("\nH100 kernel checks (check, not calibration):")
        with pd.option_context("display.width", 250, "display.max_colwidth", 90):
            print(device_table(dev).to_string(index=False, formatters={"median": "{:.1%}".format,
                                                                       "p90": "{:.1%}".format}))
        results_all = {**results, **dev}
    else:
        results_all = results
    if a.points:
        for p in results_all[a.points]:
            print(f"{p.label:55s} {p.measured:10.4g} {p.predicted:10.4g} {100 * p.error:+6.1f}%")
    if not a.no_doc:
        write_section(DOC, "kernels", _markdown(table, results, CONSTANTS))
        print(f"wrote {DOC}")
    return 0 if all(r for r in table.ok if r is not None) else 1


if __name__ == "__main__":
    raise SystemExit(main())
