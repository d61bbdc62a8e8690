"""Study (g): queue orderings (fcfs, priority, edf, fair, sjf) under overload with two request classes.

    python experiments/examples/ordering_slo.py [--out out/ordering_slo] [--docs]

Runs the sweep in ordering_slo.yaml (25 runs: five orderings x five request rates, about 25 s on 2
cores; resumable), then draws each class's TTFT SLO attainment (`summary.classes.<tenant>.attainment.ttft`)
and p50 TTFT against the offered rate, one line per ordering. Writes the sweep's report.html and
results table under --out, and ordering_slo.html/.png (PNG needs kaleido); --docs also writes the PNG
to docs/studies/.
"""
from __future__ import annotations

from pathlib import Path

from experiments import charts
from experiments.sweep import run_sweep

HERE = Path(__file__).resolve().parent
ORDER, RATE = "ordering", "workload.stages[0].rate"
PANELS = (("classes.interactive.attainment.ttft", "interactive: TTFT <= 1 s"),
          ("classes.batch.attainment.ttft", "batch: TTFT <= 30 s"),
          ("classes.interactive.ttft_s.p50", "interactive: p50 TTFT (s)"),
          ("classes.batch.ttft_s.p50", "batch: p50 TTFT (s)"))


def main(argv: list[str] | None = None) -> None:
    """Run the ordering study's sweep, print its table and write its chart."""
    args = charts.study_parser(__doc__, "out/ordering_slo", "also write docs/studies/ordering_slo.png").parse_args(argv)

    res = run_sweep(HERE / "ordering_slo.yaml", args.out, workers=args.workers)
    ok = res.table[res.table["status"] == "ok"]
    fig = charts.factor_figure(ok, RATE, metrics=[m for m, _ in PANELS], group=ORDER)
    for annotation, (_, title) in zip(fig.layout.annotations, PANELS):
        annotation.text = title
    fig.update_yaxes(tickformat=".0%", range=[0, 1.05], col=1)
    fig.update_yaxes(tickformat=".0%", range=[0, 1.05], col=2)
    fig.update_yaxes(type="log", col=3)
    fig.update_yaxes(type="log", col=4)
    fig.update_xaxes(title_text="offered rate (req/s)", type="linear")
    fig.update_layout(title="Llama-3.1-8B on H100 (32 sequences), 25% interactive / 75% batch: "
                            "queue ordering vs per-class TTFT", height=450)
    charts.save_study_figure(fig, args.out, "ordering_slo", args.docs, width=1300)
    cols = [ORDER, RATE, *(m for m, _ in PANELS), "classes.interactive.ttft_s.p99", "classes.batch.ttft_s.p99",
            "throughput.output_tokens_per_s"]
    print(ok[cols].sort_values([RATE, ORDER]).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"report: {res.report}")


if __name__ == "__main__":
    main()
