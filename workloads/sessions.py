"""Multi-turn conversations and agent loops whose prompts grow with the history.

A conversation (``type: sessions``) or agent task (``type: agent``) is a chain of requests. Turn
k's prompt is turn k-1's prompt, then turn k-1's output, then a new message (the user's next
message, or the tool's result)::

    turn 0: [sys g] [msg s,0]
    turn 1: [sys g] [msg s,0] [out s,0] [msg s,1]
    turn 2: [sys g] [msg s,0] [out s,0] [msg s,1] [out s,1] [msg s,2]

as `segments` ``(("sys", g), S), (("msg", s, 0), m0), (("out", s, 0), o0), (("msg", s, 1), m1), ...``:
turn k's segments start with exactly turn k-1's, so the KV manager's chained block hashes of turn
k-1's prompt reappear in turn k and prefix caching can serve them (conversations with the same
system prompt share its blocks too).

Pacing: ``after_finish`` (default) sends turn k+1 only when turn k has FINISHED, plus a think time
(the user reading and typing, or the tool running). That needs the simulation, so the workload is a
SimPy process (``process(env, submit)``, told of completions through ``on_finish(request)``).
``after_arrival`` counts the wait from turn k's arrival instead: an open-loop timeline, iterated
like any other workload. `SessionWorkload.preview` gives the after_arrival timeline of an
after_finish workload (service time taken as 0), for describing it without simulating.

Everything random is drawn up front per conversation and turn (own streams for starts, turn
counts, message and output lengths, think times, system prompts, classes), so a session's content
does not depend on when its turns run.

``max_model_len``: a conversation ends at the first turn whose prompt + output do not fit; that
turn is kept with its output cut (if its prompt fits) and the turns after it are not sent. Both
count in ``clipped``.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from sim.registry import register

from .arrivals import arrival_times
from .base import ArrayWorkload, RequestSpec, Segments, Workload, component_rng
from .classes import draw_classes
from .config import AgentWorkload, SessionsWorkload
from .lengths import sample_lengths, sample_times


class SessionPlan:
    """Every conversation's turns, flattened: turn arrays indexed by a global turn number."""

    def __init__(self, cfg: SessionsWorkload | AgentWorkload, seed: int | np.random.SeedSequence,
                 max_model_len: int | None = None) -> None:
        agent = cfg.type == "agent"
        turns_dist = cfg.steps if agent else cfg.turns
        first_dist = cfg.task_len if agent else (cfg.first_message_len or cfg.user_message_len)
        later_dist = cfg.tool_result_len if agent else cfg.user_message_len
        think_dist = cfg.tool_latency_s if agent else cfg.think_time_s

        start, stage = arrival_times(cfg.arrival, component_rng(seed, "arrivals"))
        n_s = len(start)
        turns = sample_lengths(turns_dist, n_s, component_rng(seed, "turns"))
        sid = np.repeat(np.arange(n_s), turns)
        first_turn = np.concatenate(([0], np.cumsum(turns)[:-1])).astype(np.int64)
        k = np.arange(len(sid)) - first_turn[sid]
        rng_in = component_rng(seed, "input_len")
        first = sample_lengths(first_dist, n_s, rng_in)
        later = sample_lengths(later_dist, len(sid), rng_in)
        msg = np.where(k == 0, first[sid], later)
        out = sample_lengths(cfg.output_len, len(sid), component_rng(seed, "output_len"), side="output")
        think = sample_times(think_dist, len(sid), component_rng(seed, "think"))
        system = component_rng(seed, "system").integers(0, cfg.num_system_prompts, size=n_s)
        sys_len = cfg.system_prompt_len
        # prompt_k = S + sum_{j<=k} msg_j + sum_{j<k} out_j, per conversation
        before = np.cumsum(msg + out) - (msg + out)          # sum over all earlier turns, globally
        prompt = sys_len + before - before[first_turn][sid] + msg

        self.clipped = 0
        if max_model_len is not None:
            fits = prompt + out <= max_model_len
            misfit_before = np.cumsum(~fits) - ~fits                  # misfits among all earlier turns
            bad_before = misfit_before - misfit_before[first_turn][sid]   # ... of the same conversation
            keep = (bad_before == 0) & (prompt <= max_model_len - 1)
            cut = keep & ~fits
            self.clipped = int(np.count_nonzero(~keep) + np.count_nonzero(cut))
            out = np.where(cut, max_model_len - prompt, out)
            if not keep.all():
                sid, k, msg, out, think, prompt = sid[keep], k[keep], msg[keep], out[keep], think[keep], prompt[keep]
                turns = np.bincount(sid, minlength=n_s)
                first_turn = np.concatenate(([0], np.cumsum(turns)[:-1])).astype(np.int64)

        self.start, self.stage, self.turns = np.asarray(start, dtype=np.float64), stage, turns
        self.sid, self.k, self.first_turn = sid, k, first_turn
        self.msg, self.out, self.think, self.prompt = msg, out, think, prompt
        self.system, self.system_len = system, sys_len
        classes = draw_classes(cfg.classes, n_s, component_rng(seed, "classes"))
        self.class_codes, self.classes = classes if classes is not None else (None, [])

    @property
    def num_sessions(self) -> int:
        """Number of conversations (tasks) in the plan."""
        return len(self.start)

    def __len__(self) -> int:
        return len(self.sid)

    def head(self, s: int) -> Segments:
        """Segments of conversation ``s``'s first prompt."""
        t = self.first_turn[s]
        first = (("msg", s, 0), int(self.msg[t]))
        if self.system_len > 0:
            return ((("sys", int(self.system[s])), self.system_len), first)
        return (first,)

    def extend(self, prev: Segments, t: int) -> Segments:
        """Turn ``t``'s segments from the previous turn's: + its output + the new message."""
        s, k = int(self.sid[t]), int(self.k[t])
        return prev + ((("out", s, k - 1), int(self.out[t - 1])), (("msg", s, k), int(self.msg[t])))

    def output_key(self, t: int) -> tuple:
        """The key turn ``t``'s output is cached under: the next turn's prompt contains it."""
        return ("out", int(self.sid[t]), int(self.k[t]))

    def segments(self, t: int) -> Segments:
        """Turn ``t``'s segments built from scratch (O(k))."""
        s = int(self.sid[t])
        u = int(self.first_turn[s])
        segs = self.head(s)
        for v in range(u + 1, t + 1):
            segs = self.extend(segs, v)
        return segs

    def open_loop_times(self) -> np.ndarray:
        """Arrival of every turn when each wait counts from the previous turn's arrival."""
        wait = np.where(self.k == 0, 0.0, self.think)
        c = np.cumsum(wait)
        return self.start[self.sid] + c - (c - wait)[self.first_turn][self.sid]


