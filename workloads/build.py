"""Build a request stream from a workload config and a seed.

`build_workload(cfg, seed)` looks the config's ``type`` up in the plugin registry (kind
``"workload"``) and calls the factory registered there, ``factory(cfg, seed, max_model_len)``.
Built in: ``poisson`` and ``synthetic`` (below), ``shared_prefix`` (`workloads.shared_prefix`),
``trace`` (`workloads.traces`), ``sessions`` and ``agent`` (`workloads.sessions`) and
``closed_loop`` (`workloads.closed_loop`). Randomness comes only from ``seed``: each component
(arrivals, input lengths, output lengths, prompt draws, think times, classes, ...) gets its own
child stream (see `workloads.base.component_rng`), so the same seed gives the same requests, bit
for bit.

Requests carry images when the config has ``images:`` (`workloads.multimodal`): the factory builds the
text stream unclipped, the images are drawn and appended, and ``max_model_len`` then shortens the text
(never an image). A factory with ``handles_images = True`` (the trace) does this itself.

Most workloads are iterables of `RequestSpec` in arrival order. Closed-loop clients and
conversations paced ``after_finish`` depend on when their requests finish, so they are SimPy
processes instead: ``workload.process(env, submit)`` submits specs, and the engine calls
``workload.on_finish(request)`` at each completion (see `experiments.runner.run`).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from pydantic import TypeAdapter

from sim.registry import get, register

from . import sessions as _sessions  # noqa: F401  (registers "sessions", "agent")
from . import shared_prefix as _shared_prefix  # noqa: F401  (registers "shared_prefix")
from . import traces as _traces  # noqa: F401  (registers "trace")
from .arrivals import arrival_times, poisson_stage_arrivals
from .base import ArrayWorkload, Segments, Workload, component_rng
from .classes import draw_classes
from .closed_loop import closed_loop_workload
from .config import PoissonWorkload, SyntheticWorkload, WorkloadConfig
from .lengths import LengthPair
from .multimodal import with_images

_ADAPTER: TypeAdapter[Any] = TypeAdapter(WorkloadConfig)


def parse_workload_config(data: Mapping[str, Any] | Any) -> Any:
    """Validate a dict (from YAML/JSON) into a workload config model (pydantic ValidationError)."""
    if isinstance(data, Mapping):
        return _ADAPTER.validate_python(dict(data))
    return data


@register("workload", "poisson")
def poisson_workload(cfg: PoissonWorkload, seed: int | np.random.SeedSequence,
                     max_model_len: int | None = None) -> ArrayWorkload:
    """Poisson arrivals in rate stages with prompt/output lengths from distributions."""
    arrivals, stage = poisson_stage_arrivals(cfg.stages, component_rng(seed, "arrivals"))
    n = len(arrivals)
    # whole trace rows when both lengths resample the same file (their joint distribution), else independent draws
    inp, out = LengthPair(cfg.input_len, cfg.output_len, component_rng(seed, "input_len"),
                          component_rng(seed, "output_len")).draw(n)
    return with_classes(ArrayWorkload(arrivals, inp, out, stage=stage, max_model_len=max_model_len), cfg, seed)


def with_classes(w: ArrayWorkload, cfg: Any, seed: int | np.random.SeedSequence) -> ArrayWorkload:
    """Tag each request of ``w`` with one of ``cfg.classes``, drawn by weight (no-op without classes)."""
    tagged = draw_classes(getattr(cfg, "classes", None), len(w.arrival_s), component_rng(seed, "classes"))
    if tagged is not None:
        w.set_classes(*tagged)
    return w


class _SystemPromptSegments:
    """segments_for of prompts = a drawn system prompt + a unique user part."""

    def __init__(self, system: np.ndarray, sys_len: int, inp: np.ndarray) -> None:
        self.system, self.sys_len, self.inp = system, sys_len, inp

    def __call__(self, lo: int, hi: int) -> list[Segments]:
        s = self.sys_len
        return [((("sys", g), s), (("req", lo + j), n - s))
                for j, (g, n) in enumerate(zip(self.system[lo:hi].tolist(), self.inp[lo:hi].tolist()))]


@register("workload", "synthetic")
def synthetic_workload(cfg: SyntheticWorkload, seed: int | np.random.SeedSequence,
                       max_model_len: int | None = None) -> ArrayWorkload:
    """Any registered arrival process with lengths from distributions (jointly, for one empirical source)."""
    arrivals, stage = arrival_times(cfg.arrival, component_rng(seed, "arrivals"))
    n = len(arrivals)
    inp, out = LengthPair(cfg.input_len, cfg.output_len, component_rng(seed, "input_len"),
                          component_rng(seed, "output_len")).draw(n)
    seg_for = None
    if cfg.system_prompt_len > 0:
        inp = inp + cfg.system_prompt_len
        system = component_rng(seed, "system").integers(0, cfg.num_system_prompts, size=n)
        seg_for = _SystemPromptSegments(system, cfg.system_prompt_len, inp)
    return with_classes(ArrayWorkload(arrivals, inp, out, stage=stage, segments_for=seg_for,
                                      max_model_len=max_model_len), cfg, seed)


register("workload", "closed_loop")(closed_loop_workload)


def build_workload(cfg: Any, seed: int | np.random.SeedSequence,
                   max_model_len: int | None = None) -> Workload:
    """The request stream of ``cfg`` (a workload config model or its dict form).

    ``max_model_len`` (when given) clips prompts to ``max_model_len - 1`` tokens and
    prompt + output to ``max_model_len``, counted in the workload's ``clipped``.
    """
    cfg = parse_workload_config(cfg)
    factory = get("workload", cfg.type)
    images = getattr(cfg, "images", None)
    if images is None or getattr(factory, "handles_images", False):
        return factory(cfg, seed, max_model_len)
    return with_images(factory(cfg, seed, None), images, seed, max_model_len)
