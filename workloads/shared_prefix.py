"""Shared-prefix traffic: prompts drawn from a pool of system prompt x user question pairs.

This is inference-perf's shared-prefix data: ``num_system_prompts`` system prompts of
``system_prompt_len`` tokens, each followed by one of ``users_per_system_prompt`` questions of
``question_len`` tokens. Pool entry ``i`` is system prompt ``g = i // users_per_system_prompt``
plus question ``i``; every request draws an entry uniformly at random, so requests of the same
group share the system prompt's KV blocks and requests of the same entry share the whole prompt.

Segments are ``(("sys", g), system_prompt_len), (("q", i), question_len)`` (no ``sys`` segment
when ``system_prompt_len`` is 0), one tuple object per pool entry, built the first time the
entry is drawn.
"""
from __future__ import annotations

import numpy as np

from sim.registry import register

from .arrivals import poisson_stage_arrivals
from .base import ArrayWorkload, Segments, component_rng
from .config import SharedPrefixWorkload


class SharedPrefixStream(ArrayWorkload):
    """Poisson arrivals whose prompts come from a shared-prefix pool (see module docstring)."""

    def __init__(self, cfg: SharedPrefixWorkload, seed: int | np.random.SeedSequence,
                 max_model_len: int | None = None) -> None:
        arrivals, stage = poisson_stage_arrivals(cfg.stages, component_rng(seed, "arrivals"))
        n = len(arrivals)
        self.pool_size = cfg.num_system_prompts * cfg.users_per_system_prompt
        self.prompt_index = component_rng(seed, "prompts").integers(0, self.pool_size, size=n,
                                                                     dtype=np.int64)
        self._cfg = cfg
        self._pool: dict[int, Segments] = {}
        super().__init__(arrivals, np.full(n, cfg.system_prompt_len + cfg.question_len, dtype=np.int64),
                         np.full(n, cfg.output_len, dtype=np.int64), stage=stage,
                         segments_for=self._segments_for, max_model_len=max_model_len)

    def prompt_segments(self, i: int) -> Segments:
        """The segments tuple of pool entry ``i`` (the same object every time)."""
        segs = self._pool.get(i)
        if segs is None:
            cfg = self._cfg
            q = (("q", i), cfg.question_len)
            if cfg.system_prompt_len > 0:
                segs = ((("sys", i // cfg.users_per_system_prompt), cfg.system_prompt_len), q)
            else:
                segs = (q,)
            self._pool[i] = segs
        return segs

    def _segments_for(self, lo: int, hi: int) -> list[Segments]:
        pool, make = self._pool, self.prompt_segments
        return [pool.get(i) or make(i) for i in self.prompt_index[lo:hi].tolist()]


@register("workload", "shared_prefix")
def shared_prefix_workload(cfg: SharedPrefixWorkload, seed: int | np.random.SeedSequence,
                           max_model_len: int | None = None) -> SharedPrefixStream:
    """Shared-prefix pool traffic (inference-perf's shared_prefix data) at Poisson rate stages."""
    from .build import with_classes

    return with_classes(SharedPrefixStream(cfg, seed, max_model_len), cfg, seed)
