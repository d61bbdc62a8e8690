"""Build, run and collect one simulation: the Python API behind `servesim run`.

For example:

    from experiments.runner import run
    result = run({"model": "llama-3.1-8b", "workload": {...}})
    result.summary["ttft_s"]["p99"], result.requests  # a pandas DataFrame, one row per request
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import simpy
import yaml

import policies.batching  # noqa: F401  (registers the built-in schedulers)
from sim import registry
from sim.cost import CostModel
from sim.engine import EngineConfig, Replica, RequestLog, drive_arrivals, request_from_spec
from sim.errors import ConfigError, DeploymentError
from sim.hardware import get_gpu, gpu_with_overrides
from sim.kvcache import KVCacheManager
from sim.memory import MemoryPlan, plan_memory
from sim.metrics import summarize
from sim.models import get_model
from workloads.build import build_workload

from .config import RunConfig, load_config


@dataclass
class RunResult:
    """What a run produced: the summary dict, the per-request table, the resolved config."""

    summary: dict
    requests: pd.DataFrame
    config: RunConfig
    memory: MemoryPlan
    timeseries: pd.DataFrame | None = None   # sim.sample_interval_s: time, waiting, running, kv_usage, completed
    steps: pd.DataFrame | None = None        # sim.record_steps: replica, start_s, end_s, tokens, batch

    def write(self, out_dir: str | Path) -> Path:
        """Write summary.json, requests.parquet and config.yaml (plus optional tables) into `out_dir`.

        All files are written to a scratch folder first and then moved in, so a failure leaves nothing
        half-written; files of a previous run with the same names are replaced, and nothing else in
        `out_dir` is touched."""
        out = Path(out_dir)
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out {str(out)!r} is a file; give a folder")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            (tmp / "summary.json").write_text(json.dumps(self.summary, indent=2))
            self.requests.to_parquet(tmp / "requests.parquet", index=False)
            (tmp / "config.yaml").write_text(yaml.safe_dump(self.config.model_dump(mode="json"), sort_keys=False))
            if self.timeseries is not None:
                self.timeseries.to_parquet(tmp / "timeseries.parquet", index=False)
            if self.steps is not None:
                self.steps.to_parquet(tmp / "steps.parquet", index=False)
            out.mkdir(exist_ok=True)
            for f in tmp.iterdir():
                os.replace(f, out / f.name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return out


def build_cost_model(cfg: RunConfig) -> CostModel:
    """The cost model of a config's deployment: model, GPU (with a price override), TP degree, dtypes, engine
    profile."""
    model = get_model(cfg.model.name)
    gpu = get_gpu(cfg.hardware.gpu)
    if cfg.parallelism.tp > gpu.gpus_per_node:
        raise DeploymentError(f"parallelism.tp={cfg.parallelism.tp} exceeds the {gpu.gpus_per_node} GPUs of one "
                              f"{gpu.name} node; tensor parallelism runs within a node, use tp <= {gpu.gpus_per_node}")
    if cfg.hardware.price_per_hour is not None:
        gpu = gpu_with_overrides(gpu, price_per_hour=cfg.hardware.price_per_hour)
    return CostModel(model, gpu, tp=cfg.parallelism.tp, weight_dtype=cfg.model.weight_dtype,
                     kv_dtype=cfg.model.kv_dtype, engine=cfg.engine.profile)


def engine_config(cfg: RunConfig, max_model_len: int, cost: CostModel) -> EngineConfig:
    """The engine knobs of a config (async scheduling from the engine profile unless set)."""
    e = cfg.engine
    async_scheduling = cost.engine.async_scheduling if e.async_scheduling is None else e.async_scheduling
    return EngineConfig(max_num_seqs=e.max_num_seqs, max_num_batched_tokens=e.max_num_batched_tokens,
                        block_size=e.block_size, enable_chunked_prefill=e.enable_chunked_prefill,
                        enable_prefix_caching=e.enable_prefix_caching, max_model_len=max_model_len,
                        preemption_mode=e.preemption_mode, async_scheduling=async_scheduling)


def run(config: RunConfig | dict | str | Path, overrides: list[str] | None = None) -> RunResult:
    """Simulate one serving replica under the configured workload."""
    cfg = config if isinstance(config, RunConfig) else load_config(config, overrides)
    cost = build_cost_model(cfg)
    max_model_len = cfg.engine.max_model_len or cost.model.max_position_embeddings
    e = cfg.engine
    mem = plan_memory(cost, e.gpu_memory_utilization, e.max_num_batched_tokens, e.max_num_seqs, e.block_size)
    if mem.max_kv_tokens < max_model_len:
        raise DeploymentError(
            f"the KV cache holds {mem.max_kv_tokens:,} tokens per replica, less than max_model_len={max_model_len:,}; "
            f"lower engine.max_model_len, raise engine.gpu_memory_utilization or parallelism.tp")
    ecfg = engine_config(cfg, max_model_len, cost)
    if ecfg.max_num_batched_tokens < max_model_len and not ecfg.enable_chunked_prefill:
        raise DeploymentError(
            f"engine.max_num_batched_tokens={ecfg.max_num_batched_tokens} is below max_model_len={max_model_len} "
            f"with chunked prefill off, so long prompts could never run; raise it or enable chunked prefill")
    scheduler = registry.get("scheduler", cfg.scheduler)()
    seed = np.random.SeedSequence(cfg.seed)
    workload = build_workload(cfg.workload, seed.spawn(1)[0], max_model_len=max_model_len)

    env = simpy.Environment()
    log = RequestLog()
    kv = KVCacheManager(mem.num_blocks, e.block_size, e.enable_prefix_caching)
    replica = Replica(env, 0, cost, kv, ecfg, scheduler, log, mode=cfg.sim.mode)
    if cfg.sim.record_steps or cfg.sim.chrome_trace:
        replica.step_records = []
    counter = [0]

    def count(_req) -> None:
        counter[0] += 1

    if hasattr(workload, "process"):
        # a workload driven by the simulation (closed-loop clients, agent sessions): it submits
        # RequestSpecs from its own SimPy process and hears about completions
        def submit(spec) -> None:
            req = request_from_spec(spec)
            count(req)
            replica.enqueue(req)

        replica.on_finish = _after_frontend(env, getattr(workload, "on_finish", None), cost.engine.frontend_latency_s)
        arrivals = env.process(workload.process(env, submit))
    else:
        arrivals = env.process(drive_arrivals(env, workload, replica.enqueue, count))
    progress = (_Progress(env, workload, log, lambda: not arrivals.is_alive and replica.outstanding == 0)
                if cfg.sim.progress and sys.stderr.isatty() else None)
    samples = None
    if cfg.sim.sample_interval_s:
        samples = []
        env.process(_sample(env, replica, log, cfg.sim.sample_interval_s, samples,
                            lambda: not arrivals.is_alive and replica.outstanding == 0))
    t0 = time.perf_counter()
    if progress:
        env.process(progress.tick())
    env.run()
    wall = time.perf_counter() - t0
    if progress:
        progress.close()

    records = log.arrays()
    frontend = cost.engine.frontend_latency_s
    if frontend and len(records["arrival_s"]):
        records["first_token_s"] = records["first_token_s"] + frontend
        records["finish_s"] = records["finish_s"] + frontend
    summary = summarize(records, [replica.steps], total_requests=counter[0], dropped=workload.dropped,
                        sim_time=replica.clock, wall_time=wall,
                        kv_stats={"hit_tokens": kv.hit_tokens, "query_tokens": kv.query_tokens,
                                  "evictions": kv.evictions},
                        kv_capacity_tokens=mem.max_kv_tokens)
    summary["requests"]["clipped"] = workload.clipped
    summary["memory"] = {"weights_gb": mem.weights_gb, "kv_gb": mem.kv_gb, "num_blocks": mem.num_blocks,
                         "kv_bytes_per_token": mem.kv_bytes_per_token}
    summary["deployment"] = {"model": cost.model.name, "gpu": cost.gpu.name, "tp": cost.tp,
                             "weight_dtype": cost.weight_dtype, "kv_dtype": cost.kv_dtype,
                             "engine_profile": cost.engine.name, "scheduler": cfg.scheduler,
                             "max_model_len": max_model_len}
    requests = pd.DataFrame(records)
    if len(requests):
        requests["ttft_s"] = requests["first_token_s"] - requests["arrival_s"]
        requests["e2e_s"] = requests["finish_s"] - requests["arrival_s"]
    result = RunResult(summary, requests, cfg, mem)
    if samples is not None:
        result.timeseries = pd.DataFrame(samples, columns=["time_s", "waiting", "running", "kv_usage", "completed"])
    if replica.step_records is not None:
        steps = pd.DataFrame(replica.step_records, columns=["start_s", "end_s", "tokens", "batch"])
        steps.insert(0, "replica", replica.index)
        result.steps = steps
    if cfg.sim.chrome_trace:
        from .trace_export import write_chrome_trace

        write_chrome_trace(result, cfg.sim.chrome_trace)
    return result


def _sample(env: simpy.Environment, replica: Replica, log: RequestLog, interval: float, rows: list, finished):
    """SimPy process: every `interval` simulated seconds, the replica's queue, batch and KV usage."""
    while True:
        rows.append((env.now, len(replica.waiting), len(replica.running), replica.kv.usage, len(log)))
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
