"""Property-based fuzzing of feature combinations: hypothesis draws random but valid run configs (model, GPU,
batching scheduler, queue ordering, victims, engine knobs, replicas behind a router (MoE: also in lockstep with
their experts over all their GPUs) or prefill/decode pools,
speculative decoding, KV offload tiers, KV eviction, admission control, fast or per-iteration mode) on small
workloads of a few dozen requests (Poisson, shared prefixes, or a tiny CSV trace), and checks invariants that
must hold for every config the project accepts:

- no request lost or duplicated: completed + rejected == what the workload sent (rebuilt from the same seed),
  dropped and clipped counts as the workload's, nothing unfinished, request ids unique and the workload's;
- tokens conserved: every completed request generated the output tokens it asked for, with its own prompt;
- timestamps ordered: arrival <= first scheduled <= first token <= finish, all finite; TTFT / E2E >= 0;
- KV peak usage (run and per replica) within [0, 1]; preemptions counted per request add up to the run's;
- only the project's `ServesimError`s escape, and only while the run is built (never from the event loop);
- no run takes longer than RUN_LIMIT_S of wall time (a livelock is a failure, not a hung test);
- for a subset, fast mode and iteration mode give identical per-request timestamps.

Refused configs (a `ServesimError` such as "the model does not fit") are fine but counted, so the fuzz cannot
silently degenerate into generating refused configs only. Half the examples are "heavy" (a burst of long
requests on a KV cache of ~15-60k tokens) so that preemption, swap and eviction paths run. Each bug the fuzz
found has a minimal regression test at the end of the file.
"""
from __future__ import annotations

import atexit
import contextlib
import copy
import hashlib
import json
import math
import random
import shutil
import signal
import tempfile
import traceback
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

from experiments.config import load_config
from experiments.runner import run
from sim.errors import ServesimError
from workloads.build import build_workload

# ----------------------------------------------------------------------------- the strategy

MODELS = {"llama-3.1-8b": [1], "llama-2-7b": [1], "qwen2.5-7b": [1], "mixtral-8x7b": [2],
          "qwen3-30b-a3b": [1, 2]}                   # name -> TP degrees drawn
GPUS = ["h100", "a100-sxm-80gb"]
SCHEDULERS = ["vllm", "vllm-v0", "sarathi", "orca", "static", "dynamic"]
ORDERINGS = ["fcfs", "sjf", "priority", "edf", "fair"]
VICTIMS = ["newest", "lowest_priority", "largest_kv"]
ROUTERS = ["round_robin", "random", "least_outstanding_requests", "least_kv_usage", "power_of_two",
           "prefix_affinity", "session_affinity"]

RUN_LIMIT_S = 20.0          # one run takes milliseconds to a second; far beyond that it is a livelock
_TRACE_DIR = Path(tempfile.mkdtemp(prefix="servesim-fuzz-"))
atexit.register(shutil.rmtree, _TRACE_DIR, True)


def _write_trace(rows: list[tuple], with_prefix: bool) -> str:
    """A tiny CSV trace in the csv format (arrival_time_s, input_tokens, output_tokens[, prefix_group,
    prefix_len]); its name is its content's hash, so equal traces share one file."""
    header = "arrival_time_s,input_tokens,output_tokens" + (",prefix_group,prefix_len" if with_prefix else "")
    lines = [header] + [",".join(str(v) for v in (r if with_prefix else r[:3])) for r in rows]
    text = "\n".join(lines) + "\n"
    path = _TRACE_DIR / f"trace-{hashlib.sha1(text.encode()).hexdigest()[:16]}.csv"
    if not path.exists():
        path.write_text(text)
    return str(path)


class Draws:
    """The choices of one example, from a Random seeded by hypothesis (`configs` below). Choice-level hypothesis
    draws (a composite of ~50 `draw(...)`s, or `st.randoms(use_true_random=False)`) were tried first: hypothesis's
    mutator then yields runs of near-identical examples, ~47 distinct configs and ~28 distinct feature mixes in
    100 examples, against 100 and 99 with a seed per example. Failures are shrunk by hand into the explicit
    regression tests at the end of the file; the failing config is printed (`note`) either way. Each choice
    favours the first item of a list, so defaults go first."""

    def __init__(self, rnd) -> None:
        self.rnd = rnd

    def pick(self, choices):
        return choices[self.rnd.randrange(len(choices))]

    def int(self, lo: int, hi: int) -> int:
        return self.rnd.randint(lo, hi)

    def real(self, lo: float, hi: float) -> float:
        return lo + (hi - lo) * self.rnd.random()

    def flip(self, p: float = 0.5) -> bool:
        return self.rnd.random() >= 1.0 - p


