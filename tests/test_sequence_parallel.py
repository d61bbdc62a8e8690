"""Sequence (context) parallelism: `sim.sequence_parallel` wraps a `CostModel` for a replica of sp ranks.

- Degree 1 is the wrapped model; the SP pricing path at degree 1 reproduces `CostModel.step_time` (guards the
  private coefficients it reads from sim/cost.py).
- Memory: KV per GPU / sp, weights unchanged; a prompt longer than one GPU's KV is refused at sp 1, fits at 4 and 8,
  and finishes through the engine, paying its ring transfers when the link is slow (closed form).
- Ring: a slow link shows (time > compute-only), a fast one hides (time within a few % of compute / sp).
- Ulysses: the all-to-all time is the closed form from the model's dimensions, grows with sequence length and
  shrinks with bandwidth; sp must divide the heads (ConfigError naming parallelism.sp).
- Decode: fast-forward times equal `step_time` exactly; attention over 1/sp of the context plus a combine.
"""
from __future__ import annotations

from unittest.mock import patch

import numpy as np
import pytest

from sim.cost import BatchShape, CostModel
from sim.errors import ConfigError, DeploymentError
from sim.hardware import get_gpu, get_link
from sim.models import get_model
from sim.sequence_parallel import (SequenceParallelCostModel, max_prompt_tokens, ring_hiding_block_tokens,
                                   wrap)

H100 = get_gpu("h100-sxm-80gb")
H200 = get_gpu("h200-sxm-141gb")
NVLINK = get_link("nvlink4-nvswitch")
NV_BW, NV_LAT = NVLINK.bandwidth, NVLINK.latency_us * 1e-6
NO_LINK = 1e18            # bytes/s: communication costs nothing (compute-only reference)


def llama8b(engine: str = "vllm", tp: int = 1) -> CostModel:
    return CostModel(get_model("llama-3.1-8b"), H100, tp=tp, engine=engine)


def mixed() -> BatchShape:
    b = BatchShape()
    b.add_prefill(4096, 20_000, True)
    for c in (100, 5000, 70_000):
        b.add_decode(c)
    return b


SHAPES = {"prefill": BatchShape.prefill(1, 32_768), "chunk": BatchShape.prefill(1, 8192, 200_000),
          "decode": BatchShape.decode(8, 60_000), "mixed": mixed()}


# ----------------------------------------------------------------------------- degree 1 and the wrapped model

@pytest.mark.parametrize("kind", ["ring", "ulysses"])
def test_degree_one_is_the_wrapped_model(kind):
    cost = llama8b()
    assert wrap(cost, 1, kind) is cost
    sp = SequenceParallelCostModel(cost, 1, kind)
    for b in SHAPES.values():
        assert sp.step_time(b) == cost.step_time(b)
        assert [r.time_s for r in sp.breakdown(b)] == [r.time_s for r in cost.breakdown(b)]
    assert np.array_equal(sp.decode_run_times(5, 50_000, 40), cost.decode_run_times(5, 50_000, 40))
    assert sp.kv_bytes_per_token_per_gpu == cost.kv_bytes_per_token_per_gpu
    assert sp.weight_bytes_per_gpu == cost.weight_bytes_per_gpu


@pytest.mark.parametrize("engine", ["vllm", "trtllm", "ideal"])
@pytest.mark.parametrize("model,gpu,tp", [("llama-3.1-8b", H100, 1), ("llama-3.1-70b", H100, 4),
                                          ("mixtral-8x7b", H100, 2), ("deepseek-v3", H200, 8)])
@pytest.mark.parametrize("kind", ["ring", "ulysses"])
def test_sp_pricing_path_at_degree_one_reproduces_cost_model(engine, model, gpu, tp, kind):
    """The SP path reads the wrapped model's folded coefficients; at one rank it must land on step_time."""
    cost = CostModel(get_model(model), gpu, tp=tp, engine=engine)
    sp = SequenceParallelCostModel(cost, 1, kind)
    for name, b in SHAPES.items():
        assert sp._step(b) == pytest.approx(cost.step_time(b), rel=1e-12), name


# ----------------------------------------------------------------------------- memory

