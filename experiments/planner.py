"""Capacity planning: the most traffic each deployment candidate serves within the SLOs, and the
cheapest way to serve a target rate.

A plan file::

    name: Llama-3.1-70B chat
    model: llama-3.1-70b
    base: {engine: {max_model_len: 8192}}     # any run-config keys shared by every candidate
    workload:                                 # the traffic shape; its rate is what we search over
      type: poisson
      stages: [{rate: 1, duration_s: 1}]      # replaced by one stage at the probed rate (or give
                                              # arrival: {process: gamma, rate: 1, cv: 2, ...})
      input_len: {dist: lognormal, mean: 1000, sigma: 0.6, max: 4000}
      output_len: {dist: lognormal, mean: 250, sigma: 0.5, max: 1000}
    slo: {ttft_s: 1.0, tpot_s: 0.05}          # p99 TTFT <= 1 s and p99 TPOT <= 50 ms
    # slo: {ttft_s: 1.0, tpot_s: 0.05, goodput: 0.99}   # or: >= 99% of requests meet both
    target_rate: 40                           # req/s the deployment must serve
    max_utilization: 0.8                      # optional headroom: each replica at <= 80% of its capacity
    gpus: [h100-sxm-80gb, {name: h200-sxm-141gb, price_per_hour: 3.5}]
    tp: [2, 4, 8]
    policies: {default: {}, chunk-512: {engine.max_num_batched_tokens: 512}}
    probe_duration_s: 180                     # simulated seconds of arrivals per probe

Candidates are GPU x TP x policy (x `ep_groups` for a MoE model: experts sliced by TP, spread over each
replica's GPUs, or over lockstep groups of N replicas, whose unit is then the whole group). For each, a probe simulates `probe_duration_s` seconds of
arrivals at a rate r (same seed for every probe, so arrival times are the same draws scaled by
1/r) and checks the SLOs on every request, counting requests that never finished as missing
them. With `seeds: N` a probe runs N arrival draws and passes only if all of them meet the SLOs:
near the capacity knee one draw can be lucky (docs/VALIDATION.md, 'Arrival-seed spread').
The largest feasible rate is bracketed (doubling or halving from `initial_rate`) and then
bisected geometrically until the bracket is within `rate_tolerance`; the reported rate is the
feasible end of the final bracket, i.e. a rate that was simulated and met the SLOs. (scipy's
bisect/brentq return a point inside the bracket, not its feasible end, so we bisect ourselves.)

Replicas are simple multiples: R replicas at total rate X are taken to behave like one replica
at X/R (perfect load balancing, no router imbalance or cross-replica cache effects). The
cheapest deployment of a candidate for the target rate is ceil(target / (max rate x max_utilization))
replicas of TP GPUs each; its latency is simulated at target / R per replica. Cost is GPUs x price per
GPU-hour (catalogue `price_per_hour`, or the plan's override); cost per million output tokens
divides it by the output tokens served per hour at the target rate.
"""
from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import (BaseModel, ConfigDict, Field, NonNegativeInt, PositiveFloat, PositiveInt, field_validator,
                      model_validator)

from sim.errors import CatalogError, ConfigError, DeploymentError, ServesimError

_LATENCIES = ("ttft_s", "tpot_s", "e2e_s")
_NAMES = {"ttft_s": "TTFT", "tpot_s": "TPOT", "e2e_s": "E2E"}

ASSUMPTION = ("Replicas are simple multiples: a deployment of R replicas at a total rate X is modelled as one "
              "replica at X/R (even load balancing; no router imbalance or cross-replica prefix-cache effects).")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ----------------------------------------------------------------------------- SLOs

