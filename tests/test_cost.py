"""The roofline cost model (sim/cost.py), the memory plan (sim/memory.py) and `sim.estimate`.

Closed-form checks use the "ideal" engine profile (pure roofline: full peak FLOP/s and bandwidth, no
kernel floor, no host overhead), so they hold whatever the calibrated constants are. Calibrated
profiles ("vllm", ...) are only checked for properties (monotonicity, ratios, consistency).
"""
from __future__ import annotations

import dataclasses
import math
import time

import pytest

from sim.cost import BatchShape, CostModel, list_engine_profiles
from sim.errors import ConfigError, DeploymentError
from sim.estimate import estimate
from sim.hardware import DTYPE_BYTES, get_gpu, list_gpus
from sim.memory import plan_memory
from sim.models import get_model, list_models

A100 = get_gpu("a100-sxm-80gb")
H100 = get_gpu("h100-sxm-80gb")
H200 = get_gpu("h200-sxm-141gb")
ENGINES = [p.name for p in list_engine_profiles()]


def _ops(cost: CostModel, shape: BatchShape) -> dict:
    return {op.name: op for op in cost.breakdown(shape)}


def _totals(cost: CostModel, shape: BatchShape) -> tuple[float, float]:
    ops = cost.breakdown(shape)
    return sum(o.flops for o in ops), sum(o.bytes for o in ops)


def _matmul_params(name: str) -> float:
    """Weights that take part in a matmul for every token: all but the embedding table (a gather)
    and the LM head (which runs on sampled rows only)."""
    m = get_model(name)
    return m.total_params - m.embedding_params - m.lm_head_params


# ----------------------------------------------------------------------------- closed-form roofline

def test_a100_bf16_ridge_point_is_about_153_flop_per_byte():
    """312 TFLOP/s dense bf16 over 2,039 GB/s HBM2e: 312e12 / 2039e9 = 153 FLOP/byte."""
    assert A100.ridge_point("bf16") == pytest.approx(312e12 / 2039e9, rel=0.02)
    assert 150 < A100.ridge_point("bf16") < 156


def test_llama2_7b_decode_at_2k_context_is_memory_bound_near_one_flop_per_byte():
    """Hand-worked roofline: one Llama-2-7B sequence decoding at 2,048 tokens of context on an A100.

    Every fp16 weight (2 bytes) is read once and used in one multiply-add (2 FLOPs), and every KV
    element (2 bytes) is read once for one multiply-add of QK^T or PV (2 FLOPs): about 1 FLOP/byte,
    ~150x below the A100's bf16 ridge point of ~153 FLOP/byte, so the step is memory-bound and its
    time is the bytes over the bandwidth.

    The background notes (roofline-and-llm-inference.md, "详细计算强度分析") reach 1.88 FLOP/byte,
    but they double-count: the FFN is 3 matrices of 4096 x 11008 ~ 8d^2 weights, i.e. 2 x 8d^2 =
    16d^2 = 268 MFLOPs per token (16 x 4096^2 = 268 M), not 536 M; and QKV is 3 x 2d^2 = 6d^2 = 101 M,
    not 201 M. With the factor-2 slip removed their own numbers give (101 + 17.6 + 34 + 268) x 32
    / 14e9 ~ 0.96 FLOP/byte: the ~1.0 asserted here.
    """
    m = get_model("llama-2-7b")
    cost = CostModel(m, A100, engine="ideal")
    context = 2048
    shape = BatchShape.decode(1, context)
    flops, nbytes = _totals(cost, shape)
    intensity = flops / nbytes
    assert 0.9 < intensity < 1.1
    assert intensity < A100.ridge_point("bf16") / 100

    # the bytes are the matmul weights plus the KV cache of the 2,049 tokens attended over
    kv = (context + 1) * m.kv_bytes_per_token(2.0)
    assert kv == pytest.approx(2 * 2049 * 4096 * 32 * 2)               # 1.07 GB: K and V, 32 layers, fp16
    assert nbytes == pytest.approx(2 * _matmul_params("llama-2-7b") + kv + 2 * m.lm_head_params, rel=0.01)
    # ...and the FLOPs 2 per weight plus 2 per KV element (QK^T and PV)
    assert flops == pytest.approx(2 * _matmul_params("llama-2-7b") + 2 * m.lm_head_params
                                  + 4 * 4096 * (context + 1) * 32, rel=0.01)

    ops = cost.breakdown(shape)
    assert all(op.bound == "memory" for op in ops)
    assert max(op.intensity for op in ops if op.bytes) < 1.1
    # memory-bound under the ideal profile: step time = bytes / peak bandwidth (~7 ms on an A100)
    assert cost.step_time(shape) == pytest.approx(nbytes / A100.memory_bw, rel=1e-9)
    assert 6e-3 < cost.step_time(shape) < 8e-3


