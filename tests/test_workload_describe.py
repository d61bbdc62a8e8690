"""`servesim workload describe`: the statistics, the prefix-reuse bound, the JSON and HTML outputs."""
from __future__ import annotations

import json
import subprocess

import numpy as np
import pandas as pd
import pytest
import yaml

from workloads.build import build_workload
from workloads.describe import _PrefixTrie, describe, describe_config

from .test_workload_formats import AZURE_CODE_HEAD, MOONCAKE_HEAD, SHAREGPT_HEAD
from tests.paths import SERVESIM

KEYS = {"rows", "duration_s", "rate_per_s", "input_tokens", "output_tokens", "interarrival_cv",
        "prefix_hit_upper_bound"}


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([str(SERVESIM), *map(str, args)], capture_output=True, text=True, timeout=120)


def test_trie_counts_the_longest_shared_prefix():
    t = _PrefixTrie()
    assert t.add([("a", 10), ("b", 5)]) == 0
    assert t.add([("a", 10), ("b", 5), ("c", 3)]) == 15           # all of the first prompt
    assert t.add([("a", 10), ("b", 2), ("d", 9)]) == 12           # part of a segment: same key, same start
    assert t.add([("a", 4)]) == 4
    assert t.add([("a", 10), ("c", 3)]) == 10                     # c never came right after a
    assert t.add([("a", 10), ("c", 3)]) == 13                     # ... until now
    assert t.add([("x", 1), ("a", 10)]) == 0                      # same content later in the prompt is no prefix
    assert t.add([("a", 12)]) == 10


def test_cli_json_on_a_trace_slice():
    res = cli("workload", "describe", AZURE_CODE_HEAD, "--json")
    assert res.returncode == 0, res.stderr
    d = json.loads(res.stdout)
    assert KEYS <= set(d)
    raw = pd.read_csv(AZURE_CODE_HEAD)
    ts = pd.to_datetime(raw.TIMESTAMP)
    span = (ts.iloc[-1] - ts.iloc[0]).total_seconds()
    assert d["rows"] == 300 and d["duration_s"] == pytest.approx(span)
    assert d["rate_per_s"] == pytest.approx(300 / span)
    gaps = np.diff((ts - ts[0]).dt.total_seconds().to_numpy())
    assert d["interarrival_cv"] == pytest.approx(gaps.std() / gaps.mean())
    assert d["input_tokens"]["mean"] == pytest.approx(raw.ContextTokens.mean())
    assert d["input_tokens"]["p99"] == pytest.approx(np.percentile(raw.ContextTokens, 99))
    assert d["output_tokens"]["p50"] == pytest.approx(raw.GeneratedTokens.median())
    assert d["prefix_hit_upper_bound"] is None


def test_mooncake_prefix_bound_matches_a_direct_count(tmp_path):
    rows = [json.loads(x) for x in MOONCAKE_HEAD.read_text().splitlines()]
    seen: set = set()
    hit = total = 0
    for r in rows:                                               # longest run of already-seen block ids
        k = 0
        while k < len(r["hash_ids"]) and r["hash_ids"][k] in seen:
            k += 1
        hit += min(k * 512, r["input_length"])
        total += r["input_length"]
        seen.update(r["hash_ids"])
    d = describe(MOONCAKE_HEAD).summary()
    assert d["prefix_hit_upper_bound"] == pytest.approx(hit / total) and 0.05 < hit / total < 0.95
    out = tmp_path / "report.html"
    res = cli("workload", "describe", MOONCAKE_HEAD, "--out", out)
    assert res.returncode == 0, res.stderr
    assert "prefix hit upper bound" in res.stdout and f"{hit / total:.1%}" in res.stdout
    html = out.read_text()
    assert "plotly" in html and "request rate over time" in html and len(html) > 100_000


def test_length_tables_describe_lengths_only():
    d = describe(SHAREGPT_HEAD).summary()
    raw = pd.read_csv(SHAREGPT_HEAD)
    assert d["rows"] == 300 and d["duration_s"] is None and d["rate_per_s"] is None and d["interarrival_cv"] is None
    assert d["output_tokens"]["mean"] == pytest.approx(raw.output_tokens.mean())


