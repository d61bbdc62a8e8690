"""Engine properties through `experiments.runner.run` (DESIGN.md sections 4 and 8).

Invariants over hypothesis-drawn configs (no request lost or duplicated, tokens out = tokens asked,
time never goes back, KV blocks never negative or leaked, fast-forward == per-iteration), then
directed checks of determinism, prefix caching (including a hand-computed hit rate), preemption,
chunked prefill and the summary's keys.

`spy()` patches the runner's building blocks (KV manager, replica, workload builder, cost model)
with recording wrappers, so the tests look at the very objects a real run used.
"""
from __future__ import annotations

import copy
import math
from contextlib import contextmanager
from functools import lru_cache
from types import SimpleNamespace
from unittest.mock import patch

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from experiments import deployment, runner
from experiments.config import load_config
from experiments.runner import run
from policies.batching import VLLMScheduler
from sim.memory import plan_memory

MODEL = "llama-2-7b"
BS = 16


# ----------------------------------------------------------------------------- harness

class CostSpy:
    """Wraps the run's cost model; records every priced step (tokens, seconds)."""

    def __init__(self, inner) -> None:
        self._inner = inner
        self.steps: list[tuple[int, int, float]] = []   # (tokens, prefill_tokens, seconds) per step_time call
        self.run_seqs: list[int] = []                    # batch size of each fast-forwarded run

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def step_time(self, shape) -> float:
        t = self._inner.step_time(shape)
        self.steps.append((shape.tokens, shape.prefill_tokens, t))
        return t

    def decode_run_times(self, seqs, ctx_sum, steps):
        self.run_seqs.append(seqs)
        return self._inner.decode_run_times(seqs, ctx_sum, steps)


@contextmanager
def spy():
    rec = SimpleNamespace(kv=[], replicas=[], workloads=[], costs=[])
    kv_cls, rep_cls, build_wl, build_cost = (deployment.KVCacheManager, deployment.Replica, runner.build_workload,
                                             deployment.build_cost_model)

    def kv(*a, **k):
        rec.kv.append(kv_cls(*a, **k))
        return rec.kv[-1]

    def replica(*a, **k):
        rec.replicas.append(rep_cls(*a, **k))
        return rec.replicas[-1]

    def workload(*a, **k):
        rec.workloads.append(build_wl(*a, **k))
        return rec.workloads[-1]

    def cost(*a, **k):
        rec.costs.append(CostSpy(build_cost(*a, **k)))
        return rec.costs[-1]

    with patch.object(deployment, "KVCacheManager", kv), patch.object(deployment, "Replica", replica), \
            patch.object(runner, "build_workload", workload), patch.object(deployment, "build_cost_model", cost):
        yield rec


def spied_run(cfg: dict):
    with spy() as rec:
        res = run(cfg)
    assert len(rec.kv) == len(rec.replicas) == len(rec.workloads) == 1
    return res, rec


def base_cfg(workload: dict, *, seed: int = 0, mode: str = "fast", max_model_len: int = 1024, **engine) -> dict:
    return {"model": MODEL, "hardware": {"gpu": "h100"}, "seed": seed,
            "engine": {"max_model_len": max_model_len, **engine},
            "workload": workload, "sim": {"progress": False, "mode": mode}}


def poisson(rate: float, duration: float, input_len, output_len) -> dict:
    return {"type": "poisson", "stages": [{"rate": rate, "duration_s": duration}],
            "input_len": input_len, "output_len": output_len}


def shared_prefix(rate: float, duration: float, *, groups=3, users=4, sys_len=400, q_len=100, out=20) -> dict:
    return {"type": "shared_prefix", "stages": [{"rate": rate, "duration_s": duration}],
            "num_system_prompts": groups, "users_per_system_prompt": users, "system_prompt_len": sys_len,
            "question_len": q_len, "output_len": out}


@lru_cache(maxsize=None)
def util_for_blocks(blocks: int, max_num_batched_tokens: int, max_num_seqs: int) -> float:
    """Smallest gpu_memory_utilization (to 1e-4) that gives at least `blocks` KV blocks."""
    cfg = load_config(base_cfg(poisson(1, 1, 10, 10)))
    cost = runner.build_cost_model(cfg)

    def n(u: float) -> int:
        return plan_memory(cost, u, max_num_batched_tokens, max_num_seqs, BS, strict=False).num_blocks

    lo, hi = 0.0, 1.0
    assert n(hi) >= blocks
    while hi - lo > 1e-4:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if n(mid) >= blocks else (mid, hi)
    return hi


