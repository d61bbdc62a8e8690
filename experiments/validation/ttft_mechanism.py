"""Why is the measured TTFT about 3 x the mean ITL in the vLLM runs?  Evidence for docs/VALIDATION.md.

    python -m experiments.validation.ttft_mechanism       # prints the evidence, rewrites its docs section

Three candidate mechanisms: (A) a fixed frontend latency on top of a one-step TTFT (whole prompts hit
the prefix cache); (B) one extra engine step before the first token (vLLM V1's async scheduling: a
request arriving while step n runs is first scheduled in step n+2); (C) prompts missing the prefix cache
(only the system prompt shared), so TTFT carries the prompt's prefill compute. Evidence, from the
measurements alone and then from the simulator:

1. TTFT against the step time (the mean ITL, with the full output length for the base-model traces) over
   every normal-load stage of the runs without a CPU KV-offload tier: one line TTFT = a x ITL + F fits
   models from 7B to 70B, dense and FP8 MoE, TP 1-4. (A) predicts a ~ 1.5; (B) a ~ 2.5; (C) a TTFT/ITL
   ratio that grows with the prompt's prefill compute relative to a decode step, which differs 5x between
   Llama-4-Scout FP8 (cheap prefill, expert-streaming decode) and dense 70B TP4.
2. The prefill compute of each run's prompt relative to its step time (the cost model) against the
   measured TTFT/ITL ratio: under (C) they would move together.
3. Simulated TTFT under each mechanism, each with its own best constant frontend latency.
"""
from __future__ import annotations

import dataclasses
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pandas as pd

from sim.cost import BatchShape, CostModel, get_engine_profile
from sim.hardware import get_gpu
from sim.models import get_model

from . import vllm_runs as V

WINDOW_S = 200.0


def stage_table() -> pd.DataFrame:
    rows = []
    for r in V.selected_runs().itertuples():
        if r.overloaded:
            continue
        meas = V.measured(r.exp_key)
        for s in (0, 1):
            if s not in meas:
                continue
            m = meas[s]
            itl = V.corrected_itl(r.exp_key, s)
            batch = (r.stage0_rate_rps if s == 0 else r.stage1_rate_rps) * m["e2e_mean"] / 1e3
            rows.append({"run": r.exp_key, "stage": s, "ttft": m["ttft_mean"], "itl": itl,
                         "ratio": m["ttft_mean"] / itl, "offload": bool(r.cpu_offload), "batch": batch,
                         "prefill_vs_step": _prefill_vs_step(r, batch)})
    return pd.DataFrame(rows)


def _prefill_vs_step(r, batch: float) -> float:
    """Extra time of a step that also prefills the prompt's uncached part (all but the system prompt),
    over a plain decode step of the same batch, in units of that decode step (the cost model, H100)."""
    cost = CostModel(get_model(r.model_hf), get_gpu(V.GPU[r.hardware]), tp=int(r.tp), engine="vllm")
    b = max(int(round(batch)), 1)
    ctx = int(r.system_prompt_len + r.question_len + V.TEMPLATE_TOKENS + r.output_len_target / 2)
    decode = BatchShape.decode(b, ctx)
    mixed = BatchShape.decode(b, ctx)
    q = int(r.question_len + V.TEMPLATE_TOKENS)
    mixed.add_prefill(min(q, int(r.max_num_batched_tokens) - b), int(r.system_prompt_len), True)
    t0 = cost.step_time(decode)
    return (cost.step_time(mixed) - t0) / t0


def per_request(t: pd.DataFrame, intercept_ms: float) -> pd.DataFrame:
    """TTFT p10 and minimum of the per-request traces against what (B) and (C) predict from the measured step
    time: (B) p10 = (0.1 + 2) steps + F, (C) p10 = (0.1 + 1 + prefill share) steps + F, F = the line's intercept."""
    rows = []
    for r in t.itertuples():
        d = V.request_trace(V.run_row(r.run))
        if d is None:
            continue
        d = d[(d.has_error == 0) & (d.stage_index == r.stage)]
        ttft = d.ttft_s.to_numpy() * 1e3
        rows.append({"run": r.run, "stage": r.stage, "itl": r.itl, "p10": float(np.percentile(ttft, 10)),
                     "min": float(ttft.min()), "B": 2.1 * r.itl + intercept_ms,
                     "C": (1.1 + r.prefill_vs_step) * r.itl + intercept_ms})
    return pd.DataFrame(rows)


