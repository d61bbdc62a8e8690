"""Autoscaling: replicas added and removed while traffic changes (registry kind ``"autoscaler"``).

A scaling policy answers ``desired(replicas, current, now) -> int``: how many replicas the pool should
have, given its active replicas (``outstanding``, ``waiting``, ``kv.usage``), the current target (active +
provisioning) and the time; a policy that watches completions also has ``observe(request)``. Built in,
Kubernetes-HPA style (``desired = ceil(active x metric / target)``, left alone within a 10% tolerance):

* ``queue_length``: outstanding (waiting + running) requests per replica, against ``target``.
* ``kv_usage``: mean KV-cache usage of the active replicas, against ``target`` (0 to 1).
* ``slo_attainment``: the fraction of requests finished in the last ``window_s`` that met their TTFT
  (and TPOT) target: below ``target``, ``step`` more replicas; at or above it with nobody waiting, one fewer.

`ScalingController` is the mechanism around a policy (the same for every policy): every ``interval_s``
it asks the policy, clamps the answer to [min_replicas, max_replicas] and acts.

* Scale up: a draining replica is taken back first (it is still up); otherwise an idle replica starts
  *provisioning* and serves ``provisioning_delay_s`` later. Its GPUs were placed at build time (the
  deployment holds capacity for max_replicas), the router sees it only once it is active.
* Scale down: only down to the highest recommendation of the last ``scale_down_cooldown_s`` seconds
  (HPA's scale-down stabilisation window). Provisioning replicas are cancelled first (newest first), then
  active ones *drain*: the router stops sending them requests, they finish what they hold, then stop.
* Billing: a replica costs from its scale-up decision until it has drained (provisioning, active and
  draining time), ``gpus per replica x price per GPU-hour``.

The controller keeps the timeline of (time, active, target, billed) at every change.
"""
from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from sim.registry import register
from sim.request import FINISHED, Request

from .ordering import instantiate

#: Relative change of the metric ignored by the HPA-style policies (Kubernetes'
#: --horizontal-pod-autoscaler-tolerance, default 0.1: kubernetes.io, "Horizontal Pod Autoscaling").
HPA_TOLERANCE = 0.1

OFF, PROVISIONING, ACTIVE, DRAINING = "off", "provisioning", "active", "draining"


def _hpa(n: int, current: int, ratio: float) -> int:
    """HPA's rule: keep `current` while the metric is within the tolerance of its target, else ceil(n x ratio)."""
    if abs(ratio - 1.0) <= HPA_TOLERANCE:
        return current
    return math.ceil(n * ratio)


@register("autoscaler", "queue_length")
class QueueLength:
    """Scale on outstanding (waiting + running) requests per active replica, HPA style."""

    class Options(BaseModel):
        """The options this plugin takes in YAML (validated at the config boundary)."""
        model_config = ConfigDict(extra="forbid")

        target: float = Field(gt=0, description="Outstanding requests per replica to aim for.")

    def __init__(self, options: QueueLength.Options, rng: np.random.Generator) -> None:
        self.target = options.target

    def desired(self, replicas: Sequence[Any], current: int, now: float) -> int:
        """ceil(total outstanding / target), unless within the tolerance."""
        n = len(replicas)
        total = 0
        for r in replicas:
            total += r.outstanding
        return _hpa(n, current, total / (n * self.target))


@register("autoscaler", "kv_usage")
class KVUsage:
    """Scale on the active replicas' mean KV-cache usage, HPA style."""

    reads_kv = True      # KV usage: the replicas must not fast-forward across block boundaries

    class Options(BaseModel):
        """The options this plugin takes in YAML (validated at the config boundary)."""
        model_config = ConfigDict(extra="forbid")

        target: float = Field(gt=0, le=1, description="Mean fraction of KV blocks in use to aim for.")

    def __init__(self, options: KVUsage.Options, rng: np.random.Generator) -> None:
        self.target = options.target

    def desired(self, replicas: Sequence[Any], current: int, now: float) -> int:
        """ceil(active x mean usage / target), unless within the tolerance."""
        n = len(replicas)
        mean = sum(r.kv.usage for r in replicas) / n
        return _hpa(n, current, mean / self.target)