def make_workload(d: Draws, heavy: bool) -> dict:
    """A few dozen requests; `heavy`: all at once with long prompts and outputs, to fill the KV cache."""
    kind = d.pick(["poisson", "shared_prefix", "trace"])
    n = d.int(40, 60) if heavy else d.int(8, 60)       # about this many requests
    rate = 1000.0 if heavy else d.pick([3.0, 30.0, 1000.0])
    if kind == "poisson":
        wl = {"type": "poisson", "stages": [{"rate": rate, "duration_s": n / rate}],
              "input_len": d.pick([d.int(1, 3000), {"dist": "uniform", "low": 1, "high": 3500},
                                   {"dist": "lognormal", "mean": 600, "sigma": 1.0, "max": 4000}]),
              "output_len": d.pick([d.int(1, 300), {"dist": "uniform", "low": 1, "high": 400}])}
        if heavy:
            wl["input_len"] = {"dist": "uniform", "low": 1500, "high": 3500}
            wl["output_len"] = {"dist": "uniform", "low": 200, "high": 600}
    elif kind == "shared_prefix":
        wl = {"type": "shared_prefix", "stages": [{"rate": rate, "duration_s": n / rate}],
              "num_system_prompts": d.int(1, 4), "users_per_system_prompt": d.int(1, 5),
              "system_prompt_len": d.pick([0, 17, 100, 1500]),
              "question_len": d.int(1500, 2500) if heavy else d.int(1, 1000),
              "output_len": d.int(400, 600) if heavy else d.int(1, 300)}
    else:
        with_prefix = d.flip()
        gaps = (0.0,) if heavy else d.pick([(0.0,), (0.0, 0.001, 0.05), (0.05, 0.3)])
        max_in = 3500 if heavy else d.pick([8, 600, 3500])
        empty = d.pick([0.0, 0.1])             # rows with no prompt or no output: dropped before the run
        t, rows = 0.0, []
        for _ in range(n):
            t += d.pick(gaps)
            inp = d.int(1500, 3500) if heavy else d.int(1, max_in)
            out = d.int(200, 600) if heavy else d.int(1, 300)
            if empty and d.flip(empty):
                inp, out = d.pick([(0, out), (inp, 0)])
            rows.append((round(t, 6), inp, out, d.int(0, 2), min(inp, d.pick([16, 64, 500]))))
        wl = {"type": "trace", "path": _write_trace(rows, with_prefix)}
    if d.flip():
        wl["classes"] = [{"tenant": "a", "priority": 0, "slo_ttft_s": 0.5, "weight": 1.0},
                         {"tenant": "b", "priority": 1, "slo_ttft_s": 2.0, "weight": 2.0}]
    return wl


