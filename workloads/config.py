"""Typed workload configs, validated once at the boundary.

A workload is chosen by ``type``::

    workload:
      type: poisson
      stages: [{rate: 5, duration_s: 600}, {rate: 10, duration_s: 600}]
      input_len: {dist: lognormal, mean: 550, sigma: 0.6, max: 4000}
      output_len: 250            # a bare int is a fixed length

    workload: {type: shared_prefix, stages: [{rate: 4, duration_s: 300}],
               num_system_prompts: 9, users_per_system_prompt: 5,
               system_prompt_len: 100, question_len: 447, output_len: 248}

    workload: {type: synthetic, arrival: {process: gamma, rate: 5, cv: 3, duration_s: 600},
               input_len: {dist: zipf, a: 1.1, n: 8000}, output_len: {dist: normal, mean: 200, std: 50}}

    workload: {type: sessions, arrival: {process: poisson, rate: 0.5, duration_s: 600},
               turns: {dist: uniform, low: 2, high: 8}, system_prompt_len: 300,
               user_message_len: 80, output_len: 200, think_time_s: {dist: exponential, mean: 10}}

    workload: {type: agent, arrival: {process: poisson, rate: 0.2, duration_s: 600},
               steps: {dist: uniform, low: 3, high: 12}, system_prompt_len: 2000, task_len: 300,
               tool_result_len: {dist: lognormal, mean: 400, sigma: 1}, output_len: 80,
               tool_latency_s: {dist: exponential, mean: 2}}

    workload: {type: closed_loop, clients: 32, num_requests: 2000, input_len: 512, output_len: 128}

    workload: {type: trace, path: my_trace.csv, time_scale: 0.5}
    workload: {type: trace, path: AzureLLMInferenceTrace_conv.csv, format: azure_2023,
               window: {start_s: 600, end_s: 1200}, rate_scale: 2, filter: {max_total_tokens: 4096}}
    workload: {type: trace, path: sharegpt.json, format: sharegpt,
               arrival: {process: poisson, rate: 8, num_requests: 1000}}

Every kind also takes ``classes:``, request classes (tenant, priority, TTFT/TPOT SLOs) that tag
its requests. ``poisson``, ``shared_prefix``, ``synthetic`` and ``trace`` take ``images:`` (multimodal
requests, `workloads.multimodal`), e.g. ``images: {per_request: 1, tokens_per_image: 576, distinct_images: 500}``. Unknown keys are errors. Constructors validate and never read files (files are read
by `workloads.build.build_workload`).
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Field, NonNegativeInt, PositiveInt, model_validator

from .arrival_config import (ArrivalConfig, DiurnalArrival, GammaArrival, MMPPArrival, OnOffArrival,  # noqa: F401
                             PoissonArrival, ReplayArrival, Stage, StagesArrival)
from .dist_config import (EmpiricalLength, ExponentialTime, FixedLength, FixedTime, GammaTime,  # noqa: F401
                          LengthDist, LengthFilter, LognormalLength, LognormalTime, NormalLength, StrictModel,
                          NonNegativeFloat, PositiveFloat, TimeDist, UniformLength, UniformTime, ZipfLength)

_Model = StrictModel


class RequestClass(_Model):
    """A class of requests: who sends them, how urgent they are, what latency they were promised."""

    tenant: str = Field(description="Class (tenant) name; trace rows whose tenant equals it get this class.")
    priority: int = Field(0, description="Scheduling priority carried on the request (policies decide its meaning).")
    slo_ttft_s: PositiveFloat | None = Field(None, description="Time-to-first-token target in seconds (None: none).")
    slo_tpot_s: PositiveFloat | None = Field(None, description="Time-per-output-token target in seconds (None: none).")
    weight: PositiveFloat = Field(
        1.0, description="Share of requests drawn into this class when requests carry no tenant of their own.")


class _WithClasses(_Model):
    classes: list[RequestClass] = Field(
        default_factory=list,
        description="Request classes; requests are drawn into them by weight (or matched by a trace's tenant).")

    @model_validator(mode="after")
    def _unique_tenants(self) -> Any:
        names = [c.tenant for c in self.classes]
        if len(set(names)) != len(names):
            raise ValueError(f"class tenants must be unique (got {names})")
        return self


class ImagesConfig(_Model):
    """Images (or audio clips) attached to requests, their tokens added to the prompt (`workloads.multimodal`)."""

    per_request: PositiveInt = Field(1, description="Images per request that has images.")
    tokens_per_image: PositiveInt = Field(
        576, description="Prompt tokens each image adds (576: LLaVA-1.5's CLIP ViT-L/14 at 336 px).")
    distinct_images: PositiveInt | None = Field(
        None, description="Images are drawn from a pool of this many (repeats hit the encoder cache); "
                          "None: every image is new.")
    fraction: float = Field(1.0, gt=0, le=1, description="Share of requests that carry images.")
    popularity: Literal["uniform", "zipf"] = Field(
        "uniform", description="How images are drawn from the pool: uniformly, or Zipf (image k with weight k^-zipf_s).")
    zipf_s: PositiveFloat = Field(1.0, description="Zipf exponent of the pool's popularity (popularity: zipf).")


class _WithImages(_Model):
    images: ImagesConfig | None = Field(
        None, description="Attach images to requests (multimodal serving); their tokens are added to the prompt.")


class PoissonWorkload(_WithClasses, _WithImages):
    """Poisson arrivals in constant-rate stages, lengths from distributions."""

    type: Literal["poisson"] = Field(description="Workload kind.")
    stages: list[Stage] = Field(min_length=1, description="Rate stages, run one after the other.")
    input_len: LengthDist = Field(description="Prompt length distribution (tokens).")
    output_len: LengthDist = Field(description="Output length distribution (tokens).")


class SharedPrefixWorkload(_WithClasses, _WithImages):
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


class SyntheticWorkload(_WithClasses, _WithImages):
    """Any open-loop arrival process with lengths from distributions, optionally behind shared system prompts."""

    type: Literal["synthetic"] = Field(description="Workload kind.")
    arrival: ArrivalConfig = Field(description="When requests arrive (registry kind 'arrival').")
    input_len: LengthDist = Field(description="Prompt length after the system prompt (tokens).")
    output_len: LengthDist = Field(description="Output length distribution (tokens).")
    system_prompt_len: NonNegativeInt = Field(0, description="Tokens of a system prompt in front of every prompt.")
    num_system_prompts: PositiveInt = Field(1, description="Distinct system prompts; each request draws one uniformly.")


class _Conversation(_WithClasses):
    arrival: ArrivalConfig = Field(description="When conversations start (registry kind 'arrival').")
    system_prompt_len: NonNegativeInt = Field(0, description="Tokens of the system prompt that opens every conversation.")
    num_system_prompts: PositiveInt = Field(1, description="Distinct system prompts; each conversation draws one uniformly.")
    output_len: LengthDist = Field(description="Tokens the model generates per turn.")
    pacing: Literal["after_finish", "after_arrival"] = Field(
        "after_finish", description="after_finish: the next turn is sent when the previous one finishes plus the "
                                    "wait (closed loop, driven by the simulation); after_arrival: the wait counts "
                                    "from the previous turn's arrival (open loop, a fixed timeline).")


class SessionsWorkload(_Conversation):
    """Multi-turn chat: turn k's prompt is turn k-1's prompt + its answer + a new user message."""

    type: Literal["sessions"] = Field(description="Workload kind.")
    turns: LengthDist = Field(description="Turns (requests) per conversation.")
    first_message_len: LengthDist | None = Field(
        None, description="Tokens of the first user message; default: user_message_len.")
    user_message_len: LengthDist = Field(description="Tokens of each new user message.")
    think_time_s: TimeDist = Field(0.0, validate_default=True, description="User think time before each next turn (seconds).")


class AgentWorkload(_Conversation):
    """Agent loops: each step's prompt is the history + the tool call the model made + the tool's result."""

    type: Literal["agent"] = Field(description="Workload kind.")
    steps: LengthDist = Field(description="LLM calls per task.")
    task_len: LengthDist = Field(description="Tokens of the task (the first user message).")
    tool_result_len: LengthDist = Field(description="Tokens of each tool result appended before the next call.")
    tool_latency_s: TimeDist = Field(0.0, validate_default=True, description="Time the tool runs between a call finishing and the next call.")


class ClosedLoopWorkload(_WithClasses):
    """N clients, each sending its next request when its previous one finishes (plus a think time).

    As benchmark clients with a max-concurrency: never more than ``clients`` requests in flight.
    """

    type: Literal["closed_loop"] = Field(description="Workload kind.")
    clients: PositiveInt = Field(description="Concurrent clients (the most requests ever outstanding).")
    num_requests: PositiveInt | None = Field(None, description="Stop after this many requests in all.")
    duration_s: PositiveFloat | None = Field(None, description="Send no request after this time (seconds).")
    input_len: LengthDist = Field(description="Prompt length after the system prompt (tokens).")
    output_len: LengthDist = Field(description="Output length distribution (tokens).")
    think_time_s: TimeDist = Field(0.0, validate_default=True, description="Wait between a client's request finishing and its next one.")
    system_prompt_len: NonNegativeInt = Field(0, description="Tokens of one system prompt shared by every request.")
    start_spread_s: NonNegativeFloat = Field(
        0.0, description="Clients start at times spread evenly over [0, start_spread_s) (0: all at once).")

    @model_validator(mode="after")
    def _bounded(self) -> Any:
        if self.num_requests is None and self.duration_s is None:
            raise ValueError("give num_requests, duration_s or both, or the clients never stop")
        return self


class TimeWindow(_Model):
    """A slice of the trace's time axis; kept times are shifted so that start_s becomes 0."""

    start_s: NonNegativeFloat = Field(0.0, description="Keep requests arriving at or after this time (s).")
    end_s: PositiveFloat | None = Field(None, description="Keep requests arriving before this time (s); None: to the end.")

    @model_validator(mode="after")
    def _order(self) -> Any:
        if self.end_s is not None and self.end_s <= self.start_s:
            raise ValueError(f"end_s ({self.end_s}) must exceed start_s ({self.start_s})")
        return self


