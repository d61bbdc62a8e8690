"""KV-cache token eviction: keep only part of a sequence's KV (registry kind ``"kv_eviction"``).

StreamingLLM (Xiao et al., ICLR'24) keeps a few "attention sink" tokens plus a window of the most recent
ones; H2O (Zhang et al., NeurIPS'23) keeps the "heavy hitters" (tokens with the largest accumulated
attention) plus recent ones, within a budget set as a fraction of the sequence. Both trade accuracy
(out of scope here) for memory: a sequence never holds more than its budget of KV, so more sequences fit
and long ones stop growing; decode attention reads only the retained tokens.

A policy gives each request its KV budget in tokens (`cap(req)`). The replica allocates blocks for at
most that many tokens (`Replica.allocate` / `grow_kv`); once the blocks hold the budget, new tokens
overwrite evicted slots and no block is added (`sim.engine.KV_UNBOUNDED`). What it costs: H2O keeps a
running attention score per retained token (priced by the cost model's ``kv_eviction`` term), and
prefix caching is off under eviction (an evicted prompt no longer matches its hashes).
"""
from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from sim.errors import ConfigError
from sim.registry import get, register, validate_options


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamingOptions(_Options):
    """StreamingLLM's options (YAML keys of `kv_eviction`)."""

    sink_tokens: int = Field(4, ge=0, description="Initial 'attention sink' tokens always kept (the paper uses 4).")
    window_tokens: PositiveInt = Field(2044, description="Most recent tokens kept besides the sinks.")


@register("kv_eviction", "streaming_llm")
class StreamingLLM:
    """StreamingLLM: sinks + a recent window; every sequence's KV is capped at sink_tokens + window_tokens."""

    Options = StreamingOptions

    def __init__(self, options: StreamingOptions) -> None:
        self.options = options
        self.budget = options.sink_tokens + options.window_tokens

    def cap(self, req) -> int:
        """The request's KV budget in tokens."""
        return self.cap_for(req.prompt_len)

    def cap_for(self, prompt_len: int) -> int:
        """The KV budget of a sequence whose prompt is `prompt_len` tokens: sinks + window, whatever its length."""
        return self.budget

    def cost_terms(self) -> tuple[str, float, int]:
        """(kind, retained fraction, budget tokens) for the cost model's decode-attention pricing."""
        return ("streaming_llm", 1.0, self.budget)


class H2OOptions(_Options):
    """H2O's options (YAML keys of `kv_eviction`)."""

    retained_fraction: float = Field(0.2, gt=0.0, le=1.0, description="Share of the prompt's tokens kept as "
                                                                      "heavy hitters + recent tokens (H2O: 20%).")
    min_tokens: PositiveInt = Field(64, description="Floor on the budget for short prompts.")


@register("kv_eviction", "h2o")
class H2O:
    """H2O: a budget of retained_fraction x prompt length (at least min_tokens); generation evicts the lowest
    accumulated-attention token to stay within it."""

    Options = H2OOptions

    def __init__(self, options: H2OOptions) -> None:
        self.options = options

    def cap(self, req) -> int:
        """The request's KV budget in tokens."""
        return self.cap_for(req.prompt_len)

    def cap_for(self, prompt_len: int) -> int:
        """The KV budget of a sequence whose prompt is `prompt_len` tokens: a fraction of it, at least min_tokens."""
        o = self.options
        return max(o.min_tokens, math.ceil(o.retained_fraction * prompt_len))

    def cost_terms(self) -> tuple[str, float, int]:
        """(kind, retained fraction, budget floor) for the cost model's decode-attention pricing."""
        return ("h2o", self.options.retained_fraction, self.options.min_tokens)


def make_kv_eviction(spec: dict | None):
    """The eviction policy of config mapping `spec` (``{type: name, **options}``); None keeps every token."""
    if spec is None:
        return None
    options = dict(spec)
    name = options.pop("type", None)
    if name is None:
        raise ConfigError("kv_eviction: 'type' is required (e.g. {type: streaming_llm, window_tokens: 2044})")
    cls = get("kv_eviction", name)
    return cls(validate_options("kv_eviction", name, options, where="kv_eviction"))


def retained_tokens(policy, tokens: int) -> int:
    """KV tokens a sequence of `tokens` tokens (prompt as long as it) holds under `policy` (None: all)."""
    return tokens if policy is None else min(tokens, policy.cap_for(tokens))


__all__ = ["StreamingLLM", "H2O", "make_kv_eviction", "retained_tokens"]
