"""Deployments on a cluster, end to end through `experiments.runner.run`.

DP replicas behind a router, prefill-decode disaggregation with the KV cache moving over the
cluster's links, swap preemption over PCIe, and the host / NVMe KV tiers: each with the effect it
exists for, in a seeded scenario with an asserted margin, and the errors a bad deployment gets.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest

from experiments.runner import run
from sim.cost import get_engine_profile
from sim.errors import ConfigError, DeploymentError
from topologies import Cluster, default_cluster

MODEL = "llama-3.1-8b"


def shared_prefix(rate: float, duration: float, prompts: int, sys_len: int = 2000, out: int = 50) -> dict:
    return {"type": "shared_prefix", "stages": [{"rate": rate, "duration_s": duration}],
            "num_system_prompts": prompts, "users_per_system_prompt": 5, "system_prompt_len": sys_len,
            "question_len": 100, "output_len": out}


def base(workload: dict, **top) -> dict:
    cfg = {"model": MODEL, "hardware": {"gpu": "h100"}, "workload": workload, "seed": 3,
           "engine": {"max_model_len": 4096}, "sim": {"progress": False}}
    for k, v in top.items():
        if k == "engine":
            cfg["engine"].update(v)
        else:
            cfg[k] = v
    return cfg


def complete(r) -> None:
    s = r.summary["requests"]
    assert s["completed"] == s["total"] > 0, s


# ----------------------------------------------------------------------------- DP and routers

def test_prefix_affinity_raises_the_cluster_hit_rate_over_round_robin():
    """32 system prompts of 2,000 tokens do not fit one replica's cache; each replica's quarter does."""
    wl = shared_prefix(20, 40, prompts=32)
    cfg = base(wl, deployment={"replicas": 4}, engine={"gpu_memory_utilization": 0.25})
    rr = run(cfg)
    pa = run({**copy.deepcopy(cfg), "router": "prefix_affinity"})
    complete(rr)
    complete(pa)
    assert pa.summary["kv"]["prefix_hit_rate"] > rr.summary["kv"]["prefix_hit_rate"] + 0.15, \
        (rr.summary["kv"]["prefix_hit_rate"], pa.summary["kv"]["prefix_hit_rate"])
    assert pa.summary["ttft_s"]["p50"] < rr.summary["ttft_s"]["p50"]
    assert len(rr.summary["replicas"]) == 4
    counts = [row["completed"] for row in rr.summary["replicas"]]
    assert max(counts) - min(counts) <= 1                       # round robin: even split
    assert set(pa.requests["replica"]) == {0, 1, 2, 3}


def test_dp_replicas_share_the_load_and_fast_equals_iteration():
    wl = {"type": "poisson", "stages": [{"rate": 16, "duration_s": 20}],
          "input_len": {"dist": "lognormal", "mean": 800, "sigma": 0.7, "max": 3000}, "output_len": 120}
    cfg = base(wl, deployment={"replicas": 2}, router="least_outstanding_requests")
    fast = run(cfg)
    it = run({**copy.deepcopy(cfg), "sim": {"progress": False, "mode": "iteration"}})
    complete(fast)
    a = fast.requests.sort_values("request_id")
    b = it.requests.sort_values("request_id")
    for col in ("replica", "first_token_s", "finish_s"):
        assert np.array_equal(a[col].values, b[col].values), col
    one = run(base(wl))
    assert fast.summary["ttft_s"]["p99"] < one.summary["ttft_s"]["p99"]
    assert fast.summary["deployment"]["gpus"] == 2


# ----------------------------------------------------------------------------- disaggregation

def test_disaggregation_removes_prefill_interference_and_pays_the_transfer():
    """Long prompts among decodes: colocated steps carry prompt chunks; the decode pool's never do."""
    wl = {"type": "poisson", "stages": [{"rate": 3, "duration_s": 40}],
          "input_len": {"dist": "uniform", "low": 3000, "high": 6000}, "output_len": 200}
    colo = run(base(wl, deployment={"replicas": 2}, engine={"max_model_len": 8192}))
    pd = run(base(wl, pools={"prefill": {"replicas": 1}, "decode": {"replicas": 1}}, engine={"max_model_len": 8192}))
    complete(colo)
    complete(pd)
    assert pd.summary["itl_s"]["p99"] < 0.5 * colo.summary["itl_s"]["p99"], \
        (colo.summary["itl_s"]["p99"], pd.summary["itl_s"]["p99"])
    t = pd.requests["kv_transfer_s"]
    assert (t > 0).all() and (colo.requests["kv_transfer_s"] == 0).all()
    # the KV of 3-6k tokens of Llama-3.1-8B (128 KiB per token) over NVLink: milliseconds
    kv_bytes = pd.requests["input_tokens"] * 131072
    assert (t >= kv_bytes / 450e9).all() and (t < 0.1).all()
    # TTFT includes the transfer and a step on the decode instance
    assert (pd.requests["ttft_s"] > t).all()
    assert set(pd.requests["prefill_replica"]) == {0} and set(pd.requests["replica"]) == {1}
    assert pd.summary["pools"]["prefill"]["completed"] == pd.summary["pools"]["decode"]["completed"]
    assert any("nvswitch" in link for link in pd.summary["links"])


