"""Study (b): capacity plan for Llama-3.1-70B at 40 req/s on H100 vs H200 (TP 2, 4, 8).

    python experiments/examples/plan_llama70b.py [--out out/plan_llama70b] [--docs]

Answers plan_llama70b.yaml (about 10 s on 2 cores), prints the table and the recommendation,
writes plan.json / plan.html under --out plus plan_llama70b_cost.html/.png (cost per 1M output
tokens) and plan_llama70b_gpus.html/.png (GPUs needed vs rate). PNGs need kaleido; --docs also
writes them to docs/studies/ for docs/STUDIES.md.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from experiments import charts
from experiments.planner import plan, print_plan

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> None:
    """Run the Llama-3.1-70B capacity plan, print it and write its charts."""
    args = charts.study_parser(__doc__, "out/plan_llama70b", "also write the PNGs to docs/studies/").parse_args(argv)

    res = plan(HERE / "plan_llama70b.yaml", args.out, workers=args.workers)
    print_plan(res)
    ok = res.table[res.table["status"].astype(str).str.startswith("ok")]
    cost = charts.cost_figure(ok)
    cost.update_layout(title="Llama-3.1-70B, 40 req/s, p99 TTFT <= 1 s, p99 TPOT <= 50 ms: "
                             "USD per 1M output tokens", height=450)
    gpus = charts.gpus_vs_rate_figure(ok, np.linspace(0.5, 80, 400))
    gpus.update_layout(title="Llama-3.1-70B: GPUs needed vs total rate within the SLOs", height=450)
    for name, fig in (("plan_llama70b_cost", cost), ("plan_llama70b_gpus", gpus)):
        charts.save_study_figure(fig, args.out, name, args.docs)
    print("wrote " + ", ".join(str(p) for p in res.files.values()))


if __name__ == "__main__":
    main()
