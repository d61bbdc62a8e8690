"""Async scheduling (vLLM V1): the plan for step n+1 is made while step n runs, so a request that
arrives during step n is first scheduled in step n+2; a request arriving at an idle engine runs at once.

Closed-form timelines with a constant step time D: a long decoding request keeps the engine busy,
a second request arrives in the middle of a step, and its first scheduled time is read off exactly.
"""
from __future__ import annotations

import numpy as np
import pytest
import simpy

from policies.batching import VLLMScheduler
from sim.engine import EngineConfig, Replica, RequestLog, drive_arrivals
from sim.kvcache import KVCacheManager
from workloads.base import RequestSpec

D = 0.01


class ConstantCost:
    """Every iteration takes D seconds."""

    def step_time(self, shape) -> float:
        return D

    def decode_run_times(self, seqs: int, ctx_sum: int, steps: int) -> np.ndarray:
        return np.full(steps, D)


def first_scheduled(specs, async_scheduling: bool, mode: str) -> dict[int, float]:
    env = simpy.Environment()
    log = RequestLog()
    kv = KVCacheManager(num_blocks=10_000, block_size=16, enable_prefix_caching=False)
    engine = EngineConfig(max_num_seqs=8, max_num_batched_tokens=4096, enable_prefix_caching=False,
                          max_model_len=100_000, async_scheduling=async_scheduling)
    rep = Replica(env, 0, ConstantCost(), kv, engine, VLLMScheduler(), log, mode=mode)
    env.process(drive_arrivals(env, iter(specs), rep.enqueue))
    env.run()
    cols = log.arrays()
    assert len(cols["request_id"]) == len(specs), "a request was lost"
    return dict(zip(cols["request_id"].tolist(), cols["first_scheduled_s"].tolist()))


@pytest.mark.parametrize("mode", ["fast", "iteration"])
def test_arrival_during_a_step_waits_one_more_step(mode):
    # request 0 starts at t=0 and decodes for 50 steps; steps end at D, 2D, 3D, ...
    # request 1 arrives at 3.5 D, during step 4 (3D..4D)
    specs = [RequestSpec(0, 0.0, 16, 50), RequestSpec(1, 3.5 * D, 16, 5)]
    sync = first_scheduled(specs, async_scheduling=False, mode=mode)
    lagged = first_scheduled(specs, async_scheduling=True, mode=mode)
    assert sync[0] == lagged[0] == 0.0                   # an idle engine schedules at once
    assert sync[1] == pytest.approx(4 * D)                # seen at the end of the step it arrived in
    assert lagged[1] == pytest.approx(5 * D)              # step 5 was planned before it arrived


@pytest.mark.parametrize("mode", ["fast", "iteration"])
def test_a_request_hidden_when_the_engine_empties_still_runs(mode):
    # request 0 finishes at the end of step 3 (3 D); request 1 arrives during step 3: async hides it
    # from the plan made at 2 D, and the engine, now empty, plans again at once instead of idling
    specs = [RequestSpec(0, 0.0, 16, 3), RequestSpec(1, 2.5 * D, 16, 2)]
    lagged = first_scheduled(specs, async_scheduling=True, mode=mode)
    assert lagged[1] == pytest.approx(3 * D)