def test_layerwise_transfer_hides_most_of_the_kv_move():
    wl = {"type": "poisson", "stages": [{"rate": 2, "duration_s": 20}], "input_len": 4000, "output_len": 50}
    pools = {"prefill": {"replicas": 1}, "decode": {"replicas": 1}}
    plain = run(base(wl, pools=pools, engine={"max_model_len": 8192}))
    layered = run(base(wl, pools={**pools, "kv_transfer": {"layerwise": True}}, engine={"max_model_len": 8192}))
    assert layered.requests["kv_transfer_s"].mean() < 0.5 * plain.requests["kv_transfer_s"].mean()
    # every byte still crosses a link: streaming overlaps the move with the prefill, it does not shrink it
    moved = lambda r: sum(v["bytes"] for k, v in r.summary["links"].items())          # noqa: E731
    assert moved(layered) == pytest.approx(moved(plain), rel=1e-6)


def test_layerwise_streams_queue_on_a_saturated_link():
    """Eight prefill GPUs feeding one decode GPU in another node through one NIC: the KV of every prompt must
    cross that NIC, streamed or not, so layer-wise streaming cannot make the run finish faster than
    bytes / NIC bandwidth allows."""
    wl = {"type": "poisson", "stages": [{"rate": 40, "duration_s": 10}], "input_len": 2000, "output_len": 4}
    cfg = base(wl, pools={"prefill": {"replicas": 8}, "decode": {"replicas": 1}, "kv_transfer": {"layerwise": True}},
               engine={"max_model_len": 4096}, cluster={"topology": "multi-node", "node": "hgx", "gpu": "h100",
                                                        "nodes": 2, "fabric": "ib-ndr"})
    r = run(cfg)
    complete(r)
    nic = max((v for k, v in r.summary["links"].items() if "ib" in k or "nic" in k), key=lambda v: v["bytes"])
    kv = r.summary["requests"]["completed"] * 2000 * r.summary["memory"]["kv_bytes_per_token"]
    assert nic["bytes"] >= 0.99 * kv                        # the whole KV crossed the NIC, not one layer's share


# ----------------------------------------------------------------------------- swap and offload

def slow_pcie_cluster(tmp_path, bandwidth: float) -> str:
    g = default_cluster("h100-sxm-80gb", 1).graph.copy()
    for _, _, d in g.edges(data=True):
        if d["kind"] == "pcie":
            d["bandwidth"] = bandwidth
    path = tmp_path / "slow.json"
    Cluster(g).to_json(path)
    return str(path)


