"""Replay of recorded request traces (CSV or Parquet).

Columns: ``arrival_time_s, input_tokens, output_tokens`` are required; ``prompt_id``,
``prefix_group`` + ``prefix_len``, ``session_id`` and ``stage_index`` are optional; any other
column is ignored. Arrival times are seconds, kept as given (not shifted), and must be
non-negative and sorted. Rows with 0 input or 0 output tokens are dropped and counted in
``dropped``.

Prompt identity (``segments``) comes from the optional columns:

* ``prefix_group`` and ``prefix_len > 0``: ``(("grp", g), prefix_len)`` followed by the rest of
  the prompt, ``("prompt", prompt_id)`` when there is a prompt id, else the unique
  ``("req", request_id)``. A prefix longer than the prompt is cut to the prompt.
* only ``prompt_id``: the whole prompt is ``(("prompt", pid), input_tokens)``.
* neither: None (a unique prompt).

Rows with the same (prompt_id, prefix_group, prefix_len, input_tokens) share one tuple object.

Validation is vectorised (a million rows load in seconds). Every problem is a one-line
`TraceError` naming the file, the row (the 1-based data row, and for CSV the file line, the
header being line 1), the column and the fix.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sim.errors import TraceError, did_you_mean
from sim.registry import register

from .base import ArrayWorkload, Segments
from .config import TraceWorkload

REQUIRED = ("arrival_time_s", "input_tokens", "output_tokens")
OPTIONAL = ("prompt_id", "prefix_group", "prefix_len", "session_id", "stage_index")
_PARQUET = (".parquet", ".pq")


def read_trace_frame(path: str | os.PathLike) -> pd.DataFrame:
    """Read a trace file into a DataFrame (no validation beyond "is there a table")."""
    p = Path(path)
    if not p.is_file():
        raise TraceError(f"trace file {str(p)!r} not found (cwd {os.getcwd()}); check the workload's path")
    try:
        if p.suffix.lower() in _PARQUET:
            df = pd.read_parquet(p)
        else:
            df = pd.read_csv(p, low_memory=False)
    except pd.errors.EmptyDataError:
        raise TraceError(f"trace {p}: the file is empty; it needs a header line "
                         f"'{','.join(REQUIRED)}' and at least one data row") from None
    except Exception as e:  # malformed CSV / Parquet: report pandas' reason on one line
        reason = " ".join(str(e).split())
        raise TraceError(f"trace {p}: cannot be read as {'Parquet' if p.suffix.lower() in _PARQUET else 'CSV'}"
                         f" ({reason}); fix the file format") from None
    if len(df) == 0:
        raise TraceError(f"trace {p}: no data rows (only a header); add at least one request")
    return df


class _Locator:
    """Formats 'trace F: data row R (CSV line L), column C' for error messages."""

    def __init__(self, path: str | os.PathLike, csv: bool) -> None:
        self.path, self.csv = str(path), csv

    def __call__(self, i: int, col: str) -> str:
        row = f"data row {i + 1} (CSV line {i + 2})" if self.csv else f"data row {i + 1}"
        return f"trace {self.path}: {row}, column {col!r}"


def _numeric(df: pd.DataFrame, col: str, loc: _Locator) -> np.ndarray:
    """Column as float64 (NaN where empty); non-numeric values are errors."""
    raw = df[col]
    if pd.api.types.is_numeric_dtype(raw) and not pd.api.types.is_bool_dtype(raw):
        return raw.to_numpy(dtype=np.float64, na_value=np.nan)
    num = pd.to_numeric(raw, errors="coerce")
    bad = np.flatnonzero(num.isna().to_numpy() & raw.notna().to_numpy())
    if len(bad):
        i = int(bad[0])
        raise TraceError(f"{loc(i, col)}: value {raw.iloc[i]!r} is not a number; fix or delete that row")
    return num.to_numpy(dtype=np.float64, na_value=np.nan)


def _first(mask: np.ndarray) -> int | None:
    idx = np.flatnonzero(mask)
    return int(idx[0]) if len(idx) else None


def _counts(df: pd.DataFrame, col: str, loc: _Locator, *, allow_missing: bool = False) -> np.ndarray:
    """A column of whole non-negative numbers as int64 (-1 where empty, if allowed)."""
    x = _numeric(df, col, loc)
    nan = np.isnan(x)
    if not allow_missing and (i := _first(nan)) is not None:
        raise TraceError(f"{loc(i, col)}: value is empty; every row needs a {col}")
    if (i := _first(np.isinf(x))) is not None:
        raise TraceError(f"{loc(i, col)}: value {x[i]} is not finite; use a whole number of tokens")
    if (i := _first(x < 0)) is not None:
        raise TraceError(f"{loc(i, col)}: negative length {x[i]:g}; token counts must be >= 0")
    if (i := _first(~nan & (x != np.floor(x)))) is not None:
        raise TraceError(f"{loc(i, col)}: value {x[i]:g} is not a whole number of tokens; round it")
    return np.where(nan, -1, x).astype(np.int64)


def _arrivals(df: pd.DataFrame, loc: _Locator) -> np.ndarray:
    col = "arrival_time_s"
    t = _numeric(df, col, loc)
    if (i := _first(np.isnan(t))) is not None:
        raise TraceError(f"{loc(i, col)}: arrival time is empty or NaN; give every row a time in seconds")
    if (i := _first(np.isinf(t))) is not None:
        raise TraceError(f"{loc(i, col)}: arrival time {t[i]} is not finite; give a time in seconds")
    if (i := _first(t < 0)) is not None:
        raise TraceError(f"{loc(i, col)}: negative arrival time {t[i]:g}; times are seconds from the trace "
                         f"start and must be >= 0 (shift the column)")
    if len(t) > 1 and (i := _first(t[1:] < t[:-1])) is not None:
        i += 1
        raise TraceError(f"{loc(i, col)}: arrival time {t[i]:g} is earlier than the previous row's {t[i - 1]:g}; "
                         f"sort the trace by arrival_time_s")
    return t


def _key(v: Any) -> Hashable:
    """A small deterministic segment key part: whole floats become int, numpy scalars Python."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def _factorize(col: pd.Series) -> tuple[np.ndarray, list[Hashable]]:
    codes, uniques = pd.factorize(col, sort=False, use_na_sentinel=True)
    return codes.astype(np.int64), [_key(u) for u in uniques]


