"""Study (r): KV quantisation (bf16, fp8, int4) and token eviction (StreamingLLM, H2O) on long-context traffic.

    python experiments/examples/kv_compression.py [--out out/kv_compression] [--docs]

Runs the sweep in kv_compression.yaml (30 runs: five KV variants x six request rates, Llama-3.1-8B on one
H100; about 15 s on 2 cores, 30 s with the PNGs; resumable), then draws: how many sequences of the mean
request each variant's KV cache holds (the memory gain), output throughput and p99 TTFT against the offered
rate, and the time of one decode step of 64 sequences against their context length, priced by each
variant's cost model (the compute side: fewer KV bytes read, int4 dequantisation, H2O's score bookkeeping).
Writes the sweep's report.html and results table under --out, and kv_compression.html/.png (PNG needs
kaleido); --docs also writes the PNG to docs/studies/.
"""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from experiments import charts
from experiments.build import build_cost_model
from experiments.sweep import load_sweep, resolve_point, run_sweep
from policies.kv_eviction import make_kv_eviction
from sim.cost import BatchShape

HERE = Path(__file__).resolve().parent
KV, EV, RATE = "model.kv_dtype", "kv_eviction", "workload.stages[0].rate"
THR = "throughput.output_tokens_per_s"
STEP_SEQS = 64                                   # decode batch of the step-time panel
CONTEXTS = (1024, 2048, 4096, 8192, 12288, 16384)


def label(kv_dtype: str, eviction: dict | None) -> str:
    """A variant's legend name, e.g. 'int4 KV' or 'H2O 20% (bf16)'."""
    if not eviction:
        return f"{kv_dtype} KV"
    if eviction["type"] == "streaming_llm":
        return f"StreamingLLM {eviction.get('sink_tokens', 4)}+{eviction.get('window_tokens', 2044)} ({kv_dtype})"
    return f"H2O {eviction.get('retained_fraction', 0.2):.0%} ({kv_dtype})"


def _eviction(cell) -> dict | None:
    """A results-table cell of `kv_eviction` (JSON text, or NaN/None for no eviction) as a mapping."""
    return json.loads(cell) if isinstance(cell, str) else None


def main(argv: list[str] | None = None) -> None:
    """Run the KV compression study's sweep, print its table and write its chart."""
    args = charts.study_parser(__doc__, "out/kv_compression",
                               "also write docs/studies/kv_compression.png").parse_args(argv)

    source = HERE / "kv_compression.yaml"
    spec, base, _ = load_sweep(source)
    variants = [{k: v[i] for k, v in spec.zip.items()} for i in range(len(spec.zip[KV]))]
    names = [label(v[KV], v[EV]) for v in variants]

    res = run_sweep(source, args.out, workers=args.workers)
    ok = res.table[res.table["status"] == "ok"].copy()
    ok["variant"] = [label(kv, _eviction(ev)) for kv, ev in zip(ok[KV], ok[EV])]

    # the mean request of the workload (uniform lengths) and the KV each variant keeps of it
    wl = base["workload"]
    prompt = (wl["input_len"]["low"] + wl["input_len"]["high"]) / 2
    total = prompt + (wl["output_len"]["low"] + wl["output_len"]["high"]) / 2
    kept = {}
    for v, name in zip(variants, names):
        policy = make_kv_eviction(v[EV])
        kept[name] = total if policy is None else min(total, policy.cap(SimpleNamespace(prompt_len=int(prompt))))

    fig = make_subplots(rows=2, cols=2, vertical_spacing=0.2, horizontal_spacing=0.08, subplot_titles=[
        f"mean requests ({prompt:,.0f} + {total - prompt:,.0f} tokens) the KV cache holds",
        "output tokens/s", "p99 TTFT (s)",
        f"decode step, {STEP_SEQS} sequences (ms; cost model)"])
    top = ok[ok[RATE] == ok[RATE].max()].set_index("variant")
    cap = ok.drop_duplicates("variant").set_index("variant")["kv.capacity_tokens"]
    fits = [cap[n] / kept[n] for n in names]
    ticks = [f"{n.split(' (')[0].replace('StreamingLLM', 'Streaming<br>LLM')}<br>{cap[n] / 1e3:,.0f}k / "
             f"{kept[n] / 1e3:.1f}k" for n in names]
    fig.add_trace(go.Bar(x=ticks, y=fits, marker={"color": list(charts._COLORS[:len(names)])},
                         text=[f"{f:,.0f}" for f in fits], textposition="inside", insidetextanchor="middle",
                         textfont={"color": "white", "size": 14}, showlegend=False, name="fit"), row=1, col=1)
    fig.add_trace(go.Scatter(x=ticks, y=[top.loc[n, "batch.mean_running"] for n in names], mode="markers",
                             marker={"symbol": "diamond", "size": 11, "color": "black"},
                             name=f"mean running at {ok[RATE].max():g} req/s"), row=1, col=1)
    for i, name in enumerate(names):
        sub = ok[ok["variant"] == name].sort_values(RATE)
        line = {"color": charts._COLORS[i], "dash": "dot" if "(" in name else "solid"}
        for j, (metric, (r, c)) in enumerate(((THR, (1, 2)), ("ttft_s.p99", (2, 1)))):
            fig.add_trace(go.Scatter(x=sub[RATE], y=sub[metric], mode="lines+markers", name=name, legendgroup=name,
                                     showlegend=j == 0, line=line), row=r, col=c)
        cost = build_cost_model(resolve_point(base, variants[i])[0])
        steps = [cost.step_time(BatchShape.decode(STEP_SEQS, ctx)) * 1e3 for ctx in CONTEXTS]
        fig.add_trace(go.Scatter(x=list(CONTEXTS), y=steps, mode="lines+markers", name=name, legendgroup=name,
                                 showlegend=False, line=line), row=2, col=2)
    fig.update_xaxes(tickangle=0, title_text="KV capacity / KV kept per mean request (tokens)", row=1, col=1)
    fig.update_yaxes(range=[0, max(fits) * 1.2], row=1, col=1)
    fig.update_xaxes(title_text="offered rate (req/s)", row=1, col=2)
    fig.update_xaxes(title_text="offered rate (req/s)", row=2, col=1)
    fig.update_yaxes(type="log", row=2, col=1)
    fig.update_xaxes(title_text="context per sequence (tokens)", row=2, col=2)
    fig.update_layout(title="Llama-3.1-8B on one H100, prompts 4-12k, answers 1-3k tokens: KV quantisation and "
                            "token eviction (dotted: eviction, bf16 KV)", template="plotly_white", height=880)
    charts.save_study_figure(fig, args.out, "kv_compression", args.docs, width=1300)

    cols = ["variant", RATE, "kv.capacity_tokens", "batch.mean_running", THR, "ttft_s.p50", "ttft_s.p99",
            "tpot_s.p50", "tpot_s.p99", "preemptions"]
    print(ok[cols].sort_values([RATE, "variant"], key=lambda c: c.map(names.index) if c.name == "variant" else c)
          .to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"decode step of {STEP_SEQS} sequences (ms) at contexts {CONTEXTS}:")
    for v, name in zip(variants, names):
        cost = build_cost_model(resolve_point(base, v)[0])
        print(f"  {name:32s}", " ".join(f"{cost.step_time(BatchShape.decode(STEP_SEQS, c)) * 1e3:6.2f}"
                                        for c in CONTEXTS))
    print(f"report: {res.report}")


if __name__ == "__main__":
    main()
