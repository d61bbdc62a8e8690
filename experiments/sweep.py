"""Parameter sweeps: a base config, factors over dotted keys, runs in parallel, one results table.

A sweep file::

    base: base.yaml                 # a run config; path relative to this file, or an inline mapping
    grid:                           # Cartesian product
      engine.max_num_batched_tokens: [512, 2048, 8192]
      workload.stages[0].rate: [2, 4, 8]
    zip:                            # lock-step lists (all the same length), crossed with the grid
      model.name: [llama-3.1-8b, llama-3.1-70b]
      parallelism.tp: [1, 4]
    random:                         # random samples, crossed with the rest
      samples: 8
      seed: 0
      space:
        engine.max_num_seqs: {low: 32, high: 512, log: true}   # ints -> integers (high included)
        scheduler: [vllm]                                       # a list -> uniform choice
    slo: {ttft_s: 1.0, tpot_s: 0.05}  # optional: adds slo.attainment / slo.goodput_rps columns

Every point becomes a validated `RunConfig`; its hash (of the resolved config) names its
directory ``OUT/runs/<hash>/`` holding ``config.yaml`` and, once it ran, ``summary.json`` (plus
``requests.parquet``), or ``error.json`` if it failed. A run whose directory already has a
``summary.json`` is not run again, so an interrupted sweep resumes where it stopped, and a
failed run is retried next time. The table ``OUT/results.parquet`` (and ``.csv``) has one row
per point: ``run_id``, ``status`` (ok / failed), ``error``, the factor values, and the
flattened summary (``ttft_s.p99``, ``throughput.output_tokens_per_s``, ...). It is built from
the files on disk, so it does not depend on the executor or on the order runs finished in.

Executors: ``local`` (a `concurrent.futures.ProcessPoolExecutor`; in-process when one worker)
or ``ray`` (`ray.init()` on a local machine or the cluster at ``ray://host:port``; Ray is an
optional dependency, and a remote cluster's workers need servesim installed). Workers only
simulate and send results back; the driver writes every file, so ``OUT`` lives on the driver.
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator

from sim.errors import ConfigError, ServesimError

from .config import RunConfig, load_study_file, resolve_config_paths, set_dotted, validate_config
from .planner import SLO



class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Range(_Model):
    """A numeric range to sample: uniform (or log-uniform) between low and high."""

    low: float = Field(description="Smallest value.")
    high: float = Field(description="Largest value.")
    log: bool = Field(False, description="Sample uniformly in log space (low must be > 0).")
    integer: bool | None = Field(None, description="Round to integers (default: when low and high are integers).")

    @model_validator(mode="after")
    def _check(self) -> Range:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("log: true needs low > 0")
        return self


class RandomFactors(_Model):
    """Random sampling of a space of keys."""

    samples: PositiveInt = Field(description="Number of random points.")
    seed: int = Field(0, description="Seed of the sampler (the same seed gives the same points).")
    space: dict[str, Range | list] = Field(description="dotted key -> {low, high[, log]} or a list of choices.")


class SweepSpec(_Model):
    """A sweep: base config plus factors."""

    name: str | None = Field(None, description="Title of the sweep (report heading).")
    base: dict | str = Field(description="Run config: a path (relative to the sweep file) or a mapping.")
    grid: dict[str, list] = Field(default_factory=dict, description="dotted key -> values (Cartesian product).")
    zip: dict[str, list] = Field(default_factory=dict, description="dotted key -> values, varied in lock step.")
    random: RandomFactors | None = Field(None, description="Randomly sampled factors.")
    slo: SLO | None = Field(None, description="SLOs for the slo.* columns (attainment, goodput).")
    save_requests: bool = Field(True, description="Keep each run's requests.parquet.")

    @model_validator(mode="after")
    def _check(self) -> SweepSpec:
        for key, values in self.grid.items():
            if not values:
                raise ValueError(f"grid.{key} is an empty list; give it at least one value")
        lengths = {len(v) for v in self.zip.values()}
        if len(lengths) > 1:
            raise ValueError(f"zip lists must have the same length, got {sorted(lengths)} "
                             f"({', '.join(f'{k}: {len(v)}' for k, v in self.zip.items())})")
        groups = [set(self.grid), set(self.zip), set(self.random.space) if self.random else set()]
        for a, b in itertools.combinations(groups, 2):
            if a & b:
                raise ValueError(f"key {sorted(a & b)[0]!r} appears in two of grid/zip/random; use it once")
        return self

    @property
    def factors(self) -> list[str]:
        """The dotted keys the sweep varies, in grid, zip, random order."""
        return [*self.grid, *self.zip, *(self.random.space if self.random else {})]


# ----------------------------------------------------------------------------- points

def expand(spec: SweepSpec) -> list[dict[str, Any]]:
    """The sweep's points (dotted key -> value) in a fixed order: grid x zip x random samples."""
    grid = [dict(zip(spec.grid, combo)) for combo in itertools.product(*spec.grid.values())] or [{}]
    n_zip = len(next(iter(spec.zip.values()))) if spec.zip else 0
    zipped = [{k: v[i] for k, v in spec.zip.items()} for i in range(n_zip)] or [{}]
    randoms = _random_points(spec.random) if spec.random else [{}]
    return [{**g, **z, **r} for g in grid for z in zipped for r in randoms]