@register("autoscaler", "slo_attainment")
class SLOAttainment:
    """Scale on recent SLO attainment: add replicas below the target, remove one when met and nobody waits."""

    class Options(BaseModel):
        """The options this plugin takes in YAML (validated at the config boundary)."""
        model_config = ConfigDict(extra="forbid")

        target: float = Field(gt=0, le=1, description="Fraction of recent requests that must meet their SLO.")
        ttft_s: float | None = Field(None, gt=0, description="TTFT target (s); None: each request's slo_ttft_s "
                                                             "(requests without one meet it).")
        tpot_s: float | None = Field(None, gt=0, description="TPOT target (s); None: each request's slo_tpot_s.")
        window_s: float = Field(60.0, gt=0, description="Seconds of completions the attainment is taken over.")
        step: int = Field(1, ge=1, description="Replicas added when attainment is below the target.")

    def __init__(self, options: SLOAttainment.Options, rng: np.random.Generator) -> None:
        self.o = options
        self.recent: deque[tuple[float, bool]] = deque()     # (finish time, met the SLO)

    def observe(self, req: Request) -> None:
        """A finished request: did it meet its targets?"""
        if req.state != FINISHED:
            return
        ttft_slo = self.o.ttft_s if self.o.ttft_s is not None else req.slo_ttft_s
        tpot_slo = self.o.tpot_s if self.o.tpot_s is not None else req.slo_tpot_s
        ok = ttft_slo is None or req.first_token - req.arrival <= ttft_slo
        if ok and tpot_slo is not None and req.generated > 1:
            ok = (req.finish - req.first_token) / (req.generated - 1) <= tpot_slo
        self.recent.append((req.finish, ok))

    def attainment(self, now: float) -> float | None:
        """Met fraction of the completions in the window (None when there were none)."""
        recent = self.recent
        horizon = now - self.o.window_s
        while recent and recent[0][0] < horizon:
            recent.popleft()
        if not recent:
            return None
        return sum(ok for _, ok in recent) / len(recent)

    def desired(self, replicas: Sequence[Any], current: int, now: float) -> int:
        """current + step below the target; current - 1 at or above it with empty queues; else current."""
        att = self.attainment(now)
        waiting = sum(len(r.waiting) for r in replicas)
        if att is None:
            return current - 1 if waiting == 0 and all(r.outstanding == 0 for r in replicas) else current
        if att < self.o.target:
            return current + self.o.step
        return current - 1 if waiting == 0 else current


def make_autoscaler(name: str, options: dict[str, Any] | None, rng: np.random.Generator):
    """The scaling policy `name` with `options` (checked; errors name ``autoscaling.policy_options``)."""
    return instantiate("autoscaler", name, options, rng, where="autoscaling.policy_options")


