"""Multimodal requests: an image / audio encoder stage before prefill (registry kind ``"encoder_mode"``).

A request's ``images`` are ``((image id, tokens), ...)``; their tokens are already part of its prompt (the
workload put them there), so the LLM prefills them like text. What this module adds is the encoder that
turns each image into those tokens, and where it runs:

* ``inline`` (vLLM's default): the encoder runs on the LLM replica, in the step that first schedules the
  request. The stage sets ``req.encoder_s`` and the engine adds it to that step (`sim.engine.Replica.admit`),
  so every request in the batch, decoding ones included, waits for it.
* ``async``: a pool of ``encoder_gpus`` GPUs of its own encodes images before the request is routed
  (encoder disaggregation, as in EPD serving). Decode steps never see it, but requests queue for it; each
  free encoder GPU takes up to ``batch_images`` queued images into one call.

An image is priced by `policies.encoder_cost.EncoderCost` (a roofline over the tower's layers and patches).
An image with more tokens than ``tokens_per_image`` is encoded as ``ceil(tokens / tokens_per_image)`` tiles
(LLaVA-NeXT's any-resolution crops). An LRU `EncoderCache` keyed by image id (vLLM's encoder cache, keyed
by the image's hash) skips the encoder for an image it holds; an image being encoded for another request is
waited for, not encoded twice. Build a stage with `make_encoder_stage` and hand it to
``Deployment.add_stage``: it is a front-end stage (``name``, ``enter(env, req)`` returning True to pass the
request on, ``attach(deployment)``, ``summary()``); inline mode's ``attach`` gives each replica its own
cache and prices its requests on that replica's GPUs.
"""
from __future__ import annotations

from array import array
from collections import OrderedDict, deque
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, field_validator, model_validator

from sim.errors import ServesimError
from sim.hardware import get_gpu
from sim.registry import REGISTRY, get, register
from sim.request import REJECTED

from .encoder_cost import EncoderCost, EncoderSpec, get_encoder, list_encoders  # noqa: F401  (re-exported)


class MultimodalConfig(BaseModel):
    """The ``multimodal:`` section: which encoder, where it runs, how its outputs are cached."""

    model_config = ConfigDict(extra="forbid")

    encoder: str = Field("clip-vit-l-336", description="Encoder tower from sim/catalog/encoders.yaml "
                                                      "(clip-vit-l-336, siglip-so400m-384, ...).")
    mode: str = Field("inline", description="inline: encode on the LLM replica in the step that first schedules "
                                            "the request; async: a separate encoder GPU pool before routing "
                                            "(registry kind 'encoder_mode').")
    tokens_per_image: PositiveInt | None = Field(
        None, description="LLM tokens one encoded image (tile) yields; an image with more tokens is priced as "
                          "that many tiles. Default: the encoder's catalogue value (576 for LLaVA-1.5).")
    cache_images: NonNegativeInt = Field(1000, description="Encoder cache capacity in images (LRU by image id); "
                                                           "0 turns the cache off.")
    cache_tokens: PositiveInt | None = Field(
        None, description="Encoder cache capacity in tokens instead (vLLM sizes its cache so, by default "
                          "max_num_batched_tokens); with both, whichever fills first evicts.")
    encoder_gpus: PositiveInt = Field(1, description="async: encoder GPUs in the pool (one encoder call each "
                                                     "at a time).")
    encoder_gpu: str | None = Field(None, description="async: GPU type of the encoder pool; default the replica's.")
    batch_images: PositiveInt = Field(16, description="async: most images one encoder call takes from the queue.")
    dtype: str = Field("bf16", description="Encoder weights and activations: bf16 or fp16.")

    @model_validator(mode="after")
    def _async_only(self) -> "MultimodalConfig":
        given = sorted({"encoder_gpus", "encoder_gpu", "batch_images"} & self.model_fields_set)
        if self.mode == "inline" and given:
            raise ValueError(f"{', '.join(given)} set the async encoder pool; with mode: inline the replica's own GPUs "
                             f"encode one request per call (use mode: async, or remove them)")
        return self

    @field_validator("encoder")
    @classmethod
    def _known_encoder(cls, v: str) -> str:
        try:
            return get_encoder(v).name
        except ServesimError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("mode")
    @classmethod
    def _known_mode(cls, v: str) -> str:
        names = REGISTRY.names("encoder_mode")
        if v.lower() not in names:
            raise ValueError(f"unknown encoder mode {v!r}; choose one of: {', '.join(names)}")
        return v.lower()

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, v: str) -> str:
        if v not in ("bf16", "fp16"):
            raise ValueError(f"dtype must be bf16 or fp16 (got {v!r})")
        return v