@pytest.mark.parametrize("shape", [BatchShape.prefill(1, 2048), BatchShape.prefill(4, 512, 1024),
                                   BatchShape.decode(1, 2048), BatchShape.decode(64, 1000)],
                         ids=["prefill-2048", "prefill-chunk", "decode-1", "decode-64"])
def test_each_op_costs_max_of_compute_time_and_memory_time_under_ideal(shape):
    """t_op = max(flops / peak, bytes / bandwidth), nothing added, for every op of a bf16 model."""
    cost = CostModel(get_model("llama-3.1-8b"), H100, engine="ideal")
    peak, bw = H100.peak_flops("bf16"), H100.memory_bw
    for op in cost.breakdown(shape):
        assert op.time_s == pytest.approx(max(op.flops / peak, op.bytes / bw), rel=1e-12), op.name
        assert op.bound == ("compute" if op.flops / peak >= op.bytes / bw else "memory"), op.name


def test_big_prefill_gemm_is_compute_bound_and_priced_at_peak():
    cost = CostModel(get_model("llama-3.1-8b"), H100, engine="ideal")
    up = _ops(cost, BatchShape.prefill(1, 2048))["mlp_up_gate"]
    assert up.bound == "compute"
    assert up.intensity > H100.ridge_point("bf16")
    # 32 layers x 2 FLOPs x 2048 tokens x 4096 x (2 x 14336) for gate and up
    assert up.flops == pytest.approx(32 * 2 * 2048 * 4096 * 2 * 14336)
    assert up.time_s == pytest.approx(up.flops / H100.peak_flops("bf16"), rel=1e-12)


def test_prefill_flops_are_two_per_parameter_per_token_plus_attention():
    """Dense prefill: 2 FLOPs per matmul weight per token, plus causal attention (QK^T and PV:
    4 x heads x head_dim per (query, key) pair, T(T+1)/2 pairs), plus the LM head on the one sampled
    row. "Params" here exclude the embedding table (a gather, no FLOPs) and the LM head (run on the
    last token only), as in the usual 2N-FLOPs-per-token rule."""
    m = get_model("llama-3.1-8b")
    T = 2048
    cost = CostModel(m, H100, engine="ideal")
    ops = _ops(cost, BatchShape.prefill(1, T))
    flops = sum(o.flops for o in ops.values())
    attention = 4 * m.num_heads * m.head_dim * m.num_layers * T * (T + 1) / 2
    assert ops["attention_prefill"].flops == pytest.approx(attention, rel=1e-9)
    dense = 2 * _matmul_params("llama-3.1-8b") * T
    assert (flops - attention) == pytest.approx(dense, rel=0.02)
    assert flops == pytest.approx(dense + attention + 2 * m.hidden_size * m.vocab_size, rel=0.02)
    # and the cruder "2 x all params x tokens" rule is within ~10% for an 8B model at 2k tokens
    assert flops == pytest.approx(2 * m.total_params * T, rel=0.12)


# ----------------------------------------------------------------------------- properties

@pytest.mark.parametrize("engine", ["vllm", "ideal"])
@pytest.mark.parametrize("model,gpu,tp", [("llama-3.1-8b", H100, 1), ("llama-3.1-70b", H100, 4),
                                          ("mixtral-8x7b", H100, 2), ("deepseek-v3", H200, 8)])
