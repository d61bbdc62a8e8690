"""Tests of the paged KV block manager and its prefix cache (sim/kvcache.py)."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.kvcache import KVCacheManager

BS = 16


def stats(kv: KVCacheManager) -> tuple:
    return (kv.num_free_blocks, kv.num_used_blocks, kv.hit_tokens, kv.query_tokens,
            kv.evictions, kv.peak_used_blocks, kv.num_cached_blocks)


def prompt(kv: KVCacheManager, segments, n=None):
    n = sum(t for _, t in segments) if n is None else n
    return kv.block_hashes(segments, n), n


# ---- closed form -------------------------------------------------------------------------------
def test_blocks_follow_ceil_of_tokens():
    kv = KVCacheManager(10, BS)
    assert kv.allocate(1, 33)
    assert kv.num_blocks_of(1) == 3 and kv.num_used_blocks == 3 and kv.num_free_blocks == 7
    assert kv.blocks_needed(1, 48) == 0
    assert kv.grow(1, 48) and kv.num_blocks_of(1) == 3
    assert kv.blocks_needed(1, 49) == 1
    assert kv.grow(1, 49) and kv.num_blocks_of(1) == 4 and kv.num_free_blocks == 6
    assert kv.usage == pytest.approx(0.4)
    kv.check_invariants()
    kv.free(1)
    assert kv.num_free_blocks == 10 and kv.num_used_blocks == 0 and kv.num_blocks_of(1) == 0
    assert kv.peak_used_blocks == 4
    kv.check_invariants()


def test_fresh_pool_hands_out_blocks_in_id_order():
    kv = KVCacheManager(6, BS)
    kv.allocate(1, 40)
    kv.allocate(2, 20)
    assert kv._req_blocks == {1: [0, 1, 2], 2: [3, 4]}


# ---- all-or-nothing ----------------------------------------------------------------------------
def test_failed_allocate_changes_nothing():
    kv = KVCacheManager(4, BS)
    h, n = prompt(kv, (("a", 80),))
    before = stats(kv)
    assert not kv.allocate(1, n, h)
    assert stats(kv) == before and 1 not in kv and kv.num_free_blocks == 4
    kv.check_invariants()
    assert kv.allocate(1, 64, h) and kv.num_free_blocks == 0


def test_failed_grow_changes_nothing():
    kv = KVCacheManager(4, BS)
    assert kv.allocate(1, 40)
    before = stats(kv)
    assert not kv.grow(1, 80)  # needs 2 more, 1 left
    assert stats(kv) == before and kv.num_blocks_of(1) == 3
    assert kv.grow(1, 64) and kv.num_free_blocks == 0
    kv.check_invariants()


def test_failed_allocate_counts_evictable_hits_as_taken():
    # 4 blocks; "a" leaves 2 cached evictable blocks. A request hitting those 2 and needing 3 more
    # must fail: after taking its hits only 2 free blocks remain.
    kv = KVCacheManager(4, BS)
    h, n = prompt(kv, (("a", 32), ("x", 48)))
    assert kv.allocate(1, 32, h)
    kv.free(1)
    assert kv.lookup(h, n) == 32
    before = stats(kv)
    assert not kv.allocate(2, n, h, num_cached_tokens=32)
    assert stats(kv) == before
    kv.check_invariants()
    assert kv.allocate(2, 64, h, num_cached_tokens=32) and kv.num_free_blocks == 0


# ---- prefix caching ----------------------------------------------------------------------------
def test_shared_first_segment_shares_exactly_two_blocks():
    kv = KVCacheManager(20, BS)
    h1, n1 = prompt(kv, (("sys", 40), ("q1", 30)))
    h2, n2 = prompt(kv, (("sys", 40), ("q2", 30)))
    assert h1[:2] == h2[:2] and h1[2] != h2[2] and len(h1) == 4
    assert kv.lookup(h1, n1) == 0
    assert kv.allocate(1, n1, h1)
    assert kv.lookup(h2, n2) == 32
    assert kv.allocate(2, n2, h2, num_cached_tokens=32)
    shared = set(kv._req_blocks[1]) & set(kv._req_blocks[2])
    assert shared == set(kv._req_blocks[1][:2])
    assert kv.num_used_blocks == 5 + 3
    assert (kv.hit_tokens, kv.query_tokens) == (32, 140)
    kv.check_invariants()


def test_same_prompt_hit_is_capped_below_prompt_length():
    kv = KVCacheManager(20, BS)
    h, n = prompt(kv, (("doc", 64),))
    assert len(h) == 4
    kv.allocate(1, n, h)
    assert kv.lookup(h, 64) == 48  # one token must still be computed -> 3 whole blocks
    assert kv.lookup(h, 65) == 64
    assert kv.lookup(h, 1) == 0


def test_different_keys_do_not_hit():
    kv = KVCacheManager(20, BS)
    ha, n = prompt(kv, (("a", 64),))
    hb, _ = prompt(kv, (("b", 64),))
    kv.allocate(1, n, ha)
    assert kv.lookup(hb, n) == 0
    # Same key but a different position of the piece also differs: chaining, not content bags.
    hc, _ = prompt(kv, (("x", 16), ("a", 48)))
    assert kv.lookup(hc, 64) == 0


def test_block_hashes_prefix_and_memo():
    kv = KVCacheManager(8, BS)
    seg = (("a", 40), ("b", 30))
    full = kv.block_hashes(seg, 70)
    assert len(full) == 4
    assert kv.block_hashes(seg, 47) == full[:2]
    assert kv.block_hashes(seg, 1000) == full  # tokens beyond the segments carry no identity
    assert kv.block_hashes(list(seg), 70) == full
    assert kv.block_hashes(None, 70) == () and kv.block_hashes((), 70) == ()
    # A longer stream of the same key shares its leading blocks.
    assert kv.block_hashes((("a", 100),), 100)[:2] == full[:2]


def test_allocate_rejects_unbacked_cached_tokens():
    kv = KVCacheManager(8, BS)
    h, n = prompt(kv, (("a", 64),))
    with pytest.raises(ValueError):
        kv.allocate(1, n, h, num_cached_tokens=16)  # nothing cached yet
    with pytest.raises(ValueError):
        kv.allocate(1, n, h, num_cached_tokens=10)  # not whole blocks
    assert 1 not in kv
    kv.check_invariants()


def test_cached_blocks_survive_free_and_are_hit_later():
    kv = KVCacheManager(8, BS)
    h, n = prompt(kv, (("doc", 50),))
    kv.allocate(1, n, h)
    kv.free(1)
    assert kv.num_free_blocks == 8 and kv.num_cached_blocks == 3
    assert kv.lookup(h, n) == 48
    cached = [kv._cache[x] for x in h]
    assert kv.allocate(2, n, h, num_cached_tokens=48)
    assert kv._req_blocks[2][:3] == cached
    assert kv.evictions == 0
    kv.check_invariants()


def test_lru_evicts_oldest_freed_first_and_tail_before_head():
    kv = KVCacheManager(6, BS)
    ha, _ = prompt(kv, (("a", 48),))
    hb, _ = prompt(kv, (("b", 48),))
    kv.allocate(1, 48, ha)  # blocks 0,1,2
    kv.allocate(2, 48, hb)  # blocks 3,4,5
    kv.free(1)              # freed first -> older; queue a2,a1,a0 (tail first)
    kv.free(2)              # queue a2,a1,a0,b2,b1,b0
    assert list(kv._free) == [2, 1, 0, 5, 4, 3]
    assert kv.lookup(ha, 49) == 48 and kv.lookup(hb, 49) == 48
    kv.allocate(3, 16)      # evicts a's tail block only
    assert kv.evictions == 1
    assert kv.lookup(ha, 49) == 32 and kv.lookup(hb, 49) == 48
    kv.allocate(4, 32)      # then a's middle and head
    assert kv.lookup(ha, 49) == 0 and kv.lookup(hb, 49) == 48
    kv.allocate(5, 16)      # b's tail goes next, b's head stays
    assert kv.lookup(hb, 49) == 32 and kv.evictions == 4
    kv.check_invariants()


def test_hit_on_unreferenced_block_refreshes_its_lru_position():
    kv = KVCacheManager(4, BS)
    ha, _ = prompt(kv, (("a", 16),))
    hb, _ = prompt(kv, (("b", 16),))
    kv.allocate(1, 16, ha)
    kv.allocate(2, 16, hb)
    kv.free(1)
    kv.free(2)              # queue: 2, 3, a, b   (a older than b)
    kv.allocate(3, 16, ha, num_cached_tokens=16)  # a leaves the queue
    kv.free(3)              # a is now the most recently freed
    kv.allocate(4, 48)      # takes 2, 3 and then b
    assert kv.lookup(ha, 17) == 16 and kv.lookup(hb, 17) == 0
    kv.check_invariants()


def test_shared_block_freed_only_when_last_holder_frees():
    kv = KVCacheManager(10, BS)
    h, n = prompt(kv, (("sys", 32), ("u", 10)))
    kv.allocate(1, n, h)
    kv.allocate(2, n, h, num_cached_tokens=kv.lookup(h, n))
    shared = kv._req_blocks[1][:2]
    assert kv._req_blocks[2][:2] == shared
    assert [kv._ref[b] for b in shared] == [2, 2]
    assert kv.num_used_blocks == 4
    kv.check_invariants()
    kv.free(1)
    assert [kv._ref[b] for b in shared] == [1, 1] and kv.num_used_blocks == 3
    assert not any(b in kv._free for b in shared)
    kv.check_invariants()
    kv.free(2)
    assert kv.num_used_blocks == 0 and all(b in kv._free for b in shared)
    kv.check_invariants()


def test_duplicate_content_is_registered_once():
    # Two requests computing the same prefix concurrently (no hit for the second): only the first
    # block set is cached; the duplicate blocks become plain free blocks when released.
    kv = KVCacheManager(10, BS)
    h, n = prompt(kv, (("a", 32),))
    kv.allocate(1, n, h)
    kv.allocate(2, n, h)
    assert kv.num_cached_blocks == 2
    assert all(kv._cache[x] in kv._req_blocks[1] for x in h)
    kv.free(2)
    kv.free(1)
    assert kv.num_cached_blocks == 2
    kv.check_invariants()


def test_grow_registers_blocks_that_became_full():
    kv = KVCacheManager(10, BS)
    seg = (("a", 100),)
    kv.allocate(1, 20, kv.block_hashes(seg, 20))  # block 0 full, block 1 partial
    assert kv.num_cached_blocks == 1
    kv.grow(1, 32, kv.block_hashes(seg, 32))      # block 1 full now, no new block
    assert kv.num_blocks_of(1) == 2 and kv.num_cached_blocks == 2
    assert kv.lookup(kv.block_hashes(seg, 100), 100) == 32


def test_free_with_hashes_keeps_generated_tokens_cacheable():
    kv = KVCacheManager(10, BS)
    prompt_seg = (("p", 20),)
    h, n = prompt(kv, prompt_seg)
    kv.allocate(7, n, h)
    kv.grow(7, 52)  # decoded 32 tokens without telling the cache about them
    assert kv.num_cached_blocks == 1
    resumed = prompt_seg + (("out-7", 32),)
    h_all = kv.block_hashes(resumed, 52)
    assert len(h_all) == 3 and h_all[0] == h[0]
    kv.free(7, h_all)  # preempted: generated blocks get registered on the way out
    assert kv.num_cached_blocks == 3
    hit = kv.lookup(h_all, 52)
    assert hit == 48
    assert kv.allocate(7, 52, h_all, num_cached_tokens=hit)
    assert kv.hit_tokens == 48
    kv.check_invariants()


def test_caching_disabled():
    kv = KVCacheManager(10, BS, enable_prefix_caching=False)
    seg = (("a", 64),)
    assert kv.block_hashes(seg, 64) == ()
    fake = (11, 22, 33, 44)
    kv.allocate(1, 64, fake)
    kv.free(1, fake)
    assert kv.lookup(fake, 64) == 0 and kv.num_cached_blocks == 0
    kv.allocate(2, 64, fake)
    assert kv.evictions == 0 and kv.hit_tokens == 0
    with pytest.raises(ValueError):
        kv.allocate(3, 64, fake, num_cached_tokens=16)
    kv.check_invariants()


def test_programming_errors_raise():
    kv = KVCacheManager(10, BS)
    kv.allocate(1, 10)
    with pytest.raises(ValueError):
        kv.allocate(1, 10)
    with pytest.raises(KeyError):
        kv.grow(2, 10)
    with pytest.raises(KeyError):
        kv.free(2)
    kv.free(1)
    with pytest.raises(KeyError):
        kv.free(1)


def test_check_invariants_detects_corruption():
    kv = KVCacheManager(4, BS)
    h, n = prompt(kv, (("a", 32),))
    kv.allocate(1, n, h)
    kv._ref[0] += 1
    with pytest.raises(AssertionError):
        kv.check_invariants()
    kv._ref[0] -= 1
    kv._hash[kv._cache[h[0]]] = 12345
    with pytest.raises(AssertionError):
        kv.check_invariants()


# ---- property test -----------------------------------------------------------------------------
PROMPTS = [
    (("sys", 40), ("q1", 30)),
    (("sys", 40), ("q2", 50)),
    (("doc", 64),),
    (("doc", 33), ("tail", 7)),
    (("other", 5),),
]

op = st.one_of(
    st.tuples(st.just("alloc"), st.integers(0, 5), st.integers(0, len(PROMPTS) - 1),
              st.booleans()),
    st.tuples(st.just("grow"), st.integers(0, 5), st.integers(1, 40), st.booleans()),
    st.tuples(st.just("free"), st.integers(0, 5), st.booleans(), st.just(0)),
    st.tuples(st.just("lookup"), st.integers(0, len(PROMPTS) - 1), st.just(0), st.just(0)),
)


@settings(max_examples=300, deadline=None)
@given(ops=st.lists(op, max_size=60), num_blocks=st.integers(1, 24),
       caching=st.booleans(), bs=st.sampled_from([1, 4, 16]))
def test_random_operations_keep_invariants_and_never_leak(ops, num_blocks, caching, bs):
    kv = KVCacheManager(num_blocks, bs, enable_prefix_caching=caching)
    live: dict[int, tuple] = {}  # req -> (segments, tokens held)
    for kind, a, b, c in ops:
        if kind == "alloc" and a not in live:
            seg = PROMPTS[b]
            n = sum(t for _, t in seg)
            h = kv.block_hashes(seg, n)
            hit = kv.lookup(h, n) if c else 0
            assert 0 <= hit < max(n, 1) and hit % bs == 0
            before = stats(kv)
            if kv.allocate(a, n, h, num_cached_tokens=hit):
                live[a] = (seg + ((f"out-{a}", 0),), n)
                assert kv.num_blocks_of(a) == -(-n // bs)
                if caching:  # every full prompt block is now cached (by this or another request)
                    assert kv.lookup(h, n + bs) == len(h) * bs
            else:
                assert stats(kv) == before
        elif kind == "grow" and a in live:
            seg, n = live[a]
            key, out = seg[-1]
            seg = seg[:-1] + ((key, out + b),)
            before = stats(kv)
            ok = kv.grow(a, n + b, kv.block_hashes(seg, n + b) if c else ())
            if ok:
                live[a] = (seg, n + b)
                assert kv.num_blocks_of(a) == -(-(n + b) // bs)
            else:
                assert stats(kv) == before
        elif kind == "free" and a in live:
            seg, n = live.pop(a)
            kv.free(a, kv.block_hashes(seg, n) if b else ())
        elif kind == "lookup":
            seg = PROMPTS[a]
            n = sum(t for _, t in seg)
            assert kv.lookup(kv.block_hashes(seg, n), n) <= max(n - 1, 0)
        kv.check_invariants()
        assert 0 <= kv.num_free_blocks <= num_blocks
        assert kv.num_used_blocks == len({x for r in live for x in kv._req_blocks[r]})
        if not caching:
            assert kv.num_cached_blocks == 0
    for r in list(live):
        kv.free(r)
    kv.check_invariants()
    assert kv.num_free_blocks == num_blocks and kv.num_used_blocks == 0
