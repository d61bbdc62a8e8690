"""Energy per token from board power (TDP).

Energy is power integrated over time. servesim has no power trace, and the one power figure the
catalogue holds for (most) parts is the datasheet TDP: the most the board draws under sustained load.
The TDP model charges it for every second a GPU runs an iteration, so

    energy per token = TDP x step time / tokens of the step

is an upper estimate for busy time (memory-bound decode often draws less than TDP). Time a GPU sits idle
is charged `idle_fraction` x TDP; the default is 0 because ../shared/reference holds no idle-power
measurement, and `energy_summary` reports the other bound too: the GPUs held for the whole run at TDP.
Pass `idle_fraction` (e.g. a nvidia-smi reading of your idle board / its TDP) to charge idle time.

Edge devices (phones, laptops, Jetson modules) run one user's decode from unified memory: their J/token is
the SoC's power x the decode step / 1 token. Parts whose catalogue entry has no TDP (Apple, Qualcomm publish
none) need the power given (`power_w`).
"""
from __future__ import annotations

import math

from .errors import ConfigError
from .hardware import GPUSpec

J_PER_KWH = 3.6e6


def energy_per_token_j(power_w: float, step_time_s: float, tokens: float) -> float:
    """Joules per token of an iteration that takes `step_time_s` on a device drawing `power_w` and yields
    `tokens` tokens (generated tokens for decode, prompt tokens for prefill)."""
    if tokens <= 0:
        raise ConfigError(f"energy per token needs tokens > 0, got {tokens!r}")
    return power_w * step_time_s / tokens


def device_power_w(gpu: GPUSpec, power_w: float | None = None) -> float | None:
    """The power to charge for `gpu`: `power_w` when given, else its TDP, else None (unknown)."""
    if power_w is not None:
        if not (math.isfinite(power_w) and power_w > 0):
            raise ConfigError(f"--power-w must be a finite number > 0 (watts), got {power_w!r}")
        return float(power_w)
    return gpu.tdp_w


def is_unified_memory(gpu: GPUSpec) -> bool:
    """True for an edge SoC whose CPU and GPU share one DRAM (host link `soc-unified-memory`)."""
    return gpu.host_link == "soc-unified-memory"


def energy_summary(tdp_w: float | None, gpus: int, busy_s: float, sim_s: float, output_tokens: int,
                   idle_fraction: float = 0.0) -> dict:
    """Energy of a run of `gpus` GPUs for the run summary.

    `busy_s`: seconds each GPU spent running iterations, averaged over the GPUs (sum over replicas of busy
    time x the replica's GPUs, / `gpus`); `sim_s`: the simulated time. Busy time is charged at TDP, idle
    time at `idle_fraction` x TDP. `allocated_*` charge TDP for the whole run (the GPUs held throughout).
    With no TDP every figure is None."""
    if not 0.0 <= idle_fraction <= 1.0:
        raise ConfigError(f"energy.idle_fraction must be in [0, 1], got {idle_fraction!r}")
    keys = ("energy_j", "energy_kwh", "j_per_output_token", "mean_power_w", "allocated_energy_j",
            "allocated_j_per_output_token")
    out = {"tdp_w": tdp_w, "gpus": gpus, "busy_s": busy_s, "utilization": busy_s / sim_s if sim_s > 0 else None,
           "idle_fraction": idle_fraction}
    if tdp_w is None or gpus <= 0:
        return {**out, **dict.fromkeys(keys)}
    busy = min(max(busy_s, 0.0), sim_s) if sim_s > 0 else max(busy_s, 0.0)
    idle = max(sim_s - busy, 0.0)
    energy = gpus * tdp_w * (busy + idle_fraction * idle)
    allocated = gpus * tdp_w * max(sim_s, busy)
    per = (lambda e: e / output_tokens) if output_tokens > 0 else (lambda e: None)
    return {**out, "energy_j": energy, "energy_kwh": energy / J_PER_KWH, "j_per_output_token": per(energy),
            "mean_power_w": energy / sim_s if sim_s > 0 else None, "allocated_energy_j": allocated,
            "allocated_j_per_output_token": per(allocated)}


__all__ = ["J_PER_KWH", "device_power_w", "energy_per_token_j", "energy_summary", "is_unified_memory"]
