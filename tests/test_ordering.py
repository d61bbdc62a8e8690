"""Queue orderings (policies/ordering.py): each order's exact sequence on a small queue, the output-length
predictor's seeded and stable noise, fair queueing's interleaving by weight, and option validation."""
from __future__ import annotations

from collections import deque

import numpy as np
import pytest

from policies.ordering import SJF, Fair, make_ordering
from sim.errors import ConfigError
from sim.request import Request


def req(rid: int, arrival: float = 0.0, prompt: int = 100, output: int = 10, **kw) -> Request:
    return Request(rid, arrival, prompt, output, **kw)


def ids(reqs) -> list[int]:
    return [r.id for r in reqs]


def order(name: str, queue, options: dict | None = None, seed: int = 0) -> list[int]:
    return ids(make_ordering(name, options or {}, np.random.default_rng(seed)).sort(queue))


def test_fcfs_is_arrival_then_id_and_the_only_fcfs():
    queue = [req(0, 3.0), req(1, 1.0), req(2, 2.0), req(3, 1.0)]
    assert order("fcfs", queue) == [1, 3, 2, 0]
    rng = np.random.default_rng(0)
    assert make_ordering("fcfs", {}, rng).is_fcfs is True
    assert [make_ordering(n, {}, rng).is_fcfs for n in ("priority", "edf", "sjf", "fair")] == [False] * 4


def test_sort_returns_a_new_list_and_leaves_the_queue_alone():
    queue = deque([req(0, 2.0), req(1, 1.0)])
    out = make_ordering("fcfs", None, np.random.default_rng(0)).sort(queue)
    assert isinstance(out, list) and ids(out) == [1, 0]
    assert ids(queue) == [0, 1]


def test_priority_lower_value_first_then_arrival():
    queue = [req(0, 0.0, priority=1), req(1, 1.0, priority=0), req(2, 2.0, priority=-1),
             req(3, 0.5, priority=0), req(4, 0.1, priority=1)]
    assert order("priority", queue) == [2, 3, 1, 0, 4]


def test_edf_by_deadline_then_requests_without_slo_by_arrival():
    queue = [req(0, 0.0, slo_ttft_s=5.0),       # deadline 5
             req(1, 1.0),                       # no SLO
             req(2, 2.0, slo_ttft_s=1.0),       # deadline 3
             req(3, 0.5),                       # no SLO, earlier
             req(4, 3.5, slo_ttft_s=0.5)]       # deadline 4
    assert order("edf", queue) == [2, 4, 0, 3, 1]


def test_sjf_by_prompt_output_and_total():
    queue = [req(0, 0.0, prompt=300, output=10), req(1, 1.0, prompt=100, output=500),
             req(2, 2.0, prompt=200, output=50), req(3, 3.0, prompt=100, output=1)]
    assert order("sjf", queue) == [1, 3, 2, 0]                               # prompt; tie by arrival
    assert order("sjf", queue, {"by": "output"}) == [3, 0, 2, 1]
    assert order("sjf", queue, {"by": "total"}) == [3, 2, 0, 1]              # 101, 250, 310, 600


def _noisy_queue(n: int = 2000) -> list[Request]:
    rng = np.random.default_rng(123)
    return [req(i, float(i), output=int(o)) for i, o in enumerate(rng.integers(50, 1000, n))]


def test_sjf_noise_is_seeded_stable_and_lognormal():
    queue = _noisy_queue()
    opts = {"by": "output", "noise_sigma": 0.5}
    a = make_ordering("sjf", opts, np.random.default_rng(7))
    first = ids(a.sort(queue))
    assert ids(a.sort(queue)) == first                                      # same draws at every sort
    assert ids(a.sort(reversed(queue))) == first                           # whatever the queue's order
    assert ids(a.sort(queue[::2])) == [i for i in first if i % 2 == 0]       # a request's draw ignores the others
    assert order("sjf", queue, opts, seed=7) == first                       # same seed, same order
    assert order("sjf", queue, opts, seed=8) != first                       # another seed, other draws
    assert first != order("sjf", queue, {"by": "output"})                   # the noise changes the order
    # the predictor's error is exp(N(0, sigma))
    log_err = np.log([a.predicted_output(r) / r.output_len for r in queue])
    assert abs(log_err.mean()) < 4 * 0.5 / np.sqrt(len(queue))
    assert log_err.std() == pytest.approx(0.5, rel=0.05)