def frame(res) -> pd.DataFrame:
    return res.requests.sort_values("request_id", kind="stable").reset_index(drop=True)


def check_invariants(res, rec) -> pd.DataFrame:
    """Every engine invariant one finished run must satisfy; returns its requests sorted by id."""
    cfg = res.config
    s = res.summary
    df = frame(res)
    specs = list(rec.workloads[0])
    want_ids = np.array([r.request_id for r in specs], dtype=np.int64)

    # no request lost or duplicated
    assert df["request_id"].is_unique
    assert np.array_equal(df["request_id"].to_numpy(), np.sort(want_ids))
    assert s["requests"]["total"] == len(specs)
    assert s["requests"]["completed"] == len(df) == s["requests"]["total"]
    assert s["requests"]["unfinished"] == 0
    # tokens out == tokens asked; prompts are what the workload sent
    by_id = {r.request_id: r for r in specs}
    assert np.array_equal(df["output_tokens"].to_numpy(), [by_id[i].output_tokens for i in df["request_id"]])
    assert np.array_equal(df["input_tokens"].to_numpy(), [by_id[i].input_tokens for i in df["request_id"]])
    assert np.array_equal(df["arrival_s"].to_numpy(), [by_id[i].arrival_s for i in df["request_id"]])
    # time never goes back
    a, sch, ft, fin = (df[c].to_numpy() for c in ("arrival_s", "first_scheduled_s", "first_token_s", "finish_s"))
    assert np.all(a <= sch) and np.all(sch <= ft) and np.all(ft <= fin)
    assert np.all(ft > a) and np.all(np.isfinite(fin))
    multi = df["output_tokens"].to_numpy() > 1
    assert np.all(fin[multi] > ft[multi])
    assert np.all(fin[~multi] == ft[~multi])
    tpot = (fin[multi] - ft[multi]) / (df["output_tokens"].to_numpy()[multi] - 1)
    assert np.all(tpot > 0)
    rep = rec.replicas[0]
    itl = np.frombuffer(rep.steps.itl, dtype=np.float64)
    assert np.all(itl > 0)
    assert np.array_equal(np.frombuffer(rep.steps.itl_weight, dtype=np.int64) > 0, np.ones(len(itl), bool))
    if s["itl_s"]["mean"] is not None:
        assert s["itl_s"]["p50"] > 0 and s["tpot_s"]["p50"] > 0
    # prefix hits: whole blocks, at most prompt - 1, none without prefix caching
    cached = df["cached_tokens"].to_numpy()
    assert np.all(cached % cfg.engine.block_size == 0)
    assert np.all(cached <= df["input_tokens"].to_numpy() - 1)
    if not cfg.engine.enable_prefix_caching:
        assert not cached.any() and s["kv"]["prefix_hit_rate"] == 0
    # preemption bookkeeping
    assert df["preemptions"].sum() == s["preemptions"] == rep.steps.preemptions
    assert (df["recomputed_tokens"] > 0).sum() <= (df["preemptions"] > 0).sum()
    assert s["recomputed_tokens"] == df["recomputed_tokens"].sum()
    # KV blocks never negative, never leaked
    kv = rec.kv[0]
    kv.check_invariants()
    assert kv.num_free_blocks == kv.num_blocks and kv.num_used_blocks == 0
    assert not rep.waiting and not rep.running
    assert 0 < s["kv"]["peak_usage"] <= 1
    assert kv.peak_used_blocks <= kv.num_blocks
    assert s["sim"]["iterations"] == rep.steps.iterations
    assert s["sim"]["simulated_time_s"] == rep.clock
    return df


def assert_same_timestamps(a, b) -> None:
    fa, fb = frame(a), frame(b)
    assert np.array_equal(fa["request_id"], fb["request_id"])
    for col in ("first_scheduled_s", "first_token_s", "finish_s", "preemptions", "cached_tokens",
                "recomputed_tokens", "output_tokens"):
        assert np.array_equal(fa[col].to_numpy(), fb[col].to_numpy()), col


