"""Plotly charts. Plotting lives here only; `sim` never imports plotly.

Every function takes plain data (a run's requests / steps / timeseries DataFrames, a sweep's
results table, a capacity plan's candidate rows) and returns a `plotly.graph_objects.Figure`;
`experiments.report` puts them into self-contained HTML. Large inputs are thinned (CDFs at a few
hundred quantiles, scatter and Gantt charts capped) so a report stays small and quick to open.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .planner import request_latencies


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


# ----------------------------------------------------------------------------- shared helpers

LATENCY_METRICS = ("ttft_s", "tpot_s", "e2e_s")
_TITLES = {"ttft_s": "TTFT (s)", "tpot_s": "TPOT (s)", "e2e_s": "E2E latency (s)", "itl_s": "ITL (s)"}
_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")


_PLAIN = {"throughput.output_tokens_per_s": "output tokens/s", "throughput.requests_per_s": "requests/s",
          "throughput.input_tokens_per_s": "input tokens/s", "slo.attainment": "SLO attainment (fraction)",
          "slo.goodput_rps": "goodput (req/s meeting the SLO)"}


def _label(metric: str) -> str:
    if metric in _PLAIN:
        return _PLAIN[metric]
    base, _, stat = metric.partition(".")
    return f"{stat} {_TITLES.get(base, base)}" if stat in ("mean", "p50", "p90", "p99", "max") else metric


def _log_worthy(values) -> bool:
    v = pd.to_numeric(pd.Series(values), errors="coerce").dropna()
    return len(v) > 1 and (v > 0).all() and v.max() / v.min() >= 8


def _groups(df: pd.DataFrame, group: str | None):
    if group is None or group not in df.columns:
        yield None, df
        return
    for value, sub in df.groupby(group, sort=True, dropna=False):
        yield value, sub


def _group_name(group: str | None, value, default: str) -> str:
    if not group:
        return default
    return str(value) if group in ("candidate", "label", "name") else f"{group}={value}"


def _cdf_points(values: np.ndarray, n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """(x, F(x)) of the empirical CDF at <= n quantiles, so a chart stays small for any run size."""
    v = np.asarray(values, dtype=float)
    v = np.sort(v[~np.isnan(v)])
    if len(v) == 0:
        return v, v
    if len(v) <= n:
        return v, np.arange(1, len(v) + 1) / len(v)
    q = np.linspace(0.0, 1.0, n)
    return np.quantile(v, q), q


# ----------------------------------------------------------------------------- single runs

def cdf_figure(runs: dict[str, pd.DataFrame], metrics=LATENCY_METRICS, log_x: bool = False) -> go.Figure:
    """Empirical CDFs of TTFT, TPOT and E2E, one panel per metric, one line per run (label -> requests)."""
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=[_TITLES.get(m, m) for m in metrics])
    for i, (label, req) in enumerate(runs.items()):
        lat = request_latencies(req)
        for j, m in enumerate(metrics):
            x, y = _cdf_points(lat[m])
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name=str(label), legendgroup=str(label),
                                     showlegend=j == 0, line={"color": _COLORS[i % len(_COLORS)]},
                                     hovertemplate=f"{m} %{{x:.4g}} s<br>F %{{y:.3f}}<extra>{label}</extra>"),
                          row=1, col=j + 1)
            fig.update_xaxes(title_text="seconds", type="log" if log_x else "linear", row=1, col=j + 1)
    fig.update_yaxes(title_text="fraction of requests", row=1, col=1, range=[0, 1.02])
    fig.update_layout(title="Latency CDFs", template="plotly_white", showlegend=len(runs) > 1)
    return fig


def latency_over_time_figure(requests: pd.DataFrame, max_points: int = 4000) -> go.Figure:
    """TTFT and E2E of each request against its arrival time (an evenly thinned sample on big runs)."""
    req = requests
    if len(req) > max_points:
        req = req.iloc[np.linspace(0, len(req) - 1, max_points).astype(int)]
    arrival = req["arrival_s"].to_numpy(float)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=arrival, y=req["first_token_s"].to_numpy(float) - arrival, mode="markers",
                             name="TTFT", marker={"size": 4}))
    fig.add_trace(go.Scatter(x=arrival, y=req["finish_s"].to_numpy(float) - arrival, mode="markers",
                             name="E2E", marker={"size": 4, "opacity": 0.5}))
    fig.update_xaxes(title="arrival time (s)")
    fig.update_yaxes(title="latency (s)")
    fig.update_layout(title="Latency by arrival time", template="plotly_white")
    return fig


def timeseries_figure(ts: pd.DataFrame) -> go.Figure:
    """Queue length, running batch and KV usage over simulated time (from `sim.sample_interval_s`)."""
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        subplot_titles=["waiting requests (queue)", "running requests (batch)", "KV-cache usage"])
    t = ts["time_s"]
    fig.add_trace(go.Scatter(x=t, y=ts["waiting"], mode="lines", name="waiting", line={"shape": "hv"}), row=1, col=1)
    fig.add_trace(go.Scatter(x=t, y=ts["running"], mode="lines", name="running", line={"shape": "hv"}), row=2, col=1)
    fig.add_trace(go.Scatter(x=t, y=ts["kv_usage"], mode="lines", name="KV usage", line={"shape": "hv"}),
                  row=3, col=1)
    fig.update_yaxes(range=[0, 1.02], tickformat=".0%", row=3, col=1)
    fig.update_xaxes(title_text="simulated time (s)", row=3, col=1)
    fig.update_layout(title="Replica state over time", template="plotly_white", showlegend=False, height=650)
    return fig


def link_utilisation_figure(links: pd.DataFrame, top: int = 8) -> go.Figure:
    """Utilisation over simulated time of the busiest links (change points from `sim.sample_interval_s` runs)."""
    fig = go.Figure()
    if len(links):
        t_end = float(links["time_s"].max())
        busy = {}
        for link, g in links.groupby("link", sort=False):
            t = g["time_s"].to_numpy()
            u = g["utilisation"].to_numpy()
            busy[link] = float(np.sum(u * np.diff(np.append(t, t_end))))
        for link in sorted(busy, key=busy.get, reverse=True)[:top]:
            g = links[links["link"] == link]
            fig.add_trace(go.Scatter(x=g["time_s"], y=g["utilisation"], mode="lines", name=link,
                                     line={"shape": "hv"}))
    fig.update_yaxes(range=[0, 1.02], tickformat=".0%", title_text="utilisation")
    fig.update_xaxes(title_text="simulated time (s)")
    fig.update_layout(title=f"Link utilisation (the {top} busiest links)", template="plotly_white", height=420)
    return fig


def timeline_figure(steps: pd.DataFrame, max_steps: int = 3000) -> go.Figure:
    """Iteration timeline (Gantt): one bar per step, prefill-carrying steps apart from pure decode.

    Only the first `max_steps` steps are drawn; the hover shows tokens and batch size.
    """
    s = steps.iloc[:max_steps]
    prefill = s["tokens"].to_numpy() > s["batch"].to_numpy()
    fig = go.Figure()
    for name, mask, color in (("decode", ~prefill, "#1f77b4"), ("prefill + decode", prefill, "#ff7f0e")):
        part = s[mask]
        if not len(part):
            continue
        fig.add_trace(go.Bar(
            base=part["start_s"], x=part["end_s"] - part["start_s"], y=[f"replica {r}" for r in part["replica"]],
            orientation="h", name=name, marker={"color": color, "line": {"width": 0}},
            customdata=np.stack([part["tokens"], part["batch"], part["start_s"]], axis=1),
            hovertemplate="start %{customdata[2]:.4f} s, %{x:.4f} s<br>tokens %{customdata[0]}<br>"
                          "batch %{customdata[1]}<extra></extra>"))
    cut = f" (first {max_steps} of {len(steps)} steps)" if len(steps) > max_steps else ""
    fig.update_layout(title=f"Iteration timeline{cut}", template="plotly_white", barmode="overlay", bargap=0.3,
                      height=260 + 30 * s["replica"].nunique())
    fig.update_xaxes(title="simulated time (s)")
    return fig


def latency_windows(requests: pd.DataFrame, window_s: float, metric: str = "ttft_s") -> pd.DataFrame:
    """p50 and p99 of a latency (ttft_s, e2e_s) over windows of arrival time: window start, p50, p99, count."""
    arrival = requests["arrival_s"].to_numpy(float)
    if metric in requests.columns:
        lat = requests[metric].to_numpy(float)
    else:
        end = "first_token_s" if metric == "ttft_s" else "finish_s"
        lat = requests[end].to_numpy(float) - arrival
    df = pd.DataFrame({"w": np.floor(arrival / window_s) * window_s, "lat": lat})
    g = df.groupby("w", sort=True)["lat"]
    out = pd.DataFrame({"p50": g.quantile(0.5), "p99": g.quantile(0.99), "count": g.size()})
    return out.rename_axis("time_s").reset_index()


def autoscaling_figure(runs: dict[str, tuple[pd.DataFrame, pd.DataFrame | None]], window_s: float | None = None,
                       metric: str = "ttft_s") -> go.Figure:
    """Replicas, latency and cost over simulated time, one colour per run (label -> (requests, scaling)).

    Top: active replicas (solid) and the controller's target (dotted), from the run's scaling timeline
    (`RunResult.scaling`), with the first run's offered rate (arrivals per second per window, right axis).
    Middle: p99 (solid) and p50 (dotted) of `metric` per window of arrival time (default window: 1/60 of the
    span). Bottom: cumulative cost in USD (GPU-hours when the GPU has no price).
    A run without a scaling timeline (None) shows its latency only.
    """
    label = _TITLES.get(metric, metric)
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.07,
                        specs=[[{"secondary_y": True}], [{}], [{}]],
                        subplot_titles=["replicas (solid: active, dotted: target; grey: offered rate)",
                                        f"{label} per window of arrival (solid: p99, dotted: p50; log)",
                                        "cumulative cost"])
    if window_s is None:
        span = max((float(req["arrival_s"].max()) for req, _ in runs.values() if len(req)), default=60.0)
        window_s = max(span / 60.0, 1.0)
    cost_unit = "USD"
    for i, (name, (req, scaling)) in enumerate(runs.items()):
        color = _COLORS[i % len(_COLORS)]
        if scaling is not None and len(scaling):
            fig.add_trace(go.Scatter(x=scaling["time_s"], y=scaling["active"], mode="lines", name=name,
                                     legendgroup=name, line={"color": color, "shape": "hv"}), row=1, col=1)
            fig.add_trace(go.Scatter(x=scaling["time_s"], y=scaling["target"], mode="lines", name=name,
                                     legendgroup=name, showlegend=False,
                                     line={"color": color, "shape": "hv", "dash": "dot", "width": 1}), row=1, col=1)
            cost = scaling["cost_usd"]
            if cost.isna().all():
                cost, cost_unit = scaling["gpu_hours"], "GPU-hours"
            fig.add_trace(go.Scatter(x=scaling["time_s"], y=cost, mode="lines", name=name, legendgroup=name,
                                     showlegend=False, line={"color": color}), row=3, col=1)
        if len(req):
            w = latency_windows(req, window_s, metric)
            x = w["time_s"] + window_s / 2
            if i == 0:
                fig.add_trace(go.Scatter(x=x, y=w["count"] / window_s, mode="lines", name="offered rate",
                                         line={"color": "grey", "dash": "dash", "width": 1}),
                              row=1, col=1, secondary_y=True)
            fig.add_trace(go.Scatter(x=x, y=w["p99"], mode="lines", name=name, legendgroup=name,
                                     showlegend=scaling is None, line={"color": color}), row=2, col=1)
            fig.add_trace(go.Scatter(x=x, y=w["p50"], mode="lines", name=name, legendgroup=name, showlegend=False,
                                     line={"color": color, "dash": "dot", "width": 1}), row=2, col=1)
    fig.update_yaxes(title_text="replicas", rangemode="tozero", row=1, col=1, secondary_y=False)
    fig.update_yaxes(title_text="req/s", rangemode="tozero", showgrid=False, row=1, col=1, secondary_y=True)
    fig.update_yaxes(title_text="seconds", type="log", row=2, col=1)
    fig.update_yaxes(title_text=cost_unit, rangemode="tozero", row=3, col=1)
    fig.update_xaxes(title_text="simulated time (s)", row=3, col=1)
    fig.update_layout(title="Autoscaling: replicas, latency and cost over time", template="plotly_white",
                      height=800)
    return fig


# ----------------------------------------------------------------------------- sweeps

def latency_throughput_figure(df: pd.DataFrame, x: str = "throughput.output_tokens_per_s",
                              metrics=("ttft_s.p99", "tpot_s.p99", "e2e_s.p99"), group: str | None = None,
                              hover: str | None = None) -> go.Figure:
    """Latency against throughput, one panel per latency metric, one curve per value of `group`."""
    metrics = [m for m in metrics if m in df.columns]
    fig = make_subplots(rows=1, cols=max(len(metrics), 1), subplot_titles=[_label(m) for m in metrics])
    for i, (value, sub) in enumerate(_groups(df, group)):
        sub = sub.sort_values(x)
        name = _group_name(group, value, "runs")
        text = sub[hover].astype(str) if hover and hover in sub.columns else None
        for j, m in enumerate(metrics):
            fig.add_trace(go.Scatter(x=sub[x], y=sub[m], mode="lines+markers", name=name, legendgroup=name,
                                     showlegend=j == 0, text=text, line={"color": _COLORS[i % len(_COLORS)]},
                                     hovertemplate="%{text}<br>%{x:.4g}, %{y:.4g}<extra></extra>" if text is not None
                                     else None), row=1, col=j + 1)
            fig.update_xaxes(title_text=_label(x), row=1, col=j + 1)
            fig.update_yaxes(type="log", row=1, col=j + 1)
    fig.update_layout(title="Latency vs throughput", template="plotly_white")
    return fig


def factor_figure(df: pd.DataFrame, factor: str, metrics=("ttft_s.p99", "tpot_s.p99", "itl_s.p99"),
                  group: str | None = None) -> go.Figure:
    """Metrics against one swept factor (one panel per metric, one line per value of `group`)."""
    metrics = [m for m in metrics if m in df.columns]
    fig = make_subplots(rows=1, cols=max(len(metrics), 1), subplot_titles=[_label(m) for m in metrics])
    categorical = not pd.api.types.is_numeric_dtype(df[factor])
    log_x = not categorical and _log_worthy(df[factor])
    for i, (value, sub) in enumerate(_groups(df, group)):
        sub = sub.sort_values(factor)
        name = _group_name(group, value, factor)
        for j, m in enumerate(metrics):
            fig.add_trace(go.Scatter(x=sub[factor].astype(str) if categorical else sub[factor], y=sub[m],
                                     mode="lines+markers", name=name, legendgroup=name, showlegend=j == 0,
                                     line={"color": _COLORS[i % len(_COLORS)]}), row=1, col=j + 1)
            fig.update_xaxes(title_text=factor, type="log" if log_x else None, row=1, col=j + 1)
    fig.update_layout(title=f"Metrics vs {factor}", template="plotly_white")
    return fig


def heatmap_figure(df: pd.DataFrame, x: str, y: str, z: str) -> go.Figure:
    """A 2-D sweep as a heatmap of metric `z` over factors `x` and `y` (mean where points repeat)."""
    table = df.pivot_table(index=y, columns=x, values=z, aggfunc="mean")
    text = [[("" if pd.isna(v) else f"{v:.3g}") for v in row] for row in table.to_numpy()]
    fig = go.Figure(go.Heatmap(z=table.to_numpy(), x=[str(c) for c in table.columns],
                               y=[str(i) for i in table.index], text=text, texttemplate="%{text}",
                               colorscale="Viridis", colorbar={"title": {"text": _label(z)}},
                               hovertemplate=f"{x}=%{{x}}<br>{y}=%{{y}}<br>{z}=%{{z:.4g}}<extra></extra>"))
    fig.update_xaxes(title=x, type="category")
    fig.update_yaxes(title=y, type="category")
    fig.update_layout(title=f"{_label(z)} over {x} x {y}", template="plotly_white")
    return fig


def slo_attainment_figure(df: pd.DataFrame, rate: str = "rate", attainment: str = "slo_attainment",
                          goodput: str = "goodput_rps", group: str | None = None,
                          target: float | None = None) -> go.Figure:
    """SLO attainment (fraction of requests meeting every SLO) and goodput (req/s meeting them) vs rate."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=["SLO attainment", "goodput"])
    for i, (value, sub) in enumerate(_groups(df, group)):
        sub = sub.sort_values(rate)
        name = _group_name(group, value, "runs")
        color = _COLORS[i % len(_COLORS)]
        fig.add_trace(go.Scatter(x=sub[rate], y=sub[attainment], mode="lines+markers", name=name, legendgroup=name,
                                 line={"color": color}), row=1, col=1)
        fig.add_trace(go.Scatter(x=sub[rate], y=sub[goodput], mode="lines+markers", name=name, legendgroup=name,
                                 showlegend=False, line={"color": color}), row=1, col=2)
    if len(df):
        hi = float(df[rate].max())
        fig.add_trace(go.Scatter(x=[0, hi], y=[0, hi], mode="lines", name="offered rate",
                                 line={"color": "grey", "dash": "dot"}), row=1, col=2)
    if target is not None:
        fig.add_hline(y=target, line_dash="dash", line_color="grey", row=1, col=1,
                      annotation_text=f"target {target:.0%}")
    fig.update_yaxes(title_text="fraction of requests", tickformat=".0%", range=[0, 1.05], row=1, col=1)
    fig.update_yaxes(title_text="requests/s meeting the SLOs", row=1, col=2)
    fig.update_xaxes(title_text="offered rate per replica (req/s)")
    fig.update_layout(title="SLO attainment and goodput vs rate", template="plotly_white")
    return fig


