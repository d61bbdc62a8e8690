"""Closed-loop clients: N users, each sending its next request when its previous one finishes.

This is how benchmark clients with a max-concurrency behave (vLLM's ``--max-concurrency``,
inference-perf's concurrency mode): client i sends a request at its start time
``i * start_spread_s / clients``; when that request finishes it waits a think time and sends the
next, until ``num_requests`` have been sent in all or the next send would be at or after
``duration_s``. So at most ``clients`` requests are ever outstanding, and the offered load adapts to
the server's speed (Little's law: throughput = clients / (latency + think time)).

Request k (in send order) takes the k-th lengths, think time and class of streams drawn in blocks,
so its content does not depend on which client sends it. The workload is a SimPy process
(``process(env, submit)``) told of completions through ``on_finish(request)``.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from .base import ClassTag, RequestSpec, Workload, clip_to_model_len, component_rng
from .classes import draw_classes
from .config import ClosedLoopWorkload
from .lengths import LengthPair, sample_times

BLOCK = 1024


class _Blocks:
    """Item i of a stream drawn ``BLOCK`` items at a time (arrays from ``draw(n)``)."""

    def __init__(self, draw: Callable[[int], tuple[np.ndarray, ...]]) -> None:
        self.draw = draw
        self.parts: list[tuple[list, ...]] = []

    def __getitem__(self, i: int) -> tuple:
        b, j = divmod(i, BLOCK)
        while len(self.parts) <= b:
            self.parts.append(tuple(a.tolist() for a in self.draw(BLOCK)))
        return tuple(a[j] for a in self.parts[b])


class ClosedLoopClients(Workload):
    """N closed-loop clients with think time (see the module docstring)."""

    def __init__(self, cfg: ClosedLoopWorkload, seed: int | np.random.SeedSequence,
                 max_model_len: int | None = None) -> None:
        self.cfg = cfg
        self.expected_count = cfg.num_requests if cfg.duration_s is None else None
        self.dropped = self.clipped = 0
        self.sent = 0
        self.outstanding = 0
        self.peak_outstanding = 0
        sys_len = cfg.system_prompt_len
        pair = LengthPair(cfg.input_len, cfg.output_len, component_rng(seed, "input_len"),
                          component_rng(seed, "output_len"))

        def lengths(n: int) -> tuple[np.ndarray, np.ndarray]:
            inp, out = pair.draw(n)
            inp, out, _, n_clip = clip_to_model_len(inp + sys_len, out, max_model_len)
            self._clip_by_block.append(n_clip)
            return inp, out

        self._clip_by_block: list[int] = []
        self._lengths = _Blocks(lengths)
        rng_think = component_rng(seed, "think")
        self._think = _Blocks(lambda n: (sample_times(cfg.think_time_s, n, rng_think),))
        rng_cls = component_rng(seed, "classes")
        self._tags: list[ClassTag] = []
        self._classes = None
        if cfg.classes:
            self._tags = draw_classes(cfg.classes, 1, np.random.default_rng(0))[1]
            self._classes = _Blocks(lambda n: (draw_classes(cfg.classes, n, rng_cls)[0],))
        self._client_of: dict[int, int] = {}
        self._env = self._submit = None
        self._done = None
        self._active = cfg.clients

    def __iter__(self) -> Iterator[RequestSpec]:
        raise TypeError("closed-loop clients are driven by the simulation (process/on_finish); "
                        "they have no timeline before it runs")

    def _may_send(self, at: float) -> bool:
        cfg = self.cfg
        if cfg.num_requests is not None and self.sent >= cfg.num_requests:
            return False
        return cfg.duration_s is None or at < cfg.duration_s

    def _send(self, client: int) -> None:
        k = self.sent
        self.sent += 1
        inp, out = self._lengths[k]
        self.clipped = sum(self._clip_by_block)
        sys_len = self.cfg.system_prompt_len
        segs = None
        if sys_len > 0:
            segs = ((("sys", 0), min(sys_len, inp)),) + (((("req", k), inp - sys_len),) if inp > sys_len else ())
        spec = RequestSpec(k, float(self._env.now), inp, out, segs, f"c{client}")
        if self._classes is not None:
            c = self._tags[self._classes[k][0]]
            spec.tenant, spec.priority, spec.slo_ttft_s, spec.slo_tpot_s = (c.tenant, c.priority, c.slo_ttft_s,
                                                                            c.slo_tpot_s)
        self._client_of[k] = client
        self.outstanding += 1
        self.peak_outstanding = max(self.peak_outstanding, self.outstanding)
        self._submit(spec)

    def _retire(self) -> None:
        self._active -= 1
        if self._active == 0 and self._done is not None and not self._done.triggered:
            self._done.succeed()

    def process(self, env, submit):
        """SimPy process: start the clients, then wait until every client has stopped."""
        self._env, self._submit = env, submit
        n = self.cfg.clients
        for i in range(n):
            at = i * self.cfg.start_spread_s / n
            if at > env.now:
                yield env.timeout(at - env.now)
            if self._may_send(env.now):
                self._send(i)
            else:
                self._retire()
        if self._active > 0:
            self._done = env.event()
            yield self._done

    def on_finish(self, request: Any) -> None:
        """The engine's completion callback: the client thinks, then sends its next request."""
        client = self._client_of.pop(request.id, None)
        if client is None:
            return
        self.outstanding -= 1
        wait = float(self._think[request.id][0])
        at = self._env.now + wait
        if not self._may_send(at):
            self._retire()
            return

        def go(_ev: Any) -> None:
            if self._may_send(self._env.now):
                self._send(client)
            else:
                self._retire()

        self._env.timeout(wait).callbacks.append(go)


def closed_loop_workload(cfg: ClosedLoopWorkload, seed: int | np.random.SeedSequence,
                         max_model_len: int | None = None) -> ClosedLoopClients:
    """N closed-loop clients with think time (benchmark max-concurrency)."""
    return ClosedLoopClients(cfg, seed, max_model_len)