def test_sjf_prediction_survives_admission_and_preemption():
    a = make_ordering("sjf", {"by": "output", "noise_sigma": 1.0}, np.random.default_rng(3))
    r = req(5, output=400)
    before = a.predicted_output(r)
    a.admitted(r)                   # frees the cached value...
    assert not a._predicted
    assert a.predicted_output(r) == before       # ...which is the same if the request comes back


def test_fair_interleaves_two_equal_tenants_one_to_one():
    queue = [req(i, i * 0.1, tenant="a") for i in range(10)] + [req(10 + i, 5 + i * 0.1, tenant="b") for i in range(10)]
    got = [r.tenant for r in make_ordering("fair", {}, np.random.default_rng(0)).sort(queue)]
    assert got == ["a", "b"] * 10


def test_fair_weights_two_to_one_over_a_long_queue():
    queue = [req(i, 0.0, tenant="a") for i in range(300)] + [req(300 + i, 0.0, tenant="b") for i in range(300)]
    fair = make_ordering("fair", {"weights": {"a": 2.0}}, np.random.default_rng(0))
    got = [r.tenant for r in fair.sort(queue)]
    assert got[:300] == ["a", "b", "a"] * 100
    assert [r.id for r in fair.sort(queue) if r.tenant == "a"] == list(range(300))     # FCFS within a tenant


def test_fair_charges_admissions_and_gives_no_credit_for_idle_time():
    fair = make_ordering("fair", {}, np.random.default_rng(0))
    for i in range(10):                       # tenant a served alone for a while
        fair.admitted(req(i, tenant="a"))
    queue = [req(10 + i, 10.0, tenant="a") for i in range(4)] + [req(20 + i, 10.0, tenant="b") for i in range(4)]
    # b has received less service, so it goes first; but it starts at the system virtual time, not at 0,
    # so it gets its share from now on rather than four requests in a row
    assert ids(fair.sort(queue)) == [20, 10, 21, 11, 22, 12, 23, 13]


def test_fair_charges_by_tokens_and_a_preempted_request_once():
    fair = make_ordering("fair", {}, np.random.default_rng(0))
    fair.admitted(req(0, tenant="a", prompt=1000, output=0))
    fair.admitted(req(1, tenant="b", prompt=100, output=0))
    again = req(0, tenant="a", prompt=1000, output=0)
    again.preemptions = 1
    fair.admitted(again)                      # re-admission after a preemption: not charged again
    assert fair.clock == {"a": 1000.0, "b": 100.0}
    queue = [req(2, tenant="a", prompt=10), req(3, tenant="b", prompt=10), req(4, tenant="b", prompt=10)]
    assert ids(fair.sort(queue)) == [3, 4, 2]     # b is 900 tokens behind


def test_fair_untagged_requests_are_one_tenant():
    queue = [req(0), req(1), req(2, tenant="x")]
    assert order("fair", queue) == [0, 2, 1]


def test_unknown_option_is_a_one_line_config_error_naming_it():
    rng = np.random.default_rng(0)
    with pytest.raises(ConfigError, match="'noise'") as exc:
        make_ordering("sjf", {"by": "output", "noise": 0.3}, rng)
    assert "\n" not in str(exc.value) and "noise_sigma" in str(exc.value)
    with pytest.raises(ConfigError, match="'by'"):
        make_ordering("sjf", {"by": "length"}, rng)
    with pytest.raises(ConfigError, match="takes no options"):
        make_ordering("fcfs", {"weights": {}}, rng)
    with pytest.raises(ConfigError, match="weights.a must be > 0"):
        make_ordering("fair", {"weights": {"a": 0}}, rng)
    with pytest.raises(ConfigError, match="unknown ordering 'lifo'"):
        make_ordering("lifo", {}, rng)


def test_classes_follow_the_plugin_convention():
    for cls in (SJF, Fair):
        assert cls.Options.model_config["extra"] == "forbid"
        assert all(f.description for f in cls.Options.model_fields.values())
        assert cls(cls.Options(), np.random.default_rng(0)).sort([]) == []


def test_fair_does_not_count_a_waiting_preempted_request_twice():
    fair = make_ordering("fair", {}, np.random.default_rng(0))
    back = req(0, 0.0, tenant="a")
    fair.admitted(back)                       # charged when first admitted...
    back.preemptions = 1                      # ...then preempted: back at the head of the queue
    queue = [back, req(1, 1.0, tenant="a"), req(2, 2.0, tenant="b"), req(3, 3.0, tenant="b")]
    assert ids(fair.sort(queue)) == [2, 0, 1, 3]     # b is one request behind; a's retry costs it nothing more
