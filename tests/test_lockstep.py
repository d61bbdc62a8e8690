"""Expert parallelism over data-parallel replicas (vLLM's --data-parallel-size with --enable-expert-parallel):
the replicas keep their own queues, schedulers and KV caches, but step together, each step as long as the slowest
replica's own part plus the expert layers over every replica's tokens."""
from __future__ import annotations

import numpy as np
import pytest
import simpy
from hypothesis import given, settings, strategies as st

from experiments.runner import run
from policies.batching import VLLMScheduler
from sim.cost import BatchShape, CostModel
from sim.engine import EngineConfig, Replica, RequestLog, drive_arrivals
from sim.errors import ConfigError
from sim.hardware import get_gpu
from sim.kvcache import KVCacheManager
from sim.lockstep import LockstepGroup
from sim.models import get_model
from workloads.base import RequestSpec

A, B = 1e-3, 1e-5     # fake step: A + B x (tokens the expert layers see) + B x (the replica's own tokens)


class MoECost:
    """A step costs a fixed part, the replica's own tokens and the tokens of the whole group's expert layers."""

    def step_time(self, shape, moe_tokens=None) -> float:
        return A + B * (shape.tokens if moe_tokens is None else moe_tokens) + B * shape.tokens


def group(ranks: int, specs_by_rank: dict[int, list[RequestSpec]], async_scheduling: bool = False,
          fast: bool = True, blocks: int = 64, one_driver: bool = False):
    env = simpy.Environment()
    log = RequestLog()
    engine = EngineConfig(max_num_seqs=8, max_num_batched_tokens=4096, enable_prefix_caching=False,
                          max_model_len=100_000, async_scheduling=async_scheduling)
    reps = [Replica(env, i, MoECost(), KVCacheManager(num_blocks=blocks, block_size=16, enable_prefix_caching=False),
                    engine, VLLMScheduler(), log, own_loop=False) for i in range(ranks)]
    for rep in reps:
        rep.step_records = []
    lock = LockstepGroup(env, reps, fast=fast)
    if one_driver:
        # one arrival process for every replica, as a router drives them: requests of the same instant reach
        # their replicas within one event
        rank_of = {s.request_id: i for i, specs in specs_by_rank.items() for s in specs}
        merged = sorted((s for specs in specs_by_rank.values() for s in specs), key=lambda s: s.arrival_s)
        env.process(drive_arrivals(env, iter(merged), lambda req: reps[rank_of[req.id]].enqueue(req)))
    else:
        for i, specs in specs_by_rank.items():
            env.process(drive_arrivals(env, iter(specs), reps[i].enqueue))
    lock.events = 0
    while env.peek() < float("inf"):
        env.step()
        lock.events += 1
    return reps, lock, log


def test_replicas_step_together_and_the_experts_see_every_replicas_tokens():
    # two replicas, one 16-token prompt each at t=0, 3 output tokens: the prefill step sees 32 expert tokens,
    # the two decode steps 2 each
    reps, lock, log = group(2, {0: [RequestSpec(0, 0.0, 16, 3)], 1: [RequestSpec(1, 0.0, 16, 3)]})
    ends = [[end for _, end, _, _ in r.step_records] for r in reps]
    assert ends[0] == ends[1]
    prefill, decode = A + B * 32 + B * 16, A + B * 2 + B * 1
    assert ends[0] == pytest.approx([prefill, prefill + decode, prefill + 2 * decode], rel=1e-12)
    assert lock.steps == 3


def test_the_slowest_replica_sets_every_replicas_step():
    # replica 0 decodes a long request; replica 1 gets a 1000-token prompt at 5.5 ms (during a step): that
    # step ends as usual, the next one carries the prefill and lasts for both replicas
    decode = A + B * 1 + B * 1
    reps, _, log = group(2, {0: [RequestSpec(0, 0.0, 16, 40)], 1: [RequestSpec(1, 5.5e-3, 1000, 2)]})
    steps = reps[0].step_records
    lengths = [end - start for start, end, _, _ in steps]
    joined = next(i for i, (start, _, _, _) in enumerate(steps) if start >= 5.5e-3)
    assert lengths[joined] == pytest.approx(A + B * 1001 + B * 1000, rel=1e-9)       # replica 1's prefill step
    assert all(x == pytest.approx(decode, rel=1e-9) for x in lengths[1:joined])
    first = dict(zip(log.arrays()["request_id"].tolist(), log.arrays()["first_scheduled_s"].tolist()))
    assert first[1] == pytest.approx(steps[joined][0])                                 # joined at a boundary
    assert steps[joined - 1][1] == pytest.approx(steps[joined][0])


