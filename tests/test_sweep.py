"""Sweeps: expanding factors, running in parallel (processes or Ray) with identical results,
resuming after a kill, and recording a failing run without stopping."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from experiments.sweep import SweepSpec, expand, load_sweep, resolve_point, run_sweep
from sim.errors import ConfigError
from tests.paths import ROOT, SERVESIM


BASE = {
    "model": "llama-3.1-8b",
    "hardware": {"gpu": "h100"},
    "engine": {"max_model_len": 4096},
    "workload": {"type": "poisson", "stages": [{"rate": 4, "duration_s": 20}],
                 "input_len": {"dist": "lognormal", "mean": 800, "sigma": 0.6, "max": 3000}, "output_len": 60},
    "seed": 0,
}
GRID = {"engine.max_num_batched_tokens": [256, 1024, 4096], "workload.stages[0].rate": [3, 6, 12]}


def write_sweep(d: Path, **extra) -> Path:
    (d / "base.yaml").write_text(yaml.safe_dump(BASE, sort_keys=False))
    spec = {"base": "base.yaml", "grid": GRID, "slo": {"ttft_s": 0.5, "tpot_s": 0.03}, **extra}
    path = d / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def comparable(df: pd.DataFrame) -> pd.DataFrame:
    """The results table without wall-clock columns."""
    return df.drop(columns=[c for c in df.columns if "wall" in c])


# ----------------------------------------------------------------------------- points

def test_expand_grid_zip_random_in_a_fixed_order():
    spec = SweepSpec.model_validate({
        "base": {}, "grid": {"a": [1, 2], "b": ["x", "y"]}, "zip": {"c": [10, 20, 30], "d": [1, 2, 3]},
        "random": {"samples": 2, "seed": 7, "space": {"e": {"low": 1, "high": 4}, "f": {"low": 0.1, "high": 10,
                                                                                    "log": True},
                                                      "g": ["p", "q"]}}})
    points = expand(spec)
    assert len(points) == 2 * 2 * 3 * 2
    assert [(p["a"], p["b"], p["c"], p["d"]) for p in points[::2]][:4] == [(1, "x", 10, 1), (1, "x", 20, 2),
                                                                         (1, "x", 30, 3), (1, "y", 10, 1)]
    assert points == expand(spec)                                       # deterministic
    assert spec.factors == ["a", "b", "c", "d", "e", "f", "g"]
    for p in points:
        assert isinstance(p["e"], int) and 1 <= p["e"] <= 4
        assert isinstance(p["f"], float) and 0.1 <= p["f"] <= 10
        assert p["g"] in ("p", "q")
    many = expand(SweepSpec.model_validate({"base": {}, "random": {"samples": 400, "space": {
        "e": {"low": 1, "high": 4}}}}))
    assert {p["e"] for p in many} == {1, 2, 3, 4}                        # high is included for integers


@pytest.mark.parametrize("bad, message", [
    ({"zip": {"a": [1, 2], "b": [1]}}, "same length"),
    ({"grid": {"a": [1]}, "zip": {"a": [2]}}, "appears in two"),
    ({"grid": {"a": []}}, "empty list"),
    ({"grid": {"a": [1]}, "typo": 1}, "'typo' is not known"),
])
def test_bad_sweep_files_are_one_line_errors(bad, message):
    with pytest.raises(ConfigError, match=message) as exc:
        load_sweep({"base": BASE, **bad})
    assert "\n" not in str(exc.value)


# ----------------------------------------------------------------------------- running

@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory):
    d = tmp_path_factory.mktemp("sweep")
    path = write_sweep(d)
    res = run_sweep(path, d / "out", executor="local", workers=2, report=False)
    return d, path, res


def test_local_sweep_writes_runs_and_a_results_table(local_sweep):
    d, _, res = local_sweep
    out = d / "out"
    assert (res.ran, res.skipped, res.failed) == (9, 0, 0)
    table = pd.read_parquet(out / "results.parquet")
    assert len(table) == 9 and (table["status"] == "ok").all() and table["run_id"].is_unique
    assert table[list(GRID)].values.tolist() == [[c, r] for c in GRID["engine.max_num_batched_tokens"]
                                                  for r in GRID["workload.stages[0].rate"]]
    for col in ("ttft_s.p99", "tpot_s.p99", "itl_s.p99", "throughput.output_tokens_per_s", "slo.attainment",
                "slo.goodput_rps", "slo.met"):
        assert col in table.columns, col
    assert (table["requests.total"] == (table["workload.stages[0].rate"] * 20).round()).all()
    csv = pd.read_csv(out / "results.csv")
    assert csv["ttft_s.p99"].tolist() == pytest.approx(table["ttft_s.p99"].tolist())
    for rid, chunk, rate in table[["run_id", *GRID]].itertuples(index=False):
        cfg = yaml.safe_load((out / "runs" / rid / "config.yaml").read_text())
        assert cfg["engine"]["max_num_batched_tokens"] == chunk and cfg["workload"]["stages"][0]["rate"] == rate
        summary = json.loads((out / "runs" / rid / "summary.json").read_text())
        assert summary["ttft_s"]["p99"] == pytest.approx(table.set_index("run_id").loc[rid, "ttft_s.p99"])
        assert (out / "runs" / rid / "requests.parquet").exists()


def test_rerun_skips_everything_and_gives_the_same_table(local_sweep):
    d, path, res = local_sweep
    again = run_sweep(path, d / "out", executor="local", workers=2, report=False)
    assert (again.ran, again.skipped) == (0, 9)
    pd.testing.assert_frame_equal(comparable(again.table), comparable(res.table))


def test_ray_sweep_matches_local(local_sweep, tmp_path):
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'servesim[ray]')")
    _, path, res = local_sweep
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    except Exception as exc:  # pragma: no cover - depends on the machine
        pytest.skip(f"a local Ray cluster could not start here: {exc}")
    try:
        on_ray = run_sweep(path, tmp_path / "ray", executor="ray", report=False)
    finally:
        ray.shutdown()
    assert (on_ray.ran, on_ray.failed) == (9, 0)
    pd.testing.assert_frame_equal(comparable(on_ray.table), comparable(res.table))


def test_failing_runs_are_recorded_and_retried(tmp_path):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(BASE))
    sweep = {"base": "base.yaml", "grid": {"parallelism.tp": [1, 16], "engine.max_num_seqs": [64, -1]},
             "slo": {"ttft_s": 1.0}}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    res = run_sweep(tmp_path / "sweep.yaml", tmp_path / "out", workers=1, report=True)
    t = res.table.set_index(["parallelism.tp", "engine.max_num_seqs"])
    assert t.loc[(1, 64), "status"] == "ok"
    assert t.loc[(16, 64), "status"] == "failed" and "tp=16 exceeds" in t.loc[(16, 64), "error"]
    for seqs in (-1,):
        for tp in (1, 16):
            assert t.loc[(tp, seqs), "status"] == "failed" and "max_num_seqs" in t.loc[(tp, seqs), "error"]
    assert res.failed == 3 and (tmp_path / "out" / "report.html").exists()
    failed_id = t.loc[(16, 64), "run_id"]
    assert json.loads((tmp_path / "out" / "runs" / failed_id / "error.json").read_text())["error"]
    again = run_sweep(tmp_path / "sweep.yaml", tmp_path / "out", workers=1, report=False)
    assert (again.ran, again.skipped, again.failed) == (1, 1, 3)      # the failed run is tried again


def test_killed_sweep_resumes(tmp_path):
    path = write_sweep(tmp_path)
    out = tmp_path / "out"
    proc = subprocess.Popen([str(SERVESIM), "sweep", str(path), "--out", str(out), "--workers", "1",
                             "--no-report"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list(out.glob("runs/*/summary.json")) and proc.poll() is None:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = {p.parent.name: p.stat().st_mtime_ns for p in out.glob("runs/*/summary.json")}
    assert 1 <= len(done) < 9, "the sweep should have been killed part-way"
    assert not (out / "results.parquet").exists()
    p = subprocess.run([str(SERVESIM), "sweep", str(path), "--out", str(out), "--workers", "1", "--no-report"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert f"{9 - len(done)} run now, {len(done)} already done; 0 failed in all" in p.stdout
    assert {rid: (out / "runs" / rid / "summary.json").stat().st_mtime_ns for rid in done} == done
    table = pd.read_parquet(out / "results.parquet")
    assert len(table) == 9 and (table["status"] == "ok").all()
    assert not [f for f in out.rglob(".*.tmp")], "temp files left behind"


def test_a_resumed_sweep_judges_its_runs_against_the_current_slo(local_sweep, tmp_path):
    import shutil

    from experiments.planner import SLO
    from experiments.sweep import _refresh_slo

    d, _, res = local_sweep
    out = tmp_path / "out"
    shutil.copytree(d / "out", out)
    tight = {"ttft_s": 0.04, "tpot_s": 0.03}
    path = write_sweep(tmp_path, slo=tight)
    again = run_sweep(path, out, workers=1, report=False)
    assert (again.ran, again.skipped) == (0, 9)                       # re-judged from the runs' requests, not re-run
    for row in again.table.itertuples():
        requests = pd.read_parquet(out / "runs" / row.run_id / "requests.parquet")
        summary = json.loads((out / "runs" / row.run_id / "summary.json").read_text())
        expected = SLO.model_validate(tight).evaluate(requests, summary)
        assert again.table.loc[row.Index, "slo.attainment"] == pytest.approx(expected["attainment"])
        assert again.table.loc[row.Index, "slo.met"] == expected["met"]
    assert again.table["slo.met"].tolist() != res.table["slo.met"].tolist()   # the tighter SLO changed verdicts
    assert "slo_spec.ttft_s" not in again.table.columns
    rid = again.table["run_id"].iloc[0]
    (out / "runs" / rid / "requests.parquet").unlink()
    assert not _refresh_slo(out / "runs" / rid, {"ttft_s": 9.0})     # nothing to re-judge from: run it again
    assert _refresh_slo(out / "runs" / rid, None)                     # no SLO now: the old verdict is dropped
    assert "slo" not in json.loads((out / "runs" / rid / "summary.json").read_text())


def test_a_sweep_whose_every_point_is_invalid_is_a_one_line_error(tmp_path):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(BASE))
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({"base": "base.yaml", "grid": {"engine.max_num_seq": [8, 16]}}))
    with pytest.raises(ConfigError, match="every point of the sweep is invalid; the first: .*'engine.max_num_seq'"):
        run_sweep(tmp_path / "sweep.yaml", tmp_path / "out", workers=1, report=False)
    assert not list((tmp_path / "out").rglob("config.yaml"))
    with pytest.raises(ConfigError, match="--executor 'foo'"):
        run_sweep(write_sweep(tmp_path), tmp_path / "out2", executor="foo")
    assert not (tmp_path / "out2").exists()                           # refused before anything was written


def test_a_sweep_whose_every_point_fails_exits_2(tmp_path):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(BASE))
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({"base": "base.yaml", "grid": {"parallelism.tp": [16]}}))
    p = subprocess.run([str(SERVESIM), "sweep", str(tmp_path / "sweep.yaml"), "--out", str(tmp_path / "o"),
                        "--no-report"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.count("\n") == 1
    assert "every point of the sweep failed; the first: " in p.stderr and "tp=16 exceeds" in p.stderr
    assert (tmp_path / "o" / "results.csv").exists()                  # the failures are still recorded


def test_sweep_cli_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"base": "missing.yaml", "grid": {"seed": [1]}}))
    p = subprocess.run([str(SERVESIM), "sweep", str(bad), "--out", str(tmp_path / "o")], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "not found" in p.stderr


def test_example_sweep_file_is_valid():
    spec, base, _ = load_sweep(ROOT / "experiments" / "examples" / "chunk_size_itl.yaml")
    points = expand(spec)
    assert len(points) == 21 and base["model"] == "llama-3.1-8b"


def test_prefix_caching_study_sweep_file_is_valid():
    spec, base, _ = load_sweep(ROOT / "experiments" / "examples" / "prefix_caching_multiturn.yaml")
    points = expand(spec)
    assert len(points) == 8 and base["workload"]["type"] == "sessions"
    for point in points:
        cfg, _ = resolve_point(base, point)
        assert cfg.workload.type == "sessions"


def test_moe_layout_study_resolves_every_layout_and_builds_its_deployment():
    import numpy as np
    import simpy

    from experiments.deployment import Deployment
    from sim.engine import RequestLog

    spec, base, _ = load_sweep(ROOT / "experiments" / "examples" / "moe_dp_ep.yaml")
    points = expand(spec)
    assert len(points) == 5 * 11
    layouts = set()
    for point in points:
        cfg, _ = resolve_point(base, point)
        par = cfg.deployment.parallelism
        layouts.add((cfg.deployment.replicas, par.tp, par.ep))
    assert layouts == {(1, 8, 1), (1, 8, 8), (4, 2, 1), (4, 2, 8), (8, 1, 8)}
    for replicas, tp, ep in layouts:                  # every layout fits the node, wide EP ones in lockstep
        cfg, _ = resolve_point(base, {"deployment.replicas": replicas, "deployment.parallelism.tp": tp,
                                      "deployment.parallelism.ep": ep})
        dep = Deployment(cfg, simpy.Environment(), np.random.SeedSequence(0), RequestLog())
        assert len(dep.replicas) == replicas
        assert (dep.lockstep is not None) == (ep > tp)


def test_a_path_among_a_sweeps_values_is_relative_to_the_sweep_file(tmp_path):
    import shutil

    sub = tmp_path / "sub"
    sub.mkdir()
    shutil.copy(ROOT / "tests" / "data" / "traces" / "validation_mixtral_head.csv", sub / "t.csv")
    spec = {"base": {**BASE, "workload": {"type": "trace", "path": "t.csv", "max_requests": 5}},
            "grid": {"workload.path": ["t.csv"]}}
    (sub / "sweep.yaml").write_text(yaml.safe_dump(spec))
    res = run_sweep(sub / "sweep.yaml", tmp_path / "out", workers=1, report=False)   # run from elsewhere
    assert (res.table["status"] == "ok").all(), res.table["error"].tolist()
    cfg = yaml.safe_load(next((tmp_path / "out" / "runs").glob("*/config.yaml")).read_text())
    assert cfg["workload"]["path"] == str(sub / "t.csv")
