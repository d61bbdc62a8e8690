"""Engine speed benchmarks (not a test): wall time of the simulation itself and peak memory.

    python -m experiments.benchmarks.bench_engine            # all scenarios, writes docs/PERFORMANCE.md
    python -m experiments.benchmarks.bench_engine --quick    # the shared-prefix scenario only

Scenarios (issue "Replica engine"):
1. shared_prefix: the 16,800-request two-stage shared-prefix run of experiments/examples/quickstart.yaml
   (Llama-3.1-8B, one H100); median of 5 runs of `summary.sim.wall_time_s`.
2. poisson_100k: 100,000 Poisson requests (lognormal prompts of mean 512, outputs of mean 256) at ~70% of
   the replica's saturation throughput, measured first by a short overload run.
3. million: 1,000,000 short requests in a subprocess; reports wall time and peak RSS (records are streamed
   into compact columns, so memory stays bounded).
4. cluster_64 (issue "Cluster"): 64 DP replicas of Llama-3.1-8B (8 HGX H100 nodes) behind a
   least-outstanding router, one simulated hour of Poisson traffic at 20 req/s, 200-token outputs; wall time of
   the whole `run()` (building 64 replicas and the cluster graph included), target 60 s.
5. wide_ep: the quickstart's traffic at 16 then 40 req/s on Mixtral-8x7B as 4 x TP2 replicas with EP8 across them
   (one lockstep group of DP attention + EP); target 10 s.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _quickstart(overrides=()):
    from experiments.config import load_config

    return load_config(ROOT / "experiments/examples/quickstart.yaml", ["sim.progress=false", *overrides])


def bench_shared_prefix(repeats: int = 5) -> dict:
    """Wall time of the quickstart's 16,800 shared-prefix requests (median of `repeats` runs)."""
    from experiments.runner import run

    cfg = _quickstart()
    walls = []
    for _ in range(repeats):
        r = run(cfg)
        walls.append(r.summary["sim"]["wall_time_s"])
    return {"scenario": "shared_prefix 16,800 requests (Llama-3.1-8B, 1x H100)", "requests": r.summary["requests"]["completed"],
            "iterations": r.summary["sim"]["iterations"], "wall_s_median": statistics.median(walls),
            "wall_s_min": min(walls), "target_s": 1.5}


def _poisson_config(rate: float, count: int, out_mean: int = 256) -> dict:
    return {"model": "llama-3.1-8b", "hardware": {"gpu": "h100-sxm-80gb"},
            "engine": {"max_num_seqs": 256, "max_num_batched_tokens": 2048, "max_model_len": 4096},
            "workload": {"type": "poisson", "stages": [{"rate": rate, "duration_s": count / rate}],
                         "input_len": {"dist": "lognormal", "mean": 512, "sigma": 0.5, "max": 3000},
                         "output_len": {"dist": "lognormal", "mean": out_mean, "sigma": 0.5, "max": 1000}},
            "seed": 0, "sim": {"progress": False}}


def bench_poisson_100k() -> dict:
    """Wall time of 100,000 Poisson requests at about 70% of the replica's measured capacity."""
    from experiments.runner import run

    saturated = run(_poisson_config(rate=200.0, count=6000))
    capacity = saturated.summary["throughput"]["requests_per_s"]
    rate = round(0.7 * capacity, 2)
    r = run(_poisson_config(rate=rate, count=100_000))
    return {"scenario": f"poisson 100,000 requests at {rate} req/s (~70% of the measured {capacity:.1f} req/s capacity)",
            "requests": r.summary["requests"]["completed"], "iterations": r.summary["sim"]["iterations"],
            "wall_s_median": r.summary["sim"]["wall_time_s"], "target_s": 10.0}