def test_step_time_grows_with_batch_and_context(engine, model, gpu, tp):
    cost = CostModel(get_model(model), gpu, tp=tp, engine=engine)
    by_batch = [cost.step_time(BatchShape.decode(b, 1024)) for b in (1, 2, 8, 32, 128, 512)]
    assert by_batch == sorted(by_batch) and len(set(by_batch)) == len(by_batch)
    by_context = [cost.step_time(BatchShape.decode(16, c)) for c in (0, 128, 1024, 4096, 32768)]
    assert by_context == sorted(by_context) and len(set(by_context)) == len(by_context)
    by_prompt = [cost.step_time(BatchShape.prefill(1, q)) for q in (16, 256, 2048, 8192)]
    assert by_prompt == sorted(by_prompt) and len(set(by_prompt)) == len(by_prompt)
    by_cached = [cost.step_time(BatchShape.prefill(1, 512, c)) for c in (0, 2048, 16384)]
    assert by_cached == sorted(by_cached) and len(set(by_cached)) == len(by_cached)


def test_tp2_halves_weights_and_kv_per_gpu_and_speeds_up_70b_decode():
    m = get_model("llama-3.1-70b")                                       # 8 KV heads: TP 2 splits them
    one, two = CostModel(m, H100, tp=1), CostModel(m, H100, tp=2)
    assert two.weight_bytes_per_gpu == pytest.approx(one.weight_bytes_per_gpu / 2)
    assert two.kv_bytes_per_token_per_gpu == pytest.approx(one.kv_bytes_per_token_per_gpu / 2)
    for engine in ("vllm", "ideal"):
        t1 = CostModel(m, H100, tp=1, engine=engine).step_time(BatchShape.decode(1, 1024))
        t2 = CostModel(m, H100, tp=2, engine=engine).step_time(BatchShape.decode(1, 1024))
        t8 = CostModel(m, H100, tp=8, engine=engine).step_time(BatchShape.decode(1, 1024))
        assert t8 < t2 < t1
        assert t2 > t1 / 2 * 0.95                                         # all-reduces: no superlinear gain
    # the all-reduces appear in the breakdown only under TP
    assert "tp_allreduce" not in _ops(one, BatchShape.decode(1, 1024))
    assert _ops(two, BatchShape.decode(1, 1024))["tp_allreduce"].bound == "network"


def test_kv_heads_are_replicated_once_tp_exceeds_them():
    m = get_model("qwen3-30b-a3b")                                        # 32 query heads, 4 KV heads
    kv = {tp: CostModel(m, H100, tp=tp).kv_bytes_per_token_per_gpu for tp in (1, 2, 4, 8)}
    assert kv[2] == pytest.approx(kv[1] / 2) and kv[4] == pytest.approx(kv[1] / 4)
    assert kv[8] == kv[4]


def test_tp_that_does_not_divide_heads_is_refused():
    with pytest.raises(DeploymentError, match="does not divide"):
        CostModel(get_model("llama-2-7b"), H100, tp=3)
    with pytest.raises(ConfigError):
        CostModel(get_model("llama-2-7b"), H100, tp=0)


@pytest.mark.parametrize("gpu", [A100, H100], ids=["a100", "h100"])
@pytest.mark.parametrize("engine", ["vllm", "gpt-fast", "ideal"])
def test_weight_only_quantisation_cuts_batch1_decode_time(gpu, engine):
    m = get_model("llama-2-7b")
    t = {wd: CostModel(m, gpu, weight_dtype=wd, engine=engine).step_time(BatchShape.decode(1, 512))
         for wd in ("bf16", "int8", "int4")}
    assert t["int4"] < t["int8"] < t["bf16"]
    weights = {wd: CostModel(m, gpu, weight_dtype=wd).weight_bytes_per_gpu for wd in ("bf16", "int8", "int4")}
    # the decoder's matrices shrink; the embedding, LM head and norms stay 16-bit (vLLM, GPTQ/AWQ checkpoints)
    sixteen = (m.embedding_params + m.lm_head_params + m.norm_params) * 2
    assert weights["int8"] == pytest.approx((weights["bf16"] - sixteen) / 2 + sixteen)
    assert (weights["int4"] - sixteen) == pytest.approx((weights["bf16"] - sixteen) / 4 * 1.0625)   # + group scales


