"""One config under several seeds, and the spread of each summary metric across them.

Near a deployment's capacity knee the mean TTFT of one finite run depends on the luck of the arrival draw
as much as on the deployment: docs/VALIDATION.md shows a 20-minute Mixtral-8x22B run whose simulated mean
TTFT spans 1.2-4.4 s over 8 arrival seeds. A planner should see that spread before trusting one number, and
a comparison with one measured run should ask whether the measurement lies inside it.

    from experiments.replications import run_replications
    reps = run_replications("config.yaml", 8)
    reps.band()["ttft_s.mean"]    # {"mean", "std", "min", "p5", "p50", "p95", "max"}: seconds

Seeds are the config's seed, seed + 1, ...: the first replication is exactly `servesim run` of the config.
A trace workload keeps its arrival times and lengths under every seed; only the random draws of the
generators and policies change.
"""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from sim.errors import ConfigError

from .config import RunConfig, load_config
from .runner import RunResult, run

# summary metrics (dotted paths into summary.json) whose spread a replication reports
METRICS = ("ttft_s.mean", "ttft_s.p90", "ttft_s.p99", "tpot_s.mean", "itl_s.mean", "e2e_s.mean", "e2e_s.p90",
           "e2e_s.p99", "throughput.requests_per_s", "throughput.output_tokens_per_s", "preemptions")


def metric(summary: dict, path: str) -> float | None:
    """The value at a dotted path of a summary (None where the run has none, e.g. no completed request)."""
    v = summary
    for part in path.split("."):
        if not isinstance(v, dict) or part not in v:
            return None
        v = v[part]
    return None if v is None else float(v)


# p99 TTFT over this many times its mean: requests queue in bursts (the capacity knee); the validation report marks
# measured runs by the same ratio (experiments.validation.vllm_runs.knee_runs)
KNEE_TTFT_P99_OVER_MEAN = 5.0


def near_capacity_knee(summary: dict) -> bool:
    """Whether a run queued like one at or past its capacity: p99 TTFT above 5x the mean (bursts queue: the
    criterion docs/VALIDATION.md uses for the measured runs), or mean TTFT above 20 steps (mean ITLs; a standing
    queue: below capacity TTFT is about 3 steps). There one arrival draw moves mean TTFT by multiples."""
    t, itl = summary.get("ttft_s") or {}, (summary.get("itl_s") or {}).get("mean")
    mean, p99 = t.get("mean"), t.get("p99")
    if not mean:
        return False
    return bool((p99 and p99 > KNEE_TTFT_P99_OVER_MEAN * mean) or (itl and mean > 20.0 * itl))


@dataclass
class Replications:
    """The runs of one config under seeds `seeds`: the first seed's full result and every seed's summary."""

    seeds: list[int]
    summaries: list[dict]
    first: RunResult

    def table(self) -> pd.DataFrame:
        """One row per seed: the seed and each metric of `METRICS`."""
        rows = [{"seed": s, **{m: metric(summary, m) for m in METRICS}}
                for s, summary in zip(self.seeds, self.summaries)]
        return pd.DataFrame(rows)

    def band(self) -> dict[str, dict[str, float]]:
        """Per metric, its mean, standard deviation and quantiles (min, p5, p50, p95, max) across seeds."""
        t = self.table()
        out = {}
        for m in METRICS:
            v = t[m].dropna().to_numpy(dtype=float)
            if len(v) == 0:
                continue
            q = np.percentile(v, [0, 5, 50, 95, 100])
            out[m] = {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                      "min": float(q[0]), "p5": float(q[1]), "p50": float(q[2]), "p95": float(q[3]),
                      "max": float(q[4])}
        return out

    def summary(self) -> dict:
        """The first seed's summary with a `replications` section: the seeds and each metric's band."""
        trace = getattr(self.first.config.workload, "type", None) == "trace"
        return {**self.first.summary, "replications": {"n": len(self.seeds), "seeds": list(self.seeds),
                                                       "trace": trace, "metrics": self.band()}}

    def write(self, out_dir: str | Path, extra: dict | None = None) -> Path:
        """The first seed's outputs (`RunResult.write`) with the replicated summary, plus replications.csv (and
        `extra` files), all moved in together."""
        files = {"replications.csv": lambda path: self.table().to_csv(path, index=False), **(extra or {})}
        return self.first.write(out_dir, summary=self.summary(), extra=files)


def _summary_of(cfg: RunConfig) -> dict:
    return run(cfg).summary


def run_replications(config: RunConfig | dict | str | Path, n: int, *, workers: int = 1,
                     overrides: list[str] | None = None) -> Replications:
    """Run the config under seeds seed, seed + 1, ..., seed + n - 1; `workers` > 1 runs the other seeds in
    processes while the first runs here (its full result is kept; the others return their summaries).
    `overrides` (dotted --set values) apply when `config` is a path or a mapping, not to a built RunConfig."""
    if n < 1:
        raise ConfigError(f"--seeds must be >= 1, got {n}")
    if isinstance(config, RunConfig) and overrides:
        raise ConfigError("run_replications: overrides apply to a config path or mapping; apply them to the "
                          "RunConfig before passing it")
    cfg = config if isinstance(config, RunConfig) else load_config(config, overrides)
    seeds = [cfg.seed + i for i in range(n)]
    quiet = cfg.sim.model_copy(update={"progress": False, "chrome_trace": None, "record_steps": False})
    others = [cfg.model_copy(update={"seed": s, "sim": quiet}) for s in seeds[1:]]
    if workers > 1 and others:
        with ProcessPoolExecutor(min(workers - 1, len(others), os.cpu_count() or 1) or 1) as ex:
            pending = ex.map(_summary_of, others)
            first = run(cfg)
            rest = list(pending)
    else:
        first = run(cfg)
        rest = [_summary_of(c) for c in others]
    return Replications(seeds, [first.summary, *rest], first)
