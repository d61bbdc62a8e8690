"""Trace formats: each loader on a shipped slice of the real file, on the full file when the shared folder
is there (reproducing its published statistics), on malformed input (one clear line, exit 2), and fast.

Also the trace transformations (window, rate and time scaling, sampling, length filter, generated
arrivals, tenant tagging) and Mooncake prefix identity.
"""
from __future__ import annotations

import bz2
import gzip
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sim.errors import TraceError
from workloads.build import build_workload
from workloads.describe import describe
from workloads.formats import load_table, sniff_format

DATA = Path(__file__).parent / "data" / "traces"
AZURE_CONV_HEAD = DATA / "azure_conv_2023_head.csv"
AZURE_CODE_HEAD = DATA / "azure_code_2023_head.csv"
MOONCAKE_HEAD = DATA / "mooncake_conversation_head.jsonl"
MOONCAKE_SYN_HEAD = DATA / "mooncake_synthetic_head.jsonl"
SHAREGPT_HEAD = DATA / "sharegpt_opt_first_turn_head.csv"
VIDUR_HEAD = DATA / "vidur_arxiv_head.csv"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "traces"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="the shared trace folder is not present")

ROOT = Path(__file__).resolve().parents[1]
SERVESIM = Path(sys.executable).parent / "servesim"
if not SERVESIM.exists():  # pragma: no cover - fall back to the project's venv
    SERVESIM = ROOT / ".venv" / "bin" / "servesim"


def reqs(cfg: dict, seed: int = 0, **kw) -> list:
    return list(build_workload(cfg, seed, **kw))


# ----------------------------------------------------------------------------- loaders on the shipped slices


def test_azure_2023_slice():
    raw = pd.read_csv(AZURE_CONV_HEAD)
    assert sniff_format(AZURE_CONV_HEAD) == "azure_2023"
    r = reqs({"type": "trace", "path": str(AZURE_CONV_HEAD)})
    assert len(r) == len(raw) == 300
    ts = pd.to_datetime(raw.TIMESTAMP)
    expect = (ts - ts[0]).dt.total_seconds().to_numpy()
    assert np.allclose([x.arrival_s for x in r], expect, atol=1e-6) and r[0].arrival_s == 0.0
    assert [x.input_tokens for x in r] == raw.ContextTokens.tolist()
    assert [x.output_tokens for x in r] == raw.GeneratedTokens.tolist()
    assert all(x.segments is None for x in r)
    code = load_table(AZURE_CODE_HEAD, "azure_2023")
    assert len(code) == 300 and code.input_tokens.tolist() == pd.read_csv(AZURE_CODE_HEAD).ContextTokens.tolist()


def test_azure_2024_layout(tmp_path):
    # the week-long 2024 files: same columns, UTC offsets, 6-digit (sometimes no) fractions
    p = tmp_path / "AzureLLMInferenceTrace_conv_1week.csv"
    p.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                 "2024-05-10 00:00:00.009930+00:00,4808,10\n"
                 "2024-05-10 00:00:01+00:00,3180,8\n"
                 "2024-05-10 00:00:02.500000+00:00,110,27\n"
                 "2024-05-11 00:00:02.500000+00:00,10,2\n")
    assert sniff_format(p) == "azure_2024"
    t = load_table(p)
    assert t.format == "azure_2024"
    assert np.allclose(t.arrival_s, [0.0, 0.99007, 2.49007, 86402.49007])
    assert t.input_tokens.tolist() == [4808, 3180, 110, 10]