class TraceStream(ArrayWorkload):
    """A loaded trace, replayed request by request (build it with `load_trace`)."""

    source: str = ""


def load_trace(path: str | os.PathLike, *, time_scale: float = 1.0, max_requests: int | None = None,
               max_model_len: int | None = None) -> TraceStream:
    """Read, validate and wrap a trace file; see the module docstring for the columns."""
    df = read_trace_frame(path)
    loc = _Locator(path, csv=Path(path).suffix.lower() not in _PARQUET)
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        hints = "".join(did_you_mean(m, map(str, df.columns)) for m in missing)
        raise TraceError(f"trace {path}: missing required column(s) {', '.join(missing)}{hints}; found columns: "
                         f"{', '.join(map(str, df.columns))}; the trace needs {', '.join(REQUIRED)}")
    if ("prefix_group" in df.columns) != ("prefix_len" in df.columns):
        have, need = ("prefix_group", "prefix_len") if "prefix_group" in df.columns else ("prefix_len", "prefix_group")
        raise TraceError(f"trace {path}: column {have!r} needs column {need!r} as well; add it or drop {have!r}")
    if not time_scale > 0:
        raise TraceError(f"trace {path}: time_scale must be > 0 (got {time_scale})")

    arrival = _arrivals(df, loc)
    inp = _counts(df, "input_tokens", loc)
    out = _counts(df, "output_tokens", loc)
    plen = _counts(df, "prefix_len", loc, allow_missing=True) if "prefix_len" in df.columns else None
    stage = None
    if "stage_index" in df.columns:
        s = _numeric(df, "stage_index", loc)
        if (i := _first(~np.isnan(s) & ((s != np.floor(s)) | np.isinf(s)))) is not None:
            raise TraceError(f"{loc(i, 'stage_index')}: value {s[i]} is not a whole number; use 0, 1, ...")
        stage = np.where(np.isnan(s), 0, s).astype(np.int64)

    keep = np.flatnonzero((inp > 0) & (out > 0))
    dropped = len(df) - len(keep)
    if max_requests is not None:
        keep = keep[:max_requests]
    if len(keep) == 0:
        raise TraceError(f"trace {path}: every row has 0 input or 0 output tokens; nothing to replay")
    sub = df.iloc[keep]
    inp, out, arrival = inp[keep], out[keep], arrival[keep] * time_scale
    if stage is not None:
        stage = stage[keep]

    pid = _factorize(sub["prompt_id"]) if "prompt_id" in df.columns else None
    grp = _factorize(sub["prefix_group"]) if plen is not None else None
    plen = plen[keep] if plen is not None else None
    ses_codes, ses_names = None, None
    if "session_id" in df.columns:
        ses_codes, keys = _factorize(sub["session_id"])
        ses_names = [str(k) for k in keys]

    w = TraceStream(arrival, inp, out, stage=stage,
                    segments_for=_segment_builder(inp, pid, grp, plen) if (pid is not None or grp is not None) else None,
                    session_codes=ses_codes, session_names=ses_names, max_model_len=max_model_len,
                    dropped=dropped)
    w.source = str(path)
    return w


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


@register("workload", "trace")
def trace_workload(cfg: TraceWorkload, seed: int | np.random.SeedSequence | None = None,
                   max_model_len: int | None = None) -> TraceStream:
    """Replay a recorded request trace (CSV or Parquet); the seed is unused."""
    return load_trace(cfg.path, time_scale=cfg.time_scale, max_requests=cfg.max_requests,
                      max_model_len=max_model_len)