def test_swap_beats_recompute_on_fast_pcie_and_loses_on_slow(tmp_path):
    """Long contexts, scarce KV, no prefix caching (vLLM V0): a swap moves ~0.7 GB each way, 14 ms at PCIe Gen5
    speed and 7 s at 0.1 GB/s; recomputing a 5-6k-token context takes ~0.2 s of an H100."""
    wl = {"type": "poisson", "stages": [{"rate": 4, "duration_s": 6}],
          "input_len": {"dist": "uniform", "low": 5000, "high": 6000},
          "output_len": {"dist": "uniform", "low": 150, "high": 300}}
    engine = {"gpu_memory_utilization": 0.23, "max_num_batched_tokens": 2048, "max_model_len": 8192,
              "enable_prefix_caching": False}
    out = {}
    for pcie in ("fast", "slow"):
        for mode in ("recompute", "swap"):
            cfg = base(wl, engine={**engine, "preemption_mode": mode})
            cfg["seed"] = 1
            if pcie == "slow":
                cfg["cluster"] = {"topology": slow_pcie_cluster(tmp_path, 0.1e9)}
            r = run(cfg)
            complete(r)
            assert r.summary["preemptions"] > 0
            out[pcie, mode] = r
    e2e = {k: r.summary["e2e_s"]["mean"] for k, r in out.items()}
    assert e2e["fast", "swap"] < 0.97 * e2e["fast", "recompute"], e2e
    assert e2e["slow", "swap"] > 1.2 * e2e["slow", "recompute"], e2e
    assert out["fast", "swap"].summary["recomputed_tokens"] == 0
    assert out["fast", "recompute"].summary["recomputed_tokens"] > 0
    s = out["slow", "swap"].summary["swap"]
    assert s["out_bytes_per_gpu"] == s["in_bytes_per_gpu"] > 0 and s["copy_wait_s"] > 1.0


def test_cpu_offload_raises_the_hit_rate_when_the_gpu_cache_is_too_small():
    wl = shared_prefix(10, 40, prompts=40, sys_len=3000)
    small = {"gpu_memory_utilization": 0.25}
    gpu_only = run(base(wl, engine=small))
    tiered = run(base(wl, engine={**small, "cpu_offload_gb": 8}))
    nvme = run(base(wl, engine={**small, "cpu_offload_gb": 1, "nvme_offload_gb": 50}))
    for r in (gpu_only, tiered, nvme):
        complete(r)
    off = tiered.summary["offload"]
    assert off["host_hit_rate"] > 0.2
    assert off["gpu_hit_rate"] + off["host_hit_rate"] > gpu_only.summary["kv"]["prefix_hit_rate"] + 0.2
    assert tiered.summary["ttft_s"]["p50"] < 0.5 * gpu_only.summary["ttft_s"]["p50"]
    assert nvme.summary["offload"]["nvme_hit_rate"] > 0.2
    assert off["loaded_bytes_per_gpu"] > 0 and off["stored_bytes_per_gpu"] > 0
    it = run({**base(wl, engine={**small, "cpu_offload_gb": 8}), "sim": {"progress": False, "mode": "iteration"}})
    assert np.array_equal(it.requests.sort_values("request_id")["first_token_s"].values,
                          tiered.requests.sort_values("request_id")["first_token_s"].values)


# ----------------------------------------------------------------------------- bad deployments

WL = {"type": "poisson", "stages": [{"rate": 1, "duration_s": 1}], "input_len": 10, "output_len": 5}


def test_more_gpus_than_the_cluster_has_is_refused():
    with pytest.raises(DeploymentError, match="needs 16 .*cluster has 8"):
        run(base(WL, deployment={"replicas": 16}, cluster={"topology": "hgx-h100", "nodes": 1}))


def test_parallelism_and_deployment_together_is_refused():
    with pytest.raises(ConfigError, match="either parallelism .* or deployment"):
        run(base(WL, parallelism={"tp": 2}, deployment={"replicas": 2}))


def test_pool_tp_beyond_a_node_is_refused():
    with pytest.raises(DeploymentError, match=r"pools.decode.parallelism.tp=16 exceeds"):
        run(base(WL, pools={"prefill": {"replicas": 1}, "decode": {"replicas": 1, "parallelism": {"tp": 16}}}))


def test_nvme_tier_without_nvme_is_refused(tmp_path):
    g = default_cluster("h100-sxm-80gb", 1).graph.copy()
    g.remove_nodes_from([n for n, d in g.nodes(data=True) if d["kind"] == "nvme"])
    path = tmp_path / "no_nvme.json"
    Cluster(g).to_json(path)
    with pytest.raises(ConfigError, match="nvme_offload_gb"):
        run(base(WL, cluster={"topology": str(path)}, engine={"nvme_offload_gb": 10}))


