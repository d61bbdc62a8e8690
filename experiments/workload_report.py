"""The plotly page of `servesim workload describe --out report.html`.

One self-contained HTML file: the summary table, the request rate over time, the distribution of
inter-arrival gaps, and the prompt and output length histograms (with their p50 / p99 marked).
The numbers come from `workloads.describe`; this module only draws them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workloads.describe import WorkloadDescription


def peak_label(s: dict) -> str:
    """'peak 1-min rate', or what the window was when the trace is shorter than a minute."""
    span = s["duration_s"]
    return "peak 1-min rate" if span is None or span >= 60 else f"peak rate (whole {span:.3g} s span)"


def summary_rows(s: dict) -> list[tuple[str, str]]:
    """(name, value) rows of a description summary, formatted for people."""

    def f(v, unit: str = "", digits: int = 3) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:,.{digits}g}{unit}" if abs(v) < 1e5 else f"{v:,.0f}{unit}"
        return f"{v:,}{unit}"

    rows = [("source", str(s["source"])), ("kind", str(s["kind"])), ("requests", f(s["rows"])),
            ("duration", f(s["duration_s"], " s", 6)), ("mean rate", f(s["rate_per_s"], " req/s")),
            (peak_label(s), f(s["peak_1min_rate_per_s"], " req/s")),
            ("inter-arrival CV", f(s["interarrival_cv"]))]
    for side in ("input_tokens", "output_tokens"):
        d = s[side]
        rows.append((side.replace("_", " "), f"mean {f(d['mean'], '', 5)}, p50 {f(d['p50'], '', 6)}, "
                                             f"p90 {f(d['p90'], '', 6)}, p99 {f(d['p99'], '', 6)}, max {f(d['max'])}"))
    pb = s["prefix_hit_upper_bound"]
    rows.append(("prefix hit upper bound", "- (no prefix identity)" if pb is None else f"{pb:.1%}"))
    if s.get("sessions"):
        rows.append(("sessions", f(s["sessions"])))
    if s.get("classes"):
        rows.append(("classes", ", ".join(f"{k}: {v:,}" for k, v in s["classes"].items())))
    for key in ("dropped", "clipped"):
        if s.get(key):
            rows.append((key, f(s[key])))
    for note in s.get("notes", []):
        rows.append(("note", note))
    return rows


def integer_bins(x: np.ndarray, target: int = 80) -> np.ndarray:
    """Histogram edges for whole-number token counts: every bin holds the same number of integers (a width of
    ceil(range / target), edges at half-integers), so no comb appears that is not in the data."""
    lo, hi = int(np.min(x)), int(np.max(x))
    width = max(1, -(-(hi - lo + 1) // target))
    return np.arange(lo - 0.5, hi + width + 0.5, width)


def workload_figure(d: WorkloadDescription) -> go.Figure:
    """Table, rate over time, gap distribution and length histograms of a workload."""
    s = d.summary()
    fig = make_subplots(
        rows=3, cols=2, specs=[[{"type": "table", "colspan": 2}, None], [{}, {}], [{}, {}]],
        row_heights=[0.34, 0.33, 0.33], vertical_spacing=0.08,
        subplot_titles=("", "request rate over time", "inter-arrival gaps (s)", "prompt tokens", "output tokens"))
    rows = summary_rows(s)
    fig.add_trace(go.Table(header={"values": ["statistic", "value"], "align": "left"},
                           cells={"values": [[r[0] for r in rows], [r[1] for r in rows]], "align": "left"},
                           columnwidth=[1, 4]), row=1, col=1)
    t, rate = d.rate_series()
    if len(t):
        fig.add_trace(go.Scatter(x=t, y=rate, mode="lines", line={"shape": "hv"}, name="req/s"), row=2, col=1)
        if s["rate_per_s"]:
            # reference lines as traces: add_hline/add_vline do not mix with a table subplot
            fig.add_trace(go.Scatter(x=[t[0], t[-1]], y=[s["rate_per_s"]] * 2, mode="lines",
                                     line={"dash": "dot", "color": "grey"},
                                     name=f"mean {s['rate_per_s']:.3g} req/s"), row=2, col=1)
        gaps = np.diff(d.arrival_s)
        pos = gaps[gaps > 0]
        if len(pos):
            edges = np.logspace(np.log10(pos.min()), np.log10(pos.max()) + 1e-9, 60)
            counts, _ = np.histogram(pos, bins=edges)
            fig.add_trace(go.Bar(x=np.sqrt(edges[:-1] * edges[1:]), y=counts, name="gaps",
                                 width=np.diff(edges)), row=2, col=2)
            fig.update_xaxes(type="log", row=2, col=2)
    for col, (name, x) in enumerate((("prompt", d.input_tokens), ("output", d.output_tokens)), start=1):
        if not len(x):
            continue
        counts, edges = np.histogram(x, bins=integer_bins(x))
        fig.add_trace(go.Bar(x=(edges[:-1] + edges[1:]) / 2, y=counts, width=np.diff(edges),
                             name=f"{name} tokens"), row=3, col=col)
        for q in (50, 99):
            v = float(np.percentile(x, q))
            fig.add_trace(go.Scatter(x=[v, v], y=[0, counts.max()], mode="lines+text", text=["", f"p{q} {v:,.0f}"],
                                     textposition="top center", line={"dash": "dot", "color": "grey"},
                                     name=f"p{q}"), row=3, col=col)
    fig.update_xaxes(title_text="time (s)", row=2, col=1)
    fig.update_yaxes(title_text="requests / s", row=2, col=1)
    fig.update_xaxes(title_text="gap (s)", row=2, col=2)
    fig.update_xaxes(title_text="prompt tokens", row=3, col=1)
    fig.update_xaxes(title_text="output tokens", row=3, col=2)
    for row, col in ((2, 2), (3, 1), (3, 2)):
        fig.update_yaxes(title_text="requests", row=row, col=col)
    fig.update_layout(title=f"Workload: {s['source']}", template="plotly_white", showlegend=False, height=1100)
    return fig


def write_workload_report(d: WorkloadDescription, out: str | Path) -> Path:
    """Write the page (plotly.js embedded, works offline)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    workload_figure(d).write_html(str(out), include_plotlyjs=True)
    return out
