"""The simulation core: catalogues, the roofline cost model, KV memory, the serving engine, metrics.

Nothing in `sim` imports plotting or the experiment layer; the flow of imports is
``experiments -> policies, topologies, workloads -> sim``.
"""
