"""Catalogue additions (OPT) and the cost model's variants: weight-only int4 per-row dequantisation,
decode-attention occupancy and Flash-Decoding, sliding-window / local-global and linear attention,
2:4 structured sparsity, int4 KV and KV eviction."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from sim.cost import BatchShape, CostModel
from sim.errors import ConfigError
from sim.hardware import get_gpu
from sim.models import from_hf_config, get_model, model_with_overrides

H100 = get_gpu("h100-sxm-80gb")
A100 = get_gpu("a100-sxm-80gb")

# --- OPT family ------------------------------------------------------------------------------------

# (key, hidden, layers, heads, ffn_dim, published billions: OPT paper Table 1)
OPT = [("opt-6.7b", 4096, 32, 32, 16384, 6.7), ("opt-13b", 5120, 40, 40, 20480, 13.0),
       ("opt-30b", 7168, 48, 56, 28672, 30.0), ("opt-66b", 9216, 64, 72, 36864, 66.0),
       ("opt-175b", 12288, 96, 96, 49152, 175.0)]


@pytest.mark.parametrize("key,h,layers,heads,ffn,billions", OPT, ids=[r[0] for r in OPT])
def test_opt_shapes_and_param_counts(key, h, layers, heads, ffn, billions):
    m = get_model(f"facebook/{key}")
    assert m.name == key and (m.hidden_size, m.num_layers, m.num_heads, m.intermediate_size) == (h, layers, heads, ffn)
    assert m.attention_type == "mha" and m.ffn_type == "relu" and m.ffn_matrices == 2
    assert (m.vocab_size, m.max_position_embeddings, m.default_weight_dtype) == (50272, 2048, "fp16")
    # closed form: 4h^2 attention + 2*h*ffn FFN, biases on all of them and on both LayerNorms (13h for
    # ffn = 4h), tied embedding + 2050 learned positions, final LayerNorm (weight and bias)
    per_layer = 4 * h * h + 2 * h * ffn + 4 * h + ffn + h + 4 * h
    assert m.total_params == layers * per_layer + (50272 + 2050) * h + 2 * h
    assert m.total_params == pytest.approx(billions * 1e9, rel=0.03)
    assert m.kv_bytes_per_token(2) == 2 * h * layers * 2


def test_opt_6_7b_matches_the_hub_parameter_count():
    # facebook/opt-6.7b's checkpoint holds 6,658,473,984 parameters (tied head counted once)
    assert get_model("opt-6.7b").total_params == 6_658_473_984


def test_opt_config_json_import_matches_catalogue():
    cfg = {"architectures": ["OPTForCausalLM"], "model_type": "opt", "hidden_size": 5120, "ffn_dim": 20480,
           "num_hidden_layers": 40, "num_attention_heads": 40, "vocab_size": 50272,
           "max_position_embeddings": 2048, "activation_function": "relu", "torch_dtype": "float16",
           "enable_bias": True, "do_layer_norm_before": True, "_name_or_path": "facebook/opt-13b"}
    m, entry = from_hf_config(cfg, name="opt-13b"), get_model("opt-13b")
    for f in ("ffn_type", "intermediate_size", "learned_positions", "linear_bias", "tie_word_embeddings",
              "attention_type", "default_weight_dtype"):
        assert getattr(m, f) == getattr(entry, f), f
    assert m.total_params == entry.total_params


def test_relu_ffn_is_priced_like_gelu():
    m = get_model("opt-13b")
    relu = CostModel(m, A100, engine="vllm")
    gelu = CostModel(model_with_overrides(m, ffn_type="gelu"), A100, engine="vllm")
    swiglu = CostModel(model_with_overrides(m, ffn_type="swiglu"), A100, engine="vllm")
    for b in (BatchShape.decode(8, 1024), BatchShape.prefill(1, 2048)):
        assert relu.step_time(b) == gelu.step_time(b)
        assert relu.step_time(b) < 0.85 * swiglu.step_time(b)     # two FFN matrices, not three


# --- weight-only int4: tinygemm's per-row cost ---------------------------------------------------------

def test_tinygemm_int4_cost_grows_per_row_and_marlin_does_not():
    """tinygemm re-loads each activation row per 8-column tile: 1/64 L1 wavefront per weight and row at one
    wavefront per SM-clock. Closed form at many rows (row term >> weight streaming): rows x W / 64 / (SMs x clock)."""
    m = get_model("llama-2-70b")
    tiny = CostModel(m, A100, weight_dtype="int4", engine="kernels", int4_kernel="tinygemm")
    marlin = CostModel(m, A100, weight_dtype="int4", engine="kernels", int4_kernel="marlin")
    k, n = 8192, 10240
    per_row = k * n / 64 / (108 * 1410e6)
    t256 = tiny.linear_time(256, k, n)
    assert t256 == pytest.approx(256 * per_row + tiny.k.kernel_floor_s, rel=0.01)
    assert tiny.linear_time(5, k, n) > 1.3 * tiny.linear_time(1, k, n)
    assert marlin.linear_time(5, k, n) < 1.02 * marlin.linear_time(1, k, n)
    # the engine decides the default kernel: gpt-fast runs tinygemm, vLLM Marlin
    assert CostModel(m, A100, weight_dtype="int4", engine="gpt-fast").int4_kernel == "tinygemm"
    assert CostModel(m, A100, weight_dtype="int4", engine="vllm").int4_kernel == "marlin"
    with pytest.raises(ConfigError, match="int4_kernel"):
        CostModel(m, A100, weight_dtype="int4", int4_kernel="exllama")


def test_gpt_fast_int4_batch1_rows_still_fit_and_verification_costs_more():
    from experiments.validation.kernels import gptfast_points

    int4 = [p for p in gptfast_points() if " int4 " in f" {p.label} "]
    assert len(int4) == 3 and all(abs(p.error) < 0.15 for p in int4), [(p.label, p.error) for p in int4]
    assert all(abs(p.error) < 0.05 for p in int4 if p.label.endswith("tp1"))
    target = CostModel(get_model("llama-2-70b"), A100, weight_dtype="int4", engine="gpt-fast")
    one = target.step_time(BatchShape.decode(1, 105))
    five = target.step_time(BatchShape(tokens=5, sampled=5, prefill_attn=5 * (105 + 3), prefill_kv=110,
                                       prefill_tokens=5, prefill_seqs=1))
    # third-party gpt-fast log: verifying 5 int4 positions costs ~1.34 target steps (speculative.py)
    assert 1.2 < five / one < 1.7


# --- decode attention: occupancy and Flash-Decoding ----------------------------------------------------

def _attn(cost, batch, context):
    return next(o for o in cost.breakdown(BatchShape.decode(batch, context)) if o.name == "attention_decode")


def test_flash_decoding_off_makes_long_context_batch1_decode_attention_several_times_slower():
    m = get_model("llama-3.1-8b")
    on = CostModel(m, H100, engine="kernels")
    off = CostModel(m, H100, engine="kernels", flash_decoding=False)
    t_on, t_off = _attn(on, 1, 131072).time_s, _attn(off, 1, 131072).time_s
    # one CTA per (sequence, KV head): 8 of 132 SMs stream the KV; split, ~128 units fill one wave
    assert t_off > 5 * t_on
    assert t_off / t_on == pytest.approx((128 / 132) / (8 / 132), rel=0.15)
    # at a large batch the units fill the SMs anyway: no split, no difference
    assert _attn(on, 64, 4096).time_s == _attn(off, 64, 4096).time_s


def test_wave_occupancy_slows_batch8_paged_decode_on_a100():
    """Llama-2-7B (32 KV heads) at batch 8: 256 units on 108 SMs fill 2.37 waves -> 256 / 324 = 0.79 of the
    bandwidth; batch 32: 1024 / 1080 = 0.95 (Vidur: 1.23 vs 1.74 TB/s)."""
    cost = CostModel(get_model("llama-2-7b"), A100, engine="kernels")
    bw = {b: b * 1729 * cost.kv_bytes_per_token_per_gpu / _attn(cost, b, 1728).time_s for b in (8, 32)}
    assert bw[8] < 0.9 * bw[32]


def _with_fixed_costs(gpu, wave_s, seq_s):
    from sim.cost import kernel_constants

    k = dataclasses.replace(kernel_constants(gpu), attn_decode_wave_s=wave_s, attn_decode_seq_s=seq_s)
    return CostModel(get_model("llama-2-7b"), gpu, engine="kernels", constants=k)


@pytest.mark.parametrize("batch, context, waves", [
    (3, 512, 1),        # 3 x 32 KV heads = 96 blocks on 108 SMs: one wave, no split (96 x 2 > 108)
    (4, 512, 2),        # 128 blocks: a second wave
    (1, 4096, 1),       # 32 blocks split 3 ways (floor(108 / 32)) = 96: still one wave
    (32, 1024, 10),     # 1,024 blocks: ceil(1024 / 108) = 10 waves
])
def test_decode_block_prologue_is_paid_once_per_wave(batch, context, waves):
    """attn_decode_wave_s is paid per wave of (sequence, KV head, split) blocks, attn_decode_seq_s per sequence:
    raising either by 1 ms adds exactly layers x waves (or layers x sequences) ms on an A100 (108 SMs)."""
    base = _attn(_with_fixed_costs(A100, 0.0, 0.0), batch, context).time_s
    per_wave = _attn(_with_fixed_costs(A100, 1e-3, 0.0), batch, context).time_s - base
    per_seq = _attn(_with_fixed_costs(A100, 0.0, 1e-3), batch, context).time_s - base
    layers = get_model("llama-2-7b").num_layers
    assert per_wave == pytest.approx(layers * waves * 1e-3, rel=1e-9)
    assert per_seq == pytest.approx(layers * batch * 1e-3, rel=1e-9)


def test_gpu_without_sm_count_pays_the_block_prologues_as_the_fitting_a100_would():
    """No SM count (a TPU): 5 sequences x 32 KV heads = 160 blocks make 160 / 108 waves on average."""
    tpu = get_gpu("tpu-v5e")
    base = _attn(_with_fixed_costs(tpu, 0.0, 0.0), 5, 512).time_s
    per_wave = _attn(_with_fixed_costs(tpu, 1e-3, 0.0), 5, 512).time_s - base
    assert per_wave == pytest.approx(32 * (5 * 32 / 108) * 1e-3, rel=1e-9)


def test_gpu_without_sm_count_has_no_occupancy_term():
    m = get_model("llama-3.1-8b")
    tpu = get_gpu("tpu-v5e")
    assert tpu.sms is None
    assert _attn(CostModel(m, tpu, engine="kernels"), 1, 65536).time_s == \
        _attn(CostModel(m, tpu, engine="kernels", flash_decoding=False), 1, 65536).time_s


# --- sliding windows, local/global layers, linear attention ---------------------------------------------

def test_gemma2_local_global_decode_at_32k_costs_the_window_ratio():
    """21 local layers read 4096 tokens, 21 global ones 32768: (4096 + 32768) / (2 x 32768) = 0.5625 of the
    windowless model (ideal profile: no floors, so the ratio is exact)."""
    g = get_model("gemma-2-9b")
    assert (g.num_sliding_layers, g.global_attention_every) == (21, 2)
    no_window = model_with_overrides(g, sliding_window=None)
    w, full = (_attn(CostModel(x, H100, engine="ideal"), 8, 32768).time_s for x in (g, no_window))
    assert w / full == pytest.approx((4096 + 32768) / (2 * 32768), rel=1e-3)
    # with the calibrated constants the floors add the same to both: still ~0.56-0.6
    w, full = (_attn(CostModel(x, H100, engine="vllm"), 8, 32768).time_s for x in (g, no_window))
    assert 0.55 < w / full < 0.62


def test_mistral_window_on_every_layer_and_prefill_pairs_capped():
    m = get_model("mistral-7b")
    assert m.sliding_window == 4096 and m.num_sliding_layers == m.num_layers
    no_window = model_with_overrides(m, sliding_window=None)
    cw, cf = CostModel(m, A100, engine="ideal"), CostModel(no_window, A100, engine="ideal")
    assert _attn(cw, 4, 16384).time_s / _attn(cf, 4, 16384).time_s == pytest.approx(4096 / 16385, rel=1e-3)
    # below the window nothing changes
    assert _attn(cw, 4, 2000).time_s == _attn(cf, 4, 2000).time_s
    b = BatchShape.prefill(1, 16384)
    pw = next(o for o in cw.breakdown(b) if o.name == "attention_prefill")
    pf = next(o for o in cf.breakdown(b) if o.name == "attention_prefill")
    assert pw.flops == pytest.approx(pf.flops * 16384 * 4096 / b.prefill_attn, rel=1e-9)


def test_linear_attention_layers_keep_a_fixed_state_and_cost_no_context():
    base = get_model("llama-3.1-8b")
    hybrid = model_with_overrides(base, linear_attention_layers=24)        # 3 of 4 layers linear
    linear = model_with_overrides(base, linear_attention_layers=32)
    assert hybrid.kv_bytes_per_token(2) == base.kv_bytes_per_token(2) / 4
    assert linear.kv_bytes_per_token(2) == 0
    assert linear.linear_state_bytes_per_seq() == 32 * 32 * 128 * 128 * 4
    cost = CostModel(linear, H100, engine="kernels", tp=2)
    assert cost.linear_state_bytes_per_seq == 32 * 32 * 128 * 128 * 4 / 2
    assert cost.step_time(BatchShape.decode(16, 1000)) == cost.step_time(BatchShape.decode(16, 100000))
    full, hyb = CostModel(base, H100, engine="kernels"), CostModel(hybrid, H100, engine="kernels")
    assert _attn(hyb, 16, 32768).time_s < 0.3 * _attn(full, 16, 32768).time_s


# --- 2:4 structured sparsity ---------------------------------------------------------------------------

def test_2_4_sparsity_halves_compute_bound_prefill_gemms_on_h100_and_is_refused_on_t4():
    m = get_model("llama-3.1-8b")
    dense, sparse = CostModel(m, H100, engine="kernels"), CostModel(m, H100, engine="kernels", sparsity="2:4")
    b = BatchShape.prefill(1, 8192)
    d = {o.name: o for o in dense.breakdown(b)}
    s = {o.name: o for o in sparse.breakdown(b)}
    assert d["mlp_up_gate"].bound == "compute"
    assert s["mlp_up_gate"].time_s / d["mlp_up_gate"].time_s == pytest.approx(0.5, rel=0.03)
    assert s["lm_head"].time_s == d["lm_head"].time_s                  # the head stays dense
    # weights: half the values plus 1 bit of metadata per element at 16 bit -> 0.5625 of the blocks
    blocks = m.total_params - m.embedding_params - m.lm_head_params - m.norm_params
    saved = dense.weight_bytes_per_gpu - sparse.weight_bytes_per_gpu
    assert saved == pytest.approx(blocks * 2 * (1 - 0.5625), rel=1e-9)
    # batch-1 decode streams 0.5625 of the block weights
    t1 = sparse.step_time(BatchShape.decode(1, 128)) / dense.step_time(BatchShape.decode(1, 128))
    assert 0.55 < t1 < 0.7
    with pytest.raises(ConfigError, match="sparse tensor cores.*t4"):
        CostModel(m, get_gpu("t4"), sparsity="2:4")
    with pytest.raises(ConfigError, match="model.sparsity"):
        CostModel(m, H100, sparsity="4:8")


# --- int4 KV cache ---------------------------------------------------------------------------------------

def test_int4_kv_bytes_and_dequantisation():
    m = get_model("llama-3.1-8b")
    bf, i4 = CostModel(m, H100, engine="kernels"), CostModel(m, H100, engine="kernels", kv_dtype="int4")
    assert i4.kv_bytes_per_token_per_gpu == bf.kv_bytes_per_token_per_gpu * (0.5 + 4 / 128) / 2
    ratio = _attn(i4, 64, 32768).time_s / _attn(bf, 64, 32768).time_s
    assert ratio == pytest.approx((0.5 + 4 / 128) / 2, rel=0.05)          # memory-bound: the bytes ratio
    # the dequantisation is priced at the FP32 rate: 10x the instructions and it binds
    import dataclasses
    slow = CostModel(m, H100, engine="kernels", kv_dtype="int4",
                     constants=dataclasses.replace(i4.k, int4_dequant_flops=40.0))
    elems = 64 * 32769 * 2 * 8 * 128 * 32
    assert _attn(slow, 64, 32768).time_s == pytest.approx(elems * 40 / 67e12, rel=0.05)


# --- KV eviction ----------------------------------------------------------------------------------------

def test_kv_eviction_reads_only_retained_kv():
    m = get_model("llama-3.1-8b")
    full = CostModel(m, H100, engine="ideal")
    stream = CostModel(m, H100, engine="ideal", kv_eviction=("streaming_llm", 1.0, 1024))
    h2o = CostModel(m, H100, engine="ideal", kv_eviction=("h2o", 0.2, 4096))
    h2o_all = CostModel(m, H100, engine="ideal", kv_eviction=("h2o", 1.0, 4096))
    t = {n: _attn(c, 8, 32767).time_s for n, c in (("full", full), ("stream", stream), ("h2o", h2o),
                                                     ("h2o_all", h2o_all))}
    assert t["stream"] / t["full"] == pytest.approx(1024 / 32768, rel=0.01)
    # H2O's score bookkeeping: 12 B per query head per retained token against 4 KiB of KV per token and layer
    book = 1 + 12 * 32 / (2 * 8 * 128 * 2)
    assert t["h2o_all"] / t["full"] == pytest.approx(book, rel=0.01)
    assert t["h2o"] / t["full"] == pytest.approx(0.2 * book, rel=0.01)
    for bad in (("lru", 0.5, 10), ("h2o", 0.0, 10), ("h2o", 0.5, 0), ("h2o", 0.5)):
        with pytest.raises(ConfigError, match="kv_eviction"):
            CostModel(m, H100, kv_eviction=bad)


# --- fast-forward exactness and breakdown consistency for every variant --------------------------------

VARIANTS = [
    ("gemma-2-9b", {}), ("mistral-7b", {}), ("llama-3.1-8b", {"flash_decoding": False}),
    ("llama-3.1-8b", {"kv_dtype": "int4"}), ("llama-3.1-8b", {"kv_eviction": ("h2o", 0.3, 64)}),
    ("llama-3.1-8b", {"kv_eviction": ("streaming_llm", 1.0, 300)}), ("llama-3.1-8b", {"sparsity": "2:4"}),
    ("llama-2-70b", {"weight_dtype": "int4", "engine": "gpt-fast"}), ("deepseek-v3", {"tp": 8}),
]


@pytest.mark.parametrize("name,kw", VARIANTS, ids=[f"{n}-{'-'.join(map(str, k))}" for n, k in VARIANTS])
def test_decode_run_times_equal_step_times_exactly(name, kw):
    m = get_model(name)
    if name == "llama-3.1-8b" and not kw.get("sparsity"):
        m = model_with_overrides(m, linear_attention_layers=8) if kw.get("kv_dtype") else m
    gpu = get_gpu("h200-sxm-141gb") if name == "deepseek-v3" else H100
    cost = CostModel(m, gpu, **{"engine": "vllm", **kw})
    for seqs, ctx0, steps in ((1, 4000, 300), (3, 3 * 4090, 20), (40, 40 * 500, 50), (7, 7 * 200, 400)):
        run = cost.decode_run_times(seqs, ctx0, steps)
        one = [cost.step_time(BatchShape(tokens=seqs, sampled=seqs, decode_seqs=seqs, decode_ctx=ctx0 + seqs * i))
               for i in range(steps)]
        assert run.tolist() == one
        assert np.array_equal(cost.decode_attention_time(seqs, np.array([ctx0, ctx0 + seqs])),
                              [cost.decode_attention_time(seqs, ctx0), cost.decode_attention_time(seqs, ctx0 + seqs)])
    kernels = CostModel(m, gpu, **{**kw, "engine": "kernels"})
    for b in (BatchShape.decode(16, 9000), BatchShape.prefill(2, 3000, 6000)):
        assert sum(o.time_s for o in kernels.breakdown(b)) == pytest.approx(kernels.step_time(b), rel=1e-12)


# --- GPU catalogue: SM counts, clocks, sparse tensor cores ----------------------------------------------

def test_sm_counts_and_clocks_agree_with_the_fp32_peak():
    """Datasheet FP32 peak = SMs x FP32 lanes per SM (64 on GA100/Volta/Turing, 128 since GA10x) x 2 x clock."""
    from sim.hardware import list_gpus

    checked = 0
    for g in list_gpus():
        fp32 = g.peak_tflops.get("fp32")
        if g.sms and g.boost_clock_mhz and fp32:
            lanes = fp32 * 1e12 / (g.sms * 2 * g.boost_clock_mhz * 1e6)
            assert min(abs(lanes - 64), abs(lanes - 128)) < 0.03 * lanes, g.name
            checked += 1
    assert checked >= 15
    for name, sms in (("a100-sxm-80gb", 108), ("h100-sxm-80gb", 132), ("h200-sxm-141gb", 132), ("l40s", 142),
                      ("t4", 40), ("b200", 148)):
        assert get_gpu(name).sms == sms
    assert get_gpu("b200").sm_clocks_per_s == pytest.approx(75e12 / 256)      # derived from the FP32 peak
    assert {g for g in ("a100", "h100", "h200", "b200", "l40s", "l4", "a10g", "rtx-4090")
            if get_gpu(g).structured_sparsity} == {"a100", "h100", "h200", "b200", "l40s", "l4", "a10g", "rtx-4090"}
    assert not get_gpu("t4").structured_sparsity and not get_gpu("v100-sxm-32gb").structured_sparsity


@pytest.mark.parametrize("model, gpu, tp", [("llama-3.1-8b", "h100", 1), ("mixtral-8x7b", "a100-sxm-80gb", 2),
                                            ("llama-2-7b", "a100-sxm-80gb", 1), ("qwen3-30b-a3b", "l40s", 2)])
def test_plain_decode_closure_prices_exactly_like_the_general_path(model, gpu, tp):
    """The usual case's closure (`_plain_decode_pricer`) does the general path's float operations in the same
    order: both, and the vectorised form fast-forward uses, agree to the bit; a pickled copy rebuilds it."""
    import pickle

    cost = CostModel(get_model(model), get_gpu(gpu), tp=tp, engine="vllm")
    assert cost.__dict__.get("_decode_scalar") is not None             # the closure is in use
    copy_ = pickle.loads(pickle.dumps(cost))
    for seqs in (1, 3, 7, 40, 128, 300):
        for per_seq in (10, 700, 5000, 40000):
            ctx = seqs * per_seq
            general = type(cost)._decode_scalar(cost, seqs, ctx)
            vector = float(cost._decode_attention(seqs, np.array([ctx], dtype=float), np)[0])
            assert cost._decode_scalar(seqs, ctx) == general == vector == copy_._decode_scalar(seqs, ctx)


def test_variants_keep_the_general_decode_path():
    m = get_model("gemma-2-9b")                                          # local/global layers
    assert "_decode_scalar" not in CostModel(m, H100, engine="vllm").__dict__
    assert "_decode_scalar" not in CostModel(get_model("llama-3.1-8b"), H100, engine="vllm",
                                             flash_decoding=False).__dict__
