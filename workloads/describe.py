"""Describe a workload or a trace: rate over time, burstiness, lengths, prefix reuse.

`describe(source)` takes a workload config (a dict, a workload YAML, or a run-config YAML with a
``workload:`` section) or a trace file (any registered format, sniffed or named), and returns a
`WorkloadDescription`: the arrival times and lengths as arrays plus `summary()`, a JSON-ready dict
with ``rows, duration_s, rate_per_s, input_tokens.{mean,p50,p90,p99,max},
output_tokens.{...}, interarrival_cv, prefix_hit_upper_bound`` and a few more.

* ``duration_s`` is the span from the first to the last arrival and ``rate_per_s`` is rows over it;
  ``interarrival_cv`` is std / mean of the gaps (1 for Poisson); ``peak_1min_rate_per_s`` is the most
  arrivals in a minute, per second (over the whole span when it is shorter), never below the mean
  rate. All None without arrival times.
* ``prefix_hit_upper_bound`` is the fraction of prompt tokens an infinite prefix cache could serve
  if requests ran one after another in arrival order: each prompt's longest common prefix, in tokens,
  with any earlier prompt, by segment identity (`_PrefixTrie`), over all prompt tokens. It is
  token-exact (no block rounding, no "at least one token computed" cap), prompts only (a real
  engine may also cache generated tokens). None when the source has no prefix identity.
* Conversations paced ``after_finish`` are described on their zero-service-time timeline
  (`SessionWorkload.preview`); closed-loop clients have no timeline before a simulation, so only
  their lengths are described.

No plotting here: `experiments.workload_report` draws the charts.
"""
from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sim.errors import ConfigError

#: Window of the peak rate (a trace shorter than this: its whole span).
PEAK_WINDOW_S = 60.0
#: The prefix bound is computed over at most this many prompts (its trie grows with the segments seen).
PREFIX_ROWS = 500_000
_YAML = (".yaml", ".yml")


class _PrefixTrie:
    """Longest common prefix (in tokens) of each prompt with every earlier one, by segment identity.

    A node is a prefix path of whole segments; ``_longest[(node, key)]`` is the longest run of
    segment ``key`` seen after that path. Two prompts that agree on a path and then continue with the
    same key share ``min`` of their two runs (same key and start: same tokens), and nothing after.
    """

    def __init__(self) -> None:
        self._child: dict[tuple[int, Hashable, int], int] = {}
        self._longest: dict[tuple[int, Hashable], int] = {}

    def add(self, segments: Iterable[tuple[Hashable, int]]) -> int:
        """Insert a prompt; return how many of its leading tokens earlier prompts already had."""
        child, longest = self._child, self._longest
        cur, hit, matching = 0, 0, True
        for key, n in segments:
            nk = (cur, key, n)
            nxt = child.get(nk)
            if nxt is not None and matching:
                hit += n
                cur = nxt
                continue
            lk = (cur, key)
            m = longest.get(lk, 0)
            if matching:
                hit += m if m < n else n
                matching = False
            if n > m:
                longest[lk] = n
            if nxt is None:
                nxt = child[nk] = len(child) + 1
            cur = nxt
        return hit


