"""PowerInfer's hot/cold neuron split for one GPU: the frequently activated ("hot") FFN neurons live on the GPU,
the cold rest is computed by the CPU from host DRAM, and neurons a token leaves inactive (ReLU sparsity) are
skipped. A cost model with the `CostModel` pricing interface (config `powerinfer:`; docs/concepts/offloading.md).
"""
from __future__ import annotations

from .cost import BatchShape, CostModel
from .errors import ConfigError, DeploymentError
from .hardware import DTYPE_BYTES
from .weight_offload import _SKIP, FFN_OPS, PER_STEP_OPS, OffloadHardware


class HotColdCostModel:
    """PowerInfer's hot/cold neuron split of every FFN (the rest of the layer runs on the GPU).

    `hot_fraction` of each FFN's neurons (rows of up, columns of down) live on the GPU; the cold rest is
    computed by the CPU from host DRAM. A fraction `activation_sparsity` of the neurons is inactive for a
    token (ReLU zeros, found by PowerInfer's predictors) and skipped; with a batch of B tokens a neuron is
    needed when any token activates it, 1 - s^B of them when tokens are independent. Per layer:

        t = non-FFN GPU time + max(hot FFN on GPU, cold FFN on CPU) + sync (activations over PCIe, both ways)
    """

    def __init__(self, base: CostModel, hot_fraction: float, activation_sparsity: float = 0.0,
                 hardware: OffloadHardware | None = None) -> None:
        if not 0.0 <= hot_fraction <= 1.0:
            raise ConfigError(f"powerinfer.hot_fraction must be in [0, 1], got {hot_fraction!r}")
        if not 0.0 <= activation_sparsity < 1.0:
            raise ConfigError(f"powerinfer.activation_sparsity must be in [0, 1), got {activation_sparsity!r}")
        if base.model.is_moe or base.tp != 1:
            raise ConfigError("powerinfer: the hot/cold split is for a dense model on one GPU (tp=1)")
        self.base, self.hot, self.sparsity = base, hot_fraction, activation_sparsity
        self.hw = hardware or OffloadHardware.for_gpu(base.gpu)
        self.model, self.gpu, self.tp, self.engine = base.model, base.gpu, base.tp, base.engine
        self.weight_dtype, self.kv_dtype, self.act_dtype = base.weight_dtype, base.kv_dtype, base.act_dtype
        m = base.model
        wb = DTYPE_BYTES[base.weight_dtype]
        self._ffn_bytes = m.dense_ffn_params * wb                   # one layer's FFN weights
        self._ffn_flops_tok = 2.0 * m.dense_ffn_params               # per token, all neurons
        self._act_tok = m.hidden_size * DTYPE_BYTES[base.act_dtype]
        cold = (1.0 - hot_fraction) * self._ffn_bytes * m.num_layers
        if cold > self.hw.host_memory_bytes:
            raise DeploymentError(f"powerinfer: the cold FFN rows ({cold / 1e9:.1f} GB) do not fit in the "
                                  f"{self.hw.host_memory_bytes / 1e9:.0f} GB of host memory; raise hot_fraction or "
                                  f"give more host memory")

    @property
    def weight_bytes_per_gpu(self) -> float:
        """All weights but the cold FFN rows."""
        cold = (1.0 - self.hot) * self._ffn_bytes * self.model.num_layers
        return self.base.weight_bytes_per_gpu - cold

    @property
    def kv_bytes_per_token_per_gpu(self) -> float:
        """The KV stays on the GPU (attention runs there)."""
        return self.base.kv_bytes_per_token_per_gpu

    def active_fraction(self, tokens: float) -> float:
        """Fraction of an FFN's neurons some token of the step activates (1 - s^tokens)."""
        return 1.0 - self.sparsity ** max(tokens, 1.0)

    def layer_parts(self, b: BatchShape) -> tuple[float, float, float, float]:
        """(non-FFN GPU s, hot FFN GPU s, cold FFN CPU s, sync s) per layer of step `b`."""
        L = self.model.num_layers
        other = ffn = 0.0
        for op in self.base.breakdown(b):
            if op.name in PER_STEP_OPS or op.name == _SKIP:
                continue
            if op.name in FFN_OPS:
                ffn += op.time_s
            else:
                other += op.time_s
        need = self.active_fraction(b.tokens)
        gpu_ffn = ffn / L * self.hot * need
        cold = 1.0 - self.hot
        cpu_ffn = 0.0
        if cold > 0:
            cpu_ffn = max(cold * need * self._ffn_bytes / self.hw.host_mem_bw,
                          cold * (1.0 - self.sparsity) * b.tokens * self._ffn_flops_tok / self.hw.host_flops)
        sync = (2 * (b.tokens * self._act_tok / self.hw.pcie_bw + self.hw.pcie_latency_s)) if cold > 0 else 0.0
        return other / L, gpu_ffn, cpu_ffn, sync

    def step_time(self, b: BatchShape) -> float:
        """Seconds for one iteration of `b`."""
        if b.tokens == 0:
            return 0.0
        other, gpu_ffn, cpu_ffn, sync = self.layer_parts(b)
        step = sum(op.time_s for op in self.base.breakdown(b) if op.name in PER_STEP_OPS)
        t = self.model.num_layers * (other + max(gpu_ffn, cpu_ffn) + sync) + step
        e = self.engine
        host = e.host_time(b.prefill_seqs, b.decode_seqs, b.tokens)
        return max(t, host) if e.async_scheduling else t + host

    def decode_run_times(self, seqs: int, ctx_sum: int, steps: int):
        """`step_time` of each of `steps` pure-decode iterations, as a numpy array."""
        import numpy as np

        return np.array([self.step_time(BatchShape(tokens=seqs, sampled=seqs, decode_seqs=seqs,
                                                   decode_ctx=ctx_sum + i * seqs)) for i in range(steps)])


# ---------------------------------------------------------------------- throughput and policy search


__all__ = ["HotColdCostModel"]
