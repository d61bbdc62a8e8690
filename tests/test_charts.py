"""Charts and the data they need: the optional step recorder and state sampler, and each chart builder.

The recorder and the sampler must never change a run's results, and the step records must be
the same in fast-forward and per-iteration mode (the hook sits on every path that ends a step).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from experiments import charts
from experiments.runner import run

BASE = {
    "model": "llama-3.1-8b",
    "hardware": {"gpu": "h100"},
    "engine": {"max_model_len": 4096, "max_num_batched_tokens": 512},
    "sim": {"progress": False},
    "workload": {"type": "poisson", "stages": [{"rate": 10, "duration_s": 15}],
                 "input_len": {"dist": "lognormal", "mean": 900, "sigma": 0.6, "max": 3000},
                 "output_len": {"dist": "lognormal", "mean": 80, "sigma": 0.5, "max": 400}},
    "seed": 3,
}


@pytest.fixture(scope="module")
def recorded():
    return run(BASE, ["sim.record_steps=true", "sim.sample_interval_s=0.5"])


def test_recording_and_sampling_do_not_change_results(recorded):
    plain = run(BASE)
    assert plain.steps is None and plain.timeseries is None
    pd.testing.assert_frame_equal(plain.requests, recorded.requests)
    for key in ("ttft_s", "tpot_s", "itl_s", "e2e_s", "batch"):
        assert plain.summary[key] == recorded.summary[key]
    assert plain.summary["sim"]["iterations"] == recorded.summary["sim"]["iterations"]


def test_step_records_match_between_fast_and_iteration_modes(recorded):
    ref = run(BASE, ["sim.record_steps=true", "sim.mode=iteration"])
    steps, ref_steps = recorded.steps, ref.steps
    assert len(steps) == len(ref_steps) == recorded.summary["sim"]["iterations"]
    assert (steps[["tokens", "batch"]].to_numpy() == ref_steps[["tokens", "batch"]].to_numpy()).all()
    np.testing.assert_allclose(steps[["start_s", "end_s"]].to_numpy(), ref_steps[["start_s", "end_s"]].to_numpy(),
                               rtol=0, atol=1e-9)


def test_step_records_tile_the_busy_time(recorded):
    s = recorded.steps
    dur = (s["end_s"] - s["start_s"]).to_numpy()
    assert (dur > 0).all()
    assert (s["start_s"].to_numpy()[1:] >= s["end_s"].to_numpy()[:-1] - 1e-9).all()   # no overlap
    assert dur.sum() == pytest.approx(recorded.summary["batch"]["busy_fraction"]
                                      * recorded.summary["sim"]["simulated_time_s"], rel=1e-9)
    assert int(s["tokens"].sum()) == int(recorded.requests["input_tokens"].sum()
                                         - recorded.requests["cached_tokens"].sum()
                                         + recorded.requests["recomputed_tokens"].sum()
                                         + recorded.requests["output_tokens"].sum()
                                         - len(recorded.requests))
    assert (s["tokens"] >= s["batch"]).all()


def test_sampler_tracks_queue_batch_and_kv(recorded):
    ts = recorded.timeseries
    assert list(ts.columns) == ["time_s", "waiting", "running", "kv_usage", "completed"]
    assert np.allclose(np.diff(ts["time_s"]), 0.5)
    assert ts["time_s"].iloc[-1] >= recorded.summary["sim"]["simulated_time_s"] - 0.5
    assert ts["kv_usage"].between(0, 1).all() and (ts["running"] <= 256).all()
    assert ts["running"].max() > 0 and ts["completed"].is_monotonic_increasing
    assert ts["completed"].iloc[-1] == len(recorded.requests)
    assert ts.iloc[-1][["waiting", "running"]].tolist() == [0, 0]


def test_cdf_figure_is_monotone_and_thinned(recorded):
    fig = charts.cdf_figure({"a": recorded.requests, "b": recorded.requests.iloc[:50]})
    assert isinstance(fig, go.Figure) and len(fig.data) == 6
    for tr in fig.data:
        assert len(tr.x) <= 400 and np.all(np.diff(tr.x) >= 0) and np.all(np.diff(tr.y) >= 0)
        assert tr.y[-1] == pytest.approx(1.0)
    big = pd.DataFrame({"arrival_s": np.zeros(10_000), "first_token_s": np.linspace(0, 1, 10_000),
                        "finish_s": np.linspace(1, 2, 10_000), "output_tokens": np.full(10_000, 11)})
    tr = charts.cdf_figure({"big": big}).data[0]
    assert len(tr.x) == 400 and tr.x[0] == 0 and tr.x[-1] == 1


def test_run_charts_build(recorded):
    assert len(charts.timeseries_figure(recorded.timeseries).data) == 3
    tl = charts.timeline_figure(recorded.steps, max_steps=100)
    assert sum(len(t.x) for t in tl.data) == 100 and "first 100" in tl.layout.title.text
    assert {t.name for t in charts.timeline_figure(recorded.steps).data} == {"decode", "prefill + decode"}
    assert len(charts.latency_over_time_figure(recorded.requests, max_points=30).data[0].x) == 30


def _sweep_table() -> pd.DataFrame:
    rows = []
    for chunk in (256, 1024, 4096):
        for rate in (2, 4, 8):
            rows.append({"engine.max_num_batched_tokens": chunk, "workload.stages[0].rate": rate,
                         "ttft_s.p99": chunk / 1000 + rate, "tpot_s.p99": 0.01 * rate, "itl_s.p99": chunk / 1e5,
                         "throughput.output_tokens_per_s": 100.0 * rate, "run_id": f"{chunk}-{rate}",
                         "slo.attainment": 1 - rate / 10, "slo.goodput_rps": rate * (1 - rate / 10)})
    return pd.DataFrame(rows)


def test_sweep_charts():
    df = _sweep_table()
    hm = charts.heatmap_figure(df, "engine.max_num_batched_tokens", "workload.stages[0].rate", "ttft_s.p99")
    z = np.asarray(hm.data[0].z)
    assert z.shape == (3, 3) and z[0, 0] == pytest.approx(0.256 + 2) and z[2, 2] == pytest.approx(4.096 + 8)
    lt = charts.latency_throughput_figure(df, group="engine.max_num_batched_tokens", hover="run_id")
    assert len(lt.data) == 3 * 2 and list(lt.data[0].x) == [200.0, 400.0, 800.0]   # no e2e column: 2 panels
    ff = charts.factor_figure(df, "engine.max_num_batched_tokens", group="workload.stages[0].rate")
    assert len(ff.data) == 9 and ff.layout.xaxis.type == "log"
    slo = charts.slo_attainment_figure(df, rate="workload.stages[0].rate", attainment="slo.attainment",
                                       goodput="slo.goodput_rps", group="engine.max_num_batched_tokens", target=0.9)
    assert len(slo.data) == 3 * 2 + 1


def test_plan_charts_and_pareto():
    assert charts.pareto_mask([1, 2, 3, 2], [5, 4, 1, 6]).tolist() == [True, True, True, False]
    assert charts.pareto_mask([1, 1], [2, 2]).tolist() == [True, True]      # ties dominate nobody
    rows = pd.DataFrame({"candidate": ["a", "b"], "tp": [2, 4], "max_rate_per_replica": [5.0, 12.0],
                         "usd_per_hour": [12.0, 24.0], "usd_per_1m_output_tokens": [0.5, 0.4],
                         "e2e_s.p99": [3.0, 2.0], "pareto": [True, True]})
    g = charts.gpus_vs_rate_figure(rows, [1, 5, 5.5, 12, 13])
    assert list(g.data[0].y) == [2, 2, 4, 6, 6] and list(g.data[1].y) == [4, 4, 4, 4, 8]
    cost = charts.cost_figure(rows)
    assert list(cost.data[0].x) == ["b", "a"]                                  # cheapest first
    assert len(charts.pareto_figure(rows).data) == 2
