"""Speculative decoding (policies/speculative.py) and its validation point (experiments/validation/speculative.py).

Closed forms first (tokens per step, Leviathan's speed-up), then the acceptance samplers against them,
then what each drafter costs in time and memory, then the one-line config errors, then gpt-fast's
published Llama-2-70B + 7B point.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from policies.speculative import (MTP, DraftModel, NGram, Speculator, acceptance_pmf, alpha_for_mean_accepted,
                                  draft_engine_profile, expected_speedup, expected_tokens_per_step, make_speculator,
                                  read_acceptance_lengths, verify_batch_shape)
from sim.cost import BatchShape, CostModel
from sim.errors import ConfigError
from sim.hardware import DTYPE_BYTES, get_gpu
from sim.models import get_model
from sim.registry import REGISTRY

A100 = get_gpu("a100-sxm-80gb")
H100 = get_gpu("h100-sxm-80gb")
N = 200_000


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


@pytest.fixture(scope="module")
def target70() -> CostModel:
    return CostModel(get_model("llama-3.1-70b"), H100, tp=4, engine="vllm")


@pytest.fixture(scope="module")
def target8() -> CostModel:
    return CostModel(get_model("llama-3.1-8b"), H100, tp=1, engine="vllm")


# ----------------------------------------------------------------------------- closed forms

def test_tokens_per_step_limits():
    for k in (1, 4, 8):
        assert expected_tokens_per_step(0.0, k) == 1.0
        assert expected_tokens_per_step(1e-12, k) == pytest.approx(1.0)
        assert expected_tokens_per_step(1.0, k) == k + 1
        assert expected_tokens_per_step(1.0 - 1e-9, k) == pytest.approx(k + 1, rel=1e-6)
    assert expected_tokens_per_step(0.8, 4) == pytest.approx(1 + 0.8 + 0.64 + 0.512 + 0.4096)


def test_speedup_is_tokens_over_draft_plus_verify_time():
    assert expected_speedup(0.8, 4, 0.0) == pytest.approx(expected_tokens_per_step(0.8, 4))
    assert expected_speedup(0.8, 4, 0.05) == pytest.approx((1 - 0.8 ** 5) / (0.2 * 1.2))
    assert expected_speedup(0.0, 4, 0.1) < 1.0        # all drafts rejected: drafting is pure cost


def test_alpha_for_mean_accepted_inverts_the_closed_form():
    for a, k in ((0.3, 2), (0.8, 4), (0.95, 8)):
        assert alpha_for_mean_accepted(expected_tokens_per_step(a, k) - 1, k) == pytest.approx(a, abs=1e-9)
    with pytest.raises(ConfigError):
        alpha_for_mean_accepted(5.0, 4)


def test_pmf_of_iid_acceptance_is_truncated_geometric():
    pmf = acceptance_pmf([0.8] * 4)
    assert pmf.tolist() == pytest.approx([0.2, 0.16, 0.128, 0.1024, 0.4096])
    assert pmf.sum() == pytest.approx(1.0)


# ----------------------------------------------------------------------------- acceptance sampling

@pytest.mark.parametrize("alpha,k", [(0.8, 4), (0.5, 3), (0.95, 8), (0.6, 1)])
def test_sampler_mean_matches_closed_form(target8, alpha, k):
    spec = make_speculator({"draft_model": "llama-3.2-1b", "num_draft_tokens": k, "acceptance_rate": alpha},
                           target8, rng(1))
    x = np.array(spec.sample_accepted(N))
    assert x.min() >= 0 and x.max() <= k
    assert x.mean() + 1 == pytest.approx(expected_tokens_per_step(alpha, k), rel=0.01)
    assert spec.expected_accepted() + 1 == pytest.approx(expected_tokens_per_step(alpha, k), rel=1e-12)
    # P(accepted >= i) = alpha^i
    for i in range(1, k + 1):
        assert (x >= i).mean() == pytest.approx(alpha ** i, abs=0.005)


def test_sampling_is_seeded_and_vectorised(target8):
    a = make_speculator({"method": "ngram"}, target8, rng(7))
    b = make_speculator({"method": "ngram"}, target8, rng(7))
    assert a.sample_accepted(1000) == b.sample_accepted(1000)
    assert a.sample_accepted(0) == []
    assert all(isinstance(v, int) for v in a.sample_accepted(5))


def test_mtp_heads_decay(target8):
    spec = make_speculator({"method": "mtp", "num_draft_tokens": 3, "acceptance_rate": 0.9,
                            "acceptance_decay": 0.8}, target8, rng(2))
    x = np.array(spec.sample_accepted(N))
    survive = [1.0, 0.9, 0.9 * 0.72, 0.9 * 0.72 * 0.576]
    for i in range(4):
        assert (x >= i).mean() == pytest.approx(survive[i], abs=0.005)
    assert x.mean() == pytest.approx(sum(survive[1:]), rel=0.01)


@pytest.mark.parametrize("fmt", ["json-list", "json-counts", "csv-counts", "csv-observations"])
def test_empirical_lengths_reproduce_the_files_histogram(tmp_path, target8, fmt):
    counts = {0: 143, 1: 62, 2: 78, 3: 124, 4: 593}
    obs = [n for n, c in counts.items() for _ in range(c)]
    if fmt == "json-list":
        path = tmp_path / "acc.json"
        path.write_text(json.dumps(obs))
    elif fmt == "json-counts":
        path = tmp_path / "acc.json"
        path.write_text(json.dumps({str(n): c for n, c in counts.items()}))
    elif fmt == "csv-counts":
        path = tmp_path / "acc.csv"
        path.write_text("accepted,count\n" + "".join(f"{n},{c}\n" for n, c in counts.items()))
    else:
        path = tmp_path / "acc.csv"
        path.write_text("".join(f"{n}\n" for n in obs))
    want = np.array(list(counts.values())) / sum(counts.values())
    assert read_acceptance_lengths(path, 4) == pytest.approx(want)
    spec = make_speculator({"draft_model": "llama-3.2-1b", "acceptance_lengths_path": str(path)}, target8, rng(3))
    x = np.array(spec.sample_accepted(N))
    assert np.bincount(x, minlength=5) / N == pytest.approx(want, abs=0.005)
    assert spec.expected_accepted() == pytest.approx(float(np.dot(np.arange(5), want)))


def test_empirical_lengths_beyond_k_are_refused(tmp_path, target8):
    path = tmp_path / "acc.json"
    path.write_text("[0, 1, 6]")
    with pytest.raises(ConfigError, match="0..4"):
        make_speculator({"draft_model": "llama-3.2-1b", "acceptance_lengths_path": str(path)}, target8, rng())


# ----------------------------------------------------------------------------- time and memory

def test_draft_time_is_k_draft_decode_steps_without_host_overhead(target70):
    spec = make_speculator({"draft_model": "llama-3.2-1b", "num_draft_tokens": 4}, target70, rng())
    draft = spec.draft_cost
    assert draft.engine.step_overhead_s == 0 and not draft.engine.async_scheduling
    assert draft.engine.cuda_graphs == target70.engine.cuda_graphs
    seqs, ctx = 8, 8 * 500
    want = sum(draft.step_time(BatchShape(tokens=seqs, sampled=seqs, decode_seqs=seqs, decode_ctx=ctx + (i + 1) * seqs))
               for i in range(4))
    assert spec.draft_time(seqs, ctx) == pytest.approx(want, rel=1e-12)
    assert spec.draft_time(0, 0) == 0.0
    # the same model as the vLLM engine prices it would carry 1.5 ms of host overhead per step
    as_engine = CostModel(get_model("llama-3.2-1b"), H100, tp=4, engine=target70.engine)
    assert spec.draft_time(seqs, ctx) < 4 * as_engine.step_time(BatchShape.decode(seqs, 500))


def test_draft_time_grows_with_batch_and_k(target70):
    times = {}
    for k in (1, 2, 4, 8):
        spec = make_speculator({"draft_model": "llama-3.2-1b", "num_draft_tokens": k}, target70, rng())
        times[k] = [spec.draft_time(b, b * 1000) for b in (1, 8, 64, 256)]
        assert times[k] == sorted(times[k]) and times[k][0] < times[k][-1]
    for b in range(4):
        col = [times[k][b] for k in (1, 2, 4, 8)]
        assert col == sorted(col) and col[-1] > 7 * col[0]


def test_draft_memory_is_the_draft_models(target70):
    same_tp = make_speculator({"draft_model": "llama-3.2-1b"}, target70, rng())
    one_gpu = make_speculator({"draft_model": "llama-3.2-1b", "draft_tp": 1}, target70, rng())
    fp8 = make_speculator({"draft_model": "llama-3.2-1b", "draft_weight_dtype": "fp8"}, target70, rng())
    m = get_model("llama-3.2-1b")
    assert same_tp.extra_weight_bytes_per_gpu == pytest.approx(m.total_params * 2 / 4)
    assert one_gpu.extra_weight_bytes_per_gpu == pytest.approx(m.total_params * 2)
    sixteen = m.embedding_params + m.lm_head_params + m.norm_params     # an fp8 checkpoint keeps these in bf16
    assert fp8.extra_weight_bytes_per_gpu == pytest.approx(((m.total_params - sixteen) + 2 * sixteen) / 4)
    assert same_tp.extra_kv_bytes_per_token_per_gpu == pytest.approx(m.kv_bytes_per_token(2.0) / 4)
    assert one_gpu.extra_kv_bytes_per_token_per_gpu == pytest.approx(m.kv_bytes_per_token(2.0))


def test_ngram_costs_no_weights_no_kv(target70):
    spec = make_speculator({"method": "ngram", "num_draft_tokens": 5, "lookup_latency_s": 3e-5}, target70, rng())
    assert isinstance(spec, NGram) and spec.k == 5
    assert spec.extra_weight_bytes_per_gpu == 0 and spec.extra_kv_bytes_per_token_per_gpu == 0
    assert spec.draft_time(64, 64_000) == 3e-5 and spec.draft_time(0, 0) == 0.0


def test_mtp_weights_are_head_layers_target_layers(target70):
    m = get_model("llama-3.1-70b")
    h = m.hidden_size
    per_layer = m.attention_params_per_layer + 3 * h * m.intermediate_size + 2 * h     # attention, SwiGLU, 2 norms
    for layers in (1.0, 0.5, 2.0):
        spec = make_speculator({"method": "mtp", "head_layers": layers}, target70, rng())
        assert spec.extra_weight_bytes_per_gpu == pytest.approx(layers * per_layer * DTYPE_BYTES["bf16"] / 4, rel=1e-6)
        assert spec.extra_kv_bytes_per_token_per_gpu == pytest.approx(
            layers * target70.kv_bytes_per_token_per_gpu / m.num_layers)


def test_mtp_time_is_a_fraction_of_a_target_step(target70):
    one = make_speculator({"method": "mtp", "num_draft_tokens": 1}, target70, rng())
    three = make_speculator({"method": "mtp", "num_draft_tokens": 3}, target70, rng())
    two_layers = make_speculator({"method": "mtp", "num_draft_tokens": 1, "head_layers": 2}, target70, rng())
    bare = CostModel(target70.model, H100, tp=4, engine=draft_engine_profile(target70.engine))
    step = bare.step_time(BatchShape.decode(32, 1000))
    t1 = one.draft_time(32, 32 * 1000)
    assert step / 80 < t1 < step / 5          # one layer plus the LM head and sampling
    assert three.draft_time(32, 32 * 1000) == pytest.approx(3 * t1, rel=0.02)
    assert t1 < two_layers.draft_time(32, 32 * 1000) < 2 * t1


def test_verify_shape_scores_k_plus_1_positions_per_sequence(target70):
    b = verify_batch_shape(8, 8 * 1000, 4)
    assert (b.tokens, b.sampled, b.prefill_seqs, b.prefill_kv) == (40, 40, 8, 8 * 1005)
    one = BatchShape()
    one.add_prefill(5, 1000, True)
    assert verify_batch_shape(1, 1000, 4).prefill_attn == one.prefill_attn
    dec = target70.step_time(BatchShape.decode(8, 1000))
    assert dec < target70.step_time(b) < 2 * dec


def test_speedup_from_the_plugin_matches_leviathan(target8):
    """Monte Carlo over the plugin's own samples and draft time, verification priced as one target step."""
    spec = make_speculator({"draft_model": "llama-3.2-1b", "num_draft_tokens": 4, "acceptance_rate": 0.75},
                           target8, rng(4))
    t = target8.step_time(BatchShape.decode(1, 500))
    d = spec.draft_time(1, 500)
    c = d / 4 / t
    tokens = np.mean(spec.sample_accepted(N)) + 1
    assert tokens / (d / t + 1) == pytest.approx(expected_speedup(0.75, 4, c), rel=0.01)


