"""Replay of recorded request traces, with transformations.

A trace file is read by its format's loader (`workloads.formats`) into a `TraceTable`, transformed,
and wrapped as a `TraceStream` (an `ArrayWorkload`). Rows with 0 input or 0 output tokens are
dropped and counted in ``dropped``.

Transformations, in this order: length ``filter``; ``arrival`` (a generated timeline replacing the
trace's times, rows taken in order or shuffled and cycled if short); time ``window`` (shifted to
start at 0); ``sample_fraction`` (each row kept with that probability); ``rate_scale`` k (k < 1:
each row kept with probability k; k > 1: each row sent floor(k) or floor(k) + 1 times, mean k, the
extra copies placed uniformly between the row and the next one, so bursts and the rate profile
keep their shape; a copy's prompt identity is namespaced ``("copy", c, key)`` so copies do not hit
each other's cache); ``time_scale``; ``max_requests``; request ``classes``.

Prompt identity (``segments``):

* Mooncake ``hash_ids``: ``((h0, 512), (h1, 512), ..., (h_last, rest))`` -- a hash id names a
  512-token block chained with its predecessors, so equal leading ids mean an equal prefix; tokens
  beyond the listed blocks get a unique ``("req", request_id)`` segment.
* csv ``prefix_group`` and ``prefix_len > 0``: ``(("grp", g), prefix_len)`` followed by the rest of
  the prompt, ``("prompt", prompt_id)`` when there is a prompt id, else the unique
  ``("req", request_id)``. A prefix longer than the prompt is cut to the prompt.
* only ``prompt_id``: the whole prompt is ``(("prompt", pid), input_tokens)``.
* neither: None (a unique prompt).

Rows with the same (prompt_id, prefix_group, prefix_len, input_tokens) share one tuple object.

Images (csv format): optional columns ``image_ids`` and ``image_tokens`` (`workloads.multimodal.trace_images`)
ride through every transformation; copies made by rate scaling get their own image ids.
``input_tokens`` counts the image tokens; ``max_model_len`` shortens the text, never an image. The
workload's synthetic ``images:`` option adds images to a trace without image columns.
Every problem is a one-line `TraceError` naming the file, the row, the column and the fix.
"""
from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import pandas as pd

from sim.errors import TraceError
from sim.registry import register

from .arrivals import arrival_times
from .base import ArrayWorkload, Segments, component_rng
from .classes import draw_classes, match_tenants
from .config import TraceWorkload
from .formats import TraceTable, load_table, read_frame
from .lengths import length_mask
from .multimodal import trace_images, trace_workload_images, with_images
from .validate import Locator as _Locator  # noqa: F401  (kept for callers of the old private names)
from .validate import arrivals as _arrivals  # noqa: F401
from .validate import counts as _counts  # noqa: F401
from .validate import numeric as _numeric  # noqa: F401

REQUIRED = ("arrival_time_s", "input_tokens", "output_tokens")
OPTIONAL = ("prompt_id", "prefix_group", "prefix_len", "session_id", "stage_index", "tenant")


def read_trace_frame(path: str | os.PathLike) -> pd.DataFrame:
    """Read a trace file into a DataFrame (no validation beyond "is there a table")."""
    return read_frame(path, REQUIRED)


class TraceStream(ArrayWorkload):
    """A loaded trace, replayed request by request (build it with `load_trace` or `build_workload`)."""

    source: str = ""
    notes: list[str] = []


def drop_empty(table: TraceTable) -> tuple[TraceTable, int]:
    """Rows with input and output tokens > 0, and how many were dropped."""
    keep = np.flatnonzero((table.input_tokens > 0) & (table.output_tokens > 0))
    if len(keep) == 0:
        raise TraceError(f"trace {table.source}: every row has 0 input or 0 output tokens; nothing to replay")
    return (table if len(keep) == len(table) else table.take(keep)), len(table) - len(keep)


def table_workload(table: TraceTable, *, max_model_len: int | None = None, dropped: int = 0) -> TraceStream:
    """Wrap a (transformed) table as a request stream; see the module docstring for the segments."""
    if table.arrival_s is None:
        raise TraceError(f"trace {table.source}: no arrival times; give the workload an 'arrival:' process")
    inp = table.input_tokens
    seg_for = None
    if table.hash_ids is not None:
        seg_for = _hash_segment_builder(inp, *table.hash_ids, table.block_tokens)
    elif table.prompt is not None or table.group is not None:
        seg_for = _segment_builder(inp, table.prompt, table.group, table.prefix_len)
    if seg_for is not None and table.copy is not None and np.any(table.copy > 0):
        seg_for = _namespaced(seg_for, table.copy)
    ses_codes, ses_names = table.session if table.session is not None else (None, None)
    w = TraceStream(table.arrival_s, inp, table.output_tokens, stage=table.stage, segments_for=seg_for,
                    session_codes=ses_codes, session_names=ses_names, max_model_len=max_model_len, dropped=dropped,
                    difficulty=table.difficulty, cache_hit=table.cache_hit)
    w.source = table.source
    w.notes = list(table.notes)
    return w