def test_kv_is_split_over_ranks_and_weights_are_replicated():
    cost = llama8b(tp=2)
    sp = wrap(cost, 4, "ring")
    assert sp.kv_bytes_per_token_per_gpu == pytest.approx(cost.kv_bytes_per_token_per_gpu / 4)
    assert sp.weight_bytes_per_gpu == cost.weight_bytes_per_gpu
    assert (sp.gpus_per_replica, sp.tp, sp.model) == (8, 2, cost.model)


def test_a_1m_token_prompt_does_not_fit_one_h100_and_fits_four_or_eight():
    cost = llama8b()
    one = max_prompt_tokens(cost, 1)
    # 128 KiB of bf16 KV per token: ~56 GB left after 16 GB of weights holds ~450k tokens
    assert 400_000 < one < 500_000 < 1_048_576
    for d in (4, 8):
        n = max_prompt_tokens(cost, d)
        assert n >= 1_048_576
        # every rank keeps the weights, profiles only 1/sp of a step: at least sp times one GPU's tokens
        assert d * one <= n <= d * one * 1.02


def _long_prompt_run(sp: int, bw: float, prompt: int = 100_000, kind: str = "ring"):
    """One prompt longer than a single H100's KV pool at gpu_memory_utilization 0.3, through the engine."""
    from experiments import deployment
    from experiments.runner import run

    orig = deployment.build_cost_model

    def build(*a, **k):
        return wrap(orig(*a, **k), sp, kind, bw, NV_LAT)

    cfg = {"model": "llama-3.1-8b", "hardware": {"gpu": "h100"}, "seed": 0,
           "engine": {"max_model_len": prompt + 16, "gpu_memory_utilization": 0.3, "max_num_batched_tokens": 8192},
           "workload": {"type": "poisson", "stages": [{"rate": 1, "duration_s": 1}], "input_len": prompt,
                        "output_len": 16},
           "sim": {"progress": False}}
    with patch.object(deployment, "build_cost_model", build):
        return run(cfg).summary


def test_ring_attention_lets_a_prompt_longer_than_one_gpus_kv_finish_and_pays_its_transfers():
    prompt, chunk = 100_000, 8192
    with pytest.raises(DeploymentError, match="KV cache holds"):
        _long_prompt_run(1, NV_BW, prompt)
    slow, ideal, nvlink = (_long_prompt_run(4, bw, prompt) for bw in (5e9, NO_LINK, NV_BW))
    for s in (slow, ideal, nvlink):
        assert s["requests"]["completed"] == 1
    # NVLink hides the ring: a rank's 2,048-token query block outlasts its KV block's transfer
    assert nvlink["ttft_s"]["mean"] == pytest.approx(ideal["ttft_s"]["mean"], rel=1e-9)
    # at 5 GB/s every chunk waits for (sp - 1) x (transfer - compute) per layer: the ring's exposed time
    sp = SequenceParallelCostModel(llama8b(), 4, "ring", 5e9, NV_LAT)
    exposed = 0.0
    for start in range(0, prompt, chunk):
        shape = BatchShape.prefill(1, min(chunk, prompt - start), start)
        exposed += sum(r.time_s for r in sp.breakdown(shape) if r.name == "sp_ring_exposed")
    assert exposed > 1.0
    assert slow["ttft_s"]["mean"] - ideal["ttft_s"]["mean"] == pytest.approx(exposed, rel=1e-6)


# ----------------------------------------------------------------------------- ring

