"""Multi-model routing by difficulty (policies/cascade.py, the cascade pools of experiments/deployment.py).

Easy requests on a small model lower the mean latency and the dollar cost against an all-large deployment
at the same load; uniform difficulty scores split the traffic by the widths of the tiers' bands; fixed
scores land on their tier (a score equal to a bound belongs to the lower tier); escalation re-sends the
configured share to the next tier, paying both runs, with every request answered exactly once.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest

from experiments.config import load_config
from experiments.runner import run
from policies.cascade import DifficultyCascade
from sim.errors import ConfigError
from sim.request import Request

SMALL = {"name": "small", "model": "llama-3.2-3b", "replicas": 2, "max_difficulty": 0.6}
LARGE = {"name": "large", "model": "llama-3.1-70b", "replicas": 1, "parallelism": {"tp": 4}}


def config(rate: float, duration: float, tiers: list[dict], **cascade) -> dict:
    return {"model": "llama-3.1-70b", "hardware": {"gpu": "h100"}, "engine": {"max_model_len": 4096},
            "sim": {"progress": False}, "seed": 7,
            "workload": {"type": "poisson", "stages": [{"rate": rate, "duration_s": duration}],
                         "input_len": {"dist": "lognormal", "mean": 600, "sigma": 0.5, "max": 3000},
                         "output_len": {"dist": "lognormal", "mean": 150, "sigma": 0.5, "max": 800}},
            "cascade": {"tiers": tiers, **cascade}}


def within(count: int, n: int, p: float) -> bool:
    """`count` of `n` is within 3 binomial sigmas of n p."""
    return abs(count - n * p) <= 3 * math.sqrt(n * p * (1 - p)) + 1


def test_easy_requests_on_a_small_model_cost_less_and_finish_sooner():
    """Same load, same GPU part: two 70B replicas (TP4, 8 GPUs) against a cascade of two 3B replicas for the
    60% easiest requests and one 70B replica (6 GPUs)."""
    all_large = run(config(6, 60, [{**LARGE, "name": "large", "replicas": 2}]))
    cascade = run(config(6, 60, [SMALL, LARGE]))
    n = all_large.summary["requests"]["total"]
    assert cascade.summary["requests"]["completed"] == all_large.summary["requests"]["completed"] == n
    assert cascade.summary["e2e_s"]["mean"] < 0.8 * all_large.summary["e2e_s"]["mean"]
    assert cascade.summary["cascade"]["cost_usd"] < 0.85 * all_large.summary["cascade"]["cost_usd"]
    tiers = cascade.summary["cascade"]["tiers"]
    assert tiers["small"]["gpus"] == 2 and tiers["large"]["gpus"] == 4
    assert tiers["small"]["e2e_s"]["mean"] < 0.5 * tiers["large"]["e2e_s"]["mean"]
    # cost = GPUs x run time x price, per tier
    sim_time = cascade.summary["sim"]["simulated_time_s"]
    assert tiers["large"]["cost_usd"] == pytest.approx(4 * sim_time / 3600 * tiers["large"]["usd_per_gpu_hour"])
    models = cascade.requests["model"]
    assert set(models) == {"llama-3.2-3b", "llama-3.1-70b"}
    assert (models == "llama-3.2-3b").sum() == tiers["small"]["answered"] == tiers["small"]["routed"]


def test_uniform_difficulty_splits_traffic_by_band_width():
    tiers = [{**SMALL, "replicas": 1, "max_difficulty": 0.2},
             {"name": "medium", "model": "llama-3.1-8b", "max_difficulty": 0.7}, {**LARGE}]
    r = run(config(6, 60, tiers))
    n = r.summary["requests"]["total"]
    got = {k: v["routed"] for k, v in r.summary["cascade"]["tiers"].items()}
    assert sum(got.values()) == n
    for name, share in (("small", 0.2), ("medium", 0.5), ("large", 0.3)):
        assert within(got[name], n, share), (name, got, n)
    fixed = run(config(2, 20, tiers, default_difficulty=0.7))     # on the medium tier's bound: medium
    assert {k: v["routed"] for k, v in fixed.summary["cascade"]["tiers"].items()} == \
        {"small": 0, "medium": fixed.summary["requests"]["total"], "large": 0}


def test_escalation_resends_its_share_and_pays_both_runs():
    base = config(4, 60, [SMALL, LARGE])
    esc = run(config(4, 60, [{**SMALL, "escalate_fraction": 0.4}, LARGE]))
    plain = run(base)
    n = esc.summary["requests"]["total"]
    small, large = esc.summary["cascade"]["tiers"]["small"], esc.summary["cascade"]["tiers"]["large"]
    assert within(small["escalated"], small["routed"], 0.4)
    assert small["answered"] == small["routed"] - small["escalated"]
    assert large["answered"] == large["routed"] + small["escalated"]
    req = esc.requests
    assert len(req) == n and req["request_id"].is_unique                 # every request answered exactly once
    # an escalated request waited for its small-model answer, then ran on the large model
    assert large["e2e_s"]["mean"] > plain.summary["cascade"]["tiers"]["large"]["e2e_s"]["mean"]
    # both runs are paid: the small tier computes every attempt in full, the large tier the escalated ones too
    p_small, p_large = plain.summary["cascade"]["tiers"]["small"], plain.summary["cascade"]["tiers"]["large"]
    assert small["tokens"] / small["routed"] == pytest.approx(p_small["tokens"] / p_small["routed"], rel=0.15)
    per_request = p_large["tokens"] / p_large["answered"]
    assert large["tokens"] == pytest.approx(per_request * large["answered"], rel=0.15)
    assert large["tokens"] > 1.3 * p_large["tokens"]


def test_difficulty_bands_and_escalation_draws():
    c = DifficultyCascade([0.3, 0.8, None], [0.0, 0.0, 0.0], None, np.random.default_rng(0))
    assert [c.tier_of(d) for d in (0.0, 0.3, 0.30001, 0.8, 0.9, 1.0)] == [0, 0, 1, 1, 2, 2]
    req = Request(0, 0.0, 10, 5)
    req.difficulty = 0.5
    assert c.path(req) == [1]
    always = DifficultyCascade([0.3, 0.8, None], [0.999999, 0.999999, 0.0], 0.1, np.random.default_rng(0))
    r = Request(1, 0.0, 10, 5)
    assert always.path(r) == [0, 1, 2] and r.difficulty == 0.1          # the default is set on the request


@pytest.mark.parametrize("cascade, match", [
    ({"tiers": [{"name": "a", "max_difficulty": 0.5}, {"name": "b", "max_difficulty": 0.4}]}, "must increase"),
    ({"tiers": [{"name": "a"}, {"name": "b"}]}, "every tier but the last needs max_difficulty"),
    ({"tiers": [{"name": "a", "max_difficulty": 0.5}, {"name": "a"}]}, "names must be unique"),
    ({"tiers": [{"name": "a", "escalate_fraction": 0.2}]}, "no next tier"),
    ({"tiers": [{"name": "a", "max_difficulty": 1.5}]}, r"cascade\.tiers\.0\.max_difficulty"),
])
def test_bad_cascades_are_one_line_errors(cascade, match):
    cfg = config(1, 1, [])
    cfg["cascade"] = cascade
    with pytest.raises(ConfigError, match=match) as err:
        load_config(cfg)
    assert "\n" not in str(err.value)


def test_cascade_with_a_deployment_is_refused():
    cfg = config(1, 1, [SMALL, LARGE])
    cfg["deployment"] = {"replicas": 2}
    with pytest.raises(ConfigError, match="cascade: give the replicas and parallelism of each tier"):
        run(copy.deepcopy(cfg))
    cfg = config(1, 1, [SMALL, LARGE])
    cfg["parallelism"] = {"tp": 4}                     # would be silently ignored: the tiers carry their own
    with pytest.raises(ConfigError, match="top-level parallelism"):
        run(copy.deepcopy(cfg))
    cfg = config(1, 1, [SMALL, {**LARGE, "parallelism": {"tp": 4, "sp": 2}}])
    with pytest.raises(ConfigError, match="parallelism.sp"):
        run(copy.deepcopy(cfg))


def test_a_tier_keeps_the_runs_model_options_and_its_own_expert_parallelism():
    moe = {"name": "moe", "model": "mixtral-8x7b", "replicas": 1, "parallelism": {"tp": 4, "ep": 4}}
    cfg = config(2, 10, [SMALL, moe])
    cfg["model"] = {"name": "llama-3.1-70b", "sparsity": "2:4"}
    cfg["hardware"] = {"gpu": "v100"}                   # no sparse tensor cores: the tiers must refuse 2:4 too
    with pytest.raises(ConfigError, match="sparsity"):
        run(copy.deepcopy(cfg))
    ep = run(config(2, 10, [SMALL, moe])).summary
    tp = run(config(2, 10, [SMALL, {**moe, "parallelism": {"tp": 4}}])).summary
    assert ep["cascade"]["tiers"]["moe"]["answered"] > 0
    assert ep["e2e_s"]["mean"] != tp["e2e_s"]["mean"]  # the tier's ep reaches its cost model


def test_trace_columns_carry_difficulty_and_cache_hit_flags(tmp_path):
    """A trace's `difficulty` column picks the tier and its `cache_hit` column overrides the result cache;
    empty cells fall back to the cascade's default and the cache's own model; bad cells are one-line errors."""
    rows = ["arrival_time_s,input_tokens,output_tokens,difficulty,cache_hit"]
    for i in range(40):
        rows.append(f"{i * 0.5},300,20,{0.1 if i % 2 else 0.9},{'true' if i % 4 == 0 else ''}")
    path = tmp_path / "t.csv"
    path.write_text("\n".join(rows) + "\n")
    cfg = config(1, 1, [SMALL, LARGE], default_difficulty=0.9)
    cfg["workload"] = {"type": "trace", "path": str(path)}
    cfg["result_cache"] = {"type": "exact", "capacity": 1}   # unique prompts: only the flags hit
    res = run(cfg)
    df = res.requests.sort_values("request_id")
    hit = df["result_cache_hit"].to_numpy()
    assert hit.sum() == 10 and hit[::4].all()                      # rows 0, 4, 8, ... flagged as hits
    served = df[~df["result_cache_hit"]]
    odd = served["request_id"].to_numpy() % 2 == 1
    assert (served["model"].to_numpy()[odd] == "llama-3.2-3b").all()
    assert (served["model"].to_numpy()[~odd] == "llama-3.1-70b").all()
    path.write_text("arrival_time_s,input_tokens,output_tokens,difficulty\n0,10,5,1.5\n")
    with pytest.raises(Exception, match="difficulty.*outside"):
        run(cfg)
