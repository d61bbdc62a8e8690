"""`servesim estimate`, `servesim catalog ...` and `servesim roofline`, run as a user runs them (subprocess).

Every user mistake must end with exit code 2 and exactly one line on stderr, never a traceback.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "tests" / "data" / "model_configs"
_SCRIPT = Path(sys.executable).parent / "servesim"
SERVESIM = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "experiments.cli"]


def servesim(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "80"}                 # what a piped / default terminal gets
    return subprocess.run([*SERVESIM, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=60)


def estimate_json(*args: str) -> dict:
    res = servesim("estimate", *args, "--json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def assert_user_error(res: subprocess.CompletedProcess, *fragments: str) -> str:
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr + res.stdout
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    for f in fragments:
        assert f.lower() in lines[0].lower(), (f, lines[0])
    return lines[0]


# ----------------------------------------------------------------------------- estimate --json

def test_estimate_json_has_the_documented_keys():
    d = estimate_json("--model", "llama-3.1-8b", "--gpu", "h100", "--context", "2048", "--batch", "4")
    for key in ("latency_s", "flops", "bytes", "bound", "mfu", "mbu", "tokens_per_s", "breakdown", "memory"):
        assert key in d
    assert d["latency_s"] > 0 and d["flops"] > 0 and d["bytes"] > 0
    assert d["bound"] in ("compute", "memory", "latency", "network")
    assert 0 < d["mfu"] <= 1 and 0 < d["mbu"] <= 1
    assert d["tokens_per_s"] == pytest.approx(4 / d["latency_s"])
    assert d["breakdown"] and all({"name", "time_s", "flops", "bytes", "bound"} <= set(op) for op in d["breakdown"])
    assert sum(op["time_s"] for op in d["breakdown"]) == pytest.approx(d["latency_s"], rel=1e-9)
    assert sum(op["flops"] for op in d["breakdown"]) == pytest.approx(d["flops"], rel=1e-9)
    names = [op["name"] for op in d["breakdown"]]
    assert "attention_decode" in names and "qkv_proj" in names and "attention_prefill" not in names
    mem = d["memory"]
    for key in ("weights_gb", "kv_bytes_per_token", "max_kv_tokens", "kv_fits"):
        assert key in mem
    assert mem["weights_gb"] == pytest.approx(16.06, rel=0.01)        # 8.03 B params x 2 bytes
    assert mem["kv_bytes_per_token"] == 131072                          # 2 x 8 KV heads x 128 x 32 layers x 2 B
    assert mem["kv_fits"] is True and mem["max_kv_tokens"] > 4 * 2049


def test_decode_batch_whose_kv_exceeds_memory_is_priced_and_flagged():
    res = servesim("estimate", "--model", "llama-2-7b", "--gpu", "h100", "--batch", "256", "--context", "4096",
                   "--json")
    assert res.returncode == 0, res.stderr
    d = json.loads(res.stdout)
    assert d["memory"]["kv_fits"] is False
    assert d["latency_s"] > 0
    assert 256 * 4097 > d["memory"]["max_kv_tokens"]
    table = servesim("estimate", "--model", "llama-2-7b", "--gpu", "h100", "--batch", "256", "--context", "4096")
    assert table.returncode == 0 and "does not fit" in " ".join(table.stdout.split())   # however rich wraps it


def test_prefill_json_and_prefill_is_compute_bound():
    d = estimate_json("--model", "llama-3.1-8b", "--gpu", "h100", "--prompt-len", "4096", "--engine", "ideal")
    assert d["phase"] == "prefill" and d["bound"] == "compute"
    assert "attention_prefill" in [op["name"] for op in d["breakdown"]]
    assert d["tokens_per_s"] == pytest.approx(4096 / d["latency_s"])


# ----------------------------------------------------------------------------- estimate table

@pytest.mark.parametrize("args", [
    ("--model", "llama-3.1-8b", "--gpu", "h100", "--context", "1024", "--batch", "8"),
    ("--model", "mixtral-8x7b", "--gpu", "h100", "--tp", "2", "--prompt-len", "2048"),
], ids=["dense-decode", "moe-tp2-prefill"])
def test_estimate_table_lists_every_op_and_a_total_quickly(args):
    t0 = time.perf_counter()
    res = servesim("estimate", *args)
    elapsed = time.perf_counter() - t0
    assert res.returncode == 0, res.stderr
    assert elapsed < 3.0                                   # interpreter start-up included; generous guard
    d = estimate_json(*args)
    for op in d["breakdown"]:
        assert op["name"] in res.stdout, op["name"]      # whole, not cut to "attention_p…" at 80 columns
    assert "total" in res.stdout
    assert "tokens/s" in res.stdout and "MFU" in res.stdout


# ----------------------------------------------------------------------------- user errors

@pytest.mark.parametrize("gpu", ["h10", "H1OO"])
def test_unknown_gpu_is_one_line_with_a_suggestion(gpu):
    line = assert_user_error(servesim("estimate", "--model", "llama-2-7b", "--gpu", gpu, "--context", "10"),
                             "unknown GPU", gpu)
    assert "did you mean" in line and "h100" in line


def test_unknown_model_is_one_line_with_a_suggestion():
    line = assert_user_error(servesim("estimate", "--model", "lama-2-7b", "--gpu", "h100", "--context", "10"),
                             "unknown model")
    assert "did you mean" in line and "llama-2-7b" in line


def test_tp_that_does_not_divide_heads_is_one_line():
    assert_user_error(servesim("estimate", "--model", "llama-2-7b", "--gpu", "h100", "--tp", "3", "--context", "10"),
                      "tp=3", "does not divide")


def test_model_that_does_not_fit_is_one_line_with_numbers_in_gb():
    line = assert_user_error(servesim("estimate", "--model", "llama-3.1-405b", "--gpu", "h100", "--context", "10"),
                             "does not fit", "GB")
    assert "811" in line or "812" in line                 # the weights: 405.9 B params x 2 bytes


def test_malformed_config_json_is_one_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"hidden_size": 4096, ')
    assert_user_error(servesim("estimate", "--model", bad, "--gpu", "h100", "--context", "10"),
                      "invalid JSON", "bad.json")
    config = json.loads((CONFIGS / "llama-2-7b-hf.json").read_text())
    del config["hidden_size"]
    missing = tmp_path / "missing.json"
    missing.write_text(json.dumps(config))
    assert_user_error(servesim("estimate", "--model", missing, "--gpu", "h100", "--context", "10"),
                      "hidden_size", "missing.json")
    assert_user_error(servesim("estimate", "--model", tmp_path / "absent.json", "--gpu", "h100", "--context", "10"),
                      "does not exist")


def test_config_json_with_zero_heads_is_one_line(tmp_path):
    config = json.loads((CONFIGS / "llama-2-7b-hf.json").read_text())
    config["num_attention_heads"] = 0
    zero = tmp_path / "zero.json"
    zero.write_text(json.dumps(config))
    assert_user_error(servesim("estimate", "--model", zero, "--gpu", "h100", "--context", "10"), "num_heads")


@pytest.mark.parametrize("extra,fragment", [
    (("--batch", "0", "--context", "10"), "--batch"),
    ((), "--context"),                                    # decode without a context
    (("--prompt-len", "0"), "--prompt-len"),
    (("--context", "10", "--weight-dtype", "int3"), "int3"),
    (("--context", "10", "--engine", "vlm"), "vlm"),
    (("--context", "10", "--phase", "train"), "train"),
    (("--context", "-1"), "--context"),
])
def test_bad_values_are_one_line(extra, fragment):
    assert_user_error(servesim("estimate", "--model", "llama-2-7b", "--gpu", "h100", *extra), fragment)


def test_usage_error_is_one_line():
    assert_user_error(servesim("estimate", "--model", "llama-2-7b", "--gpu", "h100", "--batch", "abc"), "--batch")


# ----------------------------------------------------------------------------- model names and files

def test_hf_id_resolves_to_the_catalogue_entry():
    d = estimate_json("--model", "meta-llama/Llama-3.1-8B-Instruct", "--gpu", "h100", "--context", "100")
    assert d["model"] == "llama-3.1-8b"


def test_config_json_path_prices_like_the_catalogue_entry():
    path = CONFIGS / "llama-3.1-8b-instruct.json"
    from_file = estimate_json("--model", str(path), "--gpu", "h100", "--context", "1000", "--batch", "8")
    from_catalogue = estimate_json("--model", "llama-3.1-8b", "--gpu", "h100", "--context", "1000", "--batch", "8")
    assert from_file["model"] == "llama-3.1-8b-instruct"
    assert from_file["latency_s"] == pytest.approx(from_catalogue["latency_s"], rel=0.01)
    assert from_file["memory"]["kv_bytes_per_token"] == from_catalogue["memory"]["kv_bytes_per_token"]
    # a relative path works too, from the directory holding it
    rel = servesim("estimate", "--model", path.name, "--gpu", "h100", "--context", "10", "--json", cwd=CONFIGS)
    assert rel.returncode == 0, rel.stderr


# ----------------------------------------------------------------------------- catalog

def test_catalog_gpus_json_lists_ridge_points_per_dtype():
    res = servesim("catalog", "gpus", "--json")
    assert res.returncode == 0, res.stderr
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert {"a100-sxm-80gb", "h100-sxm-80gb", "mi300x"} <= set(rows)
    a100 = rows["a100-sxm-80gb"]
    assert a100["ridge_bf16"] == pytest.approx(312e12 / 2039e9, rel=0.02)
    assert a100["ridge_int8"] == pytest.approx(2 * a100["ridge_bf16"], rel=1e-9)
    assert "ridge_fp8" in rows["h100-sxm-80gb"]
    # parts without bf16 show their fp16 rate as the 16-bit one (the table's compute column is never blank)
    assert rows["t4"]["half_dtype"] == "fp16" and rows["t4"]["half_tflops"] == rows["t4"]["fp16_tflops"]
    assert all(r["half_tflops"] for r in rows.values())
    for r in rows.values():
        ridges = {k: v for k, v in r.items() if k.startswith("ridge_")}
        assert ridges, r["name"]
        for k, v in ridges.items():
            dtype = k.removeprefix("ridge_")
            assert v == pytest.approx(r[f"{dtype}_tflops"] * 1e12 / (r["memory_bw_gbps"] * 1e9)), (r["name"], k)


def test_catalog_models_json_lists_params_and_kv_bytes():
    res = servesim("catalog", "models", "--json")
    assert res.returncode == 0, res.stderr
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    for r in rows.values():
        assert r["params_b"] > 0 and 0 < r["active_params_b"] <= r["params_b"] and r["kv_bytes_per_token"] > 0
    assert rows["llama-2-7b"]["params_b"] == pytest.approx(6.74, rel=0.01)
    assert rows["llama-2-7b"]["kv_bytes_per_token"] == 524288
    assert rows["mixtral-8x7b"]["active_params_b"] < 0.35 * rows["mixtral-8x7b"]["params_b"]
    assert rows["deepseek-v3"]["kv_bytes_per_token"] < rows["llama-2-7b"]["kv_bytes_per_token"]


def test_catalog_constants_json_has_a_source_for_every_constant():
    from sim.cost import KernelConstants

    res = servesim("catalog", "constants", "--json")
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)
    import dataclasses

    assert {r["name"] for r in rows} == {f.name for f in dataclasses.fields(KernelConstants)}
    for r in rows:
        assert isinstance(r["value"], (int, float)) and r["value"] >= 0, r
        assert r["source"].strip() and r["unit"].strip(), r


def test_catalog_engines_and_tables():
    res = servesim("catalog", "engines", "--json")
    assert res.returncode == 0, res.stderr
    engines = {r["name"]: r for r in json.loads(res.stdout)}
    assert {"vllm", "ideal"} <= set(engines)
    assert engines["ideal"]["step_overhead_s"] == 0 and engines["ideal"]["roofline_only"] is True
    for what in ("gpus", "models", "engines", "constants"):
        table = servesim("catalog", what)
        assert table.returncode == 0 and table.stdout.strip(), what


# ----------------------------------------------------------------------------- roofline

def test_roofline_writes_html_with_plotly_and_the_op_names(tmp_path):
    out = tmp_path / "tmp" / "roof.html"
    res = servesim("roofline", "--model", "llama-3.1-8b", "--gpu", "a100-sxm-80gb", "--batch", "4", "--out", out)
    assert res.returncode == 0, res.stderr
    html = out.read_text()
    assert "plotly" in html.lower()
    for name in ("qkv_proj", "attention_prefill", "attention_decode", "mlp_up_gate", "mlp_down"):
        assert name in html, name
    assert "ridge" in html


def test_roofline_bad_gpu_is_one_line(tmp_path):
    assert_user_error(servesim("roofline", "--model", "llama-3.1-8b", "--gpu", "h10", "--out", tmp_path / "r.html"),
                      "unknown GPU")
    assert not (tmp_path / "r.html").exists()


def test_catalog_plugins_lists_every_kind():
    p = servesim("catalog", "plugins", "--json")
    assert p.returncode == 0, p.stderr
    rows = json.loads(p.stdout)
    kinds = {r["kind"] for r in rows}
    assert {"scheduler", "workload", "arrival", "length", "trace_format"} <= kinds
    assert any(r["kind"] == "scheduler" and r["name"] == "vllm" and r["summary"] for r in rows)
