"""Serving policies as registered plugins: batching schedulers, ordering, preemption, routing, ..."""