class TraceWorkload(_WithClasses, _WithImages):
    """Replay a recorded trace in one of the registered formats, with optional transformations.

    Transformations run in this order: length filter, time window, sampling, rate scaling, time
    scaling, max_requests. The csv format's columns are ``arrival_time_s, input_tokens,
    output_tokens`` plus optional ``prompt_id``, ``prefix_group`` + ``prefix_len``, ``session_id``,
    ``stage_index``, ``tenant``.
    """

    type: Literal["trace"] = Field(description="Workload kind.")
    path: str = Field(description="Path of the trace file.")
    format: str = Field("auto", description="csv, azure_2023, azure_2024, mooncake, burstgpt, sharegpt, ... "
                                            "(registry kind 'trace_format'); auto: sniffed from the file.")
    columns: dict[str, str] | None = Field(
        None, description="For the csv format: servesim column name -> the file's column name.")
    time_unit: Literal["s", "ms", "us"] = Field("s", description="For the csv format: unit of the time column.")
    sort: bool = Field(False, description="Sort rows by time instead of refusing an unsorted trace.")
    filter: LengthFilter | None = Field(None, description="Drop rows outside these length bounds.")
    window: TimeWindow | None = Field(None, description="Replay only this slice of the trace's time axis.")
    sample_fraction: float = Field(1.0, gt=0, le=1, description="Keep each row with this probability (seeded).")
    rate_scale: PositiveFloat = Field(
        1.0, description="Scale the request rate by this over the same time span: < 1 thins rows at random; "
                         "> 1 adds copies placed between each row and the next (copies get their own prompt identity).")
    time_scale: PositiveFloat = Field(
        1.0, description="Multiply every arrival time by this (0.5 replays the trace twice as fast).")
    max_requests: PositiveInt | None = Field(
        None, description="Replay only the first this many requests (after dropping empty rows).")
    arrival: ArrivalConfig | None = Field(
        None, description="Arrival process to use instead of the trace's times (needed by traces without times); "
                          "rows are used in order and cycled if there are fewer than arrivals.")
    shuffle: bool = Field(False, description="With arrival: take rows in a seeded random order instead of file order.")
    image_tokens: PositiveInt = Field(
        576, description="Tokens of each image of a trace with an image_ids column but no image_tokens column.")


WorkloadConfig = Annotated[
    Union[PoissonWorkload, SharedPrefixWorkload, SyntheticWorkload, SessionsWorkload, AgentWorkload,
          ClosedLoopWorkload, TraceWorkload],
    Field(discriminator="type"),
]
"""Any workload config, told apart by its ``type``."""
