"""Readable terminal tables (rich) for the CLI; JSON output bypasses this module."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table

from sim.hardware import list_gpus
from sim.models import list_models


def _fmt(v) -> str:
    if isinstance(v, float):
        if v == 0:
            return "0"
        if abs(v) >= 1e4 or abs(v) < 1e-3:
            return f"{v:.3g}"
        return f"{v:.4g}"
    return "" if v is None else str(v)


def print_rows(title: str, rows: list[dict], columns: list[str]) -> None:
    """Print `rows` as a terminal table with the given columns."""
    table = Table(title=title)
    for c in columns:
        table.add_column(c, overflow="fold")
    for r in rows:
        table.add_row(*(_fmt(r.get(c)) for c in columns))
    Console().print(table)


def gpu_rows() -> list[dict]:
    """One row per catalogued GPU: peaks, memory, bandwidth, ridge points, links, price."""
    rows = []
    for g in list_gpus():
        peaks = {f"{d}_tflops": v for d, v in g.peak_tflops.items()}
        ridges = {f"ridge_{d}": g.ridge_point(d) for d in g.peak_tflops if g.peak_tflops[d]}
        # the 16-bit rate the part serves at: bf16, or fp16 on parts without bf16 (T4, V100, some edge SoCs)
        half = "bf16" if g.peak_tflops.get("bf16") else "fp16" if g.peak_tflops.get("fp16") else None
        rows.append({"name": g.name, "display_name": g.display_name, "vendor": g.vendor, "memory_gb": g.memory_gb,
                     "usable_memory_gib": g.usable_memory_gib, "memory_bw_gbps": g.memory_bw_gbps, **peaks, **ridges,
                     "half_tflops": g.peak_tflops.get(half) if half else None,
                     "half_dtype": half, "ridge_half": g.ridge_point(half) if half else None,
                     "l2_mb": g.l2_mb, "scaleup": g.scaleup, "scaleup_bw_gbps": g.scaleup_bw_gbps,
                     "host_link": g.host_link, "tdp_w": g.tdp_w, "price_per_hour": g.price_per_hour,
                     "source": g.source})
    return rows


def model_rows() -> list[dict]:
    """One row per catalogued model: parameters, KV bytes per token, attention kind, shape."""
    return [{"name": m.name, "hf_id": m.hf_id, "params_b": m.total_params / 1e9,
             "active_params_b": m.active_params / 1e9, "kv_bytes_per_token": m.kv_bytes_per_token(2.0),
             "attention": m.attention_type, "layers": m.num_layers, "hidden": m.hidden_size,
             "experts": m.num_experts, "top_k": m.experts_per_token, "context": m.max_position_embeddings,
             "default_weight_dtype": m.default_weight_dtype, "source": m.source} for m in list_models()]


def print_estimate(est) -> None:
    """Print an iteration estimate op by op (`servesim estimate`)."""
    d = est.as_dict()
    title = (f"{d['model']} on {d['tp']}x {d['gpu']}" + (f", experts over {d['ep']} GPUs" if d["ep"] > 1 else "")
             + f" ({d['weight_dtype']} weights, {d['kv_dtype']} KV, "
             f"engine {d['engine']}): {d['phase']} batch {d['batch']}"
             + (f", prompt {d['prompt_len']}" + (f" after {d['context']} cached" if d["context"] else "")
                if d["phase"] == "prefill" else f", context {d['context']}"))
    table = Table(title=title)
    # op names never wrap or get cut to "attention_p…" in an 80-column (or piped) terminal
    table.add_column("op", no_wrap=True, min_width=max(len(op["name"]) for op in d["breakdown"]))
    for c in ("ms", "share", "GFLOP", "MB", "FLOP/B", "bound"):
        table.add_column(c, justify="left" if c == "bound" else "right")
    for op in d["breakdown"]:
        table.add_row(op["name"], f"{op['time_s'] * 1e3:.3f}", f"{op['time_s'] / d['latency_s']:.0%}",
                      f"{op['flops'] / 1e9:.2f}", f"{op['bytes'] / 1e6:.1f}",
                      _fmt(op["intensity"]) if op["intensity"] is not None else "-", op["bound"])
    table.add_row("total", f"{d['latency_s'] * 1e3:.3f}", "100%", f"{d['flops'] / 1e9:.2f}",
                  f"{d['bytes'] / 1e6:.1f}", _fmt(d["intensity"]), d["bound"], style="bold")
    console = Console()
    console.print(table)
    mem = d["memory"]
    gpus = d.get("tp", 1)
    scope = f"replica ({gpus} GPUs): " if gpus > 1 else ""
    console.print(f"{scope}{d['tokens_per_s']:.1f} tokens/s; per GPU: MFU {d['mfu']:.1%}, MBU {d['mbu']:.1%}, "
                  f"weights {mem['weights_gb']:.2f} GB, KV {mem['kv_bytes_per_token'] / 1024:.1f} KiB/token, "
                  f"KV capacity {mem['max_kv_tokens']:,} tokens"
                  + ("" if mem["kv_fits"] else "  [bold red]batch KV does not fit in memory[/]"))
    if d.get("power_w"):
        each = f" x {gpus} GPUs" if gpus > 1 else ""
        console.print(f"energy: {d['power_w']:g} W{each}, {d['energy_j_per_token']:.3g} J/token")
    else:
        console.print("energy: the catalogue has no TDP for this device; give --power-w to get J/token")
    off = d.get("offload")
    if off:
        pl = off["placement"]
        where = ", ".join(f"{k}={v:g}" for k, v in pl.items() if isinstance(v, float) and v) if isinstance(pl, dict) else pl
        console.print(f"offload: {where}; {off['h2d_bytes'] / 1e9:.2f} GB over PCIe "
                      f"({off['pcie_gbps']:g} GB/s) per step" + (", transfer-bound" if off["transfer_bound"] else ""))


_BAND_ROWS = (("ttft_s.mean", "TTFT mean (ms)", 1e3), ("ttft_s.p99", "TTFT p99 (ms)", 1e3),
              ("tpot_s.mean", "TPOT mean (ms)", 1e3), ("e2e_s.mean", "E2E mean (ms)", 1e3),
              ("e2e_s.p99", "E2E p99 (ms)", 1e3), ("throughput.output_tokens_per_s", "output tok/s", 1.0))


def print_replications(rep: dict) -> None:
    """The spread of the main metrics across the seeds of `servesim run --seeds N`."""
    table = Table(title=f"across {rep['n']} seeds ({rep['seeds'][0]}-{rep['seeds'][-1]})"
                        + (" - a trace's arrivals are the same under every seed" if rep.get("trace") else ""))
    for c in ("metric", "mean", "std", "min", "p5", "p50", "p95", "max"):
        table.add_column(c, justify="left" if c == "metric" else "right")
    for key, label, scale in _BAND_ROWS:
        b = rep["metrics"].get(key)
        if b is not None:
            table.add_row(label, *(_fmt(b[q] * scale) for q in ("mean", "std", "min", "p5", "p50", "p95", "max")))
    Console().print(table)


def print_summary(s: dict, out=None) -> None:
    """The readable version of summary.json."""
    d = s["deployment"]
    replicas, ep, pp = d.get("replicas", 1), d.get("ep", 1), d.get("pp", 1)
    if replicas > 1 or pp > 1:
        layout = f"{replicas} x TP{d['tp']}" + (f" PP{pp}" if pp > 1 else "") + f" {d['gpu']}"
    else:
        layout = f"{d['tp']}x {d['gpu']}"
    table = Table(title=f"{d['model']} on {layout}" + (f", EP{ep}" if ep > 1 else "")
                        + f" ({d['scheduler']} scheduler)")
    for c in ("metric", "mean", "p50", "p90", "p99"):
        table.add_column(c, justify="left" if c == "metric" else "right")
    for key, label in (("ttft_s", "TTFT (ms)"), ("tpot_s", "TPOT (ms)"), ("itl_s", "ITL (ms)"), ("e2e_s", "E2E (ms)")):
        d = s[key]
        table.add_row(label, *("-" if d[q] is None else f"{d[q] * 1e3:.1f}" for q in ("mean", "p50", "p90", "p99")))
    console = Console()
    console.print(table)
    r, th, kv, sim = s["requests"], s["throughput"], s["kv"], s["sim"]
    console.print(f"requests: {r['completed']:,}/{r['total']:,} completed ({r['dropped']} dropped); "
                  f"throughput {_fmt(th['requests_per_s'])} req/s, {_fmt(th['output_tokens_per_s'])} output tok/s")
    console.print(f"KV: prefix hit rate {kv['prefix_hit_rate']:.1%}, peak usage {kv['peak_usage']:.1%} of "
                  f"{kv['capacity_tokens']:,} tokens; preemptions {s['preemptions']}; mean batch "
                  f"{s['batch']['mean_running']:.1f}")
    classes = s.get("classes")
    if classes:
        ct = Table(title="per request class")
        for c in ("class", "requests", "TTFT p99 (ms)", "SLO attainment", "goodput (req/s)"):
            ct.add_column(c, justify="left" if c == "class" else "right")
        for name, c in classes.items():
            p99 = c["ttft_s"]["p99"]
            ct.add_row(name, f"{c['requests']:,}", "-" if p99 is None else f"{p99 * 1e3:.1f}",
                       f"{c['attainment']['both']:.1%}", _fmt(c["goodput_rps"]))
        console.print(ct)
    console.print(f"simulated {sim['simulated_time_s']:.1f} s in {sim['wall_time_s']:.2f} s wall "
                  f"({sim['iterations']:,} iterations)" + (f"; outputs in {out}" if out else ""))