def load_trace(path: str | os.PathLike, *, time_scale: float = 1.0, max_requests: int | None = None,
               max_model_len: int | None = None) -> TraceStream:
    """Read, validate and wrap a servesim CSV / Parquet trace (see `workloads.formats` for the columns)."""
    if not (np.isfinite(time_scale) and time_scale > 0):
        raise TraceError(f"trace {path}: time_scale must be a finite number > 0 (got {time_scale})")
    table, dropped = drop_empty(_with_trace_images(load_table(path, "csv")))
    if max_requests is not None and max_requests < len(table):
        table = table.take(np.arange(max_requests))
    table.arrival_s = table.arrival_s * time_scale
    if getattr(table, "images", None) is not None:
        return trace_workload_images(table_workload(table, dropped=dropped), table, max_model_len)
    return table_workload(table, max_model_len=max_model_len, dropped=dropped)


def _with_trace_images(table: TraceTable, cfg: TraceWorkload | None = None) -> TraceTable:
    """`table` carrying its file's image columns (an `ImageTraceTable`), or unchanged when it has none."""
    if cfg is None:
        return trace_images(table) or table
    found = trace_images(table, columns=cfg.columns, time_unit=cfg.time_unit, sort=cfg.sort,
                         default_tokens=cfg.image_tokens)
    if found is not None and cfg.images is not None:
        raise TraceError(f"trace {table.source}: the file has image columns and the workload has 'images:'; "
                         f"remove one of them")
    return found or table


def transform(table: TraceTable, cfg: TraceWorkload, seed: int | np.random.SeedSequence) -> TraceTable:
    """Apply a trace workload's transformations (module docstring order) to a table with empty rows dropped."""
    src = table.source
    if cfg.filter is not None:
        keep = np.flatnonzero(length_mask(table.input_tokens, table.output_tokens, cfg.filter))
        if len(keep) == 0:
            raise TraceError(f"trace {src}: the length filter removes every row; loosen it")
        table = table.take(keep)
    if cfg.arrival is not None:
        t, stage = arrival_times(cfg.arrival, component_rng(seed, "arrivals"))
        order = np.arange(len(table))
        if cfg.shuffle:
            order = component_rng(seed, "prompts").permutation(len(table))
        table = table.take(order[np.arange(len(t)) % len(table)])
        table.arrival_s, table.stage = np.asarray(t, dtype=np.float64), stage
    rng = component_rng(seed, "sample")
    if cfg.window is not None:
        t = table.arrival_s
        end = np.inf if cfg.window.end_s is None else cfg.window.end_s
        keep = np.flatnonzero((t >= cfg.window.start_s) & (t < end))
        if len(keep) == 0:
            raise TraceError(f"trace {src}: no request arrives in the window [{cfg.window.start_s:g}, {end:g}) s; "
                             f"the trace spans {t[0]:g}..{t[-1]:g} s")
        table = table.take(keep)
        table.arrival_s = table.arrival_s - cfg.window.start_s
    if cfg.sample_fraction < 1.0:
        table = table.take(np.flatnonzero(rng.random(len(table)) < cfg.sample_fraction))
    if cfg.rate_scale != 1.0:
        table = scale_rate(table, cfg.rate_scale, rng)
    if len(table) == 0:
        raise TraceError(f"trace {src}: sampling left no request; raise sample_fraction or rate_scale")
    table.arrival_s = table.arrival_s * cfg.time_scale
    if cfg.max_requests is not None and cfg.max_requests < len(table):
        table = table.take(np.arange(cfg.max_requests))
    return table


def scale_rate(table: TraceTable, k: float, rng: np.random.Generator) -> TraceTable:
    """``k`` times the requests over the same span (see the module docstring)."""
    n = len(table)
    if k < 1.0:
        return table.take(np.flatnonzero(rng.random(n) < k))
    whole = int(k)
    reps = whole + (rng.random(n) < k - whole)
    idx = np.repeat(np.arange(n), reps)
    copy = np.arange(len(idx)) - np.repeat(np.cumsum(reps) - reps, reps)
    t = table.arrival_s
    gap = np.diff(t, append=t[-1] + (t[-1] - t[0]) / max(n - 1, 1))
    times = t[idx] + np.where(copy > 0, rng.random(len(idx)) * gap[idx], 0.0)
    order = np.argsort(times, kind="stable")
    out = table.take(idx[order])
    out.arrival_s = times[order]
    out.copy = copy[order]
    return out


