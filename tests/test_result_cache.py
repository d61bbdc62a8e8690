"""Result caches in front of the engine (policies/result_cache.py) and the deployment's front-end stages.

A 50% exact-match cache halves what the engine serves and, under load, the mean latency; the LRU keeps
the most recently answered prompts (a narrative on a scripted stream, and the c/P hit rate of uniform
draws over P prompts); a trace's hit flag overrides the cache's model; a semantic cache hits at its
rate and pays its lookup on a miss; the stage interface serves, forwards, refuses and runs in order.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import simpy

from experiments.config import load_config
from experiments.deployment import Deployment
from experiments.runner import run
from policies.result_cache import ExactCache, SemanticCache
from sim.engine import RequestLog, drive_arrivals
from sim.errors import ConfigError
from sim.request import FINISHED, REJECTED, Request
from workloads.base import RequestSpec

FRONTEND = 0.0072          # the vllm engine profile's frontend_latency_s, added to every request's times


def config(rate: float, duration: float, **top) -> dict:
    cfg = {"model": "llama-3.1-8b", "hardware": {"gpu": "h100"}, "engine": {"max_model_len": 4096},
           "sim": {"progress": False}, "seed": 5,
           "workload": {"type": "poisson", "stages": [{"rate": rate, "duration_s": duration}],
                        "input_len": {"dist": "lognormal", "mean": 800, "sigma": 0.5, "max": 3000},
                        "output_len": {"dist": "lognormal", "mean": 200, "sigma": 0.5, "max": 1000}}}
    cfg.update(top)
    return cfg


def engine_served(result) -> int:
    return int((result.requests["replica"] >= 0).sum())


# ----------------------------------------------------------------------------- the effect on load

def test_half_hit_rate_halves_the_engine_load_and_lowers_mean_e2e():
    base = config(24, 60)
    plain = run(base)
    cached = run({**copy.deepcopy(base), "result_cache": {"type": "exact", "hit_rate": 0.5, "lookup_s": 0.002}})
    n = plain.summary["requests"]["total"]
    assert cached.summary["requests"]["completed"] == n == engine_served(plain)
    served = engine_served(cached)
    assert abs(served / n - 0.5) < 3 * math.sqrt(0.25 / n), (served, n)          # binomial, 3 sigma
    rc = cached.summary["result_cache"]
    assert rc["lookups"] == n and rc["hits"] == n - served and rc["forwarded"] == served
    assert rc["hit_rate"] == pytest.approx(rc["hits"] / n)
    assert plain.summary["batch"]["busy_fraction"] > 0.8                           # at load
    assert cached.summary["e2e_s"]["mean"] < 0.5 * plain.summary["e2e_s"]["mean"]
    engine = cached.requests[cached.requests["replica"] >= 0]
    total_tokens = plain.requests["input_tokens"].sum() + plain.requests["output_tokens"].sum()
    share = (engine["input_tokens"].sum() + engine["output_tokens"].sum()) / total_tokens
    assert abs(share - 0.5) < 0.05, share                    # the tokens the engine computes halve too
    req = cached.requests
    hits = req[req["result_cache_hit"]]
    assert len(hits) == rc["hits"] and (hits["replica"] == -1).all()
    # a hit is answered at the end of its lookup: TTFT = E2E = lookup (+ the API server's front-end latency)
    assert np.allclose(hits["ttft_s"], 0.002 + FRONTEND) and np.allclose(hits["e2e_s"], 0.002 + FRONTEND)
    assert (hits["output_tokens"] > 0).all()                 # the whole cached answer, at once
    misses = req[~req["result_cache_hit"]]
    assert misses["ttft_s"].min() > 0.002 + FRONTEND                              # a miss pays the lookup too


# ----------------------------------------------------------------------------- the exact cache's LRU

def lookup(cache, prompt, cache_hit=None) -> bool:
    """One lookup through the stage; True for a hit."""
    env = simpy.Environment()
    req = Request(0, 0.0, 10, 5, segments=((prompt, 10),) if prompt is not None else None)
    req.cache_hit = cache_hit
    proc = env.process(cache.enter(env, req))
    env.run()
    assert env.now == pytest.approx(cache.lookup_s)
    return not proc.value


def answered(cache, prompt) -> None:
    req = Request(0, 0.0, 10, 5, segments=((prompt, 10),))
    req.state = FINISHED
    cache.finished(req)


def exact(**options):
    return ExactCache(ExactCache.Options(**options), np.random.default_rng(0))


def test_exact_cache_is_an_lru_of_answered_prompts():
    cache = exact(capacity=2)
    log = []
    log.append(("a", lookup(cache, "a")))          # never answered
    answered(cache, "a")
    answered(cache, "b")
    log.append(("a", lookup(cache, "a")))          # hit, and now the most recent
    answered(cache, "c")                           # evicts b, the least recently used
    log += [("b", lookup(cache, "b")), ("a", lookup(cache, "a")), ("c", lookup(cache, "c")),
            (None, lookup(cache, None))]           # a prompt without identity never hits
    assert log == [("a", False), ("a", True), ("b", False), ("a", True), ("c", True), (None, False)]
    assert cache.summary()["evictions"] == 1 and cache.summary()["entries"] == 2
    rejected = Request(0, 0.0, 10, 5, segments=(("d", 10),))
    rejected.state = REJECTED
    cache.finished(rejected)                       # no answer, nothing cached
    assert not lookup(cache, "d")


def test_trace_flag_overrides_the_hit_model():
    always = exact(hit_rate=1.0)
    never = SemanticCache(SemanticCache.Options(hit_rate=0.0), np.random.default_rng(0))
    assert lookup(always, "x") and not lookup(always, "x", cache_hit=False)
    assert not lookup(never, "x") and lookup(never, "x", cache_hit=True)
    assert always.summary()["trace_flagged"] == 1 and never.summary()["trace_flagged"] == 1


def test_lru_hit_rate_of_uniform_prompts_is_capacity_over_pool():
    """Uniform draws over P prompts (shared_prefix pool), an LRU of c answers: hit rate c / P (independent
    reference model), less the few repeats that arrive while the first answer is still being computed."""
    wl = {"type": "shared_prefix", "stages": [{"rate": 2, "duration_s": 600}], "num_system_prompts": 5,
          "users_per_system_prompt": 10, "system_prompt_len": 200, "question_len": 100, "output_len": 20}
    cfg = config(1, 1, workload=wl, result_cache={"type": "exact", "capacity": 10})
    r = run(cfg)
    rc = r.summary["result_cache"]
    n = rc["lookups"]
    assert abs(rc["hit_rate"] - 10 / 50) < 3 * math.sqrt(0.2 * 0.8 / n) + 0.01, rc
    big = run({**copy.deepcopy(cfg), "result_cache": {"type": "exact", "capacity": 1000}})
    misses = big.summary["result_cache"]["forwarded"]
    assert 50 <= misses <= 55                      # each of the 50 prompts once, plus repeats in flight


# ----------------------------------------------------------------------------- semantic cache

def test_semantic_cache_hits_at_its_rate_and_counts_false_hits():
    r = run(config(4, 120, result_cache={"type": "semantic", "hit_rate": 0.3, "false_hit_rate": 0.1,
                                          "lookup_s": 0.02}))
    rc = r.summary["result_cache"]
    n = rc["lookups"]
    assert abs(rc["hit_rate"] - 0.3) < 3 * math.sqrt(0.21 / n)
    assert abs(rc["false_hits"] - 0.1 * rc["hits"]) < 3 * math.sqrt(0.09 * rc["hits"]) + 1
    hits = r.requests[r.requests["result_cache_hit"]]
    assert np.allclose(hits["e2e_s"], 0.02 + FRONTEND)


# ----------------------------------------------------------------------------- the stage interface

class Delay:
    """Forwards every request after `s` seconds."""

    def __init__(self, name: str, s: float, trace: list) -> None:
        self.name, self.s, self.trace = name, s, trace

    def enter(self, env, req):
        yield env.timeout(self.s)
        self.trace.append((self.name, req.id, env.now))
        return True


class Gate:
    """No waiting (a plain bool): serves even ids, refuses ids divisible by 3 (odd ones), forwards the rest."""

    name = "gate"

    def __init__(self) -> None:
        self.engine_done = []

    def enter(self, env, req):
        if req.id % 2 == 0:
            return False
        if req.id % 3 == 0:
            req.state = REJECTED
            return False
        return True

    def finished(self, req) -> None:
        self.engine_done.append(req.id)

    def summary(self) -> dict:
        return {"seen": len(self.engine_done)}


def test_stages_run_in_order_and_serve_refuse_or_forward():
    cfg = load_config(config(1, 1))
    env, log = simpy.Environment(), RequestLog()
    dep = Deployment(cfg, env, np.random.SeedSequence(0), log)
    trace: list = []
    gate = Gate()
    dep.add_stage(gate)
    dep.add_stage(Delay("first", 0.5, trace), index=0)
    dep.add_stage(Delay("last", 0.25, trace))
    specs = [RequestSpec(i, float(i), 100, 10) for i in range(6)]
    env.process(drive_arrivals(env, specs, dep.route))
    env.run()
    firsts = [(i, t) for n, i, t in trace if n == "first"]
    lasts = [(i, t) for n, i, t in trace if n == "last"]
    assert firsts == [(i, i + 0.5) for i in range(6)]
    assert lasts == [(1, 1.75), (5, 5.75)]                 # only what the gate forwards reaches the last stage
    rec = log.arrays()
    assert sorted(rec["request_id"].tolist()) == [0, 1, 2, 4, 5]          # 3 was refused, not logged
    assert dep.rejected == 1 and dep.stage_served == 4 and dep.outstanding == 0
    by_id = dict(zip(rec["request_id"].tolist(), rec["replica"].tolist()))
    assert [by_id[i] for i in (0, 2, 4)] == [-1, -1, -1] and by_id[1] == by_id[5] == 0
    served_at = dict(zip(rec["request_id"].tolist(), rec["finish_s"].tolist()))
    assert served_at[0] == 0.5 and served_at[4] == 4.5      # served by the gate after the first stage's delay
    assert sorted(gate.engine_done) == [1, 5]


# ----------------------------------------------------------------------------- config errors

@pytest.mark.parametrize("spec, match", [
    ({"type": "lru"}, r"unknown result_cache 'lru'"),
    ({"hit_rate": 0.5}, r"result_cache: 'type' is required"),
    ({"type": "exact", "capacty": 3}, r"result_cache\.capacty: unknown option"),
    ({"type": "semantic"}, r"result_cache\.hit_rate"),
    ({"type": "exact", "hit_rate": 1.5}, r"result_cache\.hit_rate"),
])
def test_bad_result_cache_configs_are_one_line_errors(spec, match):
    with pytest.raises(ConfigError, match=match) as err:
        load_config(config(1, 1, result_cache=spec))
    assert "\n" not in str(err.value)