def test_with_async_scheduling_an_idle_replica_takes_a_request_at_the_next_step():
    # replica 0 decodes; a request reaches idle replica 1 during a step: no plan of replica 1 was in flight, so
    # it runs in the very next step, as a lone engine that was idle would take it at once
    reps, _, log = group(2, {0: [RequestSpec(0, 0.0, 16, 40)], 1: [RequestSpec(1, 5.5e-3, 16, 2)]},
                         async_scheduling=True)
    steps = reps[0].step_records
    first = dict(zip(log.arrays()["request_id"].tolist(), log.arrays()["first_scheduled_s"].tolist()))
    boundary = min(end for _, end, _, _ in steps if end > 5.5e-3)
    assert first[1] == pytest.approx(boundary)


@pytest.mark.parametrize("async_scheduling", [True, False])
def test_arrivals_at_a_working_and_an_idle_replica_at_once_end_a_run_at_the_idle_ones_step(async_scheduling):
    # the fuzz's find: requests reach replica 0 (decoding, in a run) and idle replica 1 at the same instant; the
    # idle one takes its request at the next step, so the run must end there, not at the working one's lag
    specs = {0: [RequestSpec(0, 0.0, 16, 40), RequestSpec(1, 5.5e-3, 16, 3)], 1: [RequestSpec(2, 5.5e-3, 16, 3)]}
    out = []
    for fast in (True, False):
        _, _, log = group(2, specs, async_scheduling, fast=fast, one_driver=True)
        cols = log.arrays()
        out.append(dict(zip(cols["request_id"].tolist(), zip(cols["first_scheduled_s"].tolist(),
                                                             cols["finish_s"].tolist()))))
    assert out[0] == out[1]


def test_an_idle_replica_adds_nothing_and_wakes_the_group():
    # only replica 1 ever gets work: the group runs its steps with its own tokens alone
    reps, lock, log = group(2, {1: [RequestSpec(0, 0.25, 16, 2)]})
    assert reps[0].step_records == [] and len(reps[1].step_records) == 2
    start, end, _, _ = reps[1].step_records[0]
    assert start == pytest.approx(0.25) and end - start == pytest.approx(A + B * 16 + B * 16)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.floats(0.0, 0.2), st.integers(1, 300), st.integers(1, 40)),
                min_size=1, max_size=30),
       st.booleans())
def test_no_request_lost_tokens_conserved_no_block_leaked(reqs, async_scheduling):
    by_rank: dict[int, list[RequestSpec]] = {}
    for i, (rank, t, prompt, out) in enumerate(sorted(reqs, key=lambda r: r[1])):
        by_rank.setdefault(rank, []).append(RequestSpec(i, t, prompt, out))
    reps, _, log = group(3, by_rank, async_scheduling)
    cols = log.arrays()
    assert sorted(cols["request_id"].tolist()) == list(range(len(reqs)))
    asked = {i: out for i, (_, _, _, out) in enumerate(sorted(reqs, key=lambda r: r[1]))}
    assert {int(k): int(v) for k, v in zip(cols["request_id"], cols["output_tokens"])} == asked
    assert all(r.kv.num_used_blocks == 0 for r in reps)
    for r in reps:                                                    # time moves forward on every replica
        ends = [end for _, end, _, _ in r.step_records]
        assert ends == sorted(ends)


COLUMNS = RequestLog.COLUMNS


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.floats(0.0, 0.3), st.integers(1, 200), st.integers(1, 60)),
                min_size=1, max_size=25),
       st.booleans(), st.sampled_from([12, 64]), st.booleans())
