"""Plotly charts. Plotting lives here only; `sim` never imports plotly."""
from __future__ import annotations

import plotly.graph_objects as go


def roofline_figure(*estimates) -> go.Figure:
    """The roofline of the GPU with the ops of each estimate placed by arithmetic intensity.

    Each op sits at (FLOP/byte, achieved FLOP/s per GPU); the roof is min(peak, intensity x bandwidth).
    """
    first = estimates[0]
    peak, bw = first.peak_flops, first.peak_bw
    lo, hi = 0.05, 1e5
    xs = [lo * (hi / lo) ** (i / 200) for i in range(201)]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=xs, y=[min(peak, x * bw) / 1e12 for x in xs], mode="lines",
                             name=f"roof ({peak / 1e12:.0f} TFLOP/s, {bw / 1e9:.0f} GB/s)",
                             line={"color": "black"}))
    ridge = peak / bw
    fig.add_vline(x=ridge, line_dash="dot", annotation_text=f"ridge {ridge:.0f} FLOP/B")
    symbols = ["circle", "diamond", "square", "triangle-up"]
    for i, est in enumerate(estimates):
        ops = [o for o in est.breakdown if o.flops > 0 and o.bytes > 0 and o.time_s > 0]
        fig.add_trace(go.Scatter(
            x=[o.intensity for o in ops], y=[o.flops / o.time_s / 1e12 for o in ops], mode="markers+text",
            text=[o.name for o in ops], textposition="top center", marker={"size": 10, "symbol": symbols[i % 4]},
            name=f"{est.phase} (batch {est.batch}, {'prompt ' + str(est.prompt_len) if est.phase == 'prefill' else 'context ' + str(est.context)})",
            hovertemplate="%{text}<br>%{x:.1f} FLOP/B<br>%{y:.1f} TFLOP/s<extra></extra>"))
    fig.update_xaxes(type="log", title="arithmetic intensity (FLOP/byte)")
    fig.update_yaxes(type="log", title="achieved TFLOP/s per GPU")
    fig.update_layout(title=f"Roofline: {first.model} on {first.gpu} (tp={first.tp})", template="plotly_white")
    return fig
