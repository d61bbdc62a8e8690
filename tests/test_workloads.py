"""Workload layer: generators against their distributions, trace replay, config validation."""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydantic import TypeAdapter, ValidationError
from scipy import stats

from sim.errors import TraceError
from sim.registry import get
from workloads.base import RequestSpec, Workload
from workloads.build import build_workload
from workloads.config import (FixedLength, LognormalLength, PoissonWorkload, SharedPrefixWorkload,
                              UniformLength, WorkloadConfig)
from workloads.lengths import sample_lengths
from workloads.traces import load_trace

DATA = Path(__file__).parent / "data" / "traces"
SLICE = DATA / "vllm_llama2_7b_general_head.csv"


def poisson_cfg(stages=((5.0, 200.0), (12.0, 100.0)), input_len=100, output_len=50) -> dict:
    return {"type": "poisson", "stages": [{"rate": r, "duration_s": d} for r, d in stages],
            "input_len": input_len, "output_len": output_len}


def sp_cfg(**kw) -> dict:
    cfg = {"type": "shared_prefix", "stages": [{"rate": 20.0, "duration_s": 300.0}],
           "num_system_prompts": 9, "users_per_system_prompt": 5, "system_prompt_len": 100,
           "question_len": 447, "output_len": 248}
    cfg.update(kw)
    return cfg


# ----------------------------------------------------------------------------- Poisson


def test_poisson_stage_counts_are_exact_and_labelled():
    w = build_workload(poisson_cfg(stages=((5.0, 200.0), (12.5, 101.0), (0.3, 7.0))), seed=1)
    reqs = list(w)
    counts = np.bincount([r.stage for r in reqs], minlength=3)
    assert counts.tolist() == [1000, round(12.5 * 101.0), round(0.3 * 7.0)]
    assert w.expected_count == len(reqs) == sum(counts)
    assert [r.request_id for r in reqs] == list(range(len(reqs)))
    t = np.array([r.arrival_s for r in reqs])
    assert np.all(np.diff(t) >= 0) and t[0] > 0
    # stage 1 requests start after stage 0's nominal end
    assert min(r.arrival_s for r in reqs if r.stage == 1) >= 200.0


def test_poisson_gaps_are_exponential_at_the_stage_rate():
    rate, dur = 8.0, 500.0
    # p-values are uniform over seeds (checked: 2.5% of 200 seeds fall below 0.01); seed 1 is typical
    reqs = list(build_workload(poisson_cfg(stages=((rate, dur),)), seed=1))
    t = np.array([r.arrival_s for r in reqs])
    gaps = np.diff(np.concatenate([[0.0], t]))
    assert stats.kstest(gaps, "expon", args=(0, 1 / rate)).pvalue > 0.01
    # mean gap within 3 standard errors of 1/rate (sd of Exp = mean)
    se = (1 / rate) / math.sqrt(len(gaps))
    assert abs(gaps.mean() - 1 / rate) < 3 * se
    # and the gaps are not, say, uniform with the same mean
    assert stats.kstest(gaps, "uniform", args=(0, 2 / rate)).pvalue < 1e-6


def test_poisson_second_stage_runs_at_its_own_rate():
    reqs = list(build_workload(poisson_cfg(stages=((2.0, 300.0), (20.0, 100.0))), seed=3))
    t1 = np.array([r.arrival_s for r in reqs if r.stage == 1])
    gaps = np.diff(np.concatenate([[300.0], t1]))
    assert stats.kstest(gaps, "expon", args=(0, 1 / 20.0)).pvalue > 0.01


def test_overlapping_stages_are_merged_in_time_order():
    # 1000 requests at rate 1 over 10 s: stage 0 runs far past its end into stage 1
    reqs = list(build_workload(poisson_cfg(stages=((100.0, 10.0), (1.0, 5.0))), seed=0))
    t = [r.arrival_s for r in reqs]
    assert t == sorted(t)
    assert sum(r.stage == 0 for r in reqs) == 1000 and sum(r.stage == 1 for r in reqs) == 5


# ----------------------------------------------------------------------------- lengths


def test_lognormal_sample_mean_matches_configured_mean():
    mean, sigma = 550.0, 0.6
    x = sample_lengths(LognormalLength(dist="lognormal", mean=mean, sigma=sigma), 20_000,
                       np.random.default_rng(11))
    sd = mean * math.sqrt(math.exp(sigma**2) - 1)
    assert abs(x.mean() - mean) < 3 * sd / math.sqrt(len(x))
    assert x.dtype == np.int64 and x.min() >= 1
    # log of the samples has the configured spread
    assert abs(np.log(x).std() - sigma) < 0.02