def test_describe_a_run_config_and_a_session_workload(tmp_path):
    wl = {"type": "sessions", "arrival": {"process": "poisson", "rate": 1, "duration_s": 100}, "turns": 3,
          "user_message_len": 50, "output_len": 20, "think_time_s": 2.0}
    run_cfg = tmp_path / "run.yaml"
    run_cfg.write_text(yaml.safe_dump({"model": "llama-2-7b", "seed": 9, "workload": wl}))
    res = cli("workload", "describe", run_cfg, "--json")
    assert res.returncode == 0, res.stderr
    d = json.loads(res.stdout)
    n_sessions = d["sessions"]
    assert d["rows"] == 3 * n_sessions
    # turn k's prompt holds turn k-1's prompt: prompts are 50, 120, 190 tokens; 50 + 120 of them are hits
    assert d["prefix_hit_upper_bound"] == pytest.approx((50 + 120) / (50 + 120 + 190))
    assert any("zero-service-time" in n for n in d["notes"])
    run_seed = np.random.SeedSequence(9).spawn(1)[0]               # the run's workload stream (experiments.runner)
    same = describe_config({**wl, "pacing": "after_arrival"}, seed=run_seed).summary()
    assert same["rows"] == d["rows"] and same["duration_s"] == pytest.approx(d["duration_s"])
    w = tmp_path / "w.yaml"
    w.write_text(yaml.safe_dump({"type": "trace", "path": "t.csv"}))
    (tmp_path / "t.csv").write_text("arrival_time_s,input_tokens,output_tokens,prompt_id\n0,10,5,a\n1,10,5,a\n")
    d2 = describe(w).summary()                                   # relative paths: next to the YAML file
    assert d2["rows"] == 2 and d2["prefix_hit_upper_bound"] == pytest.approx(0.5)


def test_describe_classes_and_closed_loop():
    d = describe({"type": "synthetic", "arrival": {"process": "poisson", "rate": 10, "num_requests": 400},
                  "input_len": 100, "output_len": 10,
                  "classes": [{"tenant": "a", "weight": 1}, {"tenant": "b", "weight": 3}]}).summary()
    assert sum(d["classes"].values()) == 400 and d["classes"]["b"] > d["classes"]["a"]
    c = describe({"type": "closed_loop", "clients": 3, "num_requests": 50, "input_len": 10, "output_len": 5}).summary()
    assert c["rows"] == 50 and c["rate_per_s"] is None and any("closed loop" in n for n in c["notes"])
    assert len(list(build_workload({"type": "synthetic", "arrival": {"process": "poisson", "rate": 10,
                                                                     "num_requests": 400},
                                    "input_len": 100, "output_len": 10}, 0))) == 400


def test_cli_errors_are_one_line(tmp_path):
    res = cli("workload", "describe", tmp_path / "missing.csv", "--json")
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "not found" in res.stderr
    bad = tmp_path / "w.yaml"
    bad.write_text("type: sessions\nturns: 3\n")
    res = cli("workload", "describe", bad)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "arrival" in res.stderr
    bad.write_text(f"type: trace\npath: {AZURE_CODE_HEAD}\ntime_scale: .inf\n")   # once NaN arrival times
    res = cli("workload", "describe", bad)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
    assert "time_scale" in res.stderr and "must be a finite number > 0" in res.stderr


@pytest.mark.parametrize("seed", ["abc", "null"])
def test_describe_validates_a_run_config_as_run_does(tmp_path, seed):
    (tmp_path / "t.csv").write_text("arrival_time_s,input_tokens,output_tokens\n0,10,5\n1,10,5\n")
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"model: llama-2-7b\nsim: {{progress: false}}\nworkload: {{type: trace, path: t.csv}}\n"
                   f"seed: {seed}\n")
    described, ran = cli("workload", "describe", cfg), cli("run", cfg, "--out", tmp_path / "out")
    assert described.returncode == ran.returncode == 2
    assert described.stderr == ran.stderr and len(ran.stderr.strip().splitlines()) == 1 and "'seed'" in ran.stderr


def _clip_config(tmp_path, engine: str = "") -> object:
    # two prompts shared whole, two sharing a 4,500-token prefix; llama-2-7b's context is 4,096 tokens
    (tmp_path / "t.csv").write_text("arrival_time_s,input_tokens,output_tokens,prompt_id,prefix_group,prefix_len\n"
                                    "0,3000,100,p,,\n1,3000,100,p,,\n2,5000,50,q,g,4500\n3,5000,50,r,g,4500\n")
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"model: llama-2-7b\nsim: {{progress: false}}\n{engine}workload: {{type: trace, path: t.csv}}\n")
    return cfg