def strip_wall(summary: dict) -> dict:
    s = copy.deepcopy(summary)
    del s["sim"]["wall_time_s"]
    return s


def assert_same_summary(a: dict, b: dict) -> None:
    """Equal summaries but for wall time; floats to 1e-12 relative (aggregates such as busy time are
    summed in a different order when decode runs are folded)."""
    def walk(x, y, path):
        if isinstance(x, dict):
            assert isinstance(y, dict) and x.keys() == y.keys(), path
            for k in x:
                walk(x[k], y[k], f"{path}.{k}")
        elif isinstance(x, float) and isinstance(y, float):
            assert x == pytest.approx(y, rel=1e-12, abs=1e-15), path
        else:
            assert x == y, path
    walk(strip_wall(a), strip_wall(b), "summary")


# ----------------------------------------------------------------------------- hypothesis: invariants

def lengths(max_value: int):
    fixed = st.integers(1, max_value)
    uniform = st.tuples(st.integers(1, max_value), st.integers(1, max_value)).map(
        lambda t: {"dist": "uniform", "low": min(t), "high": max(t)})
    lognormal = st.builds(lambda m, s: {"dist": "lognormal", "mean": m, "sigma": s, "max": max_value},
                          st.floats(5, max_value / 2), st.floats(0.1, 1.2))
    return st.one_of(fixed, uniform, lognormal)


@st.composite
def run_configs(draw) -> dict:
    chunked = draw(st.booleans())
    mnbt = draw(st.sampled_from([16, 64, 256, 1024, 2048]))
    if not chunked:
        mnbt = max(mnbt, 1024)   # the runner refuses a budget below max_model_len without chunking
    mns = draw(st.integers(1, 48))
    engine = {"max_num_seqs": mns, "max_num_batched_tokens": mnbt, "enable_chunked_prefill": chunked,
              "enable_prefix_caching": draw(st.booleans())}
    blocks = draw(st.sampled_from([None, 64, 72, 100, 160]))  # None: plenty of KV; else scarce (preemption)
    if blocks is not None:
        engine["gpu_memory_utilization"] = util_for_blocks(blocks, mnbt, mns)
    rate = draw(st.floats(2.0, 60.0))
    duration = draw(st.floats(0.5, 3.0))
    if draw(st.booleans()):
        wl = poisson(rate, duration, draw(lengths(1000)), draw(lengths(250)))
    else:
        wl = shared_prefix(rate, duration, groups=draw(st.integers(1, 4)), users=draw(st.integers(1, 5)),
                           sys_len=draw(st.integers(0, 600)), q_len=draw(st.integers(1, 300)),
                           out=draw(st.integers(1, 150)))
    return base_cfg(wl, seed=draw(st.integers(0, 2**32 - 1)), **engine)


PREEMPTING = base_cfg(shared_prefix(40.0, 2.0, sys_len=300, q_len=200, out=120), seed=3,
                      max_num_seqs=32, max_num_batched_tokens=256,
                      gpu_memory_utilization=None)  # filled in below (needs the memory plan)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=run_configs())
def test_invariants_and_fast_equals_iteration(cfg):
    fast, rec_f = spied_run(cfg)
    check_invariants(fast, rec_f)
    event(f"preempted={fast.summary['preemptions'] > 0}")
    event(f"prefix hits={fast.summary['kv']['prefix_hit_rate'] > 0}")
    event(f"fast-forwarded={bool(rec_f.costs[0].run_seqs)}")
    it_cfg = copy.deepcopy(cfg)
    it_cfg["sim"]["mode"] = "iteration"
    it, rec_i = spied_run(it_cfg)
    check_invariants(it, rec_i)
    assert_same_timestamps(fast, it)
    assert_same_summary(fast.summary, it.summary)
    # both modes priced the same steps (fast mode merely folds steady decode runs)
    assert fast.summary["sim"]["iterations"] == it.summary["sim"]["iterations"]


def preempting_cfg(mode: str = "fast", prefix: bool = True) -> dict:
    cfg = copy.deepcopy(PREEMPTING)
    cfg["engine"]["gpu_memory_utilization"] = util_for_blocks(80, 256, 32)
    cfg["engine"]["enable_prefix_caching"] = prefix
    cfg["sim"]["mode"] = mode
    return cfg


