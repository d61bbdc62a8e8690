"""The decode cohort: running requests that advance one token per step, tracked lazily.

In a busy replica most running requests are decoding: every step each of them computes one
token, and nothing about them changes except at a few moments (a new KV block is needed, the
last token is produced). Touching every one of them on every step makes a step cost O(batch);
the cohort instead keeps a shared step counter (`tick`) and, per member, the tick at which its
counters were last written (`req.lazy_tick`). A member's true progress is its stored counters
plus `tick - req.lazy_tick`. Two heaps hold the moments that matter, keyed by (tick, admission
order) so that blocks are allocated and requests finish in exactly the order the per-iteration
loop would use:

- when each member next crosses a KV block boundary (`kv_slots` tokens held), and
- when each member produces its last token.

The sum of (context + 1) over members, which prices decode attention, moves by `size` per step.
"""
from __future__ import annotations

import heapq

from .request import FINISHED, KV_UNBOUNDED, Request


class DecodeCohort:
    """Lazily advanced set of decoding requests of one replica."""

    __slots__ = ("tick", "size", "ctx", "_finish", "_blocks", "block_size", "emit_time", "_late")

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self.tick = 0          # steps executed by the replica
        self.size = 0
        self.ctx = 0           # sum over members of (tokens in KV + 1): the decode attention context
        self._finish: list[tuple[int, int, Request]] = []
        self._blocks: list[tuple[int, int, Request]] = []
        # when members' latest tokens came out, for inter-token gaps: at `emit_time` (the end of the cohort's last
        # step) for all but the members in `_late` ({time: members}), which joined later with their own last token
        self._late: dict[float, int] | None = None
        self.emit_time = -1.0

    def add(self, req: Request) -> None:
        """Admit a request that has just sampled a token and will now decode."""
        t = self.tick
        req.lazy_tick = t
        t_last = req.last_token
        if t_last != self.emit_time:
            late = self._late
            if late is None:
                late = self._late = {}
            late[t_last] = late.get(t_last, 0) + 1
        heapq.heappush(self._finish, (t + req.output_len - req.generated, req.seq, req))
        heapq.heappush(self._blocks, (t + req.kv_slots - req.num_computed + 1, req.seq, req))
        self.ctx += req.num_computed + 1
        self.size += 1

    def materialize(self, req: Request, tick: int) -> None:
        """Write a member's true counters back into the request."""
        d = tick - req.lazy_tick
        if d:
            req.num_computed += d
            req.num_tokens += d
            req.generated += d
            req.lazy_tick = tick
            req.last_token = self.emit_time

    def release(self, req: Request) -> None:
        """A member leaves (it finished): counters written back; its heap entries go stale."""
        self.materialize(req, self.tick)
        req.lazy_tick = -1
        self.ctx -= req.num_computed + 1
        self.size -= 1
        late = self._late
        if late is not None and req.last_token in late and req.last_token != self.emit_time:
            n = late[req.last_token] - 1
            if n:
                late[req.last_token] = n
            else:
                del late[req.last_token]

    def clear(self, running: list[Request]) -> None:
        """Everyone leaves (the exact per-request path takes over for a step)."""
        tick = self.tick
        for req in running:
            if req.lazy_tick >= 0:
                self.materialize(req, tick)
                req.lazy_tick = -1
        self.size = self.ctx = 0
        self._finish.clear()
        self._blocks.clear()
        self._late = None

    def emitted(self, end: float) -> tuple[float, int, dict[float, int] | None]:
        """Every member produced a token at `end`: returns (previous emit time, members whose gap starts there,
        {other previous token time: members}) and makes `end` everyone's latest token time."""
        prev, late = self.emit_time, self._late
        n = self.size - (sum(late.values()) if late else 0)
        self.emit_time = end
        self._late = None
        return prev, n, late

    def advance(self, steps: int) -> None:
        """Move every member forward by `steps` decode steps (O(1): only the shared tick and the context sum change)."""
        self.tick += steps
        self.ctx += steps * self.size

    # ---------------------------------------------------------------- moments
    def _top(self, heap: list) -> tuple | None:
        while heap and (heap[0][2].state == FINISHED or heap[0][2].lazy_tick < 0):
            heapq.heappop(heap)
        return heap[0] if heap else None

    def steps_to_finish(self) -> int:
        """Steps until the first member produces its last token (that step included)."""
        top = self._top(self._finish)
        return top[0] - self.tick if top else 1 << 30

    def min_slack(self) -> int:
        """Fewest steps any member can still run on the KV blocks it holds."""
        heap = self._blocks
        top = self._top(heap)
        while top is not None and top[2].kv_slots >= KV_UNBOUNDED:    # reached its eviction budget: no more blocks
            heapq.heappop(heap)
            top = self._top(heap)
        return top[0] - self.tick - 1 if top else self.block_size

    def pop_due_blocks(self, upto: int) -> list[Request]:
        """Members needing a new block in steps <= `upto`, in (step, admission) order; each is
        returned once per block it needs, and rescheduled for its next boundary."""
        heap = self._blocks
        bs = self.block_size
        replace = heapq.heapreplace
        due = []
        while heap and heap[0][0] <= upto:
            entry = heap[0]
            req = entry[2]
            if req.state == FINISHED or req.lazy_tick < 0 or req.kv_slots >= KV_UNBOUNDED:
                heapq.heappop(heap)
                continue
            due.append(entry)
            replace(heap, (entry[0] + bs, entry[1], req))     # one sift instead of pop + push
        return due

    def push_back(self, due: list) -> None:
        """Undo `pop_due_blocks` (the caller decided not to allocate this step)."""
        heap = self._blocks
        bs = self.block_size
        stale = {(t + bs, seq) for t, seq, _ in due}
        heap[:] = [e for e in heap if (e[0], e[1]) not in stale]
        heap.extend(due)
        heapq.heapify(heap)

    def pop_finished(self) -> list[Request]:
        """Members whose last token came out by now, in admission order, released."""
        heap = self._finish
        out = []
        while heap and heap[0][0] <= self.tick:
            _, _, req = heapq.heappop(heap)
            if req.state == FINISHED or req.lazy_tick < 0:
                continue
            self.release(req)
            out.append(req)
        return out
