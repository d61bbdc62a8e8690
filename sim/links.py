"""Links as shared resources: flows over paths, max-min fair bandwidth, exact completion times.

A *link* is one direction of a wire (an NVLink port, a PCIe lane bundle, an InfiniBand port, the
host DRAM bus), named by a plain string such as ``"node0.gpu3->node0.nvswitch"``, with an
achievable bandwidth in bytes/s and a latency in seconds. A *flow* is one transfer (a KV cache
handed from a prefill to a decode replica, a swap to host memory, a weight load from NVMe) that
crosses a path of links.

Sharing follows **max-min fairness**, the share TCP-like transports and NCCL channels converge to:
every flow gets the same rate on a link unless it is held back elsewhere on its path, and what a
held-back flow leaves unused goes to the others. The rates come from *progressive filling*: raise
every flow's rate together until some link is full; the flows through it are frozen at that rate;
continue with the rest on what capacity remains.

Time is exact and cheap. Between two *changes* (a flow starting or finishing) the rates are
constant, so each flow's remaining bytes fall linearly and the next finish is
``min(remaining / rate)``. The network keeps one pending timer for that instant and recomputes the
rates only when something changes (once per instant, however many transfers start in it); there
are no per-byte or per-tick events, and a recomputation costs O(flows x path length x log links).
A flow's bytes start leaving at once; its last byte arrives one path latency after it leaves (a
pipe: latency is paid once per link of the path, not per byte), so an uncontended transfer takes
``sum(latency) + bytes / min(bandwidth)`` (`transfer_time`).

    env = simpy.Environment()
    net = FlowNetwork(env, {"a->b": LinkCapacity(bandwidth=25e9, latency_s=2e-6)})
    done = net.transfer(["a->b"], 1e9)          # an event; its value is the duration in seconds
    env.run(done)

Accounting per link (bytes carried, the integral of utilisation = "busy seconds") is always kept;
a change-point timeline of utilisation, needed for arbitrary windows, only with ``record=True``.
"""
from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from heapq import heapify, heappop, heappush
from dataclasses import dataclass

import simpy

from .errors import ConfigError, did_you_mean

# A flow whose remaining bytes are at most this fraction of its size counts as delivered: the
# linear updates of `remaining` leave float dust of order 1e-16 x size per change.
DONE_FRACTION = 1e-9


@dataclass(frozen=True, slots=True)
class LinkCapacity:
    """One direction of a link: achievable bytes/s and one-way latency in seconds."""

    bandwidth: float
    latency_s: float = 0.0

    def __post_init__(self) -> None:
        if not (self.bandwidth > 0 and math.isfinite(self.bandwidth)):
            raise ConfigError(f"link bandwidth must be a finite number > 0 bytes/s, got {self.bandwidth!r}")
        if not (self.latency_s >= 0 and math.isfinite(self.latency_s)):
            raise ConfigError(f"link latency_s must be a finite number >= 0, got {self.latency_s!r}")


def transfer_time(nbytes: float, path_caps: Iterable[LinkCapacity]) -> float:
    """Seconds for `nbytes` over a path with nothing else on it: latencies + bytes / the narrowest link."""
    caps = list(path_caps)
    if not caps:
        return 0.0
    return sum(c.latency_s for c in caps) + (nbytes / min(c.bandwidth for c in caps) if nbytes else 0.0)


class _Flow:
    """One transfer in flight (hot: created per transfer, touched on every recomputation)."""

    __slots__ = ("path", "size", "remaining", "rate", "latency", "event", "start", "tag")

    def __init__(self, path: tuple[str, ...], size: float, latency: float, event: simpy.Event,
                 start: float, tag: str) -> None:
        self.path = path
        self.size = size
        self.remaining = size
        self.rate = 0.0
        self.latency = latency
        self.event = event
        self.start = start
        self.tag = tag


