"""Multimodal requests: the encoder's price, its cache, where it runs, and images in workloads.

The engine harness is a real `sim.engine.Replica` (Llama-2-7B on an H100, vLLM profile) fed through the
encoder stage by a tiny SimPy router, so every timing below is the engine's own: inline encoding shows up
in TTFT and in the co-running request's inter-token gaps; an async encoder pool shows up only as queueing
before the request reaches the replica. The ViT price is checked against the arithmetic done by hand.
"""
from __future__ import annotations

import dataclasses
from collections import OrderedDict

import numpy as np
import pytest
import simpy
from pydantic import ValidationError

from policies.batching import VLLMScheduler
from policies.multimodal import (AsyncEncoder, EncoderCache, EncoderCost, InlineEncoder, MultimodalConfig,
                                 get_encoder, inline_memory_bytes_per_gpu, list_encoders, make_encoder_stage)
from sim.cost import CostModel
from sim.engine import EngineConfig, Replica, RequestLog, drive_arrivals
from sim.errors import CatalogError, ConfigError, TraceError
from sim.hardware import get_gpu
from sim.kvcache import KVCacheManager
from sim.models import get_model
from sim.registry import REGISTRY
from workloads.base import RequestSpec
from workloads.build import build_workload

TOK = 576


@pytest.fixture(scope="module")
def llm_cost():
    return CostModel(get_model("llama-2-7b"), get_gpu("h100-sxm-80gb"), engine="vllm")


def serve(specs, llm_cost, stage=None, mode="fast", replicas=1):
    """Run `specs` through `stage` (None: straight to the replica) and `replicas` replicas (round robin)."""
    env = simpy.Environment()
    log = RequestLog()
    engine = EngineConfig(max_num_seqs=64, max_num_batched_tokens=8192, enable_prefix_caching=False,
                          max_model_len=32768, async_scheduling=False)
    reps = [Replica(env, i, llm_cost, KVCacheManager(100_000, 16, False), engine, VLLMScheduler(), log, mode=mode)
            for i in range(replicas)]
    if isinstance(stage, InlineEncoder) and replicas > 1:
        stage.attach(reps)
    turn = [0]

    def route(req):
        def go():
            ok = True if stage is None else stage.enter(env, req)
            if not isinstance(ok, bool):
                ok = yield from ok
            if ok:
                reps[turn[0] % replicas].enqueue(req)
                turn[0] += 1
        env.process(go())

    env.process(drive_arrivals(env, iter(specs), route))
    env.run()
    cols = log.arrays()
    assert len(cols["request_id"]) == len(specs), "a request was lost"
    order = np.argsort(cols["request_id"])
    return {k: v[order] for k, v in cols.items()}, reps


def image_spec(rid, t, text=100, out=8, image=None, n=TOK):
    return RequestSpec(rid, t, text + n, out, images=((image if image is not None else ("u", rid), n),))


def stage_of(llm_cost, **kw):
    return make_encoder_stage(MultimodalConfig(**kw), llm_cost)


# ----------------------------------------------------------------------------- the ViT's price


def test_vit_price_matches_the_hand_arithmetic():
    # CLIP ViT-L/14-336 on an H100 under the pure roofline (engine "ideal": full peaks, plain max, no floors).
    # One image: 577 positions (24 x 24 patches + CLS), 23 layers run (LLaVA's feature layer -2), h = 1024,
    # MLP 4096, bf16; the projector maps 576 tokens 1024 -> 4096 -> 4096 (the LLM's hidden size).
    gpu = get_gpu("h100-sxm-80gb")
    peak, bw = 989.4e12, 3350e9
    n, h, inter, L, b = 577, 1024, 4096, 23, 2

    def gemm(rows, k, m):
        return max(2 * rows * k * m / peak, (k * m + rows * (k + m)) * b / bw)

    per_layer = (gemm(n, h, 3 * h) + gemm(n, h, h) + gemm(n, h, inter) + gemm(n, inter, h)
                 + max(4 * n * n * h / peak, 4 * n * h * b / bw)          # bidirectional attention
                 + n * (10 * h + 2 * inter) * b / bw)                      # 2 LayerNorms, 2 residuals, GELU
    expected = gemm(576, 14 * 14 * 3, h) + L * per_layer + gemm(576, h, 4096) + gemm(576, 4096, 4096)
    cost = EncoderCost(get_encoder("clip-vit-l-336"), gpu, engine="ideal", llm_hidden=4096)
    assert cost.call_time(1, 576) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(0.544e-3, rel=0.01)                   # ~0.38 TFLOP at 989 TFLOP/s, + memory ops
    # the calibrated constants (efficiency < 1, kernel floors, eager launches) make it slower, not faster
    assert EncoderCost(get_encoder("clip-vit-l-336"), gpu, llm_hidden=4096).call_time(1, 576) > 2 * expected


