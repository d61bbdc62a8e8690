"""Trace formats: loaders that turn a file into a validated `TraceTable` of columns.

Each format is a function ``loader(path, *, columns, time_unit, need_time, sort) -> TraceTable``
registered under kind ``"trace_format"``; `load_table` picks one by name, or sniffs it from the
file (``format: auto``). Built in:

==============  ==================================================================================
``csv``         servesim's own CSV / Parquet: ``arrival_time_s, input_tokens, output_tokens`` and the
                optional ``prompt_id, prefix_group, prefix_len, session_id, stage_index, tenant``;
                ``columns`` maps these names to a file's own (any CSV / Parquet), ``time_unit`` s/ms/us.
                Times kept as given. ``arrival_time_s`` may be absent when times are not needed.
``vidur``       Vidur's length tables (``num_prefill_tokens, num_decode_tokens``), no times.
``azure_2023``  Azure LLM inference trace 2023 (Splitwise): ``TIMESTAMP`` (wall clock),
``azure_2024``  ``ContextTokens``, ``GeneratedTokens``; the 2024 week-long files have the same columns
                with UTC offsets on the timestamps. Times become seconds since the first request.
``mooncake``    Mooncake JSONL: ``timestamp`` (ms), ``input_length``, ``output_length``, ``hash_ids``
                (one id per 512-token block of the prompt, chained: equal ids = equal prefix).
``burstgpt``    BurstGPT CSV: ``Timestamp`` (s), ``Model``, ``Request tokens``, ``Response tokens``,
                ``Total tokens``, ``Log Type``; the model name becomes the request's tenant.
``sharegpt``    vLLM-benchmark / ShareGPT JSON: a list of ``{"conversations": [{"from", "value"}, ...]}``;
                the first human message and the reply after it become one request. Lengths come from a
                token-count field of the message (``tokens``, ``num_tokens`` or ``token_count``) when there
                is one, else they are APPROXIMATE: ``ceil(words / 0.75)`` (the ~0.75 words per token rule
                of thumb for English with GPT-style tokenizers), noted in ``TraceTable.notes``. No times.
==============  ==================================================================================

Loaders validate column by column, vectorised (a million rows load in seconds); rows with 0 input
or output tokens are kept here (the workload drops and counts them).
"""
from __future__ import annotations

import difflib
import json
import os
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sim.errors import TraceError, did_you_mean
from sim.registry import get, register

from .validate import MAX_TOKENS, Locator, check_times, count_values, counts, first, numeric

PARQUET = (".parquet", ".pq")
CSV_COLUMNS = ("arrival_time_s", "input_tokens", "output_tokens", "prompt_id", "prefix_group", "prefix_len",
               "session_id", "stage_index", "tenant", "difficulty", "cache_hit")
_UNIT = {"s": 1.0, "ms": 1e-3, "us": 1e-6}

Codes = tuple[np.ndarray, list]