# ----------------------------------------------------------------------------- pipeline parallelism

def test_pipeline_shows_bubbles_at_small_batch_and_fills_under_load():
    """PP = 2: with one virtual engine busy each stage idles half the time; under load both stay busy."""
    out = {}
    for rate in (0.5, 20.0):
        wl = {"type": "poisson", "stages": [{"rate": rate, "duration_s": 30}], "input_len": 500, "output_len": 200}
        r = run(base(wl, parallelism={"tp": 1, "pp": 2}))
        complete(r)
        out[rate] = r.summary["pipeline"]["stage_utilisation"][0]
        d = r.summary["deployment"]
        assert (d["gpus"], d["replicas"], d["pp"], d["engines"]) == (2, 1, 2, 2)   # one replica, 2 virtual engines
        assert len(r.summary["replicas"]) == 2
        # energy charges each stage's GPUs for that stage's own busy time, not for every engine's whole step
        assert r.summary["energy"]["utilization"] == pytest.approx(sum(out[rate]) / 2, rel=1e-3)
    assert max(out[0.5]) < 0.5, out
    assert min(out[20.0]) > 0.8, out


def test_a_pipeline_deeper_than_the_model_is_refused():
    wl = {"type": "poisson", "stages": [{"rate": 1, "duration_s": 5}], "input_len": 100, "output_len": 20}
    with pytest.raises(DeploymentError, match=r"pp=64 exceeds llama-3.1-8b's 32 layers.*use pp <= 32"):
        run(base(wl, parallelism={"tp": 1, "pp": 64}, cluster={"nodes": 8}))


def test_pipeline_stages_hold_a_share_of_the_weights():
    wl = {"type": "poisson", "stages": [{"rate": 1, "duration_s": 5}], "input_len": 100, "output_len": 20}
    one = run(base(wl))
    two = run(base(wl, parallelism={"tp": 1, "pp": 2}))
    assert two.summary["memory"]["weights_gb"] == pytest.approx(one.summary["memory"]["weights_gb"] / 2)
    assert two.summary["memory"]["num_blocks"] > 2 * one.summary["memory"]["num_blocks"]
    with pytest.raises(DeploymentError, match=r"pp=1.*raise tp \(or pp\)"):
        run({**base(wl), "model": "llama-3.1-70b"})


def test_link_utilisation_over_time_is_recorded_with_sampling(tmp_path):
    wl = {"type": "poisson", "stages": [{"rate": 2, "duration_s": 10}], "input_len": 3000, "output_len": 20}
    cfg = base(wl, pools={"prefill": {"replicas": 1}, "decode": {"replicas": 1}})
    cfg["sim"]["sample_interval_s"] = 1.0
    r = run(cfg)
    links = r.links
    assert links is not None and len(links) > 0
    assert links["utilisation"].between(0, 1 + 1e-9).all()
    assert (links["utilisation"] > 0.5).any()                 # a lone KV transfer fills its bottleneck
    r.write(tmp_path / "out")
    assert (tmp_path / "out" / "links.parquet").exists()
    from experiments import charts
    from experiments.report import write_run_report

    fig = charts.link_utilisation_figure(r.links)
    assert 1 <= len(fig.data) <= 8
    html = write_run_report(r, tmp_path / "report.html").read_text()
    assert "Link utilisation over time" in html


def test_a_cluster_config_round_trips_through_its_dump_and_a_sweep(tmp_path):
    """The runner writes config.yaml with every default spelled out; sweeps re-validate the same dump."""
    import yaml

    from experiments.config import load_config
    from experiments.sweep import run_sweep

    cfg = base(WL, deployment={"replicas": 2})
    r = run(cfg)
    r.write(tmp_path / "out")
    again = load_config(tmp_path / "out" / "config.yaml")
    assert again.deployment.replicas == 2
    sweep = {"base": cfg, "grid": {"deployment.replicas": [1, 2]}}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    res = run_sweep(tmp_path / "sweep.yaml", tmp_path / "sweep", workers=1, report=False)
    assert (res.table["status"] == "ok").all(), res.table.get("error")