def test_length_clipping_and_uniform_bounds():
    rng = np.random.default_rng(0)
    x = sample_lengths(LognormalLength(dist="lognormal", mean=500, sigma=1.5, min=50, max=800), 5000, rng)
    assert x.min() == 50 and x.max() == 800
    u = sample_lengths(UniformLength(dist="uniform", low=3, high=6), 5000, rng)
    assert set(u.tolist()) == {3, 4, 5, 6}
    assert sample_lengths(FixedLength(value=9), 4, rng).tolist() == [9, 9, 9, 9]


def test_max_model_len_clips_and_counts():
    cfg = poisson_cfg(stages=((10.0, 100.0),), input_len={"dist": "uniform", "low": 1, "high": 200},
                      output_len=100)
    free = list(build_workload(cfg, seed=5))
    w = build_workload(cfg, seed=5, max_model_len=150)
    clipped = list(w)
    expect = sum(1 for r in free if r.input_tokens > 149 or r.input_tokens + r.output_tokens > 150)
    assert w.clipped == expect > 0
    for a, b in zip(free, clipped):
        assert b.input_tokens == min(a.input_tokens, 149)
        assert b.input_tokens + b.output_tokens == min(a.input_tokens + a.output_tokens, 150)
        assert b.output_tokens >= 1


# ----------------------------------------------------------------------------- shared prefix


def test_shared_prefix_pool_structure_and_uniform_draws():
    cfg = SharedPrefixWorkload(**sp_cfg())
    w = build_workload(cfg, seed=42)
    reqs = list(w)
    assert len(reqs) == w.expected_count == 6000
    by_prompt: dict[int, tuple] = {}
    for r in reqs:
        assert (r.input_tokens, r.output_tokens) == (547, 248)
        (sys_key, sys_n), (q_key, q_n) = r.segments
        assert sys_key[0] == "sys" and q_key[0] == "q" and (sys_n, q_n) == (100, 447)
        i = q_key[1]
        assert 0 <= i < 45 and sys_key[1] == i // 5
        assert by_prompt.setdefault(i, r.segments) is r.segments  # same prompt -> same object
    counts = np.bincount([r.segments[1][0][1] for r in reqs], minlength=45)
    assert stats.chisquare(counts).pvalue > 0.01
    assert len(by_prompt) == 45


def test_shared_prefix_draws_are_not_skewed_towards_low_indices():
    # the chi-square test above must be able to fail: a skewed draw is rejected
    skewed = np.bincount(np.random.default_rng(0).geometric(0.1, 6000).clip(max=45) - 1, minlength=45)
    assert stats.chisquare(skewed).pvalue < 1e-6


def test_shared_prefix_without_system_prompt_has_one_segment():
    reqs = list(build_workload(sp_cfg(system_prompt_len=0, stages=[{"rate": 5, "duration_s": 10}]), seed=1))
    assert len(reqs) == 50
    assert all(len(r.segments) == 1 and r.segments[0][0][0] == "q" and r.input_tokens == 447 for r in reqs)


def test_shared_prefix_clipped_prompts_have_truncated_segments():
    w = build_workload(sp_cfg(stages=[{"rate": 5, "duration_s": 10}]), seed=1, max_model_len=300)
    reqs = list(w)
    assert w.clipped == len(reqs) == 50
    for r in reqs:
        assert r.input_tokens == 299 and r.output_tokens == 1
        assert sum(n for _, n in r.segments) == 299 and r.segments[0][1] == 100


# ----------------------------------------------------------------------------- seeding


def _key(reqs: list[RequestSpec]) -> list[tuple]:
    return [(r.arrival_s, r.input_tokens, r.output_tokens, r.segments, r.stage) for r in reqs]


@pytest.mark.parametrize("cfg", [
    poisson_cfg(input_len={"dist": "lognormal", "mean": 300, "sigma": 0.7},
                output_len={"dist": "uniform", "low": 10, "high": 500}),
    sp_cfg(stages=[{"rate": 10, "duration_s": 60}]),
])
def test_same_seed_same_requests_different_seed_different(cfg):
    a = _key(list(build_workload(cfg, seed=123)))
    assert a == _key(list(build_workload(cfg, seed=123)))
    ss = np.random.SeedSequence(123)
    w = build_workload(cfg, seed=ss)
    assert _key(list(w)) == a
    assert _key(list(w)) == a  # iterating again replays the same stream
    assert _key(list(build_workload(cfg, seed=ss))) == a  # building twice from one SeedSequence
    assert _key(list(build_workload(cfg, seed=124))) != a