def make_config(rnd, heavy: bool | None = None) -> dict:
    d = Draws(rnd)
    # heavy: a scarce KV cache under a burst of long requests, so sequences get preempted
    heavy = d.flip(0.5) if heavy is None else heavy
    # heavy runs use the models whose KV at gpu_memory_utilization 0.3 holds only ~15-60k tokens
    model = d.pick(["llama-2-7b", "llama-3.1-8b"] if heavy else list(MODELS))
    tp = d.pick(MODELS[model])
    scheduler = d.pick(SCHEDULERS)
    cfg: dict = {
        "model": model,
        "hardware": {"gpu": d.pick(GPUS)},
        "seed": d.int(0, 1000),
        "scheduler": scheduler,
        "ordering": d.pick(ORDERINGS),
        "preemption_victim": d.pick(VICTIMS),
        "engine": {
            "max_model_len": 4096 if heavy else d.pick([2048, 4096]),
            "max_num_seqs": d.pick([256, d.int(64, 256)]) if heavy else d.pick([d.int(4, 256), d.int(4, 16)]),
            "max_num_batched_tokens": d.int(256, 8192),
            "enable_chunked_prefill": not d.flip(0.3),
            "enable_prefix_caching": not d.flip(0.3),
            "block_size": d.pick([16, 32]),
            # low values leave a few thousand KV tokens, so sequences get preempted
            "gpu_memory_utilization": d.pick([0.3, 0.33] if heavy and tp == 1 else [d.real(0.3, 0.95), 0.3, 0.33, 0.9]),
            "preemption_mode": d.pick(["recompute", "swap"]),
        },
        "workload": make_workload(d, heavy),
        "sim": {"progress": False, "mode": d.pick(["fast", "iteration"])},
    }
    eng = cfg["engine"]
    if eng["preemption_mode"] == "swap":
        eng["swap_space"] = d.pick([4.0, 0.0, 0.05])
    if scheduler in ("static", "dynamic") and d.flip():
        cfg["scheduler_options"] = {"max_batch_size": d.int(1, 32), "max_wait_s": d.pick([0.0, 0.01, 0.05])}
    if scheduler == "sarathi" and d.flip():
        cfg["scheduler_options"] = {"token_budget": d.pick([256, 512, 2048])}
    if cfg["ordering"] == "sjf" and d.flip():
        cfg["ordering_options"] = {"by": d.pick(["prompt", "output", "total"])}
    if d.flip(0.2):
        cfg["kv_allocation"] = "contiguous"
    if d.flip(0.15):
        cfg["admission"] = d.pick([{"type": "bounded_queue", "max_queue": 3},
                                   {"type": "token_bucket", "rate": 20.0, "burst": 5.0}])

    # MoE models may also run as data-parallel replicas whose experts span all their GPUs (lockstep groups)
    layout = d.pick(["single", "replicas", "pools"] + (["wide_ep"] if model in ("mixtral-8x7b", "qwen3-30b-a3b")
                                                      else []))
    if layout == "wide_ep":
        n = d.pick([2, 4])
        cfg["deployment"] = {"replicas": n, "parallelism": {"tp": tp, "ep": n * tp}}
        cfg["router"] = d.pick(ROUTERS)
    elif layout == "single":
        if tp > 1:
            cfg["parallelism"] = {"tp": tp}
    elif layout == "replicas":
        cfg["deployment"] = {"replicas": d.int(1, 3), "parallelism": {"tp": tp}}
        cfg["router"] = d.pick(ROUTERS)
    else:
        cfg["pools"] = {"prefill": {"replicas": d.int(1, 2), "parallelism": {"tp": tp}},
                        "decode": {"replicas": d.int(1, 2), "parallelism": {"tp": tp}},
                        "kv_transfer": {"layerwise": d.flip()}}
        cfg["router"] = d.pick(ROUTERS)

    if d.flip(0.3):
        cfg["speculative"] = {**d.pick([{"method": "ngram"}, {"method": "mtp"},
                                        {"method": "draft_model", "draft_model": "llama-3.2-1b"}]),
                              "num_draft_tokens": d.int(1, 5), "acceptance_rate": d.pick([0.5, 0.0, 0.9, 1.0])}
    if d.flip(0.25):
        cfg["kv_eviction"] = d.pick([
            {"type": "streaming_llm", "sink_tokens": 4, "window_tokens": d.pick([60, 252, 1020])},
            {"type": "h2o", "retained_fraction": d.pick([0.1, 0.5, 1.0]), "min_tokens": d.pick([16, 64])}])
    elif d.flip(0.3):
        eng["enable_prefix_caching"] = True           # the tiers hold prefix blocks (refused without caching)
        eng["cpu_offload_gb"] = d.pick([0.01, 0.5, 8.0])
        if d.flip():
            eng["nvme_offload_gb"] = d.pick([0.01, 4.0])
    return cfg


configs = st.integers(0, 2**32 - 1).map(lambda seed: make_config(random.Random(seed)))


# ----------------------------------------------------------------------------- the invariants

def _sent(cfg, max_model_len: int) -> tuple[dict[int, tuple[int, int, float]], int, int]:
    """What the workload sends, request id -> (input tokens, output tokens, arrival), how many rows it dropped and
    how many requests it clipped to max_model_len,
    rebuilt with the same seed stream as `experiments.runner.run` (its first spawned child)."""
    rc = cfg if not isinstance(cfg, dict) else load_config(cfg)
    seed = np.random.SeedSequence(rc.seed).spawn(1)[0]
    workload = build_workload(rc.workload, seed, max_model_len=max_model_len)
    specs = list(workload)
    ids = [s.request_id for s in specs]
    assert len(set(ids)) == len(ids), "the workload itself sent duplicate request ids"
    return ({s.request_id: (s.input_tokens, s.output_tokens, s.arrival_s) for s in specs}, workload.dropped,
            workload.clipped)


