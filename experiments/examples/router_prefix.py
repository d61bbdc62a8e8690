"""Cluster study: routers for data-parallel replicas on shared-prefix traffic.

    python experiments/examples/router_prefix.py [--out out/router_prefix] [--docs]

Runs the points of router_prefix.yaml (every router, and prefix_affinity with three load guards,
at three request rates: 27 runs, about 30 s on 2 cores) and draws the cluster's prefix hit rate,
p50 and p99 TTFT and the load balance (busiest replica's completed requests over the mean)
against the offered rate, one line per router. Writes results.csv and router_prefix.html/.png
under --out (PNG needs kaleido); --docs also writes the PNG to docs/studies/.

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
NAME = "router_prefix"
RATE = "workload.stages[0].rate"


def router_label(cfg) -> str:
    """'round_robin', 'prefix_affinity (guard 8)', 'prefix_affinity (no guard)'."""
    if cfg.router != "prefix_affinity":
        return cfg.router
    guard = cfg.router_options.get("load_guard", 8)
    return f"prefix_affinity ({'no guard' if guard >= 10_000 else f'guard {guard}'})"


def simulate(cfg, slo: SLO) -> dict:
    """One point: the flattened summary, the SLO verdict, per-replica completions and hit rates."""
    res = run(cfg)
    s = res.summary
    row = flatten({k: v for k, v in s.items() if k not in ("replicas", "links", "pools")})
    row.update({f"slo.{k}": v for k, v in slo.evaluate(res.requests, s).items()})
    row["router_label"] = router_label(cfg)
    done = [r["completed"] for r in s["replicas"]]
    row["completed_per_replica"] = "/".join(str(c) for c in done)
    row["balance.max_over_mean"] = max(done) / (sum(done) / len(done))
    row["hit_rate_per_replica"] = "/".join(f"{r['prefix_hit_rate']:.2f}" for r in s["replicas"])
    return row



def figure(df: pd.DataFrame) -> go.Figure:
    """2 x 2 panels against the rate, one line per router."""
    panels = [("kv.prefix_hit_rate", "cluster prefix hit rate (prompt tokens from cache)", False),
              ("ttft_s.p50", "p50 TTFT (s, log)", True), ("ttft_s.p99", "p99 TTFT (s, log)", True),
              ("balance.max_over_mean", "load balance: busiest replica's completed / mean", False)]
    fig = make_subplots(rows=2, cols=2, subplot_titles=[p[1] for p in panels], vertical_spacing=0.12)
    for i, label in enumerate(dict.fromkeys(df["router_label"])):
        sub = df[df["router_label"] == label].sort_values(RATE)
        affinity = label.startswith("prefix_affinity")
        for k, (metric, _, _) in enumerate(panels):
            fig.add_trace(go.Scatter(x=sub[RATE], y=sub[metric], mode="lines+markers", name=label,
                                     legendgroup=label, showlegend=k == 0,
                                     line={"color": charts._COLORS[i % len(charts._COLORS)],
                                           "width": 3 if affinity else 2,
                                           "dash": "dash" if label == "session_affinity" else None}),
                          row=k // 2 + 1, col=k % 2 + 1)
    for k, (_, _, log) in enumerate(panels):
        if log:
            fig.update_yaxes(type="log", row=k // 2 + 1, col=k % 2 + 1)
    fig.update_yaxes(tickformat=".0%", range=[0, 1], row=1, col=1)
    fig.update_xaxes(title_text="offered rate (req/s, 4 replicas)", row=2)
    fig.update_layout(title="4 x Llama-3.1-8B on H100, 200 shared 4k-token system prompts: routers compared",
                      template="plotly_white", height=750, legend_title_text="router")
    return fig


def main(argv: list[str] | None = None) -> None:
    """Run the study, print its table and write its chart."""
    args = charts.study_parser(__doc__, f"out/{NAME}", f"also write docs/studies/{NAME}.png").parse_args(argv)

    df = run_points(HERE / f"{NAME}.yaml", simulate, columns=[RATE], workers=args.workers)
    args.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out / "results.csv", index=False)
    fig = figure(df)
    charts.save_study_figure(fig, args.out, NAME, args.docs, height=750)

    cols = ["router_label", RATE, "kv.prefix_hit_rate", "ttft_s.p50", "ttft_s.p99", "tpot_s.p99",
            "throughput.requests_per_s", "slo.attainment", "completed_per_replica", "balance.max_over_mean"]
    order = {name: i for i, name in enumerate(dict.fromkeys(df["router_label"]))}
    table = df.sort_values([RATE], kind="stable").sort_values("router_label", key=lambda s: s.map(order),
                                                              kind="stable")
    print(table[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"\nKV capacity per replica: {int(df['kv.capacity_tokens'].iloc[0]):,} tokens")


if __name__ == "__main__":
    main()
