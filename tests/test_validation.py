"""Validation against real measurements (experiments/validation/, data copied from ../shared/reference).

These guard the calibrated constants: if a change to sim/cost.py or sim/memory.py moves a kernel family
or the KV capacity off the measurements, a test here fails. The full vLLM replay is a script
(`python -m experiments.validation.vllm_runs`); here only a short slice runs.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from experiments.validation import kernels as K
from experiments.validation import vllm_runs as V

@pytest.fixture(scope="module")
def families():
    return K.evaluate()


def test_every_kernel_family_has_points(families):
    assert set(families) == set(K.FAMILIES)
    assert len(families["gemm"]) > 10_000 and len(families["gpt-fast"]) >= 30
    for pts in families.values():
        assert pts and all(math.isfinite(p.predicted) and p.predicted > 0 for p in pts)


@pytest.mark.parametrize("family", list(K.FAMILIES))
def test_kernel_family_meets_its_error_target(families, family):
    pts = K.ACCEPT_FILTERS.get(family, lambda p: p)(families[family])
    s = K.summarize(pts)
    assert s["median"] <= K.TARGET_MEDIAN, (family, s)
    assert s["p90"] <= K.TARGET_P90, (family, s)


def test_allreduce_model_is_latency_plus_ring_bandwidth():
    from sim.cost import allreduce_time

    assert allreduce_time(1e6, 1, 1e11, 5e-5) == 0.0
    t2, t8 = allreduce_time(64e6, 2, 1e11, 5e-5), allreduce_time(64e6, 8, 1e11, 5e-5)
    assert t2 == pytest.approx(5e-5 + 64e6 / 1e11)
    assert t8 == pytest.approx(5e-5 + 2 * 7 / 8 * 64e6 / 1e11)


def test_memory_model_reproduces_vllm_kv_blocks_within_3_percent():
    t = V.kv_block_points()
    text = t[t.exception == ""]
    assert len(text) >= 10
    worst = text.loc[text.error.abs().idxmax()]
    assert abs(worst.error) <= 0.03, worst.to_dict()
    # the one exception is a multimodal checkpoint, flagged with its reason (docs/VALIDATION.md)
    assert set(t[t.exception != ""].model) <= set(V.KV_EXCEPTIONS)


def test_trace_output_miscount_is_detected_for_a_base_model_run():
    mc = V.output_miscount(V.run_row("20260217-155451-llama-2-7b-tp1-codegen"))
    assert 240 <= mc["full"] <= 252
    assert mc["share_short"] > 0.3
    # requests counted short took as long as the full ones: they generated the full length
    assert mc["e2e_short_s"] == pytest.approx(mc["e2e_full_s"], rel=0.03)


def test_a_one_minute_slice_of_a_vllm_run_replays_with_finite_metrics():
    key = "20260217-155451-llama-2-7b-tp1-codegen"
    res = V.replay(key, max_time=60.0)
    stats = res["all"]
    assert stats["n"] > 200
    for m in ("ttft_mean", "ttft_p90", "e2e_mean", "e2e_p99", "itl_mean"):
        assert np.isfinite(stats[m]) and stats[m] > 0, m
    meas = V.measured(key)[0]
    # not overloaded: TTFT stays within a few steps, not seconds
    assert stats["ttft_mean"] < 10 * meas["ttft_mean"]
    assert 0.5 < stats["e2e_mean"] / meas["e2e_mean"] < 1.5


def test_the_data_parallel_run_is_replayed_on_two_replicas_behind_a_least_loaded_router():
    key = "32-mixtral-8x7b-tp2-general-2-2"
    assert key in V.dp_runs() and key in V.replay_keys()           # replayed by the report, not skipped
    cfg = V.config(V.run_row(key), "unused")
    # its EP=4 over both engines: experts over the 4 GPUs, the replicas in lockstep
    assert cfg["deployment"] == {"replicas": 2, "parallelism": {"tp": 2, "ep": 4}} and "parallelism" not in cfg
    assert V.config(V.run_row(key), "unused", wide_ep=False)["deployment"] == {"replicas": 2, "parallelism": {"tp": 2}}
    assert cfg["router"] == "least_outstanding_requests"
    res = V.replay(key, max_time=30.0)                              # 30 s of each stage: 840 requests
    counts = res["replica_requests"]
    assert len(counts) == 2 and sum(counts) == res["all"]["n"] > 800
    assert min(counts) > 0.45 * sum(counts)                         # the load is shared evenly
    meas, sim = V.measured(key)[1], res[1]
    # 20 req/s on one TP2 replica queues (TTFT 111 ms in this slice); on two it stays at about one step
    assert sim["ttft_mean"] < 1.5 * meas["ttft_mean"]
    assert 0.75 < sim["e2e_mean"] / meas["e2e_mean"] < 1.35


def test_seed_spread_covers_the_generator_runs_and_orders_its_band():
    keys = V.spread_keys()
    assert "53-mixtral-8x22b-tp8-reasoning-8" in keys                 # the knee run, replayed from the generator
    assert not any(isinstance(V.run_row(k).requests_csv, str) for k in keys)   # a trace's arrivals are fixed
    assert not any(V.run_row(k).overloaded for k in keys)
    t = V.seed_spread(["62-mistral-nemo-12b-tp2-general-lite-2-1"], jobs=1, seeds=3, max_time=60.0)
    r = t.iloc[0]
    for m in ("ttft_mean", "e2e_mean"):
        assert r[f"min_{m}"] <= r[f"p50_{m}"] <= r[f"max_{m}"]
    assert r["min_e2e_mean"] < r["max_e2e_mean"]                       # the seeds draw different arrivals
    assert "| 62-mistral-nemo-12b-tp2-general-lite-2-1 |" in V.spread_markdown(t, seeds=3)
