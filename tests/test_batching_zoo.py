"""The batching schedulers (static, dynamic, orca, vllm-v0, vllm, sarathi) and the replica policies around them.

Each scheduler must stay exact (fast-forward == per-iteration timestamps), lose no request and leak
no KV block, and show the effect the literature attributes to it, in a seeded scenario with an
asserted margin: continuous batching beats static batching on throughput and median latency
when output lengths vary; chunked prefill (sarathi, vllm) cuts the p99 inter-token latency that
prefill-priority steps (vllm-v0) inflict on decodes when long prompts arrive; paged KV runs more
sequences at once than contiguous reservation; priority and EDF ordering raise the urgent class's
SLO attainment; admission control counts what it refuses.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest

from experiments.runner import run
from sim.errors import ConfigError

SCHEDULERS = ["vllm", "orca", "sarathi", "vllm-v0", "static", "dynamic"]


def cfg_for(scheduler: str, *, mode: str = "fast", rate: float = 8.0, duration: float = 20.0, seed: int = 1,
            engine: dict | None = None, **top) -> dict:
    base = {"model": "llama-3.1-8b", "hardware": {"gpu": "h100"}, "scheduler": scheduler, "seed": seed,
            "engine": {"max_num_seqs": 64, "max_num_batched_tokens": 4096, "max_model_len": 4096, **(engine or {})},
            "workload": {"type": "poisson", "stages": [{"rate": rate, "duration_s": duration}],
                         "input_len": {"dist": "lognormal", "mean": 600, "sigma": 0.8, "max": 3000},
                         "output_len": {"dist": "lognormal", "mean": 150, "sigma": 0.8, "max": 800}},
            "sim": {"progress": False, "mode": mode}}
    base.update(top)
    return base


def requests_by_id(result):
    return result.requests.sort_values("request_id").reset_index(drop=True)


def assert_complete(result) -> None:
    s = result.summary["requests"]
    assert s["completed"] + s.get("rejected", 0) == s["total"] > 0
    assert (result.requests["output_tokens"] > 0).all()
    assert (result.requests["finish_s"] >= result.requests["first_token_s"]).all()
    assert (result.requests["first_token_s"] > result.requests["arrival_s"]).all()


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_every_scheduler_completes_everything_and_fast_equals_iteration(scheduler):
    # scarce KV (utilisation 0.225 of an H100 leaves ~ 13k tokens) forces preemptions in the iteration-level ones
    engine = {"gpu_memory_utilization": 0.225}
    fast = run(cfg_for(scheduler, engine=engine, rate=20))
    it = run(cfg_for(scheduler, engine=engine, rate=20, mode="iteration"))
    assert_complete(fast)
    a, b = requests_by_id(fast), requests_by_id(it)
    for col in ("first_scheduled_s", "first_token_s", "finish_s", "preemptions", "output_tokens"):
        assert np.array_equal(a[col].values, b[col].values), (scheduler, col)
    assert fast.summary["sim"]["iterations"] == it.summary["sim"]["iterations"]


def test_scarce_kv_preempts_in_the_zoo():
    """The equivalence test above is only meaningful if its scenario preempts."""
    for s in ("vllm", "orca", "sarathi", "vllm-v0"):
        r = run(cfg_for(s, engine={"gpu_memory_utilization": 0.225}, rate=20))
        assert r.summary["preemptions"] > 0, s


def test_continuous_batching_beats_static_on_throughput_and_median_latency():
    """Variable output lengths: static batching pads to the longest member and nobody joins a running batch."""
    kw = {"rate": 12.0, "duration": 40.0, "seed": 2}
    cont = run(cfg_for("vllm", **kw))
    static = run(cfg_for("static", scheduler_options={"max_batch_size": 32, "max_wait_s": 0.5}, **kw))
    dyn = run(cfg_for("dynamic", scheduler_options={"max_batch_size": 32, "max_wait_s": 0.5}, **kw))
    for r in (cont, static, dyn):
        assert_complete(r)
    e2e = {k: r.summary["e2e_s"]["p50"] for k, r in (("vllm", cont), ("static", static), ("dynamic", dyn))}
    thr = {k: r.summary["throughput"]["output_tokens_per_s"] for k, r in (("vllm", cont), ("static", static),
                                                                          ("dynamic", dyn))}
    assert e2e["static"] > 2.0 * e2e["vllm"], e2e
    assert e2e["dynamic"] > 1.5 * e2e["vllm"], e2e
    # padding costs static batching more than dynamic batching
    assert static.summary["sim"]["iterations"] >= dyn.summary["sim"]["iterations"]
    assert e2e["static"] >= e2e["dynamic"]
    assert thr["vllm"] >= thr["static"], thr


def test_static_batch_waits_for_its_timeout_when_not_full():
    cfg = cfg_for("static", rate=0.5, duration=10, scheduler_options={"max_batch_size": 8, "max_wait_s": 2.0})
    r = run(cfg)
    assert_complete(r)
    waits = r.requests["first_scheduled_s"] - r.requests["arrival_s"]
    # a lone request at 0.5 req/s is scheduled when its 2 s wait runs out (or when a batch it joined did)
    assert waits.max() >= 2.0 - 1e-9
    assert waits.max() < 2.0 + 30.0


def test_chunked_prefill_lowers_p99_itl_versus_prefill_priority_steps():
    """Long prompts arriving among decodes: vllm-v0 stops every decode for each whole prompt."""
    wl = {"type": "poisson", "stages": [{"rate": 4.0, "duration_s": 60}],
          "input_len": {"dist": "uniform", "low": 2000, "high": 4000},
          "output_len": {"dist": "uniform", "low": 200, "high": 400}}
    out = {}
    for s in ("vllm-v0", "vllm", "sarathi"):
        cfg = cfg_for(s, engine={"max_num_batched_tokens": 8192, "max_model_len": 8192})
        cfg["workload"] = wl
        if s == "vllm":
            cfg["engine"]["max_num_batched_tokens"] = 512
        out[s] = run(cfg)
        assert_complete(out[s])
    p99 = {k: r.summary["itl_s"]["p99"] for k, r in out.items()}
    assert p99["sarathi"] < 0.5 * p99["vllm-v0"], p99
    assert p99["vllm"] < 0.5 * p99["vllm-v0"], p99


def test_paged_kv_runs_more_sequences_at_once_than_contiguous():
    engine = {"gpu_memory_utilization": 0.3, "max_model_len": 8192, "max_num_seqs": 256}
    paged = run(cfg_for("vllm", engine=engine, rate=20, kv_allocation="paged"))
    contig = run(cfg_for("vllm", engine=engine, rate=20, kv_allocation="contiguous"))
    assert_complete(paged)
    assert_complete(contig)
    assert paged.summary["batch"]["mean_running"] > 2.0 * contig.summary["batch"]["mean_running"]
    assert contig.summary["kv"]["prefix_hit_rate"] == 0.0
    assert paged.summary["e2e_s"]["p50"] < contig.summary["e2e_s"]["p50"]


@pytest.mark.parametrize("ordering", ["priority", "edf"])
def test_urgent_class_meets_its_slo_more_often_when_ordered(ordering):
    """Overload, two classes: interactive (priority 0, TTFT SLO 1 s) and batch (priority 1, SLO 30 s)."""
    cfg = cfg_for("vllm", rate=30, duration=30, engine={"max_num_seqs": 32})
    cfg["workload"]["classes"] = [
        {"tenant": "interactive", "priority": 0, "weight": 1, "slo_ttft_s": 1.0},
        {"tenant": "batch", "priority": 1, "weight": 3, "slo_ttft_s": 30.0}]
    fcfs = run(cfg)
    ordered = run({**copy.deepcopy(cfg), "ordering": ordering})
    a = fcfs.summary["classes"]["interactive"]["attainment"]["ttft"]
    b = ordered.summary["classes"]["interactive"]["attainment"]["ttft"]
    assert b > a + 0.2, (a, b)


def test_fair_ordering_equalises_tenants_under_overload():
    cfg = cfg_for("vllm", rate=30, duration=30, engine={"max_num_seqs": 32})
    cfg["workload"]["classes"] = [{"tenant": "heavy", "weight": 4}, {"tenant": "light", "weight": 1}]
    fcfs = run(cfg)
    fair = run({**copy.deepcopy(cfg), "ordering": "fair"})
    med = {n: r.summary["classes"]["light"]["ttft_s"]["p50"] for n, r in (("fcfs", fcfs), ("fair", fair))}
    assert med["fair"] < 0.5 * med["fcfs"], med


def test_bounded_queue_rejects_and_counts():
    cfg = cfg_for("vllm", rate=40, duration=20, engine={"max_num_seqs": 16},
                  admission={"type": "bounded_queue", "max_queue": 20})
    r = run(cfg)
    s = r.summary["requests"]
    assert s["rejected"] > 0
    assert s["completed"] + s["rejected"] == s["total"]
    assert s["unfinished"] == 0


def test_bad_scheduler_option_is_one_line():
    with pytest.raises(ConfigError, match=r"scheduler_options.max_bach_size.*max_batch_size"):
        run(cfg_for("static", scheduler_options={"max_bach_size": 3}))
    with pytest.raises(ConfigError, match="takes no options"):
        run(cfg_for("vllm", scheduler_options={"x": 1}))


def test_catalog_policies_lists_every_kind_with_options():
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "experiments.cli", "catalog", "policies", "--json"],
                         capture_output=True, text=True, check=True)
    rows = json.loads(out.stdout)
    names = {(r["kind"], r["name"]) for r in rows}
    for kind, name in [("scheduler", "static"), ("scheduler", "dynamic"), ("scheduler", "orca"),
                       ("scheduler", "vllm-v0"), ("scheduler", "vllm"), ("scheduler", "sarathi"),
                       ("ordering", "fcfs"), ("ordering", "sjf"), ("ordering", "priority"), ("ordering", "edf"),
                       ("ordering", "fair"), ("preemption", "recompute"), ("preemption", "swap"),
                       ("victim", "newest"), ("victim", "lowest_priority"), ("victim", "largest_kv"),
                       ("admission", "bounded_queue"), ("admission", "token_bucket"), ("admission", "slo_feasible"),
                       ("kv_allocation", "paged"), ("kv_allocation", "contiguous"),
                       ("speculative", "draft_model"), ("speculative", "ngram"), ("speculative", "mtp"),
                       ("router", "prefix_affinity"), ("router", "round_robin")]:
        assert (kind, name) in names, (kind, name)
    static = next(r for r in rows if r["name"] == "static")
    assert static["options"]["max_batch_size"]["default"] == 32 and static["config_key"] == "scheduler"
