"""Requests that carry images (or audio clips): their ids, their tokens, and room for them in the prompt.

An image is ``(image id, tokens)``: the id says which image it is (two requests with the same id send the
same image, so an encoder cache can skip it), the tokens are what the encoder's output occupies in the
prompt. A request's image tokens are part of its ``input_tokens``; the prompt is its text followed by its
images, and where the text has prompt identity (``segments``) the images are appended as segments
``(("img", id), tokens)``, so prefix caching sees them as the prompt's tail.

Two sources:

* synthetic, any array workload with ``images: {per_request, tokens_per_image, distinct_images, fraction,
  popularity}``: a ``fraction`` of requests get ``per_request`` images each, on top of their drawn text
  length; ids come from a pool of ``distinct_images`` (uniform or Zipf popularity), so repeats hit the cache.
* trace (csv / Parquet): optional columns ``image_ids`` (ids separated by ``;``) and ``image_tokens`` (one
  count per image, or one count for every image of the row); the row's ``input_tokens`` counts them.

``max_model_len`` never cuts an image: the text is shortened to make room (then the output, as for text).
"""
from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd

from sim.errors import ConfigError, TraceError

from .base import CHUNK, ArrayWorkload, as_seed_sequence, truncate_segments
from .formats import PARQUET, TraceTable, is_parquet
from .validate import MAX_TOKENS, Locator

#: Child index of the images' random stream under the workload's seed: outside the range of
#: `workloads.base.COMPONENTS`, so drawing images shifts no other component's stream.
IMAGES_STREAM = 100


def images_rng(seed: int | np.random.SeedSequence) -> np.random.Generator:
    """The generator of the image draws (stateless, like `workloads.base.component_rng`)."""
    ss = as_seed_sequence(seed)
    return np.random.default_rng(np.random.SeedSequence(ss.entropy, spawn_key=(*ss.spawn_key, IMAGES_STREAM),
                                                        pool_size=ss.pool_size))


@dataclass
class Images:
    """Per-row images in CSR form: row i has images ``offsets[i]:offsets[i+1]`` of ``codes`` / ``tokens``.

    ``names[code]`` is the image id; with ``names`` None the id is ``("img", code)``.
    """

    offsets: np.ndarray
    codes: np.ndarray
    tokens: np.ndarray
    names: list | None = None

    def row_tokens(self) -> np.ndarray:
        """Image tokens per row."""
        cs = np.concatenate(([0], np.cumsum(self.tokens, dtype=np.int64)))
        return cs[self.offsets[1:]] - cs[self.offsets[:-1]]

    def take(self, idx: np.ndarray) -> Images:
        """The rows ``idx``, in that order."""
        idx = np.asarray(idx, dtype=np.int64)
        off = self.offsets
        lens = off[idx + 1] - off[idx]
        new_off = np.zeros(len(idx) + 1, dtype=np.int64)
        np.cumsum(lens, out=new_off[1:])
        pos = np.repeat(off[idx] - new_off[:-1], lens) + np.arange(int(new_off[-1]), dtype=np.int64)
        return Images(new_off, self.codes[pos], self.tokens[pos], self.names)


def synthetic_images(cfg, n: int, seed: int | np.random.SeedSequence) -> Images:
    """Images of `n` requests per a workload's ``images:`` option (`workloads.config.ImagesConfig`)."""
    rng = images_rng(seed)
    has = rng.random(n) < cfg.fraction if cfg.fraction < 1.0 else np.ones(n, dtype=bool)
    counts = has.astype(np.int64) * cfg.per_request
    offsets = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
    m = int(offsets[-1])
    pool = cfg.distinct_images
    if pool is None:
        codes = np.arange(m, dtype=np.int64)                    # every image a new one
    elif cfg.popularity == "zipf":
        p = np.arange(1, pool + 1, dtype=np.float64) ** -cfg.zipf_s
        codes = rng.choice(pool, size=m, p=p / p.sum()).astype(np.int64)
    else:
        codes = rng.integers(0, pool, size=m, dtype=np.int64)
    return Images(offsets, codes, np.full(m, cfg.tokens_per_image, dtype=np.int64))