def check_invariants(cfg: dict, result) -> None:
    s, df = result.summary, result.requests
    req = s["requests"]
    sent, dropped, clipped = _sent(cfg, s["deployment"]["max_model_len"])
    # nothing lost, nothing duplicated
    assert req["total"] == len(sent), (req, len(sent))
    assert req["dropped"] == dropped, (req, dropped)
    assert req["unfinished"] == 0, req
    assert req["completed"] == len(df), (req, len(df))
    assert req["completed"] + req["rejected"] == req["total"], req
    ids = df["request_id"].to_numpy()
    assert len(np.unique(ids)) == len(ids), "a request finished twice"
    assert set(ids.tolist()) <= set(sent), "a request finished that was never sent"
    # tokens conserved
    want_in = np.array([sent[i][0] for i in ids], dtype=np.int64)
    want_out = np.array([sent[i][1] for i in ids], dtype=np.int64)
    want_arrival = np.array([sent[i][2] for i in ids], dtype=float)
    bad = df["output_tokens"].to_numpy() != want_out
    assert not bad.any(), ("output tokens not what was asked", df.loc[bad, ["request_id", "output_tokens"]],
                           want_out[bad])
    assert np.array_equal(df["input_tokens"].to_numpy(), want_in), "prompt lengths changed"
    assert np.allclose(df["arrival_s"].to_numpy(), want_arrival, rtol=0, atol=1e-9), "arrival times changed"
    # timestamps finite and ordered
    if len(df):
        cols = ["arrival_s", "first_scheduled_s", "first_token_s", "finish_s"]
        t = df[cols].to_numpy()
        assert np.isfinite(t).all(), df.loc[~np.isfinite(t).all(axis=1), ["request_id"] + cols]
        eps = 1e-12
        for a, b in zip(cols, cols[1:]):
            bad = df[a].to_numpy() > df[b].to_numpy() + eps
            assert not bad.any(), (f"{a} > {b}", df.loc[bad, ["request_id"] + cols])
        assert (df["ttft_s"] >= 0).all() and (df["e2e_s"] >= 0).all()
        assert np.isfinite(df["ttft_s"]).all() and np.isfinite(df["e2e_s"]).all()
    for key in ("ttft_s", "tpot_s", "itl_s", "e2e_s"):
        for v in s[key].values():
            assert v is None or (math.isfinite(v) and v >= 0), (key, s[key])
    assert req["clipped"] == clipped, (req, clipped)
    # every preemption the replicas counted belongs to a request, and only completed requests were served
    assert int(df["preemptions"].sum()) == s["preemptions"], (int(df["preemptions"].sum()), s["preemptions"])
    assert (df["recomputed_tokens"] >= 0).all() and (df["cached_tokens"] >= 0).all()
    assert (df["cached_tokens"] <= df["input_tokens"]).all()
    # KV usage
    assert 0.0 <= s["kv"]["peak_usage"] <= 1.0 + 1e-12, s["kv"]
    for row in s.get("replicas", []):
        assert 0.0 <= row["peak_kv_usage"] <= 1.0 + 1e-12, row


class RunTimeout(AssertionError):
    """A run took far longer than a few dozen requests should: a livelock (a step that makes no progress)."""


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise `RunTimeout` in the main thread after `seconds` of wall time (the simulator is pure Python, so
    SIGALRM interrupts it); a no-op where SIGALRM is missing."""
    if not hasattr(signal, "setitimer"):
        yield
        return

    def expire(_sig, _frame):
        raise RunTimeout(f"the run did not finish within {seconds} s of wall time (livelock?)")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def run_limited(cfg, seconds: float = RUN_LIMIT_S):
    with time_limit(seconds):
        return run(cfg)


def compare_modes(fast, slow) -> None:
    a = fast.requests.sort_values("request_id").reset_index(drop=True)
    b = slow.requests.sort_values("request_id").reset_index(drop=True)
    assert len(a) == len(b)
    for col in ("request_id", "first_scheduled_s", "first_token_s", "finish_s", "output_tokens", "preemptions",
                "replica"):
        assert np.array_equal(a[col].to_numpy(), b[col].to_numpy()), col


def _with_mode(cfg: dict, mode: str) -> dict:
    out = copy.deepcopy(cfg)
    out["sim"] = {"progress": False, "mode": mode}
    return out


def run_or_refuse(cfg: dict, stats: Counter):
    """The run's result, or None when the project refuses the config with one of its own errors."""
    try:
        rc = load_config(cfg)
    except ServesimError as exc:
        stats["refused"] += 1
        event(f"refused at validation: {str(exc)[:60]}")
        return None
    try:
        result = run_limited(rc)
    except ServesimError as exc:
        # a refusal comes while the run is built, never from inside the event loop
        assert not any(Path(f.filename).parts[-2:] == ("simpy", "core.py")
                       for f in traceback.extract_tb(exc.__traceback__)), f"raised mid-simulation: {exc!r}"
        stats["refused"] += 1
        event(f"refused at build: {str(exc)[:60]}")
        return None
    stats["accepted"] += 1
    return result


