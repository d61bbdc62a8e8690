"""Study (j): admission control (bounded_queue, slo_feasible) against none, under overload.

    python experiments/examples/admission_control.py [--out out/admission_control] [--docs]

Runs the sweep in admission_control.yaml (20 runs: five policies x four request rates, about 20 s on
2 cores; resumable), then draws the fraction of requests refused (`summary.requests.rejected` over
`requests.total`), the goodput (requests per second served with TTFT <= 1 s; refused ones count as
missed) and the p99 TTFT of the admitted requests against the offered rate, one line per policy.
Writes the sweep's report.html and results table under --out, and admission_control.html/.png (PNG
needs kaleido); --docs also writes the PNG to docs/studies/.
"""
from __future__ import annotations

import json
from pathlib import Path

from experiments import charts
from experiments.sweep import run_sweep

HERE = Path(__file__).resolve().parent
RATE = "workload.stages[0].rate"
PANELS = (("rejected_fraction", "refused at arrival"), ("slo.goodput_rps", "goodput: req/s with TTFT <= 1 s"),
          ("ttft_s.p99", "p99 TTFT of admitted requests (s)"))


def label(cell) -> str:
    """A short name for an admission cell of the results table (a JSON string or None)."""
    if cell is None or cell != cell:
        return "none"
    spec = json.loads(cell)
    if spec["type"] == "bounded_queue":
        return f"bounded_queue {spec['max_queue']}"
    return f"slo_feasible slack {spec.get('slack', 1.0):g}"


def main(argv: list[str] | None = None) -> None:
    """Run the admission-control study's sweep, print its table and write its chart."""
    args = charts.study_parser(__doc__, "out/admission_control",
                               "also write docs/studies/admission_control.png").parse_args(argv)

    res = run_sweep(HERE / "admission_control.yaml", args.out, workers=args.workers)
    ok = res.table[res.table["status"] == "ok"].copy()
    ok["policy"] = ok["admission"].map(label)
    ok["rejected_fraction"] = ok["requests.rejected"] / ok["requests.total"]
    fig = charts.factor_figure(ok, RATE, metrics=[m for m, _ in PANELS], group="policy")
    for annotation, (_, title) in zip(fig.layout.annotations, PANELS):
        annotation.text = title
    fig.update_yaxes(tickformat=".0%", row=1, col=1)
    fig.update_yaxes(type="log", row=1, col=3)
    fig.update_xaxes(title_text="offered rate (req/s)", type="linear")
    fig.update_layout(title="Llama-3.1-8B on H100 (64 sequences), TTFT target 1 s: admission control under overload",
                      height=450)
    charts.save_study_figure(fig, args.out, "admission_control", args.docs)
    cols = ["policy", RATE, "rejected_fraction", "slo.attainment", "slo.goodput_rps", "ttft_s.p50", "ttft_s.p99",
            "throughput.requests_per_s", "throughput.output_tokens_per_s"]
    print(ok[cols].sort_values([RATE, "policy"]).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"report: {res.report}")


if __name__ == "__main__":
    main()
