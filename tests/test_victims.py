"""Preemption victims (policies/victims.py): who gives back KV blocks, and how ties break (to the newest)."""
from __future__ import annotations

import pytest

from policies.victims import largest_kv, lowest_priority, make_victim, newest
from sim.errors import ConfigError
from sim.request import Request


def running(*specs: tuple[int, int]) -> list[Request]:
    """Running requests in admission order from (priority, kv_slots) pairs; seq = position, id = 10 + position."""
    out = []
    for seq, (prio, slots) in enumerate(specs):
        r = Request(10 + seq, 0.0, 100, 10, priority=prio)
        r.seq, r.kv_slots = seq, slots
        out.append(r)
    return out


def test_newest_is_the_last_admitted():
    rs = running((0, 64), (5, 512), (0, 16))
    assert newest(rs).id == 12
    assert newest(rs[:2]).id == 11


def test_lowest_priority_takes_the_largest_value_then_the_newest():
    rs = running((0, 64), (3, 16), (1, 512), (3, 32), (2, 16))
    assert lowest_priority(rs).id == 13           # priority 3 twice: seq 3 beats seq 1
    assert lowest_priority(rs[:3]).id == 11
    assert lowest_priority(running((0, 16), (0, 16))).id == 11     # all equal: newest, as vLLM


def test_largest_kv_takes_the_most_slots_then_the_newest():
    rs = running((0, 64), (9, 512), (0, 512), (0, 16))
    assert largest_kv(rs).id == 12
    assert largest_kv(rs[:2]).id == 11


def test_registered_by_name():
    assert make_victim("newest") is newest
    assert make_victim("Lowest_Priority") is lowest_priority
    assert make_victim("largest_kv") is largest_kv
    with pytest.raises(ConfigError, match="unknown victim 'oldest'"):
        make_victim("oldest")