# ----------------------------------------------------------------------------- the fuzz

STATS: Counter = Counter()


@settings(max_examples=120, deadline=None, derandomize=True, database=None, print_blob=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(cfg=configs, compare=st.booleans())
def _fuzz(cfg, compare):
    note(json.dumps(cfg))
    STATS["examples"] += 1
    result = run_or_refuse(cfg, STATS)
    if result is None:
        return
    if result.summary["preemptions"]:
        STATS["with_preemptions"] += 1
        event("preemptions happened")
    check_invariants(cfg, result)
    if compare:                            # about half the accepted configs: the other mode must agree exactly
        other = "iteration" if cfg["sim"]["mode"] == "fast" else "fast"
        result2 = run_limited(_with_mode(cfg, other))
        check_invariants(_with_mode(cfg, other), result2)
        STATS["mode_compared"] += 1
        compare_modes(result, result2)


def test_feature_fuzz():
    STATS.clear()
    _fuzz()
    print(f"\nfuzz: {dict(STATS)}")
    assert STATS["examples"] >= 50
    # the strategy must not degenerate into configs the project refuses
    assert STATS["accepted"] >= STATS["examples"] // 2, dict(STATS)
    assert STATS["mode_compared"] >= 5, dict(STATS)
    assert STATS["with_preemptions"] >= 3, dict(STATS)      # the scarce-KV paths ran


# ----------------------------------------------------------------------------- bugs the fuzz found (minimal cases)
# Each failed before its fix (a hang, 10 of 16 requests lost, fast != iteration); the fuzz covers the combinations.

def test_request_level_batching_on_decode_pool():
    """static/dynamic batching on a decode pool: the batch's first step counted the whole prompt on top of the KV
    the prefill instance sent (num_computed = prompt - 1), so no token was ever sampled and the run never ended
    (policies/request_batching.py, `_RequestLevel._form`)."""
    cfg = {"model": "llama-3.1-8b", "scheduler": "static", "sim": {"progress": False},
           "workload": {"type": "poisson", "stages": [{"rate": 10, "duration_s": 0.5}], "input_len": 100,
                        "output_len": 10},
           "pools": {"prefill": {"replicas": 1}, "decode": {"replicas": 1}}}
    result = run_limited(cfg, 4)          # 0.1 s when right
    check_invariants(cfg, result)


def test_victim_other_than_newest_strands_running_requests():
    """vllm scheduler, victim largest_kv: when the victim was the request being scheduled, the running loop
    stopped, leaving the running requests after it unscheduled; an empty step then idled waiting for an arrival
    that never came (policies/batching.py, `VLLMScheduler._schedule_running`)."""
    cfg = {"model": "llama-2-7b", "preemption_victim": "largest_kv", "sim": {"progress": False},
           "engine": {"gpu_memory_utilization": 0.33, "max_model_len": 4096},
           "workload": {"type": "poisson", "stages": [{"rate": 1000.0, "duration_s": 0.016}], "input_len": 3353,
                        "output_len": 557}}
    result = run_limited(cfg, 10)
    assert result.summary["preemptions"] >= 1
    check_invariants(cfg, result)         # 10 of the 16 requests never finished


def test_swap_with_prefix_caching_fast_equals_iteration():
    """swap preemption with prefix caching: swap-in allocated without the prompt's hashes; the per-iteration loop
    registered them at the request's next block boundary (`grow_kv`), fast-forward (`append_blocks`) never did, so
    later prompts hit different cached blocks (sim/engine.py, `Replica.swap_in`)."""
    cfg = {"model": "llama-2-7b", "engine": {"gpu_memory_utilization": 0.3, "preemption_mode": "swap"},
           "workload": {"type": "shared_prefix", "stages": [{"rate": 1000.0, "duration_s": 0.018}],
                        "num_system_prompts": 3, "users_per_system_prompt": 5, "system_prompt_len": 1500,
                        "question_len": 2450, "output_len": 503}}
    fast = run_limited(_with_mode(cfg, "fast"))
    slow = run_limited(_with_mode(cfg, "iteration"))
    assert fast.summary["swap"]["swap_outs"] >= 1
    check_invariants(cfg, fast)
    compare_modes(fast, slow)       # requests 11-17 finished 36 ms later in fast mode: 17 missed 85 cached blocks