@pytest.mark.parametrize("prefix", [True, False])
def test_fast_equals_iteration_with_preemption(prefix):
    fast, rec_f = spied_run(preempting_cfg("fast", prefix))
    it, rec_i = spied_run(preempting_cfg("iteration", prefix))
    check_invariants(fast, rec_f)
    check_invariants(it, rec_i)
    assert fast.summary["preemptions"] > 0
    assert (fast.summary["kv"]["prefix_hit_rate"] > 0) == prefix
    assert rec_f.costs[0].run_seqs, "fast mode never fast-forwarded: the comparison proves nothing"
    assert len(rec_f.costs[0].steps) < len(rec_i.costs[0].steps)
    assert_same_timestamps(fast, it)
    assert_same_summary(fast.summary, it.summary)


# ----------------------------------------------------------------------------- determinism

def test_same_seed_same_results_different_seed_different():
    wl = poisson(20.0, 3.0, {"dist": "lognormal", "mean": 300, "sigma": 0.8, "max": 1000},
                 {"dist": "uniform", "low": 1, "high": 200})
    a, b, c = (run(base_cfg(wl, seed=s)) for s in (5, 5, 6))
    pd.testing.assert_frame_equal(a.requests, b.requests)
    assert strip_wall(a.summary) == strip_wall(b.summary)
    assert not a.requests["arrival_s"].equals(c.requests["arrival_s"])
    assert strip_wall(a.summary) != strip_wall(c.summary)


# ----------------------------------------------------------------------------- prefix caching

def test_prefix_caching_lowers_ttft_on_shared_prefix_traffic():
    wl = shared_prefix(15.0, 10.0, groups=3, users=5, sys_len=900, q_len=100, out=30)
    on, rec_on = spied_run(base_cfg(wl, seed=1, max_model_len=2048, enable_prefix_caching=True))
    off, rec_off = spied_run(base_cfg(wl, seed=1, max_model_len=2048, enable_prefix_caching=False))
    check_invariants(on, rec_on)
    check_invariants(off, rec_off)
    assert on.summary["kv"]["prefix_hit_rate"] > 0.5   # 900 of 1000 tokens are shared by 5 users each
    assert off.summary["kv"]["prefix_hit_rate"] == 0
    assert (frame(on)["cached_tokens"] > 0).any() and not (frame(off)["cached_tokens"] > 0).any()
    assert on.summary["ttft_s"]["mean"] < 0.8 * off.summary["ttft_s"]["mean"]
    assert on.summary["ttft_s"]["p50"] < off.summary["ttft_s"]["p50"]


# (prompt_id, prefix_group, prefix_len, input_tokens, expected cached tokens); block size 16.
# Hits: the longest prefix of whole 16-token blocks already seen, capped at input - 1 tokens.
HAND_TRACE = [
    ("A", "g1", 100, 300, 0),      # first occurrence: miss
    ("B", "g1", 100, 200, 96),     # shares the 100-token group prefix: 6 whole blocks
    ("A", "g1", 100, 300, 288),    # same prompt as row 0: 18 full blocks (299 // 16 = 18)
    ("C", None, None, 40, 0),      # new prompt
    ("C", None, None, 40, 32),     # same prompt: cap (40 - 1) // 16 = 2 blocks
    ("D", None, None, 32, 0),      # new
    ("D", None, None, 32, 16),     # exact multiple of the block: cap (32 - 1) // 16 = 1 block
    ("C", None, None, 20, 16),     # a prefix of prompt C: its first block is cached, cap 1 block
    ("E", "g2", 10, 100, 0),       # new group, prefix shorter than a block
    ("F", "g2", 10, 100, 0),       # shares only 10 tokens: no whole block
    ("G", "g1", 100, 120, 96),     # group g1 again: 6 blocks
    ("B", "g1", 100, 200, 192),    # row 1 again: 12 full blocks (199 // 16 = 12)
    ("H", None, None, 15, 0),      # shorter than a block
    ("H", None, None, 15, 0),      # ...never a whole block to hit
]


