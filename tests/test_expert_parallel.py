"""Expert parallelism inside a replica (parallelism.ep = tp): whole experts spread over the TP GPUs, tokens
dispatched and combined by two all-to-alls per MoE layer, the busiest GPU setting the pace (expert-load skew at
large batch, the most experts touched at small batch)."""
from __future__ import annotations

import itertools
import math

import pytest

from experiments.runner import run
from sim.cost import BatchShape, CostModel, _expected_max_binomial
from sim.errors import ConfigError
from sim.hardware import get_gpu
from sim.models import get_model


def cost(ep: bool, skew: float = 1.0, tp: int = 4, alltoall=None, model: str = "mixtral-8x7b") -> CostModel:
    return CostModel(get_model(model), get_gpu("h100"), tp=tp, expert_parallel=ep, expert_skew=skew,
                     alltoall=alltoall)


def op(c: CostModel, shape: BatchShape, name: str) -> float:
    return sum(r.time_s for r in c.breakdown(shape) if r.name == name)


def test_expected_busiest_gpu_matches_enumeration():
    # 4 GPUs x 2 experts, each expert touched with probability p independently: enumerate every outcome
    p = 0.25
    exact = 0.0
    for touched in itertools.product((0, 1), repeat=8):
        prob = math.prod(p if t else 1 - p for t in touched)
        exact += prob * max(sum(touched[2 * g:2 * g + 2]) for g in range(4))
    assert _expected_max_binomial(2, p, 4) == pytest.approx(exact, rel=1e-12)
    assert _expected_max_binomial(32, 1.0, 8) == 32 and _expected_max_binomial(32, 0.0, 8) == 0


def test_skew_scales_the_busiest_gpus_expert_work_at_large_batch():
    prefill = BatchShape.prefill(4, 4096)
    even, skewed = (op(cost(True, s), prefill, "moe_experts") for s in (1.0, 2.0))
    tp_only = op(cost(False), prefill, "moe_experts")
    assert even == pytest.approx(tp_only, rel=0.1)          # balanced EP does the same FLOPs per GPU as TP
    assert skewed / even == pytest.approx(2.0, rel=0.1)     # compute-bound: twice the tokens, twice the time


def test_small_batches_pay_for_the_busiest_gpus_whole_experts():
    one = BatchShape.decode(1, 1000)
    # TP reads 1/4 of each of the 2 touched experts; under EP the busiest GPU reads ~1.13 whole experts
    ratio = op(cost(True), one, "moe_experts") / op(cost(False), one, "moe_experts")
    assert 1.6 < ratio < 2.6
    big = BatchShape.decode(256, 256_000)
    assert op(cost(True), big, "moe_experts") == pytest.approx(op(cost(False), big, "moe_experts"), rel=0.05)


def test_all_to_alls_replace_the_moe_all_reduce_and_follow_the_path():
    shape = BatchShape.prefill(2, 2048)
    tp_c, ep_c = cost(False), cost(True)
    assert op(ep_c, shape, "tp_allreduce") == pytest.approx(op(tp_c, shape, "tp_allreduce") / 2, rel=1e-9)
    assert op(ep_c, shape, "ep_alltoall") > 0 and op(tp_c, shape, "ep_alltoall") == 0
    slow = cost(True, alltoall=lambda nbytes: 50e-6 + nbytes / 25e9)     # an inter-node fabric
    fast = cost(True, alltoall=lambda nbytes: 10e-6 + nbytes / 400e9)    # NVLink
    layers = get_model("mixtral-8x7b").num_moe_layers
    nbytes = 2 * 2048 / 4 * 2 * 4096 * 2                                 # tokens / ep x top-k x hidden x bf16
    assert op(slow, shape, "ep_alltoall") == pytest.approx(layers * 2 * (50e-6 + nbytes / 25e9), rel=1e-9)
    assert slow.step_time(shape) - fast.step_time(shape) == pytest.approx(
        layers * 2 * ((50e-6 + nbytes / 25e9) - (10e-6 + nbytes / 400e9)), rel=1e-9)


def test_decode_runs_stay_exact_under_ep():
    c = cost(True, 1.3)
    times = c.decode_run_times(48, 48 * 901, 20)          # context sums count c + 1
    assert list(times) == [c.step_time(BatchShape.decode(48, 900 + i)) for i in range(20)]
    assert c.decode_run_list(48, 48 * 901, 20) == list(times)


def test_bad_expert_parallelism_is_one_line():
    with pytest.raises(ConfigError, match="no experts"):
        cost(True, model="llama-3.1-8b")
    with pytest.raises(ConfigError, match="do not split evenly"):
        cost(True, tp=16)                                  # 8 experts over 16 GPUs
    with pytest.raises(ConfigError, match="expert_load_skew"):
        cost(True, 0.5)


def test_ep_in_a_config_runs_on_the_placement():
    cfg = {"model": "mixtral-8x7b", "hardware": {"gpu": "h100"}, "seed": 0, "parallelism": {"tp": 4, "ep": 4},
           "engine": {"max_model_len": 4096},
           "workload": {"type": "poisson", "stages": [{"rate": 10, "duration_s": 20}], "input_len": 1000,
                        "output_len": 100}, "sim": {"progress": False}}
    ep = run(cfg).summary
    tp = run({**cfg, "parallelism": {"tp": 4}}).summary
    skewed = run({**cfg, "parallelism": {"tp": 4, "ep": 4, "expert_load_skew": 2.0}}).summary
    assert ep["requests"]["completed"] == ep["requests"]["total"] > 150
    assert skewed["ttft_s"]["mean"] > ep["ttft_s"]["mean"]          # prefills wait for the busiest GPU
    assert ep["tpot_s"]["mean"] != tp["tpot_s"]["mean"]
    with pytest.raises(ConfigError, match="parallelism.ep=2"):
        run({**cfg, "parallelism": {"tp": 4, "ep": 2}})
