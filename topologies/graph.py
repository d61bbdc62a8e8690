"""A cluster as a directed graph of devices and the links between them.

Nodes are devices, named hierarchically (``node0.gpu3``, ``node0.nvswitch``, ``node0.host``,
``leaf2``, ``spine0``), each with a ``kind``:

- ``gpu``: an accelerator; attributes ``gpu`` (catalogue name), ``node`` (server index) and
  optionally ``nic`` (the NIC its traffic leaves the server by);
- ``cpu``: host memory; attribute ``capacity`` (bytes);
- ``nvme``: a drive; attribute ``capacity`` (bytes);
- ``nic``: a network adapter;
- ``switch``: anything that only forwards: NVSwitch, PCIe switch, CPU root complex, Grace, IB leaf.

Edges are *one direction* of a link, with ``kind`` (nvlink, pcie, infiniband, ethernet,
host-memory, nvme, ...), ``bandwidth`` (achievable bytes/s) and ``latency_s``. The link id
``"u->v"`` is what `sim.links.FlowNetwork` shares bandwidth on.

Traffic is routed on the path with the fewest hops, then the widest (largest bottleneck
bandwidth: NVLink before PCIe when both are two hops), then the least latency, then the first in
name order (deterministic), and only switches and NICs forward: a GPU or a memory is an end
point, never a relay. Paths are cached; the cluster is immutable once built, so nothing goes stale.
"""
from __future__ import annotations

import heapq
import json
import math
import re
from collections.abc import Callable, Hashable, Iterable, Mapping
from pathlib import Path
from typing import Any

import networkx as nx

from sim.errors import ConfigError, ServesimError
from sim.hardware import GPUSpec, get_gpu
from sim.links import LinkCapacity

GPU, CPU, NIC, SWITCH, NVME = "gpu", "cpu", "nic", "switch", "nvme"
NODE_KINDS = (GPU, CPU, NIC, SWITCH, NVME)
# Kinds that forward traffic; every other kind is only a source or a destination.
TRANSIT_KINDS = frozenset({SWITCH, NIC})
_NODE_IN_NAME = re.compile(r"^node(\d+)\.")
_NATURAL = re.compile(r"(\d+)")


def link_id(u: str, v: str) -> str:
    """The id of the link from `u` to `v` (one direction)."""
    return f"{u}->{v}"


def natural_key(name: str) -> tuple:
    """Sort key that puts ``gpu2`` before ``gpu10``."""
    return tuple(int(t) if t.isdigit() else t for t in _NATURAL.split(name))