def test_prefix_hit_rate_matches_hand_computed_trace(tmp_path):
    rows = [{"arrival_time_s": 2.0 * i, "input_tokens": n, "output_tokens": 3, "prompt_id": pid,
             "prefix_group": g if g is not None else "", "prefix_len": pl if pl is not None else ""}
            for i, (pid, g, pl, n, _) in enumerate(HAND_TRACE)]
    path = tmp_path / "hand.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    cfg = base_cfg({"type": "trace", "path": str(path)}, max_model_len=1024, enable_prefix_caching=True)
    res, rec = spied_run(cfg)
    df = check_invariants(res, rec)
    # arrivals spaced so each request finished before the next came, and nothing was evicted
    assert np.all(df["finish_s"].to_numpy()[:-1] < df["arrival_s"].to_numpy()[1:])
    assert res.summary["kv"]["evictions"] == 0
    want = np.array([h for *_, h in HAND_TRACE])
    assert df["cached_tokens"].tolist() == want.tolist()
    expected_rate = want.sum() / sum(n for *_, n, _ in HAND_TRACE)
    assert res.summary["kv"]["prefix_hit_rate"] == pytest.approx(expected_rate, rel=1e-12)
    # the same trace without prefix caching: no hits at all
    off, rec_off = spied_run(base_cfg({"type": "trace", "path": str(path)}, enable_prefix_caching=False))
    check_invariants(off, rec_off)
    assert off.summary["kv"]["prefix_hit_rate"] == 0


# ----------------------------------------------------------------------------- preemption

def test_scarce_kv_preempts_and_every_request_completes():
    res, rec = spied_run(preempting_cfg("fast", prefix=False))
    df = check_invariants(res, rec)
    s = res.summary
    assert rec.kv[0].num_blocks == 80
    assert s["preemptions"] > 0
    assert s["recomputed_tokens"] > 0
    assert s["requests"]["completed"] == s["requests"]["total"] > 0
    assert (df["preemptions"] > 0).sum() > 0
    # a preempted request recomputes at least its prompt (no prefix cache to help it)
    pre = df[df["preemptions"] > 0]
    assert np.all(pre["recomputed_tokens"] >= pre["input_tokens"])
    # the same traffic with plenty of KV never preempts
    roomy = preempting_cfg("fast", prefix=False)
    roomy["engine"]["gpu_memory_utilization"] = 0.9
    assert run(roomy).summary["preemptions"] == 0


# ----------------------------------------------------------------------------- chunked prefill

def test_chunked_prefill_spreads_a_long_prompt_over_steps(tmp_path):
    prompt, budget = 3000, 256
    path = tmp_path / "one.csv"
    pd.DataFrame([{"arrival_time_s": 0.0, "input_tokens": prompt, "output_tokens": 2}]).to_csv(path, index=False)
    wl = {"type": "trace", "path": str(path)}
    res, rec = spied_run(base_cfg(wl, max_model_len=4096, max_num_batched_tokens=budget,
                                  enable_chunked_prefill=True))
    df = check_invariants(res, rec)
    steps = rec.costs[0].steps
    chunks = math.ceil(prompt / budget)
    prefill = [s for s in steps if s[1] > 0]
    assert len(prefill) == chunks
    assert [s[1] for s in prefill] == [budget] * (chunks - 1) + [prompt - budget * (chunks - 1)]
    assert all(tok <= budget for tok, _, _ in steps)
    frontend = rec.costs[0].engine.frontend_latency_s
    ttft = float(df["ttft_s"].iloc[0])
    assert ttft == pytest.approx(sum(t for *_, t in prefill) + frontend, rel=1e-9)
    assert ttft - frontend > max(t for *_, t in prefill)

    # without chunking (and a budget that fits the prompt) the prompt is one step
    whole, rec_w = spied_run(base_cfg(wl, max_model_len=4096, max_num_batched_tokens=4096,
                                      enable_chunked_prefill=False))
    prefill_w = [s for s in rec_w.costs[0].steps if s[1] > 0]
    assert len(prefill_w) == 1 and prefill_w[0][1] == prompt
    assert float(whole.requests["ttft_s"].iloc[0]) == pytest.approx(prefill_w[0][2] + frontend, rel=1e-9)


