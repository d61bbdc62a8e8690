"""Configs of the distributions a workload draws from: token lengths and waiting times.

Token lengths (``dist:`` picks one; a bare int is a fixed length)::

    input_len: 512
    input_len: {dist: uniform, low: 100, high: 900}
    input_len: {dist: normal, mean: 500, std: 100, min: 1, max: 2048}
    input_len: {dist: lognormal, mean: 550, sigma: 0.6}
    input_len: {dist: zipf, a: 1.2, n: 4096}
    input_len: {dist: empirical, path: sharegpt.csv, filter: {max_total_tokens: 2048}}

An ``empirical`` length resamples a trace file's column. When ``input_len`` and ``output_len`` are
both empirical over the same file (same path, format, columns and filter), the workload draws whole
rows, so input and output lengths keep their joint distribution.

Waiting times (think time, tool latency; ``dist:`` picks one, a bare number is a fixed time)::

    think_time_s: 2.5
    think_time_s: {dist: exponential, mean: 5}
    think_time_s: {dist: gamma, mean: 5, cv: 2}

Only validation happens here; sampling is in `workloads.lengths`.
"""
from __future__ import annotations

import math
from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PositiveInt, model_validator


def _finite(bound: str):
    def check(v: float) -> float:
        if not math.isfinite(v):
            raise ValueError(f"must be a finite number {bound} (got {v})")
        return v
    return check


# YAML's .inf passes pydantic's gt / ge checks and would turn into NaN arrival times: refuse it.
PositiveFloat = Annotated[float, Field(gt=0), AfterValidator(_finite("> 0"))]
NonNegativeFloat = Annotated[float, Field(ge=0), AfterValidator(_finite(">= 0"))]


