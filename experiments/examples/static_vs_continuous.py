"""Study (d): request-level batching (static, dynamic) against iteration-level batching (orca, vllm).

    python experiments/examples/static_vs_continuous.py [--out out/static_vs_continuous] [--docs]

Runs the sweep in static_vs_continuous.yaml (24 runs: four schedulers x six request rates, about
20 s on 2 cores; resumable), then draws output throughput and p50 / p99 end-to-end latency against
the offered rate, one line per scheduler, and prints how many times more throughput continuous
batching gets. Writes the sweep's report.html and results table under --out, and
static_vs_continuous.html/.png (PNG needs kaleido); --docs also writes the PNG to docs/studies/.
"""
from __future__ import annotations

from pathlib import Path

from experiments import charts
from experiments.sweep import run_sweep

HERE = Path(__file__).resolve().parent
SCHED, RATE = "scheduler", "workload.stages[0].rate"
THR = "throughput.output_tokens_per_s"


def main(argv: list[str] | None = None) -> None:
    """Run the batching study's sweep, print its table and write its chart."""
    args = charts.study_parser(__doc__, "out/static_vs_continuous",
                               "also write docs/studies/static_vs_continuous.png").parse_args(argv)

    res = run_sweep(HERE / "static_vs_continuous.yaml", args.out, workers=args.workers)
    ok = res.table[res.table["status"] == "ok"]
    fig = charts.factor_figure(ok, RATE, metrics=(THR, "e2e_s.p50", "e2e_s.p99"), group=SCHED)
    fig.update_yaxes(type="log", col=2)
    fig.update_yaxes(type="log", col=3)
    fig.update_xaxes(title_text="offered rate (req/s)")
    for tr in fig.data:           # orca and vllm coincide here: draw vllm wide and pale, orca dashed on top
        if tr.name.endswith("=vllm"):
            tr.update(line={"width": 7}, opacity=0.45)
        elif tr.name.endswith("=orca"):
            tr.update(line={"dash": "dash"})
    fig.data = tuple(sorted(fig.data, key=lambda tr: tr.name.endswith("=orca")))
    fig.update_layout(title="Llama-3.1-8B on H100, variable output lengths: batching scheduler vs offered rate "
                            "(at most 64 sequences each)", height=450)
    charts.save_study_figure(fig, args.out, "static_vs_continuous", args.docs)
    cols = [SCHED, RATE, THR, "throughput.requests_per_s", "ttft_s.p50", "e2e_s.p50", "e2e_s.p99",
            "batch.mean_running"]
    print(ok[cols].sort_values([RATE, SCHED]).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    thr = ok.pivot_table(index=RATE, columns=SCHED, values=THR)
    p50 = ok.pivot_table(index=RATE, columns=SCHED, values="e2e_s.p50")
    print("\nvllm / static and vllm / dynamic, output throughput and p50 E2E:")
    for rate in thr.index:
        t, p = thr.loc[rate], p50.loc[rate]
        print(f"  {rate:>5g} req/s: throughput x{t['vllm'] / t['static']:.2f}, x{t['vllm'] / t['dynamic']:.2f}; "
              f"p50 E2E /{p['static'] / p['vllm']:.1f}, /{p['dynamic'] / p['vllm']:.1f}")
    print(f"report: {res.report}")


if __name__ == "__main__":
    main()
