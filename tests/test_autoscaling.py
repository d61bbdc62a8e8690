"""Autoscaling (policies/autoscaling.py) and the autoscaled pool of experiments/deployment.py.

On a diurnal (sinusoidal) rate the active replicas follow the load, each one landing exactly the
provisioning delay after the decision that asked for it; the autoscaled pool uses far fewer GPU-hours than
a fixed pool of max_replicas at about the same SLO attainment, and far better latency than a fixed pool of
min_replicas. The controller's mechanics (provisioning, cancelling, draining, stabilisation, billing) are
checked as an exact trace on scripted decisions; the HPA-style policies against their formula.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import pytest
import simpy

from experiments.config import load_config
from experiments.runner import run
from policies.autoscaling import KVUsage, QueueLength, ScalingController, SLOAttainment
from sim.errors import ConfigError
from sim.request import FINISHED, Request

PERIOD = 600.0


def config(mn: int, mx: int, initial: int, delay: float = 30.0, policy: str = "queue_length",
           options: dict | None = None) -> dict:
    """Llama-3.2-1B replicas of at most 8 sequences; a sinusoidal rate from 2 to 38 req/s, trough at 0 and
    peak at 300 s."""
    return {"model": "llama-3.2-1b", "hardware": {"gpu": "h100"}, "engine": {"max_model_len": 4096,
                                                                            "max_num_seqs": 8},
            "sim": {"progress": False}, "seed": 2,
            "workload": {"type": "synthetic",
                         "arrival": {"process": "diurnal", "mean_rate": 20, "amplitude": 0.9, "period_s": PERIOD,
                                     "peak_at_s": PERIOD / 2, "duration_s": PERIOD},
                         "input_len": {"dist": "lognormal", "mean": 400, "sigma": 0.5, "max": 2000},
                         "output_len": {"dist": "lognormal", "mean": 120, "sigma": 0.5, "max": 600}},
            "deployment": {"replicas": initial},
            "autoscaling": {"policy": policy, "policy_options": options or {"target": 8}, "min_replicas": mn,
                            "max_replicas": mx, "interval_s": 10, "provisioning_delay_s": delay,
                            "scale_down_cooldown_s": 120}}


def mean_active(scaling, t0: float, t1: float) -> float:
    """Time-weighted mean of the active replicas over [t0, t1] (the timeline is a step function)."""
    t = scaling["time_s"].to_numpy()
    a = scaling["active"].to_numpy()
    edges = np.clip(np.append(t, t1), t0, t1)
    return float(np.sum(a * np.diff(edges)) / (t1 - t0))


def attainment(result, ttft_s: float = 0.5) -> float:
    r = result.requests
    return float(((r["first_token_s"] - r["arrival_s"]) <= ttft_s).mean())


@pytest.fixture(scope="module")
def runs():
    return {"auto": run(config(1, 6, 1)), "auto_nodelay": run(config(1, 6, 1, delay=0.0)),
            "fixed_max": run(config(6, 6, 6)), "fixed_min": run(config(1, 1, 1))}


def test_active_replicas_follow_the_diurnal_rate_after_the_delay(runs):
    auto = runs["auto"]
    s = auto.summary["autoscaling"]
    sc = auto.scaling
    peak = mean_active(sc, 250, 450)                    # around the peak at 300 s (replicas lag the rate)
    trough = mean_active(sc, 0, 100)                    # around the trough at 0 s
    assert peak > trough + 1.0, (peak, trough)
    assert s["scale_ups"] >= 2 and s["scale_downs"] >= 1 and s["peak_active"] >= 3
    assert sc["active"].iloc[-1] == 1                   # back to min_replicas once the load has fallen
    # every replica serves exactly provisioning_delay_s after the decision that started it
    decided = sc["time_s"][sc["target"].diff() > 0].to_numpy()
    landed = sc["time_s"][sc["active"].diff() > 0].to_numpy()
    assert len(landed) == len(decided) and np.allclose(landed - decided, 30.0)
    # the same run without a delay decides the first scale-up at the same moment (nothing differs before it)
    # and has the replica at once: the delay shifts the first new replica by exactly 30 s
    fast = runs["auto_nodelay"].scaling
    first_fast = fast["time_s"][fast["active"].diff() > 0].iloc[0]
    assert first_fast == decided[0] and landed[0] == first_fast + 30.0
    assert decided[0] > 0.0                                            # the load had to rise first
    # requests are only ever served by replicas that were active
    assert auto.requests["replica"].max() < s["peak_active"]


def test_fewer_gpu_hours_than_a_fixed_max_pool_at_similar_slo_attainment(runs):
    auto, fixed_max, fixed_min = runs["auto"], runs["fixed_max"], runs["fixed_min"]
    g_auto = auto.summary["autoscaling"]["gpu_hours"]
    g_max = fixed_max.summary["autoscaling"]["gpu_hours"]
    assert g_max == pytest.approx(6 * auto.summary["sim"]["simulated_time_s"] / 3600, rel=0.02)
    assert g_auto < 0.6 * g_max
    assert attainment(auto) > attainment(fixed_max) - 0.05
    assert attainment(fixed_min) < attainment(auto) - 0.1
    assert fixed_min.summary["ttft_s"]["p99"] > 5 * auto.summary["ttft_s"]["p99"]
    s = auto.summary["autoscaling"]
    assert s["cost_usd"] == pytest.approx(g_auto * s["usd_per_gpu_hour"])
    assert auto.scaling["gpu_hours"].iloc[-1] == pytest.approx(g_auto)
    assert auto.scaling["cost_usd"].is_monotonic_increasing


# ----------------------------------------------------------------------------- the controller's mechanics

@dataclass
class FakeKV:
    usage: float = 0.0


@dataclass
class FakeReplica:
    index: int
    outstanding: int = 0
    waiting: list = field(default_factory=list)
    kv: FakeKV = field(default_factory=FakeKV)


class Script:
    """Answers the scripted desired count at each evaluation."""

    def __init__(self, answers: list[int]) -> None:
        self.answers = answers

    def desired(self, replicas, current, now):
        return self.answers.pop(0)


def test_controller_provisions_drains_takes_back_and_bills_as_scripted():
    env = simpy.Environment()
    reps = [FakeReplica(i) for i in range(3)]
    routable: list = []
    ctl = ScalingController(env, reps, routable, Script([3, 3, 1, 1, 1, 4, 2, 2, 2]), initial=1, min_replicas=1,
                            max_replicas=3, interval_s=10, provisioning_delay_s=15, scale_down_cooldown_s=20,
                            gpus_per_replica=2, usd_per_gpu_hour=3.0)
    assert routable == reps[:1]
    done = []
    env.process(ctl.run(lambda: bool(done)))

    def finish(i: int) -> None:
        reps[i].outstanding = 0
        req = Request(i, 0.0, 10, 5)
        req.replica, req.state = i, FINISHED
        ctl.completed(req)

    def script():
        yield env.timeout(45)
        for r, load in zip(reps, (3, 2, 1)):
            r.outstanding = load
        yield env.timeout(10)          # t = 55
        finish(2)
        yield env.timeout(10)          # t = 65
        finish(1)
        yield env.timeout(30)          # t = 95
        done.append(True)

    env.process(script())
    env.run()
    # t=10: 3 wanted, replicas 1 and 2 provision (billed from now) and serve at 25. t=30, 40: 1 wanted but the
    # 20 s window still holds a 3. t=50: drain the two least loaded (2, then 1): both busy, still billed. t=55:
    # replica 2 drained, stops. t=60: 3 wanted (4 capped): replica 1, still draining, is taken back at once and
    # replica 2 provisions again (serves at 75). t=70, 80: 2 wanted, held by the window. t=90: replica 2 (idle,
    # least loaded) drains and stops at once. t=100: the run is over.
    assert ctl.timeline == [(0.0, 1, 1, 1), (10.0, 1, 3, 3), (25.0, 2, 3, 3), (25.0, 3, 3, 3), (50.0, 1, 1, 3),
                            (55.0, 1, 1, 2), (60.0, 2, 3, 3), (75.0, 3, 3, 3), (90.0, 2, 2, 2)]
    assert routable == [reps[0], reps[1]] and env.now == 100.0
    replica_s = 1 * 10 + 3 * 40 + 3 * 5 + 2 * 5 + 3 * 30 + 2 * 10
    assert ctl.gpu_hours(env.now) == pytest.approx(replica_s * 2 / 3600)
    s = ctl.summary(env.now)
    assert s["cost_usd"] == pytest.approx(replica_s * 2 / 3600 * 3.0)
    assert (s["scale_ups"], s["scale_downs"], s["peak_active"]) == (2, 2, 3)
    assert s["timeline"] == [[0.0, 1, 1], [10.0, 1, 3], [25.0, 2, 3], [25.0, 3, 3], [50.0, 1, 1], [60.0, 2, 3],
                             [75.0, 3, 3], [90.0, 2, 2]]


# ----------------------------------------------------------------------------- the policies

def pool(*loads: int) -> list[FakeReplica]:
    return [FakeReplica(i, o) for i, o in enumerate(loads)]


def test_hpa_policies_follow_their_formula_and_tolerance():
    q = QueueLength(QueueLength.Options(target=5), None)
    assert q.desired(pool(10, 10, 10), 3, 0.0) == 6               # ceil(30 / 5)
    assert q.desired(pool(5, 5, 6), 3, 0.0) == 3                   # 16/15 - 1 within the 10% tolerance
    assert q.desired(pool(0, 1, 0), 3, 0.0) == 1
    kv = KVUsage(KVUsage.Options(target=0.5), None)
    reps = pool(0, 0)
    reps[0].kv.usage, reps[1].kv.usage = 0.9, 0.7
    assert kv.desired(reps, 2, 0.0) == 4                           # ceil(2 x 0.8 / 0.5)


def test_slo_attainment_policy_adds_below_target_and_removes_when_met_and_idle():
    p = SLOAttainment(SLOAttainment.Options(target=0.9, ttft_s=1.0, window_s=10, step=2), None)

    def finish(t: float, ttft: float) -> None:
        r = Request(0, t - ttft - 1.0, 10, 5)
        r.first_token, r.finish, r.generated, r.state = t - 1.0, t, 5, FINISHED
        p.observe(r)

    for i in range(8):
        finish(1.0 + i, 0.5)
    finish(9.0, 2.0)
    finish(9.5, 3.0)                                               # 8 of 10 met
    assert p.attainment(10.0) == pytest.approx(0.8)
    assert p.desired(pool(1, 1), 2, 10.0) == 4
    assert p.attainment(18.5) == pytest.approx(0.0)                # only the two late ones left in the window
    finish(20.0, 0.1)
    assert p.attainment(29.0) == 1.0 and p.desired(pool(1, 1), 2, 29.0) == 1
    busy = pool(1, 1)
    busy[0].waiting = [object()]
    assert p.desired(busy, 2, 29.0) == 2                           # met, but someone waits: hold


# ----------------------------------------------------------------------------- config errors

@pytest.mark.parametrize("change, match", [
    ({"min_replicas": 4, "max_replicas": 2}, "min_replicas=4 exceeds max_replicas=2"),
    ({"policy": "cpu"}, "unknown autoscaler 'cpu'"),
    ({"policy_options": {}}, r"autoscaling\.policy_options\.target"),
    ({"policy_options": {"target": 8, "tolerance": 1}}, r"autoscaling\.policy_options\.tolerance: unknown option"),
    ({"provisioning_delay_s": -1}, r"autoscaling\.provisioning_delay_s"),
])
def test_bad_autoscaling_configs_are_one_line_errors(change, match):
    cfg = config(1, 4, 1)
    cfg["autoscaling"].update(change)
    with pytest.raises(ConfigError, match=match) as err:
        load_config(cfg)
    assert "\n" not in str(err.value)


def test_initial_replicas_outside_the_bounds_and_pools_are_refused():
    with pytest.raises(ConfigError, match=r"deployment.replicas=5 .* within min_replicas=1 and max_replicas=4"):
        run(config(1, 4, 5))
    cfg = config(1, 4, 1)
    del cfg["deployment"]
    cfg["pools"] = {"prefill": {"replicas": 1}, "decode": {"replicas": 1}}
    with pytest.raises(ConfigError, match="autoscaling: scales a colocated deployment"):
        run(copy.deepcopy(cfg))