def test_vit_cost_scales_with_patches_and_layers():
    gpu = get_gpu("h100-sxm-80gb")
    spec = get_encoder("clip-vit-l-336")

    def cost(**change):
        return EncoderCost(dataclasses.replace(spec, **change), gpu, engine="ideal")

    # layers: the time is affine in the layers run, each layer costing the same
    t = {L: cost(layers_run=L).call_time(1, 576) for L in (11, 12, 23)}
    assert t[23] - t[11] == pytest.approx(12 * (t[12] - t[11]), rel=1e-9)
    # patches: GEMM FLOPs grow linearly with positions, attention FLOPs quadratically
    ops1 = {o.name: o for o in cost().breakdown(1, 576)}
    ops2 = {o.name: o for o in cost(positions_per_item=2 * 577).breakdown(1, 576)}
    assert ops2["qkv_proj"].flops == pytest.approx(2 * ops1["qkv_proj"].flops)
    assert ops2["mlp_up"].flops == pytest.approx(2 * ops1["mlp_up"].flops)
    assert ops2["attention"].flops == pytest.approx(4 * ops1["attention"].flops)
    # images: a batch of 8 is 8 times the compute-bound work, read the weights once
    c = cost()
    assert 7.9 < c.call_time(8, 8 * 576) / c.call_time(1, 576) <= 8.0
    # with the kernel floors of the vLLM profile, one call of 8 images beats 8 calls of one
    real = EncoderCost(spec, gpu)
    assert real.call_time(8, 8 * 576) < 0.8 * 8 * real.call_time(1, 576)


def test_tensor_parallel_encoder_is_faster_but_not_linearly():
    gpu, spec = get_gpu("h100-sxm-80gb"), get_encoder("clip-vit-l-336")
    t1 = EncoderCost(spec, gpu, tp=1).call_time(4, 4 * 576)
    t4 = EncoderCost(spec, gpu, tp=4).call_time(4, 4 * 576)
    assert t1 / 4 < t4 < t1                      # the shards' GEMMs shrink; floors and all-reduces do not


def test_catalogue_entries_have_their_published_sizes():
    sizes = {e.name: e.params for e in list_encoders()}
    assert sizes["clip-vit-l-336"] == pytest.approx(0.29e9, rel=0.03)      # 303 M over 24 layers; 23 run
    assert sizes["siglip-so400m-384"] == pytest.approx(0.41e9, rel=0.03)   # "so400m"
    assert sizes["whisper-large-v3-encoder"] == pytest.approx(0.635e9, rel=0.03)
    with pytest.raises(CatalogError, match="clip-vit-l-336"):
        get_encoder("clip-vit-l-335")


# ----------------------------------------------------------------------------- the encoder cache


def test_lru_cache_trace_in_images_and_in_tokens():
    c = EncoderCache(max_images=2)
    got = []
    for x in "abacba":
        hit = c.lookup(x)
        got.append(hit)
        if not hit:
            c.insert(x, 10)
    # a, b miss; a hits; c evicts b (least recent); b misses and evicts a; a misses
    assert got == [False, False, True, False, False, False]
    assert (c.hits, c.lookups, c.evictions) == (1, 6, 3)
    t = EncoderCache(max_images=100, max_tokens=1000)
    for k, n in (("x", 600), ("y", 300), ("z", 200)):
        t.insert(k, n)
    assert "x" not in t and "y" in t and "z" in t and t.tokens == 500
    t.insert("huge", 1001)                            # larger than the whole cache: never kept
    assert "huge" not in t and len(t) == 2
    assert len(EncoderCache(0)) == 0 and not EncoderCache(0).lookup("a")