def _million_child() -> None:
    from experiments.runner import run

    r = run(_poisson_config(rate=100.0, count=1_000_000, out_mean=32))
    print(json.dumps({"requests": r.summary["requests"]["completed"], "iterations": r.summary["sim"]["iterations"],
                      "wall_s": r.summary["sim"]["wall_time_s"],
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def bench_million() -> dict:
    """Wall time and peak memory of one million short Poisson requests, measured in a child process."""
    out = subprocess.run([sys.executable, "-m", "experiments.benchmarks.bench_engine", "--million-child"],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    d = json.loads(out.stdout.strip().splitlines()[-1])
    return {"scenario": "1,000,000 Poisson requests at 100 req/s (outputs of mean 32)", "requests": d["requests"],
            "iterations": d["iterations"], "wall_s_median": d["wall_s"], "peak_rss_mb": d["peak_rss_mb"],
            "target_rss_mb": 2048}


def bench_cluster_64() -> dict:
    """Wall time of one simulated hour of 64 replicas at 20 req/s (the whole run() call, set-up included)."""
    from experiments.runner import run

    cfg = {"model": "llama-3.1-8b", "hardware": {"gpu": "h100-sxm-80gb"}, "deployment": {"replicas": 64},
           "router": "least_outstanding_requests",
           "workload": {"type": "poisson", "stages": [{"rate": 20, "duration_s": 3600}],
                        "input_len": {"dist": "lognormal", "mean": 512, "sigma": 0.5, "max": 3000}, "output_len": 200},
           "seed": 0, "sim": {"progress": False}}
    t0 = time.perf_counter()
    r = run(cfg)
    wall = time.perf_counter() - t0
    return {"scenario": "cluster: 64 replicas x 1 simulated hour at 20 req/s (8 HGX H100 nodes, whole run())",
            "requests": r.summary["requests"]["completed"], "iterations": r.summary["sim"]["iterations"],
            "wall_s_median": wall, "target_s": 60.0}


def bench_wide_ep() -> dict:
    """Wall time of the 16,800-request shared-prefix traffic, doubled, on Mixtral-8x7B as 4 x TP2 replicas whose
    experts span all 8 GPUs (DP attention + EP8): one lockstep group (sim.lockstep)."""
    from experiments.runner import run

    cfg = _quickstart(["model=mixtral-8x7b", "deployment.replicas=4", "deployment.parallelism.tp=2",
                       "deployment.parallelism.ep=8", "router=least_outstanding_requests",
                       "workload.stages[0].rate=16", "workload.stages[1].rate=40"])
    r = run(cfg)
    return {"scenario": "lockstep: Mixtral-8x7B, 4 x TP2 replicas with EP8 over them, 33,600 shared-prefix requests",
            "requests": r.summary["requests"]["completed"], "iterations": r.summary["sim"]["iterations"],
            "wall_s_median": r.summary["sim"]["wall_time_s"], "target_s": 10.0}


def write_report(rows: list[dict], path: Path) -> None:
    """Write the benchmark rows as docs/PERFORMANCE.md (or `path`)."""
    lines = ["# Performance", "",
             "Measured by `python -m experiments.benchmarks.bench_engine` (regenerate after engine changes).",
             f"Machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}, "
             f"{platform.system()}; one core (the simulator is single-threaded); "
             f"measured {time.strftime('%Y-%m-%d')}. This is a shared virtual machine: the same code has measured "
             "up to ~10% apart an hour apart, so compare runs made back to back.", "",
             "`wall_s` is `summary.sim.wall_time_s`: the simulation from the first event to the last, "
             "without start-up or writing outputs (the cluster row times the whole `run()` call).", "",
             "| scenario | requests | iterations | wall (s) | target | peak RSS (MB) |", "|---|---|---|---|---|---|"]
    for r in rows:
        target = f"<= {r['target_s']} s" if "target_s" in r else f"< {r['target_rss_mb']} MB RSS"
        lines.append(f"| {r['scenario']} | {r['requests']:,} | {r['iterations']:,} | {r['wall_s_median']:.2f} | "
                     f"{target} | {r.get('peak_rss_mb', float('nan')):.0f} |")
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    """Command line: run the benchmarks and write the report."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="only the shared-prefix scenario; no report")
    ap.add_argument("--million-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "PERFORMANCE.md")
    a = ap.parse_args()
    if a.million_child:
        _million_child()
        return
    rows = [bench_shared_prefix()]
    print(json.dumps(rows[-1]))
    if a.quick:
        return
    for fn in (bench_poisson_100k, bench_million, bench_cluster_64, bench_wide_ep):
        rows.append(fn())
        print(json.dumps(rows[-1]))
    write_report(rows, a.out)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
