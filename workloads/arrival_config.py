"""Configs of open-loop arrival processes (``process:`` picks one).

Each stops after ``duration_s`` seconds or after ``num_requests`` arrivals (give exactly one),
except ``stages`` (a count per stage) and ``replay`` (the trace's own times)::

    arrival: {process: poisson, rate: 5, duration_s: 600}
    arrival: {process: gamma, rate: 5, cv: 3, num_requests: 2000}          # bursty: cv > 1
    arrival: {process: mmpp, rates: [2, 20], mean_dwell_s: [60, 10], duration_s: 1800}
    arrival: {process: on_off, rate: 20, mean_on_s: 5, mean_off_s: 25, duration_s: 600}
    arrival: {process: diurnal, mean_rate: 4, amplitude: 0.8, period_s: 86400, duration_s: 86400}
    arrival: {process: diurnal, points: [[0, 1], [3600, 8], [7200, 1]], duration_s: 7200}
    arrival: {process: stages, stages: [{rate: 5, duration_s: 300}, {rate: 10, duration_s: 300}]}
    arrival: {process: replay, path: AzureLLMInferenceTrace_conv.csv, time_scale: 0.5}

Closed-loop clients are a workload kind of their own (``type: closed_loop``): their arrivals depend
on when earlier requests finish. Sampling is in `workloads.arrivals`.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Field, PositiveInt, model_validator

from .dist_config import NonNegativeFloat, PositiveFloat, StrictModel


class Stage(StrictModel):
    """A stretch of constant request rate."""

    rate: PositiveFloat = Field(description="Mean request rate in requests per second.")
    duration_s: PositiveFloat = Field(
        description="Length of the stage in seconds; the stage sends round(rate * duration_s) requests.")


class _Bounded(StrictModel):
    duration_s: PositiveFloat | None = Field(
        None, description="Stop at this time (seconds); give this or num_requests.")
    num_requests: PositiveInt | None = Field(
        None, description="Stop after this many arrivals; give this or duration_s.")

    @model_validator(mode="after")
    def _one_bound(self) -> Any:
        if (self.duration_s is None) == (self.num_requests is None):
            raise ValueError("give exactly one of duration_s and num_requests")
        return self


class PoissonArrival(_Bounded):
    """Poisson arrivals: i.i.d. exponential gaps at a constant rate."""

    process: Literal["poisson"] = Field(description="Arrival process name.")
    rate: PositiveFloat = Field(description="Mean arrivals per second.")


class GammaArrival(_Bounded):
    """A renewal process with gamma gaps: cv > 1 is burstier than Poisson, cv < 1 more regular."""

    process: Literal["gamma"] = Field(description="Arrival process name.")
    rate: PositiveFloat = Field(description="Mean arrivals per second.")
    cv: PositiveFloat = Field(description="Coefficient of variation of the gaps (1 = Poisson).")


class MMPPArrival(_Bounded):
    """A Markov-modulated Poisson process: a hidden state picks the Poisson rate.

    The state stays for an exponential time with mean ``mean_dwell_s[i]``, then jumps (to the next
    state in order, or as ``transitions`` says); the first state is drawn from the chain's
    stationary distribution, so the process is stationary from t = 0.
    """

    process: Literal["mmpp"] = Field(description="Arrival process name.")
    rates: list[NonNegativeFloat] = Field(min_length=2, description="Arrival rate of each state (per second).")
    mean_dwell_s: list[PositiveFloat] = Field(min_length=2, description="Mean time spent in each state per visit (s).")
    transitions: list[list[NonNegativeFloat]] | None = Field(
        None, description="Jump probabilities between states (rows sum to 1, zero diagonal); "
                          "default: 0 -> 1 -> ... -> 0 in turn.")

    @model_validator(mode="after")
    def _shapes(self) -> Any:
        n = len(self.rates)
        if len(self.mean_dwell_s) != n:
            raise ValueError(f"rates has {n} states but mean_dwell_s has {len(self.mean_dwell_s)}")
        if max(self.rates) <= 0:
            raise ValueError("at least one state needs a rate > 0")
        if self.transitions is not None:
            p = self.transitions
            if len(p) != n or any(len(row) != n for row in p):
                raise ValueError(f"transitions must be a {n}x{n} matrix")
            for i, row in enumerate(p):
                if abs(sum(row) - 1.0) > 1e-9 or row[i] != 0:
                    raise ValueError(f"transitions row {i} must sum to 1 with a zero diagonal")
        return self


class OnOffArrival(_Bounded):
    """Bursts: Poisson at ``rate`` during ON periods, silence during OFF (a two-state MMPP)."""

    process: Literal["on_off"] = Field(description="Arrival process name.")
    rate: PositiveFloat = Field(description="Arrival rate while ON (per second).")
    mean_on_s: PositiveFloat = Field(description="Mean length of an ON period (seconds, exponential).")
    mean_off_s: PositiveFloat = Field(description="Mean length of an OFF period (seconds, exponential).")


class DiurnalArrival(StrictModel):
    """A Poisson process with a time-varying rate: a sinusoid, or a piecewise-linear rate curve.

    Sinusoid: ``rate(t) = mean_rate * (1 + amplitude * cos(2 pi (t - peak_at_s) / period_s))``.
    Curve: ``points`` (or a CSV ``curve_path`` with columns time_s, rate) interpolated linearly,
    held flat beyond its ends, times ``rate_scale``. Sampled exactly by thinning.
    """

    process: Literal["diurnal"] = Field(description="Arrival process name.")
    duration_s: PositiveFloat = Field(description="Stop at this time (seconds).")
    mean_rate: PositiveFloat | None = Field(None, description="Sinusoid: mean arrivals per second.")
    amplitude: float = Field(0.5, ge=0, le=1, description="Sinusoid: relative swing (0 = constant, 1 = down to 0).")
    period_s: PositiveFloat = Field(86400.0, description="Sinusoid: period in seconds (a day by default).")
    peak_at_s: NonNegativeFloat = Field(0.0, description="Sinusoid: a time (s) at which the rate peaks.")
    points: list[tuple[NonNegativeFloat, NonNegativeFloat]] | None = Field(
        None, description="Curve: [[time_s, rate], ...] with increasing times.")
    curve_path: str | None = Field(None, description="Curve: CSV file with columns time_s, rate.")
    rate_scale: PositiveFloat = Field(1.0, description="Curve: multiply every rate by this.")

    @model_validator(mode="after")
    def _one_shape(self) -> Any:
        given = [self.mean_rate is not None, self.points is not None, self.curve_path is not None]
        if sum(given) != 1:
            raise ValueError("give exactly one of mean_rate (sinusoid), points or curve_path (rate curve)")
        if self.points is not None:
            ts = [t for t, _ in self.points]
            if len(ts) < 1 or any(b <= a for a, b in zip(ts, ts[1:])):
                raise ValueError("points need at least one [time_s, rate] pair with increasing times")
            if max(r for _, r in self.points) <= 0:
                raise ValueError("points need a rate > 0 somewhere")
        return self


class StagesArrival(StrictModel):
    """Poisson arrivals in constant-rate stages; stage k sends exactly round(rate * duration_s) requests."""

    process: Literal["stages"] = Field(description="Arrival process name.")
    stages: list[Stage] = Field(min_length=1, description="Rate stages, run one after the other.")


class ReplayArrival(StrictModel):
    """The arrival times of a recorded trace (its lengths are ignored)."""

    process: Literal["replay"] = Field(description="Arrival process name.")
    path: str = Field(description="Trace file whose timestamps to replay.")
    format: str = Field("auto", description="Trace format (registry kind 'trace_format'); auto: sniffed.")
    columns: dict[str, str] | None = Field(None, description="For the csv format: servesim column -> file column.")
    time_scale: PositiveFloat = Field(1.0, description="Multiply every arrival time by this.")
    max_requests: PositiveInt | None = Field(None, description="Replay only the first this many arrivals.")


ArrivalConfig = Annotated[
    Union[PoissonArrival, GammaArrival, MMPPArrival, OnOffArrival, DiurnalArrival, StagesArrival, ReplayArrival],
    Field(discriminator="process"),
]
"""An open-loop arrival process, told apart by ``process``."""
