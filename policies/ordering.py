"""Queue orderings: the order in which a replica takes its waiting requests (registry kind ``"ordering"``).

A stateless order is a plain key function ``key(request) -> tuple`` (like ciw's ``FIFO``); an order
that remembers something (a predictor's draws, the service each tenant has had) is a class built as
``Cls(options, rng)`` with ``sort(waiting) -> list`` and ``admitted(request)``. `make_ordering` turns
either into one `Ordering` interface, so the engine never asks which kind it holds::

    order = make_ordering("sjf", {"by": "output", "noise_sigma": 0.5}, rng)
    queue = order.sort(list(replica.waiting))    # a new list, most urgent first; ties stable
    ...
    order.admitted(request)                       # charge whoever gets served

``is_fcfs`` is True only for ``fcfs``, whose order is the queue's own, so the engine can skip sorting.

`instantiate` (used by the admission and routing modules too) validates a plugin's options once, at
the boundary: an unknown or malformed key is a one-line `ConfigError` naming it.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from sim.errors import ConfigError
from sim.registry import get, register, validate_options
from sim.request import Request


# ------------------------------------------------------------------ plugin construction (shared)
def instantiate(kind: str, name: str, options: dict[str, Any] | None, rng: np.random.Generator,
                where: str | None = None) -> Any:
    """Plugin `name` of `kind`: a class with an ``Options`` model is built as ``Cls(Options(**options), rng)``;
    anything else (a plain function) is returned as it is and must be given no options. Options are checked by
    `sim.registry.validate_options` (one-line errors naming `where`, the config key)."""
    opts = validate_options(kind, name, options, where)
    plugin = get(kind, name)
    return plugin if opts is None else plugin(opts, rng)


# ------------------------------------------------------------------ the interface the engine uses
class Ordering(Protocol):
    """What the engine holds: a stable sort of the waiting queue and an admission hook."""

    is_fcfs: bool

    def sort(self, waiting: Iterable[Request]) -> list[Request]:
        """A new list of the waiting requests, the first to be served first (stable)."""

    def admitted(self, req: Request) -> None:
        """Called when the replica admits `req` (orders that charge service use it)."""


class KeyOrdering:
    """A stateless order given by a key function (ties keep the queue's order: Python's sort is stable)."""

    __slots__ = ("key", "is_fcfs")

    def __init__(self, key: Callable[[Request], Any], is_fcfs: bool = False) -> None:
        self.key = key
        self.is_fcfs = is_fcfs

    def sort(self, waiting: Iterable[Request]) -> list[Request]:
        """A new list of `waiting`, sorted by the key."""
        return sorted(waiting, key=self.key)

    def admitted(self, req: Request) -> None:
        """Nothing to remember."""


def make_ordering(name: str, options: dict[str, Any] | None, rng: np.random.Generator) -> Ordering:
    """The ordering `name` with `options`, behind the `Ordering` interface (key functions are wrapped)."""
    plugin = instantiate("ordering", name, options, rng)
    if hasattr(plugin, "sort"):
        return plugin
    return KeyOrdering(plugin, is_fcfs=plugin is fcfs)


# ------------------------------------------------------------------ stateless orders
@register("ordering", "fcfs")
def fcfs(req: Request) -> tuple:
    """First come, first served: by arrival time (vLLM's default policy)."""
    return (req.arrival, req.id)


@register("ordering", "priority")
def priority(req: Request) -> tuple:
    """Most urgent first: lower `priority` value first, then by arrival (vLLM's ``--scheduling-policy priority``)."""
    return (req.priority, req.arrival, req.id)


@register("ordering", "edf")
def edf(req: Request) -> tuple:
    """Earliest deadline first: deadline = arrival + slo_ttft_s; requests without an SLO last, by arrival.

    The classic real-time order (Liu & Layland 1973), here on the first-token deadline only.
    """
    if req.slo_ttft_s is None:
        return (1, req.arrival, req.arrival, req.id)
    return (0, req.arrival + req.slo_ttft_s, req.arrival, req.id)


# ------------------------------------------------------------------ shortest job first
_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _normal(seed: int, rid: int) -> float:
    """A standard normal draw that is a pure function of (seed, request id): Box-Muller on two hashed uniforms."""
    a = _splitmix64(seed ^ (rid & _MASK64))
    b = _splitmix64(a)
    u1 = ((a >> 11) + 1) / 9007199254740993.0     # (0, 1]: log() is finite
    u2 = (b >> 11) / 9007199254740992.0
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)


