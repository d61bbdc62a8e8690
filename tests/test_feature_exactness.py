"""Fast-forward == per-iteration, bit for bit, with each feature that changes how steps are priced or when a
replica sees a request: sequence parallelism (a wrapped cost model), expert parallelism, KV eviction, offload,
front-end stages that hold a request (result-cache lookups, an async encoder pool), inline encoding, and a
cascade. Every timestamp of every request must agree exactly between the two modes."""
from __future__ import annotations

import numpy as np
import pytest

from experiments.runner import run

BASE = {"model": "llama-3.1-8b", "hardware": {"gpu": "h100"}, "seed": 5,
        "engine": {"max_model_len": 8192, "max_num_seqs": 64},
        "workload": {"type": "poisson", "stages": [{"rate": 6, "duration_s": 15}],
                     "input_len": {"dist": "uniform", "low": 200, "high": 3000},
                     "output_len": {"dist": "uniform", "low": 20, "high": 400}}}

CASES = {
    "sequence parallel (ring)": {"parallelism": {"tp": 1, "sp": 4}},
    "sequence parallel (ulysses)": {"parallelism": {"tp": 2, "sp": 2, "sp_type": "ulysses"}},
    "expert parallel, skewed": {"model": "mixtral-8x7b", "parallelism": {"tp": 4, "ep": 4, "expert_load_skew": 1.3}},
    "streaming eviction": {"kv_eviction": {"type": "streaming_llm", "window_tokens": 508},
                           "engine": {"max_model_len": 8192, "max_num_seqs": 64, "gpu_memory_utilization": 0.23}},
    "h2o eviction": {"kv_eviction": {"type": "h2o", "retained_fraction": 0.2},
                     "engine": {"max_model_len": 8192, "max_num_seqs": 64, "gpu_memory_utilization": 0.23}},
    "result cache with a lookup": {"result_cache": {"type": "semantic", "hit_rate": 0.3, "lookup_s": 0.013}},
    "async encoder pool": {"multimodal": {"mode": "async"},
                           "workload": {**BASE["workload"], "images": {"distinct_images": 30}}},
    "inline encoder": {"multimodal": {"mode": "inline"},
                       "workload": {**BASE["workload"], "images": {"distinct_images": 30}}},
    "cascade": {"cascade": {"tiers": [{"name": "small", "model": "llama-3.2-1b", "max_difficulty": 0.5},
                                      {"name": "large", "model": "llama-3.1-8b"}]}},
    "disaggregated pools": {"pools": {"prefill": {"replicas": 1}, "decode": {"replicas": 1}}},
    "cascade with escalation": {"cascade": {"tiers": [
        {"name": "small", "model": "llama-3.2-1b", "max_difficulty": 0.5, "escalate_fraction": 0.5},
        {"name": "large", "model": "llama-3.1-8b"}]}},
    "least_kv_usage router": {"deployment": {"replicas": 2}, "router": "least_kv_usage",
                              "workload": {**BASE["workload"], "stages": [{"rate": 12, "duration_s": 15}]}},
    "prefix_affinity with evictions": {
        "deployment": {"replicas": 2}, "router": "prefix_affinity",
        "engine": {"max_model_len": 8192, "max_num_seqs": 64, "gpu_memory_utilization": 0.23},
        "workload": {"type": "shared_prefix", "stages": [{"rate": 10, "duration_s": 15}], "num_system_prompts": 40,
                     "users_per_system_prompt": 5, "system_prompt_len": 2000, "question_len": 200,
                     "output_len": 200}},
    "kv_usage autoscaler": {"deployment": {"replicas": 1},
                            "autoscaling": {"policy": "kv_usage", "policy_options": {"target": 0.3},
                                            "min_replicas": 1, "max_replicas": 3, "provisioning_delay_s": 5,
                                            "interval_s": 2},
                            "workload": {**BASE["workload"], "stages": [{"rate": 12, "duration_s": 15}]}},
    "weight offload": {"model": "opt-6.7b", "hardware": {"gpu": "t4"}, "engine": {"max_model_len": 2048},
                       "offload": {"weights_gpu": 0.5, "weights_cpu": 0.5},
                       "workload": {"type": "poisson", "stages": [{"rate": 0.3, "duration_s": 20}],
                                    "input_len": 200, "output_len": 40}},
}


@pytest.mark.parametrize("case", list(CASES))
def test_fast_forward_equals_per_iteration(case):
    cfg = {**BASE, **CASES[case]}
    fast = run({**cfg, "sim": {"progress": False, "mode": "fast"}})
    slow = run({**cfg, "sim": {"progress": False, "mode": "iteration"}})
    a = fast.requests.sort_values("request_id").reset_index(drop=True)
    b = slow.requests.sort_values("request_id").reset_index(drop=True)
    assert len(a) == len(b) > 5
    for col in ("first_scheduled_s", "first_token_s", "finish_s", "output_tokens", "preemptions", "replica"):
        assert np.array_equal(a[col].to_numpy(), b[col].to_numpy()), (case, col)
    assert fast.summary["sim"]["iterations"] == slow.summary["sim"]["iterations"]