class _OpenLoopSegments:
    """segments_for(lo, hi) over turns in arrival order, extending each conversation's last prompt."""

    def __init__(self, plan: SessionPlan, order: np.ndarray) -> None:
        self.plan, self.order = plan, order
        self.last: dict[int, tuple[int, Segments]] = {}

    def __call__(self, lo: int, hi: int) -> list[Segments]:
        plan, last = self.plan, self.last
        res = []
        for t in self.order[lo:hi].tolist():
            s, k = int(plan.sid[t]), int(plan.k[t])
            prev = last.get(s)
            if k == 0:
                segs = plan.head(s)
            elif prev is not None and prev[0] == t - 1:
                segs = plan.extend(prev[1], t)
            else:
                segs = plan.segments(t)
            if k + 1 < plan.turns[s]:
                last[s] = (t, segs)
            else:
                last.pop(s, None)
            res.append(segs)
        return res


def open_loop_workload(plan: SessionPlan) -> ArrayWorkload:
    """The after_arrival timeline as an `ArrayWorkload` (turns of a conversation keep their order)."""
    times = plan.open_loop_times()
    order = np.lexsort((plan.k, plan.sid, times))
    names = [f"s{s}" for s in range(plan.num_sessions)]
    stage = plan.stage[plan.sid][order] if plan.stage is not None else None
    w = ArrayWorkload(times[order], plan.prompt[order], plan.out[order], stage=stage,
                      segments_for=_OpenLoopSegments(plan, order), session_codes=plan.sid[order],
                      session_names=names, output_keys_for=lambda lo, hi: [plan.output_key(t) for t in order[lo:hi]])
    if plan.class_codes is not None:
        w.set_classes(plan.class_codes[plan.sid][order], plan.classes)
    w.clipped = plan.clipped
    return w