def regression(t: pd.DataFrame) -> dict:
    out = {}
    for name, sub in (("no offload", t[~t.offload]), ("offload", t[t.offload])):
        # leave out stages in queueing (TTFT p99 of seconds): Llama-2-70B and Llama-2-7B general at 20 req/s
        sub = sub[sub.ratio < 5]
        a, f = np.polyfit(sub.itl, sub.ttft, 1)
        rms = float(np.sqrt(np.mean((a * sub.itl + f - sub.ttft) ** 2)))
        out[name] = {"n": len(sub), "slope": float(a), "intercept_ms": float(f), "rms_ms": rms}
    return out


def _job(args):
    key, async_scheduling, cache, profile = args
    return key, V.replay(key, corrected=True, max_time=WINDOW_S, async_scheduling=async_scheduling, cache=cache,
                         profile=profile)


def simulated(jobs: int = 2) -> pd.DataFrame:
    """Mean TTFT per normal-load stage under the three mechanisms, frontend latency removed (added back
    per mechanism as the constant that minimises its mean absolute percentage error)."""
    knees = set(V.knee_runs())       # queueing in the measurement: mean TTFT is no test of the mechanism
    keys = [k for k in V.selected_runs().exp_key if not V.run_row(k).overloaded and k not in knees]
    prof = dataclasses.replace(get_engine_profile("vllm"), frontend_latency_s=0.0)
    variants = {"A: one step + constant": (False, "spec"), "B: async-scheduling lag": (True, "spec"),
                "C: prompts not cached": (False, "system")}
    rows = []
    with ProcessPoolExecutor(jobs) as ex:
        for name, (lag, cache) in variants.items():
            for key, res in ex.map(_job, [(k, lag, cache, prof) for k in keys]):
                meas = V.measured(key)
                for s in (0, 1):
                    if s in meas and s in res:
                        rows.append({"variant": name, "run": key, "stage": s, "meas": meas[s]["ttft_mean"],
                                     "sim0": res[s]["ttft_mean"], "offload": bool(V.run_row(key).cpu_offload)})
    return pd.DataFrame(rows)


def best_constant(d: pd.DataFrame) -> tuple[float, float]:
    grid = np.linspace(0.0, 40.0, 401)
    err = [np.mean(np.abs((d.sim0 + f) / d.meas - 1)) for f in grid]
    i = int(np.argmin(err))
    return float(grid[i]), float(err[i])


