"""Admission control: accept or reject a request when it arrives at a replica (registry kind ``"admission"``).

An admission policy answers ``admit(request, replica, now) -> bool`` before the request is queued;
False rejects it (the engine counts rejections, the request is never served). Policies with options
are classes built as ``Cls(options, rng)``; the trivial ``none`` is a plain function. `make_admission`
builds one from a config mapping ``{type: name, **options}`` and gives both the same interface::

    admission = make_admission({"type": "token_bucket", "rate": 20, "burst": 40}, rng)
    if admission.admit(req, replica, now):
        replica.enqueue(req)

The replica view used: ``waiting`` (the queue), ``cost`` (`sim.cost.CostModel`) and ``engine``
(`EngineConfig`).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from sim.cost import BatchShape
from sim.errors import ConfigError
from sim.registry import register
from sim.request import Request

from .ordering import instantiate


class Admission(Protocol):
    """What the engine holds."""

    def admit(self, req: Request, replica: Any, now: float) -> bool:
        """True to queue the arriving request, False to refuse it (the engine counts refusals)."""


class FunctionAdmission:
    """A plain-function policy behind the `Admission` interface."""

    __slots__ = ("admit",)

    def __init__(self, fn: Callable[[Request, Any, float], bool]) -> None:
        self.admit = fn


def make_admission(spec: dict[str, Any] | None, rng: np.random.Generator) -> Admission:
    """The admission policy of config mapping `spec` (``{type: name, **options}``); None admits everything."""
    if spec is None:
        return FunctionAdmission(none)
    options = dict(spec)
    name = options.pop("type", None)
    if name is None:
        raise ConfigError("admission: 'type' is required (e.g. {type: bounded_queue, max_queue: 256})")
    plugin = instantiate("admission", name, options, rng, where="admission")
    return plugin if hasattr(plugin, "admit") else FunctionAdmission(plugin)


@register("admission", "none")
def none(req: Request, replica: Any, now: float) -> bool:
    """Admit every request (no admission control; vLLM's behaviour)."""
    return True


@register("admission", "bounded_queue")
class BoundedQueue:
    """Reject arrivals while the replica's waiting queue is full (a finite buffer, M/M/c/K style).

    Load shedding as an API server with a request-queue limit does it (e.g. TGI's
    ``--max-concurrent-requests``, which counts running ones too): here only waiting requests count.
    """

    class Options(BaseModel):
        """The options this plugin takes in YAML (validated at the config boundary)."""
        model_config = ConfigDict(extra="forbid")

        max_queue: int = Field(256, ge=0, description="Waiting requests a replica holds; arrivals beyond it "
                                                      "are rejected.")

    def __init__(self, options: BoundedQueue.Options, rng: np.random.Generator) -> None:
        self.max_queue = options.max_queue

    def admit(self, req: Request, replica: Any, now: float) -> bool:
        """True while fewer than max_queue requests wait."""
        return len(replica.waiting) < self.max_queue


@register("admission", "token_bucket")
class TokenBucket:
    """Rate limiting by a token bucket: a burst, then at most `rate` requests (or tokens) per second.

    The classic shaper of API gateways (e.g. per-key limits of hosted LLM APIs, in requests or tokens per
    minute). The bucket starts full with `burst`, refills continuously at `rate` up to `burst`, and a request
    is admitted when the bucket holds its cost (1, or prompt + output tokens), which is then taken out; a
    rejected request takes nothing. With unit ``tokens`` a request costing more than `burst` is never admitted.
    Over a long overloaded stream the admitted count is burst + rate x duration.
    """

    class Options(BaseModel):
        """The options this plugin takes in YAML (validated at the config boundary)."""
        model_config = ConfigDict(extra="forbid")

        rate: float = Field(10.0, gt=0, description="Refill rate, in units per second.")
        burst: float = Field(20.0, gt=0, description="Bucket capacity, in units: the largest burst admitted at once.")
        unit: Literal["requests", "tokens"] = Field(
            "requests", description="What a request costs: 1, or its prompt + output tokens.")

    def __init__(self, options: TokenBucket.Options, rng: np.random.Generator) -> None:
        self.rate = options.rate
        self.burst = options.burst
        self.by_tokens = options.unit == "tokens"
        self.level = options.burst
        self.last = 0.0

    def admit(self, req: Request, replica: Any, now: float) -> bool:
        """Refill up to `now`, then take the request's cost if the bucket holds it."""
        if now > self.last:
            self.level = min(self.burst, self.level + (now - self.last) * self.rate)
            self.last = now
        cost = req.prompt_len + req.output_len if self.by_tokens else 1.0
        if self.level >= cost:
            self.level -= cost
            return True
        return False


@register("admission", "slo_feasible")
class SLOFeasible:
    """Reject a request whose predicted time to first token already misses its TTFT SLO.

    Early rejection in the spirit of Mooncake's overload-oriented scheduling (Qin et al. 2024): serve fewer
    requests on time rather than all of them late. The request is rejected when
    ``predicted TTFT > slack x slo`` with slo its ``slo_ttft_s``, else ``default_slo_ttft_s``; with neither it is
    admitted. Predicted TTFT = (prompt tokens still to compute of the waiting requests ahead of it + its own
    prompt) x the replica's prefill time per token, taken from the cost model as one full step of
    ``max_num_batched_tokens`` prompt tokens divided by that many tokens (cached per cost model and budget).

    Limits of the estimate: it assumes FCFS (every waiting request goes first) and full prefill steps; it
    ignores the running requests' remaining prompt chunks and the decode tokens that share each step's budget
    (both make it optimistic), prefix-cache hits and the per-step floor of small steps (optimistic for a short
    queue, pessimistic with hits), and KV or max_num_seqs limits that keep requests waiting.
    """

    class Options(BaseModel):
        """The options this plugin takes in YAML (validated at the config boundary)."""
        model_config = ConfigDict(extra="forbid")

        slack: float = Field(1.0, gt=0, description="Admit while predicted TTFT <= slack x SLO (>1: more lenient).")
        default_slo_ttft_s: float | None = Field(
            None, gt=0, description="TTFT SLO for requests that carry none (None: admit them unchecked).")

    def __init__(self, options: SLOFeasible.Options, rng: np.random.Generator) -> None:
        self.slack = options.slack
        self.default_slo = options.default_slo_ttft_s
        self._rate: dict[tuple[Any, int], float] = {}      # (cost model, chunk) -> seconds per prefill token

    def prefill_s_per_token(self, replica: Any) -> float:
        """Seconds per prompt token at the replica's full prefill step (cached)."""
        chunk = replica.engine.max_num_batched_tokens
        key = (replica.cost, chunk)
        rate = self._rate.get(key)
        if rate is None:
            rate = self._rate[key] = replica.cost.step_time(BatchShape.prefill(1, chunk)) / chunk
        return rate

    def predicted_ttft(self, req: Request, replica: Any) -> float:
        """Seconds until `req`'s prompt is computed if it joined the replica's queue now (see the class docstring)."""
        ahead = 0
        for r in replica.waiting:
            ahead += r.num_tokens - r.num_computed
        return (ahead + req.num_tokens - req.num_computed) * self.prefill_s_per_token(replica)

    def admit(self, req: Request, replica: Any, now: float) -> bool:
        """False when the predicted TTFT exceeds slack x the request's SLO."""
        slo = req.slo_ttft_s if req.slo_ttft_s is not None else self.default_slo
        if slo is None:
            return True
        return self.predicted_ttft(req, replica) <= self.slack * slo


__all__ = ["Admission", "FunctionAdmission", "make_admission", "none", "BoundedQueue", "TokenBucket", "SLOFeasible"]