def test_chunked_prefill_never_exceeds_the_token_budget_under_load():
    budget = 256
    wl = poisson(30.0, 3.0, {"dist": "uniform", "low": 100, "high": 2000}, {"dist": "uniform", "low": 1, "high": 100})
    res, rec = spied_run(base_cfg(wl, seed=2, max_model_len=4096, max_num_batched_tokens=budget, max_num_seqs=64))
    check_invariants(res, rec)
    cost = rec.costs[0]
    assert max(tok for tok, _, _ in cost.steps) == budget     # the budget binds, and is never exceeded
    assert all(seqs <= budget for seqs in cost.run_seqs)
    # mixed steps: prefill chunks share steps with decodes
    assert any(0 < pre < tok for tok, pre, _ in cost.steps)


# ----------------------------------------------------------------------------- summary keys

def test_summary_has_the_documented_keys():
    res = run(base_cfg(poisson(10.0, 2.0, 200, 20)))
    s = res.summary
    assert {"total", "completed"} <= s["requests"].keys()
    for metric in ("ttft_s", "tpot_s", "itl_s", "e2e_s"):
        for k in ("mean", "p50", "p90", "p99"):
            v = s[metric][k]
            assert isinstance(v, float) and math.isfinite(v) and v > 0, (metric, k, v)
        assert s[metric]["p50"] <= s[metric]["p90"] <= s[metric]["p99"]
    for k in ("requests_per_s", "output_tokens_per_s"):
        assert s["throughput"][k] > 0
    assert 0 <= s["kv"]["prefix_hit_rate"] <= 1 and 0 < s["kv"]["peak_usage"] <= 1
    assert isinstance(s["preemptions"], int)
    for k in ("simulated_time_s", "wall_time_s", "iterations"):
        assert s["sim"][k] > 0
    assert s["throughput"]["output_tokens_per_s"] == pytest.approx(
        res.requests["output_tokens"].sum() / (res.requests["finish_s"].max() - res.requests["arrival_s"].min()))


def test_tp_larger_than_a_node_is_refused():
    from sim.errors import DeploymentError

    cfg = {"model": "llama-3.1-70b", "hardware": {"gpu": "h100-sxm-80gb"}, "parallelism": {"tp": 16},
           "workload": {"type": "poisson", "stages": [{"rate": 1, "duration_s": 1}], "input_len": 10, "output_len": 5},
           "sim": {"progress": False}}
    with pytest.raises(DeploymentError, match="tp=16 exceeds the 8 GPUs"):
        run(cfg)


class _NoCohortVLLM(VLLMScheduler):
    """vLLM's policy without the cohort planner: exercises the generic fast-forward path."""

    schedule_cohort = None


@pytest.mark.parametrize("util,prefix", [(0.9, True), (0.2, False), (0.21, True)])
def test_generic_scheduler_fast_forward_equals_iteration(util, prefix):
    """A scheduler without `schedule_cohort` runs exact steps and fast-forwards only steady decode;
    its timestamps must equal the per-iteration loop's, with and without preemption."""
    from sim.registry import REGISTRY

    REGISTRY.add("scheduler", "test-vllm-no-cohort", _NoCohortVLLM, replace=True)
    base = {"model": "llama-2-7b", "hardware": {"gpu": "h100"}, "scheduler": "test-vllm-no-cohort",
            "engine": {"max_num_seqs": 32, "max_num_batched_tokens": 512, "gpu_memory_utilization": util,
                       "enable_prefix_caching": prefix, "max_model_len": 2048},
            "workload": {"type": "shared_prefix", "stages": [{"rate": 12, "duration_s": 20}],
                         "num_system_prompts": 3, "users_per_system_prompt": 4, "system_prompt_len": 200,
                         "question_len": 300, "output_len": 120}, "seed": 4}
    out = {}
    for mode in ("fast", "iteration"):
        cfg = copy.deepcopy(base)
        cfg["sim"] = {"mode": mode, "progress": False}
        out[mode] = run(cfg).requests.sort_values("request_id").reset_index(drop=True)
    for col in ("first_scheduled_s", "first_token_s", "finish_s", "preemptions", "cached_tokens"):
        assert np.array_equal(out["fast"][col].values, out["iteration"][col].values), col
