"""Clusters as networkx graphs, and the cost of collectives and placements on them.

- `graph.Cluster`: devices (GPUs, host memory, NICs, switches, NVMe) and one-direction links with
  achievable bandwidth and latency; cached routes; `link_capacities()` for `sim.links.FlowNetwork`.
- `builders`: `build_cluster` from what a user writes (``{topology: hgx-h100, nodes: 2}``), the
  registered builders (hgx, pcie-server, nvl72, multi-node, edge, presets) and `default_cluster`.
- `collectives`: all-reduce, all-to-all and point-to-point times priced on the real path.
- `placement`: which GPUs form each replica's TP x PP groups.
"""
from __future__ import annotations

from .builders import ClusterSpec, build_cluster, default_cluster, default_cluster_for, usual_server
from .collectives import allreduce_params, allreduce_time, alltoall_time, p2p_time
from .graph import Cluster, link_id
from .placement import GroupRequest, Placement, place

__all__ = ["Cluster", "ClusterSpec", "GroupRequest", "Placement", "allreduce_params", "allreduce_time",
           "alltoall_time", "build_cluster", "default_cluster", "default_cluster_for", "link_id", "p2p_time", "place", "usual_server"]
