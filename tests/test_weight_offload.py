"""Weight / KV offloading (FlexGen-style placement) and PowerInfer's hot/cold split, `sim.weight_offload`.

Closed forms (an all-GPU placement is the wrapped model; a transfer-bound step is offloaded bytes / PCIe
bandwidth), mechanism effects with margins (double buffering, CPU attention, batch vs placement, sparsity),
and an offloaded model larger than the GPU run through the replica engine.
"""
from __future__ import annotations

from dataclasses import replace
from functools import lru_cache

import numpy as np
import pytest

from experiments.runner import run
from sim.cost import BatchShape, CostModel
from sim.errors import ConfigError, DeploymentError
from sim.estimate import estimate
from sim.hardware import get_gpu
from sim.models import get_model
from sim.powerinfer import HotColdCostModel
from sim.weight_offload import (OffloadedCostModel, OffloadHardware, Placement, best_policy,
                                evaluate_policy)

T4 = get_gpu("t4")
HW = OffloadHardware.for_gpu(T4, host_memory_gb=208, disk_gb=1500)
DECODE = BatchShape.decode(1, 512)


@lru_cache(maxsize=None)
def base(model: str = "opt-30b", gpu: str = "t4") -> CostModel:
    return CostModel(get_model(model), get_gpu(gpu), engine="kernels")


def offloaded(placement: Placement, model: str = "opt-30b", hw: OffloadHardware = HW) -> OffloadedCostModel:
    return OffloadedCostModel(base(model), placement, hw)


# ----------------------------------------------------------------------------- closed forms

@pytest.mark.parametrize("shape", [BatchShape.decode(8, 700), BatchShape.prefill(3, 300)])
def test_all_gpu_placement_prices_like_the_wrapped_model(shape):
    b = CostModel(get_model("llama-3.1-8b"), get_gpu("h100"), engine="vllm")
    c = OffloadedCostModel(b, Placement())
    assert c.step_time(shape) == pytest.approx(b.step_time(shape), rel=1e-12)
    assert sum(o.time_s for o in c.breakdown(shape)) == pytest.approx(b.step_time(shape), rel=1e-12)
    assert c.weight_bytes_per_gpu == b.weight_bytes_per_gpu
    assert c.kv_bytes_per_token_per_gpu == b.kv_bytes_per_token_per_gpu


def test_decode_run_times_equal_step_time_element_wise():
    c = offloaded(Placement(0.1, 0.5, 0.0, 1.0, cpu_attention=True, gpu_batch=4))
    times = c.decode_run_times(10, 10 * 513, 7)
    each = [c.step_time(BatchShape(tokens=10, sampled=10, decode_seqs=10, decode_ctx=10 * 513 + i * 10))
            for i in range(7)]
    assert times.tolist() == each                    # exactly, so fast-forward lands on the same timestamps


def test_model_larger_than_gpu_is_refused_without_offload_and_pcie_bound_with_it():
    assert base().weight_bytes_per_gpu > T4.usable_memory_bytes          # 60 GB of OPT-30B on a 16 GB T4
    with pytest.raises(DeploymentError, match="does not fit"):
        estimate("opt-30b", "t4", context=512)
    est = estimate("opt-30b", "t4", context=512, offload="gpu=0,cpu=1", engine="kernels")
    assert est.memory.weights_gb < 16 and est.offload["transfer_bound"] is True
    bound = base().weight_bytes_per_gpu / HW.pcie_bw                    # every weight byte crosses PCIe once
    assert HW.pcie_bw == pytest.approx(12.8e9)                          # PCIe Gen3 x16 (catalogue), the T4's link
    assert bound <= est.latency_s <= 1.05 * bound                       # 1/L for the first layer's load + compute
    faster = offloaded(Placement(0.0, 1.0), hw=replace(HW, pcie_bw=2 * HW.pcie_bw)).step_time(DECODE)
    assert faster == pytest.approx(est.latency_s / 2, rel=0.03)         # twice the PCIe, half the step


