"""Fit the cost model's kernel constants and the benchmark engines' overheads on the reference families.

    python -m experiments.validation.fit_kernels            # fit every family, print the values
    python -m experiments.validation.fit_kernels gemm       # one family

Each family fixes its own constants (see `FITS`), in dependency order: the GEMM curve first (Vidur
per-op profiles), then attention and all-reduce (which reuse the GEMM's per-kernel floor), then the
end-to-end families (gpt-fast, TensorRT-LLM, Splitwise), which reuse every kernel constant and fit only
what they alone see: weight-only dequantisation, MoE expert streaming and their engine's host costs.
The loss is a robust (soft-L1) least squares on log(predicted / measured), so one odd point cannot drag a
constant. The printed values are what sim/cost.py's `KernelConstants` defaults and
sim/catalog/engines.yaml hold (rounded); rerun `python -m experiments.validation.kernels` to check.
"""
from __future__ import annotations

import dataclasses
import sys

import numpy as np
from scipy.optimize import least_squares

from sim.cost import CONSTANTS, EngineProfile, KernelConstants, get_engine_profile

from . import kernels as K

# family -> [(owner, field, lower bound, upper bound)]; owner "k" = KernelConstants, else an engine profile
FITS: dict[str, list[tuple[str, str, float, float]]] = {
    "gemm": [("k", "gemm_compute_eff", 0.4, 1.0), ("k", "gemm_knee", 1.0, 20.0), ("k", "mem_eff", 0.5, 1.0),
             ("k", "kernel_floor_s", 0.0, 20e-6)],
    "elementwise": [("k", "elementwise_mem_eff", 0.2, 1.0)],
    "attention": [("k", "attn_decode_mem_eff", 0.5, 1.0), ("k", "attn_decode_seq_s", 0.0, 5e-6),
                  ("k", "attn_prefill_compute_eff", 0.05, 1.0), ("k", "attn_prefill_floor_s", 0.0, 50e-6),
                  ("k", "attn_prefill_token_s", 0.0, 1e-6)],
    "allreduce": [("k", "nccl_allreduce_latency_s", 0.0, 200e-6)],
    "gpt-fast": [("k", "int8_weight_only_mem_eff", 0.3, 1.0), ("k", "int4_weight_only_mem_eff", 0.2, 1.0),
                 ("gpt-fast", "step_overhead_s", 0.0, 2e-3),
                 ("gpt-fast", "allreduce_latency_s", 0.0, 100e-6)],
    "trtllm": [("trtllm", "step_overhead_s", 0.0, 5e-3), ("trtllm", "allreduce_latency_s", 0.0, 100e-6),
               ("trtllm", "elementwise_mem_eff", 0.2, 1.0)],
    "splitwise": [("splitwise", "step_overhead_s", 0.0, 0.05), ("splitwise", "per_seq_overhead_s", 0.0, 5e-3),
                  ("splitwise", "per_prefill_seq_overhead_s", 0.0, 0.2),
                  ("splitwise", "allreduce_latency_s", 0.0, 500e-6)],
}
LOSS: dict[str, str] = {}
# Families whose loss has several local minima get several starting points (the best fit is kept).
STARTS: dict[str, list[dict]] = {
    "splitwise": [{"per_seq_overhead_s": v, "per_prefill_seq_overhead_s": 0.01, "step_overhead_s": 0.0,
                   "allreduce_latency_s": 50e-6} for v in (1e-4, 3e-4)],
}
ORDER = ("gemm", "elementwise", "attention", "allreduce", "gpt-fast", "trtllm", "splitwise")


_PROFILE_FIELDS = {f.name for f in dataclasses.fields(EngineProfile)}


def _apply(spec, x, k: KernelConstants, profiles: dict) -> tuple[KernelConstants, dict]:
    """Constants and profile overrides for parameter vector x; a KernelConstants field named under an
    engine profile goes into that profile's kernel_overrides."""
    kc, prof = {}, {name: dict(v) for name, v in profiles.items()}
    for (owner, name, _, _), v in zip(spec, x):
        if owner == "k":
            kc[name] = float(v)
        elif name in _PROFILE_FIELDS:
            prof.setdefault(owner, {})[name] = float(v)
        else:
            p = prof.setdefault(owner, {})
            p["kernel_overrides"] = {**p.get("kernel_overrides", {}), name: float(v)}
    return dataclasses.replace(k, **kc), prof


def _value(owner: str, name: str, k: KernelConstants, profiles: dict) -> float:
    if owner == "k":
        return getattr(k, name)
    p = profiles.get(owner, {})
    if name in _PROFILE_FIELDS:
        return p.get(name, getattr(get_engine_profile(owner), name))
    return p.get("kernel_overrides", get_engine_profile(owner).kernel_overrides).get(name, getattr(k, name))


def fit_family(family: str, k: KernelConstants = CONSTANTS, profiles: dict | None = None):
    """Least-squares fit of one family's constants, the others held; returns (constants, profiles, result)."""
    profiles = profiles or {}
    best = None
    for start in STARTS.get(family, [None]):
        prof = profiles
        if start:
            owner = FITS[family][0][0]
            prof = {**profiles, owner: {**profiles.get(owner, {}), **start}}
        fit = _fit_once(family, k, prof)
        if best is None or fit[2].cost < best[2].cost:
            best = fit
    return best


def _fit_once(family: str, k: KernelConstants, profiles: dict):
    spec = FITS[family]
    x0 = np.array([_value(o, n, k, profiles) for o, n, _, _ in spec], dtype=float)
    lo = np.array([s[2] for s in spec])
    hi = np.array([s[3] for s in spec])
    scale = np.maximum(np.abs(x0), (hi - lo) * 1e-3)
    accept = K.ACCEPT_FILTERS.get(family, lambda p: p)

    def residuals(z):
        kk, pp = _apply(spec, z * scale, k, profiles)
        pts = accept(K.FAMILIES[family](kk, pp))
        return np.log(np.array([p.predicted / p.measured for p in pts]))

    res = least_squares(residuals, np.clip(x0, lo, hi) / scale, bounds=(lo / scale, hi / scale),
                        loss=LOSS.get(family, "soft_l1"), f_scale=0.1, x_scale=1.0)
    kk, pp = _apply(spec, res.x * scale, k, profiles)
    return kk, pp, res


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    families = [f for f in ORDER if not argv or f in argv]
    k, profiles = CONSTANTS, {}
    for fam in families:
        k, profiles, res = fit_family(fam, k, profiles)
        err = np.abs(np.expm1(res.fun))
        print(f"[{fam}] n={len(err)} median {np.median(err):.1%} p90 {np.quantile(err, 0.9):.1%}")
        for owner, name, _, _ in FITS[fam]:
            v = _value(owner, name, k, profiles)
            print(f"    {owner + '.' if owner != 'k' else ''}{name} = {v:.4g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