def test_ring_on_a_slow_link_pays_its_transfers_and_a_fast_link_hides_them():
    cost = llama8b()
    chunk = SHAPES["chunk"]                      # 8,192 new tokens over 200k cached: 1,024 per rank at sp 8
    free = SequenceParallelCostModel(cost, 8, "ring", NO_LINK, 0.0).step_time(chunk)
    slow = SequenceParallelCostModel(cost, 8, "ring", 20e9, NV_LAT)
    fast = SequenceParallelCostModel(cost, 8, "ring", NV_BW, NV_LAT)
    assert fast.step_time(chunk) == pytest.approx(free, rel=1e-9)
    # closed form of what shows on the slow link: per layer (sp - 1) x (transfer - compute) of one block
    L, d = cost.model.num_layers, 8
    kv_block = -(-(200_000 + 8192) // d) * cost.kv_bytes_per_token_per_gpu        # all layers
    once = slow._per_query * 8192 / d            # the per-query-token work, paid once, not per ring step
    per_block = (next(r.time_s for r in slow.breakdown(chunk) if r.name == "attention_prefill") - once) / d
    expected = (d - 1) * (L * NV_LAT + kv_block / 20e9 - per_block)
    assert expected > 0
    assert slow.step_time(chunk) - free == pytest.approx(expected, rel=1e-6)
    # a whole 128k prompt on NVLink: within a few % of the one-GPU time / sp (kernel floors, smaller GEMMs)
    whole = BatchShape.prefill(1, 131_072)
    ratio = fast.step_time(whole) / (cost.step_time(whole) / d)
    assert 1.0 <= ratio < 1.05


def test_ring_hiding_threshold_separates_hidden_from_exposed_blocks():
    cost = llama8b()
    need = ring_hiding_block_tokens(cost, 50e9, causal=False)   # a chunk over a long cache, PCIe-class link
    assert 1000 < need < 5000
    ctx = 400_000
    for per_rank, shows in ((need * 0.5, True), (need * 2, False)):
        q = int(per_rank * 4)
        b = BatchShape.prefill(1, q, ctx)
        exposed = sum(r.time_s for r in SequenceParallelCostModel(cost, 4, "ring", 50e9, 0.0).breakdown(b)
                      if r.name == "sp_ring_exposed")
        assert (exposed > 0) == shows


# ----------------------------------------------------------------------------- Ulysses

def test_ulysses_alltoall_is_the_closed_form_grows_with_length_and_shrinks_with_bandwidth():
    cost = llama8b()
    m, d, L = cost.model, 4, cost.model.num_layers
    q_and_out = 2 * m.num_heads * m.head_dim * 2                 # bf16 q out, attention output back
    k_and_v = 2 * m.num_kv_heads * m.head_dim * 2

    def a2a(n: int, bw: float) -> float:
        sp = SequenceParallelCostModel(cost, d, "ulysses", bw, 10e-6)
        return next(r.time_s for r in sp.breakdown(BatchShape.prefill(1, n)) if r.name == "sp_alltoall")

    for n in (65_536, 262_144):
        tokens = -(-n // d)
        closed = L * (4 * 10e-6 + (d - 1) / d * tokens * (q_and_out + k_and_v) / 50e9)
        assert a2a(n, 50e9) == pytest.approx(closed, rel=1e-9)
    assert a2a(262_144, 50e9) > 3.9 * a2a(65_536, 50e9)
    assert a2a(262_144, 400e9) < a2a(262_144, 50e9) / 7


def test_ulysses_uses_the_placement_alltoall_when_given():
    cost = llama8b()
    calls = []

    def alltoall(nbytes: float) -> float:
        calls.append(nbytes)
        return 1e-3
    b = BatchShape.prefill(1, 65_536)
    sp = SequenceParallelCostModel(cost, 4, "ulysses", NV_BW, NV_LAT, alltoall=alltoall)
    comm = next(r.time_s for r in sp.breakdown(b) if r.name == "sp_alltoall")
    assert comm == pytest.approx(cost.model.num_layers * 4 * 1e-3, rel=1e-9)
    assert len(set(calls)) == 2       # q / output, and k / v, each exchanged twice


def test_ulysses_needs_sp_to_divide_the_heads():
    with pytest.raises(ConfigError, match=r"parallelism\.sp=3"):
        SequenceParallelCostModel(llama8b(), 3, "ulysses")
    SequenceParallelCostModel(llama8b(), 3, "ring")                        # ring has no such limit
    with pytest.raises(ConfigError, match=r"parallelism\.sp=16"):
        SequenceParallelCostModel(CostModel(get_model("llama-3.1-70b"), H100, tp=8), 16, "ulysses")
    with pytest.raises(ConfigError, match="sp_type: ring"):
        SequenceParallelCostModel(CostModel(get_model("deepseek-v3"), H200, tp=8), 2, "ulysses")
    with pytest.raises(ConfigError, match=r"parallelism\.sp_type"):
        SequenceParallelCostModel(llama8b(), 2, "tree")
    with pytest.raises(ConfigError, match=r"parallelism\.sp must"):
        SequenceParallelCostModel(llama8b(), 0)


def test_ulysses_with_fewer_kv_heads_than_ranks_moves_replicated_kv():
    """Llama-3.1-70B at TP 8 keeps 1 KV head per GPU: Ulysses over 2 ranks sends each KV head to both."""
    cost = CostModel(get_model("llama-3.1-70b"), H100, tp=8)
    b = BatchShape.prefill(1, 65_536)

    def sent(d: int) -> float:
        sp = SequenceParallelCostModel(cost, d, "ulysses", 50e9, 0.0)
        return next(r.bytes for r in sp.breakdown(b) if r.name == "sp_alltoall")
    m, L = cost.model, cost.model.num_layers
    per_tok_q = 2 * (m.num_heads // 8) * m.head_dim * 2
    per_tok_kv = 2 * 1 * m.head_dim * 2
    assert sent(2) == pytest.approx(L * 0.5 * 32_768 * (per_tok_q + 2 * per_tok_kv), rel=1e-9)


# ----------------------------------------------------------------------------- decode and the engine interface

@pytest.mark.parametrize("engine", ["vllm", "trtllm", "splitwise"])
@pytest.mark.parametrize("kind,d", [("ring", 2), ("ring", 8), ("ulysses", 4), ("ring", 3)])
def test_decode_run_times_equal_step_time_exactly(engine, kind, d):
    sp = SequenceParallelCostModel(llama8b(engine), d, kind, NV_BW, NV_LAT)
    contexts = [5, 130, 999, 2047, 400_000, 17]
    start = BatchShape()
    for c in contexts:
        start.add_decode(c)
    times = sp.decode_run_times(len(contexts), start.decode_ctx, 64)
    assert len(times) == 64
    for j in (0, 1, 7, 63):
        shape = BatchShape()
        for c in contexts:
            shape.add_decode(c + j)
        assert float(times[j]) == sp.step_time(shape), j


def test_decode_reads_one_slice_of_the_context_and_pays_a_combine():
    cost = llama8b()
    b = BatchShape.decode(4, 500_000)
    sp = SequenceParallelCostModel(cost, 8, "ring", NV_BW, NV_LAT)
    rows = {r.name: r for r in sp.breakdown(b)}
    one = {r.name: r for r in cost.breakdown(b)}
    assert rows["attention_decode"].bytes == pytest.approx(one["attention_decode"].bytes / 8, rel=1e-3)
    m = cost.model
    combine = m.num_layers * (sp.combine_latency + 7 * 4 * m.num_heads * (m.head_dim + 1) * 4 / NV_BW)
    assert rows["sp_decode_combine"].time_s == pytest.approx(combine, rel=1e-9)
    assert sp.step_time(b) < cost.step_time(b) / 3          # long-context decode is attention-bound


@pytest.mark.parametrize("kind", ["ring", "ulysses"])
@pytest.mark.parametrize("name", list(SHAPES))
def test_breakdown_sums_to_step_time(kind, name):
    for engine in ("vllm", "trtllm"):
        sp = SequenceParallelCostModel(llama8b(engine, tp=2), 4, kind, 50e9, 5e-6)
        rows = sp.breakdown(SHAPES[name])
        assert sum(r.time_s for r in rows) == pytest.approx(sp.step_time(SHAPES[name]), rel=1e-9)
        assert all(r.time_s >= 0 and r.bytes >= 0 for r in rows)


def test_parallelism_sp_in_a_config_spans_tp_x_sp_gpus_and_serves_a_long_prompt():
    from experiments.runner import run

    cfg = {"model": "llama-3.1-8b", "hardware": {"gpu": "h100"}, "seed": 0,
           "parallelism": {"tp": 1, "sp": 4, "sp_type": "ring"},
           "engine": {"max_model_len": 100_016, "gpu_memory_utilization": 0.3, "max_num_batched_tokens": 8192},
           "workload": {"type": "poisson", "stages": [{"rate": 1, "duration_s": 1}], "input_len": 100_000,
                        "output_len": 16},
           "sim": {"progress": False}}
    ring = run(cfg).summary
    assert ring["requests"]["completed"] == 1 and ring["deployment"]["gpus"] == 4
    with pytest.raises(DeploymentError, match="KV cache holds"):
        run({**cfg, "parallelism": {"tp": 1, "sp": 1}})
    # Ulysses' all-to-alls do not overlap with attention: slower prefill than the ring on the same GPUs
    ulysses = run({**cfg, "parallelism": {"tp": 1, "sp": 4, "sp_type": "ulysses"}}).summary
    assert ulysses["ttft_s"]["mean"] > ring["ttft_s"]["mean"]