# ----------------------------------------------------------------------------- configuration

def test_plugins_are_registered_with_summaries():
    assert {"draft_model", "ngram", "mtp"} <= set(REGISTRY.names("speculative"))
    for cls in (DraftModel, NGram, MTP):
        assert cls.__doc__.splitlines()[0].strip()
        for name, f in cls.Options.model_fields.items():
            assert f.description, (cls.__name__, name)


def test_make_speculator_defaults_and_protocol(target70):
    assert make_speculator(None, target70, rng()) is None
    assert make_speculator({}, target70, rng()) is None
    spec = make_speculator({"draft_model": "llama-3.2-1b"}, target70, rng())
    assert isinstance(spec, DraftModel) and isinstance(spec, Speculator)
    assert spec.k == 4 and spec.expected_accepted() == pytest.approx(expected_tokens_per_step(0.8, 4) - 1)
    assert isinstance(make_speculator({"method": "MTP"}, target70, rng()), MTP)


@pytest.mark.parametrize("spec,match", [
    ({"draft_model": "llama-3.1-405b"}, "larger than the target"),
    ({"draft_model": "no-such-model"}, "unknown model"),
    ({"method": "medusa-9000"}, "unknown speculative.method 'medusa-9000'; choose one of: draft_model, mtp, ngram"),
    ({"method": "ngram", "draft_model": "llama-3.2-1b"}, "unknown key speculative.draft_model for method ngram"),
    ({"draft_model": "llama-3.2-1b", "num_draft_tokenz": 4}, "unknown key speculative.num_draft_tokenz"),
    ({"num_draft_tokens": 4}, "speculative.method is missing"),
    ({"method": "draft_model"}, "speculative.draft_model is required"),
    ({"draft_model": "llama-3.2-1b", "acceptance_rate": 1.2}, "speculative.acceptance_rate"),
    ({"draft_model": "llama-3.2-1b", "num_draft_tokens": 0}, "speculative.num_draft_tokens"),
    ({"draft_model": "llama-3.2-1b", "draft_tp": 2}, "draft_tp must be 1 or the target's tp"),
    ({"draft_model": "llama-3.2-1b", "draft_weight_dtype": "int3"}, "speculative.draft_weight_dtype"),
    ({"draft_model": "llama-3.2-1b", "acceptance_rate": None}, "acceptance_rate or acceptance_lengths_path"),
    ({"draft_model": "llama-3.2-1b", "acceptance_lengths_path": "/nonexistent/acc.csv"}, "cannot read"),
    ({"method": "mtp", "acceptance_decay": 1.5}, "speculative.acceptance_decay"),
    ("draft_model", "must be a mapping"),
])
def test_config_errors_are_one_line(target70, spec, match):
    with pytest.raises(ConfigError, match=match) as err:
        make_speculator(spec, target70, rng())
    assert "\n" not in str(err.value)