@dataclass
class TraceTable:
    """A loaded trace as columns (one entry per row); optional columns are None when absent.

    ``prompt`` / ``group`` / ``session`` / ``tenant`` are (codes, names) pairs (code -1 = empty);
    ``hash_ids`` is Mooncake's per-row id list in CSR form ``(offsets, values)``; ``copy`` numbers
    the copies made by rate scaling (0 = the original row).
    """

    source: str
    format: str
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    arrival_s: np.ndarray | None = None
    stage: np.ndarray | None = None
    prompt: Codes | None = None
    group: Codes | None = None
    prefix_len: np.ndarray | None = None
    session: Codes | None = None
    tenant: Codes | None = None
    hash_ids: tuple[np.ndarray, np.ndarray] | None = None
    block_tokens: int = 512
    copy: np.ndarray | None = None
    difficulty: np.ndarray | None = None      # float64 in [0, 1]; NaN = not given (cascade routing)
    cache_hit: np.ndarray | None = None       # int8: 1 / 0 = the result cache hits / misses, -1 = not given
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.input_tokens)

    @property
    def has_prefix_identity(self) -> bool:
        """True when rows say which prompts share content (prompt ids, prefix groups or hash ids)."""
        return self.prompt is not None or self.group is not None or self.hash_ids is not None

    def take(self, idx: np.ndarray) -> TraceTable:
        """The rows ``idx`` (an index array), in that order."""
        idx = np.asarray(idx, dtype=np.int64)

        def a(x):
            return None if x is None else x[idx]

        def c(x):
            return None if x is None else (x[0][idx], x[1])

        hids = None
        if self.hash_ids is not None:
            off, val = self.hash_ids
            lens = off[idx + 1] - off[idx]
            new_off = np.zeros(len(idx) + 1, dtype=np.int64)
            np.cumsum(lens, out=new_off[1:])
            pos = np.repeat(off[idx] - new_off[:-1], lens) + np.arange(int(new_off[-1]), dtype=np.int64)
            hids = (new_off, val[pos])
        return replace(self, input_tokens=self.input_tokens[idx], output_tokens=self.output_tokens[idx],
                       arrival_s=a(self.arrival_s), stage=a(self.stage), prompt=c(self.prompt), group=c(self.group),
                       prefix_len=a(self.prefix_len), session=c(self.session), tenant=c(self.tenant), hash_ids=hids,
                       copy=a(self.copy), difficulty=a(self.difficulty), cache_hit=a(self.cache_hit),
                       notes=list(self.notes))


# ----------------------------------------------------------------------------- reading files


def read_frame(path: str | os.PathLike, required: Sequence[str] = ("arrival_time_s", "input_tokens",
                                                                      "output_tokens")) -> pd.DataFrame:
    """Read a CSV / Parquet file into a DataFrame (no validation beyond "is there a table")."""
    p = Path(path)
    if not p.is_file():
        raise TraceError(f"trace file {str(p)!r} not found (cwd {os.getcwd()}); check the workload's path")
    parquet = p.suffix.lower() in PARQUET
    try:
        df = pd.read_parquet(p) if parquet else pd.read_csv(p, low_memory=False)
    except pd.errors.EmptyDataError:
        raise TraceError(f"trace {p}: the file is empty; it needs a header line "
                         f"'{','.join(required)}' and at least one data row") from None
    except Exception as e:  # malformed CSV / Parquet: report pandas' reason on one line
        reason = " ".join(str(e).split())
        raise TraceError(f"trace {p}: cannot be read as {'Parquet' if parquet else 'CSV'} ({reason}); "
                         f"fix the file format") from None
    if len(df) == 0:
        raise TraceError(f"trace {p}: no data rows (only a header); add at least one request")
    return df


def require_columns(df: pd.DataFrame, path: str | os.PathLike, need: Sequence[str],
                    aliases: dict[str, str] | None = None, fmt: str | None = None) -> None:
    """Error naming the missing columns (as the file would name them) and one hint: the format whose
    columns the file has (when it is not `fmt`, the format being read), else the closest found names."""
    aliases = aliases or {}
    missing = [aliases.get(c, c) for c in need if c not in df.columns]
    if not missing:
        return
    found = [aliases.get(str(c), str(c)) for c in df.columns]
    stamp = df["TIMESTAMP"].iloc[0] if "TIMESTAMP" in df.columns and len(df) else None
    other = format_of_columns(found, stamp)
    if fmt is not None and other is not None and other != fmt:
        raise TraceError(f"trace {path}: missing required column(s) {', '.join(missing)} of the {fmt} format; its "
                         f"columns {', '.join(found)} are the {other} format's: set format: {other} (or auto)")
    close = _close_names(missing, [f for f in found if f not in {aliases.get(c, c) for c in need}])
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise TraceError(f"trace {path}: missing required column(s) {', '.join(missing)}{hint}; found columns: "
                     f"{', '.join(found)}; the trace needs {', '.join(aliases.get(c, c) for c in need)}")


def _close_names(names: Sequence[str], found: Sequence[str]) -> list[str]:
    """The found names closest to any of `names` (case-insensitive), each once, spelt as in the file."""
    by_lower = {f.lower(): f for f in found}
    close: list[str] = []
    for n in names:
        for m in difflib.get_close_matches(n.lower(), list(by_lower), n=3, cutoff=0.5):
            if by_lower[m] not in close:
                close.append(by_lower[m])
    return close