def test_cache_lowers_encoder_work_by_the_hit_fraction(llm_cost):
    # 120 requests each with one image from a pool of 15 (uniform): every repeat is a hit
    w = build_workload({"type": "poisson", "stages": [{"rate": 20, "duration_s": 6}], "input_len": 50,
                        "output_len": 4, "images": {"distinct_images": 15}}, 3)
    specs = list(w)
    ids = [s.images[0][0] for s in specs]
    distinct = len(set(ids))
    cached, uncached = stage_of(llm_cost), stage_of(llm_cost, cache_images=0)
    serve(specs, llm_cost, cached)
    serve(specs, llm_cost, uncached)
    one = cached.cost.call_time(1, TOK)
    hit = cached.summary(1.0)["encoder_cache_hit_rate"]
    assert hit == pytest.approx(1 - distinct / len(specs))
    assert cached.stats.encoded_images == distinct
    assert cached.stats.busy_s == pytest.approx(len(specs) * one * (1 - hit))
    assert uncached.stats.busy_s == pytest.approx(len(specs) * one)


def test_each_replica_keeps_its_own_cache_when_attached(llm_cost):
    # the same image sent 4 times, alternating between 2 replicas: each replica encodes it once
    specs = [image_spec(i, 0.05 * i, image="cat") for i in range(4)]
    stage = stage_of(llm_cost)
    serve(specs, llm_cost, stage, replicas=2)
    assert stage.stats.encoded_images == 2 and len(stage.caches) == 2


# ----------------------------------------------------------------------------- inline vs async


@pytest.mark.parametrize("mode", ["fast", "iteration"])
def test_inline_encoding_adds_its_time_to_ttft_at_light_load(llm_cost, mode):
    specs = [image_spec(0, 0.0)]
    base, _ = serve(specs, llm_cost, None, mode)
    stage = stage_of(llm_cost)
    inline, _ = serve(specs, llm_cost, stage, mode)
    enc = stage.cost.call_time(1, TOK)
    assert 1e-3 < enc < 5e-3
    ttft = lambda r: r["first_token_s"] - r["arrival_s"]   # noqa: E731
    assert ttft(inline)[0] - ttft(base)[0] == pytest.approx(enc, rel=1e-9)
    assert stage.summary(1.0)["encoder_s"]["mean"] == pytest.approx(enc)


def decoding_plus_image():
    """A text request decoding for a while, and an image request arriving in the middle of it."""
    return [RequestSpec(0, 0.0, 200, 300), image_spec(1, 0.5)]


@pytest.mark.parametrize("mode", ["fast", "iteration"])
def test_inline_encoding_stalls_co_running_decodes_and_async_does_not(llm_cost, mode):
    specs = decoding_plus_image()
    base, (rb,) = serve(specs, llm_cost, None, mode)
    inline_stage = stage_of(llm_cost, mode="inline")
    _, (ri,) = serve(specs, llm_cost, inline_stage, mode)
    async_stage = stage_of(llm_cost, mode="async")
    asy, (ra,) = serve(specs, llm_cost, async_stage, mode)
    enc = inline_stage.cost.call_time(1, TOK)
    worst = {k: max(r.steps.itl) for k, r in (("base", rb), ("inline", ri), ("async", ra))}
    # inline: the step that admits the image request also encodes it; request 0 waits that long for a token
    assert worst["inline"] - worst["base"] == pytest.approx(enc, rel=0.02)
    # async: the encoder runs on its own GPU; request 0's worst gap is the text-only one
    assert worst["async"] == pytest.approx(worst["base"], rel=0.01)
    # ... and the image request's TTFT carries the encoding instead
    ttft_async = asy["first_token_s"][1] - asy["arrival_s"][1]
    ttft_base = base["first_token_s"][1] - base["arrival_s"][1]
    assert ttft_async - ttft_base == pytest.approx(enc, abs=0.3 * enc + 0.02)


