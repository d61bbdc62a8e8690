"""Typed workload configs, validated once at the boundary.

A workload is one of three kinds, chosen by ``type``::

    workload:
      type: poisson
      stages: [{rate: 5, duration_s: 600}, {rate: 10, duration_s: 600}]
      input_len: {dist: lognormal, mean: 550, sigma: 0.6, max: 4000}
      output_len: 250            # a bare int is a fixed length

    workload: {type: shared_prefix, stages: [{rate: 4, duration_s: 300}],
               num_system_prompts: 9, users_per_system_prompt: 5,
               system_prompt_len: 100, question_len: 447, output_len: 248}

    workload: {type: trace, path: my_trace.csv, time_scale: 0.5}

Unknown keys are errors. Constructors validate and never read files (the trace is read by
`workloads.build.build_workload`).
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, NonNegativeInt, PositiveFloat,
                      PositiveInt, model_validator)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Stage(_Model):
    """A stretch of constant request rate."""

    rate: PositiveFloat = Field(description="Mean request rate in requests per second.")
    duration_s: PositiveFloat = Field(
        description="Length of the stage in seconds; the stage sends round(rate * duration_s) requests.")


class _Clipped(_Model):
    min: PositiveInt | None = Field(None, description="Lengths below this are raised to it (tokens).")
    max: PositiveInt | None = Field(None, description="Lengths above this are cut to it (tokens).")

    @model_validator(mode="after")
    def _min_le_max(self) -> Any:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) must not exceed max ({self.max})")
        return self


class FixedLength(_Clipped):
    """Every request has the same length."""

    dist: Literal["fixed"] = Field("fixed", description="Distribution name.")
    value: PositiveInt = Field(description="The length in tokens.")


class UniformLength(_Clipped):
    """Lengths drawn uniformly from the integers low..high (both included)."""

    dist: Literal["uniform"] = Field(description="Distribution name.")
    low: PositiveInt = Field(description="Smallest length in tokens (included).")
    high: PositiveInt = Field(description="Largest length in tokens (included).")

    @model_validator(mode="after")
    def _low_le_high(self) -> Any:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        return self


class LognormalLength(_Clipped):
    """Log-normal lengths with a given mean, rounded to whole tokens (at least 1)."""

    dist: Literal["lognormal"] = Field(description="Distribution name.")
    mean: PositiveFloat = Field(description="Mean of the distribution in tokens (before rounding and clipping).")
    sigma: PositiveFloat = Field(
        description="Standard deviation of the underlying normal (log-space spread; 0.5 is moderate).")


def _bare_int_is_fixed(v: Any) -> Any:
    if isinstance(v, int) and not isinstance(v, bool):
        return {"dist": "fixed", "value": v}
    return v


LengthDist = Annotated[
    Union[FixedLength, UniformLength, LognormalLength],
    Field(discriminator="dist"),
    BeforeValidator(_bare_int_is_fixed),
]
"""A token-length distribution; a bare int means a fixed length."""


class PoissonWorkload(_Model):
    """Poisson arrivals in constant-rate stages, lengths from distributions."""

    type: Literal["poisson"] = Field(description="Workload kind.")
    stages: list[Stage] = Field(min_length=1, description="Rate stages, run one after the other.")
    input_len: LengthDist = Field(description="Prompt length distribution (tokens).")
    output_len: LengthDist = Field(description="Output length distribution (tokens).")


class SharedPrefixWorkload(_Model):
    """Poisson arrivals drawing prompts from a pool of system prompt x user question pairs.

    The parameters of inference-perf's shared-prefix data: prompt i of the pool is system
    prompt ``i // users_per_system_prompt`` followed by its own question.
    """

    type: Literal["shared_prefix"] = Field(description="Workload kind.")
    stages: list[Stage] = Field(min_length=1, description="Rate stages, run one after the other.")
    num_system_prompts: PositiveInt = Field(description="Number of distinct system prompts (prefix groups).")
    users_per_system_prompt: PositiveInt = Field(
        description="Distinct user questions per system prompt; the pool holds the product of the two.")
    system_prompt_len: NonNegativeInt = Field(description="Tokens in each system prompt (the shared prefix).")
    question_len: PositiveInt = Field(description="Tokens in each user question (unique per pool entry).")
    output_len: PositiveInt = Field(description="Output tokens of every request.")


class TraceWorkload(_Model):
    """Replay a recorded trace (CSV or Parquet).

    Required columns ``arrival_time_s, input_tokens, output_tokens``; optional ``prompt_id``,
    ``prefix_group`` + ``prefix_len``, ``session_id``, ``stage_index``.
    """

    type: Literal["trace"] = Field(description="Workload kind.")
    path: str = Field(description="Path of the trace file (.csv, or .parquet / .pq).")
    time_scale: PositiveFloat = Field(
        1.0, description="Multiply every arrival time by this (0.5 replays the trace twice as fast).")
    max_requests: PositiveInt | None = Field(
        None, description="Replay only the first this many requests (after dropping empty rows).")


WorkloadConfig = Annotated[
    Union[PoissonWorkload, SharedPrefixWorkload, TraceWorkload],
    Field(discriminator="type"),
]
"""Any workload config, told apart by its ``type``."""
