"""Study: sequence parallelism for 128k-1M-token prompts: ring attention vs Ulysses, NVLink vs IB vs PCIe.

    python experiments/examples/long_context_sp.py [--out out/long_context_sp] [--docs]

Reads long_context_sp.yaml and prices one long prompt per cell with `sim.sequence_parallel` (about 2 s):
for SP degree 1-8, ring and Ulysses, and three placements of the SP ranks (one HGX H100 server on
NVLink; one H100 per server over InfiniBand NDR; an H100 PCIe server), it finds the longest prompt a
replica's KV holds (`max_prompt_tokens`), the time to prefill each prompt in chunks of
`engine.max_num_batched_tokens` (the sum of the chunks' step times, i.e. TTFT without queueing or the
front end), the same with free communication (the share the links add) and the decode step at the
prompt's end. The ring's bandwidth and latency and the all-to-all come from the placement's paths on the
topology graph. Prints the table, writes long_context_sp.csv and long_context_sp.html/.png (PNG needs
kaleido) under --out; --docs also writes the PNG to docs/studies/.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from experiments import charts
from experiments.config import read_yaml
from sim.cost import BatchShape, CostModel
from sim.errors import ConfigError
from sim.hardware import get_gpu
from sim.models import get_model
from sim.sequence_parallel import SequenceParallelCostModel, max_prompt_tokens
from topologies import Cluster, build_cluster
from topologies.collectives import allreduce_params, alltoall_time

HERE = Path(__file__).resolve().parent
FREE_LINK = 1e18          # bytes/s: the compute-only reference


def sp_ranks(cluster: Cluster, sp: int, how: str) -> tuple[str, ...]:
    """The GPUs of an sp-rank replica (TP 1): GPUs 0..sp-1 of server 0 ("server"), or GPU 0 of servers 0..sp-1
    ("spread")."""
    if how == "server":
        return cluster.gpus(0)[:sp]
    if how == "spread":
        return tuple(cluster.gpus(i)[0] for i in range(sp))
    raise ConfigError(f"links.*.ranks {how!r} is not one of server, spread")


def link_figures(cluster: Cluster, ranks: tuple[str, ...]) -> tuple[float, float, Callable[[float], float] | None]:
    """(bytes/s each hop of the SP ring gets, the slowest hop's latency, the placement's all-to-all) of `ranks`:
    what `sim.sequence_parallel.wrap` takes. One rank: no links."""
    if len(ranks) < 2:
        return FREE_LINK, 0.0, None
    bw, _ = allreduce_params(cluster, ranks)       # the ring's bus bandwidth: shared links counted
    lat = max(cluster.bottleneck(a, b)[1] for a, b in zip(ranks, ranks[1:] + ranks[:1]))
    return bw, lat, lambda nbytes: alltoall_time(cluster, ranks, nbytes)


def prefill_time(cost, prompt: int, chunk: int) -> float:
    """Seconds to prefill one `prompt`-token prompt in chunks of `chunk` tokens (the last one samples)."""
    total, start = 0.0, 0
    while start < prompt:
        q = min(chunk, prompt - start)
        b = BatchShape()
        b.add_prefill(q, start, start + q == prompt)
        total += cost.step_time(b)
        start += q
    return total


def cells(spec: dict) -> pd.DataFrame:
    """One row per (link, sp_type, sp, prompt): whether it fits, prefill seconds (with free links too), decode step."""
    base = spec["base"]
    model = get_model(base["model"])
    tp = base.get("parallelism", {}).get("tp", 1)
    eng = base.get("engine", {})
    util, chunk = eng.get("gpu_memory_utilization", 0.9), eng.get("max_num_batched_tokens", 8192)
    rows = []
    for link, where in spec["links"].items():
        cluster = build_cluster(where["cluster"], where["gpu"])
        cost = CostModel(model, get_gpu(where["gpu"]), tp=tp, engine=eng.get("profile", "vllm"))
        for sp in spec["sp"]:
            capacity = max_prompt_tokens(cost, sp, util, max_num_batched_tokens=chunk)
            bw, lat, a2a = link_figures(cluster, sp_ranks(cluster, sp, where["ranks"]))
            for kind in spec["sp_type"]:
                try:
                    priced = SequenceParallelCostModel(cost, sp, kind, bw, lat, alltoall=a2a)
                    free = SequenceParallelCostModel(cost, sp, kind, FREE_LINK, 0.0, alltoall=None)
                except ConfigError:
                    continue                                  # Ulysses: sp does not divide the heads
                for prompt in spec["prompts"]:
                    fits = prompt + spec["output_len"] <= capacity
                    t = prefill_time(priced, prompt, chunk)
                    t0 = prefill_time(free, prompt, chunk)
                    rows.append({"link": link, "sp_type": kind, "sp": sp, "gpus": sp * tp, "prompt": prompt,
                                 "max_tokens": capacity, "fits": fits, "link_GBps": bw / 1e9 if sp > 1 else None,
                                 "prefill_s": t, "prefill_free_s": t0, "comm_share": (t - t0) / t,
                                 "decode_ms": 1e3 * priced.step_time(BatchShape.decode(1, prompt))})
    return pd.DataFrame(rows)


def figure(df: pd.DataFrame, spec: dict) -> go.Figure:
    """Four panels against SP degree: longest prompt, 1M-token prefill time, the links' share of a 128k
    prefill, and the decode step at 1M tokens of context."""
    big, small = max(spec["prompts"]), min(spec["prompts"])
    panels = ("longest prompt one replica holds (M tokens)", f"prefill of a {big / 2**20:g}M-token prompt (s)",
              f"links' share of a {small // 1024}k-token prefill", f"decode step at {big / 2**20:g}M context (ms)")
    fig = make_subplots(rows=2, cols=2, subplot_titles=panels, vertical_spacing=0.14)
    dash = {"ring": "solid", "ulysses": "dot"}
    links = list(spec["links"])
    for i, link in enumerate(links):
        color = charts._COLORS[i % 10]
        cap = df[(df["link"] == link) & (df["sp_type"] == "ring") & (df["prompt"] == big)].sort_values("sp")
        fig.add_trace(go.Scatter(x=cap["sp"], y=cap["max_tokens"] / 2**20, mode="lines+markers", name=link,
                                 legendgroup=link, line={"color": color}), row=1, col=1)
        for kind in spec["sp_type"]:
            sub = df[(df["link"] == link) & (df["sp_type"] == kind)].sort_values("sp")
            name = f"{link}, {kind}"
            one = sub[(sub["prompt"] == big) & sub["fits"]]
            fig.add_trace(go.Scatter(x=one["sp"], y=one["prefill_s"], mode="lines+markers", name=name,
                                     legendgroup=link, showlegend=False, line={"color": color, "dash": dash[kind]}),
                          row=1, col=2)
            share = sub[sub["prompt"] == small]
            fig.add_trace(go.Scatter(x=share["sp"], y=share["comm_share"], mode="lines+markers", name=name,
                                     legendgroup=link, showlegend=False, line={"color": color, "dash": dash[kind]}),
                          row=2, col=1)
            if kind == "ring":          # decode is the same for both kinds: local attention + a combine
                fig.add_trace(go.Scatter(x=one["sp"], y=one["decode_ms"], mode="lines+markers", name=name,
                                         legendgroup=link, showlegend=False, line={"color": color}), row=2, col=2)
    for prompt in (small, big):
        fig.add_hline(y=prompt / 2**20, line_dash="dot", line_color="grey", row=1, col=1,
                      annotation_text=f"{prompt // 1024:,}k tokens", annotation_position="top left")
    for kind in spec["sp_type"]:
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name=kind,
                                 line={"color": "black", "dash": dash[kind]}), row=1, col=2)
    fig.update_yaxes(type="log", row=1, col=2)
    fig.update_yaxes(tickformat=".0%", row=2, col=1)
    fig.update_xaxes(title_text="SP degree (GPUs per replica, TP 1)", dtick=1)
    fig.update_layout(title=f"{spec['name']}: chunked prefill, {spec['base']['engine']['max_num_batched_tokens']:,}"
                            f"-token chunks split over the ranks", template="plotly_white", height=800, width=1200)
    return fig


def main(argv: list[str] | None = None) -> None:
    """Price the study's cells, print its table and write its chart."""
    args = charts.study_parser(__doc__, "out/long_context_sp",
                               "also write docs/studies/long_context_sp.png", workers=False).parse_args(argv)

    spec = read_yaml(HERE / "long_context_sp.yaml")
    df = cells(spec)
    args.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out / "long_context_sp.csv", index=False)
    charts.save_study_figure(figure(df, spec), args.out, "long_context_sp", args.docs)
    show = df[df["prompt"].isin([min(spec["prompts"]), max(spec["prompts"])])]
    cols = ["link", "sp_type", "sp", "prompt", "max_tokens", "fits", "link_GBps", "prefill_s", "comm_share",
            "decode_ms"]
    print(show[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))


if __name__ == "__main__":
    main()
