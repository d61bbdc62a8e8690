"""Routers (policies/routing.py) on fake replicas: the choice each makes, its ties, its seeded randomness,
the prefix router's load guard and the session map's expiry."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
from scipy import stats

from policies.routing import make_router
from sim.errors import ConfigError
from sim.request import Request


@dataclass
class FakeKV:
    usage: float = 0.0


@dataclass
class FakeReplica:
    index: int
    outstanding: int = 0
    kv: FakeKV = field(default_factory=FakeKV)
    cached: dict[int, int] = field(default_factory=dict)     # first block hash -> cached prompt tokens

    def prefix_hits(self, req: Request) -> int:
        return self.cached.get(req.hashes[0], 0) if req.hashes else 0


def pool(*loads: int) -> list[FakeReplica]:
    return [FakeReplica(i, o) for i, o in enumerate(loads)]


def req(rid: int = 0, arrival: float = 0.0, session: str | None = None, hashes: tuple[int, ...] = ()) -> Request:
    r = Request(rid, arrival, 100, 10, session_id=session)
    r.hashes = hashes
    return r


def router(name: str, options: dict | None = None, seed: int = 0):
    return make_router(name, options or {}, np.random.default_rng(seed))


def picks(rt, replicas, n: int) -> list[int]:
    return [rt.choose(req(i), replicas) for i in range(n)]


def test_round_robin_cycles_whatever_the_load():
    assert picks(router("round_robin"), pool(0, 50, 3), 7) == [0, 1, 2, 0, 1, 2, 0]


def test_random_is_seeded_and_uniform():
    reps = pool(0, 0, 0, 0)
    a = picks(router("random", seed=1), reps, 8000)
    assert a == picks(router("random", seed=1), reps, 8000)
    assert a != picks(router("random", seed=2), reps, 8000)
    counts = np.bincount(a, minlength=4)
    assert stats.chisquare(counts).pvalue > 1e-3


def test_least_outstanding_picks_the_least_loaded_lowest_index_on_ties():
    rt = router("least_outstanding_requests")
    assert rt.choose(req(), pool(5, 2, 7)) == 1
    assert rt.choose(req(), pool(5, 2, 2, 7)) == 1
    assert rt.choose(req(), pool(0, 0, 0)) == 0


def test_least_kv_usage_then_outstanding():
    reps = pool(1, 9, 0)
    for r, u in zip(reps, (0.5, 0.2, 0.2)):
        r.kv.usage = u
    assert router("least_kv_usage").choose(req(), reps) == 2       # equal usage: fewer outstanding
    reps[2].kv.usage = 0.7
    assert router("least_kv_usage").choose(req(), reps) == 1


def test_power_of_two_never_picks_the_most_loaded_of_three():
    counts = np.bincount(picks(router("power_of_two", seed=4), pool(4, 9, 4), 3000), minlength=3)
    assert counts[1] == 0
    assert abs(counts[0] - counts[2]) < 0.1 * 3000        # equal ones share it evenly: ties go to a random probe
    # three distinct loads: the least loaded wins both pairs it is in (2/3), the middle one the third pair
    counts = np.bincount(picks(router("power_of_two", seed=5), pool(1, 5, 9), 3000), minlength=3)
    assert counts[2] == 0
    assert counts[0] / 3000 == pytest.approx(2 / 3, abs=0.04)
    assert router("power_of_two").choose(req(), pool(3)) == 0
    assert picks(router("power_of_two", seed=6), pool(1, 5, 9, 2), 50) == \
        picks(router("power_of_two", seed=6), pool(1, 5, 9, 2), 50)


def test_prefix_affinity_prefers_the_cached_replica():
    reps = pool(0, 0, 3)
    reps[2].cached[77] = 512
    rt = router("prefix_affinity")
    assert rt.choose(req(hashes=(77, 78)), reps) == 2
    assert rt.choose(req(hashes=(11,)), reps) == 0          # no hit anywhere: least outstanding
    assert rt.choose(req(), reps) == 0                      # no hashes at all
    reps[1].cached[77] = 256
    reps[1].outstanding = 1
    assert rt.choose(req(hashes=(77,)), reps) == 2          # the longer hit wins though more loaded
    reps[1].cached[77] = 512
    assert rt.choose(req(hashes=(77,)), reps) == 1          # equal hits: fewer outstanding (1 < 3)
    reps[1].outstanding = 4
    assert rt.choose(req(hashes=(77,)), reps) == 2          # (4 > 3)
    reps[1].outstanding = 3
    assert rt.choose(req(hashes=(77,)), reps) == 1          # equal hits and load: lower position


def test_prefix_affinity_obeys_the_load_guard():
    reps = pool(1, 5, 9)
    reps[2].cached[77] = 512
    r = req(hashes=(77,))
    assert router("prefix_affinity").choose(r, reps) == 2                      # 9 - 1 = 8: within the default 8
    reps[0].outstanding = 0
    assert router("prefix_affinity").choose(r, reps) == 0                      # 9 - 0 = 9 > 8
    assert router("prefix_affinity", {"load_guard": 100}).choose(r, reps) == 2
    assert router("prefix_affinity", {"load_guard": 0}).choose(r, pool(4, 4, 4)) == 0   # no hit on this pool
    equal = pool(4, 4, 4)
    equal[1].cached[77] = 16
    assert router("prefix_affinity", {"load_guard": 0}).choose(r, equal) == 1
    equal[1].outstanding = 5
    assert router("prefix_affinity", {"load_guard": 0}).choose(r, equal) == 0


def test_session_affinity_sticks_to_the_first_replica():
    rt = router("session_affinity")
    reps = pool(3, 1, 2)
    assert rt.choose(req(0, 0.0, "s"), reps) == 1            # first request: least outstanding
    reps[1].outstanding = 50
    assert rt.choose(req(1, 1.0, "s"), reps) == 1            # sticks, whatever the load
    assert rt.choose(req(2, 2.0, "t"), reps) == 2            # a new session: least outstanding now
    assert rt.choose(req(3, 3.0), reps) == 2                 # no session: least outstanding
    assert rt.choose(req(4, 4.0, "t"), reps) == 2


def test_session_affinity_forgets_after_ttl_of_inactivity():
    rt = router("session_affinity", {"ttl_s": 10.0})
    reps = pool(0, 5)
    assert rt.choose(req(0, 0.0, "s"), reps) == 0
    reps[0].outstanding = 9
    assert rt.choose(req(1, 10.0, "s"), reps) == 0           # exactly ttl later: still remembered
    assert rt.choose(req(2, 19.0, "s"), reps) == 0           # activity renews it
    assert rt.choose(req(3, 29.5, "s"), reps) == 1           # 10.5 s idle: forgotten, placed afresh
    assert rt.choose(req(4, 30.0, "s"), reps) == 1


def test_session_affinity_map_stays_bounded():
    rt = router("session_affinity", {"ttl_s": 10.0})
    reps = pool(0, 0)
    for i in range(10_000):
        rt.choose(req(i, float(i), f"s{i}"), reps)
        assert len(rt.sessions) <= 11
    assert list(rt.sessions) == [f"s{i}" for i in range(9989, 10_000)]     # the last ttl_s of sessions


def test_session_affinity_reassigns_when_its_replica_is_gone():
    rt = router("session_affinity")
    assert rt.choose(req(0, 0.0, "s"), pool(5, 5, 0)) == 2
    assert rt.choose(req(1, 1.0, "s"), pool(5, 1)) == 1


def test_router_options_are_validated():
    with pytest.raises(ConfigError, match="'load_gaurd'") as exc:
        router("prefix_affinity", {"load_gaurd": 3})
    assert "did you mean load_guard" in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(ConfigError, match="'ttl_s'"):
        router("session_affinity", {"ttl_s": -1})
    with pytest.raises(ConfigError, match="takes no options"):
        router("least_outstanding_requests", {"x": 1})
    with pytest.raises(ConfigError, match="unknown option 'x'"):
        router("round_robin", {"x": 1})
    with pytest.raises(ConfigError, match="unknown router 'sticky'"):
        router("sticky")


def test_a_user_router_reading_kv_usage_is_exact_under_fast_forward():
    """A router of the user's that reads kv.usage routes the same requests to the same replicas in fast and
    per-iteration mode; one that declares it does not read KV state keeps the full fast-forward."""
    from experiments.deployment import reads_kv
    from experiments.runner import run
    from policies import routing
    from sim.registry import register

    @register("router", "test_user_least_kv", replace=True)
    def user_least_kv(req, replicas):
        return min(range(len(replicas)), key=lambda i: (replicas[i].kv.usage, replicas[i].outstanding, i))

    def counts_only(req, replicas):
        return 0

    counts_only.reads_kv = False
    assert reads_kv(user_least_kv) and not reads_kv(counts_only)
    assert reads_kv(routing.least_kv_usage) and not reads_kv(routing.least_outstanding_requests)
    cfg = {"model": "llama-3.1-8b", "hardware": {"gpu": "h100"}, "seed": 0, "router": "test_user_least_kv",
           "deployment": {"replicas": 3, "parallelism": {"tp": 1}},
           "workload": {"type": "poisson", "stages": [{"rate": 12, "duration_s": 15}],
                        "input_len": {"dist": "lognormal", "mean": 1500, "sigma": 0.7, "max": 6000},
                        "output_len": {"dist": "lognormal", "mean": 300, "sigma": 0.8, "max": 2000}}}
    fast, slow = (run({**cfg, "sim": {"progress": False, "mode": m}}).requests.sort_values("request_id")
                  for m in ("fast", "iteration"))
    assert (fast["replica"].to_numpy() == slow["replica"].to_numpy()).all()
    assert np.array_equal(fast["finish_s"].to_numpy(), slow["finish_s"].to_numpy())