# ----------------------------------------------------------------------------- capacity plans

def cost_figure(rows: pd.DataFrame, label: str = "candidate", cost: str = "usd_per_1m_output_tokens") -> go.Figure:
    """Cost per million output tokens of each candidate's cheapest deployment (cheapest first)."""
    r = rows.dropna(subset=[cost]).sort_values(cost)
    fig = go.Figure(go.Bar(x=r[label], y=r[cost], text=[f"${v:.2f}" for v in r[cost]], textposition="outside",
                           marker={"color": _COLORS[0]}))
    fig.update_yaxes(title="USD per 1M output tokens")
    fig.update_layout(title="Cost per 1M output tokens at the target rate", template="plotly_white")
    return fig


def gpus_vs_rate_figure(rows: pd.DataFrame, rates, label: str = "candidate", max_rate: str = "max_rate_per_replica",
                        tp: str = "tp") -> go.Figure:
    """GPUs needed to serve each total rate: ceil(rate / max rate per replica) replicas x TP GPUs each."""
    rates = np.asarray(list(rates), dtype=float)
    fig = go.Figure()
    for i, row in enumerate(rows.dropna(subset=[max_rate]).itertuples(index=False)):
        m = getattr(row, max_rate)
        if not m or m <= 0:
            continue
        gpus = np.ceil(rates / m - 1e-9) * getattr(row, tp)
        fig.add_trace(go.Scatter(x=rates, y=gpus, mode="lines", name=str(getattr(row, label)),
                                 line={"shape": "hv", "color": _COLORS[i % len(_COLORS)]}))
    fig.update_xaxes(title="total request rate (req/s)")
    fig.update_yaxes(title="GPUs needed")
    fig.update_layout(title="GPUs needed vs rate (replicas share load evenly)", template="plotly_white")
    return fig