@register("workload", "trace")
def trace_workload(cfg: TraceWorkload, seed: int | np.random.SeedSequence | None = None,
                   max_model_len: int | None = None) -> TraceStream:
    """Replay a recorded request trace in any registered format, with transformations."""
    seed = 0 if seed is None else seed
    table = load_table(cfg.path, cfg.format, columns=cfg.columns, time_unit=cfg.time_unit,
                       need_time=cfg.arrival is None, sort=cfg.sort)
    table, dropped = drop_empty(_with_trace_images(table, cfg))
    table = transform(table, cfg, seed)
    if getattr(table, "images", None) is not None:
        w = trace_workload_images(table_workload(table, dropped=dropped), table, max_model_len)
    elif cfg.images is not None:
        w = with_images(table_workload(table, dropped=dropped), cfg.images, seed, max_model_len)
    else:
        w = table_workload(table, max_model_len=max_model_len, dropped=dropped)
    tagged = None
    if table.tenant is not None:
        tagged = match_tenants(cfg.classes, *table.tenant)
    elif cfg.classes:
        tagged = draw_classes(cfg.classes, len(table), component_rng(seed, "classes"))
    if tagged is not None:
        w.set_classes(*tagged)
    return w


trace_workload.handles_images = True     # build_workload: images come from the file or cfg.images, here


# ----------------------------------------------------------------------------- segments


def _hash_segment_builder(inp: np.ndarray, off: np.ndarray, vals: np.ndarray,
                          block: int) -> Callable[[int, int], list[Segments | None]]:
    """Mooncake prompts: one segment per listed block id (``block`` tokens, the last one partial)."""

    def segments_for(lo: int, hi: int) -> list[Segments | None]:
        o = off[lo:hi + 1]
        ids = vals[o[0]:o[-1]].tolist()
        o = (o - o[0]).tolist()
        res: list[Segments | None] = []
        for j, n in enumerate(inp[lo:hi].tolist()):
            segs = []
            left = n
            for h in ids[o[j]:o[j + 1]]:
                if left <= 0:
                    break
                take = block if left > block else left
                segs.append((h, take))
                left -= take
            if left > 0:
                segs.append((("req", lo + j), left))
            res.append(tuple(segs))
        return res

    return segments_for


def _namespaced(seg_for: Callable[[int, int], list[Segments | None]],
                copy: np.ndarray) -> Callable[[int, int], list[Segments | None]]:
    """Copies made by rate scaling get their own prompt identity (copy 0 keeps the original)."""

    def segments_for(lo: int, hi: int) -> list[Segments | None]:
        res = seg_for(lo, hi)
        for j, c in enumerate(copy[lo:hi].tolist()):
            s = res[j]
            if c and s is not None:
                res[j] = tuple((("copy", c, key), n) for key, n in s)
        return res

    return segments_for


def _segment_builder(inp: np.ndarray, pid: tuple[np.ndarray, list] | None, grp: tuple[np.ndarray, list] | None,
                     plen: np.ndarray | None) -> Callable[[int, int], list[Segments | None]]:
    """Per-chunk segment lists; one tuple object per (prompt_id, group, prefix_len, input) combo
    that occurs more than once (combos seen once are built fresh, so memory stays bounded)."""
    n = len(inp)
    p_codes, p_keys = pid if pid is not None else (np.full(n, -1, dtype=np.int64), [])
    if grp is not None:
        g_codes, g_keys = grp
        pl = np.minimum(plen, inp)
        has_grp = (g_codes >= 0) & (pl > 0)
        g_codes = np.where(has_grp, g_codes, -1)
        pl = np.where(has_grp, pl, 0)
    else:
        g_codes, g_keys, pl = np.full(n, -1, dtype=np.int64), [], np.zeros(n, dtype=np.int64)
    # Rows without a prompt id but with a group have a unique tail: never shared.
    shareable = p_codes >= 0
    combo = pd.DataFrame({"p": p_codes, "g": g_codes, "l": pl, "n": inp}).groupby(
        ["p", "g", "l", "n"], sort=False).ngroup().to_numpy()
    repeats = np.bincount(combo)[combo] > 1
    cache_row = shareable & repeats
    cache: dict[int, Segments] = {}

    def build(k: int, p: int, g: int, l: int, m: int) -> Segments | None:
        tail_key = ("prompt", p_keys[p]) if p >= 0 else ("req", k)
        if g >= 0:
            head = (("grp", g_keys[g]), l)
            return (head, (tail_key, m - l)) if m > l else (head,)
        if p >= 0:
            return ((tail_key, m),)
        return None

    def segments_for(lo: int, hi: int) -> list[Segments | None]:
        res: list[Segments | None] = []
        for j, (p, g, l, m, c, cr) in enumerate(zip(
                p_codes[lo:hi].tolist(), g_codes[lo:hi].tolist(), pl[lo:hi].tolist(), inp[lo:hi].tolist(),
                combo[lo:hi].tolist(), cache_row[lo:hi].tolist())):
            if cr:
                s = cache.get(c)
                if s is None:
                    s = cache[c] = build(lo + j, p, g, l, m)
            else:
                s = build(lo + j, p, g, l, m)
            res.append(s)
        return res

    return segments_for