def test_equal_size_draft_is_allowed(target8):
    spec = make_speculator({"draft_model": "llama-3.1-8b", "draft_weight_dtype": "int4"}, target8, rng())
    assert spec.extra_weight_bytes_per_gpu < target8.weight_bytes_per_gpu


# ----------------------------------------------------------------------------- validation: gpt-fast

def test_gpt_fast_non_speculative_point_within_15_percent():
    from experiments.validation.speculative import TARGET_ERROR, non_speculative_point

    pred, meas = non_speculative_point()
    assert meas == 25.25
    assert abs(pred / meas - 1) < TARGET_ERROR


def test_gpt_fast_speculative_point_at_the_documented_acceptance():
    """At the measured acceptance (mean 2.96 of 4 drafts, alpha ~0.88), with verification at its measured cost
    relative to a target step, the prediction is within 15% of 48.4 tok/s. The cost model alone prices a 5-row
    int4 verification like a 1-row step and lands ~25% high: the documented gap, held below 30% here."""
    from experiments.validation.speculative import (ACCEPTANCE_K4, TARGET_ERROR, gpt_fast_point, measured_points,
                                                    verify_growth)

    assert measured_points() == (48.4, 25.25)
    assert sum(ACCEPTANCE_K4) == pytest.approx(1.0)
    a, b = verify_growth()
    assert 0.05 < b < 0.15 and abs(a) < 0.1
    measured_verify = gpt_fast_point(verify="measured-verify")
    assert measured_verify.tokens_per_step == pytest.approx(3.961, abs=1e-3)
    assert abs(measured_verify.error) < TARGET_ERROR
    cost_only = gpt_fast_point(verify="cost-model")
    # with tinygemm's per-row cost in the cost model (sim.cost, int4_kernel) the point needs no measured input
    assert abs(cost_only.error) < TARGET_ERROR
    assert cost_only.draft_s == pytest.approx(4 * cost_only.refill_s / ACCEPTANCE_K4[-1], rel=0.01)