@dataclass
class WorkloadDescription:
    """Arrays describing a request stream, and their summary."""

    source: str
    kind: str
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    arrival_s: np.ndarray | None = None
    prefix_hit_upper_bound: float | None = None
    sessions: int | None = None
    classes: dict[str, int] = field(default_factory=dict)
    dropped: int = 0
    clipped: int = 0
    notes: list[str] = field(default_factory=list)

    def rate_series(self, bin_s: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(bin start times, arrivals per second in each bin); ~120 bins by default."""
        t = self.arrival_s
        if t is None or len(t) == 0:
            return np.zeros(0), np.zeros(0)
        t0, span = float(t[0]), float(t[-1] - t[0])
        if bin_s is None:
            bin_s = _nice(span / 120) if span > 0 else 1.0
        edges = t0 + np.arange(0.0, span + bin_s, bin_s)
        if len(edges) < 2:
            edges = np.array([t0, t0 + bin_s])
        counts, _ = np.histogram(t, bins=edges)
        # the last bin ends with the last arrival, not at its full width: divide by the time it covers
        widths = np.diff(edges)
        widths[-1] = max(min(widths[-1], float(t[-1]) - edges[-2]), bin_s * 1e-3) if len(widths) > 1 else widths[-1]
        return edges[:-1], counts / widths

    def summary(self) -> dict:
        """JSON-ready statistics (see the module docstring)."""
        t = self.arrival_s
        rows = int(len(self.input_tokens))
        duration = rate = cv = peak = None
        if t is not None and rows > 1:
            duration = float(t[-1] - t[0])
            rate = rows / duration if duration > 0 else None
            gaps = np.diff(t)
            cv = float(gaps.std() / gaps.mean()) if gaps.mean() > 0 else None
            if duration > 0:
                peak = _peak_rate(t, min(PEAK_WINDOW_S, duration), rate)
        notes = list(self.notes)
        if duration is not None and 0 < duration < PEAK_WINDOW_S:
            notes.append(f"the trace spans {duration:.3g} s, less than a minute: its peak 1-min rate is the rate "
                         f"over that span")
        return {
            "source": self.source, "kind": self.kind, "rows": rows,
            "duration_s": duration, "rate_per_s": rate, "peak_1min_rate_per_s": peak, "interarrival_cv": cv,
            "input_tokens": _dist(self.input_tokens), "output_tokens": _dist(self.output_tokens),
            "prefix_hit_upper_bound": self.prefix_hit_upper_bound,
            "sessions": self.sessions, "classes": dict(self.classes) or None,
            "dropped": self.dropped, "clipped": self.clipped, "notes": notes,
        }


def _peak_rate(t: np.ndarray, w: float, mean: float) -> float:
    """Most arrivals in a closed window [t_i, t_i + w], per second, and never below the mean rate.

    The mean counts every row over the span, so a window as long as the span gives exactly the mean;
    windows shorter than a span with arrivals bunched at both ends could each hold less than that."""
    right = np.searchsorted(t, t + w, side="right")
    return max(float((right - np.arange(len(t))).max() / w), mean)


def _dist(x: np.ndarray) -> dict:
    if len(x) == 0:
        return {"mean": None, "p50": None, "p90": None, "p99": None, "min": None, "max": None}
    p50, p90, p99 = np.percentile(x, (50, 90, 99))
    return {"mean": float(x.mean()), "p50": float(p50), "p90": float(p90), "p99": float(p99),
            "min": int(x.min()), "max": int(x.max())}


def _nice(x: float) -> float:
    """x rounded up to 1, 2 or 5 times a power of ten."""
    if x <= 0:
        return 1.0
    e = 10.0 ** np.floor(np.log10(x))
    return float(next(m * e for m in (1, 2, 5, 10) if m * e >= x))


def describe(source: str | Path | Mapping[str, Any], *, fmt: str = "auto", seed: int | None = None,
             max_model_len: int | None = None) -> WorkloadDescription:
    """Describe a workload config (dict / YAML) or a trace file (see the module docstring).

    A run config is validated as `servesim run` validates it, and its workload is described as the run
    would replay it: built from the run's workload seed, clipped to the run's max_model_len."""
    if isinstance(source, Mapping):
        return describe_config(dict(source), seed=0 if seed is None else seed, max_model_len=max_model_len)
    p = Path(source)
    if p.suffix.lower() not in _YAML:
        return describe_trace(p, fmt=fmt)
    data = _read_yaml(p)
    study = {"base", "slo", "target_rate", "gpus", "grid", "zip", "random"} & set(data)
    if "workload" in data and not study:                  # a run config (sweep and plan files have keys of their own)
        from experiments.config import load_config

        run = load_config(p, [f"seed={seed}"] if seed is not None else None)
        return describe_config(run.workload, seed=np.random.SeedSequence(run.seed).spawn(1)[0],
                               max_model_len=max_model_len or run_max_model_len(run), source=str(p))
    cfg = data.get("workload", data)
    if not isinstance(cfg, dict) or "type" not in cfg:
        raise ConfigError(f"{p}: the workload needs a 'type' (poisson, synthetic, sessions, trace, ...)")
    cfg_seed = data.get("seed", 0) if "workload" in data else 0
    if isinstance(cfg_seed, bool) or not isinstance(cfg_seed, int):
        raise ConfigError(f"{p}: seed must be a whole number (got {cfg_seed!r})")
    return describe_config(_resolve_paths(cfg, p.resolve().parent), seed=cfg_seed if seed is None else seed,
                           max_model_len=max_model_len, source=str(p))


def run_max_model_len(run: Any) -> int:
    """The max_model_len a run of `run` (a RunConfig) clips prompts to: engine.max_model_len, else the
    shortest context length of its models (each replica's default, as `experiments.build.plan_replica`)."""
    if run.engine.max_model_len:
        return run.engine.max_model_len
    from sim.models import get_model

    names = {run.model.name}
    if run.cascade is not None:
        names |= {t.model or run.model.name for t in run.cascade.tiers}
    return min(get_model(n).max_position_embeddings for n in sorted(names))


def _read_yaml(p: Path) -> dict:
    import yaml

    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} not found")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a workload (a mapping with 'type') or a run config with 'workload:'")
    return data


def _resolve_paths(node: Any, base: Path) -> Any:
    """Relative file paths anywhere in a workload config (trace, replay, empirical lengths, rate curve)
    are taken relative to the YAML file's folder."""
    if isinstance(node, dict):
        return {k: (str(base / v) if k in ("path", "curve_path") and isinstance(v, str) and not Path(v).is_absolute()
                    else _resolve_paths(v, base)) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve_paths(v, base) for v in node]
    return node