class ScalingController:
    """Runs a scaling policy over a pool (see the module docstring): states, delays, draining and billing.

    `replicas` is the whole pool (placed for max_replicas); `routable` is the list the router picks from,
    kept equal to the active replicas. `initial` replicas are active at time 0."""

    def __init__(self, env, replicas: Sequence[Any], routable: list, policy, *, initial: int, min_replicas: int,
                 max_replicas: int, interval_s: float, provisioning_delay_s: float, scale_down_cooldown_s: float,
                 gpus_per_replica: int, usd_per_gpu_hour: float | None) -> None:
        self.env, self.replicas, self.routable, self.policy = env, list(replicas), routable, policy
        self.min, self.max = min_replicas, max_replicas
        self.interval, self.delay, self.cooldown = interval_s, provisioning_delay_s, scale_down_cooldown_s
        self.gpus = gpus_per_replica
        self.price = usd_per_gpu_hour
        self.pos = {r.index: i for i, r in enumerate(self.replicas)}
        self.state = [ACTIVE if i < initial else OFF for i in range(len(self.replicas))]
        self.gen = [0] * len(self.replicas)        # provisioning generation: a cancelled start never lands
        routable[:] = self.replicas[:initial]
        self.recs: deque[tuple[float, int]] = deque()
        self.observe = getattr(policy, "observe", None)
        self.billed = initial
        self.replica_s = 0.0                       # billed replica-seconds up to `last`
        self.last = 0.0
        self.scale_ups = self.scale_downs = 0
        self.timeline: list[tuple[float, int, int, int]] = [(0.0, initial, initial, initial)]

    # ------------------------------------------------------------ counts
    def count(self, state: str) -> int:
        """Replicas in `state`."""
        return self.state.count(state)

    @property
    def target(self) -> int:
        """Replicas the controller is heading for: active + provisioning."""
        return self.count(ACTIVE) + self.count(PROVISIONING)

    def _bill(self, delta: int) -> None:
        now = self.env.now
        self.replica_s += self.billed * (now - self.last)
        self.last = now
        self.billed += delta

    def _mark(self) -> None:
        row = (float(self.env.now), self.count(ACTIVE), self.target, self.billed)
        if row[1:] != self.timeline[-1][1:]:
            self.timeline.append(row)

    # ------------------------------------------------------------ the loop
    def run(self, finished: Callable[[], bool]):
        """SimPy process: evaluate the policy every interval until the run is over."""
        while True:
            yield self.env.timeout(self.interval)
            if finished():
                return
            self.evaluate()

    def evaluate(self) -> None:
        """One decision: ask the policy, clamp, scale up at once or down after stabilisation."""
        now = self.env.now
        current = self.target
        desired = min(self.max, max(self.min, int(self.policy.desired(self.routable, current, now))))
        recs = self.recs
        recs.append((now, desired))
        while recs[0][0] < now - self.cooldown:
            recs.popleft()
        if desired > current:
            self.scale_up(desired - current)
        elif desired < current:
            stable = max(d for _, d in recs)
            if stable < current:
                self.scale_down(current - stable)

    def scale_up(self, n: int) -> None:
        """Take back draining replicas, then start provisioning idle ones."""
        self.scale_ups += 1
        for i, s in enumerate(self.state):
            if n and s == DRAINING:
                self.state[i] = ACTIVE
                self.routable.append(self.replicas[i])
                n -= 1
        for i, s in enumerate(self.state):
            if n and s == OFF:
                self.state[i] = PROVISIONING
                self.gen[i] += 1
                self._bill(+1)
                self.env.timeout(self.delay).callbacks.append(self._ready(i, self.gen[i]))
                n -= 1
        self._mark()

    def _ready(self, i: int, gen: int):
        def activate(_ev) -> None:
            if self.state[i] == PROVISIONING and self.gen[i] == gen:
                self.state[i] = ACTIVE
                self.routable.append(self.replicas[i])
                self._mark()
        return activate

    def scale_down(self, n: int) -> None:
        """Cancel provisioning replicas (newest first), then drain the least loaded active ones."""
        self.scale_downs += 1
        for i in reversed(range(len(self.state))):
            if n and self.state[i] == PROVISIONING:
                self.state[i] = OFF
                self._bill(-1)
                n -= 1
        if n:
            active = [i for i, s in enumerate(self.state) if s == ACTIVE]
            active.sort(key=lambda i: (self.replicas[i].outstanding, -i))
            for i in active[:min(n, len(active) - 1)]:
                self.state[i] = DRAINING
                self.routable.remove(self.replicas[i])
                if self.replicas[i].outstanding == 0:
                    self._stop(i)
        self._mark()

    def _stop(self, i: int) -> None:
        self.state[i] = OFF
        self._bill(-1)
        self._mark()

    def completed(self, req: Request) -> None:
        """A request of the pool finished (or was refused): feed the policy, stop a drained replica."""
        if self.observe is not None:
            self.observe(req)
        i = self.pos.get(req.replica)
        if i is not None and self.state[i] == DRAINING and self.replicas[i].outstanding == 0:
            self._stop(i)

    # ------------------------------------------------------------ results
    def gpu_hours(self, end: float) -> float:
        """Billed GPU-hours from time 0 to `end`."""
        return (self.replica_s + self.billed * max(0.0, end - self.last)) * self.gpus / 3600.0

    def frame_rows(self, end: float) -> list[tuple[float, int, int, int, float, float]]:
        """The timeline closed at `end`, with cumulative GPU-hours and cost (USD; NaN without a price) at each
        change: (time_s, active, target, billed, gpu_hours, cost_usd)."""
        rows = []
        acc = 0.0
        prev_t, prev_billed = 0.0, self.timeline[0][3]
        price = self.price if self.price is not None else float("nan")
        for t, active, target, billed in [*self.timeline, (max(end, self.timeline[-1][0]),) + self.timeline[-1][1:]]:
            acc += prev_billed * (t - prev_t) * self.gpus / 3600.0
            rows.append((t, active, target, billed, acc, acc * price))
            prev_t, prev_billed = t, billed
        return rows

    def summary(self, end: float) -> dict:
        """The ``autoscaling`` summary section."""
        gpu_hours = self.gpu_hours(end)
        rows = self.frame_rows(end)
        mean_active = 0.0
        for (t0, a, *_), (t1, *_r) in zip(rows, rows[1:]):
            mean_active += a * (t1 - t0)
        timeline = []
        for t, a, tg, _b in self.timeline:
            if not timeline or timeline[-1][1:] != [a, tg]:
                timeline.append([round(t, 6), a, tg])
        return {"timeline": timeline,
                "min_replicas": self.min, "max_replicas": self.max, "provisioning_delay_s": self.delay,
                "scale_ups": self.scale_ups, "scale_downs": self.scale_downs,
                "peak_active": max(a for _, a, _, _ in self.timeline),
                "mean_active": mean_active / end if end > 0 else float(self.timeline[0][1]),
                "gpus_per_replica": self.gpus, "gpu_hours": gpu_hours, "usd_per_gpu_hour": self.price,
                "cost_usd": gpu_hours * self.price if self.price is not None else None}


__all__ = ["QueueLength", "KVUsage", "SLOAttainment", "ScalingController", "make_autoscaler", "HPA_TOLERANCE"]