def pareto_figure(rows: pd.DataFrame, x: str = "usd_per_hour", y: str = "e2e_s.p99", label: str = "candidate",
                  frontier: str = "pareto") -> go.Figure:
    """Cost against latency of each deployment; the non-dominated ones joined as the Pareto frontier."""
    r = rows.dropna(subset=[x, y])
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=r[x], y=r[y], mode="markers+text", text=r[label], textposition="top center",
                             name="deployments", marker={"size": 10, "color": _COLORS[0]}))
    if frontier in r.columns:
        f = r[r[frontier].astype(bool)].sort_values(x)
        fig.add_trace(go.Scatter(x=f[x], y=f[y], mode="lines+markers", name="Pareto frontier",
                                 line={"color": _COLORS[3], "shape": "hv"}, marker={"size": 12, "symbol": "star"}))
    fig.update_xaxes(title="USD per hour" if x == "usd_per_hour" else x)
    fig.update_yaxes(title=_label(y) + " at the target rate")
    fig.update_layout(title="Cost vs latency (Pareto frontier)", template="plotly_white")
    return fig


def pareto_mask(cost: np.ndarray, latency: np.ndarray) -> np.ndarray:
    """True where no other point is at least as good on both axes and strictly better on one."""
    cost, latency = np.asarray(cost, float), np.asarray(latency, float)
    keep = np.ones(len(cost), dtype=bool)
    for i in range(len(cost)):
        dominated = (cost <= cost[i]) & (latency <= latency[i]) & ((cost < cost[i]) | (latency < latency[i]))
        keep[i] = not dominated.any()
    return keep


