"""Study (a): how the prefill chunk size (max_num_batched_tokens) trades p99 ITL against TTFT.

    python experiments/examples/chunk_size_itl.py [--out out/chunk_size_itl] [--docs]

Runs the sweep in chunk_size_itl.yaml (21 runs, about 10 s on 2 cores; resumable), then draws
p99 ITL, p99 TPOT and p99 TTFT against the chunk size, one line per request rate. Writes the
sweep's report.html and results table under --out, and chunk_size_itl.html/.png (PNG needs
kaleido); --docs also writes the PNG to docs/studies/ for docs/STUDIES.md.
"""
from __future__ import annotations

from pathlib import Path

from experiments import charts
from experiments.sweep import run_sweep

HERE = Path(__file__).resolve().parent
CHUNK, RATE = "engine.max_num_batched_tokens", "workload.stages[0].rate"


def main(argv: list[str] | None = None) -> None:
    """Run the chunk-size study's sweep, print its table and write its chart."""
    args = charts.study_parser(__doc__, "out/chunk_size_itl",
                               "also write docs/studies/chunk_size_itl.png").parse_args(argv)

    res = run_sweep(HERE / "chunk_size_itl.yaml", args.out, workers=args.workers)
    ok = res.table[res.table["status"] == "ok"]
    fig = charts.factor_figure(ok, CHUNK, metrics=("itl_s.p99", "tpot_s.p99", "ttft_s.p99"), group=RATE)
    fig.update_yaxes(type="log")
    fig.update_layout(title="Llama-3.1-8B on H100, mixed long prompts: chunk size vs p99 latencies "
                            "(one line per req/s)", height=450)
    charts.save_study_figure(fig, args.out, "chunk_size_itl", args.docs)
    cols = [CHUNK, RATE, "itl_s.p99", "tpot_s.p99", "ttft_s.p50", "ttft_s.p99", "throughput.output_tokens_per_s"]
    print(ok[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"report: {res.report}")


if __name__ == "__main__":
    main()
