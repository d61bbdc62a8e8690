"""The collectives of a step: tensor-parallel all-reduces and expert-parallel all-to-alls (dispatch and combine),
priced on the scale-up link or on the placement's real path; and the expected load of the busiest EP GPU.

A mixin of `sim.cost.CostModel`, and the stand-alone alpha-beta `allreduce_time`.
"""
from __future__ import annotations

import math

from .errors import ConfigError
from .hardware import DTYPE_BYTES, get_link
from .models import ModelSpec


class CollectivePricing:
    """TP all-reduce and EP all-to-all pricing of `sim.cost.CostModel`."""

    def _allreduce_coefficients(self) -> tuple[float, float, float, float]:
        """(latency of a small message, latency of a large one, the size between them, seconds per byte
        of the ring's bus traffic) of one all-reduce over the scale-up link; all 0 without TP."""
        n = self.tp
        if n == 1:
            return 0.0, 0.0, 0.0, 0.0
        if self.allreduce is not None and not self._ideal:
            # a group off its GPUs' own NVLink fabric (across servers, over PCIe): the engine's custom one-shot
            # all-reduce needs NVLink peers (beyond two GPUs of one server), so every message pays the path's NCCL
            # latency, unless the placement says the custom kernel still runs (a third element, True)
            bw, latency, *custom = self.allreduce
            if custom and custom[0]:
                small = self.engine.allreduce_latency_s
                return small, max(small, latency), self.engine.small_allreduce_max_bytes, 2.0 * (n - 1) / n / bw
            small = max(self.engine.allreduce_latency_s, latency)
            return small, small, self.engine.small_allreduce_max_bytes, 2.0 * (n - 1) / n / bw
        link = self.gpu.scaleup or self.gpu.host_link
        spec = get_link(link)
        bw = spec.bw_gbps_per_direction * 1e9 * (1.0 if self._ideal else spec.achievable_fraction)
        if self._ideal:
            return 0.0, 0.0, math.inf, 2.0 * (n - 1) / n / bw
        small = self.engine.allreduce_latency_s
        large = max(small, self.k.nccl_allreduce_latency_s)
        return small, large, self.engine.small_allreduce_max_bytes, 2.0 * (n - 1) / n / bw

    def _allreduce_time(self, tokens: int, moe_tokens: int | None = None) -> float:
        """Both all-reduces of every layer (after attention and after the FFN) for `tokens` rows; under expert
        parallelism a MoE layer's FFN all-reduce is replaced by its dispatch and combine all-to-alls, over the
        `moe_tokens` of the lockstep group when the experts span one (default: the step's own tokens)."""
        small, large, limit, per_byte = self._collective
        if self.expert_parallel:
            m = self.model
            ep = m.num_moe_layers * 2 * self._ep_alltoall(tokens if moe_tokens is None else moe_tokens)
            if not per_byte:
                return ep                      # tp 1: attention needs no all-reduce, only the experts' all-to-alls
            msg = tokens * m.hidden_size * DTYPE_BYTES[self.act_dtype]
            one = (small if msg <= limit else large) + msg * per_byte
            return (m.num_layers + m.num_dense_layers) * one + ep
        if not per_byte:
            return 0.0
        msg = tokens * self.model.hidden_size * DTYPE_BYTES[self.act_dtype]
        one = (small if msg <= limit else large) + msg * per_byte
        return 2 * self.model.num_layers * one

    def _ep_alltoall(self, tokens: int) -> float:
        """One EP all-to-all over the `ep_size` GPUs holding the experts: each sends its 1/ep_size share of the
        `tokens` hidden states to the GPUs of their top-k experts (1/ep_size of them stay local); the hottest GPU
        receives `expert_skew` x the mean."""
        m, g = self.model, self.ep_size
        nbytes = tokens / g * m.experts_per_token * m.hidden_size * DTYPE_BYTES[self.act_dtype]
        if self._alltoall is not None:
            return self._alltoall(nbytes)
        if self._ideal:
            latency = 0.0
        else:
            latency = max(self.engine.allreduce_latency_s, self.k.nccl_allreduce_latency_s)
        spec = get_link(self.gpu.scaleup or self.gpu.host_link)
        bw = spec.bw_gbps_per_direction * 1e9 * (1.0 if self._ideal else spec.achievable_fraction)
        return latency + nbytes * (g - 1) / g * self.expert_skew / bw


def allreduce_time(nbytes: float, n: int, bus_bw: float, latency: float) -> float:
    """Seconds of one ring all-reduce of `nbytes` over `n` GPUs: latency + 2(n-1)/n x bytes / bus bandwidth.

    `bus_bw` is the achievable per-GPU bandwidth in one direction (NCCL's "busbw"); fitted on the Vidur
    DGX-A100 NCCL table in experiments/validation (family allreduce)."""
    if n <= 1:
        return 0.0
    return latency + 2.0 * (n - 1) / n * nbytes / bus_bw


def _expected_max_binomial(n: int, p: float, copies: int) -> float:
    """E[max] of `copies` independent Binomial(n, p) counts: sum over k >= 1 of P(max >= k) = 1 - F(k - 1)^copies.
    (Experts touched on the busiest of `copies` GPUs holding n experts each; treating the GPUs as independent
    gives 1.13 for Mixtral's top-2 of 8 experts on 4 GPUs at one token, against 1.14 exactly.)"""
    if p >= 1.0:
        return float(n)
    if p <= 0.0:
        return 0.0
    q = 1.0 - p
    total, cdf = 0.0, 0.0
    for k in range(n):
        cdf += math.comb(n, k) * p ** k * q ** (n - k)
        total += 1.0 - min(cdf, 1.0) ** copies
    return total


def check_ep_degree(ep: int, tp: int, name: str) -> None:
    """EP off (1), over a replica's TP GPUs (tp), or over data-parallel replicas of them (a multiple of tp); `name`
    says which input gave it (a config key or a command-line flag) in the one-line error."""
    if ep < 1 or (ep != 1 and ep % tp):
        raise ConfigError(f"{name}: expert parallelism spreads the experts over the replica's {tp} GPUs (ep {tp}) "
                          f"or over data-parallel replicas of them (a multiple of {tp}); use 1, {tp} or a multiple "
                          f"of {tp}")


def _validate_expert_parallel(model: ModelSpec, ep: int, skew: float) -> None:
    """EP spreads whole experts over its GPUs: a MoE model whose expert count the EP group divides."""
    if not model.is_moe:
        raise ConfigError(f"parallelism.ep: {model.name} has no experts; expert parallelism is for MoE models "
                          f"(set ep: 1)")
    if model.num_experts % ep:
        raise ConfigError(f"parallelism.ep={ep}: {model.name}'s {model.num_experts} experts do not split evenly over "
                          f"{ep} GPUs; use an ep that divides {model.num_experts}")
    if not skew >= 1.0:
        raise ConfigError(f"parallelism.expert_load_skew must be >= 1 (the hottest GPU's expert load over the mean), "
                          f"got {skew!r}")