def test_quantized_checkpoints_keep_the_head_and_the_modules_they_ignore_in_16_bits():
    """The LM head is a 16-bit GEMM whatever the weight dtype, and a checkpoint that leaves its attention
    projections unquantized (Llama-4-Scout FP8-dynamic's ignore list) streams them at 16 bits."""
    m = get_model("llama-3.1-8b")
    ops = {wd: {o.name: o for o in CostModel(m, H100, weight_dtype=wd).breakdown(BatchShape.decode(1, 512))}
           for wd in ("bf16", "fp8", "int4")}
    assert ops["fp8"]["lm_head"].bytes == ops["int4"]["lm_head"].bytes == ops["bf16"]["lm_head"].bytes
    assert ops["fp8"]["lm_head"].time_s == pytest.approx(ops["bf16"]["lm_head"].time_s)
    assert ops["fp8"]["qkv_proj"].bytes < 0.6 * ops["bf16"]["qkv_proj"].bytes
    scout = get_model("RedHatAI/Llama-4-Scout-17B-16E-Instruct-FP8-dynamic")
    assert scout.unquantized_modules == ("attention",) and scout.default_weight_dtype == "fp8"
    plain = dataclasses.replace(scout, unquantized_modules=())
    mixed, all8 = CostModel(scout, H100, tp=2), CostModel(plain, H100, tp=2)
    attn = scout.num_layers * scout.attention_params_per_layer / 2          # per GPU
    assert mixed.weight_bytes_per_gpu - all8.weight_bytes_per_gpu == pytest.approx(attn * (2 - 1))
    shape = BatchShape.decode(32, 1024)
    o_mixed = {o.name: o for o in mixed.breakdown(shape)}
    o_all8 = {o.name: o for o in all8.breakdown(shape)}
    assert o_mixed["qkv_proj"].bytes == pytest.approx(2 * o_all8["qkv_proj"].bytes, rel=0.05)
    assert o_mixed["moe_experts"].bytes == pytest.approx(o_all8["moe_experts"].bytes)
    assert mixed.step_time(shape) > all8.step_time(shape)


def test_a_hf_quantization_config_ignoring_attention_marks_it_unquantized(tmp_path):
    import json

    from sim.models import load_hf_config

    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32,
           "num_attention_heads": 32, "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 128256,
           "quantization_config": {"quant_method": "compressed-tensors", "format": "float-quantized",
                                   "config_groups": {"g": {"weights": {"num_bits": 8, "type": "float"},
                                                           "targets": ["Linear"]}},
                                   "ignore": ["lm_head"]}}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    assert load_hf_config(path).unquantized_modules == ()
    cfg["quantization_config"]["ignore"] += ["model.layers.0.self_attn.q_proj"]       # one layer: still quantized
    path.write_text(json.dumps(cfg))
    assert load_hf_config(path).unquantized_modules == ()
    cfg["quantization_config"]["ignore"] += ([f"model.layers.{i}.self_attn.q_proj" for i in range(32)]
                                             + ["vision_tower.layers.0.q_proj"])
    path.write_text(json.dumps(cfg))
    spec = load_hf_config(path)
    assert spec.default_weight_dtype == "fp8" and spec.unquantized_modules == ("attention",)


def test_fp8_kv_halves_kv_bytes_and_raises_kv_capacity():
    m = get_model("llama-3.1-8b")
    bf16, fp8 = CostModel(m, H100, kv_dtype="bf16"), CostModel(m, H100, kv_dtype="fp8")
    assert fp8.kv_bytes_per_token_per_gpu == pytest.approx(bf16.kv_bytes_per_token_per_gpu / 2)
    cap_bf16, cap_fp8 = plan_memory(bf16).max_kv_tokens, plan_memory(fp8).max_kv_tokens
    assert cap_fp8 > 1.9 * cap_bf16
    # less KV to read: long-context decode gets cheaper
    shape = BatchShape.decode(64, 8192)
    assert fp8.step_time(shape) < bf16.step_time(shape)


