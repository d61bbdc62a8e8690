"""Study (f): swap vs recompute preemption, on the default H100 node and on nodes with slower PCIe.

    python experiments/examples/swap_vs_recompute.py [--out out/swap_vs_recompute] [--docs]

Builds the cluster graphs named in swap_vs_recompute.yaml: the default HGX H100 node
(`topologies.default_cluster`) with every link of kind ``pcie`` divided by K, written as networkx JSON
(`Cluster.to_json`) under --out, then runs the sweep (18 runs: recompute, and swap at five PCIe
bandwidths, at three request rates; about 20 s on 2 cores; resumable). Draws swap's mean end-to-end
latency relative to recompute's, the preemptions of both and the time steps waited for swap copies
against the GPU's PCIe bandwidth, one line per request rate (recompute moves nothing over PCIe).
Writes the sweep's report.html and results table under --out, and swap_vs_recompute.html/.png (PNG
needs kaleido); --docs also writes the PNG to docs/studies/.
"""
from __future__ import annotations

import re
from pathlib import Path

import networkx as nx
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from experiments import charts
from experiments.config import read_yaml
from experiments.sweep import run_sweep
from topologies import Cluster, default_cluster

HERE = Path(__file__).resolve().parent
MODE, RATE = "engine.preemption_mode", "workload.stages[0].rate"
DIV = re.compile(r"_div(\d+)\.json$")


def slow_pcie_graph(factor: float, path: Path) -> float:
    """Write the default one-node H100 cluster with every PCIe link `factor` times slower; return the GPU's
    PCIe bandwidth in GB/s."""
    g = nx.DiGraph(default_cluster("h100-sxm-80gb", 1).graph)     # a thawed copy
    for _, _, d in g.edges(data=True):
        if d["kind"] == "pcie":
            d["bandwidth"] = d["bandwidth"] / factor
    path.parent.mkdir(parents=True, exist_ok=True)
    Cluster(g).to_json(path)
    return pcie_gbps(g)


def pcie_gbps(g) -> float:
    """Bandwidth of GPU 0's PCIe link, GB/s."""
    return min(d["bandwidth"] for u, v, d in g.edges(data=True) if d["kind"] == "pcie" and "node0.gpu0" in (u, v)) / 1e9


def main(argv: list[str] | None = None) -> None:
    """Build the graphs, run the preemption study's sweep, print its table and write its chart."""
    args = charts.study_parser(__doc__, "out/swap_vs_recompute",
                               "also write docs/studies/swap_vs_recompute.png").parse_args(argv)

    sweep = read_yaml(HERE / "swap_vs_recompute.yaml")
    default_bw = pcie_gbps(default_cluster("h100-sxm-80gb", 1).graph)
    bandwidth = {None: default_bw}          # cluster cell -> PCIe GB/s
    clusters = []
    for entry in sweep["zip"]["cluster"]:
        if entry is None:
            clusters.append(None)
            continue
        name = Path(entry["topology"]).name
        path = (args.out / name).resolve()
        bw = slow_pcie_graph(float(DIV.search(name).group(1)), path)
        clusters.append({"topology": str(path)})
        bandwidth[str(path)] = bw
    sweep["zip"]["cluster"] = clusters

    res = run_sweep(sweep, args.out, workers=args.workers)
    ok = res.table[res.table["status"] == "ok"].copy()
    ok["pcie_gbps"] = [bandwidth[None if c is None or c != c else _topology(c)] for c in ok["cluster"]]
    wait = "swap.copy_wait_s" if "swap.copy_wait_s" in ok.columns else "swap.stall_s"
    ok[wait] = ok[wait].fillna(0.0) if wait in ok.columns else 0.0

    panels = ("mean E2E latency, swap / recompute", "preemptions (dotted: recompute)",
              "steps' wait for swap copies (s)")
    fig = make_subplots(rows=1, cols=3, subplot_titles=panels)
    xs = sorted(set(bandwidth.values()))
    for i, (rate, sub) in enumerate(ok.groupby(RATE, sort=True)):
        color = charts._COLORS[i % 10]
        swap = sub[sub[MODE] == "swap"].sort_values("pcie_gbps")
        rec = sub[sub[MODE] == "recompute"].iloc[0]
        name = f"{rate:g} req/s"
        fig.add_trace(go.Scatter(x=swap["pcie_gbps"], y=swap["e2e_s.mean"] / rec["e2e_s.mean"], mode="lines+markers",
                                 name=name, legendgroup=name, line={"color": color}), row=1, col=1)
        fig.add_trace(go.Scatter(x=swap["pcie_gbps"], y=swap["preemptions"], mode="lines+markers", name=name,
                                 legendgroup=name, showlegend=False, line={"color": color}), row=1, col=2)
        # recompute moves nothing over PCIe: the same run at every bandwidth
        fig.add_trace(go.Scatter(x=xs, y=[rec["preemptions"]] * len(xs), mode="lines", name=name, legendgroup=name,
                                 showlegend=False, line={"color": color, "dash": "dot"}), row=1, col=2)
        fig.add_trace(go.Scatter(x=swap["pcie_gbps"], y=swap[wait], mode="lines+markers", name=name,
                                 legendgroup=name, showlegend=False, line={"color": color}), row=1, col=3)
    fig.add_hline(y=1.0, line_dash="dot", line_color="grey", row=1, col=1, annotation_text="recompute")
    fig.update_yaxes(tickformat=".0%", row=1, col=1)
    fig.update_xaxes(type="log", title_text="GPU-host PCIe bandwidth (GB/s)")
    fig.update_layout(title="Llama-3.1-8B on H100, scarce KV, long generations: swap vs recompute preemption "
                            "(vLLM V0 scheduler)", template="plotly_white", height=450)
    charts.save_study_figure(fig, args.out, "swap_vs_recompute", args.docs)
    cols = [MODE, RATE, "pcie_gbps", "e2e_s.mean", "e2e_s.p99", "ttft_s.p50", "tpot_s.p50", "preemptions",
            "recomputed_tokens", wait, "throughput.output_tokens_per_s"]
    print(ok[cols].sort_values([RATE, MODE, "pcie_gbps"]).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"report: {res.report}")


def _topology(cell: str) -> str:
    import json

    return json.loads(cell)["topology"]


if __name__ == "__main__":
    main()