def test_components_have_independent_streams():
    # changing the length distribution must not move the arrival times
    a = list(build_workload(poisson_cfg(input_len=100), seed=9))
    b = list(build_workload(poisson_cfg(input_len={"dist": "lognormal", "mean": 100, "sigma": 1}), seed=9))
    assert [r.arrival_s for r in a] == [r.arrival_s for r in b]
    assert [r.input_tokens for r in a] != [r.input_tokens for r in b]


def test_streaming_does_not_materialise_requests():
    w = build_workload(poisson_cfg(stages=((1000.0, 1000.0),)), seed=0)  # 1 M requests
    assert isinstance(w, Workload) and len(w) == 1_000_000
    it = iter(w)
    first = next(it)
    assert first.request_id == 0 and next(it).request_id == 1


# ----------------------------------------------------------------------------- traces


def test_trace_slice_loads_and_maps_columns():
    w = build_workload({"type": "trace", "path": str(SLICE)}, seed=0)
    reqs = list(w)
    raw = pd.read_csv(SLICE)
    assert len(raw) == 300
    kept = raw[(raw.input_tokens > 0) & (raw.output_tokens > 0)].reset_index(drop=True)
    assert w.dropped == 300 - len(kept) == 3
    assert len(reqs) == w.expected_count == 297
    assert [r.arrival_s for r in reqs] == kept.arrival_time_s.tolist()  # not shifted
    assert [r.input_tokens for r in reqs] == kept.input_tokens.tolist()
    assert [r.output_tokens for r in reqs] == kept.output_tokens.tolist()
    assert [r.stage for r in reqs] == kept.stage_index.tolist()
    seen: dict[tuple, tuple] = {}
    for r, row in zip(reqs, kept.itertuples()):
        assert r.segments == ((("grp", row.prefix_group), row.prefix_len),
                              (("prompt", row.prompt_id), row.input_tokens - row.prefix_len))
        assert all(type(k[1]) is int for k, _ in r.segments)
        combo = (row.prompt_id, row.prefix_group, row.prefix_len, row.input_tokens)
        assert seen.setdefault(combo, r.segments) is r.segments


def test_trace_time_scale_and_max_requests():
    reqs = list(build_workload({"type": "trace", "path": str(SLICE), "time_scale": 0.5, "max_requests": 10}, 0))
    raw = pd.read_csv(SLICE)
    assert len(reqs) == 10
    assert [r.arrival_s for r in reqs] == (raw.arrival_time_s[:10] * 0.5).tolist()


def write(tmp_path: Path, text: str, name: str = "t.csv") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_trace_drops_zero_length_rows_and_builds_segment_kinds(tmp_path):
    p = write(tmp_path, "arrival_time_s,input_tokens,output_tokens,prompt_id,prefix_group,prefix_len,session_id,x\n"
                        "0.0,10,5,a,1,4,s1,junk\n"
                        "0.5,0,5,a,1,4,s1,junk\n"
                        "1.0,10,0,b,,,,\n"
                        "1.0,10,5,a,1,4,s2,\n"
                        "2.0,8,3,,1,4,,\n"
                        "3.0,8,3,c,,,,\n"
                        "4.0,3,3,d,2,9,,\n")
    w = load_trace(p)
    reqs = list(w)
    assert w.dropped == 2 and len(reqs) == 5
    s = [r.segments for r in reqs]
    assert s[0] == ((("grp", 1), 4), (("prompt", "a"), 6)) and s[0] is s[1]
    assert s[2] == ((("grp", 1), 4), (("req", 2), 4))
    assert s[3] == ((("prompt", "c"), 8),)
    assert s[4] == ((("grp", 2), 3),)  # prefix longer than the prompt is cut to it
    assert [r.session_id for r in reqs] == ["s1", "s2", None, None, None]
    p2 = write(tmp_path, "arrival_time_s,input_tokens,output_tokens\n0,5,5\n1,6,6\n", "plain.csv")
    assert [r.segments for r in load_trace(p2)] == [None, None]


def test_parquet_trace(tmp_path):
    df = pd.read_csv(SLICE).head(50)
    p = tmp_path / "t.parquet"
    df.to_parquet(p)
    assert _key(list(load_trace(p))) == _key(list(load_trace(SLICE, max_requests=len(load_trace(p)))))
    df.loc[7, "input_tokens"] = -3
    df.to_parquet(p)
    with pytest.raises(TraceError, match=r"data row 8, column 'input_tokens'"):
        load_trace(p)


