"""Build a request stream from a workload config and a seed.

`build_workload(cfg, seed)` looks the config's ``type`` up in the plugin registry (kind
``"workload"``) and calls the factory registered there, ``factory(cfg, seed, max_model_len)``.
The three built-in kinds are ``poisson`` (below), ``shared_prefix`` (`workloads.shared_prefix`)
and ``trace`` (`workloads.traces`). Randomness comes only from ``seed``: each component
(arrivals, input lengths, output lengths, prompt draws) gets its own child stream (see
`workloads.base.component_rng`), so the same seed gives the same requests, bit for bit.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from pydantic import TypeAdapter

from sim.registry import get, register

from . import shared_prefix as _shared_prefix  # noqa: F401  (registers "shared_prefix")
from . import traces as _traces  # noqa: F401  (registers "trace")
from .arrivals import poisson_stage_arrivals
from .base import ArrayWorkload, Workload, component_rng
from .config import PoissonWorkload, WorkloadConfig
from .lengths import sample_lengths

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
    inp = sample_lengths(cfg.input_len, n, component_rng(seed, "input_len"))
    out = sample_lengths(cfg.output_len, n, component_rng(seed, "output_len"))
    return ArrayWorkload(arrivals, inp, out, stage=stage, max_model_len=max_model_len)


def build_workload(cfg: Any, seed: int | np.random.SeedSequence,
                   max_model_len: int | None = None) -> Workload:
    """The request stream of ``cfg`` (a workload config model or its dict form).

    ``max_model_len`` (when given) clips prompts to ``max_model_len - 1`` tokens and
    prompt + output to ``max_model_len``, counted in the workload's ``clipped``.
    """
    cfg = parse_workload_config(cfg)
    factory = get("workload", cfg.type)
    return factory(cfg, seed, max_model_len)
