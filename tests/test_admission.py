"""Admission control (policies/admission.py): a bounded queue, a token bucket checked against its closed
form on a long Poisson stream, and SLO-feasibility on a real cost model (llama-3.1-8b on an H100)."""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from policies.admission import SLOFeasible, make_admission
from sim.cost import BatchShape, CostModel
from sim.engine import EngineConfig
from sim.errors import ConfigError
from sim.hardware import get_gpu
from sim.models import get_model
from sim.request import Request

COST = CostModel(get_model("llama-3.1-8b"), get_gpu("h100-sxm-80gb"))


@dataclass
class FakeReplica:
    waiting: deque = field(default_factory=deque)
    cost: Any = COST
    engine: EngineConfig = field(default_factory=EngineConfig)


class CountingCost:
    """The real cost model, counting how often it is asked."""

    def __init__(self, cost: CostModel) -> None:
        self.cost, self.calls = cost, 0

    def step_time(self, shape: BatchShape) -> float:
        self.calls += 1
        return self.cost.step_time(shape)


def req(rid: int, arrival: float = 0.0, prompt: int = 1000, output: int = 100, **kw) -> Request:
    return Request(rid, arrival, prompt, output, **kw)


def build(spec: dict | None):
    return make_admission(spec, np.random.default_rng(0))


def test_none_admits_everything():
    for spec in (None, {"type": "none"}):
        adm = build(spec)
        rep = FakeReplica(waiting=deque(req(i) for i in range(10_000)))
        assert adm.admit(req(-1), rep, 0.0) is True


def test_bounded_queue_rejects_the_request_after_max():
    adm = build({"type": "bounded_queue", "max_queue": 3})
    rep = FakeReplica()
    log = []
    for i in range(5):
        ok = adm.admit(req(i), rep, float(i))
        log.append(ok)
        if ok:
            rep.waiting.append(req(i))
    assert log == [True, True, True, False, False]
    rep.waiting.popleft()                          # one is scheduled: room for one more
    assert adm.admit(req(5), rep, 5.0) is True
    assert build({"type": "bounded_queue", "max_queue": 0}).admit(req(0), FakeReplica(), 0.0) is False


def test_token_bucket_burst_then_refill():
    adm = build({"type": "token_bucket", "rate": 10, "burst": 20})
    rep = FakeReplica()
    at_zero = [adm.admit(req(i), rep, 0.0) for i in range(25)]
    assert at_zero == [True] * 20 + [False] * 5
    assert adm.admit(req(25), rep, 0.05) is False          # half a token back
    assert adm.admit(req(26), rep, 0.1) is True            # one token back (0.1 s x 10/s)
    assert adm.admit(req(27), rep, 0.1) is False
    assert [adm.admit(req(28 + i), rep, 100.0) for i in range(21)] == [True] * 20 + [False]   # capped at burst


@pytest.mark.parametrize("unit", ["requests", "tokens"])
def test_token_bucket_admits_burst_plus_rate_times_duration_over_a_long_poisson_stream(unit):
    # offered 3x the bucket's rate: the bucket is empty at almost every arrival, so the admitted count is
    # burst + rate x T (closed form; the few units wasted when it overflows or left in it at the end are tiny)
    lam, per_req, T = 30.0, (110 if unit == "tokens" else 1), 3000.0
    rate, burst = 10.0 * per_req, 50.0 * per_req
    adm = build({"type": "token_bucket", "rate": rate, "burst": burst, "unit": unit})
    times = np.cumsum(np.random.default_rng(11).exponential(1 / lam, int(lam * T * 1.1)))
    times = times[times < T]
    rep = FakeReplica()
    admitted = sum(adm.admit(req(i, t, prompt=100, output=10), rep, float(t)) for i, t in enumerate(times))
    expected = (burst + rate * T) / per_req
    assert admitted <= expected + 1e-9                       # it can never exceed the tokens it was given
    assert admitted == pytest.approx(expected, rel=0.02)
    assert admitted < 0.4 * len(times)                       # and it did reject the rest


def test_token_bucket_under_its_rate_admits_all_but_a_few():
    adm = build({"type": "token_bucket", "rate": 10, "burst": 20})
    times = np.cumsum(np.random.default_rng(5).exponential(1 / 5.0, 20_000))
    admitted = sum(adm.admit(req(i, t), FakeReplica(), float(t)) for i, t in enumerate(times))
    assert admitted >= 0.999 * len(times)


def test_token_bucket_in_tokens_never_admits_a_request_bigger_than_the_burst():
    adm = build({"type": "token_bucket", "rate": 1000, "burst": 2000, "unit": "tokens"})
    rep = FakeReplica()
    assert [adm.admit(req(i, prompt=400, output=100), rep, 0.0) for i in range(5)] == [True] * 4 + [False]
    assert adm.admit(req(9, prompt=2000, output=1), rep, 1e6) is False
    assert adm.admit(req(10, prompt=1900, output=100), rep, 1e6) is True


def _slo(**options) -> SLOFeasible:
    return build({"type": "slo_feasible", **options})