def test_pools_on_different_gpus_get_a_default_cluster_of_both_parts():
    """H100 prefill and H200 decode without `cluster:`: servers of each part on one fabric, so the KV transfer
    leaves the NVLink domain (slower than between two H100s of one server) and decode runs on the H200s."""
    base = {"model": "llama-3.1-8b", "hardware": {"gpu": "h100"}, "seed": 1, "sim": {"progress": False},
            "workload": {"type": "poisson", "stages": [{"rate": 4, "duration_s": 20}], "input_len": 2000,
                         "output_len": 100}}
    same = run({**base, "pools": {"prefill": {"replicas": 1}, "decode": {"replicas": 1}}}).summary
    mixed = run({**base, "pools": {"prefill": {"replicas": 1}, "decode": {"replicas": 1, "gpu": "h200"}}}).summary
    assert mixed["requests"]["completed"] == mixed["requests"]["total"] > 50
    assert mixed["kv_transfer_s"]["mean"] > 3 * same["kv_transfer_s"]["mean"]
    assert mixed["tpot_s"]["mean"] < same["tpot_s"]["mean"]          # H200's 4.8 TB/s against 3.35
    assert {p["gpu"] for p in mixed["pools"].values()} == {"h100-sxm-80gb", "h200-sxm-141gb"}


def test_cross_node_tp_pays_the_networks_all_reduce_latency_on_every_message():
    """vLLM's custom all-reduce needs NVLink peers: a TP group split over two nodes pays NCCL's latency on the
    network path for each decode step's small all-reduces, so its steps are far slower than in one node."""
    wl = {"type": "poisson", "stages": [{"rate": 0.5, "duration_s": 10}], "input_len": 500, "output_len": 50}
    one = run({**base(wl), "model": "llama-3.1-70b", "cluster": {"topology": "hgx-h100", "nodes": 1},
               "deployment": {"replicas": 1, "parallelism": {"tp": 8}}})
    two = run({**base(wl), "model": "llama-3.1-70b",
               "cluster": {"topology": "multi-node", "node": "hgx", "gpu": "h100", "nodes": 2, "gpus_per_node": 4,
                           "fabric": "ib-hdr"},
               "deployment": {"replicas": 1, "parallelism": {"tp": 8}, "allow_cross_node_tp": True}})
    assert two.summary["tpot_s"]["p50"] > 1.5 * one.summary["tpot_s"]["p50"]
    sixteen = run({**base(wl), "model": "llama-3.1-70b",
                   "deployment": {"replicas": 1, "parallelism": {"tp": 16}, "allow_cross_node_tp": True}})
    complete(sixteen)                                       # allowed across servers, as the option says


def test_host_memory_and_nvme_budgets_are_checked():
    wl = {"type": "poisson", "stages": [{"rate": 1, "duration_s": 2}], "input_len": 100, "output_len": 5}
    with pytest.raises(DeploymentError, match="host memory"):
        run({**base(wl, engine={"cpu_offload_gb": 3000}), "deployment": {"replicas": 1}})
    complete(run({**base(wl, engine={"cpu_offload_gb": 64}), "deployment": {"replicas": 2}}))


SESSIONS = {"type": "sessions", "arrival": {"process": "poisson", "rate": 1.5, "duration_s": 40},
            "turns": {"dist": "uniform", "low": 3, "high": 8}, "system_prompt_len": 300, "num_system_prompts": 3,
            "user_message_len": 200, "output_len": 150, "think_time_s": {"dist": "exponential", "mean": 3}}


def test_a_decode_instance_does_not_reload_kv_its_prefill_instance_sent():
    import experiments.deployment as D

    held = {}
    init = D.Deployment.__init__

    def keep(self, *a, **k):
        init(self, *a, **k)
        held["dep"] = self

    D.Deployment.__init__ = keep
    try:
        r = run({**base(SESSIONS, engine={"max_model_len": 16000, "gpu_memory_utilization": 0.24,
                                          "cpu_offload_gb": 4}),
                 "pools": {"prefill": {"replicas": 1}, "decode": {"replicas": 1}}})
    finally:
        D.Deployment.__init__ = init
    complete(r)
    prefill, decode = held["dep"].replicas
    assert prefill.tiers.loaded_bytes > 0                     # the prefill instance does reuse its host tier
    # the decode side loads only for requests it preempted and resumes, never a prompt that arrived with its KV
    assert decode.tiers.loaded_bytes < 0.05 * prefill.tiers.loaded_bytes


