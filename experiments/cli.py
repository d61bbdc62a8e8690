"""`servesim` command line: estimate, run, sweep, plan, catalog, roofline.

Every user mistake surfaces as one line on stderr and exit code 2 (see `main`); tracebacks are for bugs.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from sim.errors import ServesimError

app = typer.Typer(
    name="servesim",
    help="Simulate LLM-inference serving: price iterations with a roofline cost model, replay traffic "
         "through vLLM-style replicas, and plan capacity.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
catalog_app = typer.Typer(help="List catalogue entries: GPUs, models, engine profiles, cost-model constants, plugins.",
                          no_args_is_help=True)
app.add_typer(catalog_app, name="catalog")
workload_app = typer.Typer(help="Inspect workloads and traces: rates, burstiness, lengths, prefix reuse.",
                           no_args_is_help=True)
app.add_typer(workload_app, name="workload")


def _print_json(obj) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


def check_writable(path: Path, option: str, folder: bool) -> None:
    """Refuse an output path that cannot be written before any work is done: the nearest existing ancestor of its
    parent must be a writable folder, and the path itself a folder (`folder`) or not one."""
    import os
    import tempfile

    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        raise ServesimError(f"{option} {str(path)!r} is {'a file' if folder else 'a folder'}; give "
                            f"{'a folder' if folder else 'a file name'}")
    parent = path.absolute().parent       # a folder's outputs are written beside it first, then moved in
    while not parent.exists():
        parent = parent.parent
    try:
        if not parent.is_dir():
            raise OSError
        os.rmdir(tempfile.mkdtemp(prefix=".servesim-write-check-", dir=parent))   # what permissions cannot tell
    except OSError:
        raise ServesimError(f"{option} {str(path)!r}: {str(parent)!r} is not a writable folder; choose another "
                            f"path") from None


@app.command()
def estimate(
    model: str = typer.Option(..., "--model", "-m", help="Catalogue name, Hugging Face id, or path to a config.json."),
    gpu: str = typer.Option(..., "--gpu", "-g", help="GPU name, e.g. h100-sxm-80gb or 'H100'."),
    tp: int = typer.Option(1, "--tp", help="Tensor-parallel degree."),
    ep: int = typer.Option(1, "--ep", help="Expert parallelism (MoE): 1, the tp (whole experts over the replica's "
                                           "GPUs) or a multiple of it (a replica of a DP group whose experts span ep "
                                           "GPUs, all replicas with this batch)."),
    batch: int = typer.Option(1, "--batch", "-b", help="Sequences in the batch."),
    prompt_len: Optional[int] = typer.Option(None, "--prompt-len", help="Prefill: prompt tokens per sequence."),
    context: Optional[int] = typer.Option(None, "--context", help="Decode: tokens already in each sequence's KV cache."),
    phase: Optional[str] = typer.Option(None, "--phase", help="prefill or decode (default: prefill if --prompt-len)."),
    weight_dtype: Optional[str] = typer.Option(None, "--weight-dtype", help="bf16, fp16, fp8, int8, int4, fp4."),
    kv_dtype: Optional[str] = typer.Option(None, "--kv-dtype", help="bf16, fp16, fp8, int8."),
    engine: str = typer.Option("vllm", "--engine", help="Engine profile: vllm, trtllm, gpt-fast, ideal."),
    naive_attention: bool = typer.Option(False, "--naive-attention", help="Price attention that materialises the score matrix."),
    offload: Optional[str] = typer.Option(None, "--offload", help="FlexGen-style placement of weights / KV across GPU, "
                                                                   "host and disk, e.g. gpu=0.2,cpu=0.8 (the rest on disk)."),
    power_w: Optional[float] = typer.Option(None, "--power-w", help="Device power for the energy figures (default: "
                                                                     "the catalogue TDP)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Price one prefill or decode iteration, op by op."""
    from sim.estimate import estimate as run_estimate

    est = run_estimate(model, gpu, tp=tp, batch=batch, prompt_len=prompt_len, context=context, phase=phase,
                       weight_dtype=weight_dtype, kv_dtype=kv_dtype, engine=engine,
                       flash_attention=not naive_attention, offload=offload, power_w=power_w, ep=ep)
    if as_json:
        _print_json(est.as_dict())
        return
    from experiments.tables import print_estimate

    print_estimate(est)


