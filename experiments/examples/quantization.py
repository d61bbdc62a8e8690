"""Study (i): weight precision (bf16, fp8, int4) and KV-cache precision (bf16, fp8) for a 70B model on 2 GPUs.

    python experiments/examples/quantization.py [--out out/quantization] [--docs]

Runs the sweep in quantization.yaml (36 runs: three weight dtypes x two KV dtypes x six request
rates, about 20 s on 2 cores; resumable), then draws the KV blocks each variant leaves
(`summary.memory.num_blocks`), its output throughput and its mean TPOT against the offered rate.
Writes the sweep's report.html and results table under --out, and quantization.html/.png (PNG needs
kaleido); --docs also writes the PNG to docs/studies/.
"""
from __future__ import annotations

from pathlib import Path

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from experiments import charts
from experiments.sweep import run_sweep

HERE = Path(__file__).resolve().parent
W, KV, RATE = "model.weight_dtype", "model.kv_dtype", "workload.stages[0].rate"
THR = "throughput.output_tokens_per_s"
WEIGHTS = ("bf16", "fp8", "int4")


def main(argv: list[str] | None = None) -> None:
    """Run the quantization study's sweep, print its table and write its chart."""
    args = charts.study_parser(__doc__, "out/quantization", "also write docs/studies/quantization.png").parse_args(argv)

    res = run_sweep(HERE / "quantization.yaml", args.out, workers=args.workers)
    ok = res.table[res.table["status"] == "ok"].copy()
    ok["variant"] = "weights " + ok[W] + ", KV " + ok[KV]

    fig = make_subplots(rows=1, cols=3, subplot_titles=["KV blocks (16 tokens each)", "output tokens/s",
                                                        "mean TPOT (s)"])
    blocks = ok.drop_duplicates("variant").sort_values([W, KV], key=lambda c: c.map(
        {d: i for i, d in enumerate(WEIGHTS)}).fillna(c.map({"bf16": 0, "fp8": 1})))
    fig.add_trace(go.Bar(x=blocks[W] + "/" + blocks[KV], y=blocks["memory.num_blocks"],
                         text=[f"{v:,.0f}" for v in blocks["memory.num_blocks"]], textposition="outside",
                         marker={"color": [charts._COLORS[WEIGHTS.index(w)] for w in blocks[W]],
                                 "opacity": [1.0 if k == "fp8" else 0.6 for k in blocks[KV]]},
                         showlegend=False), row=1, col=1)
    for variant, sub in ok.groupby("variant", sort=False):
        sub = sub.sort_values(RATE)
        line = {"color": charts._COLORS[WEIGHTS.index(sub[W].iloc[0])],
                "dash": "dot" if sub[KV].iloc[0] == "fp8" else "solid"}
        for j, metric in enumerate((THR, "tpot_s.mean")):
            fig.add_trace(go.Scatter(x=sub[RATE], y=sub[metric], mode="lines+markers", name=variant,
                                     legendgroup=variant, showlegend=j == 0, line=line), row=1, col=j + 2)
    fig.update_yaxes(type="log", row=1, col=1)
    fig.update_xaxes(title_text="weights / KV dtype", tickangle=0, row=1, col=1)
    fig.update_xaxes(type="log", title_text="offered rate (req/s)", row=1, col=2)
    fig.update_xaxes(type="log", title_text="offered rate (req/s)", row=1, col=3)
    fig.update_yaxes(type="log", row=1, col=3)
    fig.update_layout(title="Llama-3.1-70B on 2 x H100 (TP 2): weight and KV-cache precision (dotted: fp8 KV)",
                      template="plotly_white", height=480)
    charts.save_study_figure(fig, args.out, "quantization", args.docs, width=1300)
    cols = [W, KV, RATE, "memory.weights_gb", "memory.num_blocks", "batch.mean_running", THR, "tpot_s.mean",
            "tpot_s.p99", "ttft_s.p50", "preemptions"]
    print(ok[cols].sort_values([RATE, W, KV]).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"report: {res.report}")


if __name__ == "__main__":
    main()