def test_slo_feasible_prediction_is_queued_prefill_tokens_at_the_full_chunk_rate():
    adm = _slo()
    chunk = EngineConfig().max_num_batched_tokens
    full_step = COST.step_time(BatchShape.prefill(1, chunk))
    queue = deque([req(0, prompt=chunk), req(1, prompt=chunk // 2)])
    partly = req(2, prompt=chunk)
    partly.num_computed = chunk // 2            # half computed before a preemption? count only what is left
    queue.append(partly)
    rep = FakeReplica(waiting=queue)
    assert adm.predicted_ttft(req(3, prompt=chunk), rep) == pytest.approx(3 * full_step, rel=1e-12)


def test_slo_feasible_rejects_behind_a_long_queue_and_admits_behind_a_short_one():
    adm = _slo()
    per_token = COST.step_time(BatchShape.prefill(1, 8192)) / 8192
    assert 5e-6 < per_token < 2e-4                   # sanity: an 8B model prefills ~10^4..10^5 tokens/s on an H100
    short = FakeReplica(waiting=deque(req(i) for i in range(2)))
    long = FakeReplica(waiting=deque(req(i) for i in range(60)))
    new = req(99, slo_ttft_s=0.5)
    assert adm.predicted_ttft(new, short) < 0.5 < adm.predicted_ttft(new, long)
    assert adm.admit(new, short, 0.0) is True
    assert adm.admit(new, long, 0.0) is False
    # the boundary sits where the queue's prefill time crosses the SLO
    n_fit = int(0.5 / (1000 * per_token)) - 1        # requests of 1000 tokens ahead that still fit
    assert adm.admit(new, FakeReplica(waiting=deque(req(i) for i in range(n_fit))), 0.0) is True
    assert adm.admit(new, FakeReplica(waiting=deque(req(i) for i in range(n_fit + 2))), 0.0) is False
    # slack scales the SLO
    assert _slo(slack=100.0).admit(new, long, 0.0) is True


def test_slo_feasible_default_slo_and_requests_without_one():
    long = FakeReplica(waiting=deque(req(i) for i in range(200)))
    assert _slo().admit(req(1), long, 0.0) is True                              # no SLO anywhere: admitted
    assert _slo(default_slo_ttft_s=0.5).admit(req(1), long, 0.0) is False      # the default applies
    assert _slo(default_slo_ttft_s=0.5).admit(req(1, slo_ttft_s=100.0), long, 0.0) is True   # its own wins


def test_slo_feasible_caches_the_per_token_rate():
    counting = CountingCost(COST)
    adm = _slo()
    rep = FakeReplica(waiting=deque(req(i) for i in range(5)), cost=counting)
    for i in range(50):
        adm.admit(req(100 + i, slo_ttft_s=1.0), rep, float(i))
    assert counting.calls == 1


def test_spec_errors_are_one_line_config_errors():
    with pytest.raises(ConfigError, match="'type' is required"):
        build({"max_queue": 3})
    with pytest.raises(ConfigError, match="'max_len'"):
        build({"type": "bounded_queue", "max_len": 3})
    with pytest.raises(ConfigError, match="'unit'"):
        build({"type": "token_bucket", "unit": "bytes"})
    with pytest.raises(ConfigError, match="unknown admission 'drop_tail'"):
        build({"type": "drop_tail"})


def test_admission_judges_a_request_once_at_entry_not_again_after_its_prefill_or_escalation():
    from experiments.runner import run

    wl = {"type": "poisson", "stages": [{"rate": 40, "duration_s": 10}], "input_len": 200, "output_len": 400}
    cfg = {"model": "llama-3.1-8b", "hardware": {"gpu": "h100"}, "seed": 3, "sim": {"progress": False},
           "engine": {"max_num_seqs": 8}, "admission": {"type": "bounded_queue", "max_queue": 2}, "workload": wl,
           "pools": {"prefill": {"replicas": 1}, "decode": {"replicas": 1}}}
    r = run(cfg)
    rows = {row["pool"]: row for row in r.summary["replicas"]}
    assert rows["prefill"]["rejected"] > 0 and rows["decode"]["rejected"] == 0   # refused at entry only
    assert r.summary["requests"]["completed"] + r.summary["requests"]["rejected"] == r.summary["requests"]["total"]


def test_an_inline_encoder_encodes_only_the_images_of_requests_it_accepts():
    from experiments.runner import run

    cfg = {"model": "llama-3.1-8b", "hardware": {"gpu": "h100"}, "seed": 3, "sim": {"progress": False},
           "engine": {"max_num_seqs": 4}, "admission": {"type": "bounded_queue", "max_queue": 2},
           "multimodal": {"encoder": "clip-vit-l-336", "mode": "inline", "cache_images": 0},
           "workload": {"type": "poisson", "stages": [{"rate": 50, "duration_s": 4}], "input_len": 100,
                        "output_len": 300, "images": {"per_request": 1, "tokens_per_image": 576}}}
    r = run(cfg)
    assert r.summary["requests"]["rejected"] > 0
    assert r.summary["multimodal"]["encoded_images"] == len(r.requests)           # one image per served request