def test_moe_batch1_reads_top_k_experts_and_large_batch_reads_all():
    """Mixtral-8x7B routes each token to 2 of 8 experts: one token streams ~2 experts' weights per
    layer, a batch of hundreds touches every expert."""
    m = get_model("mixtral-8x7b")
    tp = 2
    cost = CostModel(m, H100, tp=tp, engine="ideal")
    one_expert = m.expert_params * DTYPE_BYTES["bf16"] / tp * m.num_moe_layers   # per GPU, all layers
    read = {b: _ops(cost, BatchShape.decode(b, 512))["moe_experts"].bytes / one_expert
            for b in (1, 2, 4, 16, 64, 128)}
    assert 1.98 < read[1] < 2.05
    assert list(read.values()) == sorted(read.values())
    assert 7.95 < read[128] < 8.3                   # all 8 (plus ~2% of activations)
    # decode of one token: expert FLOPs are those of the top-2 only
    flops1 = _ops(cost, BatchShape.decode(1, 512))["moe_experts"].flops
    assert flops1 == pytest.approx(2 * 2 * m.expert_params / tp * m.num_moe_layers, rel=1e-9)
    # so batch-1 decode costs about the active parameters, not the total
    assert m.active_params < 0.35 * m.total_params
    assert cost.step_time(BatchShape.decode(1, 512)) < 0.5 * cost.step_time(BatchShape.decode(512, 512))


def test_naive_attention_moves_more_bytes_than_flash_for_long_prefill():
    m = get_model("llama-3.1-8b")
    shape = BatchShape.prefill(1, 8192)
    flash = _ops(CostModel(m, H100, flash_attention=True), shape)["attention_prefill"]
    naive = _ops(CostModel(m, H100, flash_attention=False), shape)["attention_prefill"]
    assert naive.flops == pytest.approx(flash.flops)
    assert naive.bytes > 10 * flash.bytes                                   # the T^2 score matrix
    assert naive.time_s > flash.time_s
    assert (CostModel(m, H100, flash_attention=False).step_time(shape)
            > CostModel(m, H100, flash_attention=True).step_time(shape))


def test_mla_caches_far_fewer_kv_bytes_per_token():
    """DeepSeek-V3 caches a 512-wide latent + a 64-wide RoPE key per layer instead of per-head K/V."""
    ds = get_model("deepseek-v3")
    mla = ds.kv_bytes_per_token(2.0)
    assert mla == (512 + 64) * 61 * 2
    mha_equivalent = 2 * ds.num_heads * (ds.qk_nope_head_dim + ds.qk_rope_head_dim) * ds.num_layers * 2
    assert mla < mha_equivalent / 50
    # smaller than an MHA model 50x smaller (Llama-2-13B) and a GQA model of similar size (405B)
    assert get_model("llama-2-13b").attention_type == "mha"
    assert mla < get_model("llama-2-13b").kv_bytes_per_token(2.0) / 10
    assert mla < get_model("llama-3.1-405b").kv_bytes_per_token(2.0) / 5
    # the latent is replicated across TP ranks, not sharded
    assert (CostModel(ds, H200, tp=8).kv_bytes_per_token_per_gpu
            == CostModel(ds, H200, tp=1).kv_bytes_per_token_per_gpu == mla)


@pytest.mark.parametrize("engine", ENGINES)
def test_mfu_and_mbu_never_exceed_one(engine):
    for model, tp in (("llama-3.1-8b", 1), ("mixtral-8x7b", 2), ("llama-3.1-70b", 4)):
        for kw in ({"prompt_len": 4096, "batch": 4}, {"context": 4096, "batch": 64}, {"context": 100}):
            est = estimate(model, "h100", tp=tp, engine=engine, **kw)
            assert 0 < est.mfu <= 1 and 0 < est.mbu <= 1, (model, kw)


# ----------------------------------------------------------------------------- shapes and consistency

def test_batchshape_accumulators_match_classmethods():
    def same(a: BatchShape, b: BatchShape) -> None:
        assert dataclasses.astuple(a) == pytest.approx(dataclasses.astuple(b), rel=1e-12)

    acc = BatchShape()
    for _ in range(3):
        acc.add_prefill(100, 50, samples=True)
    same(acc, BatchShape.prefill(3, 100, 50))
    acc = BatchShape()
    for _ in range(5):
        acc.add_decode(300)
    same(acc, BatchShape.decode(5, 300))
    # a chunk that does not finish its prompt samples nothing
    acc = BatchShape()
    acc.add_prefill(256, 0, samples=False)
    assert acc.sampled == 0 and acc.tokens == acc.prefill_tokens == 256 and acc.prefill_seqs == 1
    # prefill from empty: q(q+1)/2 causal (query, key) pairs
    assert BatchShape.prefill(1, 10).prefill_attn == 55


