"""Vectorised checks of trace columns, each failure a one-line `TraceError` naming file, row and column.

A `Locator` formats where a value sits: ``trace F: data row R (CSV line L), column C`` (the header
is CSV line 1; JSONL rows are reported by their line; Parquet and JSON by data row). The line is
counted in the file itself when an error is reported, so blank lines and quoted multi-line fields
(which pandas skips or joins) do not shift it. Columns are named as the *file* names them, so a
user can find the value even when a mapping renamed it.
"""
from __future__ import annotations

import csv
import os
from collections.abc import Mapping

import numpy as np
import pandas as pd

from sim.errors import TraceError

#: Token counts above this are refused: no model has such a context, and larger values would
#: overflow int64 (1e20 did, silently becoming a dropped 0-token row).
MAX_TOKENS = 10**9


class Locator:
    """Formats 'trace F: data row R (CSV line L), column C' for error messages."""

    def __init__(self, path: str | os.PathLike, csv: bool = True, *, line_offset: int | None = None,
                 line_word: str = "CSV line", aliases: Mapping[str, str] | None = None) -> None:
        self.path = str(path)
        self.line_offset = (2 if csv else None) if line_offset is None else line_offset
        self.line_word = line_word
        self.aliases = dict(aliases or {})

    @property
    def csv(self) -> bool:
        """True when rows map to CSV lines (a header, then one line per row)."""
        return self.line_offset == 2 and self.line_word == "CSV line"

    def column(self, col: str) -> str:
        """The file's own name of servesim column `col` (after a column mapping)."""
        return self.aliases.get(col, col)

    def line(self, i: int) -> int:
        """The file line on which data row `i` (0-based) starts, skipping blank lines as the readers do."""
        try:
            from pandas.io.common import get_handle  # decompresses as read_csv does (.gz, .zip, ...)

            with get_handle(self.path, "r", encoding="utf-8-sig", compression="infer", errors="replace") as h:
                for row, start in _records(h.handle, self.csv):
                    if row == i:
                        return start
        except (OSError, csv.Error, ValueError):
            pass
        return i + self.line_offset     # unreadable as text: assume one line per row

    def __call__(self, i: int, col: str | None = None) -> str:
        row = f"data row {i + 1}"
        if self.line_offset is not None:
            row += f" ({self.line_word} {self.line(i)})"
        where = f"trace {self.path}: {row}"
        return where if col is None else f"{where}, column {self.column(col)!r}"


def _records(f, is_csv: bool):
    """(data row index, first line) of each record of a text file; blank lines are no records.

    CSV: the first record is the header and a quoted field may span lines; JSONL: one record a line."""
    if not is_csv:
        row = 0
        for n, text in enumerate(f, 1):
            if text.strip():
                yield row, n
                row += 1
        return
    reader = csv.reader(f)
    row, end = -1, 0                # row -1: the header
    for rec in reader:
        start, end = end + 1, reader.line_num
        if not rec or (len(rec) == 1 and not rec[0].strip()):
            continue
        if row >= 0:
            yield row, start
        row += 1


def first(mask: np.ndarray) -> int | None:
    """Index of the first True, or None."""
    idx = np.flatnonzero(mask)
    return int(idx[0]) if len(idx) else None


def numeric(df: pd.DataFrame, col: str, loc: Locator) -> np.ndarray:
    """Column as float64 (NaN where empty); non-numeric values, true/false included, are errors."""
    raw = df[col]
    # pandas would convert true/false to 1/0: a flag column (or a JSON true) is no number
    if pd.api.types.is_bool_dtype(raw) or raw.dtype == object:
        i = first(raw.map(lambda v: isinstance(v, (bool, np.bool_))).to_numpy(dtype=bool))
        if i is not None:
            raise TraceError(f"{loc(i, col)}: value {str(raw.iloc[i]).lower()} is a true/false flag, not a "
                             f"number; give a number")
    if pd.api.types.is_numeric_dtype(raw):
        return raw.to_numpy(dtype=np.float64, na_value=np.nan)
    num = pd.to_numeric(raw, errors="coerce")
    bad = np.flatnonzero(num.isna().to_numpy() & raw.notna().to_numpy())
    if len(bad):
        i = int(bad[0])
        raise TraceError(f"{loc(i, col)}: value {raw.iloc[i]!r} is not a number; fix or delete that row")
    return num.to_numpy(dtype=np.float64, na_value=np.nan)


def counts(df: pd.DataFrame, col: str, loc: Locator, *, allow_missing: bool = False) -> np.ndarray:
    """A column of whole non-negative numbers as int64 (-1 where empty, if allowed)."""
    return count_values(numeric(df, col, loc), col, loc, allow_missing=allow_missing)


def count_values(x: np.ndarray, col: str, loc: Locator, *, allow_missing: bool = False) -> np.ndarray:
    """Float values that must be whole token counts in [0, MAX_TOKENS], as int64 (-1 where NaN, if allowed)."""
    nan = np.isnan(x)
    if not allow_missing and (i := first(nan)) is not None:
        raise TraceError(f"{loc(i, col)}: value is empty; every row needs a {loc.column(col)}")
    if (i := first(np.isinf(x))) is not None:
        raise TraceError(f"{loc(i, col)}: value {x[i]} is not finite; use a whole number of tokens")
    if (i := first(x < 0)) is not None:
        raise TraceError(f"{loc(i, col)}: negative length {x[i]:g}; token counts must be >= 0")
    if (i := first(x > MAX_TOKENS)) is not None:
        raise TraceError(f"{loc(i, col)}: value {x[i]:g} is out of range; token counts must be at most "
                         f"{MAX_TOKENS:,}")
    if (i := first(~nan & (x != np.floor(x)))) is not None:
        raise TraceError(f"{loc(i, col)}: value {x[i]:g} is not a whole number of tokens; round it")
    return np.where(nan, -1, x).astype(np.int64)


def check_times(t: np.ndarray, col: str, loc: Locator, *, allow_negative: bool = False,
                require_sorted: bool = True, unit: str = "s") -> np.ndarray:
    """Arrival times as written in the file (in `unit`, converted by the caller): finite, >= 0 (unless
    allowed) and sorted (when required). Messages quote the file's own values and unit."""
    if (i := first(np.isnan(t))) is not None:
        raise TraceError(f"{loc(i, col)}: arrival time is empty or NaN; give every row a time")
    if (i := first(np.isinf(t))) is not None:
        raise TraceError(f"{loc(i, col)}: arrival time {t[i]} is not finite; give a time in {unit}")
    if not allow_negative and (i := first(t < 0)) is not None:
        raise TraceError(f"{loc(i, col)}: negative arrival time {t[i]:g} {unit}; times count from the trace "
                         f"start and must be >= 0 (shift the column)")
    if require_sorted and len(t) > 1 and (i := first(t[1:] < t[:-1])) is not None:
        i += 1
        raise TraceError(f"{loc(i, col)}: arrival time {t[i]:g} {unit} is earlier than the previous row's "
                         f"{t[i - 1]:g} {unit}; sort the trace by {loc.column(col)} (or set sort: true)")
    return t


def arrivals(df: pd.DataFrame, loc: Locator, col: str = "arrival_time_s", scale: float = 1.0,
             sort_order: bool = False) -> np.ndarray:
    """The arrival-time column in seconds (``scale`` converts ms/us), validated."""
    return check_times(numeric(df, col, loc), col, loc, require_sorted=not sort_order) * scale
