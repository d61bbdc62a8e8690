"""Cluster study: KV offload to host RAM / NVMe on the Mooncake conversation trace.

    python experiments/examples/offload_mooncake.py [--out out/offload_mooncake] [--trace FILE] [--docs]

Runs the sweep in offload_mooncake.yaml (10 runs, about a minute on 2 cores; resumable): host tiers of
0 / 64 / 256 / 1024 GiB and 64 GiB + 2 TiB of NVMe, at two loads. Draws the prefix hit rate split by the
tier that held the blocks (GPU, host, NVMe) and the mean / p99 TTFT against the host tier's size, with
the time steps waited for tier loads. The trace is ../shared/traces/mooncake_fast25_conversation_trace.jsonl
beside the checkout; without it (--trace to point elsewhere) the study runs on the 200-row slice shipped in
tests/data/traces, which shows the mechanism but not the numbers of docs/STUDIES.md.
"""
from __future__ import annotations

from pathlib import Path

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from experiments import charts
from experiments.config import read_yaml
from experiments.sweep import run_sweep

HERE = Path(__file__).resolve().parent
SHIPPED = HERE.parents[1] / "tests" / "data" / "traces" / "mooncake_conversation_head.jsonl"
CPU, NVME, SCALE = "engine.cpu_offload_gb", "engine.nvme_offload_gb", "workload.time_scale"


def main(argv: list[str] | None = None) -> None:
    """Run the offload sweep, print its table and write its chart."""
    ap = charts.study_parser(__doc__, "out/offload_mooncake", "also write docs/studies/offload_mooncake.png")
    ap.add_argument("--trace", type=Path, default=None, help="Mooncake JSONL trace (default: ../shared's, else the "
                                                             "shipped slice)")
    args = ap.parse_args(argv)

    sweep = read_yaml(HERE / "offload_mooncake.yaml")
    trace = args.trace or (HERE / sweep["base"]["workload"]["path"]).resolve()
    if not Path(trace).exists():
        trace = SHIPPED
        print(f"trace not found; using the shipped slice {SHIPPED}")
    sweep["base"]["workload"]["path"] = str(Path(trace).resolve())
    res = run_sweep(sweep, args.out, workers=args.workers)
    ok = res.table[res.table["status"] == "ok"].copy()
    for col in ("offload.host_hit_rate", "offload.nvme_hit_rate", "offload.copy_wait_s"):
        ok[col] = ok[col].fillna(0.0) if col in ok.columns else 0.0
    ok["label"] = [f"{int(c)} GiB" + (f" + {int(n)} GiB NVMe" if n else "") for c, n in zip(ok[CPU], ok[NVME])]

    fig = make_subplots(rows=1, cols=2, subplot_titles=("prefix hit rate by tier (slower load)",
                                                        "TTFT (solid: mean, dotted: p99)"))
    slow = ok[ok[SCALE] == ok[SCALE].max()].sort_values([NVME, CPU])
    for col, name, color in (("kv.prefix_hit_rate", "GPU cache", charts._COLORS[0]),
                             ("offload.host_hit_rate", "host DRAM tier", charts._COLORS[1]),
                             ("offload.nvme_hit_rate", "NVMe tier", charts._COLORS[2])):
        fig.add_trace(go.Bar(x=slow["label"], y=slow[col], name=name, marker_color=color), row=1, col=1)
    for i, (scale, sub) in enumerate(ok[ok[NVME] == 0].groupby(SCALE, sort=False)):
        sub = sub.sort_values(CPU)
        color = charts._COLORS[3 + i]
        name = f"time x{scale:g}"
        x = [max(c, 16) for c in sub[CPU]]            # 0 GiB drawn at the axis' left end
        fig.add_trace(go.Scatter(x=x, y=sub["ttft_s.mean"], mode="lines+markers", name=name, legendgroup=name,
                                 line={"color": color}), row=1, col=2)
        fig.add_trace(go.Scatter(x=x, y=sub["ttft_s.p99"], mode="lines+markers", name=name, legendgroup=name,
                                 showlegend=False, line={"color": color, "dash": "dot"}), row=1, col=2)
    fig.update_layout(barmode="stack", template="plotly_white", height=450,
                      title="Llama-3.1-8B on one H100, Mooncake conversation trace: KV offload tiers")
    fig.update_yaxes(tickformat=".0%", row=1, col=1)
    fig.update_xaxes(type="log", title_text="host DRAM tier (GiB; 16 = none)", row=1, col=2)
    fig.update_yaxes(type="log", title_text="seconds", row=1, col=2)
    charts.save_study_figure(fig, args.out, "offload_mooncake", args.docs)
    cols = [SCALE, CPU, NVME, "kv.prefix_hit_rate", "offload.host_hit_rate", "offload.nvme_hit_rate",
            "ttft_s.mean", "ttft_s.p99", "e2e_s.mean", "offload.copy_wait_s", "throughput.input_tokens_per_s"]
    print(ok[[c for c in cols if c in ok.columns]].sort_values([SCALE, NVME, CPU]).to_string(
        index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"report: {res.report}")


if __name__ == "__main__":
    main()