HEADER = "arrival_time_s,input_tokens,output_tokens\n"


@pytest.mark.parametrize("body, match", [
    (HEADER + "0,5,5\n1,abc,5\n", r"data row 2 \(CSV line 3\), column 'input_tokens'.*not a number"),
    (HEADER + "0,5,5\n1,5,-2\n", r"data row 2 \(CSV line 3\), column 'output_tokens'.*negative length"),
    (HEADER + "0,5,5\n1,5,2.5\n", r"data row 2 \(CSV line 3\), column 'output_tokens'.*whole number"),
    (HEADER + "0,5,5\n1,,5\n", r"data row 2 \(CSV line 3\), column 'input_tokens'.*empty"),
    (HEADER + "-1,5,5\n1,5,5\n", r"data row 1 \(CSV line 2\), column 'arrival_time_s'.*negative arrival"),
    (HEADER + "0,5,5\nNaN,5,5\n", r"data row 2 \(CSV line 3\), column 'arrival_time_s'.*NaN"),
    (HEADER + "0,5,5\nsoon,5,5\n", r"data row 2 \(CSV line 3\), column 'arrival_time_s'.*not a number"),
    (HEADER + "0,5,5\n2,5,5\n3,5,5\n1,5,5\n4,5,5\n0.5,5,5\n",
     r"data row 4 \(CSV line 5\), column 'arrival_time_s'.*earlier than the previous.*sort"),
    ("arrival_time_s,input_tokens,output_tokens,prefix_group,prefix_len\n0,5,5,1,-1\n",
     r"data row 1 \(CSV line 2\), column 'prefix_len'.*negative"),
    # a count past int64 once overflowed to a silently dropped 0-token row
    (HEADER + "0,5,5\n1,1e20,5\n", r"data row 2 \(CSV line 3\), column 'input_tokens'.*1e\+20 is out of range"),
    (HEADER + "0,5,1000000001\n", r"data row 1 \(CSV line 2\), column 'output_tokens'.*out of range"),
    # pandas reads an all-true/false column as booleans, which would replay as 1-token prompts
    (HEADER + "0,true,5\n1,false,5\n", r"data row 1 \(CSV line 2\), column 'input_tokens'.*true/false"),
    ("arrival_time_s,input_tokens,output_tokens,stage_index\n0,5,5,0\n1,5,5,-1\n",
     r"data row 2 \(CSV line 3\), column 'stage_index'.*-1 is not a stage index"),
    # lines are counted in the file: blank lines and quoted line breaks do not shift them
    (HEADER + "0,5,5\n\n1,5,5\n2,x,5\n", r"data row 3 \(CSV line 5\), column 'input_tokens'.*not a number"),
    ("arrival_time_s,input_tokens,output_tokens,tenant\n0,5,5,\"a\nb\"\n1,-5,5,c\n",
     r"data row 2 \(CSV line 4\), column 'input_tokens'.*negative"),
])
def test_malformed_trace_rows(tmp_path, body, match):
    p = write(tmp_path, body)
    with pytest.raises(TraceError, match=match) as e:
        load_trace(p)
    msg = str(e.value)
    assert "\n" not in msg and str(p) in msg


def test_huge_counts_raise_without_overflow_warnings(tmp_path):
    p = write(tmp_path, HEADER + "0,5,5\n1,1e20,5\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")                          # the int64 cast warned, then dropped the row
        with pytest.raises(TraceError, match="out of range"):
            load_trace(p)


@pytest.mark.parametrize("key, value, match", [("time_scale", math.inf, "must be a finite number > 0"),
                                               ("rate_scale", -math.inf, "greater than 0"),
                                               ("time_scale", math.nan, "greater than 0"),
                                               ("rate_scale", math.inf, "must be a finite number > 0")])
def test_non_finite_trace_scales_are_refused(key, value, match):
    with pytest.raises(ValidationError, match=match) as e:
        build_workload({"type": "trace", "path": str(SLICE), key: value}, 0)
    assert key in str(e.value)
    with pytest.raises(TraceError, match="finite"):
        load_trace(SLICE, time_scale=math.inf)