class EncoderCache:
    """LRU of encoded images by id, bounded in images and (optionally) in tokens; counts lookups and hits."""

    __slots__ = ("max_images", "max_tokens", "_entries", "tokens", "lookups", "hits", "evictions")

    def __init__(self, max_images: int, max_tokens: int | None = None) -> None:
        self.max_images, self.max_tokens = max_images, max_tokens
        self._entries: OrderedDict = OrderedDict()
        self.tokens = 0
        self.lookups = self.hits = self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, image_id) -> bool:
        return image_id in self._entries

    def lookup(self, image_id) -> bool:
        """True (and the entry becomes most recent) when the image's encoding is cached."""
        self.lookups += 1
        if image_id in self._entries:
            self._entries.move_to_end(image_id)
            self.hits += 1
            return True
        return False

    def insert(self, image_id, tokens: int) -> None:
        """Keep an encoded image, evicting the least recently used ones until it fits (never one too big)."""
        if self.max_images == 0 or (self.max_tokens is not None and tokens > self.max_tokens):
            return
        if image_id in self._entries:
            self._entries.move_to_end(image_id)
            return
        entries = self._entries
        while entries and (len(entries) >= self.max_images
                           or (self.max_tokens is not None and self.tokens + tokens > self.max_tokens)):
            _, old = entries.popitem(last=False)
            self.tokens -= old
            self.evictions += 1
        entries[image_id] = tokens
        self.tokens += tokens


class EncoderStats:
    """What the stage did: per request (id, encoder seconds), and totals over calls."""

    def __init__(self) -> None:
        self.request_ids = array("q")
        self.encoder_s = array("d")      # inline: seconds charged to the step; async: time in the stage
        self.images = 0
        self.encoded_images = 0
        self.encoded_tokens = 0
        self.calls = 0
        self.busy_s = 0.0                # encoder GPU seconds


