"""HTML reports and the Chrome-trace export.

`servesim run --out` writes report.html unless --no-report; the reports of a run, a sweep and a
capacity plan are opened in a real headless Chromium, which must draw every chart (plotly's
SVG) and raise no JavaScript error. That test is skipped when no Chromium is installed.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from experiments.planner import plan
from experiments.report import Report, run_report
from experiments.runner import run
from experiments.sweep import run_sweep
from experiments.trace_export import chrome_trace
from tests.paths import SERVESIM


BASE = {
    "model": "llama-3.1-8b",
    "hardware": {"gpu": "h100"},
    "engine": {"max_model_len": 4096, "max_num_batched_tokens": 1024},
    "sim": {"progress": False},
    "workload": {"type": "poisson", "stages": [{"rate": 6, "duration_s": 10}],
                 "input_len": {"dist": "lognormal", "mean": 700, "sigma": 0.6, "max": 3000}, "output_len": 50},
    "seed": 2,
}
CHARTED = ["sim.record_steps=true", "sim.sample_interval_s=0.5"]


@pytest.fixture(scope="module")
def result():
    return run(BASE, CHARTED)


def chart_ids(page: str) -> list[str]:
    return re.findall(r'<div id="(chart-\d+)" class="plotly-graph-div"', page)


def test_run_report_content_and_speed(result):
    run_report(result).html()                                    # warm plotly's lazy imports
    t0 = time.perf_counter()
    rep = run_report(result)
    page = rep.html()
    elapsed = time.perf_counter() - t0
    assert elapsed < 1.0, f"rendering took {elapsed:.2f} s"
    assert rep.num_charts == 4 and len(chart_ids(page)) == 4      # CDFs, latency by arrival, state, timeline
    assert page.count("<script") >= 5 and "Plotly.newPlot" in page
    assert 'src="http' not in page                                 # plotly.js is inline, not from a CDN
    for text in ("TTFT (s)", "Resolved config", "max_num_batched_tokens: 1024", "Iteration timeline",
                 "Replica state over time", "requests completed / total"):
        assert text in page, text
    plain = run(BASE)
    assert run_report(plain).num_charts == 2                      # no samples, no steps: no such charts


def test_report_escapes_text(tmp_path):
    rep = Report("<script>alert(1)</script>")
    rep.paragraph("a < b & c").table([{"x": "<b>"}]).pre("</pre><script>")
    page = rep.html()
    assert "<script>alert" not in page and "&lt;b&gt;" in page and "a &lt; b &amp; c" in page
    assert "Plotly" not in page                                   # no charts: no plotly.js
    assert rep.write(tmp_path / "r.html").read_text() == page
    assert oct((tmp_path / "r.html").stat().st_mode & 0o777) != oct(0o600)


def test_cli_run_writes_report_and_trace(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(BASE))
    out, trace = tmp_path / "out", tmp_path / "t" / "trace.json"
    p = subprocess.run([str(SERVESIM), "run", str(cfg), "--out", str(out), "--trace-out", str(trace), "--json"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert {"report.html", "summary.json", "steps.parquet"} <= {f.name for f in out.iterdir()}
    summary = json.loads((out / "summary.json").read_text())
    events = json.loads(trace.read_text())["traceEvents"]
    steps = [e for e in events if e["ph"] == "X"]
    assert len(steps) == summary["sim"]["iterations"]
    assert sum(e["dur"] for e in steps) == pytest.approx(summary["batch"]["busy_fraction"]
                                                          * summary["sim"]["simulated_time_s"] * 1e6)
    assert {e["name"] for e in steps} == {"prefill", "decode"}
    out2 = tmp_path / "out2"
    p = subprocess.run([str(SERVESIM), "run", str(cfg), "--out", str(out2), "--no-report", "--json"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and not (out2 / "report.html").exists()


def test_chrome_trace_events(result):
    trace = chrome_trace(result.steps, result.requests, result.timeseries, label="x")
    ev = trace["traceEvents"]
    x = [e for e in ev if e["ph"] == "X"]
    assert len(x) == len(result.steps) and all(e["dur"] > 0 for e in x)
    assert all(a["ts"] + a["dur"] <= b["ts"] + 1e-3 for a, b in zip(x, x[1:]))
    begins = [e for e in ev if e["ph"] == "b"]
    ends = [e for e in ev if e["ph"] == "e"]
    assert len(begins) == len(ends) >= len(result.requests)
    assert len([e for e in ev if e["ph"] == "C"]) == 2 * len(result.timeseries)
    assert not [e for e in chrome_trace(result.steps, result.requests, max_requests=10)["traceEvents"]
                if e["ph"] == "b"]
    json.dumps(trace, allow_nan=False)


# ----------------------------------------------------------------------------- a real browser

def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


_COLLECTOR = """<script>
window.__errors = [];
function __report() { var d = document.getElementById('js-errors');
  if (!d) { d = document.createElement('div'); d.id = 'js-errors'; (document.body || document.documentElement).appendChild(d); }
  d.textContent = window.__errors.join(' | '); }
