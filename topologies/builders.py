"""Builders that turn a short cluster description into a `Cluster` graph.

A user writes what they would say out loud::

    cluster: {topology: hgx-h100, nodes: 2}
    cluster: {topology: multi-node, node: hgx, gpu: h100-sxm-80gb, nodes: 4,
              fabric: ib-ndr, layout: rail, oversubscription: 1.0}
    cluster: {topology: path/to/graph.json}          # networkx node-link JSON or GraphML

and `build_cluster` returns the graph. Each server is built by one function (HGX baseboard, PCIe
server, GB200 NVL72 rack, edge device) and several servers are joined by a scale-out fabric:

- ``rail`` (rail-optimised, NVIDIA's SuperPOD design): NIC *i* of every server sits on leaf *i*,
  so GPU *i* of one server reaches GPU *i* of another through one leaf; other pairs cross a spine.
- ``fat-tree``: each leaf serves `nodes_per_leaf` whole servers; servers on different leaves
  cross the spine, whose up-links have the leaf's down-link bandwidth / `oversubscription`.

Bandwidths are per direction and achievable (`LinkSpec.bandwidth`): a GPU's own port uses the
GPU entry's per-part figure (``scaleup_bw_gbps`` / 2, ``host_bw_gbps`` / 2) times the link's
achievable fraction. Latency: the catalogue's ``latency_us`` is one end-to-end traversal through
one switch, so the two links to and from a switch carry half each and a path pays it once.
Switches are one logical device each (an HGX's 4-6 NVSwitch chips, a fabric's spine layer).
Full-mesh scale-up parts (MI300X Infinity Fabric, Gaudi 3 RoCE, TPU ICI, V100 hybrid cube mesh)
are drawn with the same logical switch: exact for collectives, which use every link of the mesh,
optimistic for a single pair of GPUs.

The defaults (host memory, NVMe, fabric per PCIe generation; switches per server) live in
``topologies/catalog/topologies.yaml``; this module is only the code.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import networkx as nx
import yaml

from sim.errors import ConfigError, ServesimError, did_you_mean
from sim.hardware import GPUSpec, LinkSpec, get_gpu, get_link
from sim.registry import REGISTRY, register

from .graph import CPU, GPU, NIC, NVME, SWITCH, Cluster

LAYOUTS = ("rail", "fat-tree")
GRAPH_SUFFIXES = (".json", ".graphml", ".xml")


@dataclass(frozen=True)
class ClusterSpec:
    """What a user writes under ``cluster:``; every field is optional (None = the builder's default)."""

    topology: str | None = None      # builder or preset name, or a graph file path
    nodes: int | None = None         # servers (NVL72: racks)
    gpu: str | None = None           # catalogue name; default: the deployment's GPU
    node: str | None = None          # multi-node: the server builder (hgx, pcie-server, nvl72, edge)
    fabric: str | None = None        # scale-out link (links.yaml key), e.g. ib-ndr, roce-400g
    layout: str | None = None        # rail | fat-tree
    oversubscription: float | None = None
    nodes_per_leaf: int | None = None
    gpus_per_node: int | None = None
    nvme: bool = True
    name: str | None = None

    def __post_init__(self) -> None:
        for f in ("nodes", "nodes_per_leaf", "gpus_per_node"):
            v = getattr(self, f)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise ConfigError(f"cluster.{f} must be an integer >= 1, got {v!r}")
        o = self.oversubscription
        if o is not None and (isinstance(o, bool) or not isinstance(o, (int, float)) or not 0 < o < math.inf):
            raise ConfigError(f"cluster.oversubscription must be a number > 0 (1.0 = non-blocking), got {o!r}")
        if self.layout is not None and self.layout not in LAYOUTS:
            raise ConfigError(f"cluster.layout {self.layout!r} is not one of {', '.join(LAYOUTS)}"
                              f"{did_you_mean(str(self.layout), LAYOUTS)}")
        for f in ("topology", "gpu", "node", "fabric", "name"):
            v = getattr(self, f)
            if v is not None and (not isinstance(v, str) or not v.strip()):
                raise ConfigError(f"cluster.{f} must be a non-empty string, got {v!r}")
        if not isinstance(self.nvme, bool):
            raise ConfigError(f"cluster.nvme must be true or false, got {self.nvme!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClusterSpec:
        """Validate a user's mapping: unknown keys are one-line errors with a suggestion."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"cluster must be a mapping (e.g. {{topology: hgx-h100, nodes: 2}}), "
                              f"got {type(data).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        for k in data:
            if k not in names:
                raise ConfigError(f"cluster: unknown key {k!r}{did_you_mean(str(k), names)}; "
                                  f"keys: {', '.join(names)}")
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        """The fields that were set (round-trips through `from_dict`)."""
        default = ClusterSpec()
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) != getattr(default, f.name)}


# A builder: (the GPU part, the user's spec) -> a Cluster (or a networkx DiGraph to validate).
Builder = Callable[[GPUSpec, ClusterSpec], "Cluster | nx.DiGraph"]


@functools.lru_cache(maxsize=1)
def presets() -> dict[str, Any]:
    """The parsed ``topologies/catalog/topologies.yaml`` (read once)."""
    text = (resources.files("topologies") / "catalog" / "topologies.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


# --------------------------------------------------------------------- small helpers

def _bw(spec: LinkSpec, per_direction_gbps: float | None = None) -> float:
    """Achievable bytes/s one way: the per-part figure if given, else the catalogue's, times its fraction."""
    gbps = per_direction_gbps if per_direction_gbps else spec.bw_gbps_per_direction
    return gbps * 1e9 * spec.achievable_fraction


def _duplex(g: nx.DiGraph, a: str, b: str, spec: LinkSpec, bandwidth: float, latency_s: float) -> None:
    """Both directions of one link."""
    for u, v in ((a, b), (b, a)):
        g.add_edge(u, v, kind=spec.kind, link=spec.name, bandwidth=bandwidth, latency_s=latency_s)


def _half_latency(spec: LinkSpec) -> float:
    return spec.latency_us * 1e-6 / 2.0


def _host_defaults(gpu: GPUSpec) -> dict[str, Any]:
    table = presets()["host_defaults"]
    return dict(table.get(gpu.host_link) or table["pcie-gen5-x16"])


def _add_memory(g: nx.DiGraph, name: str, via: str, node: int, spec: LinkSpec, capacity: float, **attrs: Any) -> None:
    """Host memory `name` (kind cpu) behind `via`, over its DRAM bus."""
    g.add_node(name, kind=CPU, node=node, capacity=capacity, link=spec.name, **attrs)
    _duplex(g, via, name, spec, _bw(spec), spec.latency_us * 1e-6)


def _add_nvme(g: nx.DiGraph, name: str, via: str, node: int, spec: LinkSpec, drives: int, **attrs: Any) -> None:
    """An NVMe array (RAID-0 of `drives`) behind `via`."""
    cap = (spec.capacity_gb or 0.0) * 1e9 * drives
    g.add_node(name, kind=NVME, node=node, capacity=cap, link=spec.name, drives=drives, **attrs)
    _duplex(g, via, name, spec, _bw(spec) * drives, spec.latency_us * 1e-6)


def _gpu(g: nx.DiGraph, name: str, gpu: GPUSpec, node: int, **attrs: Any) -> None:
    g.add_node(name, kind=GPU, gpu=gpu.name, node=node, **attrs)


# --------------------------------------------------------------------- servers

def _pcie_tree(g: nx.DiGraph, p: str, i: int, gpu: GPUSpec, n: int, params: Mapping[str, Any],
               spec: ClusterSpec) -> list[str]:
    """Root complex, host memory, NVMe, PCIe switches with their GPUs and NICs; returns the NIC ids."""
    host_link = get_link(gpu.host_link)
    d = _host_defaults(gpu)
    rc = f"{p}.rc"
    g.add_node(rc, kind=SWITCH, node=i, role="root-complex")
    mem = get_link(d["host_memory"])
    _add_memory(g, f"{p}.host", rc, i, mem, (mem.capacity_gb or 0.0) * 1e9)
    if spec.nvme and d.get("nvme"):
        _add_nvme(g, f"{p}.nvme", rc, i, get_link(d["nvme"]), int(params.get("nvme_drives", 1)))
    per, nics_per = int(params["gpus_per_pcie_switch"]), int(params["nics_per_pcie_switch"])
    nics: list[str] = []
    for k in range(math.ceil(n / per)):
        sw = f"{p}.pcie{k}"
        g.add_node(sw, kind=SWITCH, node=i, role="pcie-switch")
        _duplex(g, sw, rc, host_link, _bw(host_link), _half_latency(host_link))
        for r in range(nics_per):
            nic = f"{p}.nic{k * nics_per + r}"
            g.add_node(nic, kind=NIC, node=i)
            _duplex(g, nic, sw, host_link, _bw(host_link), _half_latency(host_link))
            nics.append(nic)
        for j in range(k * per, min(n, (k + 1) * per)):
            # the GPU's own NIC: the switch's NICs dealt out in order (one each when there are as many)
            nic = f"{p}.nic{k * nics_per + (j - k * per) * nics_per // per}" if nics_per else None
            _gpu(g, f"{p}.gpu{j}", gpu, i, **({"nic": nic} if nic else {}))
            _duplex(g, f"{p}.gpu{j}", sw, host_link, _bw(host_link, gpu.host_bw_gbps / 2), _half_latency(host_link))
    return nics


def _hgx_server(g: nx.DiGraph, i: int, gpu: GPUSpec, spec: ClusterSpec) -> list[str]:
    """One HGX/DGX baseboard: GPUs on one logical NVSwitch, and the PCIe tree of `_pcie_tree`."""
    if not gpu.scaleup or gpu.scaleup == "nvlink-bridge":
        raise ConfigError(f"topology hgx needs a GPU with a scale-up switch; {gpu.name} has "
                          f"{gpu.scaleup or 'no scale-up link'}: use topology pcie-server")
    p, n = f"node{i}", spec.gpus_per_node or gpu.gpus_per_node
    nics = _pcie_tree(g, p, i, gpu, n, presets()["servers"]["hgx"], spec)
    scale = get_link(gpu.scaleup)
    sw = f"{p}.nvswitch"
    g.add_node(sw, kind=SWITCH, node=i, role="nvswitch", link=scale.name)
    for j in range(n):
        _duplex(g, f"{p}.gpu{j}", sw, scale, _bw(scale, gpu.scaleup_bw_gbps / 2), _half_latency(scale))
    return nics


def _pcie_server(g: nx.DiGraph, i: int, gpu: GPUSpec, spec: ClusterSpec) -> list[str]:
    """One PCIe server: GPUs behind PCIe switches (GPU-GPU through the switch or the root complex),
    NVLink bridges between pairs for parts that have them."""
    if gpu.scaleup and gpu.scaleup != "nvlink-bridge":
        raise ConfigError(f"topology pcie-server is for PCIe GPUs; {gpu.name} has {gpu.scaleup}: use topology hgx")
    if gpu.host_link == "soc-unified-memory":
        raise ConfigError(f"{gpu.name} is an edge device with unified memory: use topology edge")
    p, n = f"node{i}", spec.gpus_per_node or gpu.gpus_per_node
    nics = _pcie_tree(g, p, i, gpu, n, presets()["servers"]["pcie-server"], spec)
    if gpu.scaleup == "nvlink-bridge":
        bridge = get_link("nvlink-bridge")
        for j in range(0, n - 1, 2):
            _duplex(g, f"{p}.gpu{j}", f"{p}.gpu{j + 1}", bridge, _bw(bridge, gpu.scaleup_bw_gbps / 2),
                    bridge.latency_us * 1e-6)
    return nics


def _nvl72_rack(g: nx.DiGraph, i: int, gpu: GPUSpec, spec: ClusterSpec) -> list[str]:
    """One NVL72 rack: trays of GPUs paired with Grace hosts over NVLink-C2C, every GPU on one NVLink domain."""
    if gpu.scaleup != "nvlink5-nvswitch":
        raise ConfigError(f"topology nvl72 needs NVLink-5 GPUs (gb200, b200); {gpu.name} has "
                          f"{gpu.scaleup or 'no scale-up link'}")
    params = presets()["servers"]["nvl72"]
    per_tray, per_grace = int(params["gpus_per_tray"]), int(params["gpus_per_grace"])
    n = spec.gpus_per_node or int(params["trays"]) * per_tray
    if n % per_tray:
        raise ConfigError(f"topology nvl72: gpus_per_node must be a multiple of {per_tray} (GPUs per tray), got {n}")
    p = f"node{i}"
    scale, c2c = get_link(gpu.scaleup), get_link(gpu.host_link)
    d = _host_defaults(gpu)
    mem, pcie = get_link(d["host_memory"]), get_link("pcie-gen5-x16")
    sw = f"{p}.nvswitch"
    g.add_node(sw, kind=SWITCH, node=i, role="nvswitch", link=scale.name)
    nics: list[str] = []
    nics_per = int(params["nics_per_tray"])
    for t in range(n // per_tray):
        for r in range(nics_per):
            nic = f"{p}.nic{t * nics_per + r}"
            g.add_node(nic, kind=NIC, node=i, tray=t)
            nics.append(nic)
        for h in range(per_tray // per_grace):
            k = t * (per_tray // per_grace) + h
            grace = f"{p}.grace{k}"
            g.add_node(grace, kind=SWITCH, node=i, tray=t, role="grace")
            _add_memory(g, f"{p}.host{k}", grace, i, mem, (mem.capacity_gb or 0.0) * 1e9, tray=t)
            for j in range(k * per_grace, (k + 1) * per_grace):
                own_nic = f"{p}.nic{t * nics_per + (j % per_tray) * nics_per // per_tray}"
                _gpu(g, f"{p}.gpu{j}", gpu, i, tray=t, nic=own_nic)
                _duplex(g, f"{p}.gpu{j}", grace, c2c, _bw(c2c, gpu.host_bw_gbps / 2), _half_latency(c2c))
                _duplex(g, f"{p}.gpu{j}", sw, scale, _bw(scale, gpu.scaleup_bw_gbps / 2), _half_latency(scale))
        first = f"{p}.grace{t * (per_tray // per_grace)}"
        if spec.nvme and d.get("nvme"):
            _add_nvme(g, f"{p}.nvme{t}", first, i, get_link(d["nvme"]), int(params.get("nvme_drives_per_tray", 1)),
                      tray=t)
        for r in range(nics_per):
            # each Grace hosts the NICs of its own GPUs on its PCIe Gen5 lanes
            grace = f"{p}.grace{t * (per_tray // per_grace) + r * (per_tray // per_grace) // nics_per}"
            _duplex(g, f"{p}.nic{t * nics_per + r}", grace, pcie, _bw(pcie), _half_latency(pcie))
    return nics


def _edge_device(g: nx.DiGraph, i: int, gpu: GPUSpec, spec: ClusterSpec) -> list[str]:
    """One device whose GPU and CPU share one DRAM: a copy to 'host memory' reads and writes it."""
    if spec.gpus_per_node not in (None, 1):
        raise ConfigError(f"topology edge has one device per node; got gpus_per_node={spec.gpus_per_node}")
    p = f"node{i}"
    link = get_link(gpu.host_link if gpu.host_link == "soc-unified-memory" else "soc-unified-memory")
    _gpu(g, f"{p}.gpu0", gpu, i)
    # The "host" is the same DRAM: its capacity is the device's memory, and a copy both reads and
    # writes it, so each direction gets half the DRAM bandwidth.
    g.add_node(f"{p}.host", kind=CPU, node=i, capacity=gpu.memory_gb * 2**30, link=link.name, unified=True)
    _duplex(g, f"{p}.gpu0", f"{p}.host", link, _bw(link, gpu.host_bw_gbps / 2), link.latency_us * 1e-6)
    return []


SERVERS: dict[str, Callable[[nx.DiGraph, int, GPUSpec, ClusterSpec], list[str]]] = {
    "hgx": _hgx_server, "pcie-server": _pcie_server, "nvl72": _nvl72_rack, "edge": _edge_device,
}


# --------------------------------------------------------------------- fabric

def _wire_fabric(g: nx.DiGraph, nics: list[list[str]], fabric: LinkSpec, layout: str, oversubscription: float,
                 nodes_per_leaf: int) -> None:
    """Leaves and a (logical) spine joining the servers' NICs."""
    bw, lat = _bw(fabric), _half_latency(fabric)
    on_leaf: dict[str, int] = {}
    for node, node_nics in enumerate(nics):
        for r, nic in enumerate(node_nics):
            leaf = f"leaf{r}" if layout == "rail" else f"leaf{node // nodes_per_leaf}"
            if leaf not in g:
                g.add_node(leaf, kind=SWITCH, role="leaf", link=fabric.name)
            _duplex(g, nic, leaf, fabric, bw, lat)
            on_leaf[leaf] = on_leaf.get(leaf, 0) + 1
    if len(on_leaf) > 1:
        g.add_node("spine0", kind=SWITCH, role="spine", link=fabric.name)
        for leaf, count in on_leaf.items():
            _duplex(g, leaf, "spine0", fabric, count * bw / oversubscription, 0.0)


def _build(server: str, gpu: GPUSpec, spec: ClusterSpec, name: str | None = None) -> Cluster:
    """`spec.nodes` servers of kind `server`, joined by the fabric when there are several."""
    if server not in SERVERS:
        raise ConfigError(f"cluster.node {server!r} is not a server builder; use one of {', '.join(SERVERS)}"
                          f"{did_you_mean(server, SERVERS)}")
    g = nx.DiGraph()
    nodes = spec.nodes or 1
    nics = [SERVERS[server](g, i, gpu, spec) for i in range(nodes)]
    if nodes > 1:
        _join(g, nics, spec.fabric or _default_fabric(server, gpu), spec)
    label = name or spec.name or f"{server}-{gpu.name}" + (f"-x{nodes}" if nodes > 1 else "")
    return Cluster(g, name=label)


def _default_fabric(server: str, gpu: GPUSpec) -> str | None:
    """The scale-out link a server of this kind and part comes with (presets, else the part's host defaults)."""
    params = presets()["servers"].get(server) or {}
    return params.get("fabric") or _host_defaults(gpu).get("fabric")


def _join(g: nx.DiGraph, nics: list[list[str]], fabric_name: str | None, spec: ClusterSpec) -> None:
    """Join the servers' NICs by `fabric_name` with the spec's layout, oversubscription and leaf size (or the
    presets' defaults); nothing without a fabric or NICs."""
    if fabric_name and any(nics):
        fab = presets()["fabric"]
        _wire_fabric(g, nics, get_link(fabric_name), spec.layout or fab["layout"],
                     float(spec.oversubscription or fab["oversubscription"]),
                     spec.nodes_per_leaf or int(fab["nodes_per_leaf"]))


def _servers_for(gpu: GPUSpec, gpus_needed: int) -> tuple[str, int]:
    """The part's usual server kind and how many of them hold `gpus_needed` GPUs."""
    server = usual_server(gpu)
    per_node = 1 if server == "edge" else gpu.gpus_per_node
    return server, max(1, math.ceil(max(int(gpus_needed), 1) / per_node))


# --------------------------------------------------------------------- registered builders

@register("topology", "hgx")
def hgx(gpu: GPUSpec, spec: ClusterSpec) -> Cluster:
    """8-GPU HGX/DGX servers (NVSwitch, PCIe switches, one NIC per GPU, host DRAM, NVMe), joined by a fabric."""
    return _build("hgx", gpu, spec)


@register("topology", "pcie-server")
def pcie_server(gpu: GPUSpec, spec: ClusterSpec) -> Cluster:
    """PCIe GPU servers (L40S, L4, RTX 4090, A100/H100 PCIe): GPUs behind PCIe switches, no NVSwitch."""
    return _build("pcie-server", gpu, spec)


@register("topology", "nvl72")
def nvl72(gpu: GPUSpec, spec: ClusterSpec) -> Cluster:
    """GB200 NVL72 racks: 72 GPUs on one NVLink-5 domain, 18 trays of 4 GPUs and 2 Grace hosts."""
    return _build("nvl72", gpu, spec)


@register("topology", "edge")
def edge(gpu: GPUSpec, spec: ClusterSpec) -> Cluster:
    """One edge device with unified memory (Apple M-series, Jetson, Snapdragon); several are independent."""
    return _build("edge", gpu, spec)


@register("topology", "multi-node")
def multi_node(gpu: GPUSpec, spec: ClusterSpec) -> Cluster:
    """N servers of `node` (hgx, pcie-server, nvl72) on a rail-optimised or fat-tree IB/RoCE fabric."""
    return _build(spec.node or usual_server(gpu), gpu, spec)


def _preset_builder(name: str, base: str, gpu_name: str) -> Builder:
    def build(gpu: GPUSpec, spec: ClusterSpec) -> Cluster:
        return _build(base, get_gpu(gpu_name), spec)
    build.__doc__ = f"Topology {base} with {gpu_name} GPUs (preset)."
    build.__name__ = name.replace("-", "_")
    return build


for _name, _p in presets()["presets"].items():
    if _name.lower() not in REGISTRY.names("topology"):
        REGISTRY.add("topology", _name, _preset_builder(_name, _p["topology"], _p["gpu"]))


# --------------------------------------------------------------------- entry points

def usual_server(gpu: GPUSpec) -> str:
    """The server a part usually ships in: edge for unified-memory SoCs, pcie-server without a
    scale-up switch, nvl72 for rack-scale NVLink-5 parts, hgx otherwise."""
    if gpu.host_link == "soc-unified-memory":
        return "edge"
    if not gpu.scaleup or gpu.scaleup == "nvlink-bridge":
        return "pcie-server"
    if gpu.scaleup == "nvlink5-nvswitch" and gpu.gpus_per_node > 8:
        return "nvl72"
    return "hgx"


def default_cluster(gpu_name: str, gpus_needed: int) -> Cluster:
    """Enough servers of the part's usual kind to hold `gpus_needed` GPUs."""
    gpu = get_gpu(gpu_name)
    server, nodes = _servers_for(gpu, gpus_needed)
    return _build(server, gpu, ClusterSpec(nodes=nodes))


def default_cluster_for(needs: Mapping[str, int]) -> Cluster:
    """Enough servers of each part's usual kind for `needs` (GPU name -> GPUs), joined by one fabric (the first
    part's default): the default cluster of a deployment whose pools run on different GPUs, e.g. H100 prefill and
    H200 decode instances, whose KV transfers then cross the fabric."""
    if len(needs) == 1:
        (name, count), = needs.items()
        return default_cluster(name, count)
    g = nx.DiGraph()
    nics: list[list[str]] = []
    fabric_name = None
    labels = []
    for gpu_name, count in needs.items():
        gpu = get_gpu(gpu_name)
        server, nodes = _servers_for(gpu, count)
        if server == "edge":
            raise ConfigError(f"pools on {', '.join(needs)}: an edge device ({gpu.name}) has no network to the other "
                              f"pools' servers; give `cluster:` as a graph file that connects them")
        for _ in range(nodes):
            nics.append(SERVERS[server](g, len(nics), gpu, ClusterSpec(nodes=nodes)))
        fabric_name = fabric_name or _default_fabric(server, gpu)
        labels.append(f"{server}-{gpu.name}-x{nodes}")
    _join(g, nics, fabric_name, ClusterSpec())
    return Cluster(g, name="+".join(labels))


def build_cluster(spec: Mapping[str, Any] | ClusterSpec | Cluster | nx.DiGraph | None, default_gpu: str) -> Cluster:
    """The cluster a user described (a mapping as in YAML, a `ClusterSpec`, a graph, or a `Cluster`)."""
    if isinstance(spec, Cluster):
        return spec
    if isinstance(spec, nx.Graph):
        return Cluster(spec)
    if spec is None:
        spec = ClusterSpec()
    elif not isinstance(spec, ClusterSpec):
        spec = ClusterSpec.from_dict(spec)
    topology = spec.topology
    if topology is not None and Path(topology).suffix.lower() in GRAPH_SUFFIXES:
        extra = [k for k in spec.to_dict() if k not in ("topology", "name")]
        if extra:
            raise ConfigError(f"cluster: {', '.join(extra)} cannot be combined with a graph file "
                              f"(topology: {topology}); edit the graph instead")
        cluster = Cluster.from_file(topology)
        if spec.name:
            cluster.name = spec.name
        return cluster
    table = presets()["presets"]
    if topology is not None and topology.lower() in table:
        preset = table[topology.lower()]
        want = get_gpu(preset["gpu"])
        if spec.gpu is not None and _resolve_gpu(spec.gpu).name != want.name:
            raise ConfigError(f"cluster.topology {topology} is built of {want.name} GPUs but cluster.gpu is "
                              f"{spec.gpu!r}; drop cluster.gpu or use topology: {preset['topology']}")
        return _build(preset["topology"], want, spec, name=spec.name or topology.lower()
                      + (f"-x{spec.nodes}" if (spec.nodes or 1) > 1 else ""))
    gpu = _resolve_gpu(spec.gpu or default_gpu)
    if topology is None:
        return _build(usual_server(gpu), gpu, spec)
    builder = REGISTRY.get("topology", topology)
    out = builder(gpu, spec)
    if isinstance(out, Cluster):
        return out
    if isinstance(out, nx.Graph):
        return Cluster(out, name=spec.name or topology)
    raise ConfigError(f"topology builder {topology!r} returned {type(out).__name__}; it must return a Cluster "
                      f"or a networkx DiGraph")


def _resolve_gpu(name: str) -> GPUSpec:
    try:
        return get_gpu(name)
    except ServesimError as exc:
        raise ConfigError(f"cluster.gpu: {exc}") from None


__all__ = ["GRAPH_SUFFIXES", "LAYOUTS", "SERVERS", "Builder", "ClusterSpec", "build_cluster", "default_cluster",
           "default_cluster_for",
           "edge", "hgx", "multi_node", "nvl72", "pcie_server", "presets", "usual_server"]
