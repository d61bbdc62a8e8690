"""Preemption victims: which running request gives its KV blocks back when the pool runs out
(registry kind ``"victim"``).

Each policy is a plain function ``victim(running) -> Request`` over the replica's running list, which
is in admission order (ascending ``seq``) and never empty when the scheduler asks. The victim is
preempted by recomputation (`Replica.preempt`) and goes back to the head of the waiting queue. Ties
go to the newest request: it has the least work to lose and, under FCFS, the least claim to stay.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

from sim.registry import get, register
from sim.request import Request

Victim = Callable[[Sequence[Request]], Request]


@register("victim", "newest")
def newest(running: Sequence[Request]) -> Request:
    """The most recently admitted request (largest seq): vLLM's choice, last in, first out."""
    return running[-1]          # hot path: the running list is kept in admission order


@register("victim", "lowest_priority")
def lowest_priority(running: Sequence[Request]) -> Request:
    """The least urgent request (largest priority value), newest first among equals.

    vLLM's victim under ``--scheduling-policy priority`` (vLLM breaks ties by latest arrival, we by latest admission).
    """
    return max(running, key=_priority_seq)


@register("victim", "largest_kv")
def largest_kv(running: Sequence[Request]) -> Request:
    """The request holding the most KV slots, newest first among equals: frees the most blocks at once."""
    return max(running, key=_kv_seq)


def _priority_seq(req: Request) -> tuple[int, int]:
    return (req.priority, req.seq)


def _kv_seq(req: Request) -> tuple[int, int]:
    return (min(req.kv_slots, req.kv_cap), req.seq)


def make_victim(name: str) -> Victim:
    """The victim policy `name` (an unknown name is a one-line ConfigError listing the choices)."""
    return get("victim", name)


__all__ = ["Victim", "make_victim", "newest", "lowest_priority", "largest_kv"]
