"""Energy per token from TDP (`sim.energy`) and the energy fields of `estimate`, on edge devices too."""
from __future__ import annotations

import pytest

from sim.energy import energy_per_token_j, energy_summary, is_unified_memory
from sim.errors import ConfigError
from sim.estimate import estimate
from sim.hardware import get_gpu


def test_energy_per_token_is_tdp_times_step_over_tokens():
    # an H100 at 700 W decoding 64 sequences in a 20 ms step: 700 x 0.02 / 64 J per token
    assert energy_per_token_j(700.0, 0.020, 64) == pytest.approx(0.21875, rel=1e-15)
    with pytest.raises(ConfigError, match="tokens > 0"):
        energy_per_token_j(700.0, 0.02, 0)


def test_energy_summary_charges_busy_time_at_tdp_and_idle_at_its_fraction():
    s = energy_summary(400.0, 8, busy_s=30.0, sim_s=100.0, output_tokens=1000, idle_fraction=0.1)
    assert s["energy_j"] == pytest.approx(8 * 400 * (30 + 0.1 * 70))              # 118,400 J
    assert s["j_per_output_token"] == pytest.approx(118.4)
    assert s["allocated_energy_j"] == pytest.approx(8 * 400 * 100)
    assert s["mean_power_w"] == pytest.approx(1184.0) and s["utilization"] == pytest.approx(0.3)
    assert s["energy_kwh"] == pytest.approx(118400 / 3.6e6)
    busy_only = energy_summary(400.0, 8, 30.0, 100.0, 1000)
    assert busy_only["energy_j"] == pytest.approx(8 * 400 * 30)
    unknown = energy_summary(None, 8, 30.0, 100.0, 1000)
    assert unknown["energy_j"] is None and unknown["j_per_output_token"] is None
    with pytest.raises(ConfigError, match="idle_fraction"):
        energy_summary(400.0, 8, 30.0, 100.0, 1000, idle_fraction=1.5)


def test_edge_device_estimate_reports_tokens_per_s_and_joules_per_token():
    dev = get_gpu("jetson-orin-nx")
    assert is_unified_memory(dev) and dev.tdp_w == 25
    est = estimate("llama-3.2-1b", dev, context=512)                     # one user's decode step
    d = est.as_dict()
    assert d["power_w"] == 25 and d["energy"]["unified_memory"] is True
    assert d["energy_j_per_token"] == pytest.approx(25 * d["latency_s"], rel=1e-12)
    assert d["tokens_per_s"] == pytest.approx(1 / d["latency_s"])
    # decode is memory-bound on 102 GB/s: the step streams the 2.5 GB of weights, ~40 tok/s at most
    assert d["tokens_per_s"] < 102.4e9 / (2 * 1.24e9)
    # a batch of 4 reads the weights once for 4 tokens: energy per token falls
    assert estimate("llama-3.2-1b", dev, context=512, batch=4).energy_j_per_token < 0.5 * est.energy_j_per_token


def test_prefill_energy_is_per_prompt_token_and_power_can_be_given():
    est = estimate("llama-3.2-1b", "apple-m2", prompt_len=256)
    assert est.power_w is None and est.energy_j_per_token is None          # Apple publishes no TDP
    given = estimate("llama-3.2-1b", "apple-m2", prompt_len=256, power_w=20.0)
    assert given.energy_j_per_token == pytest.approx(20.0 * given.latency_s / 256, rel=1e-12)
    assert given.as_dict()["energy"]["energy_j"] == pytest.approx(20.0 * given.latency_s)
    with pytest.raises(ConfigError, match="power"):
        estimate("llama-3.2-1b", "apple-m2", context=10, power_w=0)


def test_datacenter_estimate_uses_the_catalogue_tdp():
    est = estimate("llama-3.1-8b", "h100", context=1024, batch=16)
    assert est.power_w == get_gpu("h100").tdp_w
    assert est.energy_j_per_token == pytest.approx(est.power_w * est.latency_s / 16, rel=1e-12)
    assert est.as_dict()["energy"]["unified_memory"] is False


def test_a_tp_replicas_energy_per_token_charges_all_its_gpus():
    one, eight = (estimate("llama-3.1-8b", "h100", batch=32, context=1024, tp=tp) for tp in (1, 8))
    assert eight.energy_j_per_token == pytest.approx(8 * 700.0 * eight.latency_s / 32)
    assert eight.energy_j_per_token > one.energy_j_per_token        # more GPUs per token, not fewer
    with pytest.raises(ConfigError, match="finite number > 0"):
        estimate("llama-3.1-8b", "h100", context=10, power_w=float("nan"))


def test_a_run_config_sets_the_power_and_idle_fraction_it_charges():
    from experiments.runner import run

    wl = {"type": "poisson", "stages": [{"rate": 0.5, "duration_s": 20}], "input_len": 100, "output_len": 20}
    base = {"model": "llama-3.2-1b", "sim": {"progress": False}, "workload": wl}
    edge = run({**base, "hardware": {"gpu": "apple-m2"}})
    assert edge.summary["energy"]["energy_j"] is None                  # no TDP in the catalogue
    given = run({**base, "hardware": {"gpu": "apple-m2"}, "energy": {"power_w": 20, "idle_fraction": 0.25}})
    e = given.summary["energy"]
    sim = given.summary["sim"]["simulated_time_s"]
    assert e["energy_j"] == pytest.approx(20 * (e["busy_s"] + 0.25 * (sim - e["busy_s"])), rel=1e-9)
    with pytest.raises(ConfigError, match="energy.power_w"):
        run({**base, "hardware": {"gpu": "apple-m2"}, "energy": {"power_w": float("inf")}})