def test_session_affinity_keeps_sessions_while_an_autoscaler_changes_the_replicas():
    import sim.engine as E

    last, moved = {}, []
    orig = E.Replica.enqueue

    def enqueue(self, req):
        prev = last.get(req.session_id)
        if prev is not None and prev is not self and prev.routable_now:
            moved.append(req.session_id)
        last[req.session_id] = self
        return orig(self, req)

    E.Replica.routable_now = property(lambda self: self in self._pool_routable)
    E.Replica.enqueue = enqueue
    try:
        import experiments.deployment as D

        init = D.Deployment.__init__

        def keep(self, *a, **k):
            init(self, *a, **k)
            for rep in self.pools[0].replicas:
                rep._pool_routable = self.pools[0].routable

        D.Deployment.__init__ = keep
        wl = {**SESSIONS, "arrival": {"process": "diurnal", "mean_rate": 2, "amplitude": 0.9, "period_s": 60,
                                      "peak_at_s": 15, "duration_s": 120}, "num_system_prompts": 1}
        r = run({**base(wl, engine={"max_model_len": 16000}), "router": "session_affinity",
                 "deployment": {"replicas": 1},
                 "autoscaling": {"policy": "queue_length", "policy_options": {"target": 4}, "min_replicas": 1,
                                 "max_replicas": 4, "interval_s": 5, "provisioning_delay_s": 10,
                                 "scale_down_cooldown_s": 20}})
    finally:
        E.Replica.enqueue = orig
        D.Deployment.__init__ = init
        del E.Replica.routable_now
    complete(r)
    assert max(a for _, a, _ in r.summary["autoscaling"]["timeline"]) > 1      # it did scale
    assert moved == []                                       # no turn left a replica that was still serving
    # the energy section charges the GPUs the pool held (its billed GPU-hours), not all max_replicas
    held_gpu_s = r.summary["autoscaling"]["gpu_hours"] * 3600
    assert r.summary["energy"]["allocated_energy_j"] == pytest.approx(700.0 * held_gpu_s, rel=1e-6)


def _built(cfg):
    import simpy

    from experiments.config import load_config
    from experiments.deployment import Deployment
    from sim.engine import RequestLog

    return Deployment(load_config(cfg), simpy.Environment(), np.random.SeedSequence(0), RequestLog())


def test_a_pools_own_router_takes_its_own_options():
    wl = {"type": "poisson", "stages": [{"rate": 2, "duration_s": 5}], "input_len": 200, "output_len": 10}
    pools = {"prefill": {"replicas": 2}, "decode": {"replicas": 2, "router": "prefix_affinity",
                                                    "router_options": {"load_guard": 2}}}
    complete(run(base(wl, pools=pools)))
    assert _built(base(wl, pools=pools)).pools[1].router.load_guard == 2
    # naming the top-level router without options of its own: the top-level options
    same = {**pools, "decode": {"replicas": 2, "router": "prefix_affinity"}}
    dep = _built({**base(wl, pools=same), "router": "prefix_affinity", "router_options": {"load_guard": 5}})
    assert [p.router.load_guard for p in dep.pools] == [5, 5]
    with pytest.raises(ConfigError, match="router_options configure the pool's own router"):
        run(base(wl, pools={**pools, "decode": {"replicas": 2, "router_options": {"load_guard": 2}}}))


def test_two_pcie_gpus_keep_the_custom_all_reduce_and_four_pay_nccl():
    wl = {"type": "poisson", "stages": [{"rate": 1, "duration_s": 2}], "input_len": 100, "output_len": 5}
    small = {}
    for tp in (2, 4):
        cost = _built({**base(wl), "hardware": {"gpu": "l40s"}, "parallelism": {"tp": tp}}).replicas[0].cost
        small[tp] = cost._collective[0]
    assert small[2] == pytest.approx(get_engine_profile("vllm").allreduce_latency_s)
    assert small[4] > 5 * small[2]
