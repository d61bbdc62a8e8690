"""Chrome-trace export: a run's iterations as a timeline for chrome://tracing or ui.perfetto.dev.

The Trace Event Format is a JSON object ``{"traceEvents": [...]}``. We write:

- one complete event (``ph: "X"``) per iteration, on process "replica N", thread "iterations":
  named ``prefill`` when the step computed more tokens than it had sequences (some prompt work)
  and ``decode`` otherwise, with the token count and batch size in ``args``;
- counter events (``ph: "C"``) for the sampled queue length, running batch and KV usage when
  the run was sampled (``sim.sample_interval_s``);
- for runs of at most `max_requests` requests, one nestable async span per request
  (``ph: "b"/"e"``) split into ``queued``, ``prefill`` and ``decode``.

Timestamps are microseconds of simulated time. The step records come from ``sim.record_steps``
(``sim.chrome_trace`` turns it on).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

US = 1e6


def chrome_trace(steps: pd.DataFrame | None, requests: pd.DataFrame | None = None,
                 timeseries: pd.DataFrame | None = None, *, label: str = "", max_requests: int = 2000) -> dict:
    """The trace as a dict (``json.dump`` it, or use `write_chrome_trace`)."""
    events: list[dict] = []
    replicas = sorted(set(steps["replica"].tolist())) if steps is not None and len(steps) else [0]
    for r in replicas:
        events.append({"ph": "M", "name": "process_name", "pid": int(r), "tid": 0,
                       "args": {"name": f"replica {r}" + (f" ({label})" if label else "")}})
        events.append({"ph": "M", "name": "thread_name", "pid": int(r), "tid": 0, "args": {"name": "iterations"}})
    if steps is not None and len(steps):
        rep = steps["replica"].to_numpy()
        start = steps["start_s"].to_numpy()
        dur = steps["end_s"].to_numpy() - start
        tokens = steps["tokens"].to_numpy()
        batch = steps["batch"].to_numpy()
        for r, s, d, t, b in zip(rep.tolist(), (start * US).tolist(), (dur * US).tolist(), tokens.tolist(),
                                 batch.tolist()):
            events.append({"ph": "X", "cat": "step", "name": "prefill" if t > b else "decode", "pid": r, "tid": 0,
                           "ts": s, "dur": d, "args": {"tokens": t, "batch": b}})
    if timeseries is not None and len(timeseries):
        for row in timeseries.itertuples(index=False):
            ts = row.time_s * US
            events.append({"ph": "C", "name": "queue", "pid": replicas[0], "ts": ts,
                           "args": {"waiting": int(row.waiting), "running": int(row.running)}})
            events.append({"ph": "C", "name": "kv_usage", "pid": replicas[0], "ts": ts,
                           "args": {"kv_usage": float(row.kv_usage)}})
    if requests is not None and 0 < len(requests) <= max_requests:
        events.extend(_request_spans(requests))
    return {"traceEvents": events, "displayTimeUnit": "ms",
            "otherData": {"generator": "servesim", "time": "simulated"}}


def _request_spans(req: pd.DataFrame) -> list[dict]:
    out = []
    cols = [req[c].to_numpy() for c in ("request_id", "replica", "arrival_s", "first_scheduled_s",
                                         "first_token_s", "finish_s", "input_tokens", "output_tokens")]
    for rid, rep, arr, sched, first, fin, inp, outp in zip(*(c.tolist() for c in cols)):
        base = {"cat": "request", "id": int(rid), "pid": int(rep), "tid": 1}
        out.append({**base, "ph": "b", "name": f"request {rid}", "ts": arr * US,
                    "args": {"input_tokens": inp, "output_tokens": outp}})
        for name, a, b in (("queued", arr, sched), ("prefill", sched, first), ("decode", first, fin)):
            if b > a:
                out.append({**base, "ph": "b", "name": name, "ts": a * US})
                out.append({**base, "ph": "e", "name": name, "ts": b * US})
        out.append({**base, "ph": "e", "name": f"request {rid}", "ts": fin * US})
    return out


def write_chrome_trace(result, path: str | Path, *, max_requests: int = 2000) -> Path:
    """Write a RunResult's step records (and samples, and requests of a short run) as a Chrome trace."""
    if result.steps is None:
        raise ValueError("the run recorded no steps; set sim.record_steps (or sim.chrome_trace) before running")
    d = result.summary.get("deployment", {})
    label = f"{d.get('model', '')} on {d.get('tp', 1)}x {d.get('gpu', '')}".strip()
    trace = chrome_trace(result.steps, result.requests, result.timeseries, label=label, max_requests=max_requests)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(trace, separators=(",", ":"), default=_np_default))
    return p


def _np_default(o):
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
