"""KV allocation and preemption modes as registered choices (kinds ``"kv_allocation"`` and ``"preemption"``).

Each is a small factory the runner calls while building a replica, so the config names pick real
behaviour: ``kv_allocation`` decides how many tokens a request reserves when it is admitted, and
``engine.preemption_mode`` decides what a preempted request's KV becomes.
"""
from __future__ import annotations

from collections.abc import Callable

from sim.registry import register
from sim.swap import HostSwap


@register("kv_allocation", "paged")
def paged(max_model_len: int) -> int:
    """PagedAttention (vLLM): blocks are taken as a sequence grows, so memory holds only tokens that exist.

    Returns the tokens reserved at admission: none beyond what the first step computes.
    """
    return 0


@register("kv_allocation", "contiguous")
def contiguous(max_model_len: int) -> int:
    """Pre-PagedAttention baseline (FasterTransformer, Orca): each request reserves max_model_len tokens when admitted.

    The reservation is held until the request finishes: the unused tail is internal fragmentation,
    and fewer sequences fit at once (Kwon et al., SOSP'23, section 2.3). Prefix sharing is impossible.
    """
    return max_model_len


@register("preemption", "recompute")
def recompute(capacity_blocks: int, block_bytes_per_gpu: float, move: Callable) -> None:
    """Free the victim's KV; its prompt and generated tokens are recomputed when it resumes (vLLM V1)."""
    return None


@register("preemption", "swap")
def swap(capacity_blocks: int, block_bytes_per_gpu: float, move: Callable) -> HostSwap:
    """Copy the victim's KV blocks to host memory over PCIe and back when it resumes (vLLM V0 `--swap-space`).

    The copies are flows on the GPU-host links and delay the steps that issue them; a victim that
    does not fit the swap space is recomputed instead.
    """
    return HostSwap(capacity_blocks, block_bytes_per_gpu, move)
