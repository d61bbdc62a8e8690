"""Replications (`servesim run --seeds N`): the first seed is the plain run, the seeds really differ, the band
is ordered and the same whatever the number of worker processes, and a trace's fixed arrivals do not vary."""
from __future__ import annotations

import json
import os
import subprocess

import pandas as pd
import pytest
import yaml

from experiments.replications import METRICS, metric, near_capacity_knee, run_replications
from experiments.runner import run
from tests.paths import SERVESIM


POISSON = {
    "model": "llama-2-7b",
    "hardware": {"gpu": "h100"},
    "engine": {"max_model_len": 2048},
    "sim": {"progress": False},
    # near the replica's capacity, where the arrival draw moves the queueing delay
    "workload": {"type": "poisson", "stages": [{"rate": 30, "duration_s": 20}], "input_len": 600, "output_len": 200},
    "seed": 3,
}


def test_first_seed_is_the_plain_run_and_seeds_differ():
    reps = run_replications(POISSON, 3)
    assert reps.seeds == [3, 4, 5]
    plain = run(POISSON).summary
    for m in METRICS:
        assert metric(reps.summaries[0], m) == metric(plain, m)
    ttft = [metric(s, "ttft_s.mean") for s in reps.summaries]
    assert len(set(ttft)) == 3                      # different arrival draws, different queueing
    band = reps.band()["ttft_s.mean"]
    assert band["min"] == min(ttft) and band["max"] == max(ttft)
    assert band["min"] <= band["p5"] <= band["p50"] <= band["p95"] <= band["max"]
    assert band["min"] <= band["mean"] <= band["max"] and band["std"] > 0


def test_parallel_workers_give_the_same_band():
    assert run_replications(POISSON, 3, workers=2).band() == run_replications(POISSON, 3).band()


def test_trace_arrivals_do_not_vary_with_the_seed(tmp_path):
    rows = [{"arrival_time_s": 0.05 * i, "input_tokens": 300 + 7 * i, "output_tokens": 30 + i % 9} for i in range(120)]
    path = tmp_path / "trace.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    cfg = {**POISSON, "workload": {"type": "trace", "path": str(path)}}
    reps = run_replications(cfg, 3)
    band = reps.band()
    assert band["ttft_s.mean"]["std"] == 0.0 and band["e2e_s.p99"]["min"] == band["e2e_s.p99"]["max"]
    assert reps.summary()["replications"]["trace"] is True


def test_cli_seeds_json_and_outputs(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({**POISSON, "workload": {**POISSON["workload"], "stages": [{"rate": 30, "duration_s": 5}]}}))
    env = {**os.environ, "COLUMNS": "200"}
    p = subprocess.run([str(SERVESIM), "run", str(cfg), "--seeds", "2", "--json", "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    s = json.loads(p.stdout)
    assert s["replications"]["n"] == 2 and s["replications"]["seeds"] == [3, 4] and not s["replications"]["trace"]
    assert set(s["replications"]["metrics"]["e2e_s.mean"]) == {"mean", "std", "min", "p5", "p50", "p95", "max"}
    table = pd.read_csv(tmp_path / "out" / "replications.csv")
    assert list(table.seed) == [3, 4]
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["replications"]["n"] == 2
    bad = subprocess.run([str(SERVESIM), "run", str(cfg), "--seeds", "0"], capture_output=True, text=True, env=env,
                         timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_zero_seeds_is_a_config_error():
    from sim.errors import ConfigError

    with pytest.raises(ConfigError, match="--seeds"):
        run_replications(POISSON, 0)


def test_overrides_with_a_built_config_are_refused():
    from experiments.config import load_config
    from sim.errors import ConfigError

    with pytest.raises(ConfigError, match="overrides"):
        run_replications(load_config(POISSON), 2, overrides=["engine.max_num_seqs=8"])


def test_knee_note_appears_only_when_ttft_tails_queue(tmp_path):
    assert near_capacity_knee({"ttft_s": {"mean": 0.1, "p99": 0.6}, "itl_s": {"mean": 0.03}})      # bursts queue
    assert near_capacity_knee({"ttft_s": {"mean": 2.6, "p99": 7.6}, "itl_s": {"mean": 0.03}})      # a standing queue
    assert not near_capacity_knee({"ttft_s": {"mean": 0.1, "p99": 0.4}, "itl_s": {"mean": 0.03}})
    assert not near_capacity_knee({"ttft_s": {"mean": None, "p99": None}, "itl_s": {"mean": None}})
    env = {**os.environ, "COLUMNS": "200"}
    outputs = {}
    for rate in (5, 60):          # far below capacity (~23 req/s here); past it (the queue grows all run long)
        cfg = tmp_path / f"r{rate}.yaml"
        cfg.write_text(yaml.safe_dump({**POISSON, "workload": {**POISSON["workload"],
                                                               "stages": [{"rate": rate, "duration_s": 10}]}}))
        p = subprocess.run([str(SERVESIM), "run", str(cfg)], capture_output=True, text=True, env=env, timeout=120)
        assert p.returncode == 0, p.stderr
        outputs[rate] = p.stdout
    assert "capacity knee" not in outputs[5]
    assert "capacity knee" in outputs[60]