def _key(v: Any) -> Hashable:
    """A small deterministic segment key part: whole floats become int, numpy scalars Python."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def factorize(col: pd.Series, as_str: bool = False) -> Codes:
    """(codes, names) of a column, -1 for empty cells."""
    codes, uniques = pd.factorize(col, sort=False, use_na_sentinel=True)
    keys = [_key(u) for u in uniques]
    return codes.astype(np.int64), [str(k) for k in keys] if as_str else keys


def _finish(table: TraceTable, sort: bool) -> TraceTable:
    if sort and table.arrival_s is not None and len(table) > 1 and np.any(np.diff(table.arrival_s) < 0):
        table = table.take(np.argsort(table.arrival_s, kind="stable"))
    return table


# ----------------------------------------------------------------------------- formats


@register("trace_format", "csv")
def load_csv(path: str | os.PathLike, *, columns: dict[str, str] | None = None, time_unit: str = "s",
             need_time: bool = True, sort: bool = False, fmt: str = "csv") -> TraceTable:
    """servesim's CSV / Parquet columns, or any CSV / Parquet through a column mapping."""
    columns = dict(columns or {})
    unknown = [k for k in columns if k not in CSV_COLUMNS]
    if unknown:
        raise TraceError(f"trace {path}: columns maps unknown name(s) {', '.join(unknown)}"
                         f"{did_you_mean(unknown[0], CSV_COLUMNS)}; map any of {', '.join(CSV_COLUMNS)}")
    need = ("arrival_time_s", "input_tokens", "output_tokens") if need_time else ("input_tokens", "output_tokens")
    df = read_frame(path, need)
    if columns:
        df = df.drop(columns=[c for c in columns if c in df.columns and c not in columns.values()])
        df = df.rename(columns={v: k for k, v in columns.items()})
    aliases = {k: v for k, v in columns.items()}
    loc = Locator(path, csv=not is_parquet(path), aliases=aliases)
    require_columns(df, path, need, aliases, fmt=None if columns else fmt)
    if ("prefix_group" in df.columns) != ("prefix_len" in df.columns):
        have, want = ("prefix_group", "prefix_len") if "prefix_group" in df.columns else ("prefix_len", "prefix_group")
        raise TraceError(f"trace {path}: column {loc.column(have)!r} needs column {loc.column(want)!r} as well; "
                         f"add it or drop {loc.column(have)!r}")
    arrival = None
    if "arrival_time_s" in df.columns:
        arrival = check_times(numeric(df, "arrival_time_s", loc), "arrival_time_s", loc, require_sorted=not sort,
                              unit=time_unit) * _UNIT[time_unit]
    inp = counts(df, "input_tokens", loc)
    out = counts(df, "output_tokens", loc)
    plen = counts(df, "prefix_len", loc, allow_missing=True) if "prefix_len" in df.columns else None
    stage = None
    if "stage_index" in df.columns:
        s = numeric(df, "stage_index", loc)
        if (i := first(~np.isnan(s) & ((s != np.floor(s)) | (s < 0) | (s > MAX_TOKENS)))) is not None:
            raise TraceError(f"{loc(i, 'stage_index')}: value {s[i]:g} is not a stage index; use a whole number "
                             f"0, 1, 2, ...")
        stage = np.where(np.isnan(s), 0, s).astype(np.int64)
    table = TraceTable(
        str(path), fmt, inp, out, arrival, stage,
        prompt=factorize(df["prompt_id"]) if "prompt_id" in df.columns else None,
        group=factorize(df["prefix_group"]) if plen is not None else None, prefix_len=plen,
        session=factorize(df["session_id"], as_str=True) if "session_id" in df.columns else None,
        tenant=factorize(df["tenant"], as_str=True) if "tenant" in df.columns else None,
        difficulty=_difficulty(df, loc) if "difficulty" in df.columns else None,
        cache_hit=_cache_hit(df, loc) if "cache_hit" in df.columns else None)
    return _finish(table, sort)


