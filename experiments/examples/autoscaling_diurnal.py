"""Study (q): autoscaling on a diurnal trace, against fixed pools sized for the trough and for the peak.

    python experiments/examples/autoscaling_diurnal.py [--out out/autoscaling_diurnal] [--docs]

Runs the three points of autoscaling_diurnal.yaml (a fixed pool of 1 and of 8 Llama-3.1-70B TP4 replicas,
and one autoscaled between them on outstanding requests per replica with a 120 s provisioning delay; 15-25 s
each, about 45 s on 3 cores), prints a table (latency, SLO attainment, GPU-hours, cost, peak and mean
replicas) and draws, over the two simulated hours: the active replicas, p99 and p50 TTFT per 2-minute window
of arrival time, and the cumulative cost (`experiments.charts.autoscaling_figure`). Writes results.csv and
autoscaling_diurnal.html/.png under --out (PNG needs kaleido); --docs also writes the PNG to docs/studies/.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from experiments import charts
from experiments.runner import run
from experiments.sweep import flatten, run_points

HERE = Path(__file__).resolve().parent
NAME = "autoscaling_diurnal"
WINDOW_S = 120.0


def label_of(cfg) -> str:
    """'fixed 1', 'fixed 8' or 'autoscaled 1-8'."""
    a = cfg.autoscaling
    if a.min_replicas == a.max_replicas:
        return f"fixed {a.max_replicas}"
    return f"autoscaled {a.min_replicas}-{a.max_replicas}"


def simulate(cfg, slo) -> dict:
    """One point: the flattened summary (timeline left out), the SLO verdict, and what the chart needs (the
    requests' arrival and TTFT, the scaling timeline) as plain lists."""
    res = run(cfg)
    s = res.summary
    row = flatten({k: v for k, v in s.items() if k not in ("replicas", "links", "pools")})
    row.pop("autoscaling.timeline", None)
    row.update({f"slo.{k}": v for k, v in slo.evaluate(res.requests, s).items()})
    row["label"] = label_of(cfg)
    req = res.requests
    row["_arrival"] = req["arrival_s"].tolist()
    row["_ttft"] = (req["first_token_s"] - req["arrival_s"]).tolist()
    row["_scaling"] = res.scaling.to_dict("list")
    return row


def main(argv: list[str] | None = None) -> None:
    """Run the study, print its table and write its chart."""
    args = charts.study_parser(__doc__, f"out/{NAME}", f"also write docs/studies/{NAME}.png").parse_args(argv)

    df = run_points(HERE / f"{NAME}.yaml", simulate, columns=[], workers=args.workers)
    runs = {row["label"]: (pd.DataFrame({"arrival_s": row["_arrival"], "ttft_s": row["_ttft"]}),
                           pd.DataFrame(row["_scaling"])) for _, row in df.iterrows()}
    table = df.drop(columns=[c for c in df.columns if c.startswith("_")])
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "results.csv", index=False)
    fig = charts.autoscaling_figure(runs, window_s=WINDOW_S)
    fig.update_layout(title="Llama-3.1-70B TP4 on H100, a day compressed into 2 h (2.4 to 21.6 req/s): "
                            "fixed pools vs autoscaling (120 s provisioning delay)")
    charts.save_study_figure(fig, args.out, NAME, args.docs, height=800)
    cols = ["label", "ttft_s.p50", "ttft_s.p99", "tpot_s.p99", "e2e_s.p99", "slo.attainment",
            "autoscaling.peak_active", "autoscaling.mean_active", "autoscaling.scale_ups", "autoscaling.gpu_hours",
            "autoscaling.cost_usd"]
    print(table[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))


if __name__ == "__main__":
    main()
