"""Cluster study: prefill-decode disaggregation ratios (xPyD) vs colocated serving on 8 H100s.

    python experiments/examples/pd_ratio.py [--out out/pd_ratio] [--docs]

Runs the points of pd_ratio.yaml (8 colocated replicas, 1P7D ... 6P2D, and 5P3D with
layer-wise KV streaming, at five request rates: 40 runs, about 30 s on 2 cores) and draws p99 TTFT,
p99 TPOT, p99 ITL and goodput under a tight SLO (TTFT <= 2 s, TPOT <= 25 ms) against the offered
rate, one line per layout. Writes results.csv and pd_ratio.html/.png under --out (PNG needs
kaleido); --docs also writes the PNG to docs/studies/.

Each point runs through this script's own `simulate` (extra columns: labels, SLO verdicts, costs)
via `experiments.sweep.run_points`; `servesim sweep` on the YAML runs the same points with the
standard columns.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from experiments import charts
from experiments.planner import SLO
from experiments.runner import run
from experiments.sweep import flatten, run_points

HERE = Path(__file__).resolve().parent
NAME = "pd_ratio"
RATE = "workload.stages[0].rate"
TIGHT = SLO(ttft_s=2.0, tpot_s=0.025)


def layout_of(cfg) -> str:
    """'8 colocated', '3P5D', '4P4D layerwise'."""
    if cfg.pools is None:
        return f"{cfg.deployment.replicas} colocated"
    p = cfg.pools
    return f"{p.prefill.replicas}P{p.decode.replicas}D" + (" layerwise" if p.kv_transfer.layerwise else "")


def simulate(cfg, slo: SLO) -> dict:
    """One point: the flattened summary, the verdicts of the sweep's SLO and the tight one, pool loads."""
    res = run(cfg)
    s = res.summary
    row = flatten({k: v for k, v in s.items() if k not in ("replicas", "links", "pools")})
    row.update({f"slo.{k}": v for k, v in slo.evaluate(res.requests, s).items()})
    row.update({f"tight.{k}": v for k, v in TIGHT.evaluate(res.requests, s).items()})
    row["layout"] = layout_of(cfg)
    for name, pool in s.get("pools", {}).items():
        row[f"busy.{name}"] = pool["busy_fraction"]
    return row



def figure(df: pd.DataFrame) -> go.Figure:
    """2 x 2 panels against the rate, one line per layout (layer-wise variants dashed)."""
    panels = [("ttft_s.p99", "p99 TTFT (s, log)", True), ("tpot_s.p99", "p99 TPOT (s)", False),
              ("itl_s.p99", "p99 ITL (s, log)", True),
              ("tight.goodput_rps", "goodput (req/s meeting TTFT <= 2 s and TPOT <= 25 ms)", False)]
    fig = make_subplots(rows=2, cols=2, subplot_titles=[p[1] for p in panels], vertical_spacing=0.12)
    order = list(dict.fromkeys(df["layout"]))
    base_color = {}
    for i, layout in enumerate(order):
        sub = df[df["layout"] == layout].sort_values(RATE)
        plain = layout.replace(" layerwise", "")
        color = base_color.setdefault(plain, charts._COLORS[len(base_color) % len(charts._COLORS)])
        for k, (metric, _, _) in enumerate(panels):
            fig.add_trace(go.Scatter(x=sub[RATE], y=sub[metric], mode="lines+markers", name=layout,
                                     legendgroup=layout, showlegend=k == 0,
                                     line={"color": color, "dash": "dash" if "layerwise" in layout else None,
                                           "width": 3 if layout.endswith("colocated") else 2}),
                          row=k // 2 + 1, col=k % 2 + 1)
    for k, (_, _, log) in enumerate(panels):
        if log:
            fig.update_yaxes(type="log", row=k // 2 + 1, col=k % 2 + 1)
    fig.add_hline(y=2.0, line_dash="dot", line_color="grey", row=1, col=1)
    fig.add_hline(y=0.025, line_dash="dot", line_color="grey", row=1, col=2)
    fig.add_trace(go.Scatter(x=[df[RATE].min(), df[RATE].max()], y=[df[RATE].min(), df[RATE].max()],
                             mode="lines", name="offered rate", line={"color": "grey", "dash": "dot"}), row=2, col=2)
    fig.update_xaxes(title_text="offered rate (req/s)", row=2)
    fig.update_layout(title="Llama-3.1-8B on 8x H100, 4k-token prompts: colocated vs prefill/decode pools",
                      template="plotly_white", height=750, legend_title_text="layout (8 GPUs each)")
    return fig


def main(argv: list[str] | None = None) -> None:
    """Run the study, print its table and write its chart."""
    args = charts.study_parser(__doc__, f"out/{NAME}", f"also write docs/studies/{NAME}.png").parse_args(argv)

    df = run_points(HERE / f"{NAME}.yaml", simulate, columns=[RATE], workers=args.workers)
    args.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out / "results.csv", index=False)
    fig = figure(df)
    charts.save_study_figure(fig, args.out, NAME, args.docs, height=750)

    for c in ("kv_transfer_s.p50", "kv_transfer_s.p99", "busy.prefill", "busy.decode", "busy.replicas"):
        if c not in df.columns:
            df[c] = float("nan")
    cols = ["layout", RATE, "ttft_s.p50", "ttft_s.p99", "tpot_s.p99", "itl_s.p99", "kv_transfer_s.p50",
            "kv_transfer_s.p99", "busy.prefill", "preemptions", "throughput.requests_per_s", "slo.goodput_rps",
            "tight.goodput_rps"]
    order = {name: i for i, name in enumerate(dict.fromkeys(df["layout"]))}
    table = df.sort_values([RATE], kind="stable").sort_values("layout", key=lambda s: s.map(order), kind="stable")
    print(table[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))


if __name__ == "__main__":
    main()
