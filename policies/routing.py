"""Routers: which of a pool's replicas serves each arriving request (registry kind ``"router"``).

A router answers ``choose(request, replicas) -> int``, an index into `replicas`. Routers that keep
state (a cursor, a session map, a random stream) are classes built as ``Cls(options, rng)``; stateless
ones are plain functions ``(request, replicas) -> int``. `make_router` gives both the same interface::

    router = make_router("prefix_affinity", {"load_guard": 4}, rng)
    replicas[router.choose(req, replicas)].enqueue(req)

What a router may read of a replica: ``index``, ``outstanding`` (waiting + running), ``waiting`` and
``running`` (sized), ``kv.usage`` (0 to 1) and ``prefix_hits(request)`` (cached prompt tokens; the
request's block hashes are set before routing). Ties go to the lowest position in `replicas` (in
``power_of_two`` to the first of its two random probes), so a run is reproducible from its seed.
A router that reads KV state says so with ``reads_kv = True`` (one of the user's is assumed to unless it
says ``reads_kv = False``; experiments.deployment.reads_kv), so the replicas stay exact under fast-forward.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from sim.registry import register
from sim.request import Request

from .ordering import instantiate


class Router(Protocol):
    """What the engine holds."""

    def choose(self, req: Request, replicas: Sequence[Any]) -> int:
        """Index into `replicas` of the replica that serves `req`."""


class FunctionRouter:
    """A plain-function router behind the `Router` interface."""

    __slots__ = ("choose",)

    def __init__(self, fn: Callable[[Request, Sequence[Any]], int]) -> None:
        self.choose = fn


def make_router(name: str, options: dict[str, Any] | None, rng: np.random.Generator) -> Router:
    """The router `name` with `options` (validated; an unknown key is a one-line ConfigError)."""
    plugin = instantiate("router", name, options, rng)
    return plugin if hasattr(plugin, "choose") else FunctionRouter(plugin)


class _NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _least_outstanding(replicas: Sequence[Any]) -> int:
    best, load = 0, replicas[0].outstanding
    for i in range(1, len(replicas)):
        o = replicas[i].outstanding
        if o < load:
            best, load = i, o
    return best


# ------------------------------------------------------------------ load-based
@register("router", "round_robin")
class RoundRobin:
    """Replicas in turn, whatever their load (the default of most load balancers, and of Vidur)."""

    Options = _NoOptions

    def __init__(self, options: _NoOptions, rng: np.random.Generator) -> None:
        self.next = 0

    def choose(self, req: Request, replicas: Sequence[Any]) -> int:
        """The replica after the last one chosen."""
        i = self.next % len(replicas)
        self.next = i + 1
        return i


@register("router", "random")
class Random:
    """A uniformly random replica from the run's seeded stream (a baseline: no state, no information)."""

    Options = _NoOptions

    def __init__(self, options: _NoOptions, rng: np.random.Generator) -> None:
        self.rng = rng

    def choose(self, req: Request, replicas: Sequence[Any]) -> int:
        """Any replica with equal probability."""
        return int(self.rng.integers(len(replicas)))


@register("router", "least_outstanding_requests")
def least_outstanding_requests(req: Request, replicas: Sequence[Any]) -> int:
    """The replica with the fewest waiting + running requests (join the shortest queue)."""
    return _least_outstanding(replicas)


@register("router", "least_kv_usage")
def least_kv_usage(req: Request, replicas: Sequence[Any]) -> int:
    """The replica whose KV cache is least used; ties by fewest outstanding, then position.

    KV usage is the load signal of KV-aware routers (llm-d's KV-utilization scorer, AIBrix's least-KV-cache):
    it sees long prompts and long-running decodes that a request count does not.
    """
    return min(range(len(replicas)), key=lambda i: (replicas[i].kv.usage, replicas[i].outstanding, i))


# reads KV state: the replicas must not fast-forward across KV block boundaries (sim.engine.Replica.kv_observed)
least_kv_usage.reads_kv = True


@register("router", "power_of_two")
class PowerOfTwo:
    """The less loaded of two distinct random replicas (Mitzenmacher's power of two choices).

    Almost as balanced as joining the shortest queue, with two probes instead of all; the pair is uniform
    over distinct pairs, load is outstanding requests, and a tie goes to the first probe (a random one: a
    fixed tie rule such as the lower position would send equal replicas unequal shares).
    """

    Options = _NoOptions

    def __init__(self, options: _NoOptions, rng: np.random.Generator) -> None:
        self.rng = rng

    def choose(self, req: Request, replicas: Sequence[Any]) -> int:
        """Probe two, keep the less loaded."""
        n = len(replicas)
        if n == 1:
            return 0
        i = int(self.rng.integers(n))
        j = int(self.rng.integers(n - 1))
        if j >= i:
            j += 1                                   # uniform over the other n - 1
        return j if replicas[j].outstanding < replicas[i].outstanding else i