def test_non_finite_rates_and_times_are_refused():
    with pytest.raises(ValidationError, match="finite"):
        build_workload(poisson_cfg(stages=((math.inf, 10.0),)), 0)
    with pytest.raises(ValidationError, match="finite"):
        PoissonWorkload(**poisson_cfg(input_len={"dist": "lognormal", "mean": math.inf, "sigma": 1}))
    with pytest.raises(ValidationError, match="finite"):
        TypeAdapter(WorkloadConfig).validate_python({"type": "closed_loop", "clients": 2, "num_requests": 5,
                                                     "input_len": 5, "output_len": 5, "think_time_s": math.inf})


def test_malformed_trace_files(tmp_path):
    with pytest.raises(TraceError, match=r"not found.*path"):
        load_trace(tmp_path / "nope.csv")
    with pytest.raises(TraceError, match=r"empty"):
        load_trace(write(tmp_path, ""))
    with pytest.raises(TraceError, match=r"no data rows"):
        load_trace(write(tmp_path, HEADER))
    with pytest.raises(TraceError, match=r"missing required column\(s\) output_tokens.*found columns: "
                                         r"arrival_time_s, input_tokens, output_tokns") as e:
        load_trace(write(tmp_path, "arrival_time_s,input_tokens,output_tokns\n0,1,1\n"))
    assert "did you mean output_tokns" in str(e.value)
    with pytest.raises(TraceError, match=r"'prefix_group' needs column 'prefix_len'"):
        load_trace(write(tmp_path, "arrival_time_s,input_tokens,output_tokens,prefix_group\n0,1,1,3\n"))
    with pytest.raises(TraceError, match=r"0 input or 0 output"):
        load_trace(write(tmp_path, HEADER + "0,0,5\n"))


def test_large_trace_loads_quickly(tmp_path):
    import time
    n = 1_000_000
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"arrival_time_s": np.cumsum(rng.exponential(0.01, n)),
                       "input_tokens": rng.integers(1, 2000, n), "output_tokens": rng.integers(1, 500, n),
                       "prompt_id": rng.integers(0, 1000, n), "prefix_group": rng.integers(0, 50, n),
                       "prefix_len": 100})
    p = tmp_path / "big.csv"
    df.to_csv(p, index=False)
    t0 = time.perf_counter()
    w = load_trace(p)
    assert time.perf_counter() - t0 < 10.0
    assert w.expected_count == n


# ----------------------------------------------------------------------------- config


def test_unknown_key_is_rejected():
    with pytest.raises(ValidationError, match="rat"):
        build_workload({**poisson_cfg(), "rat": 3}, seed=0)
    with pytest.raises(ValidationError):
        PoissonWorkload(**{**poisson_cfg(), "stages": [{"rate": 1, "duration_s": 1, "ramp": 2}]})
    with pytest.raises(ValidationError):
        PoissonWorkload(**poisson_cfg(input_len={"dist": "lognormal", "mean": 5, "sigma": 1, "p99": 3}))


def test_bare_int_length_means_fixed_and_bad_values_fail():
    cfg = PoissonWorkload(**poisson_cfg(input_len=128, output_len=7))
    assert cfg.input_len == FixedLength(dist="fixed", value=128)
    reqs = list(build_workload(cfg, seed=0))
    assert {(r.input_tokens, r.output_tokens) for r in reqs} == {(128, 7)}
    for bad in [0, True, {"dist": "uniform", "low": 5, "high": 2}, {"dist": "zipf", "a": 1},
                {"dist": "fixed", "value": 3, "min": 5, "max": 4}]:
        with pytest.raises(ValidationError):
            PoissonWorkload(**poisson_cfg(input_len=bad))
    with pytest.raises(ValidationError):
        PoissonWorkload(**poisson_cfg(stages=()))
    with pytest.raises(ValidationError):
        TypeAdapter(WorkloadConfig).validate_python({"type": "closed_loop"})


def test_config_round_trips_and_documents_every_field():
    ta = TypeAdapter(WorkloadConfig)
    for cfg in [poisson_cfg(input_len={"dist": "lognormal", "mean": 3, "sigma": 1, "max": 9}), sp_cfg(),
                {"type": "trace", "path": "x.csv", "time_scale": 2.0}]:
        m = ta.validate_python(cfg)
        assert ta.validate_python(m.model_dump()) == m
    schema = ta.json_schema()
    for name, d in schema["$defs"].items():
        for field, prop in d["properties"].items():
            assert prop.get("description"), f"{name}.{field} has no description"


def test_generators_are_registered():
    assert get("workload", "poisson") is not None
    assert get("workload", "shared_prefix") is not None
    assert get("workload", "trace") is not None
