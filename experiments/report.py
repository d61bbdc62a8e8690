"""Self-contained HTML reports: one file with plotly.js inlined, tables, charts and the config.

`Report` is a small builder (headings, paragraphs, tables, figures, preformatted text) that
renders to one HTML string; it needs no network to open. Three ready-made reports:

- `run_report(result)`: a single run (summary table, latency CDFs, latency by arrival time,
  replica time series and the iteration timeline when the run recorded them, resolved config);
- `sweep_report(table, spec)`: a sweep (results table, metric-vs-factor lines, heatmaps for
  two factors, latency vs throughput, SLO attainment when the sweep names SLOs);
- the capacity plan's report is assembled in `experiments.planner` with the same builder.

Charts come from `experiments.charts`. Rendering a report takes a few tens of milliseconds.
"""
from __future__ import annotations

import html
import math
import os
from pathlib import Path

import pandas as pd
import yaml

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;
color:#222;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem} h2{font-size:1.25rem;margin-top:2rem;border-bottom:1px solid #ddd}
.sub{color:#666;margin-top:0}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}
th,td{border:1px solid #ddd;padding:.25rem .5rem;text-align:right} th{background:#f5f5f5}
td.t,th.t{text-align:left}
.scroll{overflow-x:auto;max-height:480px;overflow-y:auto}
pre{background:#f7f7f7;padding:.75rem;font-size:.8rem;overflow-x:auto}
.chart{width:100%;margin:1rem 0}
.note{background:#fff8e1;border-left:4px solid #f0c000;padding:.5rem .75rem}
"""


def fmt(v) -> str:
    """A table cell: floats to 4 significant digits, None/NaN empty."""
    if v is None:
        return ""
    if isinstance(v, float):
        if math.isnan(v):
            return ""
        if v == 0:
            return "0"
        if abs(v) >= 1e5 or abs(v) < 1e-3:
            return f"{v:.3g}"
        return f"{v:.4g}"
    return str(v)


class Report:
    """An HTML report built piece by piece; `html()` renders it, `write(path)` saves it atomically."""

    def __init__(self, title: str, subtitle: str = "") -> None:
        self.title, self.subtitle = title, subtitle
        self._parts: list[str] = []
        self._charts = 0

    def heading(self, text: str) -> Report:
        """Add a section heading."""
        self._parts.append(f"<h2>{html.escape(text)}</h2>")
        return self

    def paragraph(self, text: str, note: bool = False) -> Report:
        """Add a paragraph of text (highlighted as a note when `note`)."""
        cls = ' class="note"' if note else ""
        self._parts.append(f"<p{cls}>{html.escape(text)}</p>")
        return self

    def table(self, data: pd.DataFrame | list[dict], columns: list[str] | None = None, max_rows: int = 1000) -> Report:
        """Add a table of a DataFrame or list of dicts (at most `max_rows` rows)."""
        df = data if isinstance(data, pd.DataFrame) else pd.DataFrame(data)
        cols = [c for c in (columns or list(df.columns)) if c in df.columns]
        text_cols = {c for c in cols if not pd.api.types.is_numeric_dtype(df[c])}
        head = "".join(f'<th class="{"t" if c in text_cols else ""}">{html.escape(str(c))}</th>' for c in cols)
        rows = []
        for rec in df[cols].head(max_rows).itertuples(index=False):
            rows.append("<tr>" + "".join(f'<td class="{"t" if c in text_cols else ""}">{html.escape(fmt(v))}</td>'
                                         for c, v in zip(cols, rec)) + "</tr>")
        more = (f"<p class=\"sub\">{len(df) - max_rows} more rows not shown (see the parquet/CSV files)</p>"
                if len(df) > max_rows else "")
        self._parts.append(f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}'
                           f"</tbody></table></div>{more}")
        return self

    def figure(self, fig, height: int | None = None) -> Report:
        """Add a plotly figure (its JavaScript is inlined once, in `html()`)."""
        self._charts += 1
        h = height or fig.layout.height or 450
        div = fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"chart-{self._charts}",
                          default_width="100%", default_height=f"{int(h)}px", config={"responsive": True})
        self._parts.append(f'<div class="chart">{div}</div>')
        return self

    def pre(self, text: str) -> Report:
        """Add preformatted text (a config, a YAML file)."""
        self._parts.append(f"<pre>{html.escape(text)}</pre>")
        return self

    @property
    def num_charts(self) -> int:
        """Figures added so far."""
        return self._charts

    def html(self) -> str:
        """The whole report as one self-contained HTML page."""
        from plotly.offline import get_plotlyjs

        sub = f'<p class="sub">{html.escape(self.subtitle)}</p>' if self.subtitle else ""
        js = get_plotlyjs() if self._charts else ""
        return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<title>{html.escape(self.title)}</title><style>{_CSS}</style>"
                f"<script type=\"text/javascript\">{js}</script></head><body>"
                f"<h1>{html.escape(self.title)}</h1>{sub}{''.join(self._parts)}</body></html>\n")

    def write(self, path: str | Path) -> Path:
        """Write the report to `path` atomically and return the path."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(self.html(), encoding="utf-8")
            os.replace(tmp, p)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return p


# ----------------------------------------------------------------------------- one run

def summary_rows(summary: dict) -> list[dict]:
    """The latency distributions of a summary as table rows (metric, mean, p50, p90, p99, max)."""
    rows = []
    for key, name in (("ttft_s", "TTFT (s)"), ("tpot_s", "TPOT (s)"), ("itl_s", "ITL (s)"), ("e2e_s", "E2E (s)")):
        d = summary.get(key) or {}
        rows.append({"metric": name, **{s: d.get(s) for s in ("mean", "p50", "p90", "p99", "max")}})
    return rows


def run_report(result, title: str | None = None, max_timeline_steps: int = 3000) -> Report:
    """A single run's report (see the module docstring)."""
    from . import charts

    s = result.summary
    d = s.get("deployment", {})
    title = title or f"servesim run: {d.get('model', '?')} on {d.get('tp', 1)}x {d.get('gpu', '?')}"
    req, thr, kv, batch, sim = s["requests"], s["throughput"], s["kv"], s["batch"], s["sim"]
    rep = Report(title, subtitle=f"scheduler {d.get('scheduler')}, engine profile {d.get('engine_profile')}, "
                                 f"weights {d.get('weight_dtype')}, KV {d.get('kv_dtype')}, "
                                 f"max_model_len {d.get('max_model_len')}")
    rep.heading("Summary")
    rep.table(summary_rows(s))
    rep.table([
        {"quantity": "requests completed / total", "value": f"{req['completed']} / {req['total']}"},
        {"quantity": "requests dropped / unfinished", "value": f"{req.get('dropped', 0)} / {req.get('unfinished', 0)}"},
        {"quantity": "throughput (req/s)", "value": fmt(thr.get("requests_per_s"))},
        {"quantity": "output tokens/s", "value": fmt(thr.get("output_tokens_per_s"))},
        {"quantity": "input tokens/s", "value": fmt(thr.get("input_tokens_per_s"))},
        {"quantity": "mean running batch", "value": fmt(batch.get("mean_running"))},
        {"quantity": "busy fraction", "value": fmt(batch.get("busy_fraction"))},
        {"quantity": "peak KV usage", "value": fmt(kv.get("peak_usage"))},
        {"quantity": "prefix hit rate", "value": fmt(kv.get("prefix_hit_rate"))},
        {"quantity": "preemptions", "value": fmt(s.get("preemptions"))},
        {"quantity": "simulated time (s) / wall time (s)",
         "value": f"{fmt(sim.get('simulated_time_s'))} / {fmt(sim.get('wall_time_s'))}"},
        {"quantity": "iterations", "value": fmt(sim.get("iterations"))},
    ])
    if len(result.requests):
        rep.heading("Latency distributions")
        rep.figure(charts.cdf_figure({"run": result.requests}), height=400)
        rep.figure(charts.latency_over_time_figure(result.requests), height=400)
    if getattr(result, "timeseries", None) is not None and len(result.timeseries):
        rep.heading("Replica state over time")
        rep.figure(charts.timeseries_figure(result.timeseries))
    if getattr(result, "links", None) is not None and len(result.links):
        rep.heading("Link utilisation over time")
        rep.figure(charts.link_utilisation_figure(result.links))
    if getattr(result, "scaling", None) is not None and len(result.scaling):
        rep.heading("Autoscaling")
        rep.figure(charts.autoscaling_figure({"run": (result.requests, result.scaling)}))
    if getattr(result, "steps", None) is not None and len(result.steps):
        rep.heading("Iteration timeline")
        rep.figure(charts.timeline_figure(result.steps, max_steps=max_timeline_steps))
    rep.heading("Resolved config")
    rep.pre(yaml.safe_dump(result.config.model_dump(mode="json"), sort_keys=False))
    return rep


def write_run_report(result, path: str | Path) -> Path:
    """Write a run's report (`run_report`) to `path`."""
    return run_report(result).write(path)


# ----------------------------------------------------------------------------- sweeps

KEY_METRICS = ("ttft_s.p99", "tpot_s.p99", "itl_s.p99", "e2e_s.p99", "throughput.requests_per_s",
               "throughput.output_tokens_per_s")


def sweep_report(table: pd.DataFrame, factors: list[str], title: str = "servesim sweep",
                 config_text: str = "", slo: dict | None = None) -> Report:
    """A sweep's report: results table and the charts its factors call for."""
    from . import charts

    ok = table[table["status"] == "ok"] if "status" in table.columns else table
    failed = len(table) - len(ok)
    rep = Report(title, subtitle=f"{len(table)} runs over {', '.join(factors) or 'no factors'}"
                                 + (f"; {failed} failed" if failed else ""))
    numeric = [f for f in factors if f in ok.columns and pd.api.types.is_numeric_dtype(ok[f])
               and ok[f].nunique() > 1]
    varying = [f for f in factors if f in ok.columns and ok[f].astype(str).nunique() > 1]
    rep.heading("Results")
    rep.table(table, ["run_id", "status", *factors, *[m for m in KEY_METRICS if m in table.columns], "error"])
    if len(ok):
        if len(varying) >= 1:
            x = numeric[0] if numeric else varying[0]
            group = next((f for f in varying if f != x), None)
            rep.heading(f"Metrics vs {x}")
            rep.figure(charts.factor_figure(ok, x, group=group), height=420)
        if len(varying) == 2:
            x, y = varying
            rep.heading(f"Heatmaps over {x} x {y}")
            for z in ("ttft_s.p99", "tpot_s.p99", "itl_s.p99"):
                if z in ok.columns and ok[z].notna().any():
                    rep.figure(charts.heatmap_figure(ok, x, y, z), height=420)
        if "throughput.output_tokens_per_s" in ok.columns:
            rate = next((f for f in varying if "rate" in f), None)
            group = next((f for f in varying if f != rate), None) if rate else None
            rep.heading("Latency vs throughput")
            rep.figure(charts.latency_throughput_figure(ok, group=group, hover="run_id"), height=420)
        if slo and "slo.attainment" in ok.columns:
            from .planner import SLO

            rate = next((f for f in numeric if "rate" in f), None)
            rep.heading("SLO attainment and goodput")
            rep.paragraph("SLO: " + SLO.model_validate(slo).describe())
            if rate:
                group = next((f for f in varying if f != rate), None)
                rep.figure(charts.slo_attainment_figure(ok, rate=rate, attainment="slo.attainment",
                                                        goodput="slo.goodput_rps", group=group), height=420)
            elif varying:                  # no rate factor: attainment against what the sweep varies
                x = numeric[0] if numeric else varying[0]
                rep.figure(charts.factor_figure(ok, x, metrics=("slo.attainment", "slo.goodput_rps"),
                                                group=next((f for f in varying if f != x), None)), height=420)
            rep.table(ok, ["run_id", *factors, "slo.met", "slo.attainment", "slo.goodput_rps"])
    if failed:
        rep.heading("Failed runs")
        rep.table(table[table["status"] != "ok"], ["run_id", *factors, "error"])
    if config_text:
        rep.heading("Sweep file")
        rep.pre(config_text)
    return rep