# ----------------------------------------------------------------------------- files

def save_figure(fig: go.Figure, stem: "str | Path", *, png: bool = True, width: int = 1100,
                height: int | None = None) -> list[Path]:
    """Write `stem`.html (self-contained) and, when kaleido can render here, `stem`.png.

    kaleido is optional (it drives a local Chrome/Chromium); without it only the HTML is written.
    """
    from pathlib import Path

    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    html = stem.with_suffix(".html")
    fig.write_html(str(html), include_plotlyjs=True)
    written = [html]
    if png:
        try:
            fig.write_image(str(stem.with_suffix(".png")), width=width, height=height or fig.layout.height or 500,
                            scale=1)
            written.append(stem.with_suffix(".png"))
        except Exception as exc:  # noqa: BLE001 - kaleido missing or no browser for it
            import warnings

            warnings.warn(f"PNG not written ({type(exc).__name__}: {exc}); pip install kaleido for PNGs",
                          stacklevel=2)
    return written


DOCS_STUDIES = Path(__file__).resolve().parents[1] / "docs" / "studies"


def save_study_figure(fig: go.Figure, out_dir: "str | Path", name: str, docs: bool = False, **kwargs) -> None:
    """An example study's chart: `out_dir`/`name`.html (+ .png); with `docs`, also the PNG alone in docs/studies/
    (the page docs/STUDIES.md shows). `kwargs` go to `save_figure` (width, height)."""
    save_figure(fig, Path(out_dir) / name, **kwargs)
    if docs:
        save_figure(fig, DOCS_STUDIES / name, **kwargs)
        (DOCS_STUDIES / f"{name}.html").unlink(missing_ok=True)


def study_parser(doc: str, out: str, docs_help: str, *, workers: bool = True) -> "argparse.ArgumentParser":
    """The command line every example study shares: `--out` (default `out`), `--workers` (parallel runs; left out
    for a study that runs in-process) and `--docs` (also write the docs/studies/ PNG); a study adds its own."""
    import argparse

    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(out))
    if workers:
        ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--docs", action="store_true", help=docs_help)
    return ap