def _mixed() -> BatchShape:
    b = BatchShape()
    b.add_prefill(512, 1024, samples=False)
    b.add_prefill(300, 0, samples=True)
    for c in (10, 700, 3000, 12000):
        b.add_decode(c)
    return b


SHAPES = {"prefill": BatchShape.prefill(2, 1500), "decode": BatchShape.decode(48, 2000), "mixed": _mixed()}


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
@pytest.mark.parametrize("model,gpu,tp", [("llama-3.1-8b", H100, 1), ("llama-3.1-70b", H100, 4),
                                          ("mixtral-8x7b", A100, 2), ("deepseek-v3", H200, 8)])
def test_breakdown_sums_to_step_time(engine, shape, model, gpu, tp):
    cost = CostModel(get_model(model), gpu, tp=tp, engine=engine)
    ops = cost.breakdown(SHAPES[shape])
    assert sum(op.time_s for op in ops) == pytest.approx(cost.step_time(SHAPES[shape]), rel=1e-9)
    assert all(op.time_s >= 0 and op.flops >= 0 and op.bytes >= 0 for op in ops)
    names = [op.name for op in ops]
    assert ("attention_prefill" in names) == (shape != "decode")
    assert ("attention_decode" in names) == (shape != "prefill")


def test_empty_batch_costs_nothing():
    assert CostModel(get_model("llama-3.1-8b"), H100).step_time(BatchShape()) == 0.0


@pytest.mark.parametrize("gpu", ["h100-sxm-80gb", "a100-sxm-80gb", "tpu-v5e"])
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("model,tp", [("llama-3.1-8b", 1), ("llama-3.1-70b", 2), ("mixtral-8x7b", 2)])
def test_decode_run_times_equal_step_time_exactly(engine, model, tp, gpu):
    """The engine fast-forwards runs of pure-decode steps with `decode_run_times`; its timestamps must
    be bit-identical to pricing each step with `step_time`, so the comparison is ==, not approx. On the
    A100 and the TPU (no SM count) a per-wave block prologue is switched on, so its waves are checked too."""
    kw = {}
    if gpu != "h100-sxm-80gb":
        from sim.cost import kernel_constants

        kw["constants"] = dataclasses.replace(kernel_constants(gpu), attn_decode_wave_s=2.5e-6)
    cost = CostModel(get_model(model), get_gpu(gpu), tp=tp, engine=engine, **kw)
    lst = cost.decode_run_list(6, 5 + 130 + 999 + 2047 + 4096 + 17 + 6, 8)
    assert lst == cost.decode_run_times(6, 5 + 130 + 999 + 2047 + 4096 + 17 + 6, 8).tolist()
    contexts = [5, 130, 999, 2047, 4096, 17]
    start = BatchShape()
    for c in contexts:
        start.add_decode(c)
    steps = 64
    times = cost.decode_run_times(len(contexts), start.decode_ctx, steps)
    assert len(times) == steps
    for j in (0, 1, 2, 7, 31, 63):
        shape = BatchShape()
        for c in contexts:
            shape.add_decode(c + j)
        assert float(times[j]) == cost.step_time(shape), j
    assert all(times[1:] > times[:-1])


# ----------------------------------------------------------------------------- memory plan

def test_lower_gpu_memory_utilization_gives_fewer_blocks():
    cost = CostModel(get_model("llama-3.1-8b"), H100)
    blocks = [plan_memory(cost, u).num_blocks for u in (0.5, 0.7, 0.9, 0.95)]
    assert blocks == sorted(blocks) and len(set(blocks)) == 4
    plan = plan_memory(cost, 0.9)
    assert plan.max_kv_tokens == plan.num_blocks * plan.block_size
    assert plan.num_blocks * plan.block_size * plan.kv_bytes_per_token <= plan.kv_gb * 1e9


