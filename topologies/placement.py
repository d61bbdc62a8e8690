"""Placement: which GPUs form each replica's tensor-parallel groups and pipeline stages.

A deployment asks for groups of replicas (``GroupRequest``: `count` replicas of `tp` x `pp` GPUs,
optionally of one GPU part); `place` answers with one ``Placement`` per replica: a tuple of stages,
each stage a TP group of GPU ids. The rules, in the order they bite:

1. A TP group lives inside one server, where its all-reduces ride the scale-up link (NVSwitch),
   not the scale-out network. A TP larger than a server is refused, unless the group sets
   ``allow_cross_node_tp`` (then it is placed across consecutive servers, with a warning).
2. A replica's stages are consecutive: the same server while it has room, then the next one, so
   pipeline sends cross as few servers as possible.
3. Groups are packed server by server, first fit, in request order, on the lowest free GPU ids,
   so TP groups stay aligned (TP 2 on a GPU pair, TP 4 on a half board) and the result is
   deterministic. Only GPUs of the requested part are used.

Expert parallelism (`ep`) shards a replica's experts over the GPUs of each stage's TP group (as in
vLLM, where the EP group is the TP group); it changes no GPU count, so `ep` must divide `tp`.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sim.errors import ConfigError, DeploymentError, ServesimError
from sim.hardware import get_gpu

from .graph import Cluster


@dataclass(frozen=True, slots=True)
class GroupRequest:
    """`count` replicas, each of `pp` stages of `tp` GPUs (of part `gpu`, or any part if None)."""

    name: str
    count: int
    tp: int
    pp: int = 1
    ep: int = 1
    gpu: str | None = None
    allow_cross_node_tp: bool = False

    def __post_init__(self) -> None:
        for f in ("count", "tp", "pp", "ep"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v < (0 if f == "count" else 1):
                raise ConfigError(f"group {self.name!r}: {f} must be an integer >= {0 if f == 'count' else 1}, "
                                  f"got {v!r}")
        if self.tp % self.ep:
            raise ConfigError(f"group {self.name!r}: ep={self.ep} must divide tp={self.tp} "
                              f"(experts are sharded over each stage's TP group)")

    @property
    def gpus_per_replica(self) -> int:
        """tp x pp."""
        return self.tp * self.pp


@dataclass(frozen=True, slots=True)
class Placement:
    """One replica's GPUs: `stages[i]` is stage i's TP group; `stage_nodes[i]` its server."""

    group: str
    index: int
    stages: tuple[tuple[str, ...], ...]
    stage_nodes: tuple[int, ...] = ()
    ep: int = 1

    @property
    def gpus(self) -> tuple[str, ...]:
        """Every GPU of the replica, stage by stage."""
        return tuple(g for stage in self.stages for g in stage)

    @property
    def tp(self) -> int:
        """GPUs per stage."""
        return len(self.stages[0])

    @property
    def pp(self) -> int:
        """Number of pipeline stages."""
        return len(self.stages)

    def node_of_stage(self, stage: int) -> int:
        """The server of stage `stage` (its first GPU's, for a TP group allowed across servers)."""
        return self.stage_nodes[stage]

    @property
    def name(self) -> str:
        """``group[index]``, for logs."""
        return f"{self.group}[{self.index}]"


def _part(name: str | None) -> str | None:
    if name is None:
        return None
    try:
        return get_gpu(name).name
    except ServesimError as exc:
        raise ConfigError(f"placement: {exc}") from None


def place(cluster: Cluster, groups: Sequence[GroupRequest]) -> list[Placement]:
    """Place every replica of every group; DeploymentError (one line) when the cluster cannot hold them."""
    names = [g.name for g in groups]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"placement: group name {dup[0]!r} is used twice")
    parts = [_part(g.gpu) for g in groups]
    _check_totals(cluster, groups, parts)
    # free GPUs per server, lowest ids first (cluster.gpus is in natural order)
    free: dict[int, list[str]] = {}
    for gid in cluster.gpus():
        free.setdefault(cluster.node_of(gid), []).append(gid)
    servers = sorted(free)
    out: list[Placement] = []
    for req, part in zip(groups, parts):
        def usable(node: int, part: str | None = part) -> list[str]:
            return [g for g in free[node] if part is None or cluster.gpu_name(g) == part]
        size = _node_size(cluster, part)
        straddle = req.tp > size
        if straddle and not req.allow_cross_node_tp:
            types = cluster.gpu_types()
            what = part or (types[0] if len(types) == 1 else "")
            raise DeploymentError(f"group {req.name!r}: tp={req.tp} does not fit in one node of {size} "
                                  f"{what + ' ' if what else ''}GPUs; lower tp (use pp for the rest) or set "
                                  f"allow_cross_node_tp")
        if straddle:
            warnings.warn(f"group {req.name!r}: tp={req.tp} spans nodes of {size} GPUs; its all-reduces "
                          f"cross the scale-out network", stacklevel=2)
        for index in range(req.count):
            stages, nodes = _place_replica(req, servers, usable, straddle)
            for stage in stages:
                for g in stage:
                    free[cluster.node_of(g)].remove(g)
            out.append(Placement(req.name, index, stages, nodes, req.ep))
    return out