class MultimodalWorkload(ArrayWorkload):
    """An array workload whose requests carry images (module docstring): prompt = text + images."""

    def __init__(self, text: ArrayWorkload, images: Images, *, text_tokens: np.ndarray | None = None,
                 max_model_len: int | None = None, copies: np.ndarray | None = None) -> None:
        """`text` must be built without clipping; `text_tokens` (default its input_tokens) is each row's text
        length, and its segments (if any) cover at least that; `copies` > 0 rows (trace rate scaling) get
        their own image identities."""
        txt = np.asarray(text.input_tokens if text_tokens is None else text_tokens, dtype=np.int64)
        out = np.asarray(text.output_tokens, dtype=np.int64)
        img = images.row_tokens()
        if max_model_len is not None:
            worst = int(img.max()) if len(img) else 0
            if worst > max_model_len - 1:
                raise ConfigError(f"workload.images: a request's images take {worst} tokens, more than max_model_len "
                                  f"{max_model_len} - 1; send fewer or smaller images or raise engine.max_model_len")
            kept = np.minimum(txt, max_model_len - 1 - img)
            out_c = np.minimum(out, max_model_len - kept - img)
        else:
            kept, out_c = txt, out
        self._text_len, self._text_raw = kept, txt
        self._inner_segments = text._segments_for
        self.images, self._copies = images, copies
        super().__init__(text.arrival_s, kept + img, out_c, stage=text.stage,
                         segments_for=self._segments if text._segments_for is not None else None,
                         output_keys_for=text._output_keys_for, session_codes=text._session_codes,
                         session_names=text._session_names, dropped=text.dropped,
                         class_codes=text.class_codes, classes=text.classes)
        self.clipped = int(np.count_nonzero((kept != txt) | (out_c != out)))
        for attr in ("source", "notes"):
            if hasattr(text, attr):
                setattr(self, attr, getattr(text, attr))

    def _keys(self, lo: int, hi: int) -> list[list[tuple[Hashable, int]]]:
        """Per row of lo..hi-1, its images as (id, tokens)."""
        im = self.images
        o = im.offsets[lo:hi + 1].tolist()
        codes = im.codes[o[0]:o[-1]].tolist()
        toks = im.tokens[o[0]:o[-1]].tolist()
        names = im.names
        cp = self._copies[lo:hi].tolist() if self._copies is not None else None
        base = o[0]
        rows = []
        for j in range(hi - lo):
            ids = [names[c] if names is not None else ("img", c) for c in codes[o[j] - base:o[j + 1] - base]]
            if cp is not None and cp[j]:
                ids = [("copy", cp[j], k) for k in ids]
            rows.append(list(zip(ids, toks[o[j] - base:o[j + 1] - base])))
        return rows

    def _segments(self, lo: int, hi: int):
        segl = self._inner_segments(lo, hi)
        kept = self._text_len[lo:hi].tolist()
        raw = self._text_raw[lo:hi].tolist()
        res = []
        for j, imgs in enumerate(self._keys(lo, hi)):
            s = segl[j]
            if s is None:
                res.append(None)
                continue
            if kept[j] < raw[j] or sum(n for _, n in s) > kept[j]:
                s = truncate_segments(s, kept[j])
            res.append(s + tuple((("img", k), n) for k, n in imgs) if imgs else s)
        return res

    def __iter__(self):
        specs = super().__iter__()
        n = len(self.arrival_s)
        for lo in range(0, n, CHUNK):
            hi = min(n, lo + CHUNK)
            for imgs in self._keys(lo, hi):
                spec = next(specs)
                if imgs:
                    spec.images = tuple(imgs)
                yield spec


def with_images(w, cfg, seed: int | np.random.SeedSequence, max_model_len: int | None) -> MultimodalWorkload:
    """`w` (an unclipped array workload) with synthetic images per ``cfg`` (`workloads.config.ImagesConfig`)."""
    if not isinstance(w, ArrayWorkload):
        raise ConfigError(f"workload.images: {type(w).__name__} requests are made during the run; images apply to "
                          f"poisson, synthetic, shared_prefix and trace workloads")
    return MultimodalWorkload(w, synthetic_images(cfg, len(w.arrival_s), seed), max_model_len=max_model_len)


# ----------------------------------------------------------------------------- traces

IMAGE_COLUMNS = ("image_ids", "image_tokens")


@dataclass
class ImageTraceTable(TraceTable):
    """A `TraceTable` that carries its rows' images through every transformation (take)."""

    images: Images | None = None

    def take(self, idx: np.ndarray) -> ImageTraceTable:
        """The rows ``idx``, in that order, images included."""
        out = super().take(idx)
        out.images = self.images.take(idx) if self.images is not None else None
        return out


def _read_columns(path: str, wanted: set[str]) -> pd.DataFrame:
    if Path(path).suffix.lower() in PARQUET:
        import pyarrow.parquet as pq

        have = [c for c in pq.read_schema(path).names if c in wanted]
        return pd.read_parquet(path, columns=have) if have else pd.DataFrame()
    header = pd.read_csv(path, nrows=0).columns
    if "image_ids" not in header:                  # the header alone tells: no second full parse
        return pd.DataFrame(columns=[c for c in header if c in wanted])
    return pd.read_csv(path, usecols=lambda c: c in wanted, dtype=str, low_memory=False)