def test_405b_bf16_does_not_fit_one_h100():
    cost = CostModel(get_model("llama-3.1-405b"), H100, weight_dtype="bf16")
    with pytest.raises(DeploymentError) as err:
        plan_memory(cost)
    msg = str(err.value)
    assert "\n" not in msg
    assert "llama-3.1-405b" in msg and "GB" in msg
    assert "811" in msg or "812" in msg                     # 405.9e9 weights x 2 bytes, in GB


def test_llama2_7b_kv_blocks_match_vllm_on_h100():
    # vLLM v0.15.1 logged kv_blocks_gpu = 7463 for meta-llama/Llama-2-7b-hf (FP16) on 1x H100 with
    # gpu_mem_util 0.9, max_num_batched_tokens 2048, max_num_seqs 128, block_size 16
    # (/work/shared/reference/vllm_runs/experiments.csv, e.g. exp 20260217-155451-llama-2-7b-tp1-codegen).
    cost = CostModel(get_model("llama-2-7b"), H100)
    plan = plan_memory(cost, 0.9, max_num_batched_tokens=2048, max_num_seqs=128, block_size=16)
    assert plan.num_blocks == pytest.approx(7463, rel=0.05)


# ----------------------------------------------------------------------------- speed

def test_pricing_an_iteration_with_a_warm_cache_takes_microseconds():
    """Regression guard, not a benchmark: the engine prices tens of thousands of steps per run."""
    cost = CostModel(get_model("llama-3.1-8b"), H100)
    shapes = [BatchShape.decode(32, 1000 + i) for i in range(10)] + [_mixed()]
    for s in shapes:
        cost.step_time(s)
    n = 10_000
    t0 = time.perf_counter()
    for i in range(n):
        cost.step_time(shapes[i % len(shapes)])
    per_call = (time.perf_counter() - t0) / n
    assert per_call < 50e-6


# ----------------------------------------------------------------------------- estimate and catalogue

def test_every_catalogue_model_estimates_on_h100_at_some_tp_or_refuses_cleanly():
    fitted = {}
    for m in list_models():
        for tp in (1, 2, 4, 8):
            try:
                est = estimate(m, H100, tp=tp, context=1000, batch=8)
            except DeploymentError as exc:
                assert "\n" not in str(exc)
                continue
            assert math.isfinite(est.latency_s) and est.latency_s > 0
            assert est.breakdown and est.memory.max_kv_tokens > 0
            pre = estimate(m, H100, tp=tp, prompt_len=1024)
            assert pre.latency_s > 0 and pre.bound in ("compute", "memory", "latency", "network")
            fitted[m.name] = tp
            break
    # the small and mid-size models fit on one H100; the giants never fit on one 8-GPU node in bf16/fp8
    assert fitted["llama-2-7b"] == fitted["llama-3.1-8b"] == fitted["qwen3-30b-a3b"] == 1
    assert fitted["llama-3.1-70b"] == 2
    assert "llama-3.1-405b" not in fitted
    assert len(fitted) >= len(list_models()) - 3


def test_every_model_on_every_gpu_estimates_or_raises_deployment_error():
    for gpu in list_gpus():
        for m in list_models():
            for tp in (1, 8):
                for kw in ({"context": 512}, {"prompt_len": 512}):
                    try:
                        est = estimate(m, gpu, tp=tp, **kw)
                    except DeploymentError:
                        continue
                    assert math.isfinite(est.latency_s) and est.latency_s > 0, (gpu.name, m.name, tp)
                    assert 0 < est.mbu <= 1 and 0 <= est.mfu <= 1, (gpu.name, m.name, tp)


def test_estimate_flags_a_batch_whose_kv_does_not_fit_instead_of_refusing():
    est = estimate("llama-2-7b", "h100", batch=256, context=4096)
    assert not est.kv_fits and est.latency_s > 0
    assert estimate("llama-2-7b", "h100", batch=8, context=4096).kv_fits
    # even a batch whose profiling activations leave no room for KV at all is priced, not refused
    huge = estimate("llama-3.1-70b", "h100", tp=2, batch=20000, context=100)
    assert not huge.kv_fits and huge.memory.max_kv_tokens == 0 and huge.latency_s > 0