def _random_points(rnd: RandomFactors) -> list[dict[str, Any]]:
    rng = np.random.default_rng(rnd.seed)
    points = []
    for _ in range(rnd.samples):
        p = {}
        for key, dom in rnd.space.items():
            if isinstance(dom, list):
                p[key] = dom[int(rng.integers(len(dom)))]
                continue
            integer = dom.integer if dom.integer is not None else (float(dom.low).is_integer()
                                                                  and float(dom.high).is_integer())
            top = dom.high + 1 if integer else dom.high     # integers: floor of [low, high + 1)
            if dom.log:
                v = math.exp(rng.uniform(math.log(dom.low), math.log(top)))
            else:
                v = rng.uniform(dom.low, top)
            p[key] = min(int(math.floor(v)), int(dom.high)) if integer else float(v)
        points.append(p)
    return points


def config_hash(cfg: RunConfig) -> str:
    """12 hex digits naming a resolved config (the run's directory)."""
    blob = json.dumps(cfg.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def resolve_point(base: dict, point: dict[str, Any], here: Path | None = None) -> tuple[RunConfig, bool]:
    """The validated config of one point, and whether it asked for a Chrome trace.

    A relative path among the point's values (a trace, a model's config.json) is relative to `here`, the sweep
    file's folder, like the paths in the sweep file's base config (default: the working directory).
    Sweep runs never show a progress bar; a ``sim.chrome_trace`` path becomes ``trace.json`` in
    the run's directory (the path is dropped from the config; step recording is kept).
    """
    data = copy.deepcopy(base)
    for key, value in point.items():
        set_dotted(data, key, copy.deepcopy(value))
    resolve_config_paths(data, here or Path.cwd())
    sim = data.setdefault("sim", {})
    if not isinstance(sim, dict):
        raise ConfigError("config key 'sim' must be a mapping")
    sim["progress"] = False
    trace = bool(sim.pop("chrome_trace", None))
    if trace:
        sim["record_steps"] = True
    return validate_config(data), trace


def load_sweep(source: str | Path | dict) -> tuple[SweepSpec, dict, str]:
    """(spec, base config dict with its paths resolved, sweep text for the report)."""
    return load_study_file(source, SweepSpec, "sweep")


def _folder(source: str | Path | dict) -> Path:
    """The folder a sweep file's relative paths start from (the working directory for a mapping)."""
    return Path.cwd() if isinstance(source, dict) else Path(source).resolve().parent


# ----------------------------------------------------------------------------- executing

def simulate(config: dict, slo: dict | None = None, keep_requests: bool = True) -> dict:
    """Worker entry point: run one config (as a JSON-able dict) and return what the driver writes.

    Never raises: a failure comes back as ``{"status": "failed", "error": ...}``.
    """
    try:
        from .runner import run

        result = run(RunConfig.model_validate(config))
        summary = result.summary
        if slo is not None:
            summary["slo"] = SLO.model_validate(slo).evaluate(result.requests, summary)
            summary[SLO_SPEC_KEY] = slo
        return {"status": "ok", "summary": summary,
                "requests": result.requests if keep_requests else None,
                "steps": result.steps, "timeseries": result.timeseries}
    except Exception as exc:  # noqa: BLE001 - recorded per run, the sweep goes on
        return {"status": "failed", "error": _one_line(exc), "traceback": traceback.format_exc()}


SLO_SPEC_KEY = "slo_spec"   # the SLO a run's `slo` verdict was judged against (kept in summary.json, not a column)


def _refresh_slo(run_dir: Path, slo: dict | None) -> bool:
    """Bring a finished run's SLO verdict in line with the sweep's current SLO; False when it must run again.

    The SLO is not part of a run's config (nor of its hash), so a resumed sweep with a changed `slo:` finds runs
    judged against the old one: they are re-judged from their requests.parquet, or re-run when it was not kept."""
    path = run_dir / "summary.json"
    summary = json.loads(path.read_text())
    if summary.get(SLO_SPEC_KEY) == slo and (slo is not None or "slo" not in summary):
        return True
    summary.pop("slo", None)
    summary.pop(SLO_SPEC_KEY, None)
    if slo is not None:
        requests = run_dir / "requests.parquet"
        if not requests.exists():
            return False
        summary["slo"] = SLO.model_validate(slo).evaluate(pd.read_parquet(requests), summary)
        summary[SLO_SPEC_KEY] = slo
    _write_text(path, json.dumps(summary, indent=2))
    return True


def _one_line(exc: BaseException) -> str:
    msg = " ".join(str(exc).split())
    return msg if isinstance(exc, ServesimError) else f"{type(exc).__name__}: {msg}"


def execute(fn: Callable, tasks: list[tuple[Any, tuple]], executor: str = "local", workers: int | None = None,
            ) -> Iterator[tuple[Any, Any]]:
    """Run ``fn(*args)`` for each ``(key, args)`` and yield ``(key, result)`` as they finish.

    ``executor``: ``local`` (processes; in-process when one worker or one task), ``ray`` (local Ray,
    or the cluster in RAY_ADDRESS) or ``ray://host:port``. An exception raised by ``fn`` or a lost
    worker is yielded as the result (an Exception instance) rather than raised.
    """
    check_executor(executor)
    if not tasks:
        return
    if executor == "local":
        yield from _execute_local(fn, tasks, workers)
    else:
        yield from _execute_ray(fn, tasks, None if executor == "ray" else executor, workers)


def check_executor(executor: str) -> None:
    """Refuse an unknown executor name before any work or file is made."""
    if executor not in ("local", "ray") and not executor.startswith("ray://"):
        raise ConfigError(f"--executor {executor!r}: use local, ray or ray://host:port")


def _execute_local(fn, tasks, workers):
    workers = max(1, min(workers or os.cpu_count() or 1, len(tasks)))
    if workers == 1:
        for key, args in tasks:
            try:
                yield key, fn(*args)
            except Exception as exc:  # noqa: BLE001
                yield key, exc
        return
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    pool = ProcessPoolExecutor(max_workers=workers)
    try:
        pending = {pool.submit(fn, *args): key for key, args in tasks}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                key = pending.pop(fut)
                try:
                    yield key, fut.result()
                except Exception as exc:  # noqa: BLE001 - includes BrokenProcessPool
                    yield key, exc
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _execute_ray(fn, tasks, address, workers):
    try:
        import ray
    except ImportError:
        raise ConfigError("--executor ray needs Ray: pip install 'servesim[ray]' (or pip install ray)") from None
    started = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if address:
            kwargs["address"] = address
        elif workers:
            kwargs["num_cpus"] = workers
        ray.init(**kwargs)
        started = True
    try:
        remote = ray.remote(num_cpus=1, max_retries=0)(fn)
        pending = {remote.remote(*args): key for key, args in tasks}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                key = pending.pop(ref)
                try:
                    yield key, ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - a task error or a lost worker
                    yield key, exc
    finally:
        if started:
            ray.shutdown()


# ----------------------------------------------------------------------------- the sweep

@dataclass
class SweepResult:
    """What a sweep left behind: the results table and counts of what ran this time."""

    table: pd.DataFrame
    out_dir: Path
    ran: int = 0
    skipped: int = 0
    failed: int = 0
    report: Path | None = None
    factors: list[str] = field(default_factory=list)


def run_points(source: str | Path | dict, fn: Callable, *, columns: list[str] | None = None,
               workers: int | None = None) -> pd.DataFrame:
    """Every point of a sweep file through a study's own ``fn(config, slo) -> dict`` (in parallel, without run
    folders or resumption): one row per point, the point's factor values (`columns` of them, default all)
    first. A failing point raises (a study wants all its points)."""
    spec, base, _ = load_sweep(source)
    points = expand(spec)
    here = _folder(source)
    tasks = [(i, (resolve_point(base, p, here)[0], spec.slo)) for i, p in enumerate(points)]
    rows: dict[int, dict] = {}
    for i, res in execute(fn, tasks, workers=workers):
        if isinstance(res, BaseException):
            raise res
        point = points[i] if columns is None else {c: points[i][c] for c in columns}
        rows[i] = {**point, **res}
    return pd.DataFrame([rows[i] for i in range(len(points))])


def run_sweep(source: str | Path | dict, out_dir: str | Path, *, executor: str = "local",
              workers: int | None = None, report: bool = True, progress: bool | None = None) -> SweepResult:
    """Run (or resume) a sweep into `out_dir`; see the module docstring."""
    spec, base, text = load_sweep(source)
    check_executor(executor)
    out = Path(out_dir)
    runs_dir = out / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    for stale in runs_dir.glob(".*"):      # temp files of an interrupted write
        if stale.is_file():
            stale.unlink(missing_ok=True)
    points = expand(spec)
    here = _folder(source)
    slo = spec.slo.model_dump(mode="json") if spec.slo else None

    ids: list[str] = []
    invalid: dict[str, str] = {}
    todo: dict[str, tuple[dict, bool]] = {}
    skipped = 0
    for point in points:
        try:
            cfg, trace = resolve_point(base, point, here)
        except ServesimError as exc:
            rid = "invalid-" + hashlib.sha256(json.dumps(point, sort_keys=True, default=str).encode()).hexdigest()[:8]
            ids.append(rid)
            invalid[rid] = _one_line(exc)
            continue
        rid = config_hash(cfg)
        ids.append(rid)
        run_dir = runs_dir / rid
        if rid in todo:
            continue
        if (run_dir / "summary.json").exists() and _refresh_slo(run_dir, slo):
            skipped += 1
            continue
        run_dir.mkdir(exist_ok=True)
        config_dict = cfg.model_dump(mode="json")
        _write_text(run_dir / "config.yaml", yaml.safe_dump(config_dict, sort_keys=False))
        (run_dir / "error.json").unlink(missing_ok=True)
        todo[rid] = (config_dict, trace)

    if invalid and len(invalid) == len(set(ids)):
        raise ConfigError(f"every point of the sweep is invalid; the first: {next(iter(invalid.values()))}")
    tasks = [(rid, (cfg, slo, spec.save_requests)) for rid, (cfg, _) in todo.items()]
    ran = failed = 0
    bar = _ProgressBar(len(tasks), progress)
    try:
        for rid, res in execute(simulate, tasks, executor, workers):
            if isinstance(res, BaseException):
                res = {"status": "failed", "error": _one_line(res), "traceback": ""}
            _store(runs_dir / rid, res, todo[rid][1])
            ran += 1
            failed += res["status"] != "ok"
            bar.advance(failed)
    finally:
        bar.close()

    table = results_table(points, ids, runs_dir, spec.factors, invalid)
    _write_table(table, out)
    _write_text(out / "sweep.yaml", text)
    result = SweepResult(table, out, ran=ran, skipped=skipped, failed=int((table["status"] != "ok").sum()),
                         factors=spec.factors)
    if report:
        from .report import sweep_report

        title = spec.name or f"servesim sweep: {out.name}"
        result.report = sweep_report(table, spec.factors, title=title, config_text=text,
                                     slo=slo).write(out / "report.html")
    return result


def _store(run_dir: Path, res: dict, trace: bool) -> None:
    """Write a finished run: requests/steps first, summary.json last (its presence means 'done')."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if res["status"] != "ok":
        _write_text(run_dir / "error.json", json.dumps({"error": res["error"], "traceback": res.get("traceback", "")},
                                                       indent=2))
        return
    for name in ("requests", "steps", "timeseries"):
        df = res.get(name)
        if df is not None:
            _atomic(run_dir / f"{name}.parquet", lambda p, df=df: df.to_parquet(p, index=False))
    if trace and res.get("steps") is not None:
        from types import SimpleNamespace

        from .trace_export import write_chrome_trace

        write_chrome_trace(SimpleNamespace(summary=res["summary"], steps=res["steps"], requests=res.get("requests"),
                                           timeseries=res.get("timeseries")), run_dir / "trace.json")
    _write_text(run_dir / "summary.json", json.dumps(res["summary"], indent=2))


def results_table(points: list[dict], ids: list[str], runs_dir: Path, factors: list[str],
                  invalid: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per point, from the files in `runs_dir`."""
    rows = []
    cache: dict[str, dict] = {}
    for point, rid in zip(points, ids):
        if rid not in cache:
            rec: dict[str, Any] = {"run_id": rid}
            summary_file, error_file = runs_dir / rid / "summary.json", runs_dir / rid / "error.json"
            if invalid and rid in invalid:
                rec.update(status="failed", error=invalid[rid])
            elif summary_file.exists():
                rec.update(status="ok", error=None)
                summary = json.loads(summary_file.read_text())
                summary.pop(SLO_SPEC_KEY, None)
                rec.update(flatten(summary))
            elif error_file.exists():
                rec.update(status="failed", error=json.loads(error_file.read_text())["error"])
            else:
                rec.update(status="missing", error="no result (interrupted?)")
            cache[rid] = rec
        rec = cache[rid]
        row = {"run_id": rid, "status": rec["status"], "error": rec["error"]}
        row.update({f: _cell(point.get(f)) for f in factors})
        row.update({k: v for k, v in rec.items() if k not in row})
        rows.append(row)
    df = pd.DataFrame(rows)
    for col in df.columns:
        if df[col].dtype == object:
            kinds = {type(v) for v in df[col] if v is not None and not (isinstance(v, float) and math.isnan(v))}
            if len(kinds) > 1 or (kinds and not kinds <= {str, bool}):
                if kinds <= {int, float}:
                    df[col] = pd.to_numeric(df[col])
                else:
                    df[col] = df[col].map(lambda v: None if v is None else str(v))
    return df


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{'ttft_s': {'p99': 1.0}} -> {'ttft_s.p99': 1.0}; lists become JSON strings."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif isinstance(v, (list, tuple)):
            out[key] = json.dumps(v)
        else:
            out[key] = v
    return out


def _cell(v: Any) -> Any:
    return json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v


def _write_table(table: pd.DataFrame, out: Path) -> None:
    _atomic(out / "results.parquet", lambda p: table.to_parquet(p, index=False))
    _atomic(out / "results.csv", lambda p: table.to_csv(p, index=False))


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temp file in the same directory and rename it into place (all or nothing)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_text(path: Path, text: str) -> None:
    _atomic(path, lambda p: p.write_text(text))


class _ProgressBar:
    """A rich progress bar on a terminal (or when asked); silent otherwise."""

    def __init__(self, total: int, show: bool | None) -> None:
        self.bar = None
        if total and (show if show is not None else sys.stderr.isatty()):
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self.bar = Progress(TextColumn("[bold]sweep"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[failed]} failed"), TimeElapsedColumn(),
                                TimeRemainingColumn(), console=Console(stderr=True), transient=False)
            self.bar.start()
            self.task = self.bar.add_task("sweep", total=total, failed=0)

    def advance(self, failed: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, advance=1, failed=failed)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


__all__ = ["SweepSpec", "SweepResult", "expand", "run_sweep", "execute", "simulate", "results_table", "flatten",
           "config_hash", "resolve_point", "load_sweep"]
