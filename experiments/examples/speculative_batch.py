"""Study (h): speculative decoding's speed-up against load, from batch ~1 to ~200.

    python experiments/examples/speculative_batch.py [--out out/speculative_batch] [--docs]

Runs the sweep in speculative_batch.yaml (33 runs: no speculation and a Llama-3.2-1B draft at
alpha 0.6 and 0.8, at eleven request rates; about 30 s on 2 cores; resumable), then draws the mean
running batch, the speed-up of mean TPOT (TPOT without / with speculation) and the ratio of output
throughputs against the offered rate, one line per acceptance rate. Writes the sweep's report.html
and results table under --out, and speculative_batch.html/.png (PNG needs kaleido); --docs also
writes the PNG to docs/studies/.
"""
from __future__ import annotations

import json
from pathlib import Path

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from experiments import charts
from experiments.sweep import run_sweep

HERE = Path(__file__).resolve().parent
SPEC, RATE = "speculative", "workload.stages[0].rate"
THR = "throughput.output_tokens_per_s"


def label(cell) -> str:
    """'none' or 'alpha 0.8' for a speculative cell of the results table (a JSON string or None)."""
    if cell is None or cell != cell:
        return "none"
    return f"alpha {json.loads(cell)['acceptance_rate']:g}"


def main(argv: list[str] | None = None) -> None:
    """Run the speculative-decoding study's sweep, print its table and write its chart."""
    args = charts.study_parser(__doc__, "out/speculative_batch",
                               "also write docs/studies/speculative_batch.png").parse_args(argv)

    res = run_sweep(HERE / "speculative_batch.yaml", args.out, workers=args.workers)
    ok = res.table[res.table["status"] == "ok"].copy()
    ok["draft"] = ok[SPEC].map(label)
    base = ok[ok["draft"] == "none"].set_index(RATE)
    ok["tpot_speedup"] = base.loc[ok[RATE], "tpot_s.mean"].to_numpy() / ok["tpot_s.mean"]
    ok["throughput_ratio"] = ok[THR] / base.loc[ok[RATE], THR].to_numpy()

    panels = (("batch.mean_running", "mean running batch (sequences)"),
              ("tpot_speedup", "mean TPOT speed-up (none / speculative)"),
              ("throughput_ratio", "output throughput, speculative / none"))
    fig = make_subplots(rows=1, cols=3, subplot_titles=[t for _, t in panels])
    for i, (name, sub) in enumerate(ok.groupby("draft", sort=True)):
        sub = sub.sort_values(RATE)
        for j, (metric, _) in enumerate(panels):
            if j and name == "none":
                continue
            fig.add_trace(go.Scatter(x=sub[RATE], y=sub[metric], mode="lines+markers", name=name, legendgroup=name,
                                     showlegend=j == 0, line={"color": charts._COLORS[i]}), row=1, col=j + 1)
    fig.add_hline(y=1.0, line_dash="dot", line_color="grey", row=1, col=2)
    fig.add_hline(y=1.0, line_dash="dot", line_color="grey", row=1, col=3)
    fig.update_xaxes(type="log", title_text="offered rate (req/s)")
    fig.update_yaxes(type="log", row=1, col=1)
    fig.update_layout(title="Llama-3.1-70B TP4 on H100, Llama-3.2-1B draft, K = 4: speculative decoding vs load",
                      template="plotly_white", height=450)
    charts.save_study_figure(fig, args.out, "speculative_batch", args.docs)
    cols = ["draft", RATE, "batch.mean_running", "tpot_s.mean", "tpot_speedup", THR, "throughput_ratio",
            "e2e_s.p50", "memory.num_blocks"]
    print(ok[cols].sort_values([RATE, "draft"]).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"report: {res.report}")


if __name__ == "__main__":
    main()