def _split(col: pd.Series) -> tuple[np.ndarray, pd.Series]:
    """Per row, how many ';'-separated values; and the values (stripped), row-major."""
    s = col.where(col.notna(), "").astype(str).reset_index(drop=True).str.split(";").explode().str.strip()
    s = s[(s != "") & (s != "nan") & (s != "None")]
    return np.bincount(s.index.to_numpy(dtype=np.int64), minlength=len(col)), s


def trace_images(table: TraceTable, *, columns: dict[str, str] | None = None, time_unit: str = "s",
                 sort: bool = False, default_tokens: int = 576) -> ImageTraceTable | None:
    """`table` (a csv-format trace, as loaded) with its file's image columns, or None when it has none.

    Rows of `table` follow the file's rows, reordered by arrival time when the loader sorted them.
    """
    if table.format != "csv":
        return None
    path = table.source
    tcol = (columns or {}).get("arrival_time_s", "arrival_time_s")
    df = _read_columns(path, {*IMAGE_COLUMNS, tcol} if sort else set(IMAGE_COLUMNS))
    if "image_ids" not in df.columns:
        if "image_tokens" in df.columns:
            raise TraceError(f"trace {path}: column 'image_tokens' needs column 'image_ids' (';'-separated ids)")
        return None
    loc = Locator(path, csv=not is_parquet(path))
    counts, ids = _split(df["image_ids"])
    codes, names = pd.factorize(ids, sort=False)
    if "image_tokens" in df.columns:
        tcounts, tvals = _split(df["image_tokens"])
        tok = pd.to_numeric(tvals, errors="coerce").to_numpy(dtype=np.float64)
        bad = np.flatnonzero(~(tok >= 1) | (tok != np.floor(tok)) | (tok > MAX_TOKENS))
        if len(bad):
            raise TraceError(f"{loc(int(tvals.index[bad[0]]), 'image_tokens')}: value {tvals.iloc[bad[0]]!r} is not "
                             f"a whole number of tokens in 1..{MAX_TOKENS:,}")
        tok = tok.astype(np.int64)
        exact = tcounts == counts
        missing = tcounts == 0                                          # ids without counts: the default
        wrong = np.flatnonzero(~exact & ~missing & (tcounts != 1) & (counts > 0))
        if len(wrong):
            i = int(wrong[0])
            raise TraceError(f"{loc(i, 'image_tokens')}: {tcounts[i]} image_tokens for {counts[i]} image_ids; give "
                             f"one count per image or one count for all of them")
        row = np.repeat(np.arange(len(counts)), counts)                 # each image's row
        first_img = np.concatenate(([0], np.cumsum(counts)))[:-1]
        first_tok = np.concatenate(([0], np.cumsum(tcounts)))[:-1]
        pos = np.arange(len(row)) - first_img[row]                      # its place within the row
        at = first_tok[row] + np.where(exact[row], pos, 0)
        tokens = np.where(missing[row], default_tokens, tok[np.minimum(at, max(len(tok) - 1, 0))] if len(tok) else 0)
    else:
        tokens = np.full(len(ids), default_tokens, dtype=np.int64)
    images = Images(np.concatenate(([0], np.cumsum(counts))).astype(np.int64), codes.astype(np.int64), tokens,
                    [str(n) for n in names])
    order = np.arange(len(counts))                                      # table row -> file row
    if sort and tcol in df.columns:
        raw = pd.to_numeric(df[tcol], errors="coerce").to_numpy(dtype=np.float64)
        order = np.argsort(raw, kind="stable")
        images = images.take(order)
    over = np.flatnonzero(images.row_tokens() > table.input_tokens)
    if len(over):
        i = int(over[0])
        raise TraceError(f"{loc(int(order[i]), 'input_tokens')}: the row's images take {int(images.row_tokens()[i])} "
                         f"tokens but input_tokens is {int(table.input_tokens[i])}; input_tokens must count the image "
                         f"tokens")
    return ImageTraceTable(**{f.name: getattr(table, f.name) for f in fields(table)}, images=images)


def trace_workload_images(w: ArrayWorkload, table: ImageTraceTable,
                          max_model_len: int | None) -> MultimodalWorkload:
    """The unclipped trace stream `w` of `table` with the table's images (text = input_tokens - image tokens)."""
    img = table.images
    return MultimodalWorkload(w, img, text_tokens=table.input_tokens - img.row_tokens(),
                              max_model_len=max_model_len, copies=table.copy)


__all__ = ["IMAGES_STREAM", "ImageTraceTable", "Images", "MultimodalWorkload", "images_rng", "synthetic_images",
           "trace_images", "trace_workload_images", "with_images"]