def describe_config(cfg: Any, *, seed: int | np.random.SeedSequence = 0, max_model_len: int | None = None,
                    source: str | None = None) -> WorkloadDescription:
    """Describe the workload a config (a dict or a validated workload model) builds."""
    from .build import build_workload, parse_workload_config

    model = parse_workload_config(cfg)
    w = build_workload(model, seed, max_model_len=max_model_len)
    src = source or f"workload {model.type}"
    notes: list[str] = list(getattr(w, "notes", []))
    if hasattr(w, "preview"):
        notes.append("paced after_finish: described on the zero-service-time timeline (waits counted from "
                     "the previous turn's arrival)")
        w = w.preview()
    if hasattr(w, "process"):
        return _describe_closed_loop(w, src, notes)
    return describe_stream(w, src, model.type, notes)


def _describe_closed_loop(w: Any, source: str, notes: list[str]) -> WorkloadDescription:
    cfg = w.cfg
    n = cfg.num_requests or 10_000
    pairs = [w._lengths[k] for k in range(n)]
    inp = np.array([p[0] for p in pairs], dtype=np.int64)
    out = np.array([p[1] for p in pairs], dtype=np.int64)
    notes.append(f"closed loop ({cfg.clients} clients): arrivals depend on the server, so only the lengths "
                 f"of the first {n:,} requests are described")
    bound = None
    if cfg.system_prompt_len > 0:
        shared = np.minimum(inp, cfg.system_prompt_len)
        bound = float((shared.sum() - shared[0]) / inp.sum())
    return WorkloadDescription(source, "closed_loop", inp, out, None, bound, clipped=w.clipped, notes=notes)


def describe_stream(w: Any, source: str, kind: str, notes: list[str] | None = None) -> WorkloadDescription:
    """Describe an iterable workload (arrays read directly when it is an `ArrayWorkload`)."""
    from .base import ArrayWorkload

    notes = list(notes or [])
    trie = _PrefixTrie()
    hit = 0
    any_segments = False
    sessions: set = set()
    classes: dict[str, int] = {}
    if isinstance(w, ArrayWorkload):
        arr, inp, out = w.arrival_s, w.input_tokens, w.output_tokens
        need_iter = w._segments_for is not None or w._session_codes is not None
        if w.class_codes is not None:
            codes, cnt = np.unique(w.class_codes[w.class_codes >= 0], return_counts=True)
            classes = {w.classes[c].tenant or "default": int(k) for c, k in zip(codes.tolist(), cnt.tolist())}
        specs = iter(w) if need_iter else iter(())
    else:
        arr_l, inp_l, out_l = [], [], []
        specs = _recording(w, arr_l, inp_l, out_l, classes)
    prefix_rows = 0
    for spec in specs:
        if spec.session_id is not None:
            sessions.add(spec.session_id)
        if spec.segments is not None:
            any_segments = True
            if prefix_rows < PREFIX_ROWS:
                hit += trie.add(spec.segments)
        if prefix_rows < PREFIX_ROWS:
            prefix_rows += 1
    if not isinstance(w, ArrayWorkload):
        arr, inp, out = (np.array(arr_l, dtype=np.float64), np.array(inp_l, dtype=np.int64),
                         np.array(out_l, dtype=np.int64))
    bound = None
    if any_segments:
        bound = float(hit / inp[:prefix_rows].sum()) if inp[:prefix_rows].sum() else 0.0
        if len(inp) > PREFIX_ROWS:
            notes.append(f"prefix_hit_upper_bound computed over the first {PREFIX_ROWS:,} requests")
    return WorkloadDescription(source, kind, inp, out, arr, bound, len(sessions) or None, classes,
                               getattr(w, "dropped", 0), getattr(w, "clipped", 0), notes)


def _recording(w: Iterable, arr: list, inp: list, out: list, classes: dict[str, int]):
    for spec in w:
        arr.append(spec.arrival_s)
        inp.append(spec.input_tokens)
        out.append(spec.output_tokens)
        if spec.tenant is not None:
            classes[spec.tenant] = classes.get(spec.tenant, 0) + 1
        yield spec


def describe_trace(path: str | Path, *, fmt: str = "auto") -> WorkloadDescription:
    """Describe a trace file as it is (no transformations); traces without times give lengths only."""
    from .formats import load_table
    from .traces import drop_empty, table_workload

    table = load_table(path, fmt, need_time=False)
    table, dropped = drop_empty(table)
    if table.arrival_s is None and not table.has_prefix_identity:
        d = WorkloadDescription(str(path), table.format, table.input_tokens, table.output_tokens, None, None,
                                dropped=dropped, notes=list(table.notes) + ["no arrival times in this format"])
        return d
    timeless = table.arrival_s is None
    if timeless:
        table.arrival_s = np.zeros(len(table))
    w = table_workload(table, dropped=dropped)
    d = describe_stream(w, str(path), table.format, table.notes)
    if timeless:
        d.arrival_s = None
        d.notes.append("no arrival times in this format")
    if table.tenant is not None:
        codes, names = table.tenant
        u, c = np.unique(codes[codes >= 0], return_counts=True)
        d.classes = {names[i]: int(k) for i, k in zip(u.tolist(), c.tolist())}
    return d


__all__ = ["WorkloadDescription", "describe", "describe_config", "describe_stream", "describe_trace"]
