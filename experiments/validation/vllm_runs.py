"""Replay the real vLLM serving runs (H100, vLLM v0.15.1) and compare with what they measured.

    python -m experiments.validation.vllm_runs              # full replay of every run, rewrites docs/VALIDATION.md's section
    python -m experiments.validation.vllm_runs --no-doc -j 2

Each run of `data/vllm_runs/experiments.csv` is simulated the way ../shared/tools/check_calibration.py
does it: the per-request trace when the run has one, otherwise the shared_prefix generator with the
run's parameters and question_len + 30 chat-template tokens; vLLM V1 engine settings (max_num_seqs 128,
block 16, chunked prefill and prefix caching on, max_model_len 4096). A run with data parallelism
(dp > 1) replays as `dp` replicas of TP `tp` behind the `least_outstanding_requests` router
(`DP_ROUTER`); check_calibration.py itself skips such runs. The error table compares mean / p90 / p99
of TTFT and E2E and the mean ITL (defined as (E2E - TTFT) / (output tokens - 1), as measured), and
gives mean absolute percentage errors over normal-load and overloaded runs.

The traces of the Llama-2 base-model runs undercount output tokens (see `output_miscount`): their
requests all generated the full length, so a second table replays those runs with the corrected
lengths (`workload(..., corrected=True)`), which is also what fit_vllm.py fits the vllm profile on.
The KV-capacity table (`kv_block_points`) compares `sim.memory.plan_memory` with vLLM's logged blocks.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

DATA = Path(__file__).resolve().parent / "data" / "vllm_runs"
GPU = {"H100": "h100-sxm-80gb", "A100-80GB": "a100-sxm-80gb", "L40S": "l40s"}
TEMPLATE_TOKENS = 30          # chat-template tokens check_calibration adds to generator prompts
# vLLM's internal DP load balancer (v1 engine core client, DPLBAsyncMPClient.get_core_engine_for_request) sends
# each request to the engine with the lowest `4 x waiting + running`, from counts the DP coordinator publishes
# about every 100 ms plus the client's own count of what it dispatched since. Joining the shortest queue of
# waiting + running is the closest router servesim has; at normal load nothing waits, so the two agree.
DP_ROUTER = "least_outstanding_requests"


@lru_cache(maxsize=1)
def runs() -> pd.DataFrame:
    return pd.read_csv(DATA / "experiments.csv")


@lru_cache(maxsize=1)
def stage_metrics() -> pd.DataFrame:
    return pd.read_csv(DATA / "stage_metrics.csv")


def run_row(key: str):
    d = runs()
    return next(r for r in d.itertuples() if r.exp_key == key)


def request_trace(r) -> pd.DataFrame | None:
    if not isinstance(r.requests_csv, str):
        return None
    return pd.read_csv(DATA / r.requests_csv)


# ----------------------------------------------------------------------------- the output-count artefact

def output_miscount(r) -> dict | None:
    """How far a trace's output_tokens column undercounts what was generated.

    With ignore_eos every request generates its full length, and E2E does not depend on the counted
    output (e.g. Llama-2-7B codegen: requests counted at 0-50 tokens took as long as those at 248). The
    full length is the most common count (the mode); `share_short` is the fraction counted below it.
    """
    d = request_trace(r)
    if d is None:
        return None
    d = d[d.has_error == 0]
    full = int(d.output_tokens.mode().iloc[0])
    short = d.output_tokens < full - 2
    return {"full": full, "share_short": float(short.mean()),
            "e2e_short_s": float(d.e2e_s[short].mean()) if short.any() else math.nan,
            "e2e_full_s": float(d.e2e_s[~short].mean()),
            "counted_mean": float(d.output_tokens.mean())}


# ----------------------------------------------------------------------------- KV capacity

# Multimodal checkpoints: vLLM also loads the vision tower, profiles the image encoder and builds a rope
# cache for the 10M-token max_position_embeddings; servesim models the text model only.
KV_EXCEPTIONS = {"RedHatAI/Llama-4-Scout-17B-16E-Instruct-FP8-dynamic":
                 "multimodal checkpoint (vision tower, encoder profiling, 10M-position rope cache not modelled)"}


def kv_block_points(**plan_kw) -> pd.DataFrame:
    """vLLM's logged KV blocks per GPU against `sim.memory.plan_memory`, one row per distinct deployment."""
    from sim.cost import CostModel
    from sim.hardware import get_gpu
    from sim.memory import plan_memory
    from sim.models import get_model

    d = runs()
    d = d[d.kv_blocks_gpu.notna()].drop_duplicates(["model_hf", "tp", "max_num_batched_tokens", "gpu_mem_util"])
    rows = []
    for r in d.itertuples():
        cost = CostModel(get_model(r.model_hf), get_gpu(GPU[r.hardware]), tp=int(r.tp))
        plan = plan_memory(cost, float(r.gpu_mem_util), int(r.max_num_batched_tokens), 128, 16, **plan_kw)
        rows.append({"model": r.model_hf, "tp": int(r.tp), "max_num_batched_tokens": int(r.max_num_batched_tokens),
                     "gpu_mem_util": float(r.gpu_mem_util), "measured": int(r.kv_blocks_gpu),
                     "simulated": plan.num_blocks, "error": plan.num_blocks / r.kv_blocks_gpu - 1,
                     "exception": KV_EXCEPTIONS.get(r.model_hf, "")})
    return pd.DataFrame(rows)