window.onerror = function (msg, src, line) { window.__errors.push(msg + ' @' + line); if (document.body) __report(); };
window.addEventListener('unhandledrejection', function (e) { window.__errors.push('rejection: ' + e.reason);
  if (document.body) __report(); });
var __ce = console.error; console.error = function () { window.__errors.push('console.error: ' +
  Array.prototype.join.call(arguments, ' ')); return __ce.apply(console, arguments); };
document.addEventListener('DOMContentLoaded', __report);
window.addEventListener('load', __report);
</script>"""


def _dump_dom(browser: str, page: Path, profile: Path) -> str:
    p = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
                        f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom",
                        page.resolve().as_uri()], capture_output=True, text=True, timeout=90)
    assert p.returncode == 0, p.stderr[-2000:]
    return p.stdout


@pytest.fixture(scope="module")
def reports(tmp_path_factory, result):
    d = tmp_path_factory.mktemp("reports")
    run_html = run_report(result).write(d / "run.html")
    sweep = {"base": BASE, "grid": {"engine.max_num_batched_tokens": [256, 2048],
                                    "workload.stages[0].rate": [3, 6]},
             "slo": {"ttft_s": 0.5, "tpot_s": 0.05}}
    sweep_html = run_sweep(sweep, d / "sweep", workers=1).report
    plan_spec = {"model": BASE["model"], "base": {"engine": BASE["engine"]}, "workload": BASE["workload"],
                 "slo": {"ttft_s": 0.5, "tpot_s": 0.03}, "target_rate": 20, "gpus": ["h100", "a100-sxm-80gb"],
                 "probe_duration_s": 15, "initial_rate": 8, "rate_tolerance": 0.2}
    plan_html = plan(plan_spec, d / "plan", workers=1).files["html"]
    return {"run": run_html, "sweep": sweep_html, "plan": plan_html}


def test_reports_render_in_a_headless_browser(reports, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium on PATH (apt-get install -y chromium)")
    pages = {}
    for name, path in reports.items():
        page = path.read_text()
        probe = tmp_path / f"{name}.html"
        probe.write_text(page.replace("<head>", "<head>" + _COLLECTOR, 1))
        pages[name] = (chart_ids(page), probe)
    assert all(ids for ids, _ in pages.values())
    with ThreadPoolExecutor(max_workers=len(pages)) as pool:
        doms = dict(zip(pages, pool.map(lambda kv: _dump_dom(browser, kv[1][1], tmp_path / f"profile-{kv[0]}"),
                                        pages.items())))
    for name, dom in doms.items():
        ids, _ = pages[name]
        errors = re.search(r'<div id="js-errors">(.*?)</div>', dom, re.S)
        assert errors is not None, f"{name}: the error collector did not run"
        assert errors.group(1).strip() == "", f"{name}: JavaScript errors: {errors.group(1)[:500]}"
        for chart in ids:
            start = dom.index(f'id="{chart}"')
            nxt = min([dom.index(f'id="{c}"') for c in ids if dom.index(f'id="{c}"') > start] + [len(dom)])
            assert 'class="main-svg"' in dom[start:nxt], f"{name}: {chart} was not drawn"
        assert dom.count('class="plot-container plotly"') == len(ids), name


def test_report_of_sweep_and_plan_mention_their_content(reports):
    sweep = reports["sweep"].read_text()
    for text in ("Heatmaps over engine.max_num_batched_tokens x workload.stages[0].rate", "Latency vs throughput",
                 "SLO attainment and goodput", "Sweep file"):
        assert text in sweep, text
    page = reports["plan"].read_text()
    for text in ("Recommendation", "X/R", "Cost vs latency", "GPUs needed vs rate", "SLO attainment"):
        assert text in page, text
    assert os.path.getsize(reports["run"]) < 8_000_000