def test_describe_clips_to_the_runs_max_model_len(tmp_path):
    d = describe(_clip_config(tmp_path)).summary()               # the model's context length: 4,096
    assert d["clipped"] == 2 and d["input_tokens"]["max"] == 4095
    assert d["prefix_hit_upper_bound"] == pytest.approx((3000 + 4095) / (2 * 3000 + 2 * 4095))
    cfg = _clip_config(tmp_path, "engine: {max_model_len: 3050}\n")
    res = cli("workload", "describe", cfg, "--json")
    assert res.returncode == 0, res.stderr
    d = json.loads(res.stdout)
    assert d["clipped"] == 4 and d["input_tokens"]["max"] == 3049
    assert d["prefix_hit_upper_bound"] == pytest.approx((3000 + 3049) / (2 * 3000 + 2 * 3049))
    ran = cli("run", cfg, "--json")
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["requests"]["clipped"] == d["clipped"]
    unclipped = describe({"type": "trace", "path": str(tmp_path / "t.csv")}).summary()
    assert unclipped["clipped"] == 0 and unclipped["prefix_hit_upper_bound"] == pytest.approx(7500 / 16000)


def test_peak_rate_is_never_below_the_mean(tmp_path):
    short = tmp_path / "short.csv"                             # 6 rows over 2.1 s: less than the 1-min window
    short.write_text("arrival_time_s,input_tokens,output_tokens\n"
                     + "".join(f"{t},1,1\n" for t in (0, 0.35, 0.9, 1.2, 1.75, 2.1)))
    d = describe(short).summary()
    assert d["peak_1min_rate_per_s"] == pytest.approx(d["rate_per_s"]) == pytest.approx(6 / 2.1)
    assert any("less than a minute" in n for n in d["notes"])
    ends = tmp_path / "ends.csv"                               # bunched at both ends of a 61 s span
    ends.write_text("arrival_time_s,input_tokens,output_tokens\n" + "".join(f"{t},1,1\n" for t in [0] * 5 + [61] * 5))
    e = describe(ends).summary()
    assert e["peak_1min_rate_per_s"] >= e["rate_per_s"] == pytest.approx(10 / 61)
    times = list(range(30)) + list(range(40, 301, 10))         # a 30 s burst, then one every 10 s
    burst = tmp_path / "burst.csv"
    burst.write_text("arrival_time_s,input_tokens,output_tokens\n" + "".join(f"{t},1,1\n" for t in times))
    b = describe(burst).summary()
    assert b["peak_1min_rate_per_s"] == pytest.approx(33 / 60) and b["rate_per_s"] == pytest.approx(57 / 300)
    assert not any("less than a minute" in n for n in b["notes"])


def test_length_histograms_bin_whole_tokens_evenly_and_the_last_rate_bin_is_not_short_changed():
    from experiments.workload_report import integer_bins
    from workloads.describe import WorkloadDescription

    x = np.random.default_rng(0).integers(50, 301, size=36_000)
    edges = integer_bins(x)
    per_bin = np.diff(np.ceil(edges))                       # whole numbers each bin holds
    assert len(set(per_bin.tolist())) == 1 and edges[0] < x.min() and edges[-1] > x.max()
    counts, _ = np.histogram(x, bins=edges)
    assert counts[:-1].std() < 4 * np.sqrt(counts[:-1].mean())   # flat data gives a flat histogram, no comb
    t = np.sort(np.random.default_rng(1).uniform(0, 121, size=12_100))
    d = WorkloadDescription(source="x", kind="trace", arrival_s=t, input_tokens=np.ones_like(t, dtype=int),
                            output_tokens=np.ones_like(t, dtype=int))
    _, rate = d.rate_series()
    assert rate[-1] > 70                                   # ~100 req/s throughout, the last bin included


def test_describe_reads_a_plan_file_without_base_as_a_plan(tmp_path):
    import yaml

    plan = {"name": "p", "model": "llama-3.1-8b", "target_rate": 5, "slo": {"ttft_s": 1}, "gpus": ["h100"],
            "workload": {"type": "poisson", "stages": [{"rate": 2, "duration_s": 30}], "input_len": 100,
                         "output_len": 10}}
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan))
    d = describe(path)
    assert len(d.input_tokens) == 60
