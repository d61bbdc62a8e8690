"""Arrival processes, length and time distributions, request classes: each produces the law it claims.

Every statistical check uses a fixed seed and a threshold of about three standard errors (or a
p-value above 0.01). Where a test could pass vacuously, a companion assertion shows it can fail
(the wrong law is rejected).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import TypeAdapter, ValidationError
from scipy import stats

from sim.registry import get
from workloads.arrivals import arrival_times, mmpp_mean_rate
from workloads.build import build_workload
from workloads.config import WorkloadConfig
from workloads.lengths import LengthPair, sample_lengths, sample_times
from workloads.arrival_config import ArrivalConfig
from workloads.dist_config import LengthDist, TimeDist

from .test_workload_formats import SHAREGPT_HEAD, VIDUR_HEAD

ARRIVAL = TypeAdapter(ArrivalConfig)
LENGTH = TypeAdapter(LengthDist)
TIME = TypeAdapter(TimeDist)


def times(cfg: dict, seed: int = 0) -> np.ndarray:
    t, _ = arrival_times(ARRIVAL.validate_python(cfg), np.random.default_rng(seed))
    assert np.all(np.diff(t) >= 0) and (len(t) == 0 or t[0] >= 0)
    return t


def lengths(cfg, n: int, seed: int = 0) -> np.ndarray:
    return sample_lengths(LENGTH.validate_python(cfg), n, np.random.default_rng(seed))


# ----------------------------------------------------------------------------- renewal processes


def test_poisson_process_count_and_gaps():
    rate, dur = 4.0, 5000.0
    t = times({"process": "poisson", "rate": rate, "duration_s": dur}, seed=1)
    assert t[-1] < dur
    assert abs(len(t) - rate * dur) < 3 * math.sqrt(rate * dur)       # Poisson count: var = mean
    gaps = np.diff(np.concatenate([[0.0], t]))
    assert stats.kstest(gaps, "expon", args=(0, 1 / rate)).pvalue > 0.01
    assert stats.kstest(gaps, "gamma", args=(4.0, 0, 1 / (4 * rate))).pvalue < 1e-6   # a regular process is not it
    assert len(times({"process": "poisson", "rate": rate, "num_requests": 777})) == 777


@pytest.mark.parametrize("cv", [0.5, 3.0])
def test_gamma_process_has_the_rate_and_cv_it_claims(cv):
    rate, n = 5.0, 40_000
    t = times({"process": "gamma", "rate": rate, "cv": cv, "num_requests": n}, seed=2)
    gaps = np.diff(np.concatenate([[0.0], t]))
    k = 1 / cv**2
    law = stats.gamma(k, scale=1 / (rate * k))
    # chi-square over the law's deciles (with cv 3, 4% of gaps are below the 1e-12 s resolution of
    # times near 8000 s: they land in the first decile, where a KS test would trip over them)
    deciles = np.histogram(gaps, bins=law.ppf(np.linspace(0, 1, 11)))[0]
    assert stats.chisquare(deciles).pvalue > 0.01
    assert abs(gaps.mean() - 1 / rate) < 3 * (cv / rate) / math.sqrt(n)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.06)
    assert stats.chisquare(np.histogram(gaps, bins=stats.expon(scale=1 / rate).ppf(np.linspace(0, 1, 11)))[0]
                           ).pvalue < 1e-6                       # not Poisson
    d = times({"process": "gamma", "rate": rate, "cv": cv, "duration_s": 2000.0}, seed=3)
    assert d[-1] < 2000.0 and abs(len(d) - rate * 2000) < 4 * cv * math.sqrt(rate * 2000)


def _mmpp_count_var(r1: float, r2: float, d1: float, d2: float, w: float) -> tuple[float, float]:
    """Mean and variance of the count in a window of length w of a stationary two-state MMPP."""
    g = 1 / d1 + 1 / d2
    p1, p2 = d1 / (d1 + d2), d2 / (d1 + d2)
    lam = p1 * r1 + p2 * r2
    c = (r1 - r2) ** 2 * p1 * p2                               # Cov(rate(s), rate(s+u)) = c exp(-g u)
    return lam * w, lam * w + 2 * c * (w / g - (1 - math.exp(-g * w)) / g**2)


def test_mmpp_rate_and_burstiness_match_theory():
    r, d, dur = (1.0, 20.0), (30.0, 10.0), 100_000.0
    t = times({"process": "mmpp", "rates": list(r), "mean_dwell_s": list(d), "duration_s": dur}, seed=4)
    mean, var = _mmpp_count_var(*r, *d, dur)
    assert mean / dur == pytest.approx(mmpp_mean_rate(r, d)) == pytest.approx(5.75)
    assert abs(len(t) - mean) < 3 * math.sqrt(var)
    w = 200.0
    counts = np.histogram(t, bins=np.arange(0, dur + w / 2, w))[0]
    m_w, v_w = _mmpp_count_var(*r, *d, w)
    assert counts.var() == pytest.approx(v_w, rel=0.2)           # ~25x a Poisson count's variance
    assert counts.var() > 10 * counts.mean()


def test_mmpp_with_a_transition_matrix_uses_its_stationary_law():
    # 0 -> 1 -> 2 -> 0 always, written as a matrix: same law as the default cycle
    cfg = {"process": "mmpp", "rates": [0.0, 5.0, 20.0], "mean_dwell_s": [10.0, 10.0, 5.0],
           "transitions": [[0, 1, 0], [0, 0, 1], [1, 0, 0]], "duration_s": 50_000.0}
    t = times(cfg, seed=5)
    assert mmpp_mean_rate(cfg["rates"], cfg["mean_dwell_s"], cfg["transitions"]) == pytest.approx(
        (0 * 10 + 5 * 10 + 20 * 5) / 25)
    assert len(t) / 50_000 == pytest.approx(6.0, rel=0.05)
    assert len(times({**cfg, "num_requests": 1234, "duration_s": None}, seed=5)) == 1234


def test_on_off_bursts():
    rate, on, off, dur = 20.0, 5.0, 15.0, 50_000.0
    t = times({"process": "on_off", "rate": rate, "mean_on_s": on, "mean_off_s": off, "duration_s": dur}, seed=6)
    mean, var = _mmpp_count_var(rate, 0.0, on, off, dur)
    assert mean / dur == pytest.approx(5.0)
    assert abs(len(t) - mean) < 3 * math.sqrt(var)
    gaps = np.diff(t)
    assert gaps.std() / gaps.mean() > 2                          # silences make the gaps bursty
    # a 1-s bin lying wholly inside an OFF period is empty: a fraction 0.75 * exp(-1 / 15) of the bins
    # (ON stretches add almost nothing at rate 20); a Poisson process at rate 5 leaves 0.7% empty
    empty = np.mean(np.histogram(t, bins=np.arange(0, dur + 1))[0] == 0)
    assert empty == pytest.approx(off / (on + off) * math.exp(-1 / off), abs=0.015)


# ----------------------------------------------------------------------------- time-varying rates


def _chi_square_counts(t: np.ndarray, edges: np.ndarray, expected: np.ndarray) -> float:
    obs = np.histogram(t, bins=edges)[0]
    return float(stats.chi2.sf(np.sum((obs - expected) ** 2 / expected), len(obs)))


def test_diurnal_sinusoid_rate_within_sampling_error():
    mean, amp, period, dur = 5.0, 0.8, 1000.0, 4000.0
    cfg = {"process": "diurnal", "mean_rate": mean, "amplitude": amp, "period_s": period, "peak_at_s": 250.0,
           "duration_s": dur}
    t = times(cfg, seed=7)
    edges = np.linspace(0, dur, 81)
    w = 2 * math.pi / period
    cum = lambda x: mean * (x + amp / w * np.sin(w * (x - 250.0)))  # noqa: E731 - the integral of the rate
    expected = np.diff(cum(edges))
    assert _chi_square_counts(t, edges, expected) > 0.01
    assert abs(len(t) - expected.sum()) < 3 * math.sqrt(expected.sum())
    flat = np.full(80, len(t) / 80)
    assert _chi_square_counts(t, edges, flat) < 1e-6               # a constant rate is rejected


def test_diurnal_rate_curve_within_sampling_error(tmp_path):
    pts = [[0.0, 2.0], [500.0, 10.0], [1000.0, 2.0], [1500.0, 0.0]]
    cfg = {"process": "diurnal", "points": pts, "duration_s": 2000.0, "rate_scale": 2.0}
    t = times(cfg, seed=8)
    edges = np.linspace(0, 2000, 41)
    fine = np.linspace(0, 2000, 400_001)
    cum = np.concatenate([[0], np.cumsum(np.diff(fine) * 2 * np.interp((fine[1:] + fine[:-1]) / 2, *zip(*pts)))])
    expected = np.diff(np.interp(edges, fine, cum))
    mask = expected > 0
    assert np.histogram(t, bins=edges)[0][~mask].sum() == 0      # rate 0 after 1500 s: nothing arrives
    assert _chi_square_counts(t[t < 1500], edges[: mask.sum() + 1], expected[mask]) > 0.01
    csv = tmp_path / "curve.csv"
    csv.write_text("time_s,rate\n" + "".join(f"{a},{b}\n" for a, b in pts))
    t2 = times({"process": "diurnal", "curve_path": str(csv), "duration_s": 2000.0, "rate_scale": 2.0}, seed=8)
    assert np.array_equal(t, t2)


def test_stage_process_rates():
    t, stage = arrival_times(ARRIVAL.validate_python(
        {"process": "stages", "stages": [{"rate": 2, "duration_s": 500}, {"rate": 10, "duration_s": 200}]}),
        np.random.default_rng(9))
    assert np.bincount(stage).tolist() == [1000, 2000]
    g1 = np.diff(np.concatenate([[500.0], t[stage == 1]]))
    assert stats.kstest(g1, "expon", args=(0, 0.1)).pvalue > 0.01


# ----------------------------------------------------------------------------- lengths and times


def test_normal_lengths_moments():
    n = 40_000
    x = lengths({"dist": "normal", "mean": 500, "std": 80}, n, seed=10)
    assert x.dtype == np.int64
    assert abs(x.mean() - 500) < 3 * 80 / math.sqrt(n)
    assert abs(x.var() - 80**2) < 3 * 80**2 * math.sqrt(2 / n) + 1 / 12 * 3   # + rounding variance
    assert stats.kstest(x + np.random.default_rng(0).uniform(-0.5, 0.5, n), "norm", args=(500, 80)).pvalue > 0.01
    low = lengths({"dist": "normal", "mean": 5, "std": 10, "max": 12}, 1000)
    assert low.min() == 1 and low.max() == 12


def test_zipf_lengths_follow_the_pmf():
    n = 30_000
    x = lengths({"dist": "zipf", "a": 1.2, "n": 40}, n, seed=11)
    k = np.arange(1, 41)
    pmf = k**-1.2 / np.sum(k**-1.2)
    obs = np.bincount(x, minlength=41)[1:]
    assert stats.chisquare(obs, pmf * n).pvalue > 0.01
    assert stats.chisquare(obs, np.full(40, n / 40)).pvalue < 1e-6
    y = lengths({"dist": "zipf", "a": 2.5, "scale": 16}, n, seed=12)
    assert np.all(y % 16 == 0)
    ky = y // 16
    obs = np.array([np.sum(ky == i) for i in range(1, 6)] + [np.sum(ky > 5)])
    p = stats.zipf.pmf(np.arange(1, 6), 2.5)
    assert stats.chisquare(obs, np.append(p, 1 - p.sum()) * n).pvalue > 0.01


def test_uniform_and_fixed_lengths():
    x = lengths({"dist": "uniform", "low": 10, "high": 19}, 20_000, seed=13)
    assert stats.chisquare(np.bincount(x - 10, minlength=10)).pvalue > 0.01
    assert lengths(7, 3).tolist() == [7, 7, 7]


def test_empirical_lengths_resample_rows_jointly():
    src = np.loadtxt(SHAREGPT_HEAD, delimiter=",", skiprows=1, dtype=np.int64)
    pairs = set(map(tuple, src.tolist()))
    d = {"dist": "empirical", "path": str(SHAREGPT_HEAD)}
    inp, out = LengthPair(LENGTH.validate_python(d), LENGTH.validate_python(d), np.random.default_rng(1),
                          np.random.default_rng(2)).draw(5000)
    assert set(zip(inp.tolist(), out.tolist())) <= pairs          # every draw is a real row
    # the marginal follows the source's frequencies
    vals, cnt = np.unique(src[:, 0], return_counts=True)
    obs = np.array([np.sum(inp == v) for v in vals])
    assert stats.chisquare(obs, cnt / cnt.sum() * 5000).pvalue > 0.01
    # two different sources are drawn independently: pairs no longer all come from one row
    other = {"dist": "empirical", "path": str(VIDUR_HEAD), "column": "output"}
    inp2, out2 = LengthPair(LENGTH.validate_python(d), LENGTH.validate_python(other), np.random.default_rng(1),
                            np.random.default_rng(2)).draw(500)
    assert not set(zip(inp2.tolist(), out2.tolist())) <= pairs
    f = lengths({**d, "filter": {"max_total_tokens": 200}}, 2000)
    ok = src[src.sum(axis=1) <= 200]
    assert set(f.tolist()) <= set(ok[:, 0].tolist())


@pytest.mark.parametrize("kind", ["poisson", "sessions"])
def test_an_empirical_output_len_resamples_the_output_column_in_every_workload(kind):
    """`output_len: {dist: empirical}` draws the trace's output lengths (the documented default column), and a
    poisson workload whose two lengths share one file draws whole rows, keeping their joint distribution."""
    src = np.loadtxt(SHAREGPT_HEAD, delimiter=",", skiprows=1, dtype=np.int64)
    d = {"dist": "empirical", "path": str(SHAREGPT_HEAD)}
    if kind == "poisson":
        cfg = {"type": "poisson", "stages": [{"rate": 100, "duration_s": 200}], "input_len": d, "output_len": d}
    else:
        cfg = {"type": "sessions", "arrival": {"process": "poisson", "rate": 20, "duration_s": 200},
               "turns": 2, "user_message_len": 50, "output_len": d, "think_time_s": 1.0}
    w = build_workload(TypeAdapter(WorkloadConfig).validate_python(cfg), 3)
    w = w.preview() if hasattr(w, "preview") else w
    out = np.asarray(w.output_tokens)
    se = src[:, 1].std() / math.sqrt(len(out))
    assert abs(out.mean() - src[:, 1].mean()) < 5 * se + 0.5
    if kind == "poisson":
        pairs = set(map(tuple, src.tolist()))
        assert set(zip(np.asarray(w.input_tokens).tolist(), out.tolist())) <= pairs


@pytest.mark.parametrize("cfg, dist", [
    ({"dist": "exponential", "mean": 3.0}, stats.expon(scale=3.0)),
    ({"dist": "gamma", "mean": 2.0, "cv": 2.0}, stats.gamma(0.25, scale=8.0)),
    ({"dist": "uniform", "low": 1.0, "high": 4.0}, stats.uniform(1.0, 3.0)),
    ({"dist": "lognormal", "mean": 2.0, "sigma": 0.7}, stats.lognorm(0.7, scale=2.0 * math.exp(-0.245))),
])
def test_time_distributions(cfg, dist):
    x = sample_times(TIME.validate_python(cfg), 20_000, np.random.default_rng(14))
    assert stats.kstest(x, dist.cdf).pvalue > 0.01
    assert abs(x.mean() - dist.mean()) < 3 * dist.std() / math.sqrt(len(x))
    assert sample_times(TIME.validate_python(2.5), 2, np.random.default_rng(0)).tolist() == [2.5, 2.5]


# ----------------------------------------------------------------------------- workloads built from them


def test_synthetic_workload_classes_and_system_prompts():
    cfg = {"type": "synthetic", "arrival": {"process": "poisson", "rate": 50, "num_requests": 6000},
           "input_len": {"dist": "uniform", "low": 10, "high": 100}, "output_len": 20,
           "system_prompt_len": 64, "num_system_prompts": 3,
           "classes": [{"tenant": "gold", "priority": 2, "slo_ttft_s": 0.5, "slo_tpot_s": 0.05, "weight": 1},
                       {"tenant": "free", "weight": 3}]}
    reqs = list(build_workload(cfg, seed=15))
    assert len(reqs) == 6000
    tenants = np.array([r.tenant for r in reqs])
    assert stats.chisquare([np.sum(tenants == "gold"), np.sum(tenants == "free")], [1500, 4500]).pvalue > 0.01
    gold = next(r for r in reqs if r.tenant == "gold")
    assert (gold.priority, gold.slo_ttft_s, gold.slo_tpot_s) == (2, 0.5, 0.05)
    free = next(r for r in reqs if r.tenant == "free")
    assert (free.priority, free.slo_ttft_s, free.slo_tpot_s) == (0, None, None)
    for r in reqs[:200]:
        (sk, sn), (uk, un) = r.segments
        assert sk[0] == "sys" and 0 <= sk[1] < 3 and sn == 64 and un == r.input_tokens - 64 and 10 <= un <= 100
    groups = np.bincount([r.segments[0][0][1] for r in reqs])
    assert stats.chisquare(groups).pvalue > 0.01


@pytest.mark.parametrize("cfg", [
    {"type": "synthetic", "arrival": {"process": "gamma", "rate": 5, "cv": 2, "duration_s": 50},
     "input_len": {"dist": "zipf", "a": 1.5, "n": 500}, "output_len": {"dist": "normal", "mean": 50, "std": 9},
     "classes": [{"tenant": "a"}, {"tenant": "b"}]},
    {"type": "sessions", "arrival": {"process": "poisson", "rate": 1, "duration_s": 30}, "pacing": "after_arrival",
     "turns": {"dist": "uniform", "low": 1, "high": 4}, "user_message_len": 30, "output_len": 20,
     "think_time_s": {"dist": "exponential", "mean": 2}},
    {"type": "trace", "path": str(SHAREGPT_HEAD), "arrival": {"process": "poisson", "rate": 3, "num_requests": 50},
     "shuffle": True, "classes": [{"tenant": "x"}, {"tenant": "y"}]},
])
def test_same_seed_same_stream(cfg):
    def key(seed):
        return [(r.arrival_s, r.input_tokens, r.output_tokens, r.segments, r.tenant) for r in build_workload(cfg, seed)]

    a = key(5)
    assert a == key(5) == key(np.random.SeedSequence(5))
    assert a != key(6)


def test_registry_lists_every_plugin_kind():
    for name in ("poisson", "gamma", "mmpp", "on_off", "diurnal", "stages", "replay", "closed_loop"):
        assert get("arrival", name) is not None
    for name in ("fixed", "uniform", "normal", "lognormal", "zipf", "empirical"):
        assert get("length", name) is not None
    for name in ("csv", "azure_2023", "azure_2024", "mooncake", "burstgpt", "sharegpt", "vidur"):
        assert get("trace_format", name) is not None
    for name in ("synthetic", "sessions", "agent", "closed_loop"):
        assert get("workload", name) is not None


@pytest.mark.parametrize("bad", [
    {"type": "synthetic", "arrival": {"process": "poisson", "rate": 1}, "input_len": 5, "output_len": 5},
    {"type": "synthetic", "arrival": {"process": "poisson", "rate": 1, "duration_s": 1, "num_requests": 3},
     "input_len": 5, "output_len": 5},
    {"type": "synthetic", "arrival": {"process": "mmpp", "rates": [1, 2], "mean_dwell_s": [1], "duration_s": 9},
     "input_len": 5, "output_len": 5},
    {"type": "synthetic", "arrival": {"process": "mmpp", "rates": [1, 2], "mean_dwell_s": [1, 1],
                                      "transitions": [[0.5, 0.5], [1, 0]], "duration_s": 9}, "input_len": 5, "output_len": 5},
    {"type": "synthetic", "arrival": {"process": "diurnal", "duration_s": 9}, "input_len": 5, "output_len": 5},
    {"type": "synthetic", "arrival": {"process": "diurnal", "duration_s": 9, "points": [[5, 1], [2, 1]]},
     "input_len": 5, "output_len": 5},
    {"type": "synthetic", "arrival": {"process": "poisson", "rate": 1, "duration_s": 1}, "input_len": 5,
     "output_len": {"dist": "zipf", "a": 0.9}},
    {"type": "synthetic", "arrival": {"process": "poisson", "rate": 1, "duration_s": 1, "burst": 2},
     "input_len": 5, "output_len": 5},
    {"type": "closed_loop", "clients": 3, "input_len": 5, "output_len": 5},
    {"type": "sessions", "arrival": {"process": "poisson", "rate": 1, "duration_s": 1}, "turns": 2,
     "user_message_len": 5, "output_len": 5, "pacing": "sometimes"},
    {"type": "trace", "path": "x.csv", "window": {"start_s": 5, "end_s": 2}},
    {"type": "trace", "path": "x.csv", "sample_fraction": 0},
    {"type": "poisson", "stages": [{"rate": 1, "duration_s": 1}], "input_len": 1, "output_len": 1,
     "classes": [{"tenant": "a"}, {"tenant": "a"}]},
])
def test_bad_configs_are_refused(bad):
    with pytest.raises(ValidationError):
        TypeAdapter(WorkloadConfig).validate_python(bad)
