"""Study (e): paged KV allocation (PagedAttention) against contiguous max-length reservation.

    python experiments/examples/paged_vs_contiguous.py [--out out/paged_vs_contiguous] [--docs]

Runs the sweep in paged_vs_contiguous.yaml (10 runs: two allocators x five request rates, about 15 s
on 2 cores; resumable), then draws the mean running batch (sequences computed together),
output throughput, p50 end-to-end latency and p99 TTFT against the offered rate, one line per
allocator. Writes the sweep's report.html and results table under --out, and
paged_vs_contiguous.html/.png (PNG needs kaleido); --docs also writes the PNG to docs/studies/.
"""
from __future__ import annotations

from pathlib import Path

from experiments import charts
from experiments.sweep import run_sweep

HERE = Path(__file__).resolve().parent
ALLOC, RATE = "kv_allocation", "workload.stages[0].rate"
METRICS = ("batch.mean_running", "throughput.output_tokens_per_s", "e2e_s.p50", "ttft_s.p99")
TITLES = ("mean running batch (sequences)", "output tokens/s", "p50 E2E latency (s)", "p99 TTFT (s)")


def main(argv: list[str] | None = None) -> None:
    """Run the KV-allocation study's sweep, print its table and write its chart."""
    args = charts.study_parser(__doc__, "out/paged_vs_contiguous",
                               "also write docs/studies/paged_vs_contiguous.png").parse_args(argv)

    res = run_sweep(HERE / "paged_vs_contiguous.yaml", args.out, workers=args.workers)
    ok = res.table[res.table["status"] == "ok"]
    fig = charts.factor_figure(ok, RATE, metrics=METRICS, group=ALLOC)
    for annotation, title in zip(fig.layout.annotations, TITLES):
        annotation.text = title
    fig.update_yaxes(type="log", col=3)
    fig.update_yaxes(type="log", col=4)
    fig.update_xaxes(title_text="offered rate (req/s)")
    fig.update_layout(title="Llama-3.1-8B on H100 with 16 GB of KV cache: paged vs contiguous (max_model_len 8,192) "
                            "allocation", height=450)
    charts.save_study_figure(fig, args.out, "paged_vs_contiguous", args.docs, width=1300)
    cols = [ALLOC, RATE, *METRICS, "tpot_s.p50", "kv.peak_usage", "preemptions", "memory.num_blocks"]
    print(ok[cols].sort_values([RATE, ALLOC]).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"report: {res.report}")


if __name__ == "__main__":
    main()