def _node_size(cluster: Cluster, part: str | None) -> int:
    """GPUs of `part` in the largest server."""
    sizes: dict[int, int] = {}
    for g in cluster.gpus():
        if part is None or cluster.gpu_name(g) == part:
            sizes[cluster.node_of(g)] = sizes.get(cluster.node_of(g), 0) + 1
    return max(sizes.values(), default=0)


def _check_totals(cluster: Cluster, groups: Sequence[GroupRequest], parts: list[str | None]) -> None:
    """Refuse a deployment that needs more GPUs of a part than the cluster has, before packing."""
    types = cluster.gpu_types()
    need: dict[str | None, int] = {}
    for req, part in zip(groups, parts):
        key = part if part is not None or len(types) > 1 else types[0]
        need[key] = need.get(key, 0) + req.count * req.gpus_per_replica
    for part, n in need.items():
        have = sum(1 for g in cluster.gpus() if part is None or cluster.gpu_name(g) == part)
        if n > have:
            what = f"{part} GPUs" if part else "GPUs"
            raise DeploymentError(f"the deployment needs {n} {what} but the cluster has {have}; "
                                  f"add nodes (cluster.nodes) or reduce replicas")
    if len(types) > 1 and None in need:
        total = sum(need.values())
        if total > len(cluster.gpus()):
            raise DeploymentError(f"the deployment needs {total} GPUs but the cluster has {len(cluster.gpus())}; "
                                  f"add nodes (cluster.nodes) or reduce replicas")


def _place_replica(req: GroupRequest, servers: list[int], usable: Callable[[int], list[str]],
                   straddle: bool) -> tuple[tuple[tuple[str, ...], ...], tuple[int, ...]]:
    """First fit: the whole replica on one server if any can hold it, else stage by stage from the
    previous stage's server on; only a TP group allowed to `straddle` servers is split between them."""
    tp, pp = req.tp, req.pp
    for s in servers:
        avail = usable(s)
        if len(avail) >= tp * pp:
            return tuple(tuple(avail[i * tp:(i + 1) * tp]) for i in range(pp)), (s,) * pp
    stages: list[tuple[str, ...]] = []
    nodes: list[int] = []
    taken: set[str] = set()
    start = 0
    for _ in range(pp):
        found = _fill_stage(tp, servers, usable, taken, start, straddle) or \
            _fill_stage(tp, servers, usable, taken, 0, straddle)
        if found is None:
            raise DeploymentError(f"group {req.name!r}: no room for a replica of tp={tp} x pp={pp}: "
                                  f"the free GPUs are scattered over nodes; use a smaller tp, fewer replicas "
                                  f"or more nodes (cluster.nodes)")
        stage, first, start = found
        taken.update(stage)
        stages.append(stage)
        nodes.append(first)
    return tuple(stages), tuple(nodes)


def _fill_stage(tp: int, servers: list[int], usable: Callable[[int], list[str]], taken: set[str], start: int,
                straddle: bool) -> tuple[tuple[str, ...], int, int] | None:
    """(stage GPUs, its first server, the index of its last server) from servers[start:], or None."""
    stage: list[str] = []
    first = None
    for k in range(start, len(servers)):
        avail = [g for g in usable(servers[k]) if g not in taken]
        if not straddle and len(avail) < tp:
            continue
        take = avail[:tp - len(stage)]
        if take and first is None:
            first = servers[k]
        stage.extend(take)
        if len(stage) == tp:
            return tuple(stage), first, k
    return None


__all__ = ["GroupRequest", "Placement", "place"]
