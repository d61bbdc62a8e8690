"""Summary metrics from per-request records and per-step aggregates.

Definitions follow vLLM's benchmark client: TTFT from arrival to first token; TPOT per request =
(E2E - TTFT) / (output tokens - 1); ITL over every gap between consecutive tokens (each decode step
contributes its duration once per sequence that received a token in it); E2E from arrival to the
last token.

Request classes (`workloads.classes`): when any request carries a tenant or an SLO, the summary gets
a ``classes`` section, one entry per tenant ("default" for untagged requests): TTFT/TPOT
distributions, SLO attainment (the fraction of completed requests within their TTFT target, TPOT
target, and both; a request without a target meets it, and so does the TPOT of a one-token output)
and goodput (completed requests within both targets per second of the run's span).
"""
from __future__ import annotations

import numpy as np

PERCENTILES = (50, 90, 99)


def distribution(values: np.ndarray, weights: np.ndarray | None = None) -> dict:
    """mean, p50, p90, p99 (and max) of `values`, optionally weighted; NaNs when empty."""
    if len(values) == 0:
        return {"mean": None, "p50": None, "p90": None, "p99": None, "max": None}
    if weights is None:
        pct = np.percentile(values, PERCENTILES)
        mean = float(np.mean(values))
    else:
        order = np.argsort(values, kind="stable")
        v, w = values[order], weights[order].astype(np.float64)
        cum = np.cumsum(w)
        total = cum[-1]
        pct = [v[min(int(np.searchsorted(cum, q / 100 * total, side="left")), len(v) - 1)] for q in PERCENTILES]
        mean = float(np.dot(v, w) / total)
    return {"mean": mean, "p50": float(pct[0]), "p90": float(pct[1]), "p99": float(pct[2]),
            "max": float(np.max(values))}


def summarize(records: dict[str, np.ndarray], steps, *, total_requests: int, dropped: int, sim_time: float,
              wall_time: float, kv_stats: dict, kv_capacity_tokens: int) -> dict:
    """The `summary.json` object of a run."""
    arrival = records["arrival_s"]
    first = records["first_token_s"]
    finish = records["finish_s"]
    out = records["output_tokens"]
    ttft = first - arrival
    e2e = finish - arrival
    multi = out > 1
    if "replica" in records and len(records["replica"]):
        # a request answered in front of the engine (a result-cache hit: replica -1) generated no tokens here
        multi = multi & (records["replica"] >= 0)
    tpot = (e2e[multi] - ttft[multi]) / (out[multi] - 1)
    itl_values = np.concatenate([np.frombuffer(s.itl, dtype=np.float64) for s in steps]) if steps else np.zeros(0)
    itl_weights = np.concatenate([np.frombuffer(s.itl_weight, dtype=np.int64) for s in steps]) if steps else np.zeros(0)
    completed = len(arrival)
    span = float(finish.max() - arrival.min()) if completed else 0.0
    iterations = sum(s.iterations for s in steps)
    busy = sum(s.busy_s for s in steps)
    summary = {
        "requests": {"total": total_requests, "completed": completed, "dropped": dropped,
                     "unfinished": total_requests - completed},
        "ttft_s": distribution(ttft),
        "tpot_s": distribution(tpot),
        "itl_s": distribution(itl_values, itl_weights),
        "e2e_s": distribution(e2e),
        "throughput": {
            "requests_per_s": completed / span if span > 0 else None,
            "output_tokens_per_s": float(out.sum()) / span if span > 0 else None,
            "input_tokens_per_s": float(records["input_tokens"].sum()) / span if span > 0 else None,
        },
        "kv": {"prefix_hit_rate": kv_stats["hit_tokens"] / kv_stats["query_tokens"] if kv_stats["query_tokens"] else 0.0,
               "peak_usage": max((s.peak_kv_usage for s in steps), default=0.0),
               "capacity_tokens": kv_capacity_tokens, "evictions": kv_stats["evictions"]},
        "preemptions": int(sum(s.preemptions for s in steps)),
        "recomputed_tokens": int(records["recomputed_tokens"].sum()) if completed else 0,
        "batch": {"mean_running": sum(s.batch_sum for s in steps) / iterations if iterations else 0.0,
                  "busy_fraction": busy / sim_time / len(steps) if sim_time > 0 and steps else 0.0},
        "sim": {"simulated_time_s": sim_time, "wall_time_s": wall_time, "iterations": iterations},
    }
    classes = class_summary(records, span)
    if classes is not None:
        summary["classes"] = classes
    return summary


def class_summary(records: dict[str, np.ndarray], span: float) -> dict | None:
    """Per-class latency, SLO attainment and goodput; None when no request has a class or an SLO."""
    tenant = records.get("tenant")
    if tenant is None or len(tenant) == 0:
        return None
    nan = np.full(len(tenant), np.nan)
    slo_ttft = records.get("slo_ttft_s", nan)
    slo_tpot = records.get("slo_tpot_s", nan)
    tagged = np.array([t is not None for t in tenant], dtype=bool)
    if not tagged.any() and np.isnan(slo_ttft).all() and np.isnan(slo_tpot).all():
        return None
    out = records["output_tokens"]
    ttft = records["first_token_s"] - records["arrival_s"]
    multi = out > 1
    tpot = np.full(len(out), np.nan)
    tpot[multi] = (records["finish_s"][multi] - records["first_token_s"][multi]) / (out[multi] - 1)
    with np.errstate(invalid="ignore"):
        ok_ttft = np.isnan(slo_ttft) | (ttft <= slo_ttft)
        ok_tpot = np.isnan(slo_tpot) | np.isnan(tpot) | (tpot <= slo_tpot)
    ok = ok_ttft & ok_tpot
    names = np.where(tagged, tenant, "default")
    priority = records.get("priority", np.zeros(len(out), dtype=np.int64))
    result = {}
    for name in dict.fromkeys(names.tolist()):
        m = names == name
        i = int(np.flatnonzero(m)[0])
        n = int(m.sum())
        result[name] = {
            "requests": n,
            "priority": int(priority[i]),
            "slo": {"ttft_s": None if np.isnan(slo_ttft[i]) else float(slo_ttft[i]),
                    "tpot_s": None if np.isnan(slo_tpot[i]) else float(slo_tpot[i])},
            "ttft_s": distribution(ttft[m]),
            "tpot_s": distribution(tpot[m & multi]),
            "attainment": {"ttft": float(ok_ttft[m].mean()), "tpot": float(ok_tpot[m].mean()),
                           "both": float(ok[m].mean())},
            "goodput_rps": float(ok[m].sum()) / span if span > 0 else None,
            "throughput_rps": n / span if span > 0 else None,
        }
    return result