class FlowNetwork:
    """Links carrying flows with max-min fair sharing; `transfer` returns an event per flow."""

    __slots__ = ("env", "_bw", "_lat", "_active", "_seq", "_t0", "_t_last", "_link_rate", "_bytes", "_busy",
                 "_gen", "_record", "_timeline", "_tl", "_delivered", "_sent", "_dirty")

    def __init__(self, env: simpy.Environment, links: Mapping[str, LinkCapacity], *, record: bool = False) -> None:
        self.env = env
        self._bw: dict[str, float] = {}
        self._lat: dict[str, float] = {}
        for lid, cap in links.items():
            if not isinstance(cap, LinkCapacity):
                raise ConfigError(f"link {lid!r}: expected a LinkCapacity, got {type(cap).__name__}")
            self._bw[str(lid)] = cap.bandwidth
            self._lat[str(lid)] = cap.latency_s
        self._active: dict[int, _Flow] = {}     # insertion-ordered: deterministic tie-breaking
        self._seq = 0
        self._t0 = self._t_last = env.now
        self._link_rate: dict[str, float] = {}  # links carrying traffic now -> total bytes/s
        self._bytes = dict.fromkeys(self._bw, 0.0)
        self._busy = dict.fromkeys(self._bw, 0.0)
        self._gen = 0                           # generation of the pending timer; older timers are stale
        self._record = record
        self._timeline: list[tuple[float, str, float]] = []
        self._tl: dict[str, tuple[list[float], list[float], list[float]]] = {}
        self._delivered = 0.0
        self._sent = 0.0
        self._dirty = False                     # flows were added this instant; rates not yet recomputed

    # ----------------------------------------------------------------- public
    @property
    def links(self) -> tuple[str, ...]:
        """Link ids, in the order given."""
        return tuple(self._bw)

    @property
    def active(self) -> int:
        """Flows whose bytes are still leaving."""
        return len(self._active)

    @property
    def delivered_bytes(self) -> float:
        """Bytes of every flow that has finished draining (the sum of their sizes)."""
        return self._delivered

    @property
    def requested_bytes(self) -> float:
        """Bytes of every transfer ever started."""
        return self._sent

    def capacity(self, link_id: str) -> LinkCapacity:
        """The bandwidth and latency of one link."""
        self._check([link_id])
        return LinkCapacity(self._bw[link_id], self._lat[link_id])

    def transfer(self, path: Sequence[str], nbytes: float, tag: str = "") -> simpy.Event:
        """Start a flow of `nbytes` over the links of `path`; the event's value is its duration (s).

        Zero bytes pay the path latency only; an empty path completes at once."""
        nbytes = float(nbytes)
        if not (nbytes >= 0 and math.isfinite(nbytes)):
            raise ConfigError(f"transfer {tag!r}: nbytes must be a finite number >= 0, got {nbytes!r}")
        path = tuple(path)
        self._check(path)
        env = self.env
        self._sent += nbytes
        latency = 0.0
        for lid in path:
            latency += self._lat[lid]
        if not path or nbytes == 0.0:
            self._delivered += nbytes
            if latency == 0.0:
                ev = env.event()
                ev.succeed(0.0)
                return ev
            return env.timeout(latency, value=latency)
        ev = env.event()
        self._advance(env.now)
        self._seq += 1
        self._active[self._seq] = _Flow(path, nbytes, latency, ev, env.now, tag)
        if not self._dirty:
            # Recompute once at the end of this instant, however many transfers start in it.
            self._dirty = True
            env.timeout(0.0).callbacks.append(self._flush)
        return ev

    def rates(self) -> dict[str, float]:
        """Current bytes/s of every flow in flight, keyed by tag (untagged flows by ``#<seq>``; of two
        flows with one tag, the later shows)."""
        if self._dirty:
            self._reschedule()
        return {(f.tag or f"#{k}"): f.rate for k, f in self._active.items()}

    def link_stats(self) -> dict[str, dict[str, float]]:
        """Per link: ``bytes`` carried, ``busy_s`` (integral of utilisation) and ``mean_utilisation``
        since the network was built."""
        self._advance(self.env.now)
        span = self.env.now - self._t0
        return {lid: {"bytes": self._bytes[lid], "busy_s": self._busy[lid],
                      "mean_utilisation": self._busy[lid] / span if span > 0 else 0.0} for lid in self._bw}

    def utilisation(self, link_id: str, t0: float | None = None, t1: float | None = None) -> float:
        """Mean utilisation (0-1) of a link over [t0, t1] (default: since the start, until now).

        Any other window needs the change-point timeline: build the network with ``record=True``."""
        self._check([link_id])
        self._advance(self.env.now)
        now = self.env.now
        lo = self._t0 if t0 is None else max(float(t0), self._t0)
        hi = now if t1 is None else min(float(t1), now)
        if hi <= lo:
            return 0.0
        if lo == self._t0 and hi == now:
            return self._busy[link_id] / (hi - lo)
        if not self._record:
            raise ConfigError("utilisation over a window other than [start, now] needs FlowNetwork(..., record=True)")
        return (self._busy_at(link_id, hi) - self._busy_at(link_id, lo)) / (hi - lo)

    def rate_timeline(self) -> list[tuple[float, str, float]]:
        """(time, link id, utilisation from then on) at every change, in time order (``record=True`` only)."""
        if not self._record:
            raise ConfigError("rate_timeline() needs FlowNetwork(..., record=True)")
        return list(self._timeline)

    # ----------------------------------------------------------------- internals
    def _check(self, path: Sequence[str]) -> None:
        seen = set()
        for lid in path:
            if lid not in self._bw:
                raise ConfigError(f"unknown link id {lid!r}{did_you_mean(str(lid), self._bw)}")
            if lid in seen:
                raise ConfigError(f"path crosses link {lid!r} twice; a path is a simple chain of links")
            seen.add(lid)

    def _busy_at(self, link_id: str, t: float) -> float:
        times, cum, util = self._tl.get(link_id, ((), (), ()))
        i = bisect_right(times, t) - 1
        if i < 0:
            return 0.0
        return cum[i] + util[i] * (t - times[i])

    def _advance(self, now: float) -> None:
        """Drain every flow and account every busy link up to `now` at the current rates."""
        dt = now - self._t_last
        if dt <= 0.0:
            return
        for f in self._active.values():
            f.remaining -= f.rate * dt
        bw, nbytes, busy = self._bw, self._bytes, self._busy
        for lid, r in self._link_rate.items():
            nbytes[lid] += r * dt
            busy[lid] += r / bw[lid] * dt
        self._t_last = now

    def _fill(self) -> dict[str, float]:
        """Progressive filling: set every active flow's max-min fair rate; return each busy link's total.

        The next bottleneck comes off a heap of (fair share, version, link); an entry whose link has
        changed since it was pushed is stale and skipped. O(flows x path x log links) per call."""
        bw = self._bw
        cap: dict[str, float] = {}
        cnt: dict[str, int] = {}
        members: dict[str, list[_Flow]] = {}
        for f in self._active.values():
            f.rate = -1.0                      # -1 = not frozen yet
            for lid in f.path:
                if lid in cnt:
                    cnt[lid] += 1
                    members[lid].append(f)
                else:
                    cnt[lid] = 1
                    cap[lid] = bw[lid]
                    members[lid] = [f]
        version = dict.fromkeys(cnt, 0)
        heap = [(cap[lid] / n, 0, lid) for lid, n in cnt.items()]
        heapify(heap)
        left = len(self._active)
        while left:
            share, ver, lid = heappop(heap)
            if version[lid] != ver or cnt[lid] == 0:
                continue                       # stale: this link changed (or emptied) since the push
            limit = share * (1.0 + 1e-12)
            full = [lid]
            while heap and heap[0][0] <= limit:
                _, ver, other = heappop(heap)
                if version[other] == ver and cnt[other]:
                    full.append(other)
            touched = set()
            for link in full:
                for f in members[link]:
                    if f.rate < 0.0:
                        f.rate = share
                        left -= 1
                        for l2 in f.path:
                            c = cap[l2] - share
                            cap[l2] = c if c > 0.0 else 0.0
                            cnt[l2] -= 1
                            touched.add(l2)
            for l2 in touched:
                version[l2] += 1
                n = cnt[l2]
                if n:
                    heappush(heap, (cap[l2] / n, version[l2], l2))
        return {lid: bw[lid] - c for lid, c in cap.items()}

    def _flush(self, _ev: simpy.Event) -> None:
        if self._dirty:
            self._reschedule()

    def _reschedule(self) -> None:
        """Recompute the rates, update the link totals and arm the timer for the next finish."""
        self._dirty = False
        new = self._fill()
        old = self._link_rate
        nxt = math.inf
        for f in self._active.values():
            if f.rate > 0.0:                   # 0 only if float dust exhausted a link: wait for the next change
                t = f.remaining / f.rate
                if t < nxt:
                    nxt = t
        self._link_rate = new
        if self._record:
            self._log_changes(old, new)
        self._gen += 1
        if nxt < math.inf:
            gen = self._gen
            timer = self.env.timeout(max(nxt, 0.0))
            timer.callbacks.append(lambda _ev: self._on_timer(gen))

    def _log_changes(self, old: dict[str, float], new: dict[str, float]) -> None:
        now, bw = self.env.now, self._bw
        for lid in sorted(old.keys() | new.keys(), key=lambda k: (k not in new, k)):
            r = new.get(lid, 0.0)
            if r != old.get(lid, 0.0):
                u = r / bw[lid]
                self._timeline.append((now, lid, u))
                times, cum, util = self._tl.setdefault(lid, ([], [], []))
                if times and times[-1] == now:
                    util[-1] = u
                else:
                    times.append(now)
                    cum.append(self._busy[lid])
                    util.append(u)

    def _on_timer(self, gen: int) -> None:
        if gen != self._gen:
            return                             # a change re-planned the next finish since this was armed
        env = self.env
        now = env.now
        self._advance(now)
        done = [k for k, f in self._active.items()
                if f.remaining <= DONE_FRACTION * f.size or (f.rate > 0.0 and now + f.remaining / f.rate <= now)]
        bw, nbytes, busy = self._bw, self._bytes, self._busy
        for k in done:
            f = self._active.pop(k)
            rest = f.remaining                 # float dust: book it so bytes are conserved exactly
            if rest:
                for lid in f.path:
                    nbytes[lid] += rest
                    busy[lid] += rest / bw[lid]
            self._delivered += f.size
            duration = now + f.latency - f.start
            if f.latency > 0.0:
                env.timeout(f.latency).callbacks.append(lambda _ev, e=f.event, d=duration: e.succeed(d))
            else:
                f.event.succeed(duration)
        self._reschedule()


__all__ = ["DONE_FRACTION", "FlowNetwork", "LinkCapacity", "transfer_time"]
