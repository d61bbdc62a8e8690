"""Study: FlexGen-style offloading of OPT-30B on one T4, throughput vs batch under three placements.

    python experiments/examples/offload_flexgen.py [--out out/offload_flexgen] [--docs]

OPT-30B's 60 GB of fp16 weights do not fit a 16 GB T4. The job (prompt 512 -> 32 tokens for every
sequence, FlexGen's Table 2 setting) runs with the weights streamed layer by layer from host DRAM (and
disk) while the previous layer computes; each layer's weights cross PCIe once per step for the whole
batch, so throughput grows with the batch until the batch no longer fits or the KV traffic and compute
catch up. For each placement in offload_flexgen.yaml (and the best one `best_policy` finds) the script
prices the job at every batch of the grid with `sim.weight_offload`, marks where memory runs out, and
draws generation throughput and the decode step's time against the batch, with the step's transfer floor
(offloaded weight bytes / PCIe bandwidth, or the disk's share / disk read bandwidth if slower) and
FlexGen's measured point. Takes a few seconds.
Writes offload_flexgen.html/.png under --out; --docs also writes docs/studies/offload_flexgen.png.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from experiments import charts
from experiments.config import read_yaml
from sim.cost import BatchShape, CostModel
from sim.hardware import get_gpu
from sim.models import get_model
from sim.weight_offload import OffloadedCostModel, OffloadHardware, Placement, best_policy, evaluate_policy

HERE = Path(__file__).resolve().parent
FIELDS = ("weights_gpu", "weights_cpu", "kv_gpu", "kv_cpu", "act_gpu", "act_cpu", "cpu_attention", "overlap")


def placements(spec: dict, base: CostModel, hw: OffloadHardware) -> list[tuple[str, Placement, int | None]]:
    """(name, placement, the search's batch or None) for each entry; "best" runs the policy search."""
    out = []
    for entry in spec["placements"]:
        if entry == "best":
            best = best_policy(base, spec["prompt_len"], spec["gen_len"], hw)
            out.append((f"best policy ({best.placement.label()}, micro-batch {best.placement.gpu_batch})",
                        best.placement, best.batch))
        else:
            kw = {k: entry[k] for k in FIELDS if k in entry}
            out.append((entry["name"], Placement(gpu_batch=spec["gpu_batch"], **kw), None))
    return out


def curves(spec: dict) -> tuple[list[dict], float]:
    """One row per (placement, batch): throughput, decode step, whether it fits; and the weights' PCIe floor."""
    base = CostModel(get_model(spec["model"]), get_gpu(spec["gpu"]), engine=spec["engine"],
                     flash_attention=spec["flash_attention"])
    hw = OffloadHardware.for_gpu(base.gpu, **spec["hardware"])
    s, n = spec["prompt_len"], spec["gen_len"]
    rows = []
    for name, pl, found in placements(spec, base, hw):
        for b in sorted({*spec["batches"], *([found] if found else [])}):
            p = replace(pl, gpu_batch=min(pl.gpu_batch or b, b))
            cost = OffloadedCostModel(base, p, hw)
            res = evaluate_policy(base, p, b, s, n, hw)
            step = cost.step_time(BatchShape.decode(b, s + n // 2))
            # every offloaded weight byte crosses PCIe, and the disk's share is read from disk first
            floor = max((1.0 - p.weights_gpu) / hw.pcie_bw, p.weights_disk / hw.disk_read_bw) * base.weight_bytes_per_gpu
            rows.append({"placement": name, "batch": b, "throughput": res.throughput, "decode_step_s": step,
                         "pcie_floor_s": floor, "prefill_s": res.prefill_s, "decode_s": res.decode_s,
                         "fits": cost.fits(b, s, n)})
    return rows, hw.pcie_bw


def main(argv: list[str] | None = None) -> None:
    """Price the job for every placement and batch, print the table and draw the chart."""
    args = charts.study_parser(__doc__, "out/offload_flexgen",
                               "also write docs/studies/offload_flexgen.png", workers=False).parse_args(argv)
    spec = read_yaml(HERE / "offload_flexgen.yaml")
    rows, pcie = curves(spec)

    fig = make_subplots(rows=1, cols=2, subplot_titles=("generation throughput (tokens/s)",
                                                        "decode step (s); dash-dot: weight transfer floor"))
    for i, name in enumerate(dict.fromkeys(r["placement"] for r in rows)):
        mine = [r for r in rows if r["placement"] == name]
        color = charts._COLORS[i % 10]
        for fits, dash in ((True, "solid"), (False, "dot")):
            pts = [r for r in mine if r["fits"] == fits]
            if fits is False and pts:      # join the dotted part to the last batch that fits
                pts = [r for r in mine if r["fits"]][-1:] + pts
            if not pts:
                continue
            legend = fits
            fig.add_trace(go.Scatter(x=[r["batch"] for r in pts], y=[r["throughput"] for r in pts],
                                     mode="lines+markers", name=name, legendgroup=name, showlegend=legend,
                                     line={"color": color, "dash": dash}), row=1, col=1)
            fig.add_trace(go.Scatter(x=[r["batch"] for r in pts], y=[r["decode_step_s"] for r in pts],
                                     mode="lines+markers", name=name, legendgroup=name, showlegend=False,
                                     line={"color": color, "dash": dash}), row=1, col=2)
        fig.add_trace(go.Scatter(x=[mine[0]["batch"], mine[-1]["batch"]], y=[mine[0]["pcie_floor_s"]] * 2,
                                 mode="lines", showlegend=False, legendgroup=name,
                                 line={"color": color, "dash": "dashdot", "width": 1}), row=1, col=2)
    m = spec["measured"]
    fig.add_trace(go.Scatter(x=[m["batch"]], y=[m["throughput"]], mode="markers", name=m["label"],
                             marker={"symbol": "star", "size": 14, "color": "black"}), row=1, col=1)
    fig.update_xaxes(type="log", title_text="effective batch (sequences); dotted: does not fit memory")
    fig.update_yaxes(type="log")
    fig.update_layout(title=f"{spec['name']} (prompt {spec['prompt_len']}, {spec['gen_len']} tokens, "
                            f"PCIe {pcie / 1e9:.1f} GB/s)", template="plotly_white", height=480,
                      legend={"orientation": "h", "y": -0.25})
    charts.save_study_figure(fig, args.out, "offload_flexgen", args.docs)
    print(f"{'placement':70s} {'batch':>6s} {'fits':>5s} {'tok/s':>8s} {'step s':>8s} {'floor s':>8s}")
    for r in rows:
        print(f"{r['placement'][:70]:70s} {r['batch']:6d} {str(r['fits']):>5s} {r['throughput']:8.3g} "
              f"{r['decode_step_s']:8.3g} {r['pcie_floor_s']:8.3g}")


if __name__ == "__main__":
    main()