def kv_markdown(t: pd.DataFrame) -> str:
    from sim import memory

    ok = t[t.exception == ""]
    lines = ["## KV-cache capacity (vLLM's logged KV blocks)", "",
             "Generated by `python -m experiments.validation.vllm_runs`. `sim.memory.plan_memory` against the "
             "`kv_blocks_gpu` vLLM v0.15.1 logged (per GPU, block 16, max_num_seqs 128). Constants (fitted by "
             "`python -m experiments.validation.fit_vllm --memory`): non-torch overhead "
             f"{memory.NON_TORCH_OVERHEAD_BYTES / 2**30:.3f} GiB, activation factor {memory.ACTIVATION_FACTOR:.3g}, "
             f"sampler vocab copies {memory.SAMPLER_VOCAB_COPIES:.3g}. Text models: max |error| "
             f"{ok.error.abs().max():.1%}, mean {ok.error.abs().mean():.1%}.", "",
             "| model | TP | max_num_batched_tokens | gpu_mem_util | vLLM blocks | servesim blocks | error | note |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in t.itertuples():
        lines.append(f"| {r.model} | {r.tp} | {r.max_num_batched_tokens} | {r.gpu_mem_util} | {r.measured:,} | "
                     f"{r.simulated:,} | {100 * r.error:+.1f}% | {r.exception} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- configs

def engine_section(r, profile: str = "vllm", async_scheduling: bool | None = None) -> dict:
    e = {"profile": profile, "max_num_seqs": 128, "max_num_batched_tokens": int(r.max_num_batched_tokens),
         "block_size": 16, "gpu_memory_utilization": float(r.gpu_mem_util), "enable_chunked_prefill": True,
         "enable_prefix_caching": True, "max_model_len": 4096}
    if async_scheduling is not None:          # default: the engine profile's (vllm: on)
        e["async_scheduling"] = async_scheduling
    return e


def workload(r, tmp: str, *, corrected: bool = False, max_time: float | None = None,
             cache: str = "spec") -> dict:
    """The run's workload config. `corrected`: trace outputs set to the full length (see output_miscount);
    `max_time`: keep only the first `max_time` seconds of every stage; `cache`: "spec" (whole prompts
    recur, the workload's semantics) or "system" (an analysis variant: only the system prompt is shared)."""
    d = request_trace(r)
    if d is not None:
        if corrected:
            full = output_miscount(r)["full"]
            d = d.assign(output_tokens=np.where(d.has_error == 0, np.maximum(d.output_tokens, full), d.output_tokens))
        if max_time is not None:
            start = d.groupby("stage_index").arrival_time_s.transform("min")
            d = d[d.arrival_time_s - start < max_time]
        if cache == "system":
            d = d.drop(columns=["prompt_id"])
        if not corrected and max_time is None and cache == "spec":
            return {"type": "trace", "path": str((DATA / r.requests_csv).resolve())}
        path = os.path.join(tmp, f"{r.exp_key}.csv")
        d.to_csv(path, index=False)
        return {"type": "trace", "path": path}
    stages = [(r.stage0_rate_rps, r.stage0_duration_s)]
    if not math.isnan(r.stage1_rate_rps):
        stages.append((r.stage1_rate_rps, r.stage1_duration_s))
    if max_time is not None:
        stages = [(a, min(dur, max_time)) for a, dur in stages]
    users = int(r.sp_users_per_prompt) if cache == "spec" else 10**7
    return {"type": "shared_prefix",
            "stages": [{"rate": float(a), "duration_s": float(dur)} for a, dur in stages],
            "num_system_prompts": int(r.sp_num_system_prompts), "users_per_system_prompt": users,
            "system_prompt_len": int(r.system_prompt_len), "question_len": int(r.question_len) + TEMPLATE_TOKENS,
            "output_len": int(r.output_len_target)}


def dp(r) -> int:
    """The run's data-parallel degree (vLLM --data-parallel-size; blank in the CSV means 1)."""
    return 1 if math.isnan(r.dp) else int(r.dp)


def deployment_section(r, wide_ep: bool = True) -> dict:
    """`parallelism` for one engine; `deployment` + `router` for dp engines (see DP_ROUTER). A dp run with
    expert parallelism shards vLLM's experts over all dp x tp GPUs: `ep = dp x tp`, replicas in lockstep
    (`sim.lockstep`); `wide_ep=False` replays it as independent TP groups instead (each holding 1/tp of every
    expert), the comparison docs/VALIDATION.md gives."""
    if dp(r) <= 1:
        return {"parallelism": {"tp": int(r.tp)}}
    par = {"tp": int(r.tp)}
    if wide_ep and bool(r.expert_parallel):
        par["ep"] = dp(r) * int(r.tp)
    return {"deployment": {"replicas": dp(r), "parallelism": par}, "router": DP_ROUTER}


def config(r, tmp: str, async_scheduling: bool | None = None, seed: int = 0, wide_ep: bool = True, **kw) -> dict:
    return {"model": r.model_hf, "hardware": {"gpu": GPU[r.hardware]}, **deployment_section(r, wide_ep),
            "engine": engine_section(r, async_scheduling=async_scheduling), "scheduler": "vllm", "seed": seed,
            "sim": {"progress": False}, "workload": workload(r, tmp, **kw)}


@contextlib.contextmanager
def patched_cost(profile=None, constants=None):
    """Run the simulator with a modified vllm EngineProfile and/or KernelConstants (fitting only)."""
    if profile is None and constants is None:
        yield
        return
    from experiments import deployment
    from sim.cost import CostModel

    original = deployment.build_cost_model

    def build(cfg, *args, **kwargs):
        cost = original(cfg, *args, **kwargs)
        return CostModel(cost.model, cost.gpu, tp=cost.tp, weight_dtype=cost.weight_dtype, kv_dtype=cost.kv_dtype,
                         engine=profile or cost.engine, constants=constants, allreduce=cost.allreduce)

    deployment.build_cost_model = build
    try:
        yield
    finally:
        deployment.build_cost_model = original


# ----------------------------------------------------------------------------- one replay

def _stats(df: pd.DataFrame) -> dict:
    ttft, e2e = df.ttft_s.to_numpy() * 1e3, df.e2e_s.to_numpy() * 1e3
    out = df.output_tokens.to_numpy()
    return {"n": len(df), "ttft_mean": float(ttft.mean()), "ttft_p90": float(np.percentile(ttft, 90)),
            "ttft_p99": float(np.percentile(ttft, 99)), "e2e_mean": float(e2e.mean()),
            "e2e_p90": float(np.percentile(e2e, 90)), "e2e_p99": float(np.percentile(e2e, 99)),
            "itl_mean": float((e2e.mean() - ttft.mean()) / (out.mean() - 1)),
            "ttft_p10": float(np.percentile(ttft, 10)), "ttft_min": float(ttft.min())}


def replay(key: str, *, profile=None, constants=None, **kw) -> dict:
    """Simulate one run; metrics overall ("all") and per stage (0, 1) in ms, wall time, requests per replica."""
    from experiments.runner import run

    r = run_row(key)
    with tempfile.TemporaryDirectory(prefix="servesim-vllm-") as tmp, patched_cost(profile, constants):
        t0 = time.perf_counter()
        res = run(config(r, tmp, **kw))
        wall = time.perf_counter() - t0
    req = res.requests
    out = {"all": _stats(req), "wall_s": wall, "kv_blocks": res.memory.num_blocks,
           "replica_requests": req.replica.value_counts().sort_index().tolist(),
           "hit_rate": res.summary["kv"].get("hit_rate") if isinstance(res.summary.get("kv"), dict) else None}
    for s, g in req.groupby("stage"):
        out[int(s)] = _stats(g)
    return out


def measured(key: str) -> dict:
    """Measured metrics overall ("all") and per stage, in ms (ITL as the run defines it)."""
    r = run_row(key)
    sm = stage_metrics()
    sm = sm[sm.exp_key == key]
    res = {"all": {"e2e_mean": r.meas_e2e_mean_ms, "e2e_p90": r.meas_e2e_p90_ms, "e2e_p99": r.meas_e2e_p99_ms,
                   "ttft_mean": r.meas_ttft_mean_ms, "ttft_p90": r.meas_ttft_p90_ms, "ttft_p99": r.meas_ttft_p99_ms,
                   "itl_mean": r.meas_itl_mean_ms}}
    for s in sm.itertuples():
        if s.stage_index >= 0:
            res[int(s.stage_index)] = {"e2e_mean": s.e2e_mean_ms, "e2e_p90": s.e2e_p90_ms, "e2e_p99": s.e2e_p99_ms,
                                       "ttft_mean": s.ttft_mean_ms, "ttft_p90": s.ttft_p90_ms,
                                       "ttft_p99": s.ttft_p99_ms, "itl_mean": s.itl_mean_ms}
    return res


def corrected_itl(key: str, stage="all") -> float:
    """Measured mean ITL recomputed with the full output length (runs with a trace), else as measured."""
    r = run_row(key)
    m = measured(key)[stage]
    mc = output_miscount(r)
    if mc is None:
        return m["itl_mean"]
    d = request_trace(r)
    d = d[d.has_error == 0]
    if stage != "all":
        d = d[d.stage_index == stage]
    out = np.maximum(d.output_tokens, mc["full"]).mean()
    return float((d.e2e_s.mean() - d.ttft_s.mean()) * 1e3 / (out - 1))


def selected_runs(include_dp: bool = False) -> pd.DataFrame:
    """The runs to replay; without `include_dp` only single-engine runs (the set fit_vllm.py fits on: the dp
    run also used expert parallelism, which the replay does not model)."""
    d = runs()
    return d if include_dp else d[d.dp.fillna(1) <= 1]


def dp_runs() -> list[str]:
    return [k for k in runs().exp_key if dp(run_row(k)) > 1]


def replay_keys() -> list[str]:
    """Every run the report replays: all of experiments.csv, data-parallel runs included."""
    return list(selected_runs(include_dp=True).exp_key)


# ----------------------------------------------------------------------------- the full report

METRICS = ("ttft_mean", "ttft_p90", "ttft_p99", "e2e_mean", "e2e_p90", "e2e_p99", "itl_mean")


def _job(args):
    key, kw = args
    try:
        return key, replay(key, **kw), None
    except Exception as exc:  # a failed replay is reported, not fatal
        return key, None, f"{type(exc).__name__}: {exc}"


def error_table(results: dict, corrected_itl_ref: bool = False) -> pd.DataFrame:
    rows = []
    for key, (sim, err) in results.items():
        r = run_row(key)
        meas = measured(key)["all"]
        row = {"run": key, "overloaded": bool(r.overloaded), "error": err}
        for m in METRICS:
            ref = corrected_itl(key) if (m == "itl_mean" and corrected_itl_ref) else meas[m]
            row[f"meas_{m}"] = ref
            row[f"sim_{m}"] = sim["all"][m] if sim else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def mape(table: pd.DataFrame, overloaded: bool, metric: str) -> float:
    t = table[(table.overloaded == overloaded) & table.error.isna()]
    return float(np.mean(np.abs(t[f"sim_{metric}"] / t[f"meas_{metric}"] - 1))) if len(t) else math.nan


def _fmt(v: float) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else (f"{v:,.0f}" if abs(v) >= 100 else f"{v:.1f}")


def knee_runs() -> list[str]:
    """Normal-load runs at the capacity knee: queueing already in the measurement (TTFT p99 > 5x its mean),
    so their mean TTFT moves by multiples for a few percent of step time."""
    from experiments.replications import KNEE_TTFT_P99_OVER_MEAN

    d = selected_runs()
    return list(d[~d.overloaded & (d.meas_ttft_p99_ms > KNEE_TTFT_P99_OVER_MEAN * d.meas_ttft_mean_ms)].exp_key)


def _mape_line(label: str, table: pd.DataFrame, over: bool) -> str:
    t = table[table.overloaded == over]
    line = (f"- **{label}** ({len(t)} runs): MAPE of mean E2E {mape(table, over, 'e2e_mean'):.1%}, mean TTFT "
            f"{mape(table, over, 'ttft_mean'):.1%}, mean ITL {mape(table, over, 'itl_mean'):.1%}; p90 E2E "
            f"{mape(table, over, 'e2e_p90'):.1%}, p90 TTFT {mape(table, over, 'ttft_p90'):.1%}")
    knees = [k for k in knee_runs() if k in set(t.run)]
    if not over and knees:
        rest = table[~table.run.isin(knees)]
        line += (f"; without the {len(knees)} runs at the capacity knee: E2E {mape(rest, over, 'e2e_mean'):.1%}, "
                 f"TTFT {mape(rest, over, 'ttft_mean'):.1%}, ITL {mape(rest, over, 'itl_mean'):.1%}")
    return line


def _rows(table: pd.DataFrame, metrics=METRICS) -> list[str]:
    lines = []
    for r in table.itertuples():
        cells = []
        for m in metrics:
            meas, sim = getattr(r, f"meas_{m}"), getattr(r, f"sim_{m}")
            err = f" ({100 * (sim / meas - 1):+.0f}%)" if not math.isnan(sim) else ""
            cells.append(f"{_fmt(meas)} / {_fmt(sim)}{err}")
        load = "overloaded" if r.overloaded else "normal"
        if dp(run_row(r.run)) > 1:
            load += f", dp {dp(run_row(r.run))}"
        lines.append(f"| {r.run} | {load} | " + " | ".join(cells) + " |")
    return lines


def markdown(tables: dict[str, pd.DataFrame], dp_keys: list[str], wall: float) -> str:
    plain, corr = tables["plain"], tables.get("corrected")
    lines = ["## vLLM serving runs (H100, vLLM v0.15.1)", "",
             "Generated by `python -m experiments.validation.vllm_runs` (do not edit by hand): every run of "
             "`experiments/validation/data/vllm_runs/experiments.csv` replayed as "
             "../shared/tools/check_calibration.py replays it (trace when the run has one, else the shared_prefix "
             f"generator with question_len + {TEMPLATE_TOKENS}; engine profile `vllm`, async scheduling on). "
             "Times in ms, measured / simulated; ITL = (E2E - TTFT) / (output tokens - 1), as measured. Wall "
             f"time of all replays: {wall:.0f} s.", "",
             _mape_line("normal load", plain, False), _mape_line("overloaded", plain, True)]
    if corr is not None:
        lines += ["", "The Llama-2 base-model traces replayed with their full output length (see 'Output-count "
                  "artefact'), their measured ITL recomputed with it; these rows replace the trace runs' rows:", ""]
        merged = pd.concat([plain[~plain.run.isin(corr.run)], corr])
        lines.append(_mape_line("normal load, corrected traces", merged, False))
    lines += ["", f"Runs at the capacity knee (measured TTFT p99 > 5 x mean: queueing in the measurement itself): "
              f"{', '.join(knee_runs())}."]
    if dp_keys:
        lines += ["", f"Data-parallel runs ({', '.join(dp_keys)}): vLLM `--data-parallel-size` engines behind its "
                  "internal load balancer, replayed as that many replicas behind the `least_outstanding_requests` "
                  "router (vLLM sends a request to the engine with the lowest 4 x waiting + running; at normal load "
                  "nothing waits, and round_robin, power_of_two or random move the replay's means by under 1%). "
                  "check_calibration.py skips these runs, so its MAPE lines have one normal-load run fewer. "
                  "Its expert parallelism over all dp x tp GPUs is replayed as such (`ep = dp x tp`: each GPU "
                  "holds a quarter of the experts, the engines step in lockstep and the expert layers see both "
                  "engines' tokens; docs/concepts/cluster.md). Not modelled: the engines' per-step coordination "
                  "(they agree on a padded token count every step) and vLLM's default dispatch (all-gather / "
                  "reduce-scatter of every token's hidden state); the steps come out short."]
        sliced = tables.get("dp_sliced")
        if sliced is not None and len(sliced):
            lines += ["", "The same runs replayed as independent TP groups (`ep: tp`, each GPU holding half of "
                      "every expert, no lockstep), for comparison:", "",
                      "| run | load | TTFT mean | TTFT p90 | TTFT p99 | E2E mean | E2E p90 | E2E p99 | ITL mean |",
                      "|---|---|---:|---:|---:|---:|---:|---:|---:|"] + _rows(sliced)
    header = ["| run | load | TTFT mean | TTFT p90 | TTFT p99 | E2E mean | E2E p90 | E2E p99 | ITL mean |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    lines += ["", "### Per run, as check_calibration.py replays them", ""] + header + _rows(plain)
    if corr is not None:
        lines += ["", "### Llama-2 base-model traces with their full output length", ""] + header
        lines += _rows(corr)
    return "\n".join(lines) + "\n"


SPREAD_SEEDS = 8


def spread_keys() -> list[str]:
    """Normal-load runs replayed from the shared_prefix generator (a trace fixes its arrivals; no seed moves them)."""
    d = selected_runs(include_dp=True)
    return [k for k in d[~d.overloaded].exp_key if not isinstance(run_row(k).requests_csv, str)]


def _seed_job(args: tuple[str, int, dict]) -> tuple[str, int, dict]:
    """One replay under one arrival seed (a process-pool job): the run's overall metrics."""
    key, seed, kw = args
    return key, seed, replay(key, seed=seed, **kw)["all"]


def seed_spread(keys: list[str], jobs: int = 2, seeds: int = SPREAD_SEEDS, **kw) -> pd.DataFrame:
    """Each run's simulated mean TTFT and E2E under arrival seeds 0..seeds-1, against the measured means
    (`kw`: replay options, e.g. max_time for a quick look)."""
    with ProcessPoolExecutor(jobs) as ex:
        got = list(ex.map(_seed_job, [(k, s, kw) for k in keys for s in range(seeds)]))
    rows = []
    knees = set(knee_runs())
    for k in keys:
        sims = [v for kk, _, v in got if kk == k]
        r = run_row(k)
        row = {"run": k, "knee": k in knees}
        for m, meas in (("ttft_mean", r.meas_ttft_mean_ms), ("e2e_mean", r.meas_e2e_mean_ms)):
            v = np.array([x[m] for x in sims])
            row |= {f"meas_{m}": float(meas), f"min_{m}": float(v.min()), f"p50_{m}": float(np.median(v)),
                    f"max_{m}": float(v.max())}
        row["itl_error"] = float(np.median([x["itl_mean"] for x in sims]) / r.meas_itl_mean_ms - 1)
        rows.append(row)
    return pd.DataFrame(rows)


def spread_markdown(t: pd.DataFrame, seeds: int = SPREAD_SEEDS) -> str:
    """The seed-spread table of `seed_spread` for docs/VALIDATION.md, with what it says about the knee."""
    lines = ["### Arrival-seed spread of the generator replays", "",
             f"The runs replayed from the shared_prefix generator, under arrival seeds 0-{seeds - 1} (the table above "
             "uses seed 0; `servesim run --seeds N` gives the same spread for any config). Times in ms: measured, "
             "then simulated min / median / max over the seeds; spread = max / min - 1; error of the median.", "",
             "| run | TTFT mean measured | simulated min / median / max | spread | error | E2E mean measured | "
             "simulated min / median / max | spread | error |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in t.itertuples():
        cells = []
        for m in ("ttft_mean", "e2e_mean"):
            lo, mid, hi, meas = (getattr(r, f"{q}_{m}") for q in ("min", "p50", "max", "meas"))
            cells += [_fmt(meas), " / ".join(_fmt(v) for v in (lo, mid, hi)), f"{hi / lo - 1:.1%}",
                      f"{mid / meas - 1:+.0%}"]
        lines.append(f"| {r.run}{' (knee)' if r.knee else ''} | " + " | ".join(cells) + " |")
    calm = t[~t.knee]
    spread = lambda d, m: d[f"max_{m}"] / d[f"min_{m}"] - 1   # noqa: E731
    lines += ["", f"Away from the knee the seed moves mean TTFT by at most {spread(calm, 'ttft_mean').max():.1%} and mean "
              f"E2E by at most {spread(calm, 'e2e_mean').max():.1%}: there a run's error is the model's, not the draw's."]
    for r in t[t.knee].itertuples():
        lines.append(f"At the knee ({r.run}) the simulated mean TTFT spans {_fmt(r.min_ttft_mean)} to "
                     f"{_fmt(r.max_ttft_mean)} ms over the seeds ({r.max_ttft_mean / r.min_ttft_mean:.1f}x) against "
                     f"{_fmt(r.meas_ttft_mean)} measured: the measurement is one draw from a distribution this wide (the "
                     f"median over the seeds is {r.p50_ttft_mean / r.meas_ttft_mean - 1:+.0%} off; seed 0, in the table "
                     f"above, is one of the draws). Its simulated ITL is {r.itl_error:+.0%} off, which shifts the whole "
                     "distribution.")
    return "\n".join(lines) + "\n"


def _replay_set(keys, jobs, **kw) -> dict:
    with ProcessPoolExecutor(jobs) as ex:
        return {k: (v, err) for k, v, err in ex.map(_job, [(k, kw) for k in keys])}


def main(argv: list[str] | None = None) -> int:
    import argparse

    from .kernels import DOC, write_section

    ap = argparse.ArgumentParser(description="Replay the reference vLLM runs and compare.")
    ap.add_argument("-j", "--jobs", type=int, default=2, help="replays in parallel")
    ap.add_argument("--no-doc", action="store_true", help="print only; do not rewrite docs/VALIDATION.md")
    ap.add_argument("--plain-only", action="store_true", help="only the check_calibration-style replay")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    keys = replay_keys()
    tables = {"plain": error_table(_replay_set(keys, a.jobs))}
    if not a.plain_only:
        trace_keys = [k for k in keys if isinstance(run_row(k).requests_csv, str) and
                      output_miscount(run_row(k))["share_short"] > 0.05 and not run_row(k).overloaded]
        tables["corrected"] = error_table(_replay_set(trace_keys, a.jobs, corrected=True), corrected_itl_ref=True)
        tables["dp_sliced"] = error_table(_replay_set(dp_runs(), a.jobs, wide_ep=False))
    wall = time.perf_counter() - t0
    for name, table in tables.items():
        print(f"--- {name}")
        for r in table.itertuples():
            tag = " (overloaded)" if r.overloaded else ""
            print(f"{r.run:48s} E2E {r.sim_e2e_mean:9.0f}/{r.meas_e2e_mean:9.0f}  TTFT {r.sim_ttft_mean:9.1f}/"
                  f"{r.meas_ttft_mean:9.1f}  ITL {r.sim_itl_mean:6.2f}/{r.meas_itl_mean:6.2f} ms{tag}"
                  + (f"  FAILED {r.error}" if isinstance(r.error, str) else ""))
        for over, label in ((False, "normal load"), (True, "overloaded")):
            if (table.overloaded == over).any():
                print(f"{label}: MAPE E2E {mape(table, over, 'e2e_mean'):.1%}  TTFT {mape(table, over, 'ttft_mean'):.1%}"
                      f"  ITL {mape(table, over, 'itl_mean'):.1%}")
    kv = kv_block_points()
    print(kv.to_string(index=False))
    spread = None if a.plain_only else seed_spread(spread_keys(), a.jobs)
    if spread is not None:
        print(spread.to_string(index=False))
    if not a.no_doc:
        write_section(DOC, "kv-blocks", kv_markdown(kv))
        write_section(DOC, "vllm-runs", markdown(tables, dp_runs(), wall)
                      + ("\n" + spread_markdown(spread) if spread is not None else ""))
        print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
