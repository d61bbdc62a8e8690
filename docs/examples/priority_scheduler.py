"""A custom batching scheduler for servesim: vLLM's policy, but urgent requests are admitted first.

Save this file next to your configs and import it before running; the decorator registers the
scheduler under the name "priority", which a config then selects with `scheduler: priority`.
"""
from policies.batching import VLLMScheduler
from sim.registry import register


@register("scheduler", "priority")
class PriorityScheduler(VLLMScheduler):
    """vLLM V1's scheduler with the waiting queue ordered by request priority, then arrival. A lower value is more
    urgent, as in vLLM's priority scheduling and the built-in `ordering: priority`."""

    def _order_waiting(self, replica) -> None:
        waiting = replica.waiting
        if len(waiting) > 1:
            ordered = sorted(waiting, key=lambda r: (r.priority, r.arrival))
            waiting.clear()
            waiting.extend(ordered)

    def schedule(self, replica):
        """Plan one step over materialised requests (the engine's exact path)."""
        self._order_waiting(replica)
        return super().schedule(replica)

    def schedule_cohort(self, replica):
        """Plan one step while decoding requests sit in the engine's lazy cohort (the fast path)."""
        self._order_waiting(replica)
        return super().schedule_cohort(replica)