def test_weights_on_disk_are_bounded_by_the_disk_read():
    c = offloaded(Placement(0.0, 0.0))
    bound = base().weight_bytes_per_gpu / HW.disk_read_bw
    assert HW.disk_read_bw < HW.pcie_bw
    assert bound <= c.step_time(DECODE) <= 1.05 * bound


def test_offloaded_model_runs_through_the_replica_engine():
    # the config's `offload:` section wraps the replica's cost model (experiments.build.offloaded_cost)
    cfg = {"model": "opt-30b", "hardware": {"gpu": "t4"}, "parallelism": {"tp": 1},
           "engine": {"profile": "kernels", "max_num_seqs": 8, "max_num_batched_tokens": 2048,
                      "max_model_len": 1024, "gpu_memory_utilization": 0.9},
           "offload": {"weights_gpu": 0.1, "weights_cpu": 0.9, "host_memory_gb": 208},
           "workload": {"type": "poisson", "stages": [{"rate": 0.05, "duration_s": 120}],
                        "input_len": 200, "output_len": 16}, "seed": 1, "sim": {"progress": False}}
    res = run(cfg)
    df = res.requests
    assert len(df) > 0 and df["finish_s"].notna().all()
    tpot = ((df["finish_s"] - df["first_token_s"]) / (df["output_tokens"] - 1)).to_numpy()
    floor = 0.9 * base().weight_bytes_per_gpu / HW.pcie_bw            # 90% of the weights cross PCIe per step
    assert np.all(tpot >= floor * 0.999) and np.median(tpot) <= 1.1 * floor
    with pytest.raises(DeploymentError):
        run({**cfg, "offload": None})                                   # 60 GB of weights on a 16 GB T4
    with pytest.raises(ConfigError, match="offload.weights_gpuu"):
        run({**cfg, "offload": {"weights_gpuu": 0.1}})


def test_powerinfer_config_runs_and_sparsity_speeds_decode():
    cfg = {"model": "opt-13b", "hardware": {"gpu": "rtx-4090"},
           "engine": {"max_num_seqs": 4, "max_model_len": 1024},
           "workload": {"type": "poisson", "stages": [{"rate": 0.05, "duration_s": 100}],
                        "input_len": 64, "output_len": 32}, "seed": 1, "sim": {"progress": False}}
    dense = run({**cfg, "powerinfer": {"hot_fraction": 0.4, "activation_sparsity": 0.0}})
    sparse = run({**cfg, "powerinfer": {"hot_fraction": 0.4, "activation_sparsity": 0.9}})
    assert sparse.summary["tpot_s"]["mean"] < 0.7 * dense.summary["tpot_s"]["mean"]


# ----------------------------------------------------------------------------- mechanisms

def test_double_buffering_beats_no_overlap_by_the_hidden_compute():
    on, off = offloaded(Placement(0.0, 1.0)), offloaded(Placement(0.0, 1.0, overlap=False))
    shape = BatchShape.decode(32, 512)
    lc = on.layer_cost(shape)
    L = on.layers
    assert off.step_time(shape) > on.step_time(shape)
    # no overlap: every layer waits for its load, then computes; overlap: max of the two, plus the first load
    assert off.step_time(shape) - on.step_time(shape) == pytest.approx(L * min(lc.gpu, lc.h2d) - lc.fill, rel=1e-9)


def test_cpu_attention_keeps_offloaded_kv_off_pcie():
    shape = BatchShape.decode(64, 512)
    gpu_attn = offloaded(Placement(0.0, 1.0, 0.0, 1.0)).layer_cost(shape)
    cpu_attn = offloaded(Placement(0.0, 1.0, 0.0, 1.0, cpu_attention=True)).layer_cost(shape)
    kv = base().kv_bytes_per_token_per_gpu / base().model.num_layers * 64 * 512      # cached KV per layer
    assert gpu_attn.h2d_bytes - cpu_attn.h2d_bytes == pytest.approx(kv - 64 * base().model.hidden_size * 2, rel=1e-9)
    assert cpu_attn.cpu > 0 and gpu_attn.cpu == 0


