"""Host memory as a swap space for preempted requests' KV blocks (vLLM's ``--swap-space``).

Swapping trades PCIe time for recomputation: the victim's blocks are copied to pinned host memory
and copied back when it resumes, instead of being recomputed from the prompt. The copies are flows
on the replica's GPU-host links (`sim.links.FlowNetwork`), so they take time, share bandwidth with
other transfers (KV offload, PD transfers) and delay the step that issues them, as vLLM issues them on
the compute stream before the forward pass. Host capacity is counted in blocks; a victim that does
not fit is recomputed instead.
"""
from __future__ import annotations

from collections.abc import Callable


class HostSwap:
    """Swap space of one replica: capacity in blocks, and the copies pending for the next step."""

    __slots__ = ("capacity_blocks", "block_bytes_per_gpu", "used_blocks", "pending_out", "pending_in",
                 "out_bytes", "in_bytes", "_move")

    def __init__(self, capacity_blocks: int, block_bytes_per_gpu: float,
                 move: Callable[[str, float], object]) -> None:
        """`move(direction, bytes_per_gpu)` starts the copy of each TP shard over its GPU's host link
        ("out": GPU to host, "in": host to GPU) and returns a SimPy event that fires when all are done."""
        self.capacity_blocks = capacity_blocks
        self.block_bytes_per_gpu = block_bytes_per_gpu
        self.used_blocks = 0
        self.pending_out = 0        # blocks to copy out / in at the start of the next step
        self.pending_in = 0
        self.out_bytes = 0.0        # per GPU, over the run
        self.in_bytes = 0.0
        self._move = move

    @property
    def pending(self) -> bool:
        """Copies are waiting to run before the next step's forward pass."""
        return bool(self.pending_out or self.pending_in)

    def reserve(self, blocks: int) -> bool:
        """Room for a victim's `blocks` (and its copy out queued); False when the swap space is full."""
        if self.used_blocks + blocks > self.capacity_blocks:
            return False
        self.used_blocks += blocks
        self.pending_out += blocks
        return True

    def release(self, blocks: int) -> None:
        """A swapped request comes back: its copy in is queued and its host blocks are freed."""
        self.used_blocks -= blocks
        self.pending_in += blocks

    def flush(self, env):
        """SimPy generator: run the queued copies, out first then in (one CUDA stream: they serialise)."""
        for direction in ("out", "in"):
            blocks = self.pending_out if direction == "out" else self.pending_in
            if not blocks:
                continue
            nbytes = blocks * self.block_bytes_per_gpu
            if direction == "out":
                self.pending_out = 0
                self.out_bytes += nbytes
            else:
                self.pending_in = 0
                self.in_bytes += nbytes
            yield self._move(direction, nbytes)
