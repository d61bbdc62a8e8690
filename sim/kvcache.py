"""Paged KV-cache blocks of one replica, with prefix caching (vLLM V1 semantics).

**Blocks.** A replica's KV memory is cut into ``num_blocks`` fixed-size blocks of ``block_size``
tokens (PagedAttention). A sequence holding ``n`` tokens owns ``ceil(n / block_size)`` blocks, in
order; only its last block can be partly filled, so at most ``block_size - 1`` token slots are
wasted per sequence. A sequence grows one block at a time as it crosses a block boundary.

**Hash chain.** A *full* block's content is identified by a hash that chains the hash of the block
before it with the block's own tokens: ``h_b = hash((h_{b-1}, tokens_b))``. Two prompts thus share
block ``b`` only if they agree on every token up to the end of ``b`` -- exactly the condition under
which the KV values (which depend on all earlier tokens) are equal. The simulator has no token
ids, so a prompt is described by *segments* ``((key, n_tokens), ...)``: pieces of content named by
a hashable key (a system prompt id, a document id, "the 3rd turn of session 17", ...). A block's
identity is the tuple of ``(key, start, end)`` pieces it spans.

**Prefix cache and eviction.** A full block that has a hash is registered in a map
``hash -> block``. When its last user frees it, the block is *not* wiped: it joins the free queue
still carrying its hash, so a later prompt with the same prefix can take it back (a hit) for free.
The free queue holds every block with reference count 0 in LRU order; allocation pops the head, and
if that block still carries a hash, the hash is dropped from the map: that is an *eviction*. A
request frees its blocks tail-first, so its last blocks (the least likely to be shared) are
evicted before its first ones.

**Why the hit is capped.** Even a fully cached prompt must run at least one token through the
model to produce the logits of the first output token, so a hit covers at most
``num_prompt_tokens - 1`` tokens, rounded down to whole blocks (as in vLLM).

Hash values come from Python's ``hash`` and serve only as dictionary keys, so results do not depend
on ``PYTHONHASHSEED`` (short of a 64-bit collision).
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence

__all__ = ["KVCacheManager"]

Segments = Sequence[tuple[Hashable, int]]

_CHAIN_SEED = 0  # h_{-1}; a constant (hash(None) is address-based on Python 3.11)


class KVCacheManager:
    """Paged KV blocks of one replica: allocation per block as sequences grow, prefix caching with
    chained block hashes, LRU eviction of unreferenced cached blocks."""

    __slots__ = (
        "num_blocks", "block_size", "enable_prefix_caching",
        "_ref", "_hash", "_free", "_cache", "_req_blocks", "_req_ncached", "_hash_memo",
        "hit_tokens", "query_tokens", "evictions", "peak_used_blocks", "evict_hook",
    )

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        if num_blocks <= 0 or block_size <= 0:
            raise ValueError(f"num_blocks ({num_blocks}) and block_size ({block_size}) must be > 0")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        # Per-block state as flat lists indexed by block id: cheaper than block objects.
        self._ref: list[int] = [0] * num_blocks
        self._hash: list[int | None] = [None] * num_blocks
        # All blocks with refcount 0, in LRU order (head = next to reuse). An OrderedDict gives O(1)
        # popleft, append and remove-from-the-middle (a cache hit on an unreferenced block), in C.
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self._cache: dict[int, int] = {}  # block hash -> block id
        self._req_blocks: dict[int, list[int]] = {}
        # Per request: how many leading blocks have already been considered for registration.
        self._req_ncached: dict[int, int] = {}
        self._hash_memo: dict[tuple, tuple[int, ...]] = {}
        self.hit_tokens = 0
        self.query_tokens = 0
        self.evictions = 0
        self.peak_used_blocks = 0
        self.evict_hook = None   # callback(hash) when a cached block is evicted (offload to a lower tier)

    # ---- occupancy -------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        """Blocks an allocation may take now: never used, freed, or cached but unreferenced."""
        return len(self._free)

    @property
    def num_used_blocks(self) -> int:
        """Blocks referenced by at least one live sequence."""
        return self.num_blocks - len(self._free)

    @property
    def usage(self) -> float:
        """Fraction of blocks referenced by live sequences (0 to 1)."""
        return (self.num_blocks - len(self._free)) / self.num_blocks

    @property
    def num_cached_blocks(self) -> int:
        """Blocks currently registered in the prefix cache (referenced or evictable)."""
        return len(self._cache)

    def __contains__(self, req_id: int) -> bool:
        return req_id in self._req_blocks

    def num_blocks_of(self, req_id: int) -> int:
        """Blocks held by ``req_id`` (0 if it holds none)."""
        blocks = self._req_blocks.get(req_id)
        return len(blocks) if blocks is not None else 0

    def blocks_needed(self, req_id: int, num_tokens: int) -> int:
        """Extra blocks ``grow(req_id, num_tokens)`` would take (for an unknown request: all of
        them, ignoring possible cache hits)."""
        blocks = self._req_blocks.get(req_id)
        need = -(-num_tokens // self.block_size) - (len(blocks) if blocks is not None else 0)
        return need if need > 0 else 0

    # ---- hashing ---------------------------------------------------------------------------
    def block_hashes(self, segments: Segments | None, num_tokens: int) -> tuple[int, ...]:
        """Chained hashes of the full blocks among the first ``num_tokens`` tokens of a prompt made
        of ``segments``. Tokens beyond the segments' total are unidentified: they get no hash.

        Memoised per segments tuple (all full blocks are hashed on first sight), so a prompt that
        is looked up, allocated, grown and freed is hashed once per run.
        """
        if not segments or not self.enable_prefix_caching:
            return ()
        key = segments if type(segments) is tuple else tuple(segments)
        hashes = self._hash_memo.get(key)
        if hashes is None:
            hashes = self._hash_memo[key] = self._chain(key)
        n = num_tokens // self.block_size
        return hashes if n >= len(hashes) else hashes[:n]

    def _chain(self, segments: tuple) -> tuple[int, ...]:
        bs = self.block_size
        out: list[int] = []
        h = _CHAIN_SEED
        pieces: list[tuple] = []
        fill = 0
        for key, n in segments:
            pos = 0
            while pos < n:
                take = min(bs - fill, n - pos)
                pieces.append((key, pos, pos + take))
                pos += take
                fill += take
                if fill == bs:
                    h = hash((h, tuple(pieces)))
                    out.append(h)
                    pieces = []
                    fill = 0
        return tuple(out)

    def clear_hash_memo(self) -> None:
        """Forget memoised block hashes (memory only; results are unchanged)."""
        self._hash_memo.clear()

    # ---- prefix lookup ---------------------------------------------------------------------
    def lookup(self, hashes: Sequence[int], num_prompt_tokens: int) -> int:
        """Tokens of this prompt already in the cache: the longest cached prefix of ``hashes``, in
        whole blocks, capped at ``num_prompt_tokens - 1`` tokens. No side effects."""
        if not self.enable_prefix_caching:
            return 0
        bs = self.block_size
        limit = (num_prompt_tokens - 1) // bs
        if limit > len(hashes):
            limit = len(hashes)
        cache = self._cache
        k = 0
        while k < limit and hashes[k] in cache:
            k += 1
        return k * bs

    # ---- allocation ------------------------------------------------------------------------
    def allocate(self, req_id: int, num_tokens: int, hashes: Sequence[int] = (),
                 num_cached_tokens: int = 0, prompt_tokens: int | None = None, count: bool = True) -> bool:
        """First allocation of ``req_id`` (new, or resumed after preemption): take the cached blocks
        for the first ``num_cached_tokens`` tokens, then fresh blocks up to ``ceil(num_tokens/bs)``.
        All-or-nothing: returns False and changes nothing if the pool is short.

        ``prompt_tokens`` (default ``num_tokens``) is added to ``query_tokens``, and
        ``num_cached_tokens`` to ``hit_tokens``, only on success and with ``count`` (the engine passes
        False for a preempted request coming back, so the hit rate is that of the prompts as sent).
        """
        if req_id in self._req_blocks:
            raise ValueError(f"request {req_id} already holds KV blocks; use grow()")
        bs = self.block_size
        cache = self._cache
        ref = self._ref
        free = self._free
        hit: list[int] = []
        if num_cached_tokens:
            k, rem = divmod(num_cached_tokens, bs)
            if (rem or num_cached_tokens < 0 or num_cached_tokens > num_tokens
                    or k > len(hashes) or not self.enable_prefix_caching):
                raise ValueError(
                    f"num_cached_tokens={num_cached_tokens} must be a multiple of block_size={bs}, "
                    f"<= num_tokens={num_tokens}, covered by hashes, with prefix caching on")
            try:
                hit = [cache[h] for h in hashes[:k]]
            except KeyError:
                raise ValueError(f"request {req_id}: num_cached_tokens={num_cached_tokens} "
                                 "exceeds what lookup() finds in the cache") from None
        total = -(-num_tokens // bs)
        n_new = total - len(hit)
        # Hit blocks with refcount 0 sit in the free queue; taking them shrinks what is left.
        evictable_hits = 0
        for b in hit:
            if ref[b] == 0:
                evictable_hits += 1
        if n_new > len(free) - evictable_hits:
            return False
        for b in hit:
            if ref[b] == 0:
                del free[b]
            ref[b] += 1
        ncached = len(hit)  # hit blocks are registered already
        blocks = hit  # reuse the list: the request's blocks start with its hits
        if n_new > 0:
            blocks.extend(self._take(n_new))
        self._req_blocks[req_id] = blocks
        if hashes and self.enable_prefix_caching:
            ncached = self._register(blocks, hashes, ncached, num_tokens // bs)
        self._req_ncached[req_id] = ncached
        if count:
            self.hit_tokens += num_cached_tokens
            self.query_tokens += num_tokens if prompt_tokens is None else prompt_tokens
        used = self.num_blocks - len(free)
        if used > self.peak_used_blocks:
            self.peak_used_blocks = used
        return True

    def grow(self, req_id: int, num_tokens: int, hashes: Sequence[int] = ()) -> bool:
        """Extend ``req_id`` to ``ceil(num_tokens/bs)`` blocks and register blocks that became
        full. All-or-nothing: returns False and changes nothing if the pool is short."""
        blocks = self._req_blocks[req_id]  # KeyError on an unknown request, as documented
        bs = self.block_size
        n_new = -(-num_tokens // bs) - len(blocks)
        if n_new > 0:
            if n_new > len(self._free):
                return False
            blocks.extend(self._take(n_new))
            used = self.num_blocks - len(self._free)
            if used > self.peak_used_blocks:
                self.peak_used_blocks = used
        if hashes and self.enable_prefix_caching:
            start = self._req_ncached[req_id]
            self._req_ncached[req_id] = self._register(blocks, hashes, start, num_tokens // bs)
        return True

    def append_block(self, req_id: int) -> bool:
        """Give ``req_id`` one more block (a decoding sequence crossing a block boundary).

        The same as ``grow`` to one block more, without hashes; this is the engine's most frequent
        allocation, so it skips grow's arithmetic."""
        free = self._free
        if not free:
            return False
        b = free.popitem(last=False)[0]
        h = self._hash[b]
        if h is not None:
            del self._cache[h]
            self._hash[b] = None
            self.evictions += 1
            if self.evict_hook is not None:
                self.evict_hook(h)
        self._ref[b] = 1
        self._req_blocks[req_id].append(b)
        used = self.num_blocks - len(free)
        if used > self.peak_used_blocks:
            self.peak_used_blocks = used
        return True

    def append_blocks(self, req_ids: Sequence[int]) -> None:
        """``append_block`` for each of `req_ids`, in order (a fast-forwarded run's block boundaries); the caller
        checked that the pool holds them all."""
        owned = self._req_blocks
        for rid, b in zip(req_ids, self._take(len(req_ids))):
            owned[rid].append(b)
        used = self.num_blocks - len(self._free)     # nothing is freed in between: the last count is the peak
        if used > self.peak_used_blocks:
            self.peak_used_blocks = used

    def free(self, req_id: int, hashes: Sequence[int] = ()) -> None:
        """Release every block of ``req_id``. Full blocks with a hash in ``hashes`` are registered
        first, so a preempted request's generated tokens stay cacheable for its resumption."""
        blocks = self._req_blocks.pop(req_id)  # KeyError on an unknown request
        start = self._req_ncached.pop(req_id)
        if hashes and self.enable_prefix_caching:
            self._register(blocks, hashes, start, len(blocks))
        ref = self._ref
        free = self._free
        # Tail first: the request's last blocks reach the head of the LRU queue before its first
        # blocks, so they are evicted first (prefixes are the likeliest to be shared).
        for b in reversed(blocks):
            r = ref[b] - 1
            ref[b] = r
            if r == 0:
                free[b] = None

    # ---- internals -------------------------------------------------------------------------
    def _take(self, n: int) -> list[int]:
        """Pop ``n`` blocks from the LRU head (caller checked there are enough), evicting their
        cache entries."""
        popitem = self._free.popitem
        ref = self._ref
        bhash = self._hash
        out = []
        for _ in range(n):
            b = popitem(last=False)[0]
            h = bhash[b]
            if h is not None:
                del self._cache[h]
                bhash[b] = None
                self.evictions += 1
                if self.evict_hook is not None:
                    self.evict_hook(h)
            ref[b] = 1
            out.append(b)
        return out

    def _register(self, blocks: list[int], hashes: Sequence[int], start: int, n_full: int) -> int:
        """Register blocks ``start .. min(n_full, len(hashes), len(blocks))`` under their hashes,
        skipping hashes some other block already holds; return the new registration frontier."""
        end = min(n_full, len(hashes), len(blocks))
        if end <= start:
            return start
        cache = self._cache
        bhash = self._hash
        for i in range(start, end):
            h = hashes[i]
            if h not in cache:
                b = blocks[i]
                cache[h] = b
                bhash[b] = h
        return end

    def check_invariants(self) -> None:
        """Assert the bookkeeping is consistent (used by tests; O(num_blocks))."""
        ref, bhash, free = self._ref, self._hash, self._free
        assert all(r >= 0 for r in ref), "negative refcount"
        assert len(set(free)) == len(free)
        assert set(free) == {b for b, r in enumerate(ref) if r == 0}, \
            "free queue != blocks with refcount 0"
        assert len(free) + self.num_used_blocks == self.num_blocks
        counts = [0] * self.num_blocks
        for req_id, blocks in self._req_blocks.items():
            assert len(set(blocks)) == len(blocks), f"request {req_id} holds a block twice"
            assert 0 <= self._req_ncached[req_id] <= len(blocks)
            for b in blocks:
                counts[b] += 1
        assert counts == ref, "refcounts != number of requests holding each block"
        assert self._req_ncached.keys() == self._req_blocks.keys()
        for h, b in self._cache.items():
            assert bhash[b] == h, f"cache entry {h} -> block {b} which carries hash {bhash[b]}"
        assert sum(h is not None for h in bhash) == len(self._cache), "hashed block not in cache"
        if not self.enable_prefix_caching:
            assert not self._cache
        assert self.peak_used_blocks >= self.num_used_blocks
        assert 0 <= self.hit_tokens <= self.query_tokens