def _difficulty(df: pd.DataFrame, loc: Locator) -> np.ndarray:
    """The optional `difficulty` column: a score in [0, 1] per row (empty = not given)."""
    d = numeric(df, "difficulty", loc)
    if (i := first(~np.isnan(d) & ((d < 0) | (d > 1)))) is not None:
        raise TraceError(f"{loc(i, 'difficulty')}: value {d[i]} is outside [0, 1]; give a score between 0 and 1")
    return d


_TRUE, _FALSE = {"1", "true", "yes", "hit"}, {"0", "false", "no", "miss"}


def _cache_hit(df: pd.DataFrame, loc: Locator) -> np.ndarray:
    """The optional `cache_hit` column: true/false, 1/0 (empty = let the cache decide) as int8 1 / 0 / -1."""
    out = np.full(len(df), -1, dtype=np.int8)
    for i, v in enumerate(df["cache_hit"].tolist()):
        if v is None or (isinstance(v, float) and v != v) or (isinstance(v, str) and not v.strip()):
            continue
        key = str(v).strip().lower()
        if isinstance(v, (bool, np.bool_)):
            key = "1" if v else "0"
        elif isinstance(v, (int, float, np.integer, np.floating)):
            key = "1" if v == 1 else "0" if v == 0 else key
        if key in _TRUE:
            out[i] = 1
        elif key in _FALSE:
            out[i] = 0
        else:
            raise TraceError(f"{loc(i, 'cache_hit')}: value {v!r} is not a hit flag; use true/false or 1/0")
    return out


@register("trace_format", "vidur")
def load_vidur(path: str | os.PathLike, *, need_time: bool = False, sort: bool = False, **_: Any) -> TraceTable:
    """Vidur's request-length tables: num_prefill_tokens, num_decode_tokens (no times)."""
    return load_csv(path, columns={"input_tokens": "num_prefill_tokens", "output_tokens": "num_decode_tokens"},
                    need_time=False, sort=sort, fmt="vidur")


AZURE = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")


def load_azure(path: str | os.PathLike, *, need_time: bool = True, sort: bool = False, fmt: str = "azure_2023",
               **_: Any) -> TraceTable:
    """Azure LLM inference traces (2023 and 2024): wall-clock TIMESTAMP, ContextTokens, GeneratedTokens."""
    df = read_frame(path, AZURE)
    require_columns(df, path, AZURE, fmt=fmt)
    loc = Locator(path, csv=not is_parquet(path))
    raw = df["TIMESTAMP"]
    ts = pd.to_datetime(raw, format="ISO8601", utc=True, errors="coerce")
    if (i := first(ts.isna().to_numpy())) is not None:
        raise TraceError(f"{loc(i, 'TIMESTAMP')}: value {raw.iloc[i]!r} is not a timestamp "
                         f"(expected e.g. 2023-11-16 18:17:03.9799600); fix or delete that row")
    t = (ts - ts.min()).dt.total_seconds().to_numpy(dtype=np.float64)
    check_times(t, "TIMESTAMP", loc, require_sorted=not sort)
    table = TraceTable(str(path), fmt, counts(df, "ContextTokens", loc), counts(df, "GeneratedTokens", loc), t)
    return _finish(table, sort)


@register("trace_format", "azure_2023")
def load_azure_2023(path: str | os.PathLike, **kw: Any) -> TraceTable:
    """Azure LLM inference trace 2023 (Splitwise, one hour): TIMESTAMP, ContextTokens, GeneratedTokens."""
    return load_azure(path, fmt="azure_2023", **kw)


@register("trace_format", "azure_2024")
def load_azure_2024(path: str | os.PathLike, **kw: Any) -> TraceTable:
    """Azure LLM inference trace 2024 (DynamoLLM, one week): the 2023 columns, timestamps with a UTC offset."""
    return load_azure(path, fmt="azure_2024", **kw)


BURSTGPT = ("Timestamp", "Model", "Request tokens", "Response tokens")


