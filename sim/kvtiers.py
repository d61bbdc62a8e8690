"""Host DRAM and NVMe tiers below a replica's GPU prefix cache (vLLM's CPU offloading connector, LMCache).

When the GPU prefix cache evicts an unreferenced block to make room, its KV is not lost: it goes
down to host memory (and from there, when host memory is full, to NVMe), each tier an LRU of block
hashes with a capacity in blocks. A later prompt whose prefix continues past what the GPU still
holds looks the chain up in the tiers below; the blocks it finds there are loaded back over the
GPU's links (host -> GPU over PCIe; NVMe -> GPU through the host) instead of being recomputed.

Costs: stores are copies that run in the background (they take link bandwidth, not GPU time), one
flow per direction per step for the blocks the step's allocations displaced; loads are copies the
step that admits the request waits for, as with swap-in. Counted: hit tokens
per tier, stored and loaded bytes.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence


class KVTiers:
    """LRU host and NVMe tiers of block hashes, and the copies pending for the next step."""

    __slots__ = ("host_blocks", "nvme_blocks", "block_bytes_per_gpu", "block_size", "_host", "_nvme", "_move",
                 "pending_host", "pending_nvme", "store_host", "store_nvme", "host_hit_tokens", "nvme_hit_tokens", "stored_bytes",
                 "loaded_bytes", "demoted_blocks")

    def __init__(self, host_blocks: int, nvme_blocks: int, block_bytes_per_gpu: float, block_size: int,
                 move: Callable[[str, float], object]) -> None:
        """`move(direction, bytes_per_gpu)` copies each TP shard: "out" GPU->host, "in" host->GPU, "nvme-out"
        host->NVMe, "nvme-in" NVMe->GPU; it returns a SimPy event."""
        self.host_blocks = host_blocks
        self.nvme_blocks = nvme_blocks
        self.block_bytes_per_gpu = block_bytes_per_gpu
        self.block_size = block_size
        self._host: OrderedDict[int, None] = OrderedDict()
        self._nvme: OrderedDict[int, None] = OrderedDict()
        self._move = move
        self.pending_host = 0          # blocks to load from each tier before the next step
        self.pending_nvme = 0
        self.store_host = 0            # blocks to copy down (GPU -> host, host -> NVMe), started with the next step
        self.store_nvme = 0
        self.host_hit_tokens = 0
        self.nvme_hit_tokens = 0
        self.stored_bytes = 0.0        # per GPU, GPU -> host and host -> NVMe
        self.loaded_bytes = 0.0        # per GPU, host/NVMe -> GPU
        self.demoted_blocks = 0

    @property
    def pending(self) -> bool:
        """Copies are queued for the next step (loads it waits for, stores it does not)."""
        return bool(self.pending_host or self.pending_nvme or self.store_host or self.store_nvme)

    def evicted(self, h: int) -> None:
        """The GPU cache dropped the block with hash `h`: keep it in host memory (copied out in the background),
        pushing host memory's least recently used block down to NVMe when full."""
        host = self._host
        if h in host:
            host.move_to_end(h)
            return
        if not self.host_blocks:
            self._to_nvme(h, from_gpu=True)
            return
        if len(host) >= self.host_blocks:
            old, _ = host.popitem(last=False)
            self._to_nvme(old, from_gpu=False)
        host[h] = None
        self._nvme.pop(h, None)
        self.store_host += 1

    def _to_nvme(self, h: int, from_gpu: bool) -> None:
        if not self.nvme_blocks:
            return
        nvme = self._nvme
        if h in nvme:
            nvme.move_to_end(h)
            return
        if len(nvme) >= self.nvme_blocks:
            nvme.popitem(last=False)
        nvme[h] = None
        self.demoted_blocks += 1
        self.store_nvme += 1

    def lookup(self, hashes: Sequence[int], start: int, limit: int) -> int:
        """Blocks of the chain `hashes[start:limit]` found in the tiers, contiguously from `start`. No side effects."""
        host, nvme = self._host, self._nvme
        k = start
        while k < limit and (hashes[k] in host or hashes[k] in nvme):
            k += 1
        return k - start

    def load(self, hashes: Sequence[int]) -> None:
        """Queue the loads of these blocks (found by `lookup`) for the next step; host hits become most recent."""
        host, nvme = self._host, self._nvme
        bs = self.block_size
        for h in hashes:
            if h in nvme and h not in host:
                nvme.move_to_end(h)
                self.pending_nvme += 1
                self.nvme_hit_tokens += bs
            else:
                # in host memory (or displaced from it by this very admission's GPU allocation, after the lookup
                # found it: the copy is taken before the slot is reused)
                if h in host:
                    host.move_to_end(h)
                self.pending_host += 1
                self.host_hit_tokens += bs

    def flush(self, env):
        """SimPy generator: start the queued stores (one flow per direction, in the background), then run the
        queued loads (host, then NVMe) and wait for them."""
        for direction, blocks in (("out", self.store_host), ("nvme-out", self.store_nvme)):
            if blocks:
                nbytes = blocks * self.block_bytes_per_gpu
                self.stored_bytes += nbytes
                self._move(direction, nbytes)
        self.store_host = self.store_nvme = 0
        for direction in ("in", "nvme-in"):
            blocks = self.pending_host if direction == "in" else self.pending_nvme
            if not blocks:
                continue
            if direction == "in":
                self.pending_host = 0
            else:
                self.pending_nvme = 0
            nbytes = blocks * self.block_bytes_per_gpu
            self.loaded_bytes += nbytes
            yield self._move(direction, nbytes)
