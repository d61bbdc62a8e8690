"""KV token eviction (StreamingLLM sinks + window, H2O heavy hitters): each sequence holds at most its budget of
KV, so more sequences fit, long sequences stop growing, and a KV cache smaller than max_model_len can still serve
it; the engine stays exact (fast-forward == per-iteration) and leaks no block."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from experiments.runner import run
from policies.kv_eviction import make_kv_eviction, retained_tokens
from sim.errors import ConfigError, DeploymentError


def cfg(mode: str = "fast", eviction: dict | None = None, util: float = 0.23, rate: float = 6.0, **engine) -> dict:
    return {"model": "llama-3.1-8b", "hardware": {"gpu": "h100"}, "seed": 3,
            "engine": {"max_num_seqs": 256, "max_num_batched_tokens": 8192, "max_model_len": 8192,
                       "gpu_memory_utilization": util, **engine},
            "kv_eviction": eviction,
            "workload": {"type": "poisson", "stages": [{"rate": rate, "duration_s": 20}],
                         "input_len": {"dist": "uniform", "low": 1500, "high": 3000},
                         "output_len": {"dist": "uniform", "low": 200, "high": 1200}},
            "sim": {"progress": False, "mode": mode}}


STREAM = {"type": "streaming_llm", "sink_tokens": 4, "window_tokens": 508}


def test_budgets_as_the_papers_define_them():
    s = make_kv_eviction(STREAM)
    assert s.cap(SimpleNamespace(prompt_len=10_000)) == 512
    h = make_kv_eviction({"type": "h2o", "retained_fraction": 0.2})
    assert h.cap(SimpleNamespace(prompt_len=10_000)) == 2000
    assert h.cap(SimpleNamespace(prompt_len=100)) == 64          # the floor for short prompts
    assert retained_tokens(None, 5000) == 5000 and retained_tokens(s, 5000) == 512 and retained_tokens(s, 100) == 100


def test_bad_eviction_config_is_one_line():
    with pytest.raises(ConfigError, match="kv_eviction"):
        make_kv_eviction({"window_tokens": 10})
    with pytest.raises(ConfigError, match="kv_eviction.window"):
        make_kv_eviction({"type": "streaming_llm", "window": 10})


def test_eviction_fits_more_sequences_and_is_exact():
    # ~11k tokens of KV (0.23 of an H100 after 16 GB of weights): without eviction long sequences preempt each other
    base = run(cfg())
    fast = run(cfg(eviction=STREAM))
    slow = run(cfg(mode="iteration", eviction=STREAM))
    for r in (base, fast):
        s = r.summary["requests"]
        assert s["completed"] == s["total"] > 80
        assert (r.requests["output_tokens"] > 0).all()
    a = fast.requests.sort_values("request_id")
    b = slow.requests.sort_values("request_id")
    for col in ("first_token_s", "finish_s", "preemptions"):
        assert np.array_equal(a[col].values, b[col].values), col
    assert base.summary["preemptions"] > 20
    assert fast.summary["preemptions"] == 0              # 512 tokens each: a hundred sequences fit
    assert fast.summary["e2e_s"]["mean"] < 0.8 * base.summary["e2e_s"]["mean"]


def test_h2o_fraction_is_between_none_and_streaming():
    h2o = run(cfg(eviction={"type": "h2o", "retained_fraction": 0.25}))
    base = run(cfg())
    assert h2o.summary["requests"]["completed"] == h2o.summary["requests"]["total"]
    assert h2o.summary["preemptions"] < base.summary["preemptions"]


def test_a_cache_smaller_than_max_model_len_serves_with_a_window():
    # 0.218 of an H100 leaves ~3.6k tokens of KV: refused for max_model_len 64k, served when each sequence keeps 512
    with pytest.raises(DeploymentError, match="max_model_len"):
        run(cfg(util=0.218, rate=1.0, max_model_len=65536))
    r = run(cfg(util=0.218, rate=1.0, max_model_len=65536, eviction=STREAM))
    assert r.summary["requests"]["completed"] == r.summary["requests"]["total"]