def test_async_encoder_queues_under_load_as_a_fifo_server(llm_cost):
    # 8 requests with new images arrive together; one encoder GPU, one image per call: the k-th waits k calls
    specs = [image_spec(i, 0.0) for i in range(8)]
    one = stage_of(llm_cost, mode="async", batch_images=1)
    res, _ = serve(specs, llm_cost, one)
    t1 = one.cost.call_time(1, TOK)
    waits = np.frombuffer(one.stats.encoder_s)
    assert sorted(waits) == pytest.approx([t1 * k for k in range(1, 9)], rel=1e-9)
    assert one.summary(8 * t1)["encoder_utilisation"] == pytest.approx(1.0)
    # the replica never sees a request before its encoding is done
    assert np.all(res["first_scheduled_s"] >= one.encoder_column(res["request_id"]) - 1e-12)
    # two encoder GPUs halve the queue
    two = stage_of(llm_cost, mode="async", batch_images=1, encoder_gpus=2)
    serve(specs, llm_cost, two)
    assert sorted(np.frombuffer(two.stats.encoder_s)) == pytest.approx([t1 * ((k + 1) // 2) for k in range(1, 9)])
    # batching: one call of 8 images, everyone waits for it, less than 8 single calls
    batched = stage_of(llm_cost, mode="async", batch_images=8)
    serve(specs, llm_cost, batched)
    t8 = batched.cost.call_time(8, 8 * TOK)
    assert list(np.frombuffer(batched.stats.encoder_s)) == pytest.approx([t8] * 8)
    assert batched.stats.calls == 1 and t8 < 8 * t1


def test_async_encodes_a_shared_image_once_even_while_in_flight(llm_cost):
    specs = [image_spec(0, 0.0, image="dog"), image_spec(1, 0.0001, image="dog")]
    stage = stage_of(llm_cost, mode="async", cache_images=0)     # no cache: the in-flight wait dedups
    serve(specs, llm_cost, stage)
    assert stage.stats.encoded_images == 1
    w = np.frombuffer(stage.stats.encoder_s)
    assert w[1] == pytest.approx(w[0] - 0.0001)                 # it waited for the same call


class PrefillSpy:
    """The LLM cost model, counting the prompt tokens it is asked to price."""

    def __init__(self, inner) -> None:
        self.inner, self.prefill_tokens = inner, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def step_time(self, shape) -> float:
        self.prefill_tokens += shape.prefill_tokens
        return self.inner.step_time(shape)


def test_image_tokens_are_prefilled(llm_cost):
    # the prompt grows by the image tokens, and the engine prefills text + image tokens (no prefix caching)
    specs = [image_spec(i, 0.01 * i, text=100) for i in range(4)]
    spy = PrefillSpy(llm_cost)
    cols, _ = serve(specs, spy, stage_of(llm_cost))
    assert list(cols["input_tokens"]) == [100 + TOK] * 4
    assert spy.prefill_tokens == 4 * (100 + TOK)
    w = build_workload({"type": "poisson", "stages": [{"rate": 5, "duration_s": 4}], "input_len": 100,
                        "output_len": 10, "images": {"per_request": 2, "tokens_per_image": 144}}, 0)
    text = build_workload({"type": "poisson", "stages": [{"rate": 5, "duration_s": 4}], "input_len": 100,
                           "output_len": 10}, 0)
    assert np.array_equal(w.input_tokens, text.input_tokens + 2 * 144)


def test_summary_and_request_column(llm_cost):
    specs = [image_spec(0, 0.0), RequestSpec(1, 0.1, 50, 4), image_spec(2, 0.2, image=("u", 0))]
    stage = stage_of(llm_cost)
    serve(specs, llm_cost, stage)
    s = stage.summary(10.0)
    assert (s["mode"], s["encoder"], s["images"], s["encoded_images"]) == ("inline", "clip-vit-l-336", 2, 1)
    assert s["encoder_cache_hit_rate"] == 0.5 and s["requests_with_images"] == 2
    col = stage.encoder_column(np.array([2, 1, 0, 7]))
    assert col[0] == 0.0 and col[1] == 0.0 and col[2] == pytest.approx(stage.cost.call_time(1, TOK)) and col[3] == 0
    assert inline_memory_bytes_per_gpu(stage) == pytest.approx(
        stage.cost.weight_bytes_per_gpu() + 1000 * TOK * 4096 * 2)
    assert inline_memory_bytes_per_gpu(stage_of(llm_cost, mode="async")) == 0.0


def test_config_is_validated_at_the_boundary(llm_cost):
    assert {"inline", "async"} <= set(REGISTRY.names("encoder_mode"))
    with pytest.raises(ValidationError, match="unknown encoder"):
        MultimodalConfig(encoder="vit-huge")
    with pytest.raises(ValidationError, match="encoder mode"):
        MultimodalConfig(mode="sideways")
    with pytest.raises(ValidationError):
        MultimodalConfig(cache_size=3)
    s = make_encoder_stage({"encoder": "siglip-so400m-384", "mode": "async", "encoder_gpu": "a100-sxm-80gb"},
                           llm_cost)
    assert isinstance(s, AsyncEncoder) and s.cost.gpu.name.startswith("a100") and s.tokens_per_image == 729
    assert make_encoder_stage({"tokens_per_image": 256}, llm_cost).tiles(577) == 3


# ----------------------------------------------------------------------------- workloads


def test_synthetic_images_fraction_pool_and_unchanged_text(llm_cost):
    base = {"type": "synthetic", "arrival": {"process": "poisson", "rate": 50, "num_requests": 2000},
            "input_len": {"dist": "uniform", "low": 10, "high": 200}, "output_len": 20}
    text = list(build_workload(base, 7))
    mm = list(build_workload({**base, "images": {"fraction": 0.3, "distinct_images": 50, "tokens_per_image": 64}}, 7))
    assert [s.arrival_s for s in mm] == [s.arrival_s for s in text]           # no other stream shifted
    has = np.array([s.images is not None for s in mm])
    assert 0.25 < has.mean() < 0.35
    assert all(m.input_tokens == t.input_tokens + (64 if m.images else 0) for m, t in zip(mm, text))
    assert len({s.images[0][0] for s in mm if s.images}) <= 50
    zipf = list(build_workload({**base, "images": {"distinct_images": 50, "popularity": "zipf", "zipf_s": 1.2}}, 7))
    first = np.mean([s.images[0][0] == ("img", 0) for s in zipf])
    assert first > 0.15                                                         # 1 / H(50, 1.2) ~ 0.25


def test_max_model_len_cuts_text_never_images():
    w = build_workload({"type": "synthetic", "arrival": {"process": "poisson", "rate": 5, "num_requests": 3},
                        "input_len": 500, "output_len": 100, "system_prompt_len": 50,
                        "images": {"tokens_per_image": 576}}, 1, max_model_len=1000)
    for s in w:
        assert s.input_tokens == 999 and s.output_tokens == 1
        assert s.segments[-1] == (("img", s.images[0][0]), 576) and sum(n for _, n in s.segments) == 999
    assert w.clipped == 3
    with pytest.raises(ConfigError, match="max_model_len"):
        build_workload({"type": "poisson", "stages": [{"rate": 5, "duration_s": 1}], "input_len": 5,
                        "output_len": 5, "images": {"per_request": 2}}, 1, max_model_len=1000)


def test_trace_image_columns_follow_their_rows(tmp_path):
    p = tmp_path / "mm.csv"
    p.write_text("arrival_time_s,input_tokens,output_tokens,image_ids,image_tokens\n"
                 "0.0,700,10,a;b,100;200\n0.5,600,10,,\n0.2,1000,10,a;c,300\n")
    specs = list(build_workload({"type": "trace", "path": str(p), "sort": True}, 0))
    assert [s.images for s in specs] == [(("a", 100), ("b", 200)), (("a", 300), ("c", 300)), None]
    assert [s.input_tokens for s in specs] == [700, 1000, 600]
    copies = list(build_workload({"type": "trace", "path": str(p), "sort": True, "rate_scale": 2}, 0))
    assert {s.images[0][0] for s in copies if s.images} == {"a", ("copy", 1, "a")}
    clipped = list(build_workload({"type": "trace", "path": str(p), "sort": True}, 0, max_model_len=700))
    assert [s.input_tokens for s in clipped] == [699, 699, 600]
    assert clipped[1].images == (("a", 300), ("c", 300))
    q = tmp_path / "bad.csv"
    q.write_text("arrival_time_s,input_tokens,output_tokens,image_ids,image_tokens\n0.0,100,10,a,576\n")
    with pytest.raises(TraceError, match="input_tokens must count the image tokens"):
        build_workload({"type": "trace", "path": str(q)}, 0)
    r = tmp_path / "ids_only.csv"
    r.write_text("arrival_time_s,input_tokens,output_tokens,image_ids\n0.0,900,10,x\n")
    (spec,) = build_workload({"type": "trace", "path": str(r), "image_tokens": 256}, 0)
    assert spec.images == (("x", 256),)
    with pytest.raises(TraceError, match="remove one"):
        build_workload({"type": "trace", "path": str(r), "images": {}}, 0)
    for name, text, msg in (("orphan", "image_tokens\n0.0,900,10,576\n", "needs column 'image_ids'"),
                            ("counts", "image_ids,image_tokens\n0.0,900,10,a;b;c,1;2\n", "2 image_tokens for 3")):
        f = tmp_path / f"{name}.csv"
        f.write_text("arrival_time_s,input_tokens,output_tokens," + text)
        with pytest.raises(TraceError, match=msg):
            build_workload({"type": "trace", "path": str(f)}, 0)


def test_lru_matches_a_reference_on_a_random_stream():
    # an OrderedDict reference LRU on 5,000 Zipf draws: same hits, same final content
    rng = np.random.default_rng(0)
    ids = rng.zipf(1.3, 5000) % 300
    cache, ref, hits = EncoderCache(40), OrderedDict(), 0
    for i in ids.tolist():
        if i in ref:
            ref.move_to_end(i)
            hits += 1
        else:
            ref[i] = 1
            if len(ref) > 40:
                ref.popitem(last=False)
        if not cache.lookup(i):
            cache.insert(i, 1)
    assert cache.hits == hits and list(cache._entries) == list(ref)


# ----------------------------------------------------------------------------- end to end (experiments.runner)


def run_with_encoder(mm: dict | None, cfg: dict):
    """`experiments.runner.run` of `cfg` with the config's `multimodal:` section set to `mm` (None: text only)."""
    from experiments.runner import run

    return run({**cfg, "multimodal": mm, "sim": {"progress": False}})


E2E = {"model": "llama-2-7b", "hardware": {"gpu": "h100"}, "seed": 1,
       "workload": {"type": "poisson", "stages": [{"rate": 4, "duration_s": 30}], "input_len": 100,
                    "output_len": 128, "images": {"distinct_images": 40}}}


def test_end_to_end_through_the_runner():
    base = run_with_encoder(None, E2E)
    inline = run_with_encoder({"mode": "inline"}, E2E)
    asy = run_with_encoder({"mode": "async"}, E2E)
    n = len(base.requests)
    assert set(base.requests["input_tokens"]) == {100 + TOK}                 # prompts carry the image tokens
    mm = inline.summary["multimodal"]
    distinct = mm["encoded_images"]
    assert distinct <= 40 and mm["images"] == n
    assert mm["encoder_cache_hit_rate"] == pytest.approx(1 - distinct / n)
    assert mm["encoder_s"]["mean"] == pytest.approx(distinct / n * mm["encoder_s"]["max"])
    enc = mm["encoder_s"]["max"]
    # inline: someone's decode waited for an encoding; async: the worst gap is the text-only one
    assert inline.summary["itl_s"]["max"] - base.summary["itl_s"]["max"] == pytest.approx(enc, rel=0.1)
    assert asy.summary["itl_s"]["max"] == pytest.approx(base.summary["itl_s"]["max"], rel=0.02)
    am = asy.summary["multimodal"]
    assert am["encoded_images"] == distinct and am["encoder_busy_s"] == pytest.approx(distinct * enc)
    assert am["encoder_busy_s"] / 35 < am["encoder_utilisation"] < am["encoder_busy_s"] / 30   # a ~30 s run
    for r in (inline, asy):                                                  # TTFT pays the encodings, on average
        assert r.summary["ttft_s"]["mean"] - base.summary["ttft_s"]["mean"] == pytest.approx(
            distinct / n * enc, rel=0.25)


def test_disaggregated_prefill_instance_runs_the_encoder():
    cfg = {**E2E, "pools": {"prefill": {"replicas": 1}, "decode": {"replicas": 1}}}
    base = run_with_encoder(None, cfg)
    inline = run_with_encoder({"mode": "inline"}, cfg)
    mm = inline.summary["multimodal"]
    assert mm["encoded_images"] > 0 and mm["requests_with_images"] == len(inline.requests)
    assert mm["encoder_busy_s"] == pytest.approx(mm["encoded_images"] * mm["encoder_s"]["max"])
    # the decode pool never encodes: its worst inter-token gap is unchanged
    assert inline.summary["itl_s"]["max"] == pytest.approx(base.summary["itl_s"]["max"], rel=0.05)
    assert inline.summary["ttft_s"]["mean"] > base.summary["ttft_s"]["mean"]