# ------------------------------------------------------------------ cache- and session-aware
@register("router", "prefix_affinity")
class PrefixAffinity:
    """The replica holding the longest cached prefix of the prompt, unless it is overloaded.

    Prefix-cache-aware routing as in SGLang's router, llm-d and Preble: a hit skips that prefill. To keep
    one hot prefix from piling every request on one replica, the cached replica is taken only while its
    outstanding requests exceed the least loaded replica's by at most ``load_guard``; beyond that (or when
    no replica has a hit) the request goes to the least outstanding replica. Equal hits: fewer outstanding,
    then lower position. ``load_guard`` is a queue-length difference: 0 follows the cache only between
    equally loaded replicas, a large value follows it regardless of load.
    """

    reads_kv = True      # the prefix cache's content: see least_kv_usage.reads_kv

    class Options(BaseModel):
        """The options this plugin takes in YAML (validated at the config boundary)."""
        model_config = ConfigDict(extra="forbid")

        load_guard: int = Field(8, ge=0, description="Most extra outstanding requests the cached replica may have "
                                                     "over the least loaded one and still be chosen.")

    def __init__(self, options: PrefixAffinity.Options, rng: np.random.Generator) -> None:
        self.load_guard = options.load_guard

    def choose(self, req: Request, replicas: Sequence[Any]) -> int:
        """The cached replica if its load is within the guard, else the least outstanding."""
        least = _least_outstanding(replicas)
        best, best_key = -1, None
        for i, r in enumerate(replicas):
            hits = r.prefix_hits(req)
            if hits > 0:
                key = (-hits, r.outstanding)
                if best_key is None or key < best_key:
                    best, best_key = i, key
        if best < 0 or replicas[best].outstanding - replicas[least].outstanding > self.load_guard:
            return least
        return best


@register("router", "session_affinity")
class SessionAffinity:
    """Requests of one session stick to the replica its first request went to (sticky sessions).

    Keeps a multi-turn conversation's KV prefix on one replica, as cookie/header-based stickiness does in
    front of vLLM. First requests and requests without a session go to the least outstanding replica. A
    session not seen for more than ``ttl_s`` (by arrival time; arrivals come in time order) is forgotten and
    its next request placed afresh, so the map holds only sessions active in the last ``ttl_s``: expired
    entries are dropped, oldest first, at every call.
    """

    class Options(BaseModel):
        """The options this plugin takes in YAML (validated at the config boundary)."""
        model_config = ConfigDict(extra="forbid")

        ttl_s: float = Field(600.0, gt=0, description="Seconds of inactivity after which a session is forgotten.")

    def __init__(self, options: SessionAffinity.Options, rng: np.random.Generator) -> None:
        self.ttl = options.ttl_s
        self.sessions: OrderedDict[Any, tuple[int, float]] = OrderedDict()   # least recently seen first

    def choose(self, req: Request, replicas: Sequence[Any]) -> int:
        """The session's replica while it is remembered, else the least outstanding."""
        now = req.arrival
        sessions = self.sessions
        horizon = now - self.ttl
        while sessions:
            oldest = next(iter(sessions.values()))
            if oldest[1] >= horizon:
                break
            sessions.popitem(last=False)
        sid = req.session_id
        if sid is None:
            return _least_outstanding(replicas)
        entry = sessions.get(sid)
        i = None
        if entry is not None:
            # the session's replica by identity (`index`): autoscaling adds and drains replicas, which shifts positions
            i = _position(replicas, entry[0])
            sessions.move_to_end(sid)
        if i is None:
            i = _least_outstanding(replicas)
        sessions[sid] = (replicas[i].index, now)
        return i


def _position(replicas: Sequence[Any], index: int) -> int | None:
    """Where the replica with this `index` sits in `replicas` (None when it is not routable now)."""
    if index < len(replicas) and replicas[index].index == index:
        return index                                  # a fixed pool: position and index agree
    for j, rep in enumerate(replicas):
        if rep.index == index:
            return j
    return None


__all__ = ["Router", "FunctionRouter", "make_router", "RoundRobin", "Random", "least_outstanding_requests",
           "least_kv_usage", "PowerOfTwo", "PrefixAffinity", "SessionAffinity"]
