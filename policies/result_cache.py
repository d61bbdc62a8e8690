"""Result caches in front of the engine (registry kind ``"result_cache"``): answer a request without the model.

A result cache is a front-end stage of the deployment (`experiments.deployment.Stage`): every request
first pays the cache's lookup latency; a hit is answered from the cache right then (time to first token
= end-to-end latency = the lookup, the whole answer at once) and never reaches a replica; a miss goes
on to the router after the lookup. A trace's ``cache_hit`` flag, when a request carries one, overrides
the cache's own hit model (True: hit, False: miss).

Built in:

* ``exact``: a hit when the same prompt (the request's ``segments``, its prompt identity) was answered
  before and is still among the ``capacity`` most recently used answers (LRU). An answer enters the
  cache when its request finishes on the engine, so identical requests in flight together all miss.
  Requests without a prompt identity (``segments`` None: a unique prompt) never hit. With ``hit_rate``
  set, each lookup hits with that probability instead (the LRU is not used).
* ``semantic``: an embedding of the prompt is searched for a cached prompt above a similarity threshold;
  the threshold's effect is given as ``hit_rate``, the probability a lookup hits, and ``false_hit_rate``,
  the fraction of hits whose cached answer is wrong for the new prompt (served all the same, counted).

Configured as ``result_cache: {type: exact, capacity: 100000}`` or ``{type: semantic, hit_rate: 0.3,
lookup_s: 0.02}``. The lookup is a pure delay: the cache is assumed never to queue.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from sim.errors import ConfigError
from sim.registry import register
from sim.request import FINISHED, Request

from .ordering import instantiate

#: Exact-match lookup, seconds: hashing the prompt and one GET on an in-memory key-value store in the same
#: datacenter. Redis documents sub-millisecond round trips on a LAN (redis.io, "Diagnosing latency issues");
#: 1 ms is the top of that range.
EXACT_LOOKUP_S = 0.001

#: Semantic lookup, seconds: embedding the prompt with a small sentence encoder plus an approximate
#: nearest-neighbour (HNSW) search of the cached embeddings, as GPTCache and Redis vector search do
#: (Regmi & Pun 2024, "GPT Semantic Cache", arXiv:2411.05276: Redis + HNSW). Tens of milliseconds;
#: 20 ms assumed, set ``lookup_s`` from your own measurement.
SEMANTIC_LOOKUP_S = 0.02


class ResultCache:
    """Base of the built-in caches: the lookup delay, the trace-flag override and the counters.

    A subclass decides a hit in ``hit(req)`` and may learn answers in ``finished(req)``."""

    name = "result_cache"
    kind = ""

    def __init__(self, lookup_s: float, rng: np.random.Generator) -> None:
        self.lookup_s = lookup_s
        self.rng = rng
        self.lookups = 0
        self.hits = 0
        self.flagged = 0            # lookups decided by the trace's cache_hit flag
        self.hit_ids: list[int] = []

    def enter(self, env, req: Request):
        """The stage: pay the lookup, then answer a hit here (False) or forward a miss (True)."""
        self.lookups += 1
        if self.lookup_s > 0:
            yield env.timeout(self.lookup_s)
        if req.cache_hit is not None:
            self.flagged += 1
            hit = bool(req.cache_hit)
        else:
            hit = self.hit(req)
        if hit:
            self.hits += 1
            self.hit_ids.append(req.id)
            return False
        return True

    def hit(self, req: Request) -> bool:  # pragma: no cover - interface
        """Whether `req` finds its answer in the cache (after the lookup latency)."""
        raise NotImplementedError

    def summary(self) -> dict:
        """The summary section: lookups, hits, hit rate and what the engine was spared."""
        return {"type": self.kind, "lookup_s": self.lookup_s, "lookups": self.lookups, "hits": self.hits,
                "hit_rate": self.hits / self.lookups if self.lookups else 0.0,
                "trace_flagged": self.flagged, "forwarded": self.lookups - self.hits}


@register("result_cache", "exact")
class ExactCache(ResultCache):
    """Exact-match response cache: a repeated prompt still in the LRU is answered without the model."""

    kind = "exact"

    class Options(BaseModel):
        """The options this plugin takes in YAML (validated at the config boundary)."""
        model_config = ConfigDict(extra="forbid")

        lookup_s: float = Field(EXACT_LOOKUP_S, ge=0, description="Seconds every lookup takes (hit or miss).")
        capacity: int = Field(100_000, ge=1, description="Answers the cache holds; the least recently used is "
                                                         "dropped beyond it.")
        hit_rate: float | None = Field(
            None, ge=0, le=1, description="Hit with this probability instead of by prompt identity (a measured "
                                          "hit rate; the LRU is then unused).")

    def __init__(self, options: ExactCache.Options, rng: np.random.Generator) -> None:
        super().__init__(options.lookup_s, rng)
        self.capacity = options.capacity
        self.hit_rate = options.hit_rate
        self.lru: OrderedDict[Any, None] = OrderedDict()
        self.evictions = 0

    def hit(self, req: Request) -> bool:
        """By probability when hit_rate is set; else whether the prompt's answer is cached (refreshed if so)."""
        if self.hit_rate is not None:
            return bool(self.rng.random() < self.hit_rate)
        key = req.segments
        if key is None or key not in self.lru:
            return False
        self.lru.move_to_end(key)
        return True

    def finished(self, req: Request) -> None:
        """A request the engine answered: its answer enters the cache (most recently used)."""
        if self.hit_rate is not None or req.state != FINISHED or req.segments is None:
            return
        lru = self.lru
        lru[req.segments] = None
        lru.move_to_end(req.segments)
        if len(lru) > self.capacity:
            lru.popitem(last=False)
            self.evictions += 1

    def summary(self) -> dict:
        """Base counters plus capacity, entries held at the end and LRU evictions."""
        out = super().summary()
        out.update(capacity=self.capacity, entries=len(self.lru), evictions=self.evictions)
        return out


