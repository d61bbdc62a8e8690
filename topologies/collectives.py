"""Collectives priced on the real path: all-reduce (ring, tree), all-to-all, point-to-point.

A ring all-reduce of `S` bytes over `n` GPUs takes ``2(n-1)`` steps; in each step every GPU sends
``S/n`` bytes to its ring neighbour, all at once. Its time is

    t = launch + 2(n-1) x hop latency + 2(n-1)/n x S / bus bandwidth

where the *bus bandwidth* (NCCL's "busbw") is what the most loaded link of the ring leaves each
hop: ``min over links of bandwidth / (ring hops crossing it)``. On an NVSwitch every GPU has its own
port, so busbw is the port's achievable bandwidth; on a PCIe server the hops that leave a PCIe
switch share its up-link; across servers the hops that leave a server cross its NICs. As NCCL
does on rail-optimised fabrics, a multi-server ring runs as one *channel* per rail (NIC index),
each carrying 1/channels of the data and entering and leaving every server through that rail's
NIC, so the servers' NICs share the cross-server traffic instead of one NIC carrying it all. The
hop latency is the slowest hop's path latency (a step ends when its slowest hop does).

NCCL's double binary *tree* is built to reach the ring's bus bandwidth; what it saves is latency:
``2(m-1)`` intra-server steps plus ``2 ceil(log2 N)`` steps between `N` servers, instead of
``2(n-1)``. ``algorithm="auto"`` takes the faster of the two, as NCCL's tuner does.

An all-to-all (MoE expert parallelism) sends ``1/n`` of each GPU's buffer to every other GPU at
once; its time is the most loaded link's bytes / bandwidth, with the hottest GPU receiving `skew`
times the mean. A point-to-point send (pipeline stages, KV hand-off) is latency + bytes / the
narrowest link of its path.

Validated against NCCL on a DGX A100 (``experiments/validation/collectives.py``).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

from sim.cost import allreduce_time as _ring_formula
from sim.errors import ConfigError

from .graph import Cluster, gpus_by_node, natural_key

# Fixed cost of one NCCL collective call (kernel launch, channel set-up, the final sync), paid once
# per call on top of the per-step hop latencies. Source: the Vidur DGX-A100 NCCL all-reduce table
# (experiments/validation/data/measured/vidur_a100_dgx_all_reduce_summary.csv, 2/4/8 GPUs, messages
# >= 1 MiB): the least-squares intercepts of time vs 2(n-1)/n x bytes are 44.7 / 60.1 / 80.8 us;
# minus 2(n-1) NVLink-3 hops of 2.5 us (links.yaml latency_us) they leave 39.7 / 45.1 / 45.8 us.
# 38 us minimises the median |error| of experiments/validation/collectives.py over all those rows
# (a scan of 30-50 us; 38-40 us tie on the median, 38 us has the lower p90).
NCCL_LAUNCH_S = 38e-6

ALGORITHMS = ("ring", "tree", "auto")


def _check_gpus(cluster: Cluster, gpus: Sequence[str]) -> tuple[str, ...]:
    gpus = tuple(gpus)
    if len(set(gpus)) != len(gpus):
        raise ConfigError(f"collective over {list(gpus)}: a GPU appears twice")
    for g in gpus:
        cluster.node_of(g)                      # one-line error for a device that is not a GPU
    return gpus


def _nearest(cluster: Cluster, candidates: Sequence[str], nic: str, outward: bool) -> str:
    """The candidate GPU closest to `nic` (fewest hops, then the first in `candidates`)."""
    def hops(g: str) -> int:
        return len(cluster.route(g, nic) if outward else cluster.route(nic, g))
    return min(candidates, key=hops)


def _channels(cluster: Cluster, gpus: tuple[str, ...]) -> list[list[tuple[tuple[str, ...], bool]]]:
    """The ring's hops, per channel: (link ids, crosses servers).

    Within a server the ring follows the GPUs' natural order (neighbours share a PCIe switch, as
    in NCCL's PCI-ordered rings), whatever order they were given in. One server: one ring.
    Several: one channel per rail (NIC index), as NCCL builds them on rail-optimised fabrics: in
    channel k every server is entered and left through its k-th NIC; the GPU nearest that NIC
    receives, its nearest other GPU sends on, the rest sit between in rotated order."""
    groups = [sorted(grp, key=natural_key) for grp in gpus_by_node(cluster, gpus)]
    if len(groups) == 1:
        ring = groups[0]
        return [[(cluster.path(a, b), False) for a, b in zip(ring, ring[1:] + ring[:1])]]
    servers = [cluster.node_of(grp[0]) for grp in groups]
    nics = [cluster.nics(s) for s in servers]
    if not all(nics):
        raise ConfigError(f"collective over {len(gpus)} GPUs spans servers {servers} but some have no NIC")
    count = max(len(grp) for grp in groups)
    rails = min(count, min(len(x) for x in nics))
    channels = []
    for k in range(rails):
        rail = k * min(len(x) for x in nics) // rails
        order: list[tuple[str, str, str]] = []    # (entry GPU, exit GPU, NIC) per server
        members: list[list[str]] = []
        for grp, server_nics in zip(groups, nics):
            nic = server_nics[rail]
            rot = grp[k % len(grp):] + grp[:k % len(grp)]
            entry = _nearest(cluster, rot, nic, outward=False)
            rest = [g for g in rot if g != entry]
            exit_ = _nearest(cluster, rest, nic, outward=True) if rest else entry
            members.append([entry] + [g for g in rest if g != exit_] + ([exit_] if rest else []))
            order.append((entry, exit_, nic))
        hops: list[tuple[tuple[str, ...], bool]] = []
        for i, ring in enumerate(members):
            hops.extend((cluster.path(a, b), False) for a, b in zip(ring, ring[1:]))
            exit_, nic = order[i][1], order[i][2]
            entry_next, _, nic_next = order[(i + 1) % len(order)]
            hops.append((cluster.path(exit_, nic) + cluster.path(nic, nic_next) + cluster.path(nic_next, entry_next),
                         True))
        channels.append(hops)
    return channels


def _ring_figures(cluster: Cluster, gpus: tuple[str, ...]) -> tuple[float, float, float]:
    """(bus bandwidth, slowest intra-server hop latency, slowest cross-server hop latency) of the ring."""
    channels = _channels(cluster, gpus)
    share = 1.0 / len(channels)
    load: dict[str, float] = {}
    intra = inter = 0.0
    for hops in channels:
        for links, crosses in hops:
            lat = 0.0
            for lid in links:
                load[lid] = load.get(lid, 0.0) + share
                lat += cluster.link(lid)["latency_s"]
            if crosses:
                inter = max(inter, lat)
            else:
                intra = max(intra, lat)
    busbw = min(cluster.link(lid)["bandwidth"] / n for lid, n in load.items())
    groups = gpus_by_node(cluster, gpus)
    if len(groups) > 1:
        # a channel's exit GPU sends over PCIe, not NVLink: never let that make the whole faster than its parts
        busbw = min([busbw] + [_ring_figures(cluster, tuple(grp))[0] for grp in groups if len(grp) > 1])
    return busbw, intra, inter


def allreduce_params(cluster: Cluster, gpus: Sequence[str], algorithm: str = "ring",
                     launch_s: float = NCCL_LAUNCH_S) -> tuple[float, float]:
    """(bus bandwidth in bytes/s, latency in s) of an all-reduce over `gpus`, so that
    ``time = latency + 2(n-1)/n x bytes / bus bandwidth`` (`sim.cost.allreduce_time`).

    One GPU: (inf, 0). Cached per cluster and GPU set."""
    if algorithm not in ("ring", "tree"):
        raise ConfigError(f"all-reduce algorithm {algorithm!r} has no single (busbw, latency); use ring or tree")
    gpus = _check_gpus(cluster, gpus)
    n = len(gpus)
    if n <= 1:
        return math.inf, 0.0

    def compute() -> tuple[float, float]:
        busbw, intra, inter = _ring_figures(cluster, gpus)
        if algorithm == "ring":
            return busbw, launch_s + 2 * (n - 1) * max(intra, inter)
        groups = gpus_by_node(cluster, gpus)
        m = max(len(grp) for grp in groups)
        steps_inter = math.ceil(math.log2(len(groups))) if len(groups) > 1 else 0
        return busbw, launch_s + 2 * ((m - 1) * intra + steps_inter * inter)

    return cluster.memo(("allreduce", algorithm, gpus, launch_s), compute)


def allreduce_time(cluster: Cluster, gpus: Sequence[str], nbytes: float, algorithm: str = "ring",
                   launch_s: float = NCCL_LAUNCH_S) -> float:
    """Seconds of one all-reduce of `nbytes` over `gpus` (ring, tree, or auto = the faster)."""
    if algorithm not in ALGORITHMS:
        raise ConfigError(f"all-reduce algorithm {algorithm!r} is not one of {', '.join(ALGORITHMS)}")
    n = len(gpus)
    if n <= 1:
        _check_gpus(cluster, gpus)
        return 0.0
    if algorithm == "auto":
        return min(allreduce_time(cluster, gpus, nbytes, a, launch_s) for a in ("ring", "tree"))
    busbw, latency = allreduce_params(cluster, gpus, algorithm, launch_s)
    return _ring_formula(nbytes, n, busbw, latency)


def _alltoall_coefficients(cluster: Cluster, gpus: tuple[str, ...]) -> tuple[dict[str, float],
                                                                            list[dict[str, float]], float]:
    """Per link: seconds per byte of each GPU's buffer (uniform exchange); per destination GPU: the
    share of that coming to it; and the slowest pair's path latency."""
    n = len(gpus)
    base: dict[str, float] = {}
    into: list[dict[str, float]] = []
    latency = 0.0
    for dst in gpus:
        mine: dict[str, float] = {}
        for src in gpus:
            if src == dst:
                continue
            for lid in cluster.path(src, dst):
                per = 1.0 / n / cluster.link(lid)["bandwidth"]
                base[lid] = base.get(lid, 0.0) + per
                mine[lid] = mine.get(lid, 0.0) + per
            latency = max(latency, cluster.bottleneck(src, dst)[1])
        into.append(mine)
    return base, into, latency