@pytest.mark.parametrize("name, opener", [("bom.csv", None), ("azure.csv.gz", gzip.open), ("azure.csv.bz2", bz2.open)])
def test_auto_format_reads_the_header_as_pandas_does(tmp_path, name, opener):
    raw = AZURE_CONV_HEAD.read_bytes()
    p = tmp_path / name
    if opener is None:
        p.write_bytes(b"\xef\xbb\xbf" + raw)                    # a UTF-8 byte-order mark (Excel, PowerShell)
    else:
        with opener(p, "wb") as f:
            f.write(raw)
    assert sniff_format(p) == "azure_2023"
    t, plain = load_table(p), load_table(AZURE_CONV_HEAD)
    assert t.format == "azure_2023" and t.input_tokens.tolist() == plain.input_tokens.tolist()
    assert np.array_equal(t.arrival_s, plain.arrival_s)
    bom24 = tmp_path / "bom24.csv"
    bom24.write_text("\ufeffTIMESTAMP,ContextTokens,GeneratedTokens\n2024-05-10 00:00:01+00:00,31,8\n",
                     encoding="utf-8")
    assert sniff_format(bom24) == "azure_2024"


def test_missing_columns_say_one_coherent_thing(tmp_path):
    p = tmp_path / "bom.csv"
    p.write_bytes(b"\xef\xbb\xbf" + AZURE_CONV_HEAD.read_bytes())
    with pytest.raises(TraceError) as e:
        load_table(p, "csv")                                   # an Azure file read as servesim's csv
    msg = str(e.value)
    assert "set format: azure_2023" in msg and "did you mean" not in msg and "\n" not in msg
    q = tmp_path / "typo.csv"
    q.write_text("arrival_time_s,Input_Tokens,output_tokens\n0,1,1\n")
    with pytest.raises(TraceError) as e:
        load_table(q)
    assert str(e.value).count("did you mean") == 1 and "did you mean Input_Tokens?" in str(e.value)


def test_error_locations_match_the_file(tmp_path):
    mc = tmp_path / "m.jsonl"                                  # Mooncake times are milliseconds: quote them so
    mc.write_text('{"timestamp": -3, "input_length": 5, "output_length": 1}\n')
    with pytest.raises(TraceError, match=r"data row 1 \(line 1\), column 'timestamp': negative arrival time -3 ms"):
        load_table(mc)
    mc.write_text('{"timestamp": 0, "input_length": 5, "output_length": 1}\n\n'
                  '{"timestamp": 1, "input_length": 5, "output_length": -1}\n')
    with pytest.raises(TraceError, match=r"data row 2 \(line 3\), column 'output_length'"):
        load_table(mc)
    ms = tmp_path / "ms.csv"
    ms.write_text("arrival_time_s,input_tokens,output_tokens\n5,1,1\n2,1,1\n")
    with pytest.raises(TraceError, match=r"CSV line 3\).*arrival time 2 ms is earlier than the previous row's 5 ms"):
        load_table(ms, time_unit="ms")
    img = tmp_path / "img.csv"                                 # image checks: 1-based rows and CSV lines, as above
    img.write_text("arrival_time_s,input_tokens,output_tokens,image_ids,image_tokens\n0,700,10,a;b,576\n")
    with pytest.raises(TraceError, match=r"data row 1 \(CSV line 2\), column 'input_tokens'.*images take 1152"):
        build_workload({"type": "trace", "path": str(img)}, 0)
    img.write_text("arrival_time_s,input_tokens,output_tokens,image_ids,image_tokens\n0,700,10,a,5\n\n1,700,10,b,x\n")
    with pytest.raises(TraceError, match=r"data row 2 \(CSV line 4\), column 'image_tokens'.*'x'"):
        build_workload({"type": "trace", "path": str(img)}, 0)
    img.write_text("arrival_time_s,input_tokens,output_tokens,image_ids\n5,700,10,a\n1,7,10,b\n")
    with pytest.raises(TraceError, match=r"data row 2 \(CSV line 3\), column 'input_tokens'.*input_tokens is 7"):
        build_workload({"type": "trace", "path": str(img), "sort": True, "image_tokens": 100}, 0)