def request_latencies(requests: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per-request TTFT, E2E, and TPOT = (E2E - TTFT) / (output tokens - 1) (NaN for 1-token outputs)."""
    if len(requests) == 0:
        return {m: np.zeros(0) for m in _LATENCIES}
    arrival = requests["arrival_s"].to_numpy(float)
    first = requests["first_token_s"].to_numpy(float)
    finish = requests["finish_s"].to_numpy(float)
    out = requests["output_tokens"].to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        tpot = np.where(out > 1, (finish - first) / np.maximum(out - 1, 1), np.nan)
    return {"ttft_s": first - arrival, "tpot_s": tpot, "e2e_s": finish - arrival}


class SLO(_Model):
    """Latency targets: per-request thresholds, checked at a percentile or as a goodput fraction."""

    ttft_s: PositiveFloat | None = Field(None, description="Time to first token threshold (s).")
    tpot_s: PositiveFloat | None = Field(None, description="Time per output token threshold (s).")
    e2e_s: PositiveFloat | None = Field(None, description="End-to-end latency threshold (s).")
    percentile: float = Field(99, gt=0, le=100, description="Each metric's p-th percentile must meet its threshold.")
    goodput: float | None = Field(
        None, gt=0, le=1, description="Instead of percentiles: at least this fraction of requests must meet "
                                      "every threshold (goodput).")

    @model_validator(mode="after")
    def _some_target(self) -> SLO:
        if self.ttft_s is None and self.tpot_s is None and self.e2e_s is None:
            raise ValueError("give at least one of ttft_s, tpot_s, e2e_s")
        return self

    @property
    def thresholds(self) -> dict[str, float]:
        """The latency targets that are set, metric -> seconds."""
        return {m: getattr(self, m) for m in _LATENCIES if getattr(self, m) is not None}

    def describe(self) -> str:
        """The SLO in words, e.g. 'p99 TTFT <= 1 s and p99 TPOT <= 50 ms'."""
        parts = [f"{_NAMES[m]} <= {_fmt_s(v)}" for m, v in self.thresholds.items()]
        if self.goodput is not None:
            return f"goodput >= {self.goodput:.3g} (requests with {' and '.join(parts)})"
        return " and ".join(f"p{self.percentile:g} {p}" for p in parts)

    def evaluate(self, requests: pd.DataFrame, summary: dict) -> dict:
        """SLO verdict of a run: met, attainment (fraction of all requests meeting every threshold),
        goodput_rps, the percentile of each metric, and margin (> 0 means missed).

        Requests that never completed (dropped, unfinished) count as missing every threshold.
        """
        total = int(summary["requests"]["total"])
        missing = max(total - len(requests), 0)
        lat = request_latencies(requests)
        ok = np.ones(len(requests), dtype=bool)
        out: dict[str, Any] = {}
        margins = []
        q = self.percentile
        for m, thr in self.thresholds.items():
            v = lat[m]
            defined = ~np.isnan(v)
            ok &= ~defined | (v <= thr)
            # a missing request is infinitely late; a huge finite stand-in keeps the interpolation
            # free of inf - inf, and any percentile that reaches it reads as inf
            vals = np.concatenate([v[defined], np.full(missing, 1e300)])
            p = float(np.percentile(vals, q)) if len(vals) else math.nan
            if p > 1e200:
                p = math.inf
            out[f"{m}.p{q:g}"] = p
            margins.append(p / thr - 1 if not math.isnan(p) else math.inf)
        good = int(ok.sum())
        attainment = good / total if total else 0.0
        if len(requests):
            span = float(requests["finish_s"].max() - requests["arrival_s"].min())
        else:
            span = 0.0
        out["attainment"] = attainment
        out["goodput_rps"] = good / span if span > 0 else 0.0
        if self.goodput is not None:
            out["margin"] = self.goodput - attainment
            out["met"] = bool(attainment >= self.goodput)
        else:
            out["margin"] = float(max(margins))
            out["met"] = bool(all(mg <= 0 for mg in margins))
        return out


def _metric_name(metric: str) -> str:
    base, _, stat = metric.partition(".")
    return f"{stat} {_NAMES.get(base, base)}" if stat else _NAMES.get(base, base)


def _gpus(n) -> str:
    return f"{int(n)} GPU" + ("" if int(n) == 1 else "s")


def _fmt_s(v: float) -> str:
    return f"{v * 1e3:.3g} ms" if v < 1 else f"{v:.3g} s"


# ----------------------------------------------------------------------------- plan spec

class GPUChoice(_Model):
    """A candidate GPU, optionally with its price."""

    name: str = Field(description="GPU catalogue name.")
    price_per_hour: PositiveFloat | None = Field(None, description="USD per GPU-hour (default: the catalogue's).")


class PlanSpec(_Model):
    """A capacity-planning question (see the module docstring)."""

    name: str | None = Field(None, description="Title of the plan.")
    base: dict | str = Field(default_factory=dict, description="Run-config keys shared by all candidates "
                                                               "(mapping, or a YAML path relative to the plan).")
    model: str | dict | None = Field(None, description="The model (overrides base.model).")
    workload: dict | None = Field(None, description="The traffic shape (overrides base.workload); its stages are "
                                                    "replaced by one stage at the probed rate.")
    slo: SLO = Field(description="The latency targets.")
    target_rate: PositiveFloat = Field(description="Total request rate (req/s) the deployment must serve.")
    max_utilization: float = Field(
        1.0, gt=0, le=1, description="Headroom: size deployments so each unit runs at most this fraction of the "
                                     "capacity found (e.g. 0.8 keeps 20% for bursts and the model's error).")
    gpus: list[GPUChoice] = Field(min_length=1, description="Candidate GPUs: names, or {name, price_per_hour}.")
    tp: list[PositiveInt] = Field(default_factory=lambda: [1], min_length=1, description="Candidate TP degrees.")
    ep_groups: list[NonNegativeInt] = Field(
        default_factory=lambda: [0], min_length=1,
        description="Expert parallelism for MoE models: 0 = experts sliced by TP; 1 = EP over each replica's TP GPUs "
                    "(ep = tp); N >= 2 = data-parallel attention with EP: lockstep groups of N replicas whose experts "
                    "span all N x tp GPUs (ep = N x tp), counted and priced as whole groups.")
    policies: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: {"default": {}}, description="Policy name -> dotted overrides "
                                                             "(scheduler, engine knobs).")
    probe_duration_s: PositiveFloat = Field(180, description="Simulated seconds of arrivals per probe.")
    rate_tolerance: float = Field(0.02, gt=0, lt=1, description="Relative width of the final rate bracket.")
    initial_rate: PositiveFloat = Field(2.0, description="First rate probed (req/s per replica).")
    max_rate: PositiveFloat = Field(2000, description="Stop searching above this rate (req/s per replica).")
    min_requests: PositiveInt = Field(50, description="The lowest rate probed sends at least this many requests.")
    seed: int = Field(0, description="Seed of every probe.")
    seeds: PositiveInt = Field(1, description="Arrival seeds per probe (seed, seed + 1, ...): a rate is feasible only "
                                              "if it meets the SLOs under every one, so a lucky draw near the "
                                              "capacity knee cannot pass it (costs this many runs per probe).")
    latency_metric: str = Field("e2e_s.p99", description="Latency axis of the Pareto frontier (a summary metric).")

    @field_validator("gpus", mode="before")
    @classmethod
    def _gpu_names(cls, v: Any) -> Any:
        # a bare name is the common case; turning it into {name: ...} first keeps a mistake in a mapping entry
        # reported against that entry's own key (price_per_hour, an unknown key) instead of a union's alternatives
        return [{"name": g} if isinstance(g, str) else g for g in v] if isinstance(v, list) else v


def load_plan(source: str | Path | dict) -> tuple[PlanSpec, dict]:
    """(spec, base run-config dict with model and workload merged in)."""
    from .config import load_study_file

    spec, base, _ = load_study_file(source, PlanSpec, "plan")
    if spec.model is not None:
        base["model"] = copy.deepcopy(spec.model)
    if spec.workload is not None:
        base["workload"] = copy.deepcopy(spec.workload)
    for key in ("model", "workload"):
        if key not in base:
            raise ConfigError(f"plan file: give `{key}:` (top level or under base:)")
    if _rate_slot(base["workload"]) is None:
        raise ConfigError(f"plan file: workload type {base['workload'].get('type')!r} has no request rate to scale; "
                          f"the planner needs rate stages (poisson, shared_prefix) or an arrival process with a "
                          f"rate (arrival: {{process: poisson, rate: ...}})")
    if any(spec.ep_groups):
        from sim.models import get_model

        name = base["model"]["name"] if isinstance(base["model"], dict) else base["model"]
        model = get_model(name)
        if not model.is_moe:
            raise ConfigError(f"plan file: ep_groups spread a MoE model's experts; {model.name} has none, "
                              f"use ep_groups: [0]")
    base.setdefault("sim", {})["progress"] = False
    base["seed"] = spec.seed
    return spec, base


@dataclass(frozen=True)
class Candidate:
    """One deployment option: a GPU, a TP degree, a policy, and for MoE models how the experts are spread
    (`ep_group`, see PlanSpec.ep_groups). Its unit is one replica, or one lockstep group of `ep_group` replicas."""

    gpu: str
    tp: int
    policy: str
    price_per_hour: float | None
    ep_group: int = 0

    @property
    def label(self) -> str:
        """A short name for tables and charts, e.g. 'h100-sxm-80gb tp4 chunk-512', 'h100-sxm-80gb 4xtp2 ep8'."""
        n = self.ep_group
        layout = (f"{n}xtp{self.tp} ep{n * self.tp}" if n >= 2 else
                  f"tp{self.tp} ep{self.tp}" if n == 1 else f"tp{self.tp}")
        return f"{self.gpu} {layout}" + ("" if self.policy == "default" else f" {self.policy}")

    @property
    def unit_gpus(self) -> int:
        """GPUs of one unit: a replica's TP GPUs, or a lockstep group's."""
        return self.tp * max(1, self.ep_group)


def candidates(spec: PlanSpec) -> list[Candidate]:
    """Every GPU x TP x policy candidate of a plan, with its price per GPU-hour."""
    from sim.hardware import get_gpu

    out = []
    for choice in spec.gpus:
        gpu = get_gpu(choice.name)                     # an unknown name fails here, in one line
        price = choice.price_per_hour if choice.price_per_hour is not None else gpu.price_per_hour
        for tp in spec.tp:
            for n in spec.ep_groups:
                for policy in spec.policies:
                    out.append(Candidate(gpu.name, tp, policy, price, n))
    return out


def candidate_config(base: dict, spec: PlanSpec, cand: Candidate) -> dict:
    """The run config of a candidate (before a rate is set)."""
    from .config import set_dotted

    data = copy.deepcopy(base)
    set_dotted(data, "hardware.gpu", cand.gpu)
    n = cand.ep_group
    if n >= 2:
        # one unit is a lockstep group: n replicas behind the router, experts over all their GPUs
        data.pop("parallelism", None)
        data["deployment"] = {"replicas": n, "parallelism": {"tp": cand.tp, "ep": n * cand.tp}}
        data.setdefault("router", "least_outstanding_requests")
    else:
        set_dotted(data, "parallelism.tp", cand.tp)
        if n == 1:
            set_dotted(data, "parallelism.ep", cand.tp)
    for key, value in spec.policies[cand.policy].items():
        set_dotted(data, key, copy.deepcopy(value))
    return data


def _rate_slot(workload: dict) -> dict | None:
    """The mapping whose rate the planner sets: the workload (rate stages) or its `arrival:` process."""
    if not isinstance(workload, dict):
        return None
    if "stages" in workload:
        return workload
    arrival = workload.get("arrival")
    if isinstance(arrival, dict) and ("rate" in arrival or "stages" in arrival):
        return arrival
    return None


def with_rate(config: dict, rate: float, duration_s: float) -> dict:
    """`config` with its workload sending `rate` req/s for `duration_s` seconds.

    Rate stages become one stage; an arrival process with a `rate` (poisson, gamma, ...) gets that
    rate and `duration_s` (its other parameters, e.g. burstiness, are kept).
    """
    data = copy.deepcopy(config)
    slot = _rate_slot(data["workload"])
    if "stages" in slot:
        slot["stages"] = [{"rate": float(rate), "duration_s": float(duration_s)}]
    else:
        slot["rate"] = float(rate)
        slot["duration_s"] = float(duration_s)
        slot.pop("num_requests", None)
    return data


def probe_config(plan: str | Path | dict, gpu: str, tp: int, rate: float, policy: str = "default",
                 ep_group: int = 0) -> dict:
    """The exact config the planner simulates for a candidate at `rate` (to re-run a probe by hand)."""
    from sim.hardware import get_gpu

    spec, base = load_plan(plan)
    cand = Candidate(get_gpu(gpu).name, tp, policy, None, ep_group)
    return with_rate(candidate_config(base, spec, cand), rate, spec.probe_duration_s)


# ----------------------------------------------------------------------------- the search

def probe(config: dict, rate: float, duration_s: float, slo: SLO, seeds: int = 1) -> dict:
    """Simulate one rate and judge it against the SLOs; with `seeds` > 1, under seeds seed, seed + 1, ... and
    judged by the worst: met only if every seed meets the SLOs, latencies and margin the largest, attainment and
    goodput the smallest, throughput and the rest the mean over the seeds."""
    from .runner import run

    rows = []
    for i in range(seeds):
        cfg = with_rate(config, rate, duration_s)
        cfg["seed"] = int(cfg.get("seed", 0)) + i
        result = run(cfg)
        s = result.summary
        row = {"rate": float(rate), **slo.evaluate(result.requests, s)}
        for m in ("ttft_s", "tpot_s", "itl_s", "e2e_s"):
            for stat in ("p50", "p90", "p99"):
                row[f"{m}.{stat}"] = s[m][stat]
        row["throughput.requests_per_s"] = s["throughput"]["requests_per_s"]
        row["throughput.output_tokens_per_s"] = s["throughput"]["output_tokens_per_s"]
        n = len(result.requests)
        row["mean_output_tokens"] = float(result.requests["output_tokens"].mean()) if n else math.nan
        row["batch.mean_running"] = s["batch"]["mean_running"]
        row["kv.peak_usage"] = s["kv"]["peak_usage"]
        rows.append(row)
    return rows[0] if seeds == 1 else _worst_of(rows)


def _worst_of(rows: list[dict]) -> dict:
    """One probe row from several seeds' rows (see `probe`)."""
    out = {"rate": rows[0]["rate"], "met": all(r["met"] for r in rows), "seeds": len(rows)}
    for k in rows[0]:
        if k in out:
            continue
        vals = [r[k] for r in rows if r[k] is not None and not (isinstance(r[k], float) and math.isnan(r[k]))]
        if not vals:
            out[k] = rows[0][k]
        elif k in ("attainment", "goodput_rps"):
            out[k] = min(vals)
        elif k == "margin" or k.startswith(("ttft_s.", "tpot_s.", "itl_s.", "e2e_s.")) or k == "kv.peak_usage":
            out[k] = max(vals)
        else:
            out[k] = float(np.mean(vals))
    return out


def search_max_rate(config: dict, slo: SLO, duration_s: float, *, initial_rate: float = 2.0,
                    max_rate: float = 2000.0, min_rate: float = 0.1, rtol: float = 0.02,
                    seeds: int = 1) -> tuple[float, float, dict]:
    """(largest feasible rate found, smallest infeasible rate found, probes by rate).

    The first is 0.0 when even `min_rate` misses the SLOs; the second is inf when `max_rate` meets them.
    """
    probes: dict[float, dict] = {}

    def feasible(r: float) -> bool:
        if r not in probes:
            probes[r] = probe(config, r, duration_s, slo, seeds)
        return probes[r]["met"]

    r = min(max(initial_rate, min_rate), max_rate)
    lo, hi = 0.0, math.inf
    if feasible(r):
        lo = r
        while lo < max_rate:
            nxt = min(lo * 2, max_rate)
            if feasible(nxt):
                lo = nxt
            else:
                hi = nxt
                break
    else:
        hi = r
        while hi > min_rate:
            nxt = max(hi / 2, min_rate)         # the floor itself is the last rate tried
            if feasible(nxt):
                lo = nxt
                break
            hi = nxt
    if lo > 0 and math.isfinite(hi):
        while hi / lo > 1 + rtol:
            mid = math.sqrt(lo * hi)
            if feasible(mid):
                lo = mid
            else:
                hi = mid
    return lo, hi, probes


def evaluate_candidate(task: dict) -> dict:
    """Worker entry point: search one candidate and price its cheapest deployment (never raises)."""
    cand = Candidate(**task["candidate"])
    slo = SLO.model_validate(task["slo"])
    row: dict[str, Any] = {"candidate": cand.label, "gpu": cand.gpu, "tp": cand.tp, "ep_group": cand.ep_group,
                           "policy": cand.policy, "price_per_gpu_hour": cand.price_per_hour}
    probes: dict[float, dict] = {}
    try:
        lo, hi, probes = search_max_rate(task["config"], slo, task["duration_s"], initial_rate=task["initial_rate"],
                                         max_rate=task["max_rate"], min_rate=task["min_rate"], rtol=task["rtol"],
                                         seeds=task.get("seeds", 1))
    except ServesimError as exc:
        row.update(status="does not fit" if isinstance(exc, DeploymentError) else "failed",
                   error=" ".join(str(exc).split()))
        return {"row": row, "probes": []}
    except Exception as exc:  # noqa: BLE001 - one candidate's bug does not sink the plan
        row.update(status="failed", error=f"{type(exc).__name__}: {' '.join(str(exc).split())}")
        return {"row": row, "probes": []}
    row.update(max_rate_per_replica=lo, infeasible_rate=hi if math.isfinite(hi) else None, probes=len(probes))
    if lo <= 0:
        row.update(status="misses SLO", error=f"even at {task['min_rate']:.3g} req/s, the lowest rate probed")
    else:
        target = task["target_rate"]
        replicas = max(1, math.ceil(target / (lo * task.get("max_utilization", 1.0)) - 1e-9))
        per_replica = target / replicas
        dep = probes.get(per_replica) or probe(task["config"], per_replica, task["duration_s"], slo,
                                               task.get("seeds", 1))
        probes.setdefault(per_replica, dep)
        gpus = replicas * cand.unit_gpus
        usd_h = gpus * cand.price_per_hour if cand.price_per_hour else None
        tokens_per_hour = target * dep["mean_output_tokens"] * 3600
        row.update(status="ok" if math.isfinite(hi) else "ok (max_rate reached)", error=None, replicas=replicas,
                   gpus=gpus, rate_per_replica=per_replica, utilization=per_replica / lo, usd_per_hour=usd_h,
                   usd_per_1m_output_tokens=usd_h / tokens_per_hour * 1e6 if usd_h else None,
                   usd_per_1m_output_tokens_at_capacity=None, deployment_meets_slo=dep["met"])
        if usd_h:
            cap_tokens = lo * dep["mean_output_tokens"] * 3600
            row["usd_per_1m_output_tokens_at_capacity"] = cand.unit_gpus * cand.price_per_hour / cap_tokens * 1e6
        for k, v in dep.items():
            if "." in k or k in ("attainment", "goodput_rps"):
                row[k] = v
    plist = [{"candidate": cand.label, **p} for _, p in sorted(probes.items())]
    return {"row": row, "probes": plist}


# ----------------------------------------------------------------------------- the plan

@dataclass
class PlanResult:
    """Candidates (one row each), every probe, the recommendation, and the spec."""

    table: pd.DataFrame
    probes: pd.DataFrame
    recommendation: str
    spec: PlanSpec
    base: dict
    files: dict[str, Path] = field(default_factory=dict)

    def as_dict(self) -> dict:
        """The plan as a JSON-ready dict (what plan.json holds)."""
        return {"name": self.spec.name, "target_rate": self.spec.target_rate, "slo": self.spec.slo.describe(),
                "slo_spec": self.spec.slo.model_dump(mode="json"), "assumptions": [ASSUMPTION, _probe_note(self.spec)],
                "recommendation": self.recommendation,
                "candidates": _records(self.table), "probes": _records(self.probes),
                "spec": self.spec.model_dump(mode="json"), "base_config": self.base}


def _records(df: pd.DataFrame) -> list[dict]:
    return json.loads(df.to_json(orient="records")) if len(df) else []


def _probe_note(spec: PlanSpec) -> str:
    seeds = (f"seed {spec.seed}" if spec.seeds == 1 else
             f"seeds {spec.seed}-{spec.seed + spec.seeds - 1}, feasible only if every seed meets the SLOs")
    return (f"Each probe simulates {spec.probe_duration_s:g} s of arrivals ({seeds}) from an empty system; "
            f"rates are resolved to within {spec.rate_tolerance:.0%}.")


def plan(source: str | Path | dict, out_dir: str | Path | None = None, *, executor: str = "local",
         workers: int | None = None, report: bool = True) -> PlanResult:
    """Answer a plan file: search every candidate, price deployments, pick the cheapest."""
    from .sweep import check_executor, execute

    spec, base = load_plan(source)
    check_executor(executor)
    cands = candidates(spec)
    min_rate = spec.min_requests / spec.probe_duration_s
    tasks = []
    for i, cand in enumerate(cands):
        cfg = candidate_config(base, spec, cand)
        _check_buildable(with_rate(cfg, 1.0, spec.probe_duration_s), cand)
        tasks.append((i, ({"candidate": cand.__dict__, "config": cfg, "slo": spec.slo.model_dump(mode="json"),
                           "duration_s": spec.probe_duration_s, "initial_rate": spec.initial_rate,
                           "max_rate": spec.max_rate, "min_rate": min_rate, "rtol": spec.rate_tolerance,
                           "target_rate": spec.target_rate, "max_utilization": spec.max_utilization,
                           "seeds": spec.seeds},)))
    results: dict[int, dict] = {}
    for i, res in execute(evaluate_candidate, tasks, executor, workers):
        if isinstance(res, BaseException):
            res = {"row": {"candidate": cands[i].label, "gpu": cands[i].gpu, "tp": cands[i].tp,
                           "policy": cands[i].policy, "status": "failed", "error": str(res)}, "probes": []}
        results[i] = res
    table = pd.DataFrame([results[i]["row"] for i in range(len(cands))])
    probes = pd.DataFrame([p for i in range(len(cands)) for p in results[i]["probes"]])
    table = _rank(table, spec.latency_metric)
    result = PlanResult(table, probes, recommend(table, spec), spec, base)
    if out_dir is not None:
        result.files = write_plan(result, out_dir, report=report)
    return result


def _check_buildable(config: dict, cand: Candidate) -> None:
    """Validate a candidate's config and build its deployment and workload once, without simulating, so a misspelt
    model, policy or scheduler name stops the plan in one line (exit 2) instead of failing every candidate. A
    candidate that cannot exist (does not fit, TP does not divide the heads, experts that do not split) is that
    candidate's verdict, reported in its row, not an error of the plan."""
    import simpy

    from sim.engine import RequestLog
    from workloads.build import build_workload

    from .config import validate_config
    from .deployment import Deployment

    cfg = validate_config(config)
    try:
        dep = Deployment(cfg, simpy.Environment(), np.random.SeedSequence(cfg.seed), RequestLog(), mode=cfg.sim.mode)
        build_workload(cfg.workload, np.random.SeedSequence(cfg.seed),
                       max_model_len=min(p.plan.max_model_len for p in dep.pools))
    except ServesimError as exc:
        # a name that resolves to nothing (a model, GPU, scheduler or other plugin) is the plan's mistake; anything
        # else (does not fit, experts that do not split over this candidate's GPUs, ...) is this candidate's verdict,
        # which its row reports when the search runs it
        if isinstance(exc, CatalogError) or str(exc).startswith("unknown "):
            raise ConfigError(f"candidate {cand.label}: {' '.join(str(exc).split())}") from None
    except Exception:  # noqa: BLE001 - a plugin's own bug: the candidate's row records it, the plan goes on
        return


def _unit(row) -> str:
    """What one of a candidate's `replicas` is: a replica, or a lockstep group of them (ep_groups >= 2)."""
    n = row.get("ep_group", 0)
    n = 0 if n is None or pd.isna(n) else int(n)
    return f"{n}-replica group" if n >= 2 else "replica"


def _rank(table: pd.DataFrame, latency: str) -> pd.DataFrame:
    """Sort cheapest first and mark the Pareto frontier over ($/hour, latency)."""
    from .charts import pareto_mask

    for col in ("usd_per_hour", latency, "max_rate_per_replica"):
        if col not in table.columns:
            table[col] = np.nan
    ok = table["status"].astype(str).str.startswith("ok") & table["usd_per_hour"].notna() & table[latency].notna()
    table["pareto"] = False
    if ok.any():
        sub = table[ok]
        table.loc[ok, "pareto"] = pareto_mask(sub["usd_per_hour"].to_numpy(float), sub[latency].to_numpy(float))
    table["_ok"] = ok
    table = table.sort_values(["_ok", "usd_per_hour", latency], ascending=[False, True, True], kind="stable")
    return table.drop(columns="_ok").reset_index(drop=True)


def recommend(table: pd.DataFrame, spec: PlanSpec) -> str:
    """One paragraph: the cheapest deployment, the runner-up, the fastest on the frontier, the caveats."""
    slo = spec.slo.describe()
    status = table["status"].astype(str)
    served = table[status.str.startswith("ok")]
    ok = served[served["usd_per_hour"].notna()]
    unpriced = served[served["usd_per_hour"].isna()]
    bad = table[~status.str.startswith("ok")]
    if not len(ok):
        if len(unpriced):
            best = unpriced.sort_values("gpus").iloc[0]
            return (f"No candidate has a price; by GPU count the smallest deployment for {spec.target_rate:g} req/s "
                    f"under {slo} is {int(best['replicas'])} x {best['candidate']} ({_gpus(best['gpus'])}). "
                    f"Set price_per_hour to compare costs.{_ruled_out(bad)} {ASSUMPTION}")
        if not (status == "misses SLO").any():
            return f"No candidate could be simulated.{_ruled_out(bad)}"
        return (f"No candidate meets {slo} at any probed rate; relax the SLOs, add larger TP or faster GPUs."
                f"{_ruled_out(bad)} {_probe_note(spec)}")
    best = ok.iloc[0]
    lat = [f"{label} {_NAMES[m]} {_fmt_s(v)}" for m in ("ttft_s", "tpot_s")
           for label, v in [_at_percentile(best, m, spec.slo.percentile)] if v is not None]
    capped = str(best["status"]) != "ok"
    sustains = (f"sustains at least {best['max_rate_per_replica']:.3g} req/s within the SLOs (the plan's max_rate, "
                f"which stopped the search; raise it to find the real capacity)" if capped else
                f"sustains up to {best['max_rate_per_replica']:.3g} req/s within the SLOs")
    text = (f"For {spec.target_rate:g} req/s under {slo}, the cheapest deployment is {int(best['replicas'])} x "
            f"{best['candidate']} ({_gpus(best['gpus'])}) at ${best['usd_per_hour']:.2f}/hour, "
            f"${best['usd_per_1m_output_tokens']:.3f} per 1M output tokens. Each {_unit(best)} {sustains}, so at the "
            f"target it runs at {best['utilization']:.0%} of that" + (f" with {' and '.join(lat)}" if lat else "") + ".")
    if len(ok) > 1:
        second = ok.iloc[1]
        extra = second["usd_per_hour"] / best["usd_per_hour"] - 1
        text += (f" The runner-up is {int(second['replicas'])} x {second['candidate']} at "
                 f"${second['usd_per_hour']:.2f}/hour ({extra:+.0%}).")
        front = ok[ok["pareto"].astype(bool)]
        metric = spec.latency_metric
        if len(front) > 1:
            fastest = front.sort_values(metric).iloc[0]
            if fastest["candidate"] != best["candidate"]:
                text += (f" For the lowest {_metric_name(metric)} on the cost/latency frontier, "
                         f"{int(fastest['replicas'])} x "
                         f"{fastest['candidate']} gives {float(fastest[metric]):.3g} s vs "
                         f"{float(best[metric]):.3g} s for ${fastest['usd_per_hour']:.2f}/hour.")
    if len(unpriced):
        text += (" Not priced, so not compared (set price_per_hour): "
                 + ", ".join(f"{int(r.replicas)} x {r.candidate} ({_gpus(r.gpus)})" for r in unpriced.itertuples())
                 + ".")
    return text + _ruled_out(bad) + " " + ASSUMPTION + " " + _probe_note(spec)


def _at_percentile(row, metric: str, q: float) -> tuple[str, float | None]:
    """(label, seconds) of a latency at the SLO's percentile, or at p99 (labelled so) when the row lacks it."""
    for label in (f"p{q:g}", "p99"):
        v = row.get(f"{metric}.{label}")
        if v is not None and not pd.isna(v):
            return label, float(v)
    return f"p{q:g}", None


def _ruled_out(bad: pd.DataFrame) -> str:
    """' Ruled out: a (does not fit: why), b (misses SLO).' or ''."""
    if not len(bad):
        return ""
    parts = []
    for r in bad.itertuples():
        why = getattr(r, "error", None)
        why = "" if why is None or (isinstance(why, float) and math.isnan(why)) else f": {why}"
        parts.append(f"{r.candidate} ({r.status}{why[:160] + ('...' if len(why) > 160 else '')})")
    return " Ruled out: " + "; ".join(parts) + "."


# ----------------------------------------------------------------------------- output

TABLE_COLUMNS = ["candidate", "status", "max_rate_per_replica", "replicas", "gpus", "rate_per_replica",
                 "usd_per_hour", "usd_per_1m_output_tokens", "ttft_s.p99", "tpot_s.p99", "e2e_s.p99",
                 "attainment", "pareto", "error"]


def write_plan(result: PlanResult, out_dir: str | Path, report: bool = True) -> dict[str, Path]:
    """Write plan.json, candidates.csv, probes.csv and (with `report`) plan.html into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / "plan.json", "csv": out / "candidates.csv"}
    files["json"].write_text(json.dumps(result.as_dict(), indent=2, default=str))
    result.table.to_csv(files["csv"], index=False)
    if len(result.probes):
        files["probes"] = out / "probes.csv"
        result.probes.to_csv(files["probes"], index=False)
    if report:
        files["html"] = plan_report(result).write(out / "plan.html")
    for name in ("probes.csv", "plan.html"):       # an earlier plan's files would read as this plan's
        if out / name not in files.values():
            (out / name).unlink(missing_ok=True)
    return files


def plan_report(result: PlanResult):
    """The plan's HTML report: candidates table, cost and latency charts, the plan file."""
    import yaml

    from . import charts
    from .report import Report

    spec, table, probes = result.spec, result.table, result.probes
    rep = Report(spec.name or "servesim capacity plan",
                 subtitle=f"target {spec.target_rate:g} req/s; SLO: {spec.slo.describe()}")
    rep.heading("Recommendation")
    rep.paragraph(result.recommendation)
    rep.heading("Candidates")
    q = f"p{spec.slo.percentile:g}"       # latencies at the SLO's percentile where the probes measured it
    rep.table(table, [c.replace(".p99", f".{q}") if c.endswith(".p99") and c.replace(".p99", f".{q}") in table
                      else c for c in TABLE_COLUMNS])
    ok = table[table["status"].astype(str).str.startswith("ok")]
    if len(ok):
        if ok["usd_per_hour"].notna().any():
            rep.figure(charts.pareto_figure(ok, y=spec.latency_metric), height=450)
            rep.figure(charts.cost_figure(ok), height=420)
        rates = np.linspace(0, 2 * spec.target_rate, 200)[1:]
        rep.figure(charts.gpus_vs_rate_figure(ok, rates), height=420)
    if len(probes):
        q = f"p{spec.slo.percentile:g}"
        rep.heading("Probes")
        rep.figure(charts.slo_attainment_figure(probes, rate="rate", attainment="attainment", goodput="goodput_rps",
                                                group="candidate", target=spec.slo.goodput), height=420)
        metrics = [f"{m}.{q}" for m in spec.slo.thresholds] or ["ttft_s.p99"]
        rep.figure(charts.latency_throughput_figure(probes, x="throughput.output_tokens_per_s",
                                                    metrics=metrics, group="candidate", hover="rate"), height=420)
    rep.heading("Plan and base config")
    rep.pre(yaml.safe_dump({"spec": spec.model_dump(mode="json"), "base": result.base}, sort_keys=False))
    return rep


def _latency_columns(table: pd.DataFrame, q: float) -> list[tuple[str, str]]:
    """(header, column) of TTFT and TPOT at the SLO's percentile where the table has it, else at p99."""
    out = []
    for m in ("ttft_s", "tpot_s"):
        label = f"p{q:g}" if f"{m}.p{q:g}" in table.columns and table[f"{m}.p{q:g}"].notna().any() else "p99"
        out.append((f"{label} {_NAMES[m]} s", f"{m}.{label}"))
    return out


def print_plan(result: PlanResult) -> None:
    """Print the candidates table and the recommendation to the terminal."""
    from rich.console import Console
    from rich.table import Table

    from .report import fmt

    t = Table(title=f"{result.spec.name or 'Capacity plan'}: {result.spec.target_rate:g} req/s, "
                    f"{result.spec.slo.describe()}")
    cols = [("candidate", "candidate"), ("status", "status"), ("max req/s/replica", "max_rate_per_replica"),
            ("replicas", "replicas"), ("GPUs", "gpus"), ("$/hour", "usd_per_hour"),
            ("$/1M out tok", "usd_per_1m_output_tokens"),
            *_latency_columns(result.table, result.spec.slo.percentile), ("Pareto", "pareto")]
    for name, _ in cols:
        t.add_column(name, no_wrap=True)
    for row in result.table.to_dict("records"):
        cells = []
        for _, key in cols:
            v = row.get(key)
            if key == "pareto":
                cells.append("*" if v else "")
            elif isinstance(v, float) and math.isnan(v):
                cells.append("")
            elif key in ("replicas", "gpus") and v is not None:
                cells.append(str(int(v)))
            elif isinstance(v, float):
                cells.append(f"{v:.3g}")
            else:
                cells.append(fmt(v))
        t.add_row(*cells)
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)     # piped or logged: no 80-column default splitting numbers across lines
    console.print(t)
    console.print(result.recommendation, soft_wrap=True)