@app.command()
def run(
    config: Path = typer.Argument(..., help="Run config (YAML)."),
    set_: list[str] = typer.Option([], "--set", help="Override a key: --set engine.max_num_seqs=64 (repeatable)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o",
                                       help="Write summary.json, requests.parquet, config.yaml and report.html here."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    no_report: bool = typer.Option(False, "--no-report", help="With --out: skip report.html."),
    trace_out: Optional[Path] = typer.Option(None, "--trace-out",
                                             help="Write a Chrome-trace JSON of the iterations (chrome://tracing, "
                                                  "ui.perfetto.dev); same as --set sim.chrome_trace=FILE."),
    seeds: int = typer.Option(1, "--seeds", min=1,
                              help="Run under this many seeds (seed, seed+1, ...) and report each metric's spread "
                                   "across them; outputs are the first seed's, plus replications.csv."),
    workers: int = typer.Option(1, "--workers", "-j", min=1, help="With --seeds: seeds run in parallel."),
) -> None:
    """Simulate a serving replica under a workload and summarise TTFT, TPOT, ITL, E2E and throughput."""
    from experiments.config import load_config
    from experiments.replications import near_capacity_knee, run_replications

    cfg = load_config(config, set_)
    if out is not None:
        check_writable(out, "--out", folder=True)
    if trace_out is not None:
        check_writable(trace_out, "--trace-out", folder=False)
        cfg = cfg.model_copy(update={"sim": cfg.sim.model_copy(update={"chrome_trace": str(trace_out)})})
    elif cfg.sim.chrome_trace:
        check_writable(Path(cfg.sim.chrome_trace), "sim.chrome_trace", folder=False)
    reps = run_replications(cfg, seeds, workers=workers)
    summary = reps.summary() if seeds > 1 else reps.first.summary
    if out is not None:
        extra = {}
        if not no_report:
            from experiments.report import write_run_report

            extra["report.html"] = lambda path: write_run_report(reps.first, path)
        if seeds > 1:
            reps.write(out, extra=extra)
        else:
            reps.first.write(out, extra=extra)
    if as_json:
        _print_json(summary)
    else:
        from experiments.tables import print_replications, print_summary

        print_summary(reps.first.summary, out)
        if seeds > 1:
            print_replications(summary["replications"])
        elif near_capacity_knee(summary):
            typer.echo("note: requests queue (p99 TTFT over 5x its mean, or mean TTFT over 20 steps): this load is at "
                       "or past the deployment's capacity knee, where one arrival draw moves mean TTFT by multiples; "
                       "--seeds 8 shows the spread")


@app.command()
def sweep(
    sweep_file: Path = typer.Argument(..., help="Sweep file (YAML): base config plus grid / zip / random factors."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory for runs/, results.parquet/.csv and report.html."),
    executor: str = typer.Option("local", "--executor", help="local (processes), ray, or ray://host:port."),
    workers: Optional[int] = typer.Option(None, "--workers", "-j", min=1, help="Parallel runs (default: CPU count)."),
    no_report: bool = typer.Option(False, "--no-report", help="Skip report.html."),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress",
                                            help="Progress bar (default: on a terminal)."),
) -> None:
    """Run a parameter sweep in parallel; resumes runs already done in --out, records failing runs and goes on."""
    from experiments.sweep import run_sweep

    res = run_sweep(sweep_file, out, executor=executor, workers=workers, report=not no_report, progress=progress)
    n = len(res.table)
    typer.echo(f"{n} point{'' if n == 1 else 's'}: {res.ran} run now, {res.skipped} already done; "
               f"{res.failed} failed in all; results in {out / 'results.parquet'}"
               + (f", report {res.report}" if res.report else ""))
    if n and res.failed == n:
        # nothing to compare: the sweep's input is wrong for every point (the errors are in results.csv)
        first = res.table["error"].dropna()
        raise ServesimError("every point of the sweep failed" + (f"; the first: {first.iloc[0]}" if len(first) else ""))


@app.command()
def plan(
    plan_file: Path = typer.Argument(..., help="Plan file (YAML): model, workload, SLOs, GPUs, TP, policies, target."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write plan.json, candidates.csv and plan.html here."),
    workers: Optional[int] = typer.Option(None, "--workers", "-j", min=1,
                                          help="Candidates searched in parallel (default: CPU count)."),
    executor: str = typer.Option("local", "--executor", help="local (processes), ray, or ray://host:port."),
    no_report: bool = typer.Option(False, "--no-report", help="With --out: skip plan.html."),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
) -> None:
    """Find each candidate's max rate within the SLOs and the cheapest deployment for a target rate."""
    from experiments.planner import plan as run_plan
    from experiments.planner import print_plan

    res = run_plan(plan_file, out, executor=executor, workers=workers, report=not no_report)
    if as_json:
        _print_json(res.as_dict())
        return
    print_plan(res)
    if res.files:
        typer.echo("wrote " + ", ".join(str(p) for p in res.files.values()))


@app.command()
def schema() -> None:
    """Print the JSON Schema of the run config (for editor validation and completion)."""
    from experiments.config import config_schema

    _print_json(config_schema())


@catalog_app.command("gpus")
def catalog_gpus(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """GPUs with peak FLOP/s, memory, bandwidth and ridge points (16-bit: bf16, or fp16 where a part lacks bf16)."""
    from experiments.tables import gpu_rows, print_rows

    rows = gpu_rows()
    _print_json(rows) if as_json else print_rows("GPUs", rows, ["name", "memory_gb", "memory_bw_gbps", "half_dtype",
                                                                "half_tflops", "fp8_tflops", "ridge_half", "scaleup",
                                                                "price_per_hour"])


@catalog_app.command("links")
def catalog_links(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Links and host-side tiers (PCIe, NVLink, InfiniBand, Ethernet, host DRAM, NVMe) with peak and achievable
    bandwidth, latency and capacity: the names a GPU entry, a cluster or an offload tier refers to."""
    from experiments.tables import print_rows
    from sim.hardware import list_links

    rows = [{"name": k.name, "kind": k.kind, "peak_gbps": k.bw_gbps_per_direction,
             "achievable_fraction": k.achievable_fraction, "achievable_gbps": round(k.bandwidth / 1e9, 1),
             "latency_us": k.latency_us, "capacity_gb": k.capacity_gb, "display_name": k.display_name}
            for k in list_links()]
    _print_json(rows) if as_json else print_rows("Links", rows, ["name", "kind", "peak_gbps", "achievable_gbps",
                                                                 "latency_us", "capacity_gb"])


@catalog_app.command("models")
def catalog_models(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Models with parameters, active parameters and KV bytes per token."""
    from experiments.tables import model_rows, print_rows

    rows = model_rows()
    _print_json(rows) if as_json else print_rows("Models", rows, ["name", "hf_id", "params_b", "active_params_b",
                                                                  "kv_bytes_per_token", "attention", "layers"])


@catalog_app.command("engines")
def catalog_engines(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Engine profiles (per-step host overheads)."""
    from dataclasses import asdict

    from experiments.tables import print_rows
    from sim.cost import list_engine_profiles

    rows = [asdict(p) for p in list_engine_profiles()]
    _print_json(rows) if as_json else print_rows("Engine profiles", rows, ["name", "step_overhead_s",
                                                                           "per_seq_overhead_s", "description"])


@catalog_app.command("plugins")
def catalog_plugins(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Every registered plugin by kind (schedulers, workloads, arrival processes, ...) with its summary."""
    from experiments.docs_gen import plugin_table
    from experiments.tables import print_rows

    rows = plugin_table()
    _print_json(rows) if as_json else print_rows("Registered plugins", rows, ["kind", "name", "summary"])


@catalog_app.command("policies")
def catalog_policies(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Serving policies by kind (schedulers, orderings, preemption, victims, admission, KV allocation, speculative
    decoding, routers) with the YAML key that selects them and their options."""
    from experiments.docs_gen import policy_table
    from experiments.tables import print_rows

    rows = policy_table()
    if as_json:
        _print_json(rows)
        return
    for r in rows:
        r["options"] = "; ".join(f"{k}={v['default']!r}" for k, v in r["options"].items())
    print_rows("Serving policies", rows, ["kind", "config_key", "name", "summary", "options"])


@catalog_app.command("constants")
def catalog_constants(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Every cost-model constant with value, unit and source, and the values some GPU generations replace."""
    from experiments.tables import print_rows
    from sim.cost import constants_table, gpu_overrides_table

    rows = [{**r, "gpus": "all (default)"} for r in constants_table()] + gpu_overrides_table()
    _print_json(rows) if as_json else print_rows("Cost-model constants", rows, ["name", "gpus", "value", "unit",
                                                                                "source"])


@app.command()
def roofline(
    model: str = typer.Option(..., "--model", "-m", help="Model name, HF id or config.json path."),
    gpu: str = typer.Option(..., "--gpu", "-g", help="GPU name."),
    tp: int = typer.Option(1, "--tp"),
    batch: int = typer.Option(1, "--batch", "-b", help="Batch for both iterations."),
    prompt_len: int = typer.Option(1024, "--prompt-len", help="Prompt tokens of the prefill iteration."),
    context: int = typer.Option(1024, "--context", help="Context of the decode iteration."),
    weight_dtype: Optional[str] = typer.Option(None, "--weight-dtype"),
    kv_dtype: Optional[str] = typer.Option(None, "--kv-dtype"),
    out: Path = typer.Option(Path("roofline.html"), "--out", "-o", help="HTML file to write."),
) -> None:
    """Write a plotly roofline chart placing the ops of a prefill and a decode iteration."""
    from experiments.charts import roofline_figure
    from sim.estimate import estimate as run_estimate

    pre = run_estimate(model, gpu, tp=tp, batch=batch, prompt_len=prompt_len, weight_dtype=weight_dtype,
                       kv_dtype=kv_dtype)
    dec = run_estimate(model, gpu, tp=tp, batch=batch, context=context, weight_dtype=weight_dtype,
                       kv_dtype=kv_dtype)
    fig = roofline_figure(pre, dec)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(str(out), include_plotlyjs=True)
    typer.echo(f"wrote {out}")


@workload_app.command("describe")
def workload_describe(
    source: Path = typer.Argument(..., help="A workload or run config (YAML), or a trace file (CSV, Parquet, JSONL, JSON)."),
    fmt: str = typer.Option("auto", "--format", "-f", help="Trace format (auto: sniffed): csv, azure_2023, azure_2024, "
                                                          "mooncake, burstgpt, sharegpt, vidur."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed for generated workloads (default: the config's, else "
                                                             "0); for a run config, the run's seed, from which the "
                                                             "workload is drawn as `servesim run` draws it."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write a plotly HTML page here."),
    as_json: bool = typer.Option(False, "--json", help="Print the statistics as one JSON object."),
) -> None:
    """Rate over time, inter-arrival CV, length percentiles and the prefix-reuse upper bound of a workload."""
    from workloads.describe import describe

    if out is not None:
        check_writable(out, "--out", folder=False)
    d = describe(source, fmt=fmt, seed=seed)
    if out is not None:
        from experiments.workload_report import write_workload_report

        write_workload_report(d, out)
    if as_json:
        _print_json(d.summary())
        return
    from experiments.tables import print_rows
    from experiments.workload_report import summary_rows

    print_rows(f"Workload {source}", [{"statistic": k, "value": v} for k, v in summary_rows(d.summary())],
               ["statistic", "value"])
    if out is not None:
        typer.echo(f"wrote {out}")


def main() -> None:
    """Console entry point: user errors, usage errors included, become one line on stderr and exit code 2."""
    from pydantic import ValidationError

    try:
        code = app(standalone_mode=False)
    except ServesimError as exc:
        typer.echo(f"servesim: error: {exc}", err=True)
        sys.exit(2)
    except ValidationError as exc:
        from experiments.config import format_validation_error

        typer.echo(f"servesim: error: {format_validation_error(exc)}", err=True)
        sys.exit(2)
    except OSError as exc:                     # a file that cannot be read or written: the user's to fix
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        typer.echo(f"servesim: error: {exc.strerror or exc}{where}", err=True)
        sys.exit(2)
    except typer.Abort:
        typer.echo("servesim: aborted", err=True)
        sys.exit(1)
    except typer.TyperException as exc:       # click's usage errors: bad option value, missing argument, ...
        message = " ".join((exc.format_message() if hasattr(exc, "format_message") else str(exc)).split())
        if message:                            # empty when the help was shown for a bare command
            typer.echo(f"servesim: error: {message}", err=True)
        sys.exit(getattr(exc, "exit_code", 2) or 2)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