class _Stage:
    """What both modes share: the cost, the per-image bookkeeping and the summary."""

    mode = ""
    name = "multimodal"           # its section of summary.json

    def __init__(self, cfg: MultimodalConfig, cost: EncoderCost) -> None:
        self.cfg, self.cost, self.spec = cfg, cost, cost.spec
        self._env = None
        self.tokens_per_image = cfg.tokens_per_image or cost.spec.tokens_per_item
        self.stats = EncoderStats()
        self.caches: list[EncoderCache] = [self._new_cache()]
        self.outstanding = 0             # requests inside the stage (waiting for their encodings)

    def _new_cache(self) -> EncoderCache:
        return EncoderCache(self.cfg.cache_images, self.cfg.cache_tokens)

    def tiles(self, tokens: int) -> int:
        """Encoder items (tiles) of an image with `tokens` LLM tokens."""
        return -(-tokens // self.tokens_per_image)

    def summary(self, sim_time: float | None = None) -> dict:
        """The ``multimodal`` section of summary.json (`sim_time` defaults to the simulation's clock)."""
        from sim.metrics import distribution

        st = self.stats
        lookups = sum(c.lookups for c in self.caches)
        hits = sum(c.hits for c in self.caches)
        out = {"encoder": self.spec.name, "mode": self.mode, "tokens_per_image": self.tokens_per_image,
               "requests_with_images": len(st.request_ids), "images": st.images,
               "encoded_images": st.encoded_images, "encoded_tokens": st.encoded_tokens,
               "encoder_calls": st.calls, "encoder_busy_s": st.busy_s,
               "encoder_cache_hit_rate": hits / lookups if lookups else 0.0,
               "encoder_s": distribution(np.frombuffer(st.encoder_s, dtype=np.float64) if len(st.encoder_s)
                                         else np.zeros(0))}
        return out

    def encoder_column(self, request_ids: np.ndarray) -> np.ndarray:
        """Encoder seconds per row of a requests table (0 for text-only requests), aligned with `request_ids`."""
        st = self.stats
        out = np.zeros(len(request_ids))
        if len(st.request_ids):
            ids = np.frombuffer(st.request_ids, dtype=np.int64)
            val = np.frombuffer(st.encoder_s, dtype=np.float64)
            order = np.argsort(ids, kind="stable")
            pos = np.searchsorted(ids[order], request_ids)
            pos = np.minimum(pos, len(ids) - 1)
            found = ids[order][pos] == request_ids
            out[found] = val[order][pos[found]]
        return out


@register("encoder_mode", "inline")
class InlineEncoder(_Stage):
    """Encode on the LLM replica, inside the step that first schedules the request (vLLM's default)."""

    mode = "inline"

    def __init__(self, cfg: MultimodalConfig, cost: EncoderCost) -> None:
        super().__init__(cfg, cost)
        self._attached = False

    def price(self, req, cache: EncoderCache, cost: EncoderCost) -> float:
        """Encoder seconds for `req`'s images that `cache` lacks (all of them in one call); fills the cache."""
        st = self.stats
        items = tokens = 0
        for image_id, n in req.images:
            st.images += 1
            if not cache.lookup(image_id):
                items += self.tiles(n)
                tokens += n
                cache.insert(image_id, n)
                st.encoded_images += 1
        t = 0.0
        if items:
            t = cost.call_time(items, tokens)
            st.encoded_tokens += tokens
            st.calls += 1
            st.busy_s += t
        st.request_ids.append(req.id)
        st.encoder_s.append(t)
        return t

    def enter(self, env, req) -> bool:
        """Price the request's encoding (unless its replica will, after `attach`) and pass it on; takes no
        simulated time, so it is a plain function, not a SimPy process."""
        if self._env is None:
            self._env = env
        if req.images and not self._attached:
            req.encoder_s = self.price(req, self.caches[0], self.cost)
        return True

    def attach(self, target) -> None:
        """Price requests where they are queued, on their replica's GPUs (TP group), with one encoder cache per
        replica, as vLLM keeps one per engine. `target` is a `Deployment` (every replica of every pool: a
        disaggregated request is encoded by its prefill instance; the decode instance gets it already
        scheduled) or a list of replicas. A request is priced when queued, before a replica can schedule it."""
        self._attached = True
        self._env = getattr(target, "env", self._env)
        self.caches = []
        costs: dict[tuple[str, int, str], EncoderCost] = {}
        for rep in getattr(target, "replicas", target):
            c = rep.cost
            key = (c.gpu.name, c.tp, c.model.name)
            if key not in costs:
                costs[key] = EncoderCost(self.spec, c.gpu, tp=c.tp, engine=c.engine,
                                         llm_hidden=c.model.hidden_size, dtype=self.cfg.dtype)
            cache = self._new_cache()
            self.caches.append(cache)
            rep.enqueue = self._pricing(rep.enqueue, cache, costs[key])

    def _pricing(self, enqueue, cache: EncoderCache, cost: EncoderCost):
        def enqueue_with_encoder(req) -> None:
            fresh = req.images and req.first_scheduled < 0 and not req.encoder_s
            enqueue(req)
            # priced (and cached) only once the replica has accepted it: a refused request encodes nothing; the
            # replica's loop runs after this returns, so the time is in place before the request is scheduled
            if fresh and req.state != REJECTED:
                req.encoder_s = self.price(req, cache, cost)

        return enqueue_with_encoder


@register("encoder_mode", "async")
class AsyncEncoder(_Stage):
    """A pool of encoder GPUs of its own encodes a request's images before it is routed (no decode interference)."""

    mode = "async"

    def __init__(self, cfg: MultimodalConfig, cost: EncoderCost) -> None:
        super().__init__(cfg, cost)
        self.gpus = cfg.encoder_gpus
        self.batch_images = cfg.batch_images
        self._queue: deque = deque()         # (image id, tokens) waiting for an encoder GPU
        self._inflight: dict = {}            # image id -> event succeeding when its encoding is cached
        self._work = None
        self._started = False

    def enter(self, env, req):
        """SimPy process: wait until every image of the request is encoded (or cached); then forward it."""
        if not req.images:
            return True
        if not self._started:
            self._start(env)
        cache, st = self.caches[0], self.stats
        start = env.now
        waits = []
        for image_id, n in req.images:
            st.images += 1
            if cache.lookup(image_id):
                continue
            ev = self._inflight.get(image_id)
            if ev is None:
                ev = self._inflight[image_id] = env.event()
                self._queue.append((image_id, n))
                self._wake()
            waits.append(ev)
        if waits:
            self.outstanding += 1
            yield env.all_of(waits)
            self.outstanding -= 1
        st.request_ids.append(req.id)
        st.encoder_s.append(env.now - start)
        return True

    def _start(self, env) -> None:
        self._env, self._started = env, True
        self._work = env.event()
        for _ in range(self.gpus):
            env.process(self._worker(env))

    def _wake(self) -> None:
        ev, self._work = self._work, self._env.event()
        ev.succeed()

    def _worker(self, env):
        """One encoder GPU: take up to batch_images queued images, encode them in one call, publish them."""
        queue, cache, st = self._queue, self.caches[0], self.stats
        while True:
            while not queue:
                yield self._work
            batch = [queue.popleft() for _ in range(min(self.batch_images, len(queue)))]
            items = sum(self.tiles(n) for _, n in batch)
            tokens = sum(n for _, n in batch)
            dt = self.cost.call_time(items, tokens)
            st.calls += 1
            st.busy_s += dt
            st.encoded_images += len(batch)
            st.encoded_tokens += tokens
            yield env.timeout(dt)
            for image_id, n in batch:
                cache.insert(image_id, n)
                self._inflight.pop(image_id).succeed()

    def attach(self, target) -> None:
        """Nothing to wire: the pool is the stage's own (only the simulation's clock is kept)."""
        self._env = getattr(target, "env", self._env)

    def summary(self, sim_time: float | None = None) -> dict:
        """The shared summary plus the pool's size and utilisation (busy seconds / (GPUs x sim_time))."""
        if sim_time is None:
            sim_time = self._env.now if self._env is not None else 0.0
        out = super().summary(sim_time)
        out["encoder_gpus"] = self.gpus
        out["encoder_utilisation"] = self.stats.busy_s / (self.gpus * sim_time) if sim_time > 0 else 0.0
        return out


def make_encoder_stage(cfg: MultimodalConfig | dict, llm_cost: Any) -> _Stage:
    """The encoder stage of `cfg` for a pool whose cost model is `llm_cost` (a `sim.cost.CostModel`: its GPU,
    TP degree, engine profile and the LLM's hidden size). Async pools run at TP 1 on ``encoder_gpu`` (default
    the replica's GPU type)."""
    cfg = cfg if isinstance(cfg, MultimodalConfig) else MultimodalConfig.model_validate(dict(cfg))
    spec = get_encoder(cfg.encoder)
    cls = get("encoder_mode", cfg.mode)
    if cls is AsyncEncoder or getattr(cls, "mode", "") == "async":
        gpu, tp = (get_gpu(cfg.encoder_gpu) if cfg.encoder_gpu else llm_cost.gpu), 1
    else:
        gpu, tp = llm_cost.gpu, llm_cost.tp
    cost = EncoderCost(spec, gpu, tp=tp, engine=llm_cost.engine, llm_hidden=llm_cost.model.hidden_size,
                       dtype=cfg.dtype)
    return cls(cfg, cost)


def inline_memory_bytes_per_gpu(stage: _Stage) -> float:
    """GPU memory an inline encoder takes from each LLM GPU (its weights, and its cache of projected tokens at
    the LLM's hidden size, replicated on every TP rank); 0 for an async pool, whose GPUs are its own."""
    if stage.mode != "inline":
        return 0.0
    cfg, cost = stage.cfg, stage.cost
    cap_tokens = cfg.cache_images * stage.tokens_per_image
    if cfg.cache_tokens is not None:
        cap_tokens = min(cap_tokens, cfg.cache_tokens) if cfg.cache_images else 0
    return cost.weight_bytes_per_gpu() + cap_tokens * cost.llm_hidden * 2.0


def multimodal_summary(stage: _Stage, sim_time: float | None = None) -> dict:
    """The ``multimodal`` section of summary.json: encoder seconds per request with images (mean, p50, p90,
    p99, max), cache hit rate, images encoded, encoder calls and busy seconds (async: utilisation)."""
    return stage.summary(sim_time)


__all__ = ["AsyncEncoder", "EncoderCache", "EncoderCost", "EncoderSpec", "EncoderStats", "InlineEncoder",
           "MultimodalConfig", "get_encoder", "inline_memory_bytes_per_gpu", "list_encoders", "make_encoder_stage",
           "multimodal_summary"]
