"""Cluster study: Mixtral-8x7B on one 8x H100 node with tensor, expert and data parallelism.

    python experiments/examples/moe_dp_ep.py [--out out/moe_dp_ep] [--docs]

Runs the points of moe_dp_ep.yaml (5 layouts x 11 request rates, about a minute on 2 cores) and draws
p99 TTFT, p99 TPOT and output throughput against the offered rate, one line per layout: 1 x TP8,
1 x TP8 EP8, 4 x TP2, and DP attention with EP8 over 4 x TP2 or 8 x TP1 replicas (docs/concepts/cluster.md, 'Experts over
data-parallel replicas').
Writes results.csv and moe_dp_ep.html/.png under --out (PNG needs kaleido); --docs also writes
the PNG to docs/studies/.

Each point runs through tp_vs_dp_70b's `simulate` (extra columns: labels, SLO verdicts, costs) via
`experiments.sweep.run_points`, and tp_vs_dp_70b's `layout_study` writes the table and chart; `servesim sweep` on the YAML runs the same points with the
standard columns.
"""
from __future__ import annotations

from experiments.examples.tp_vs_dp_70b import layout_study

NAME = "moe_dp_ep"


def main(argv: list[str] | None = None) -> None:
    """Run the study, print its table and write its chart."""
    layout_study(NAME, __doc__, "Mixtral-8x7B on one 8x H100 node (the same 8 GPUs in every layout), chat traffic",
                 rate_tick=8, argv=argv)


if __name__ == "__main__":
    main()