def test_fast_forward_runs_give_the_per_step_loops_timestamps(reqs, async_scheduling, blocks, one_driver):
    # runs of steady decode priced at once, cut by arrivals at working and idle ranks, against one event per step;
    # 12 blocks per rank make preemptions and block-boundary cuts common
    by_rank: dict[int, list[RequestSpec]] = {}
    for i, (rank, t, prompt, out) in enumerate(sorted(reqs, key=lambda r: r[1])):
        by_rank.setdefault(rank, []).append(RequestSpec(i, t, min(prompt, 150), out))
    results = []
    for fast in (True, False):
        reps, lock, log = group(3, by_rank, async_scheduling, fast=fast, blocks=blocks, one_driver=one_driver)
        cols = log.arrays()
        order = np.argsort(cols["request_id"])
        results.append(({c: [None if v != v else v for v in cols[c][order].tolist()] for c in COLUMNS},
                         [(r.steps.iterations, r.steps.tokens, r.steps.batch_sum) for r in reps],
                         [sorted(zip(r.steps.itl, r.steps.itl_weight)) for r in reps], lock.clock))
    (fast_cols, fast_steps, fast_itl, fast_end), (slow_cols, slow_steps, slow_itl, slow_end) = results
    assert fast_cols == slow_cols
    assert fast_steps == slow_steps and fast_end == slow_end
    for a, b in zip(fast_itl, slow_itl):                    # the same gaps, merged per step or not
        assert sum(w for _, w in a) == sum(w for _, w in b)
        assert sum(g * w for g, w in a) == pytest.approx(sum(g * w for g, w in b), rel=1e-12)


def test_a_steady_group_takes_far_fewer_events_than_steps():
    specs = {i: [RequestSpec(i, 0.0, 16, 500)] for i in range(2)}
    env_steps = []
    events = []
    for fast in (True, False):
        reps, lock, _ = group(2, specs, fast=fast, blocks=256)
        env_steps.append(lock.steps)
        events.append(lock.events)
    assert env_steps[0] == env_steps[1] == 500
    assert events[1] >= 500 and events[0] < 60          # a few dozen runs (block boundaries cut them) vs 500


def wide(tp: int = 2, ranks: int = 2) -> CostModel:
    return CostModel(get_model("mixtral-8x7b"), get_gpu("h100"), tp=tp, expert_parallel=True, ep_size=tp * ranks)


def test_experts_over_the_group_hold_a_share_of_the_expert_weights():
    m = get_model("mixtral-8x7b")
    experts = m.num_moe_layers * m.num_experts * m.expert_params * 2.0          # bf16
    inside = CostModel(m, get_gpu("h100"), tp=2, expert_parallel=True)         # ep = tp = 2
    assert inside.weight_bytes_per_gpu - wide().weight_bytes_per_gpu == pytest.approx(experts / 2 - experts / 4)


def test_a_balanced_group_is_the_default_and_more_expert_tokens_cost_more():
    c = wide()
    shape = BatchShape.decode(32, 1000)
    assert c.step_time(shape) == c.step_time(shape, moe_tokens=64)       # every replica with a batch like this
    times = [c.step_time(shape, moe_tokens=n) for n in (32, 64, 128, 512)]
    assert times == sorted(times) and times[0] < times[-1]
    # ep = tp: the experts see the replica's own tokens unless told otherwise
    inside = CostModel(get_model("mixtral-8x7b"), get_gpu("h100"), tp=2, expert_parallel=True)
    assert inside.step_time(shape, moe_tokens=32) == inside.step_time(shape) < inside.step_time(shape, moe_tokens=99)


def test_the_expert_layers_and_their_all_to_alls_see_the_groups_tokens():
    # a replica of a 2-replica group with 32 tokens: its expert GEMMs and all-to-alls are those of the group's 64
    c, m = wide(), get_model("mixtral-8x7b")
    rows = {r.name: r.time_s for r in c.breakdown(BatchShape.decode(32, 1000))}
    alone = CostModel(m, get_gpu("h100"), tp=4, expert_parallel=True)       # the same 4 GPUs' experts, one replica
    ref = {r.name: r.time_s for r in alone.breakdown(BatchShape.decode(64, 1000))}
    assert rows["moe_experts"] == pytest.approx(ref["moe_experts"], rel=1e-12)
    assert rows["ep_alltoall"] == pytest.approx(ref["ep_alltoall"], rel=1e-12)
    assert rows["ep_alltoall"] == pytest.approx(m.num_moe_layers * 2 * c._ep_alltoall(64), rel=1e-12)
    # and the step the engine prices is the sum of those rows
    assert c.step_time(BatchShape.decode(32, 1000), moe_tokens=64) == pytest.approx(sum(rows.values()), rel=1e-12)


