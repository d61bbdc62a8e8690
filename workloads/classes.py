"""Request classes: tenant, priority and per-class SLOs (TTFT, TPOT) attached to requests.

A workload's ``classes:`` list names the classes. Requests are tagged in one of two ways:

* the source already says who sent each request (a trace's ``tenant`` column, BurstGPT's model):
  a request whose tenant equals a class's ``tenant`` gets that class's priority and SLOs; a tenant
  with no class keeps its name with no SLO; a request with no tenant stays untagged;
* otherwise each request (each conversation, for sessions) is drawn into a class at random, with
  probability proportional to ``weight``, from the workload's ``classes`` random stream.

The tags travel on `RequestSpec` (``tenant, priority, slo_ttft_s, slo_tpot_s``) into the engine's
request log, where `sim.metrics.summarize` reports per-class goodput and SLO attainment.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .base import ClassTag


def class_tags(classes: Sequence[Any]) -> list[ClassTag]:
    """The `ClassTag` of each configured `RequestClass`, in order."""
    return [ClassTag(c.tenant, c.priority, c.slo_ttft_s, c.slo_tpot_s) for c in classes]


def draw_classes(classes: Sequence[Any], n: int, rng: np.random.Generator) -> tuple[np.ndarray, list[ClassTag]] | None:
    """Each of ``n`` items drawn into a class by weight (None when there are no classes)."""
    if not classes:
        return None
    w = np.array([c.weight for c in classes], dtype=np.float64)
    codes = rng.choice(len(classes), size=n, p=w / w.sum()) if len(classes) > 1 else np.zeros(n, dtype=np.int64)
    return codes.astype(np.int64), class_tags(classes)


def match_tenants(classes: Sequence[Any], tenant_codes: np.ndarray,
                  tenant_names: Sequence[str]) -> tuple[np.ndarray, list[ClassTag]]:
    """Tag items by their own tenant: configured classes by name, other tenants by name only."""
    tags = class_tags(classes)
    index = {t.tenant: i for i, t in enumerate(tags)}
    remap = np.empty(len(tenant_names) + 1, dtype=np.int64)
    remap[-1] = -1                                   # tenant code -1 (no tenant) stays untagged
    for k, name in enumerate(tenant_names):
        if name not in index:
            index[name] = len(tags)
            tags.append(ClassTag(name))
        remap[k] = index[name]
    return remap[tenant_codes], tags