def alltoall_time(cluster: Cluster, gpus: Sequence[str], nbytes_per_gpu: float, skew: float = 1.0,
                  launch_s: float = NCCL_LAUNCH_S) -> float:
    """Seconds of one all-to-all where each GPU scatters `nbytes_per_gpu` evenly over `gpus` (1/n
    stays local), the hottest GPU receiving `skew` x the mean (MoE expert load imbalance)."""
    if not skew >= 1.0:
        raise ConfigError(f"all-to-all skew is the hottest GPU's load over the mean and must be >= 1, got {skew!r}")
    gpus = _check_gpus(cluster, gpus)
    if len(gpus) <= 1:
        return 0.0
    base, into, latency = cluster.memo(("alltoall", gpus), lambda: _alltoall_coefficients(cluster, gpus))
    worst = max(base.values())
    if skew > 1.0:
        extra = skew - 1.0
        for mine in into:
            for lid, per in mine.items():
                worst = max(worst, base[lid] + extra * per)
    return launch_s + latency + nbytes_per_gpu * worst


def p2p_time(cluster: Cluster, src: str, dst: str, nbytes: float) -> float:
    """Seconds to send `nbytes` from `src` to `dst` with nothing else on the path (pipeline stages)."""
    if src == dst:
        return 0.0
    bw, latency = cluster.bottleneck(src, dst)
    return latency + nbytes / bw


__all__ = ["ALGORITHMS", "NCCL_LAUNCH_S", "allreduce_params", "allreduce_time", "alltoall_time", "p2p_time"]
