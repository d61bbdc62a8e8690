"""Study (c): prefix caching on multi-turn chat sessions.

    python experiments/examples/prefix_caching_multiturn.py [--out out/prefix_caching] [--docs]

Runs the sweep in prefix_caching_multiturn.yaml (8 runs: caching off/on x four rates of new
conversations), then draws the prefix hit rate, mean and p99 TTFT against the rate, one line per
setting. Writes the sweep's report.html and results table under --out,
and prefix_caching_multiturn.html/.png (PNG needs kaleido); --docs also writes the PNG to docs/studies/.
"""
from __future__ import annotations

from pathlib import Path

from experiments import charts
from experiments.sweep import run_sweep

HERE = Path(__file__).resolve().parent
CACHE, LOAD = "engine.enable_prefix_caching", "workload.arrival.rate"


def main(argv: list[str] | None = None) -> None:
    """Run the prefix-caching study's sweep, print its table and write its chart."""
    args = charts.study_parser(__doc__, "out/prefix_caching",
                               "also write docs/studies/prefix_caching_multiturn.png").parse_args(argv)

    res = run_sweep(HERE / "prefix_caching_multiturn.yaml", args.out, workers=args.workers)
    ok = res.table[res.table["status"] == "ok"]
    fig = charts.factor_figure(ok, LOAD, metrics=("kv.prefix_hit_rate", "ttft_s.mean", "ttft_s.p99"), group=CACHE)
    fig.update_layout(title="Multi-turn chat, Llama-3.1-8B on H100: prefix caching off/on vs new conversations/s",
                      height=450)
    charts.save_study_figure(fig, args.out, "prefix_caching_multiturn", args.docs)
    cols = [CACHE, LOAD, "kv.prefix_hit_rate", "ttft_s.mean", "ttft_s.p99", "tpot_s.p99", "e2e_s.mean",
            "throughput.input_tokens_per_s"]
    print(ok[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"report: {res.report}")


if __name__ == "__main__":
    main()