@register("result_cache", "semantic")
class SemanticCache(ResultCache):
    """Semantic response cache: a prompt similar enough to a cached one is answered with its answer."""

    kind = "semantic"

    class Options(BaseModel):
        """The options this plugin takes in YAML (validated at the config boundary)."""
        model_config = ConfigDict(extra="forbid")

        hit_rate: float = Field(ge=0, le=1, description="Probability a lookup finds a cached prompt above the "
                                                        "similarity threshold.")
        lookup_s: float = Field(SEMANTIC_LOOKUP_S, ge=0, description="Seconds every lookup takes: embedding the "
                                                                     "prompt and the vector search.")
        false_hit_rate: float = Field(0.0, ge=0, le=1, description="Fraction of hits whose cached answer is wrong "
                                                                   "for the new prompt (reported, not re-served).")

    def __init__(self, options: SemanticCache.Options, rng: np.random.Generator) -> None:
        super().__init__(options.lookup_s, rng)
        self.hit_rate = options.hit_rate
        self.false_hit_rate = options.false_hit_rate
        self.false_hits = 0

    def hit(self, req: Request) -> bool:
        """A hit with probability hit_rate; a hit is a false one with probability false_hit_rate."""
        rng = self.rng
        if rng.random() >= self.hit_rate:
            return False
        if self.false_hit_rate and rng.random() < self.false_hit_rate:
            self.false_hits += 1
        return True

    def summary(self) -> dict:
        """Base counters plus the false hits."""
        out = super().summary()
        out["false_hits"] = self.false_hits
        return out


def make_result_cache(spec: dict[str, Any], rng: np.random.Generator) -> ResultCache:
    """The cache of config mapping `spec` (``{type: name, **options}``), options checked (one-line errors)."""
    options = dict(spec)
    name = options.pop("type", None)
    if name is None:
        raise ConfigError("result_cache: 'type' is required (e.g. {type: exact} or {type: semantic, hit_rate: 0.3})")
    cache = instantiate("result_cache", name, options, rng, where="result_cache")
    if not hasattr(cache, "enter"):
        raise ConfigError(f"result_cache: plugin {name!r} is not a stage (it needs an enter(env, request) method)")
    return cache


def check_result_cache(spec: dict[str, Any]) -> None:
    """Validate a ``result_cache`` mapping without building it (the config boundary's check)."""
    from sim.registry import validate_options

    options = dict(spec)
    name = options.pop("type", None)
    if name is None:
        raise ConfigError("result_cache: 'type' is required (e.g. {type: exact} or {type: semantic, hit_rate: 0.3})")
    validate_options("result_cache", name, options, "result_cache")


__all__ = ["ResultCache", "ExactCache", "SemanticCache", "make_result_cache", "check_result_cache",
           "EXACT_LOOKUP_S", "SEMANTIC_LOOKUP_S"]
