"""Cluster study: how to cut one 8x H100 node for Llama-3.1-70B (1 x TP8, 2 x TP4 or 4 x TP2).

    python experiments/examples/tp_vs_dp_70b.py [--out out/tp_vs_dp_70b] [--docs]

Runs the points of tp_vs_dp_70b.yaml (3 layouts x 13 request rates, about 30 s on 2 cores) and
draws p99 TTFT, p99 TPOT and output throughput against the offered rate, one line per layout.
Writes results.csv and tp_vs_dp_70b.html/.png under --out (PNG needs kaleido); --docs also writes
the PNG to docs/studies/.

Each point runs through this script's own `simulate` (extra columns: labels, SLO verdicts, costs)
via `experiments.sweep.run_points`; `servesim sweep` on the YAML runs the same points with the
standard columns.
"""
from __future__ import annotations

from pathlib import Path

from experiments import charts
from experiments.planner import SLO
from experiments.runner import run
from experiments.sweep import flatten, run_points
from sim.hardware import get_gpu

HERE = Path(__file__).resolve().parent
NAME = "tp_vs_dp_70b"
RATE = "workload.stages[0].rate"


def simulate(cfg, slo: SLO) -> dict:
    """One point: the flattened summary, the SLO verdict and the layout's cost per output token."""
    res = run(cfg)
    row = flatten({k: v for k, v in res.summary.items() if k not in ("replicas", "links")})
    row.update({f"slo.{k}": v for k, v in slo.evaluate(res.requests, res.summary).items()})
    dep = cfg.deployment
    ep = dep.parallelism.ep
    row["label"] = f"{dep.replicas} x TP{dep.parallelism.tp}" + (f" EP{ep}" if ep > 1 else "")
    gpus = dep.replicas * dep.parallelism.tp
    usd_per_s = gpus * get_gpu(cfg.hardware.gpu).price_per_hour / 3600
    row["usd_per_1m_output_tokens"] = usd_per_s / res.summary["throughput"]["output_tokens_per_s"] * 1e6
    row["kv_tokens_per_replica"] = res.summary["kv"]["capacity_tokens"]
    return row



def main(argv: list[str] | None = None) -> None:
    """Run the study, print its table and write its chart."""
    layout_study(NAME, __doc__, "Llama-3.1-70B on one 8x H100 node (the same 8 GPUs in every layout), chat traffic",
                 rate_tick=4, argv=argv)


def layout_study(name: str, doc: str, title: str, rate_tick: float, argv: list[str] | None = None) -> None:
    """A study of ways to lay one model over the same GPUs (`name`.yaml beside this file: a zip of deployment
    layouts against a grid of rates): the table, the chart (p99 TTFT, p99 TPOT, output throughput by layout) and
    each layout's KV room, SLO-meeting rate and peak throughput. Shared by tp_vs_dp_70b and moe_dp_ep."""
    args = charts.study_parser(doc, f"out/{name}", f"also write docs/studies/{name}.png").parse_args(argv)

    df = run_points(HERE / f"{name}.yaml", simulate, workers=args.workers)
    args.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out / "results.csv", index=False)

    fig = charts.factor_figure(df, RATE, metrics=("ttft_s.p99", "tpot_s.p99", "throughput.output_tokens_per_s"),
                               group="label")
    fig.update_yaxes(type="log", col=1)
    fig.update_yaxes(title_text="seconds (log scale)", col=1)
    fig.update_xaxes(title_text="offered rate (req/s)", type="linear", dtick=rate_tick)
    fig.add_hline(y=1.0, line_dash="dot", line_color="grey", col=1, annotation_text="SLO 1 s")
    fig.add_hline(y=0.05, line_dash="dot", line_color="grey", col=2, annotation_text="SLO 50 ms")
    fig.update_layout(title=title, height=450, legend_title_text="layout")
    charts.save_study_figure(fig, args.out, name, args.docs)

    cols = ["label", RATE, "ttft_s.p50", "ttft_s.p99", "tpot_s.p50", "tpot_s.p99", "itl_s.p99",
            "throughput.requests_per_s", "throughput.output_tokens_per_s", "preemptions", "slo.attainment",
            "usd_per_1m_output_tokens"]
    print(df.sort_values(["label", RATE])[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print("\nper layout: KV tokens per replica, highest rate meeting p99 TTFT <= 1 s and TPOT <= 50 ms, "
          "peak output tokens/s")
    for layout, sub in df.groupby("label"):
        met = sub[sub["slo.met"].astype(bool)][RATE]
        print(f"  {layout}: {int(sub['kv_tokens_per_replica'].iloc[0]):,} KV tokens/replica, "
              f"max SLO rate {met.max() if len(met) else 'none'} req/s, "
              f"peak {sub['throughput.output_tokens_per_s'].max():,.0f} tok/s "
              f"(${sub['usd_per_1m_output_tokens'].min():.2f}/1M)")


if __name__ == "__main__":
    main()
