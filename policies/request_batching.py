"""Request-level batching: a batch is formed once and runs until its last member finishes; nobody joins.

This is how serving worked before iteration-level scheduling (Orca): FasterTransformer and early
TGI/Triton deployments collected up to N requests, ran their prompts together, then decoded until
the longest was done. A request that finishes early leaves its slot idle (and, with padding, still
costs compute); a request that arrives meanwhile waits for the whole batch. Continuous batching
(`policies.batching`) removes both; these schedulers exist to measure by how much.

Tokens stream: each member's first and last token are timed when they are produced (a client
of a non-streaming server would see its last token only when the batch ends). Each member's KV
blocks for its whole prompt and output are taken when the batch forms, as these engines reserved
memory up front, so a formed batch is never preempted.
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveInt

from sim.cost import BatchShape
from sim.registry import register
from sim.request import RUNNING


class _RequestLevelOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_batch_size: PositiveInt = Field(32, description="Most requests in one batch (also capped by engine.max_num_seqs).")
    max_wait_s: NonNegativeFloat = Field(
        0.05, description="A batch forms when it is full or when its oldest request has waited this long.")


class _RequestLevel:
    """Batch formation and the run to the last member; subclasses decide how a step is priced."""

    Options = _RequestLevelOptions

    def __init__(self, options: _RequestLevelOptions | None = None) -> None:
        self.options = options or self.Options()
        self.members: list = []        # the batch in progress
        self.prompt_pad = 0            # its longest prompt
        self.decode_steps = 0          # decode steps it has run

    def steady(self, rep) -> bool:
        """Never: request-level steps are few and priced one by one (padding, idle slots)."""
        return False

    def schedule(self, rep) -> list:
        """The batch in progress decodes one token per live member; with no batch, form one when full or timed out."""
        if self.members:
            live = [(r, 1) for r in self.members if r.state == RUNNING]
            if live:
                self.decode_steps += 1
                return live
            self.members = []
        return self._form(rep)

    def _form(self, rep) -> list:
        opts = self.options
        size = min(opts.max_batch_size, rep.engine.max_num_seqs)
        visible = [r for r in rep.waiting if r.enqueued <= rep.visible_until]
        if not visible:
            return []
        if len(visible) < size and rep.clock < min(r.enqueued for r in visible) + opts.max_wait_s:
            return []
        batch = []
        for req in visible[:size]:
            if not rep.allocate(req, req.num_tokens + req.output_len - req.generated, 0):
                break                   # memory for fewer members: run those
            rep.waiting.remove(req)
            rep.admit(req, 0)
            # a decode pool's request arrives with its prompt's KV (a prefill instance computed it): only the rest
            batch.append((req, req.num_tokens - min(req.preloaded, req.num_tokens - 1)))
        if batch:
            self.members = [r for r, _ in batch]
            self.prompt_pad = max(n for _, n in batch)
            self.decode_steps = 0
        return batch

    def wake_at(self, rep) -> float | None:
        """When the oldest visible waiting request's wait runs out (the batch then forms, full or not)."""
        if self.members or not rep.waiting:
            return None
        return min(r.enqueued for r in rep.waiting) + self.options.max_wait_s


@register("scheduler", "static")
class StaticBatching(_RequestLevel):
    """Static batching (FasterTransformer, early TGI): padded request-level batches run to their longest member.

    A batch of up to `max_batch_size` forms when full or after `max_wait_s`; every prompt is padded
    to the longest one, and every decode step computes all members at the padded length until the
    longest output is done, finished members included: padding costs compute.
    """

    def shape(self, rep, batch) -> BatchShape:
        """The padded work: every member at the longest prompt, and every slot (finished or not) decoding."""
        size = len(self.members)
        if self.decode_steps == 0:
            return BatchShape.prefill(size, self.prompt_pad)
        return BatchShape.decode(size, self.prompt_pad + self.decode_steps - 1)


@register("scheduler", "dynamic")
class DynamicBatching(_RequestLevel):
    """Dynamic batching (Triton / TorchServe): request-level batches of up to `max_batch_size`, formed after at most `max_wait_s`.

    Prompts run ragged (no padding) and a finished member stops computing, but its slot stays idle:
    nobody joins until the whole batch is done.
    """


__all__ = ["StaticBatching", "DynamicBatching"]
