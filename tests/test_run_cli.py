"""`servesim run` end to end, through the installed console script (a subprocess per call).

Good input writes summary.json, requests.parquet and config.yaml and prints the summary with
--json; every user mistake exits 2 with one line on stderr, no traceback, and no output directory.
The bad-input cases run concurrently (each is a fresh interpreter) to keep the file quick.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from tests.paths import ROOT, SERVESIM

MIXTRAL_HEAD = Path(__file__).parent / "data" / "traces" / "validation_mixtral_head.csv"

BASE = {
    "model": "llama-2-7b",
    "hardware": {"gpu": "h100"},
    "engine": {"max_model_len": 2048},
    "sim": {"progress": False},
    "workload": {"type": "poisson", "stages": [{"rate": 5, "duration_s": 4}], "input_len": 200, "output_len": 20},
    "seed": 1,
}


def servesim(*args, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(SERVESIM), *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          timeout=120, env={**os.environ, "COLUMNS": "200"})


def write_yaml(path: Path, data) -> Path:
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def with_(base: dict, **sections) -> dict:
    """A copy of `base` with sections replaced (engine/hardware/sim: merged key by key)."""
    cfg = json.loads(json.dumps(base))
    for k, v in sections.items():
        if k in ("engine", "hardware", "sim") and isinstance(v, dict):
            cfg[k].update(v)
        else:
            cfg[k] = v
    return cfg


# ----------------------------------------------------------------------------- good runs

def test_run_writes_outputs_and_prints_summary(tmp_path):
    cfg = write_yaml(tmp_path / "run.yaml", BASE)
    out = tmp_path / "out"
    p = servesim("run", cfg, "--out", out, "--json")
    assert p.returncode == 0, p.stderr
    printed = json.loads(p.stdout)
    assert sorted(f.name for f in out.iterdir()) == ["config.yaml", "report.html", "requests.parquet", "summary.json"]
    summary = json.loads((out / "summary.json").read_text())
    assert printed == summary
    assert summary["requests"]["total"] == summary["requests"]["completed"] == 20
    assert summary["ttft_s"]["p99"] > 0 and summary["throughput"]["output_tokens_per_s"] > 0

    req = pd.read_parquet(out / "requests.parquet")
    assert len(req) == 20 and req["request_id"].is_unique
    for col in ("arrival_s", "first_scheduled_s", "first_token_s", "finish_s", "input_tokens", "output_tokens",
                "cached_tokens", "preemptions"):
        assert col in req.columns, col
    assert (req["input_tokens"] == 200).all() and (req["output_tokens"] == 20).all()
    assert (req["arrival_s"] <= req["first_scheduled_s"]).all()
    assert (req["first_scheduled_s"] <= req["first_token_s"]).all()
    assert (req["first_token_s"] < req["finish_s"]).all()
    assert summary["ttft_s"]["mean"] == pytest.approx((req["first_token_s"] - req["arrival_s"]).mean())

    written = yaml.safe_load((out / "config.yaml").read_text())
    assert written["model"]["name"] == "llama-2-7b"
    assert written["engine"]["max_model_len"] == 2048
    assert written["engine"]["max_num_seqs"] == 256        # the vLLM default, filled in
    assert written["workload"]["stages"][0]["rate"] == 5


def test_set_overrides_take_effect(tmp_path):
    cfg = write_yaml(tmp_path / "run.yaml", BASE)
    out = tmp_path / "out"
    p = servesim("run", cfg, "--out", out, "--json", "--set", "engine.max_num_seqs=4",
                 "--set", "workload.stages[0].rate=2")
    assert p.returncode == 0, p.stderr
    written = yaml.safe_load((out / "config.yaml").read_text())
    assert written["engine"]["max_num_seqs"] == 4
    assert written["workload"]["stages"][0]["rate"] == 2
    summary = json.loads(p.stdout)
    assert summary["requests"]["total"] == 8                # round(2 req/s * 4 s)
    assert summary["batch"]["mean_running"] <= 4


def test_trace_replay_drops_empty_rows(tmp_path):
    rows = pd.DataFrame({
        "arrival_time_s": [0.0, 0.1, 0.1, 0.5, 0.9, 1.3, 1.4],
        "input_tokens": [120, 0, 300, 50, 700, 64, 10],
        "output_tokens": [10, 5, 0, 30, 4, 8, 1],
        "prompt_id": [1, 2, 3, 1, 4, 5, 6],
    })
    rows.to_csv(tmp_path / "trace.csv", index=False)
    # a relative path resolves against the config's folder, not the working directory
    cfg = write_yaml(tmp_path / "run.yaml", with_(BASE, workload={"type": "trace", "path": "trace.csv"}))
    out = tmp_path / "out"
    p = servesim("run", cfg, "--out", out, "--json", cwd=ROOT)
    assert p.returncode == 0, p.stderr
    s = json.loads(p.stdout)
    assert s["requests"]["dropped"] == 2
    assert s["requests"]["completed"] == s["requests"]["total"] == 5
    assert s["requests"]["total"] + s["requests"]["dropped"] == len(rows)
    req = pd.read_parquet(out / "requests.parquet").sort_values("arrival_s", kind="stable")
    kept = rows[(rows.input_tokens > 0) & (rows.output_tokens > 0)]
    assert req["input_tokens"].tolist() == kept["input_tokens"].tolist()
    assert req["output_tokens"].tolist() == kept["output_tokens"].tolist()
    assert np.allclose(req["arrival_s"].to_numpy(), kept["arrival_time_s"].to_numpy())
    # prompt 1 repeats (120 then 50 tokens): the second is a prefix of the first, so it hits 48 tokens
    assert req["cached_tokens"].tolist() == [0, 48, 0, 0, 0]


def test_replays_a_real_validation_workload(tmp_path):
    cfg = write_yaml(tmp_path / "mixtral.yaml", {
        "model": "mistralai/Mixtral-8x7B-v0.1", "hardware": {"gpu": "h100"}, "parallelism": {"tp": 2},
        "engine": {"max_num_batched_tokens": 2048, "max_num_seqs": 128},
        "sim": {"progress": False},
        "workload": {"type": "trace", "path": str(MIXTRAL_HEAD)},
    })
    out = tmp_path / "out"
    p = servesim("run", cfg, "--out", out, "--json")
    assert p.returncode == 0, p.stderr
    s = json.loads(p.stdout)
    assert s["requests"]["total"] == s["requests"]["completed"] == 200
    assert s["requests"]["dropped"] == 0
    assert s["deployment"]["tp"] == 2 and "mixtral" in s["deployment"]["model"].lower()
    for metric in ("ttft_s", "tpot_s", "itl_s", "e2e_s"):
        for k in ("mean", "p50", "p90", "p99"):
            assert math.isfinite(s[metric][k]) and s[metric][k] > 0, (metric, k)
    assert s["kv"]["prefix_hit_rate"] > 0          # the trace's prompts share system prompts
    src = pd.read_csv(MIXTRAL_HEAD)
    req = pd.read_parquet(out / "requests.parquet").sort_values("request_id")
    assert req["input_tokens"].tolist() == src["input_tokens"].tolist()
    assert req["output_tokens"].tolist() == src["output_tokens"].tolist()


# ----------------------------------------------------------------------------- bad input

GOOD_TRACE = "arrival_time_s,input_tokens,output_tokens,prompt_id\n0.0,100,10,1\n0.5,200,5,2\n1.0,50,3,3\n"


def _trace_cfg(name: str) -> dict:
    return with_(BASE, workload={"type": "trace", "path": name})


# name -> (config text or dict, extra CLI args, files to create {name: text}, substrings the message must hold)
BAD = {
    "unknown_top_level_key": (with_(BASE, colour="blue"), [], {}, ["colour"]),
    "unknown_engine_key": (with_(BASE, engine={"max_num_seq": 4}), [], {}, ["engine.max_num_seq"]),
    "wrong_type": (with_(BASE, engine={"max_num_seqs": "abc"}), [], {}, ["engine.max_num_seqs", "abc"]),
    "missing_workload": ({k: v for k, v in BASE.items() if k != "workload"}, [], {}, ["workload"]),
    "unknown_model": (with_(BASE, model="llama-9-999b-nonexistent"), [], {}, ["llama-9-999b-nonexistent"]),
    "unknown_gpu": (with_(BASE, hardware={"gpu": "zz9000-imaginary"}), [], {}, ["zz9000-imaginary"]),
    # refused, not executed: the command would print "hi" and create the marker file
    "python_tag": ('model: !!python/object/apply:os.system ["echo hi; echo hi > {marker}"]\n'
                   + yaml.safe_dump({k: v for k, v in BASE.items() if k != "model"}), [], {}, ["tag"]),
    "malformed_yaml": ("model: [llama-2-7b\nworkload: {type: poisson\n", [], {}, ["YAML"]),
    "config_missing": (None, [], {}, ["not found"]),
    "trace_missing": (_trace_cfg("nowhere.csv"), [], {}, ["nowhere.csv", "not found"]),
    "trace_missing_column": (_trace_cfg("t.csv"), [],
                             {"t.csv": "arrival_time_s,input_tokens\n0.0,100\n"}, ["output_tokens"]),
    "trace_negative_length": (_trace_cfg("t.csv"), [],
                              {"t.csv": GOOD_TRACE.replace("0.5,200,5", "0.5,-200,5")},
                              ["row 2", "input_tokens", "negative"]),
    "trace_unsorted": (_trace_cfg("t.csv"), [],
                       {"t.csv": GOOD_TRACE.replace("1.0,50,3", "0.25,50,3")},
                       ["row 3", "arrival_time_s", "sort"]),
    "max_model_len_over_kv": (with_(BASE, engine={"max_model_len": 2_000_000}), [], {},
                              ["max_model_len", "KV"]),
    "set_without_equals": (BASE, ["--set", "engine.max_num_seqs"], {}, ["engine.max_num_seqs"]),
    "set_bad_key": (BASE, ["--set", "engine..max_num_seqs=4"], {}, ["engine..max_num_seqs"]),
    "max_model_len_one": (with_(BASE, engine={"max_model_len": 1}), [], {}, ["max_model_len"]),
}

# Known bugs (reported): the case must fail until fixed.
XFAIL: dict[str, str] = {}   # name -> reason, for a known bug pinned with xfail(strict=True)


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory):
    """Run every BAD case at once; name -> (CompletedProcess, case dir, out dir)."""
    def one(name):
        text, args, files, _ = BAD[name]
        d = tmp_path_factory.mktemp(name)
        for fname, content in files.items():
            (d / fname).write_text(content)
        cfg = d / "run.yaml"
        if text is not None:
            write_yaml(cfg, text.replace("{marker}", str(d / "PWNED")) if isinstance(text, str) else text)
        out = d / "out"
        return name, (servesim("run", cfg, "--out", out, "--json", *args, cwd=d), d, out)

    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 1)) as pool:
        return dict(pool.map(one, BAD))


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=XFAIL[n]))
                                  if n in XFAIL else n for n in BAD])
def test_bad_input_is_one_line_exit_2_and_no_output(bad_runs, name):
    p, d, out = bad_runs[name]
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr and "Traceback" not in p.stdout
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("servesim: error:"), lines[0]
    for needle in BAD[name][3]:
        assert needle.lower() in lines[0].lower(), (needle, lines[0])
    assert p.stdout.strip() == ""                      # nothing executed, nothing printed ("echo hi")
    assert not out.exists()
    assert not [f for f in d.iterdir() if f.name.startswith(".out")], "half-written output left behind"
    assert not (d / "PWNED").exists(), "a YAML Python tag was executed"


def test_failed_run_leaves_an_existing_out_dir_alone(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.json").write_text('{"keep": true}')
    cfg = write_yaml(tmp_path / "bad.yaml", with_(BASE, engine={"max_num_seqs": "abc"}))
    p = servesim("run", cfg, "--out", out)
    assert p.returncode == 2
    assert json.loads((out / "summary.json").read_text()) == {"keep": True}
    assert sorted(f.name for f in tmp_path.iterdir()) == ["bad.yaml", "out"]


def test_out_into_an_existing_folder_keeps_its_other_files(tmp_path):
    """--out adds the run's files and replaces only those; a user's other files survive."""
    cfg = write_yaml(tmp_path / "run.yaml", BASE)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    p = servesim("run", cfg, "--out", out, "--json")
    assert p.returncode == 0, p.stderr
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "summary.json").exists() and (out / "requests.parquet").exists()


def test_a_reused_out_folder_describes_only_the_latest_run(tmp_path):
    """A plain run into a folder that held a replicated run with a report and a time series removes those
    outputs of the earlier run (they would read as this run's) and keeps the user's own files."""
    cfg = write_yaml(tmp_path / "run.yaml", BASE)
    out = tmp_path / "out"
    p = servesim("run", cfg, "--out", out, "--seeds", "2", "--set", "sim.sample_interval_s=0.5")
    assert p.returncode == 0, p.stderr
    assert {"replications.csv", "timeseries.parquet", "report.html"} <= {f.name for f in out.iterdir()}
    (out / "notes.txt").write_text("mine")
    p = servesim("run", cfg, "--out", out, "--no-report")
    assert p.returncode == 0, p.stderr
    assert {f.name for f in out.iterdir()} == {"summary.json", "requests.parquet", "config.yaml", "notes.txt"}
    assert "replications" not in json.loads((out / "summary.json").read_text())


@pytest.mark.parametrize("option, target", [("--out", "afile/sub"), ("--out", "afile"), ("--trace-out", "adir"),
                                            ("--out", "/proc/servesim-nope/run")])
def test_an_output_path_that_cannot_be_written_is_refused_before_simulating(tmp_path, option, target):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    cfg = write_yaml(tmp_path / "run.yaml", with_(BASE, workload={**BASE["workload"],
                                                                   "stages": [{"rate": 5, "duration_s": 10_000}]}))
    p = servesim("run", cfg, option, target, cwd=tmp_path)          # a long run: refused before it starts
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr, p.stderr
    assert option in p.stderr


def test_relative_paths_resolve_against_the_config_file_and_config_yaml_reruns_anywhere(tmp_path):
    """A model given as a config.json path and a trace path, both relative to the config file, are written
    absolute into config.yaml; --set paths are relative to the working directory."""
    import shutil

    cfgdir = tmp_path / "cfg"
    (cfgdir / "models").mkdir(parents=True)
    shutil.copy(ROOT / "tests" / "data" / "model_configs" / "qwen2.5-7b-instruct.json", cfgdir / "models" / "config.json")
    shutil.copy(MIXTRAL_HEAD, cfgdir / "trace.csv")
    cfg = write_yaml(cfgdir / "run.yaml", with_(BASE, model="models/config.json",
                                                workload={"type": "trace", "path": "trace.csv", "max_requests": 20}))
    p = servesim("run", cfg, "--out", tmp_path / "out")
    assert p.returncode == 0, p.stderr
    written = yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())
    model = written["model"]["name"] if isinstance(written["model"], dict) else written["model"]
    assert Path(model).is_absolute() and Path(written["workload"]["path"]).is_absolute()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    p = servesim("run", tmp_path / "out" / "config.yaml", "--json", cwd=elsewhere)
    assert p.returncode == 0, p.stderr
    shutil.copy(MIXTRAL_HEAD, elsewhere / "cwd_trace.csv")
    p = servesim("run", cfg, "--set", "workload.path=cwd_trace.csv", "--json", cwd=elsewhere)
    assert p.returncode == 0, p.stderr