def markdown(t: pd.DataFrame, reg: dict, sim: pd.DataFrame | None) -> str:
    lines = ["## Why TTFT is about 3 x ITL in the vLLM runs", "",
             "Generated by `python -m experiments.validation.ttft_mechanism`. ITL here is the step time: the "
             "mean ITL, recomputed with the full output length for the Llama-2 base-model traces (their output "
             "counts are undercounted; see 'Output-count artefact').", "",
             "**1. TTFT against step time, normal-load stages** (least squares, stages in queueing left out):", ""]
    for name, r in reg.items():
        lines.append(f"- {name}: TTFT = {r['slope']:.2f} x ITL + {r['intercept_ms']:.1f} ms over {r['n']} stages, "
                     f"RMS {r['rms_ms']:.1f} ms")
    lines += ["", "**2. Prefill compute of the uncached prompt part relative to a decode step** (cost model) "
              "against the measured ratio:", "",
              "| run | stage | batch | TTFT ms | ITL ms | TTFT/ITL | prefill extra / step | KV offload |",
              "|---|---:|---:|---:|---:|---:|---:|:---:|"]
    for r in t.itertuples():
        lines.append(f"| {r.run} | {r.stage} | {r.batch:.0f} | {r.ttft:.1f} | {r.itl:.2f} | {r.ratio:.2f} | "
                     f"{r.prefill_vs_step:.2f} | {'yes' if r.offload else ''} |")
    no = t[~t.offload & (t.ratio < 5)]
    corr = float(np.corrcoef(no.prefill_vs_step, no.ratio)[0, 1])
    scout = no[no.run.str.contains("scout")]
    big = no[no.run.str.contains("70b")]
    lines += ["", f"Correlation of TTFT/ITL with the prefill share (no offload): {corr:+.2f}. Llama-4-Scout FP8 "
              f"(prefill share {scout.prefill_vs_step.min():.1f}-{scout.prefill_vs_step.max():.1f} steps) and "
              f"Llama-3.1-70B TP4 ({big.prefill_vs_step.min():.1f}-{big.prefill_vs_step.max():.1f} steps) have the "
              f"same TTFT/ITL ({scout.ratio.min():.2f}-{scout.ratio.max():.2f} and {big.ratio.min():.2f}-"
              f"{big.ratio.max():.2f}).", ""]
    f0 = reg["no offload"]["intercept_ms"]
    pr = per_request(t, f0)
    if len(pr):
        lines += [f"Per-request traces (runs with one, all with KV offload): TTFT p10 against (B) 2.1 steps + "
                  f"{f0:.1f} ms and (C) (1.1 + prefill share) steps + {f0:.1f} ms:", "",
                  "| run | stage | step ms | TTFT min | TTFT p10 | (B) | (C) |", "|---|---:|---:|---:|---:|---:|---:|"]
        for r in pr.itertuples():
            lines.append(f"| {r.run} | {r.stage} | {r.itl:.2f} | {r.min:.1f} | {r.p10:.1f} | {r.B:.1f} | {r.C:.1f} |")
        lines.append("")
    if sim is not None:
        lines += ["**3. Simulated mean TTFT under each mechanism** (normal-load stages of the runs not at the "
                  "capacity knee, first 200 s of each stage, full output lengths; each mechanism with the constant "
                  "frontend latency that minimises its error):", "",
                  "| mechanism | best constant ms | MAPE, all stages | MAPE, runs without KV offload |",
                  "|---|---:|---:|---:|"]
        for name, d in sim.groupby("variant"):
            f, err = best_constant(d)
            d2 = d[~d.offload]
            err2 = float(np.mean(np.abs((d2.sim0 + f) / d2.meas - 1)))
            lines.append(f"| {name} | {f:.1f} | {err:.1%} | {err2:.1%} |")
        lines.append("")
    lines += ["**Conclusion: (B), async scheduling's one-step admission lag, plus a ~6.5 ms API-server latency.** "
              "Whole prompts do hit the prefix cache. The measured line's slope is (B)'s: half a step in flight, the "
              "step already planned when the request arrived, then its own step (a prefill step with a cache hit "
              "is a decode step plus one token), about 2.5 steps; the intercept is a fixed per-request latency "
              "of a few ms. (A) needs a 16 ms constant and still misses; (C) would make the TTFT/ITL ratio follow "
              "the prefill share (it does not: Scout and 70B above), and in simulation it overloads runs that were "
              "not overloaded. The engine implements (B) (`async_scheduling`, on for the vllm profile); "
              "`frontend_latency_s` is fitted with it. The runs with a CPU KV-offload tier show 10-60 ms more "
              "TTFT, the most for the long reasoning prompts: the offload connector's per-request work, not "
              "modelled.", ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    import argparse

    from .kernels import DOC, write_section

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-sim", action="store_true", help="skip the simulations (part 3)")
    ap.add_argument("--no-doc", action="store_true")
    a = ap.parse_args(argv)
    t = stage_table()
    reg = regression(t)
    sim = None if a.no_sim else simulated()
    text = markdown(t, reg, sim)
    print(text)
    if not a.no_doc:
        write_section(DOC, "ttft-mechanism", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
