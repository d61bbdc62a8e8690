"""Build, run and collect one simulation: the Python API behind `servesim run`.

For example:

    from experiments.runner import run
    result = run({"model": "llama-3.1-8b", "workload": {...}})
    result.summary["ttft_s"]["p99"], result.requests  # a pandas DataFrame, one row per request
"""
from __future__ import annotations

import gc
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import simpy
import yaml

from sim.engine import Replica, RequestLog, drive_arrivals, request_from_spec
from sim.errors import ConfigError
from sim.memory import MemoryPlan
from sim.metrics import summarize
from workloads.build import build_workload

from .build import build_cost_model, engine_config  # noqa: F401  (the runner's API since the first release)
from .config import RunConfig, load_config
from .deployment import Deployment
from .deployment_summary import deployment_sections, request_columns


# every file `RunResult.write` may put in an output folder (with the CLI's report and a replicated run's table)
RUN_OUTPUTS = ("summary.json", "requests.parquet", "config.yaml", "timeseries.parquet", "steps.parquet",
               "links.parquet", "scaling.parquet", "report.html", "replications.csv")


@dataclass
class RunResult:
    """What a run produced: the summary dict, the per-request table, the resolved config."""

    summary: dict
    requests: pd.DataFrame
    config: RunConfig
    memory: MemoryPlan
    timeseries: pd.DataFrame | None = None   # sim.sample_interval_s: time, waiting, running, kv_usage, completed
    steps: pd.DataFrame | None = None        # sim.record_steps: replica, start_s, end_s, tokens, batch
    links: pd.DataFrame | None = None        # sim.sample_interval_s: time_s, link, utilisation (change points)
    scaling: pd.DataFrame | None = None      # autoscaling: time_s, active, target, billed, gpu_hours, cost_usd

    def write(self, out_dir: str | Path, *, summary: dict | None = None,
              extra: dict[str, Callable[[Path], object]] | None = None) -> Path:
        """Write summary.json, requests.parquet and config.yaml (plus optional tables) into `out_dir`.

        `summary` replaces the run's own (a replicated summary); `extra` maps more file names to writers
        (``writer(path)``: a report, a replications table). All files are written to a scratch folder first and
        then moved in, so a failure leaves nothing half-written. Files of a previous run with the same names are
        replaced, and the outputs a previous run wrote that this one does not (RUN_OUTPUTS: a report, a time
        series, ...) are removed, so the folder describes one run; nothing else in `out_dir` is touched."""
        out = Path(out_dir)
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out {str(out)!r} is a file; give a folder")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            (tmp / "summary.json").write_text(json.dumps(self.summary if summary is None else summary, indent=2))
            self.requests.to_parquet(tmp / "requests.parquet", index=False)
            (tmp / "config.yaml").write_text(yaml.safe_dump(self.config.model_dump(mode="json"), sort_keys=False))
            if self.timeseries is not None:
                self.timeseries.to_parquet(tmp / "timeseries.parquet", index=False)
            if self.steps is not None:
                self.steps.to_parquet(tmp / "steps.parquet", index=False)
            if self.links is not None:
                self.links.to_parquet(tmp / "links.parquet", index=False)
            if self.scaling is not None:
                self.scaling.to_parquet(tmp / "scaling.parquet", index=False)
            for name, writer in (extra or {}).items():
                writer(tmp / name)
            out.mkdir(exist_ok=True)
            for name in RUN_OUTPUTS:
                if not (tmp / name).exists():
                    (out / name).unlink(missing_ok=True)
            for f in tmp.iterdir():
                os.replace(f, out / f.name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return out


def run(config: RunConfig | dict | str | Path, overrides: list[str] | None = None) -> RunResult:
    """Simulate the configured deployment (one replica, DP replicas behind a router, or prefill and decode
    pools) under the configured workload."""
    cfg = config if isinstance(config, RunConfig) else load_config(config, overrides)
    seed = np.random.SeedSequence(cfg.seed)
    workload_seed = seed.spawn(1)[0]
    env = simpy.Environment()
    log = RequestLog()
    dep = Deployment(cfg, env, seed.spawn(1)[0], log, mode=cfg.sim.mode)
    serving = dep.pools[-1]
    first = dep.replicas[0]
    cost = first.cost
    max_model_len = min(p.plan.max_model_len for p in dep.pools)
    workload = build_workload(cfg.workload, workload_seed, max_model_len=max_model_len)
    if cfg.sim.record_steps or cfg.sim.chrome_trace:
        for rep in dep.replicas:
            rep.step_records = []
    counter = [0]

    def count(_req) -> None:
        counter[0] += 1

    frontend = cost.engine.frontend_latency_s
    if hasattr(workload, "process"):
        # a workload driven by the simulation (closed-loop clients, agent sessions): it submits
        # RequestSpecs from its own SimPy process and hears about completions
        def submit(spec) -> None:
            req = request_from_spec(spec)
            count(req)
            dep.route(req)

        dep.on_finish = _after_frontend(env, getattr(workload, "on_finish", None), frontend)
        arrivals = env.process(workload.process(env, submit))
    else:
        arrivals = env.process(drive_arrivals(env, workload, dep.route, count))

    def finished() -> bool:
        return not arrivals.is_alive and dep.outstanding == 0

    dep.start(finished)
    progress = _Progress(env, workload, log, finished) if cfg.sim.progress and sys.stderr.isatty() else None
    samples = None
    if cfg.sim.sample_interval_s:
        samples = []
        env.process(_sample(env, dep.replicas, log, cfg.sim.sample_interval_s, samples, finished))
    t0 = time.perf_counter()
    if progress:
        env.process(progress.tick())
    # what was built so far (catalogues, cluster graph, replicas) lives for the whole run: keep the garbage
    # collector's full passes from walking it again and again while the run allocates requests
    gc.freeze()
    try:
        env.run()
    finally:
        gc.unfreeze()
    wall = time.perf_counter() - t0
    if progress:
        progress.close()

    records = log.arrays()
    if frontend and len(records["arrival_s"]):
        records["first_token_s"] = records["first_token_s"] + frontend
        records["finish_s"] = records["finish_s"] + frontend
    request_columns(dep, records)
    sim_time = max(r.clock for r in dep.replicas)
    kvs = [r.kv for r in serving.replicas]
    mem = serving.plan.memory
    summary = summarize(records, [r.steps for r in dep.replicas], total_requests=counter[0], dropped=workload.dropped,
                        sim_time=sim_time, wall_time=wall,
                        kv_stats={"hit_tokens": sum(k.hit_tokens for k in kvs),
                                  "query_tokens": sum(k.query_tokens for k in kvs),
                                  "evictions": sum(k.evictions for k in kvs)},
                        kv_capacity_tokens=mem.max_kv_tokens)
    summary["requests"]["clipped"] = workload.clipped
    summary["requests"]["rejected"] = dep.rejected
    summary["requests"]["unfinished"] -= dep.rejected
    summary["memory"] = {"weights_gb": mem.weights_gb, "kv_gb": mem.kv_gb, "num_blocks": mem.num_blocks,
                         "kv_bytes_per_token": mem.kv_bytes_per_token}
    summary["deployment"] = {"model": cost.model.name, "gpu": serving.plan.cost.gpu.name, "tp": serving.plan.cost.tp,
                             "ep": getattr(serving.plan.cost, "ep_size", 1),
                             "weight_dtype": cost.weight_dtype, "kv_dtype": cost.kv_dtype,
                             "engine_profile": cost.engine.name, "scheduler": cfg.scheduler,
                             "max_model_len": max_model_len, "replicas": len({id(r.placement) for r in dep.replicas}),
                             "pp": max((r.pipeline.stages for r in dep.replicas if r.pipeline is not None), default=1),
                             "engines": len(dep.replicas),
                             "gpus": sum(len(p.gpus) for p in dep.placements)}
    summary.update(deployment_sections(dep, records, sim_time))
    requests = pd.DataFrame(records)
    if len(requests):
        requests["ttft_s"] = requests["first_token_s"] - requests["arrival_s"]
        requests["e2e_s"] = requests["finish_s"] - requests["arrival_s"]
    result = RunResult(summary, requests, cfg, mem)
    if samples is not None:
        result.timeseries = pd.DataFrame(samples, columns=["time_s", "waiting", "running", "kv_usage", "completed"])
        result.links = pd.DataFrame(dep.net.rate_timeline(), columns=["time_s", "link", "utilisation"])
    if dep.scaler is not None:
        result.scaling = pd.DataFrame(dep.scaler.frame_rows(sim_time),
                                      columns=["time_s", "active", "target", "billed", "gpu_hours", "cost_usd"])
    if cfg.sim.record_steps or cfg.sim.chrome_trace:
        frames = []
        for rep in dep.replicas:
            steps = pd.DataFrame(rep.step_records, columns=["start_s", "end_s", "tokens", "batch"])
            steps.insert(0, "replica", rep.index)
            frames.append(steps)
        result.steps = pd.concat(frames, ignore_index=True)
    if cfg.sim.chrome_trace:
        from .trace_export import write_chrome_trace

        write_chrome_trace(result, cfg.sim.chrome_trace)
    return result


def _sample(env: simpy.Environment, replicas: list[Replica], log: RequestLog, interval: float, rows: list, finished):
    """SimPy process: every `interval` simulated seconds, the replicas' queues and batches (summed) and KV usage
    (mean)."""
    while True:
        rows.append((env.now, sum(len(r.waiting) for r in replicas), sum(len(r.running) for r in replicas),
                     sum(r.kv.usage for r in replicas) / len(replicas), len(log)))
        if finished():
            return
        yield env.timeout(interval)


def _after_frontend(env: simpy.Environment, on_finish, latency: float):
    """The client hears of a completion only after the API server streams it back (frontend latency)."""
    if on_finish is None or latency <= 0:
        return on_finish

    def delayed(req) -> None:
        env.timeout(latency).callbacks.append(lambda _ev: on_finish(req))

    return delayed


class _Progress:
    """A rich progress bar fed from a SimPy process; shown only once a run takes more than ~2 s of wall time."""

    def __init__(self, env: simpy.Environment, workload, log: RequestLog, finished) -> None:
        self.env, self.total, self.log, self.finished = env, getattr(workload, "expected_count", None), log, finished
        self.bar = None
        self.start = time.perf_counter()

    def tick(self):
        from rich.progress import Progress

        while not self.finished():
            yield self.env.timeout(1.0)
            if self.bar is None:
                if time.perf_counter() - self.start < 2.0:
                    continue
                self.bar = Progress(transient=True)
                self.bar.start()
                self.task = self.bar.add_task("simulating", total=self.total)
            self.bar.update(self.task, completed=len(self.log))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