class StrictModel(BaseModel):
    """Base of every workload config model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class _Clipped(StrictModel):
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


class NormalLength(_Clipped):
    """Normal lengths, rounded to whole tokens and raised to at least 1 (or ``min``)."""

    dist: Literal["normal"] = Field(description="Distribution name.")
    mean: PositiveFloat = Field(description="Mean in tokens (before rounding and clipping).")
    std: NonNegativeFloat = Field(description="Standard deviation in tokens.")


class LognormalLength(_Clipped):
    """Log-normal lengths with a given mean, rounded to whole tokens (at least 1)."""

    dist: Literal["lognormal"] = Field(description="Distribution name.")
    mean: PositiveFloat = Field(description="Mean of the distribution in tokens (before rounding and clipping).")
    sigma: PositiveFloat = Field(
        description="Standard deviation of the underlying normal (log-space spread; 0.5 is moderate).")


class ZipfLength(_Clipped):
    """Zipf lengths: P(k) proportional to k**-a on 1..n (scipy.stats.zipfian), or on 1, 2, ... (scipy.stats.zipf)."""

    dist: Literal["zipf"] = Field(description="Distribution name.")
    a: PositiveFloat = Field(description="Exponent; must exceed 1 when n is not given.")
    n: PositiveInt | None = Field(None, description="Largest length (tokens); None: unbounded (needs a > 1).")
    scale: PositiveInt = Field(1, description="Multiply every draw by this many tokens (k tokens -> k * scale).")

    @model_validator(mode="after")
    def _proper(self) -> Any:
        if self.n is None and self.a <= 1:
            raise ValueError(f"an unbounded Zipf needs a > 1 (got a={self.a}); give n (the largest length) "
                             f"or a larger exponent")
        return self


class LengthFilter(StrictModel):
    """Keep only rows whose lengths lie in these bounds (all optional, in tokens, inclusive)."""

    min_input_tokens: PositiveInt | None = Field(None, description="Drop rows with fewer prompt tokens.")
    max_input_tokens: PositiveInt | None = Field(None, description="Drop rows with more prompt tokens.")
    min_output_tokens: PositiveInt | None = Field(None, description="Drop rows with fewer output tokens.")
    max_output_tokens: PositiveInt | None = Field(None, description="Drop rows with more output tokens.")
    max_total_tokens: PositiveInt | None = Field(
        None, description="Drop rows whose prompt + output exceed this (the vLLM paper's ShareGPT filter is 2048).")


class EmpiricalLength(_Clipped):
    """Lengths resampled (with replacement, uniformly over rows) from a column of a trace file."""

    dist: Literal["empirical"] = Field(description="Distribution name.")
    path: str = Field(description="Trace file to resample (any trace format; see `servesim workload describe`).")
    format: str = Field("auto", description="Trace format (registry kind 'trace_format'); auto: sniffed from the file.")
    columns: dict[str, str] | None = Field(
        None, description="For the csv format: servesim column name -> the file's column name, "
                          "e.g. {input_tokens: num_prefill_tokens, output_tokens: num_decode_tokens}.")
    column: Literal["input", "output"] | None = Field(
        None, description="Which length to resample; default: input for input_len, output for output_len.")
    filter: LengthFilter | None = Field(None, description="Keep only rows in these length bounds before resampling.")

    def source_key(self) -> tuple:
        """Rows of the same source are drawn jointly for input and output."""
        f = self.filter.model_dump_json() if self.filter is not None else None
        return (self.path, self.format, tuple(sorted((self.columns or {}).items())), f)


def _bare_int_is_fixed(v: Any) -> Any:
    if isinstance(v, int) and not isinstance(v, bool):
        return {"dist": "fixed", "value": v}
    return v


LengthDist = Annotated[
    Union[FixedLength, UniformLength, NormalLength, LognormalLength, ZipfLength, EmpiricalLength],
    Field(discriminator="dist"),
    BeforeValidator(_bare_int_is_fixed, json_schema_input_type=Union[
        int, FixedLength, UniformLength, NormalLength, LognormalLength, ZipfLength, EmpiricalLength]),
]
"""A token-length distribution; a bare int means a fixed length."""


# ----------------------------------------------------------------------------- waiting times


class FixedTime(StrictModel):
    """Always the same time."""

    dist: Literal["fixed"] = Field("fixed", description="Distribution name.")
    value: NonNegativeFloat = Field(description="The time in seconds.")


class ExponentialTime(StrictModel):
    """Exponential times (memoryless)."""

    dist: Literal["exponential"] = Field(description="Distribution name.")
    mean: PositiveFloat = Field(description="Mean in seconds.")


class UniformTime(StrictModel):
    """Times uniform on [low, high]."""

    dist: Literal["uniform"] = Field(description="Distribution name.")
    low: NonNegativeFloat = Field(description="Shortest time in seconds.")
    high: NonNegativeFloat = Field(description="Longest time in seconds.")

    @model_validator(mode="after")
    def _low_le_high(self) -> Any:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        return self


class LognormalTime(StrictModel):
    """Log-normal times with a given mean."""

    dist: Literal["lognormal"] = Field(description="Distribution name.")
    mean: PositiveFloat = Field(description="Mean in seconds.")
    sigma: PositiveFloat = Field(description="Standard deviation of the underlying normal.")


class GammaTime(StrictModel):
    """Gamma times with a given mean and coefficient of variation (cv 1 = exponential)."""

    dist: Literal["gamma"] = Field(description="Distribution name.")
    mean: PositiveFloat = Field(description="Mean in seconds.")
    cv: PositiveFloat = Field(description="Standard deviation / mean.")


def _bare_number_is_fixed(v: Any) -> Any:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return {"dist": "fixed", "value": v}
    return v


TimeDist = Annotated[
    Union[FixedTime, ExponentialTime, UniformTime, LognormalTime, GammaTime],
    Field(discriminator="dist"),
    BeforeValidator(_bare_number_is_fixed, json_schema_input_type=Union[
        float, FixedTime, ExponentialTime, UniformTime, LognormalTime, GammaTime]),
]
"""A distribution of waiting times in seconds; a bare number means a fixed time."""