class Cluster:
    """An immutable, validated cluster graph with cached routes."""

    __slots__ = ("name", "_g", "_gpus", "_node_of", "_nodes", "_trees", "_paths", "_memo")

    def __init__(self, graph: nx.DiGraph | nx.Graph, name: str = "cluster") -> None:
        self.name = name
        g = _as_digraph(graph)
        _validate(g)
        self._g = nx.freeze(g)
        self._gpus = tuple(sorted((n for n, k in g.nodes(data="kind") if k == GPU),
                                  key=lambda n: (g.nodes[n]["node"], natural_key(n))))
        self._node_of = {n: g.nodes[n]["node"] for n in self._gpus}
        self._nodes = len(set(self._node_of.values()))
        self._trees: dict[str, tuple[dict[str, tuple[str, ...]], list]] = {}   # per source: settled routes, heap
        self._paths: dict[tuple[str, str], tuple[str, ...]] = {}
        self._memo: dict[Hashable, Any] = {}

    # ----------------------------------------------------------------- structure
    @property
    def graph(self) -> nx.DiGraph:
        """The (frozen) networkx graph."""
        return self._g

    @property
    def nodes(self) -> int:
        """Number of servers (distinct ``node`` indices among the GPUs)."""
        return self._nodes

    def gpus(self, node: int | None = None) -> tuple[str, ...]:
        """GPU ids, server by server in natural order; only those of server `node` if given."""
        if node is None:
            return self._gpus
        return self.memo(("gpus", node), lambda: tuple(g for g in self._gpus if self._node_of[g] == node))

    def node_of(self, gpu: str) -> int:
        """The server index of a GPU."""
        try:
            return self._node_of[gpu]
        except KeyError:
            raise ConfigError(f"{gpu!r} is not a GPU of cluster {self.name!r}") from None

    def gpu_name(self, gpu: str) -> str:
        """The catalogue name of a GPU's part."""
        self.node_of(gpu)
        return self._g.nodes[gpu]["gpu"]

    def gpu_spec(self, gpu: str) -> GPUSpec:
        """The catalogue entry of a GPU's part."""
        return get_gpu(self.gpu_name(gpu))

    def gpu_types(self) -> tuple[str, ...]:
        """Distinct GPU parts in the cluster, in first-seen order."""
        return tuple(dict.fromkeys(self._g.nodes[g]["gpu"] for g in self._gpus))

    def kind(self, device: str) -> str:
        """A device's kind (gpu, cpu, nic, switch, nvme)."""
        self._need(device)
        return self._g.nodes[device]["kind"]

    def host_of(self, gpu: str) -> str:
        """The host memory nearest to `gpu` (its own server's)."""
        host = self.memo(("host_of", gpu), lambda: self._nearest(gpu, CPU))
        if host is None:
            raise ConfigError(f"no host memory (kind 'cpu') is reachable from {gpu!r} in cluster {self.name!r}")
        return host

    def nvme_of(self, gpu: str) -> str | None:
        """The NVMe drive nearest to `gpu` in its server, or None when it has none."""
        return self.memo(("nvme_of", gpu), lambda: self._nearest(gpu, NVME))

    def nics(self, node: int) -> tuple[str, ...]:
        """NIC ids of server `node`, in natural order."""
        g = self._g
        return self.memo(("nics", node), lambda: tuple(sorted(
            (n for n, k in g.nodes(data="kind") if k == NIC and g.nodes[n]["node"] == node), key=natural_key)))

    def nic_of(self, gpu: str) -> str | None:
        """The NIC a GPU's traffic leaves its server by: the builder's choice (attribute ``nic``),
        else the nearest NIC of its server; None when the server has none."""
        self.node_of(gpu)
        own = self._g.nodes[gpu].get("nic")
        if own is not None:
            return own
        return self.memo(("nic_of", gpu), lambda: self._nearest(gpu, NIC))

    # ----------------------------------------------------------------- routes
    def path(self, src: str, dst: str) -> tuple[str, ...]:
        """Link ids from `src` to `dst`: fewest hops, then widest, then least latency, then name order."""
        key = (src, dst)
        p = self._paths.get(key)
        if p is None:
            nodes = self.route(src, dst)
            p = self._paths[key] = tuple(link_id(u, v) for u, v in zip(nodes, nodes[1:]))
        return p

    def route(self, src: str, dst: str) -> tuple[str, ...]:
        """The devices `path` goes through, `src` and `dst` included.

        A GPU's traffic to or from another server goes through its own NIC (`nic_of`), as
        GPUDirect RDMA and NCCL pick the NIC next to the GPU; everything else is the shortest route."""
        self._need(src)
        self._need(dst)
        if src == dst:
            return (src,)
        g = self._g
        a = self.nic_of(src) if g.nodes[src]["kind"] == GPU else None
        b = self.nic_of(dst) if g.nodes[dst]["kind"] == GPU else None
        if (a or b) and g.nodes[src]["node"] != g.nodes[dst]["node"]:
            nodes = self._raw_route(src, a) if a else (src,)
            nodes += self._raw_route(nodes[-1], b or dst)[1:]
            if b:
                nodes += self._raw_route(b, dst)[1:]
            if len(set(nodes)) == len(nodes):
                return nodes
        return self._raw_route(src, dst)

    def _raw_route(self, src: str, dst: str) -> tuple[str, ...]:
        if src == dst:
            return (src,)
        search = self._trees.get(src)
        if search is None:
            search = self._trees[src] = ({}, [(0, -math.inf, 0.0, (src,))])
        nodes = search[0].get(dst) or self._search(search, dst)
        if nodes is None:
            raise ConfigError(f"no path from {src!r} to {dst!r} in cluster {self.name!r} "
                              f"(only switches and NICs forward traffic)")
        return nodes

    def bottleneck(self, src: str, dst: str) -> tuple[float, float]:
        """(narrowest bandwidth in bytes/s, total latency in s) of the path from `src` to `dst`."""
        g = self._g
        bw, lat = math.inf, 0.0
        nodes = self.route(src, dst)
        for u, v in zip(nodes, nodes[1:]):
            e = g.edges[u, v]
            bw = min(bw, e["bandwidth"])
            lat += e["latency_s"]
        return bw, lat

    def link_capacities(self) -> dict[str, LinkCapacity]:
        """Every link as a `LinkCapacity`, for `sim.links.FlowNetwork`."""
        return {link_id(u, v): LinkCapacity(e["bandwidth"], e["latency_s"]) for u, v, e in self._g.edges(data=True)}

    def link(self, lid: str) -> Mapping[str, Any]:
        """The attributes of one link, by id."""
        u, sep, v = lid.partition("->")
        if not sep or not self._g.has_edge(u, v):
            raise ConfigError(f"cluster {self.name!r} has no link {lid!r}")
        return self._g.edges[u, v]

    def memo(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """A per-cluster cache for derived figures (collective parameters): the cluster never changes."""
        try:
            return self._memo[key]
        except KeyError:
            value = self._memo[key] = compute()
            return value

    # ----------------------------------------------------------------- files
    def to_node_link(self) -> dict[str, Any]:
        """networkx node-link data (JSON-ready)."""
        try:
            return nx.node_link_data(self._g, edges="links")
        except TypeError:                    # networkx < 3.4 names the keyword `link`
            return nx.node_link_data(self._g, link="links")

    def to_json(self, path: str | Path) -> None:
        """Write the graph as networkx node-link JSON (reload with `Cluster.from_file`)."""
        Path(path).write_text(json.dumps(self.to_node_link(), indent=1, sort_keys=True), encoding="utf-8")

    @classmethod
    def from_node_link(cls, data: Mapping[str, Any], name: str = "cluster") -> Cluster:
        """A cluster from networkx node-link data (``links`` or ``edges`` key)."""
        if not isinstance(data, Mapping) or "nodes" not in data:
            raise ConfigError(f"cluster {name!r}: node-link data must be a mapping with 'nodes' and 'links'")
        key = "links" if "links" in data else "edges"
        d = dict(data)
        d.setdefault("directed", True)
        d.setdefault("multigraph", False)
        d.setdefault(key, [])
        try:
            try:
                g = nx.node_link_graph(d, edges=key)
            except TypeError:                # networkx < 3.4 names the keyword `link`
                g = nx.node_link_graph(d, link=key)
        except (KeyError, TypeError, nx.NetworkXError) as exc:
            raise ConfigError(f"cluster {name!r}: malformed node-link data ({type(exc).__name__}: {exc})") from None
        return cls(g, name=name)

    @classmethod
    def from_file(cls, path: str | Path) -> Cluster:
        """Load a graph file: networkx node-link JSON (``.json``) or GraphML (``.graphml``)."""
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"cluster topology file {str(p)!r} does not exist")
        suffix = p.suffix.lower()
        if suffix == ".json":
            try:
                data = json.loads(p.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise ConfigError(f"cluster topology file {str(p)!r} is not valid JSON: {exc}") from None
            return cls.from_node_link(data, name=p.stem)
        if suffix in (".graphml", ".xml"):
            try:
                g = nx.read_graphml(p)
            except Exception as exc:  # noqa: BLE001 - any parse error becomes one user line
                raise ConfigError(f"cluster topology file {str(p)!r} is not valid GraphML: {exc}") from None
            return cls(g, name=p.stem)
        raise ConfigError(f"cluster topology file {str(p)!r}: use networkx node-link .json or .graphml")

    # ----------------------------------------------------------------- text
    def summary(self) -> str:
        """One line: servers, GPUs and the kinds of links."""
        kinds = sorted({e for _, _, e in self._g.edges(data="kind")})
        types = ", ".join(f"{sum(1 for g in self._gpus if self._g.nodes[g]['gpu'] == t)} x {t}"
                          for t in self.gpu_types())
        return f"{self.name}: {self.nodes} node(s), {types}; links: {', '.join(kinds)}"

    def __repr__(self) -> str:
        return f"Cluster({self.summary()!r})"

    # ----------------------------------------------------------------- internals
    def _need(self, device: str) -> None:
        if device not in self._g:
            raise ConfigError(f"cluster {self.name!r} has no device {device!r}")

    def _nearest(self, gpu: str, kind: str) -> str | None:
        node = self.node_of(gpu)
        g = self._g
        best, best_key = None, None
        for n, k in g.nodes(data="kind"):
            if k != kind or g.nodes[n].get("node") not in (node, None):
                continue
            try:
                nodes = self.route(gpu, n)
            except ConfigError:
                continue
            key = (g.nodes[n].get("node") != node, len(nodes), self.bottleneck(gpu, n)[1], natural_key(n))
            if best_key is None or key < best_key:
                best, best_key = n, key
        return best

    def _search(self, search: tuple[dict[str, tuple[str, ...]], list], dst: str) -> tuple[str, ...] | None:
        """Resume the Dijkstra search from one source until `dst` is settled (or nothing is left).

        Labels are (hops, -bottleneck bandwidth, latency, node names): fewest hops, then the widest,
        then the fastest, then name order. The search is kept per source and resumed, so the routes a
        source asks for (mostly nearby devices) cost only the part of the graph they need."""
        out, heap = search
        g = self._g
        kinds = g.nodes
        while heap:
            hops, neg_bw, lat, nodes = heapq.heappop(heap)
            u = nodes[-1]
            if u in out:
                continue
            out[u] = nodes
            if len(nodes) == 1 or kinds[u]["kind"] in TRANSIT_KINDS:   # end points are reached, never crossed
                for v, e in g.succ[u].items():
                    if v not in out:
                        heapq.heappush(heap, (hops + 1, max(neg_bw, -e["bandwidth"]), lat + e["latency_s"],
                                              nodes + (v,)))
            if u == dst:
                return nodes
        return out.get(dst)


# --------------------------------------------------------------------- validation

def _as_digraph(graph: Any) -> nx.DiGraph:
    if isinstance(graph, (nx.MultiGraph, nx.MultiDiGraph)):
        raise ConfigError("cluster graph must be a networkx DiGraph or Graph, not a multigraph "
                          "(merge parallel links into one with their summed bandwidth)")
    if isinstance(graph, nx.DiGraph):
        return nx.DiGraph(graph)
    if isinstance(graph, nx.Graph):
        return nx.DiGraph(graph)              # each undirected link becomes one link per direction
    raise ConfigError(f"cluster graph must be a networkx DiGraph, got {type(graph).__name__}")


def _number(value: Any, what: str, *, positive: bool) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(x) or (x <= 0 if positive else x < 0):
        raise ConfigError(f"{what} must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}")
    return x


def _validate(g: nx.DiGraph) -> None:
    """Check (and normalise in place) every node and edge; the first problem is one ConfigError line."""
    if g.number_of_nodes() == 0:
        raise ConfigError("cluster graph is empty; it needs at least one node of kind 'gpu'")
    for n, attrs in g.nodes(data=True):
        if not isinstance(n, str) or not n or "->" in n:
            raise ConfigError(f"cluster node id {n!r} must be a non-empty string without '->' (e.g. 'node0.gpu3')")
        kind = attrs.get("kind")
        if kind not in NODE_KINDS:
            raise ConfigError(f"cluster node {n!r} has kind {kind!r}; use one of {', '.join(NODE_KINDS)}")
        node = attrs.get("node")
        if node is None or node == "":
            m = _NODE_IN_NAME.match(n)
            node = int(m.group(1)) if m else (0 if kind == GPU else None)
        if node is not None:
            try:
                node = int(node)
            except (TypeError, ValueError):
                raise ConfigError(f"cluster node {n!r}: attribute 'node' must be a server index >= 0, "
                                  f"got {attrs.get('node')!r}") from None
            if node < 0:
                raise ConfigError(f"cluster node {n!r}: attribute 'node' must be >= 0, got {node}")
        attrs["node"] = node
        if kind == GPU:
            part = attrs.get("gpu")
            if not isinstance(part, str) or not part.strip():
                raise ConfigError(f"cluster node {n!r} is a gpu without a 'gpu' attribute (a catalogue name, "
                                  f"e.g. 'h100-sxm-80gb')")
            try:
                attrs["gpu"] = get_gpu(part).name
            except ServesimError as exc:
                raise ConfigError(f"cluster node {n!r}: {exc}") from None
            nic = attrs.get("nic")
            if nic is not None and (nic not in g or g.nodes[nic].get("kind") != NIC):
                raise ConfigError(f"cluster node {n!r}: attribute 'nic' names {nic!r}, which is not a node of "
                                  f"kind 'nic'")
        if kind in (CPU, NVME):
            attrs["capacity"] = _number(attrs.get("capacity", 0.0), f"cluster node {n!r}: capacity (bytes)",
                                        positive=False)
    if not any(k == GPU for _, k in g.nodes(data="kind")):
        raise ConfigError("cluster graph has no node of kind 'gpu'")
    for u, v, attrs in g.edges(data=True):
        if u == v:
            raise ConfigError(f"cluster link {link_id(u, v)!r} is a self-loop")
        if "bandwidth" not in attrs:
            raise ConfigError(f"cluster link {link_id(u, v)!r} has no 'bandwidth' (achievable bytes/s, one direction)")
        attrs["bandwidth"] = _number(attrs["bandwidth"], f"cluster link {link_id(u, v)!r}: bandwidth (bytes/s)",
                                     positive=True)
        attrs["latency_s"] = _number(attrs.get("latency_s", 0.0), f"cluster link {link_id(u, v)!r}: latency_s",
                                     positive=False)
        kind = attrs.get("kind", "link")
        if not isinstance(kind, str) or not kind:
            raise ConfigError(f"cluster link {link_id(u, v)!r}: kind must be a non-empty string, got {kind!r}")
        attrs["kind"] = kind


def gpus_by_node(cluster: Cluster, gpus: Iterable[str]) -> list[list[str]]:
    """`gpus` grouped by server, servers in first-seen order, order kept within each."""
    groups: dict[int, list[str]] = {}
    for g in gpus:
        groups.setdefault(cluster.node_of(g), []).append(g)
    return list(groups.values())


__all__ = ["CPU", "GPU", "NIC", "NODE_KINDS", "NVME", "SWITCH", "TRANSIT_KINDS", "Cluster", "gpus_by_node",
           "link_id", "natural_key"]