def test_estimate_kv_fit_counts_whole_blocks_per_sequence():
    """vLLM gives each sequence whole 16-token blocks: B sequences of 1 token need B blocks, not B/16."""
    few = estimate("llama-2-7b", "h100", batch=1000, context=0)          # ~7k blocks of 16 tokens on an H100
    assert few.batch <= few.memory.num_blocks and few.kv_fits
    many = estimate("llama-2-7b", "h100", batch=20_000, context=0)
    assert many.memory.num_blocks < many.batch < many.memory.max_kv_tokens    # enough tokens, not enough blocks
    assert not many.kv_fits


def test_estimate_prefill_on_top_of_cached_context():
    fresh = estimate("llama-3.1-8b", "h100", prompt_len=512)
    cached = estimate("llama-3.1-8b", "h100", prompt_len=512, context=8192)
    assert fresh.context == 0 and cached.context == 8192
    assert cached.latency_s > fresh.latency_s                   # attention over the cached tokens
    assert cached.tokens_per_s < fresh.tokens_per_s
    with pytest.raises(ConfigError):
        estimate("llama-3.1-8b", "h100", prompt_len=512, context=-1)


@pytest.mark.parametrize("kw", [{"batch": 0, "context": 10}, {"context": None}, {"prompt_len": 0},
                                {"phase": "train", "context": 10}, {"context": -1}])
def test_estimate_rejects_bad_input_with_config_error(kw):
    with pytest.raises(ConfigError):
        estimate("llama-2-7b", "h100", **kw)


def test_fp4_weights_stream_a_quarter_of_bf16_plus_scales_and_use_fp4_tensor_cores_where_they_exist():
    m = get_model("llama-3.1-70b")
    b200 = get_gpu("b200")
    bf16, fp4 = CostModel(m, b200, tp=2), CostModel(m, b200, tp=2, weight_dtype="fp4")
    sixteen = (m.embedding_params + m.lm_head_params + m.norm_params) * 2 / 2
    assert (fp4.weight_bytes_per_gpu - sixteen) == pytest.approx((bf16.weight_bytes_per_gpu - sixteen) * 0.5625 / 2)
    decode, prefill = BatchShape.decode(1, 1024), BatchShape.prefill(1, 8192)
    assert fp4.step_time(decode) < 0.5 * bf16.step_time(decode)          # weight streaming
    assert fp4.step_time(prefill) < 0.6 * bf16.step_time(prefill)        # fp4 tensor cores: 4x the bf16 peak
    on_h100 = CostModel(m, H100, tp=2, weight_dtype="fp4")               # no fp4 units: dequantised into bf16 GEMMs
    assert on_h100.step_time(prefill) > 0.9 * CostModel(m, H100, tp=2).step_time(prefill)


def test_estimate_refuses_a_context_beyond_the_models():
    assert estimate("llama-2-7b", "h100", context=4096).latency_s > 0
    with pytest.raises(ConfigError, match=r"4,097 tokens of context exceed llama-2-7b's 4,096"):
        estimate("llama-2-7b", "h100", context=4097)
    with pytest.raises(ConfigError, match="max_position_embeddings"):
        estimate("llama-2-7b", "h100", prompt_len=2048, context=2049)


def test_sparse_fp8_with_16_bit_attention_streams_what_it_stores():
    """2:4 sparsity on a checkpoint that keeps attention in bf16: memory and the step's bytes agree on the
    attention's size (16-bit values, 2:4-compressed at the 16-bit layout's factor)."""
    scout = get_model("RedHatAI/Llama-4-Scout-17B-16E-Instruct-FP8-dynamic")
    plain = dataclasses.replace(scout, unquantized_modules=())
    mixed, all8 = CostModel(scout, H100, tp=2, sparsity="2:4"), CostModel(plain, H100, tp=2, sparsity="2:4")
    attn = scout.num_layers * scout.attention_params_per_layer / 2
    stored = mixed.weight_bytes_per_gpu - all8.weight_bytes_per_gpu
    assert stored == pytest.approx(attn * (2 * 0.5625 - 1 * 0.625))
    shape = BatchShape.decode(1, 16)
    streamed = sum(o.bytes for o in mixed.breakdown(shape) if o.name in ("qkv_proj", "o_proj")) \
        - sum(o.bytes for o in all8.breakdown(shape) if o.name in ("qkv_proj", "o_proj"))
    assert streamed == pytest.approx(stored, rel=0.01)