def test_best_batch_depends_on_placement():
    """Weights streamed, KV on the GPU: memory caps the batch early. KV in DRAM: the batch grows until the KV
    it streams over PCIe rivals the weights, then throughput flattens."""
    batches = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

    def curve(p: Placement):
        c = offloaded(p)
        return {b: evaluate_policy(base(), p, b, 512, 32, HW, exact=False).throughput
                for b in batches if c.fits(b, 512, 32)}

    kv_gpu, kv_cpu = curve(Placement(0.0, 1.0)), curve(Placement(0.0, 1.0, 0.0, 1.0, gpu_batch=32))
    best_gpu, best_cpu = max(kv_gpu, key=kv_gpu.get), max(kv_cpu, key=kv_cpu.get)
    assert best_gpu <= 16 < 64 <= best_cpu
    assert kv_cpu[best_cpu] > 3 * kv_gpu[best_gpu]
    # throughput rises with batch while the weight load is amortised (up to the memory limit) ...
    assert all(kv_gpu[a] < kv_gpu[b] for a, b in zip(kv_gpu, list(kv_gpu)[1:]))
    # ... and streamed KV makes it flatten: the last doubling gains much less than the first ones
    assert kv_cpu[2] / kv_cpu[1] > 1.9 and kv_cpu[best_cpu] / kv_cpu[best_cpu // 2] < 1.4


def test_best_policy_fits_the_tiers_and_beats_fixed_placements():
    grid = [Placement(wg, wc, cg, cc, cpu_attention=ca) for wg, wc in ((0.0, 1.0), (0.1, 0.9), (0.0, 0.5))
            for cg, cc, ca in ((1.0, 0.0, False), (0.0, 1.0, True))]
    best = best_policy(base(), 512, 32, HW, placements=grid, gpu_batches=(8, 32), num_gpu_batches=(1, 2, 4))
    use = best.memory
    assert use["gpu"] <= T4.usable_memory_bytes and use["host"] <= HW.host_memory_bytes
    for p in grid:
        for gbs in (8, 32):
            c = offloaded(replace(p, gpu_batch=gbs))
            if c.fits(gbs, 512, 32):
                assert best.throughput >= evaluate_policy(base(), replace(p, gpu_batch=gbs), gbs, 512, 32,
                                                          HW).throughput
    small = replace(HW, host_memory_bytes=10e9, disk_bytes=0.0)         # nowhere to put 60 GB of weights
    with pytest.raises(ConfigError, match="no offload policy fits"):
        best_policy(base(), 512, 32, small, placements=grid, gpu_batches=(1,), num_gpu_batches=(1,))


def test_kv_capacity_is_bounded_by_the_host_when_kv_lives_there():
    c = offloaded(Placement(0.0, 1.0, 0.0, 1.0), hw=replace(HW, host_memory_bytes=70e9))
    host_left = 70e9 - base().weight_bytes_per_gpu                      # 10 GB after the weights
    assert c.kv_capacity_tokens(1e12) == int(host_left / base().kv_bytes_per_token_per_gpu)
    assert c.kv_bytes_per_token_per_gpu < base().kv_bytes_per_token_per_gpu / 10     # the GPU holds 2 layers' worth


def test_placement_text_and_validation():
    p = Placement.parse("gpu=0.2,cpu=0.8")
    assert (p.weights_gpu, p.weights_cpu, p.weights_disk, p.kv_gpu) == (0.2, 0.8, 0.0, 1.0)
    p = Placement.parse("gpu=0,disk=0.5,kv_gpu=0,kv_cpu=1,cpu_attention=1,gpu_batch=8")
    assert (p.weights_cpu, p.weights_disk, p.cpu_attention, p.gpu_batch) == (0.5, 0.5, True, 8)
    assert Placement.from_percent(20, 80, 0, 100, 0, 100).act_cpu == 1.0
    with pytest.raises(ConfigError, match="offload.weights_gpu"):
        Placement(0.7, 0.6)
    with pytest.raises(ConfigError, match="--offload"):
        Placement.parse("gpu:0.2")


# ----------------------------------------------------------------------------- PowerInfer

def _hotcold(hot: float, sparsity: float, model: str = "opt-13b") -> HotColdCostModel:
    return HotColdCostModel(base(model, "rtx-4090"), hot, sparsity, OffloadHardware.for_gpu(get_gpu("rtx-4090")))


def test_hot_cold_split_with_everything_hot_and_dense_is_the_wrapped_model():
    b = base("opt-13b", "rtx-4090")
    assert _hotcold(1.0, 0.0).step_time(DECODE) == pytest.approx(b.step_time(DECODE), rel=1e-12)


def test_more_sparsity_and_more_hot_rows_speed_up_decode():
    t = {(h, s): _hotcold(h, s).step_time(DECODE) for h in (0.2, 0.5) for s in (0.5, 0.9)}
    assert t[(0.2, 0.9)] < 0.8 * t[(0.2, 0.5)] and t[(0.5, 0.9)] < t[(0.5, 0.5)]
    assert t[(0.5, 0.5)] < 0.8 * t[(0.2, 0.5)] and t[(0.5, 0.9)] < t[(0.2, 0.9)]


def test_hot_cold_split_beats_plain_offload_for_a_relu_model():
    """Same GPU-resident bytes: PowerInfer computes cold rows where they are and skips inactive ones;
    plain offload ships every offloaded byte over PCIe each step."""
    hc = _hotcold(0.3, 0.9)
    b = base("opt-13b", "rtx-4090")
    assert get_model("opt-13b").ffn_type == "relu"
    share = hc.weight_bytes_per_gpu / b.weight_bytes_per_gpu
    plain = OffloadedCostModel(b, Placement(share, 1.0 - share), hc.hw)
    assert hc.step_time(DECODE) < 0.5 * plain.step_time(DECODE)
    assert hc.decode_run_times(1, 513, 3).tolist() == [hc.step_time(BatchShape(tokens=1, sampled=1, decode_seqs=1,
                                                                                 decode_ctx=513 + i))
                                                       for i in range(3)]


def test_offload_hardware_is_checked_and_unified_memory_has_nothing_to_offload_to():
    from sim.estimate import estimate
    from sim.weight_offload import OffloadHardware, Placement

    with pytest.raises(ConfigError, match="share one memory"):
        estimate("llama-3.1-70b", "jetson-orin-nx", context=512, offload="gpu=0,cpu=1")
    for bad in ({"pcie_gbps": -5}, {"disk_read_gbps": 0}, {"host_flops": 0}, {"host_memory_gb": float("nan")}):
        with pytest.raises(ConfigError, match="must be a finite number > 0"):
            OffloadHardware.for_gpu(get_gpu("t4"), **bad)
    with pytest.raises(DeploymentError, match="do not fit in the 1 GB of host memory"):
        estimate("opt-30b", "t4", context=512, offload="gpu=0.1,cpu=0.9",
                 offload_hardware=OffloadHardware.for_gpu(get_gpu("t4"), host_memory_gb=1))
    assert Placement.parse("gpu=0.1,cpu=0.9,kv_cpu=1").kv_gpu == 0.0         # kv_gpu is what kv_cpu leaves
    with pytest.raises(ConfigError, match="must add to 1"):
        Placement.parse("gpu=0.1,disk=0.5,cpu=0.9")
    with pytest.raises(ConfigError, match="use 1 or 0"):
        Placement.parse("cpu_attention=maybe")