def test_tp1_replicas_pay_only_the_experts_all_to_alls():
    c = CostModel(get_model("mixtral-8x7b"), get_gpu("h100"), tp=1, expert_parallel=True, ep_size=4)
    rows = {r.name: r.time_s for r in c.breakdown(BatchShape.decode(8, 1000))}
    assert rows["ep_alltoall"] > 0 and "tp_allreduce" not in rows


def deployment_config(ep: int, replicas: int = 2, **extra) -> dict:
    return {"model": "mixtral-8x7b", "hardware": {"gpu": "h100-sxm-80gb"},
            "deployment": {"replicas": replicas, "parallelism": {"tp": 2, "ep": ep}},
            "router": "least_outstanding_requests",
            "engine": {"max_num_seqs": 64, "max_num_batched_tokens": 2048, "max_model_len": 4096},
            "workload": {"type": "poisson", "stages": [{"rate": 6.0, "duration_s": 40}],
                         "input_len": {"dist": "fixed", "value": 600}, "output_len": {"dist": "fixed", "value": 100}},
            "sim": {"progress": False, "record_steps": True}, "seed": 3, **extra}


def test_a_wide_ep_deployment_runs_in_lockstep_and_beats_experts_inside_each_replica():
    wide_run, inside = run(deployment_config(ep=4)), run(deployment_config(ep=2))
    for r in (wide_run, inside):
        assert r.summary["requests"]["completed"] == r.summary["requests"]["total"] > 200
    assert (wide_run.summary["deployment"]["ep"], inside.summary["deployment"]["ep"]) == (4, 2)
    steps = wide_run.steps
    ends = [set(steps[steps.replica == i].end_s.round(12)) for i in (0, 1)]
    both = ends[0] & ends[1]
    assert len(both) > 0.5 * min(len(e) for e in ends)          # busy together: the same step boundaries
    # half the experts per GPU: shorter decode steps and room for more KV blocks
    assert wide_run.summary["itl_s"]["mean"] < 0.85 * inside.summary["itl_s"]["mean"]
    assert wide_run.summary["memory"]["num_blocks"] > inside.summary["memory"]["num_blocks"]


@pytest.mark.parametrize("ep, replicas, extra, fix", [
    (8, 2, {}, "use ep: 4"),
    (4, 1, {}, "use ep: 2"),
    (3, 2, {}, "use ep: 4"),
    (4, 2, {"speculative": {"method": "ngram", "k": 3}}, "speculative"),
    (4, 2, {"offload": {"weights_gpu": 0.5, "weights_cpu": 0.5}}, "offload"),
    (4, 2, {"autoscaling": {"min_replicas": 1, "max_replicas": 2}}, "autoscaling"),
])
def test_impossible_wide_ep_is_refused_with_the_fix(ep, replicas, extra, fix):
    with pytest.raises(ConfigError, match=fix):
        run(deployment_config(ep=ep, replicas=replicas, **extra))


def test_wide_ep_with_pp_or_in_disaggregated_pools_is_refused():
    cfg = deployment_config(ep=4)
    cfg["deployment"]["parallelism"]["pp"] = 2
    with pytest.raises(ConfigError, match="pp"):
        run(cfg)
    pools = deployment_config(ep=4)
    del pools["deployment"]
    pools["pools"] = {"prefill": {"replicas": 1, "parallelism": {"tp": 2}},
                      "decode": {"replicas": 2, "parallelism": {"tp": 2, "ep": 4}}}
    with pytest.raises(ConfigError, match="use ep: 2"):
        run(pools)


def test_a_wide_ep_deployment_gives_the_same_requests_with_and_without_fast_forward():
    fast = run(deployment_config(ep=4))
    slow = run(deployment_config(ep=4, **{}) | {"sim": {"progress": False, "mode": "iteration"}})
    cols = ["request_id", "replica", "first_scheduled_s", "first_token_s", "finish_s", "output_tokens"]
    a = fast.requests[cols].sort_values("request_id").reset_index(drop=True)
    b = slow.requests[cols].sort_values("request_id").reset_index(drop=True)
    assert a.equals(b)
    assert fast.summary["sim"]["iterations"] == slow.summary["sim"]["iterations"]