@register("ordering", "sjf")
class SJF:
    """Shortest job first: by prompt, (predicted) output or total length; shorter first, ties by arrival.

    By output it models a length predictor as in S3 (Jin et al. 2023) or the learning-to-rank scheduler of
    Fu et al. (2024): the prediction is the true output length times a lognormal error ``exp(N(0, sigma))``.
    The error of a request is a pure function of the run's seed and the request id, so it is the same at
    every sort (the order is stable), even after a preemption, without a table that grows with the run;
    a small cache holds the predictions of requests still waiting and is emptied as they are admitted.
    ``total`` is prompt + predicted output. Lengths are as sent (a preempted request keeps its key).
    Starvation of long jobs is the price, as for any SJF.
    """

    is_fcfs = False

    class Options(BaseModel):
        """The options this plugin takes in YAML (validated at the config boundary)."""
        model_config = ConfigDict(extra="forbid")

        by: Literal["prompt", "output", "total"] = Field(
            "prompt", description="Job size: prompt tokens, predicted output tokens, or both summed.")
        noise_sigma: float = Field(
            0.0, ge=0.0, description="Sigma of the output predictor's lognormal error (0: an oracle).")

    def __init__(self, options: SJF.Options, rng: np.random.Generator) -> None:
        self.by = options.by
        self.sigma = options.noise_sigma
        self._seed = int(rng.integers(0, 2**63))
        self._predicted: dict[int, float] = {}

    def predicted_output(self, req: Request) -> float:
        """The predictor's output length for `req` (the true one when noise_sigma is 0)."""
        if self.sigma == 0.0:
            return float(req.output_len)
        p = self._predicted.get(req.id)
        if p is None:
            p = self._predicted[req.id] = req.output_len * math.exp(self.sigma * _normal(self._seed, req.id))
        return p

    def key(self, req: Request) -> tuple:
        """Job size, then arrival, then id."""
        if self.by == "prompt":
            size = float(req.prompt_len)
        elif self.by == "output":
            size = self.predicted_output(req)
        else:
            size = req.prompt_len + self.predicted_output(req)
        return (size, req.arrival, req.id)

    def sort(self, waiting: Iterable[Request]) -> list[Request]:
        """A new list of `waiting`, shortest first."""
        return sorted(waiting, key=self.key)

    def admitted(self, req: Request) -> None:
        """Drop the cached prediction (it is recomputed, identically, if the request is preempted)."""
        self._predicted.pop(req.id, None)


# ------------------------------------------------------------------ fair share between tenants
@register("ordering", "fair")
class Fair:
    """Fair share between tenants: start-time fair queueing on tokens served, weighted per tenant.

    Start-time fair queueing (Goyal, Vin & Cheng 1996), the idea behind VTC's fair LLM serving (Sheng
    et al. 2024). Each tenant has a virtual clock: the tokens it has been served divided by its weight,
    where a request costs ``prompt_len + output_len`` (its true output length: the simulator knows it;
    a real server would charge as tokens are produced). The system virtual time V is the start tag of
    the last request admitted. Sorting tags each tenant's waiting requests, in their queue order, with
    start tags ``S1 = max(clock, V)``, ``S(k+1) = S(k) + cost(k) / weight`` and orders all requests by
    start tag (ties: queue position). So backlogged tenants interleave in proportion to their weights, and
    a tenant back from idle starts at V: it gets its share from now on, no credit for the time it was away.
    `admitted` charges the tenant. A preempted request is charged only at its first admission.
    Untagged requests form one tenant (``None``); a tenant missing from ``weights`` has weight 1.
    """

    is_fcfs = False

    class Options(BaseModel):
        """The options this plugin takes in YAML (validated at the config boundary)."""
        model_config = ConfigDict(extra="forbid")

        weights: dict[str, float] = Field(
            default_factory=dict, description="Share weight per tenant name (default 1): twice the weight, twice "
                                              "the tokens while both are backlogged.")

    def __init__(self, options: Fair.Options, rng: np.random.Generator) -> None:
        for tenant, w in options.weights.items():
            if not w > 0:
                raise ConfigError(f"ordering 'fair': weights.{tenant} must be > 0; got {w!r}")
        self.weights = dict(options.weights)
        self.clock: dict[str | None, float] = {}     # per tenant: weighted tokens served (virtual finish tag)
        self.vtime = 0.0                              # start tag of the last request admitted

    def _weight(self, tenant: str | None) -> float:
        return self.weights.get(tenant, 1.0) if tenant is not None else 1.0

    @staticmethod
    def cost(req: Request) -> int:
        """Tokens a request is charged: prompt + output."""
        return req.prompt_len + req.output_len

    def sort(self, waiting: Iterable[Request]) -> list[Request]:
        """A new list of `waiting` in start-tag order (see the class docstring)."""
        tags: dict[str | None, float] = {}
        keyed = []
        for pos, req in enumerate(waiting):
            t = req.tenant
            s = tags.get(t)
            if s is None:
                s = max(self.clock.get(t, 0.0), self.vtime)
            charge = 0 if req.preemptions else self.cost(req)
            tags[t] = s + charge / self._weight(t)
            keyed.append((s, pos, req))
        keyed.sort(key=_tag_pos)
        return [k[2] for k in keyed]

    def admitted(self, req: Request) -> None:
        """Charge the request's tenant (once per request) and advance the system virtual time."""
        if req.preemptions:
            return
        t = req.tenant
        s = max(self.clock.get(t, 0.0), self.vtime)
        self.clock[t] = s + self.cost(req) / self._weight(t)
        if s > self.vtime:
            self.vtime = s


def _tag_pos(k: tuple) -> tuple:
    return (k[0], k[1])


__all__ = ["Ordering", "KeyOrdering", "make_ordering", "instantiate", "fcfs", "priority", "edf", "SJF", "Fair"]