def test_json_flags_and_huge_counts_are_refused(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text('{"timestamp": 0, "input_length": 5, "output_length": 1}\n'
                 '{"timestamp": 1, "input_length": true, "output_length": 1}\n')
    with pytest.raises(TraceError, match=r"data row 2 \(line 2\), column 'input_length'.*true/false"):
        load_table(p)
    p.write_text('{"timestamp": 0, "input_length": 5, "output_length": 1e20}\n')
    with pytest.raises(TraceError, match=r"data row 1 \(line 1\), column 'output_length'.*out of range"):
        load_table(p)


def test_mooncake_slice_and_prefix_segments():
    lines = [json.loads(x) for x in MOONCAKE_HEAD.read_text().splitlines()]
    w = build_workload({"type": "trace", "path": str(MOONCAKE_HEAD)}, 0)
    r = list(w)
    assert len(r) == len(lines) == 300
    assert [x.arrival_s for x in r] == [x["timestamp"] / 1000 for x in lines]
    for x, row in zip(r, lines):
        n, h = row["input_length"], row["hash_ids"]
        assert x.input_tokens == n and x.output_tokens == row["output_length"]
        assert sum(k for _, k in x.segments) == n
        assert [key for key, _ in x.segments] == h[:len(x.segments)]
        assert all(k == 512 for _, k in x.segments[:-1])
    # two requests with the same first blocks share exactly those segments
    a, b = r[0].segments, r[1].segments
    assert a[0] == b[0] and a[1] != b[1]
    syn = load_table(MOONCAKE_SYN_HEAD)
    assert len(syn) == 200 and syn.hash_ids is not None


def test_mooncake_blocks_beyond_the_ids_are_unique_and_clipping_truncates(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text('{"timestamp": 0, "input_length": 1100, "output_length": 5, "hash_ids": [7, 8]}\n'
                 '{"timestamp": 10, "input_length": 600, "output_length": 5, "hash_ids": [7, 9, 10]}\n'
                 '{"timestamp": 20, "input_length": 30, "output_length": 5}\n')
    r = reqs({"type": "trace", "path": str(p)})
    assert r[0].segments == ((7, 512), (8, 512), (("req", 0), 76))
    assert r[1].segments == ((7, 512), (9, 88))
    assert r[2].segments == ((("req", 2), 30),)
    c = reqs({"type": "trace", "path": str(p)}, max_model_len=520)
    assert c[0].input_tokens == 519 and c[0].segments == ((7, 512), (8, 7))


def test_burstgpt_layout(tmp_path):
    p = tmp_path / "BurstGPT_1.csv"
    p.write_text("Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
                 "5,ChatGPT,472,18,490,Conversation log\n"
                 "45,ChatGPT,1087,230,1317,Conversation log\n"
                 "118,GPT-4,417,276,693,Conversation log\n"
                 "1106,ChatGPT,0,0,0,Conversation log\n"
                 "1129,GPT-4,1305,477,1782,API log\n")
    assert sniff_format(p) == "burstgpt"
    w = build_workload({"type": "trace", "path": str(p),
                        "classes": [{"tenant": "GPT-4", "priority": 1, "slo_ttft_s": 2.0}]}, 0)
    r = list(w)
    assert w.dropped == 1                                        # the failed request (0 tokens)
    assert [x.arrival_s for x in r] == [5, 45, 118, 1129]
    assert [x.tenant for x in r] == ["ChatGPT", "ChatGPT", "GPT-4", "GPT-4"]
    assert [(x.priority, x.slo_ttft_s) for x in r] == [(0, None), (0, None), (1, 2.0), (1, 2.0)]


def test_sharegpt_json(tmp_path):
    convs = [
        {"id": "a", "conversations": [{"from": "human", "value": "one two three four"},
                                      {"from": "gpt", "value": "five six seven"},
                                      {"from": "human", "value": "later turns are ignored"}]},
        {"id": "b", "conversations": [{"from": "gpt", "value": "no human first"}, {"from": "human", "value": "x y"},
                                      {"from": "gpt", "value": "z"}]},
        {"id": "c", "conversations": [{"from": "human", "value": "unanswered"}]},
        {"id": "d", "conversations": [{"from": "human", "value": "w " * 30, "num_tokens": 17},
                                      {"from": "gpt", "value": "v", "num_tokens": 250}]},
    ]
    p = tmp_path / "ShareGPT_V3.json"
    p.write_text(json.dumps(convs))
    t = load_table(p, need_time=False)
    assert t.format == "sharegpt"
    # words / 0.75 rounded up where no count is given; the count field where it is
    assert t.input_tokens.tolist() == [6, 3, 0, 17] and t.output_tokens.tolist() == [4, 2, 0, 250]
    assert any("approximate" in n for n in t.notes)
    w = build_workload({"type": "trace", "path": str(p), "arrival": {"process": "poisson", "rate": 2,
                                                                     "num_requests": 7}}, 0)
    r = list(w)
    assert w.dropped == 1 and len(r) == 7
    assert [x.input_tokens for x in r] == [6, 3, 17, 6, 3, 17, 6]   # rows in order, cycled
    with pytest.raises(TraceError, match="no arrival times.*arrival:"):
        build_workload({"type": "trace", "path": str(p)}, 0)


def test_length_tables_and_column_mapping(tmp_path):
    t = load_table(SHAREGPT_HEAD, need_time=False)
    raw = pd.read_csv(SHAREGPT_HEAD)
    assert t.format == "csv" and t.arrival_s is None and t.input_tokens.tolist() == raw.input_tokens.tolist()
    v = load_table(VIDUR_HEAD, need_time=False)
    vr = pd.read_csv(VIDUR_HEAD)
    assert v.format == "vidur" and v.output_tokens.tolist() == vr.num_decode_tokens.tolist()
    p = tmp_path / "mine.csv"
    p.write_text("t_ms,prompt,completion,who\n0,10,5,alice\n1500,20,6,bob\n2500,30,7,\n")
    w = build_workload({"type": "trace", "path": str(p), "time_unit": "ms",
                        "columns": {"arrival_time_s": "t_ms", "input_tokens": "prompt", "output_tokens": "completion",
                                    "tenant": "who"}}, 0)
    r = list(w)
    assert [(x.arrival_s, x.input_tokens, x.output_tokens, x.tenant) for x in r] == [
        (0.0, 10, 5, "alice"), (1.5, 20, 6, "bob"), (2.5, 30, 7, None)]
    with pytest.raises(TraceError, match=r"data row 2 \(CSV line 3\), column 'prompt'.*negative"):
        p.write_text("t_ms,prompt,completion\n0,10,5\n1500,-20,6\n")
        load_table(p, columns={"arrival_time_s": "t_ms", "input_tokens": "prompt", "output_tokens": "completion"})


# ----------------------------------------------------------------------------- transformations


def test_window_rate_and_time_scaling():
    base = {"type": "trace", "path": str(AZURE_CONV_HEAD)}
    full = reqs(base)
    t = np.array([x.arrival_s for x in full])
    win = reqs({**base, "window": {"start_s": 10.0, "end_s": 40.0}})
    inside = t[(t >= 10) & (t < 40)]
    assert np.allclose([x.arrival_s for x in win], inside - 10.0)
    fast = reqs({**base, "time_scale": 0.25})
    assert np.allclose([x.arrival_s for x in fast], t * 0.25)
    half = reqs({**base, "rate_scale": 0.5}, seed=1)
    assert abs(len(half) - 150) < 3 * math.sqrt(300 * 0.25)
    assert {x.input_tokens for x in half} <= {x.input_tokens for x in full}
    k = 2.5
    more = reqs({**base, "rate_scale": k}, seed=1)
    assert abs(len(more) - 750) < 3 * math.sqrt(300 * 0.25)
    tm = np.array([x.arrival_s for x in more])
    assert np.all(np.diff(tm) >= 0) and tm[-1] <= t[-1] + (t[-1] - t[0]) / 299 + 1e-9
    # the rate profile keeps its shape: per-minute counts scale by k
    edges = np.arange(0, t[-1] + 60, 60)
    assert np.allclose(np.histogram(tm, edges)[0], k * np.histogram(t, edges)[0], rtol=0.35, atol=6)
    samp = reqs({**base, "sample_fraction": 0.3}, seed=2)
    assert abs(len(samp) - 90) < 3 * math.sqrt(300 * 0.21)
    flt = reqs({**base, "filter": {"max_input_tokens": 1000, "min_output_tokens": 50}})
    assert all(x.input_tokens <= 1000 and x.output_tokens >= 50 for x in flt) and 0 < len(flt) < 300
    assert len(reqs({**base, "max_requests": 7})) == 7


def test_rate_scaled_copies_get_their_own_prefix_identity():
    r = reqs({"type": "trace", "path": str(MOONCAKE_HEAD), "rate_scale": 2.0}, seed=0)
    assert len(r) == 600
    originals = [x for x in r if not isinstance(x.segments[0][0], tuple) or x.segments[0][0][0] != "copy"]
    copies = [x for x in r if isinstance(x.segments[0][0], tuple) and x.segments[0][0][0] == "copy"]
    assert len(originals) == len(copies) == 300
    assert copies[0].segments[0][0][:2] == ("copy", 1)


def test_trace_classes_drawn_by_weight():
    r = reqs({"type": "trace", "path": str(AZURE_CONV_HEAD),
              "classes": [{"tenant": "a", "slo_ttft_s": 1.0, "weight": 1}, {"tenant": "b", "weight": 1}]}, seed=3)
    n_a = sum(x.tenant == "a" for x in r)
    assert abs(n_a - 150) < 3 * math.sqrt(75)
    assert all(x.slo_ttft_s == 1.0 for x in r if x.tenant == "a")


# ----------------------------------------------------------------------------- malformed traces


MALFORMED = {
    "azure_missing_column": ("a.csv", "TIMESTAMP,ContextTokens\n2023-11-16 18:17:03.97,5\n",
                             r"missing required column\(s\) GeneratedTokens"),
    "azure_negative": ("a.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.97,5,3\n"
                                "2023-11-16 18:17:04.97,-5,3\n",
                       r"data row 2 \(CSV line 3\), column 'ContextTokens'.*negative"),
    "azure_unsorted": ("a.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.97,5,3\n"
                                "2023-11-16 18:17:01.00,5,3\n",
                       r"data row 2 \(CSV line 3\), column 'TIMESTAMP'.*earlier than the previous"),
    "azure_bad_time": ("a.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.97,5,3\nyesterday,5,3\n",
                       r"data row 2 \(CSV line 3\), column 'TIMESTAMP'.*not a timestamp"),
    "mooncake_missing": ("m.jsonl", '{"timestamp": 0, "input_length": 5}\n',
                         r"missing required column\(s\) output_length"),
    "mooncake_negative": ("m.jsonl", '{"timestamp": 0, "input_length": 5, "output_length": 1, "hash_ids": [1]}\n'
                                     '{"timestamp": 5, "input_length": -5, "output_length": 1, "hash_ids": [2]}\n',
                          r"data row 2 \(line 2\), column 'input_length'.*negative"),
    "mooncake_unsorted": ("m.jsonl", '{"timestamp": 50, "input_length": 5, "output_length": 1}\n'
                                     '{"timestamp": 5, "input_length": 5, "output_length": 1}\n',
                          r"data row 2 \(line 2\), column 'timestamp'.*earlier than the previous"),
    "mooncake_text_time": ("m.jsonl", '{"timestamp": 0, "input_length": 5, "output_length": 1}\n'
                                      '{"timestamp": "soon", "input_length": 5, "output_length": 1}\n',
                           r"data row 2 \(line 2\), column 'timestamp'.*not a number"),
    "mooncake_bad_json": ("m.jsonl", '{"timestamp": 0, "input_length": 5, "output_length": 1}\n{"timestamp": 1,\n',
                          r"line 2 is not valid JSON"),
    "mooncake_empty": ("m.jsonl", "", r"the file is empty"),
    "burstgpt_text_length": ("b.csv", "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
                                      "5,ChatGPT,many,18,490,Conversation log\n",
                             r"data row 1 \(CSV line 2\), column 'Request tokens'.*not a number"),
    "sharegpt_no_conversations": ("s.json", '[{"id": 1, "text": "hi"}]', r"conversation 0.*no 'conversations'"),
    "sharegpt_empty": ("s.json", "", r"the file is empty"),
    "csv_empty": ("c.csv", "", r"the file is empty"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_traces_give_one_line(tmp_path, case):
    name, body, match = MALFORMED[case]
    p = tmp_path / name
    p.write_text(body)
    fmt = {"a.csv": "azure_2023", "b.csv": "burstgpt"}.get(name, "auto")
    with pytest.raises(TraceError, match=match) as e:
        build_workload({"type": "trace", "path": str(p), "format": fmt,
                        **({"arrival": {"process": "poisson", "rate": 1, "num_requests": 2}}
                           if name.endswith(".json") else {})}, 0)
    assert "\n" not in str(e.value) and str(p) in str(e.value)


def test_unsorted_trace_can_be_sorted_on_request(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text('{"timestamp": 50, "input_length": 5, "output_length": 1}\n'
                 '{"timestamp": 5, "input_length": 6, "output_length": 1}\n')
    r = reqs({"type": "trace", "path": str(p), "sort": True})
    assert [(x.arrival_s, x.input_tokens) for x in r] == [(0.005, 6), (0.05, 5)]


def test_cli_refuses_malformed_trace_with_exit_2(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"timestamp": 0, "input_length": 5, "output_length": 1}\n'
                 '{"timestamp": 1, "input_length": 5, "output_length": -1}\n')
    run_cfg = tmp_path / "run.yaml"
    run_cfg.write_text(f"model: llama-2-7b\nsim: {{progress: false}}\nworkload: {{type: trace, path: {p}}}\n")
    out = tmp_path / "out"
    for args in (["workload", "describe", str(p)], ["run", str(run_cfg), "--out", str(out)]):
        res = subprocess.run([str(SERVESIM), *args], capture_output=True, text=True, timeout=120)
        assert res.returncode == 2, res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and "data row 2 (line 2), column 'output_length'" in lines[0] and str(p) in lines[0]
    assert not out.exists()                                     # nothing simulated on bad data


# ----------------------------------------------------------------------------- speed


def test_million_row_traces_load_in_seconds(tmp_path):
    n = 1_000_000
    rng = np.random.default_rng(0)
    t = np.cumsum(rng.exponential(0.01, n))
    inp = rng.integers(1, 1024, n)
    # Mooncake JSONL (two 512-token blocks at most per prompt, the first one shared by many)
    mc = tmp_path / "big.jsonl"
    mc.write_text("".join([f'{{"timestamp": {a}, "input_length": {b}, "output_length": 7, "hash_ids": [{c}, {i}]}}\n'
                           for i, (a, b, c) in enumerate(zip((t * 1000).astype(np.int64).tolist(), inp.tolist(),
                                                             rng.integers(0, 1000, n).tolist()), start=1000)]))
    t0 = time.perf_counter()
    w = build_workload({"type": "trace", "path": str(mc)}, 0)
    assert time.perf_counter() - t0 < 10.0 and w.expected_count == n
    # Azure 2024 CSV (ISO timestamps with UTC offsets)
    stamps = np.datetime_as_string(np.datetime64("2024-05-10T00:00:00", "us") + (t * 1e6).astype("timedelta64[us]"),
                                   unit="us")
    az = tmp_path / "big_azure.csv"
    az.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                  + "".join([f"{a}+00:00,{b},9\n" for a, b in zip(stamps.tolist(), inp.tolist())]))
    t0 = time.perf_counter()
    table = load_table(az)
    assert time.perf_counter() - t0 < 10.0 and len(table) == n and table.format == "azure_2024"
    assert table.arrival_s[-1] == pytest.approx(t[-1] - t[0], abs=1e-5)


# ----------------------------------------------------------------------------- the full public files


@needs_shared
def test_full_traces_reproduce_published_stats():
    stats = {s["name"]: s for s in json.loads((SHARED / "trace_stats.json").read_text())}
    for name in ("AzureLLMInferenceTrace_conv.csv", "AzureLLMInferenceTrace_code.csv",
                 "mooncake_fast25_conversation_trace.jsonl", "mooncake_fast25_synthetic_trace.jsonl"):
        d = describe(SHARED / name).summary()
        s = stats[name]
        assert d["rows"] == s["rows"]
        assert d["duration_s"] == pytest.approx(s["span_s"], abs=0.01)
        assert d["rate_per_s"] == pytest.approx(s["mean_rate_rps"], abs=1e-3)
        assert d["input_tokens"]["mean"] == pytest.approx(s["in_mean"], abs=0.05)
        assert d["output_tokens"]["mean"] == pytest.approx(s["out_mean"], abs=0.05)
        assert d["input_tokens"]["p99"] == pytest.approx(s["in_p99"], abs=0.05)
        assert d["interarrival_cv"] == pytest.approx(s["gap_cv"], abs=1e-3)
        if "prefix_token_hit_frac_infinite_cache" in s:
            assert d["prefix_hit_upper_bound"] == pytest.approx(s["prefix_token_hit_frac_infinite_cache"], abs=1e-4)
    conv = describe(SHARED / "AzureLLMInferenceTrace_conv.csv").summary()
    assert (conv["rows"], round(conv["input_tokens"]["mean"]), round(conv["output_tokens"]["mean"])) == (19366, 1155, 211)
    mc = describe(SHARED / "mooncake_fast25_conversation_trace.jsonl").summary()
    assert (mc["rows"], round(mc["input_tokens"]["mean"]), round(mc["output_tokens"]["mean"])) == (12031, 12035, 343)
    assert round(mc["prefix_hit_upper_bound"], 2) == 0.37
    # ShareGPT first turns with input + output <= 2048 (the vLLM paper's filter): 161 / 338 tokens
    d = {"dist": "empirical", "path": str(SHARED / "sharegpt_opt_first_turn_lengths.csv"),
         "filter": {"max_total_tokens": 2048}}
    from workloads.dist_config import EmpiricalLength
    from workloads.lengths import empirical_values

    inp, out = empirical_values(EmpiricalLength(**d))
    assert (len(inp), round(inp.mean()), round(out.mean())) == (79731, 161, 338)
    w = build_workload({"type": "trace", "path": d["path"], "filter": d["filter"],
                        "arrival": {"process": "poisson", "rate": 10, "num_requests": 79731}}, 0)
    assert round(w.input_tokens.mean()) == 161 and round(w.output_tokens.mean()) == 338
    vid = load_table(SHARED / "vidur_arxiv_summarization_lengths_llama2tok.csv", need_time=False)
    assert (len(vid), round(vid.input_tokens.mean(), 1)) == (28257, 2588.1)


@pytest.mark.skipif(os.environ.get("SERVESIM_SKIP_SLOW") == "1", reason="slow tests skipped")
def test_slices_match_the_head_of_the_full_files():
    if not SHARED.is_dir():
        pytest.skip("the shared trace folder is not present")
    for head, full in ((AZURE_CONV_HEAD, "AzureLLMInferenceTrace_conv.csv"),
                       (MOONCAKE_HEAD, "mooncake_fast25_conversation_trace.jsonl")):
        a, b = load_table(head), load_table(SHARED / full)
        n = len(a)
        assert np.array_equal(a.input_tokens, b.input_tokens[:n]) and np.allclose(a.arrival_s, b.arrival_s[:n])