@pytest.mark.parametrize("replicas, ep", [(1, 1), (2, 4)])
def test_a_request_arriving_as_a_run_starts_is_taken_in_as_the_per_step_loop_takes_it(replicas, ep):
    # closed-loop clients with no think time and no front-end latency send their next request at the very instant
    # the previous one finishes, which is when a fast-forwarded run starts: under async scheduling the plan of the
    # run's first step is made, the second's is not, so the request joins at the second step (one event per step
    # agrees); a lag of two steps there delayed almost every request (lone replica and lockstep group alike)
    cfg = {"model": "mixtral-8x7b", "hardware": {"gpu": "h100-sxm-80gb"},
           "deployment": {"replicas": replicas, "parallelism": {"tp": 2, "ep": ep}},
           "router": "least_outstanding_requests",
           "engine": {"profile": "trtllm", "async_scheduling": True, "max_num_seqs": 64,
                      "max_num_batched_tokens": 4096, "max_model_len": 4096},
           "workload": {"type": "closed_loop", "clients": 24, "num_requests": 300,
                        "input_len": {"dist": "uniform", "low": 50, "high": 800},
                        "output_len": {"dist": "uniform", "low": 2, "high": 200}},
           "sim": {"progress": False}, "seed": 3}
    fast = run(cfg)
    slow = run(cfg | {"sim": {"progress": False, "mode": "iteration"}})
    cols = ["request_id", "replica", "first_scheduled_s", "first_token_s", "finish_s"]
    a = fast.requests[cols].sort_values("request_id").reset_index(drop=True)
    b = slow.requests[cols].sort_values("request_id").reset_index(drop=True)
    assert len(a) == 300 and a.equals(b)


def test_estimate_prices_a_replica_of_a_wide_ep_group_and_refuses_an_uneven_ep():
    import subprocess

    from sim.estimate import estimate
    from tests.paths import SERVESIM

    wide_est = estimate("mixtral-8x7b", "h100", tp=2, ep=8, batch=32, context=1000)
    sliced = estimate("mixtral-8x7b", "h100", tp=2, batch=32, context=1000)
    assert wide_est.as_dict()["ep"] == 8 and sliced.as_dict()["ep"] == 1
    assert wide_est.memory.weights_gb < 0.3 * sliced.memory.weights_gb          # one expert per GPU, not half of 8
    c = wide(tp=2, ranks=4)
    assert wide_est.latency_s == pytest.approx(c.step_time(BatchShape.decode(32, 1000)), rel=1e-12)
    p = subprocess.run([str(SERVESIM), "estimate", "--model", "mixtral-8x7b", "--gpu", "h100", "--tp", "2",
                        "--ep", "3", "--context", "100"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "--ep 3" in p.stderr


@pytest.mark.parametrize("preemption_mode", ["recompute", "swap"])
def test_a_lockstep_group_short_of_kv_preempts_loses_nothing_and_fast_forwards_exactly(preemption_mode):
    # two TP2 replicas with the experts over all 4 GPUs and ~9k KV tokens each, hit by a burst of long requests
    cfg = deployment_config(ep=4) | {
        "engine": {"max_num_seqs": 256, "max_num_batched_tokens": 2048, "max_model_len": 4096,
                   "gpu_memory_utilization": 0.33, "preemption_mode": preemption_mode, "swap_space": 4.0},
        "workload": {"type": "poisson", "stages": [{"rate": 1000.0, "duration_s": 0.05}],
                     "input_len": {"dist": "uniform", "low": 1500, "high": 3500},
                     "output_len": {"dist": "uniform", "low": 200, "high": 600}}}
    fast = run(cfg)
    slow = run(cfg | {"sim": {"progress": False, "mode": "iteration"}})
    s = fast.summary
    assert s["preemptions"] > 0
    assert s["requests"]["completed"] == s["requests"]["total"] == 50
    sent = fast.requests.sort_values("request_id")
    cols = ["request_id", "replica", "first_scheduled_s", "first_token_s", "finish_s", "output_tokens", "preemptions"]
    assert sent[cols].reset_index(drop=True).equals(slow.requests.sort_values("request_id")[cols].reset_index(drop=True))