class SessionWorkload(Workload):
    """Conversations whose next turn waits for the previous one to finish (a SimPy process)."""

    def __init__(self, plan: SessionPlan) -> None:
        self.plan = plan
        self.expected_count = len(plan)
        self.clipped = plan.clipped
        self.dropped = 0
        self.sent = 0
        self._pending: dict[int, tuple[int, Segments]] = {}   # request id -> (turn, segments)
        self._left = int(np.count_nonzero(plan.turns))
        self._done = None
        self._env = self._submit = None

    def __iter__(self) -> Iterator[RequestSpec]:
        raise TypeError("a session workload paced after_finish is driven by the simulation (process/on_finish); "
                        "use preview() for its zero-service-time timeline")

    def preview(self) -> ArrayWorkload:
        """The same conversations with each wait counted from the previous arrival (no simulation)."""
        return open_loop_workload(self.plan)

    def process(self, env, submit):
        """SimPy process: start each conversation at its time; later turns follow completions."""
        self._env, self._submit = env, submit
        plan = self.plan
        for s in np.argsort(plan.start, kind="stable").tolist():
            if plan.turns[s] == 0:
                continue
            delay = plan.start[s] - env.now
            if delay > 0:
                yield env.timeout(delay)
            self._send(int(plan.first_turn[s]), plan.head(s))
        if self._left > 0:
            self._done = env.event()
            yield self._done

    def _send(self, t: int, segs: Segments) -> None:
        plan = self.plan
        s = int(plan.sid[t])
        rid = self.sent
        self.sent += 1
        self._pending[rid] = (t, segs)
        spec = RequestSpec(rid, float(self._env.now), int(plan.prompt[t]), int(plan.out[t]), segs, f"s{s}",
                           int(plan.stage[s]) if plan.stage is not None else 0)
        spec.output_key = plan.output_key(t)
        if plan.class_codes is not None:
            c = plan.classes[plan.class_codes[s]]
            spec.tenant, spec.priority, spec.slo_ttft_s, spec.slo_tpot_s = (c.tenant, c.priority, c.slo_ttft_s,
                                                                            c.slo_tpot_s)
        self._submit(spec)

    def on_finish(self, request: Any) -> None:
        """The engine's completion callback: schedule the conversation's next turn after its wait."""
        entry = self._pending.pop(request.id, None)
        if entry is None:
            return
        t, segs = entry
        plan = self.plan
        s = int(plan.sid[t])
        if int(plan.k[t]) + 1 >= plan.turns[s]:
            self._left -= 1
            if self._left == 0 and self._done is not None and not self._done.triggered:
                self._done.succeed()
            return
        nxt = t + 1
        ev = self._env.timeout(float(plan.think[nxt]))
        ev.callbacks.append(lambda _ev: self._send(nxt, plan.extend(segs, nxt)))


def _build(cfg: Any, seed: int | np.random.SeedSequence, max_model_len: int | None) -> Workload:
    plan = SessionPlan(cfg, seed, max_model_len)
    return SessionWorkload(plan) if cfg.pacing == "after_finish" else open_loop_workload(plan)


@register("workload", "sessions")
def sessions_workload(cfg: SessionsWorkload, seed: int | np.random.SeedSequence,
                      max_model_len: int | None = None) -> Workload:
    """Multi-turn chat conversations whose prompts grow with the history."""
    return _build(cfg, seed, max_model_len)


@register("workload", "agent")
def agent_workload(cfg: AgentWorkload, seed: int | np.random.SeedSequence,
                   max_model_len: int | None = None) -> Workload:
    """Agent loops: model call -> tool call -> tool result -> next call, the history growing each step."""
    return _build(cfg, seed, max_model_len)