@register("trace_format", "burstgpt")
def load_burstgpt(path: str | os.PathLike, *, need_time: bool = True, sort: bool = False, **_: Any) -> TraceTable:
    """BurstGPT CSV: Timestamp (s), Model, Request tokens, Response tokens (0 = a failed request)."""
    df = read_frame(path, BURSTGPT)
    require_columns(df, path, BURSTGPT, fmt="burstgpt")
    loc = Locator(path, csv=not is_parquet(path))
    t = check_times(numeric(df, "Timestamp", loc), "Timestamp", loc, require_sorted=not sort)
    table = TraceTable(str(path), "burstgpt", counts(df, "Request tokens", loc), counts(df, "Response tokens", loc),
                       t, tenant=factorize(df["Model"], as_str=True))
    return _finish(table, sort)


MOONCAKE = ("timestamp", "input_length", "output_length")


def _read_jsonl(p: Path) -> pd.DataFrame | Any:
    """A JSONL file through pyarrow (fast); on any parse problem, find and report the bad line."""
    import pyarrow as pa
    import pyarrow.json as pj

    with open(p, "rb") as f:
        head = f.read(65536)
    if not head.strip():
        raise TraceError(f"trace {p}: the file is empty; it needs one JSON object per line with "
                         f"{', '.join(MOONCAKE)} and hash_ids")
    try:
        return pj.read_json(p, read_options=pj.ReadOptions(block_size=1 << 24))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        pass
    records = []
    with open(p, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise TraceError(f"trace {p}: line {i + 1} is not valid JSON ({e.msg}); fix or delete that line") from None
            if not isinstance(obj, dict):
                raise TraceError(f"trace {p}: line {i + 1} is not a JSON object; each line must be {{...}}")
            records.append(obj)
    return pd.DataFrame.from_records(records)


@register("trace_format", "mooncake")
def load_mooncake(path: str | os.PathLike, *, need_time: bool = True, sort: bool = False, **_: Any) -> TraceTable:
    """Mooncake JSONL: timestamp (ms), input_length, output_length, hash_ids (512-token prefix blocks)."""
    p = Path(path)
    if not p.is_file():
        raise TraceError(f"trace file {str(p)!r} not found (cwd {os.getcwd()}); check the workload's path")
    data = _read_jsonl(p)
    hash_ids = None
    if isinstance(data, pd.DataFrame):
        df = data
        if "hash_ids" in df.columns:
            lists = df["hash_ids"].tolist()
            loc = Locator(p, line_offset=1, line_word="line")
            for i, h in enumerate(lists):  # only on the slow path taken for malformed files
                if h is not None and not (isinstance(h, list) and all(isinstance(x, int) for x in h)):
                    raise TraceError(f"{loc(i, 'hash_ids')}: value {h!r} is not a list of integers")
            lens = np.array([len(h) if h else 0 for h in lists], dtype=np.int64)
            off = np.concatenate(([0], np.cumsum(lens))).astype(np.int64)
            vals = np.fromiter((x for h in lists if h for x in h), dtype=np.int64, count=int(off[-1]))
            hash_ids = (off, vals)
            df = df.drop(columns=["hash_ids"])
    else:
        tbl = data
        if "hash_ids" in tbl.column_names:
            import pyarrow as pa
            import pyarrow.compute as pc

            col = tbl.column("hash_ids").combine_chunks()
            if not pa.types.is_list(col.type) or not pa.types.is_integer(col.type.value_type):
                raise TraceError(f"trace {p}: column 'hash_ids' must hold lists of integers (found {col.type})")
            col = pc.fill_null(col, pa.scalar([], type=col.type))
            off = col.offsets.to_numpy().astype(np.int64)
            vals = col.values.to_numpy(zero_copy_only=False).astype(np.int64)
            hash_ids = (off - off[0], vals[off[0]:off[-1]])
            tbl = tbl.drop_columns(["hash_ids"])
        df = tbl.to_pandas()
    if len(df) == 0:
        raise TraceError(f"trace {p}: no data rows; add at least one request")
    need = MOONCAKE if need_time else MOONCAKE[1:]
    require_columns(df, p, need, fmt="mooncake")
    loc = Locator(p, line_offset=1, line_word="line")
    t = None
    if "timestamp" in df.columns:
        t = check_times(numeric(df, "timestamp", loc), "timestamp", loc, require_sorted=not sort, unit="ms") / 1000.0
    table = TraceTable(str(p), "mooncake", counts(df, "input_length", loc), counts(df, "output_length", loc), t,
                       hash_ids=hash_ids, block_tokens=512)
    return _finish(table, sort)


_TOKEN_FIELDS = ("tokens", "num_tokens", "token_count")
_HUMAN = {"human", "user"}
_MODEL = {"gpt", "assistant", "chatgpt", "bard", "model", "bing"}
WORDS_PER_TOKEN = 0.75


@register("trace_format", "sharegpt")
def load_sharegpt(path: str | os.PathLike, *, need_time: bool = False, sort: bool = False,
                  **_: Any) -> TraceTable:
    """ShareGPT / vLLM-benchmark JSON: first human turn and its reply; token counts from a field or ~words/0.75."""
    p = Path(path)
    if not p.is_file():
        raise TraceError(f"trace file {str(p)!r} not found (cwd {os.getcwd()}); check the workload's path")
    text = p.read_text(encoding="utf-8")
    if not text.strip():
        raise TraceError(f"trace {p}: the file is empty; it needs a JSON list of {{\"conversations\": [...]}}")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise TraceError(f"trace {p}: not valid JSON at line {e.lineno} column {e.colno} ({e.msg})") from None
    if not isinstance(data, list) or not data:
        raise TraceError(f"trace {p}: expected a non-empty JSON list of conversations, found {type(data).__name__}")
    prompts: list[Any] = []
    replies: list[Any] = []
    for i, conv in enumerate(data):  # nested JSON: one light pass to pick two messages per conversation
        turns = conv.get("conversations", conv.get("conversation")) if isinstance(conv, dict) else None
        if not isinstance(turns, list):
            raise TraceError(f"trace {p}: conversation {i} (index {i}) has no 'conversations' list; "
                             f"each item must be {{\"conversations\": [{{\"from\": ..., \"value\": ...}}, ...]}}")
        q = a = None
        for j, m in enumerate(turns):
            if not isinstance(m, dict):
                raise TraceError(f"trace {p}: conversation {i}, message {j} is not an object with 'from' and 'value'")
            role = str(m.get("from", m.get("role", ""))).lower()
            if q is None and role in _HUMAN:
                q = m
            elif q is not None and role in _MODEL:
                a = m
                break
        prompts.append(q if a is not None else None)
        replies.append(a)
    inp = _message_tokens(prompts, p, "prompt")
    out = _message_tokens(replies, p, "reply")
    table = TraceTable(str(p), "sharegpt", inp, out)
    if any(m is not None and not _has_count(m) for m in prompts + replies):
        table.notes.append(f"lengths approximate: ceil(words / {WORDS_PER_TOKEN}) tokens per message "
                           "(no token-count field)")
    return table


def _has_count(m: dict) -> bool:
    return any(isinstance(m.get(k), (int, float)) and not isinstance(m.get(k), bool) for k in _TOKEN_FIELDS)


def _message_tokens(msgs: list[Any], p: Path, what: str) -> np.ndarray:
    """Token counts of messages (0 where there is none): a count field when present, else ~words / 0.75."""
    counted = np.array([next((float(m[k]) for k in _TOKEN_FIELDS if k in m and isinstance(m[k], (int, float))
                              and not isinstance(m[k], bool)), np.nan) if m is not None else 0.0 for m in msgs])
    texts = pd.Series([m.get("value", m.get("content", "")) if m is not None else "" for m in msgs], dtype=object)
    words = texts.astype(str).str.count(r"\S+").to_numpy(dtype=np.float64)
    approx = np.ceil(words / WORDS_PER_TOKEN)
    loc = Locator(p, line_offset=None)
    return count_values(np.where(np.isnan(counted), approx, counted), f"{what} tokens", loc)


# ----------------------------------------------------------------------------- choosing a format


COMPRESSED = (".gz", ".bz2", ".zip", ".xz", ".zst", ".tar")


def is_parquet(path: str | os.PathLike) -> bool:
    """True for a Parquet file (by its extension)."""
    return Path(path).suffix.lower() in PARQUET


def format_of_columns(cols: Sequence[str], first_stamp: Any = None) -> str | None:
    """The known format (not csv) whose columns `cols` are; `first_stamp`, the first TIMESTAMP, tells the
    Azure years apart (2024's carry a UTC offset)."""
    cols = set(cols)
    if set(AZURE) <= cols:
        stamp = first_stamp if isinstance(first_stamp, str) else ""
        return "azure_2024" if ("+" in stamp[10:] or stamp.endswith("Z")) else "azure_2023"
    if set(BURSTGPT) <= cols:
        return "burstgpt"
    if {"num_prefill_tokens", "num_decode_tokens"} <= cols and "input_tokens" not in cols:
        return "vidur"
    return None


def sniff_format(path: str | os.PathLike) -> str:
    """The format of a file, from its extension and its header, read as the loader reads it (a byte-order
    mark stripped; .gz, .bz2, .zip, .xz, .zst decompressed by pandas' inference from the name)."""
    p = Path(path)
    if not p.is_file():
        raise TraceError(f"trace file {str(p)!r} not found (cwd {os.getcwd()}); check the workload's path")
    suffix = p.suffix.lower()
    if suffix in COMPRESSED:
        suffix = Path(p.stem).suffix.lower()        # azure.csv.gz: a compressed .csv
    if suffix in (".jsonl", ".ndjson"):
        return "mooncake"
    if suffix == ".json":
        return "sharegpt"
    try:
        if suffix in PARQUET:
            import pyarrow.parquet as pq

            cols, stamp = pq.read_schema(p).names, None
        else:
            head = pd.read_csv(p, nrows=1, dtype=str)
            cols = [str(c) for c in head.columns]
            stamp = head["TIMESTAMP"].iloc[0] if "TIMESTAMP" in head.columns and len(head) else None
    except Exception:  # noqa: BLE001 - not a readable table: the csv loader says what is wrong, in one line
        return "csv"
    return format_of_columns(cols, stamp) or "csv"


def load_table(path: str | os.PathLike, fmt: str = "auto", *, columns: dict[str, str] | None = None,
               time_unit: str = "s", need_time: bool = True, sort: bool = False) -> TraceTable:
    """Load and validate a trace in format ``fmt`` (``auto``: sniffed). ``need_time``: the times are needed."""
    try:
        name = sniff_format(path) if fmt == "auto" else fmt
        return _load_table(path, name, fmt, columns, time_unit, need_time, sort)
    except (UnicodeDecodeError, OSError, ValueError) as exc:
        # a file that is not what its name says (corrupt Parquet, non-UTF-8 JSON, ...): pyarrow's
        # ArrowInvalid is a ValueError; keep the first line of the reader's complaint
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TraceError(f"trace {path}: cannot be read as a {fmt if fmt != 'auto' else 'trace'} file "
                         f"({reason[:160]}); check the file and its format") from None


def _load_table(path, name: str, fmt: str, columns, time_unit: str, need_time: bool, sort: bool) -> TraceTable:
    if columns and name != "csv":
        if fmt == "auto":
            name = "csv"  # a mapping says how to read the file: the generic reader
        else:
            raise TraceError(f"trace {path}: 'columns' applies to the csv format only (format is {name!r})")
    loader = get("trace_format", name)
    if name == "csv":
        table = loader(path, columns=columns, time_unit=time_unit, need_time=need_time, sort=sort)
    else:
        table = loader(path, need_time=need_time, sort=sort)
    if need_time and table.arrival_s is None:
        raise TraceError(f"trace {path}: format {name!r} has no arrival times; give the workload an "
                         f"'arrival:' process (e.g. {{process: poisson, rate: 5, num_requests: 1000}})")
    return table
