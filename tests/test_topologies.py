"""Topology builders and the Cluster graph: counts, bandwidths, names, routes, files, errors."""
from __future__ import annotations

import networkx as nx
import pytest
import simpy

from sim.errors import ConfigError, ServesimError
from sim.hardware import get_gpu, get_link
from sim.links import FlowNetwork
from sim.registry import REGISTRY
from topologies import Cluster, ClusterSpec, build_cluster, default_cluster, usual_server


def kinds(cluster: Cluster, devices) -> list[str]:
    return [cluster.link(lid)["kind"] for lid in devices]


# ----------------------------------------------------------------------------- builders

def test_hgx_h100_has_eight_gpus_on_nvswitch_and_one_nic_per_gpu():
    c = build_cluster({"topology": "hgx-h100"}, "a100")
    assert c.nodes == 1
    assert c.gpus() == tuple(f"node0.gpu{i}" for i in range(8))
    assert {c.gpu_name(g) for g in c.gpus()} == {"h100-sxm-80gb"}
    assert len(c.nics(0)) == 8
    assert [c.nic_of(g) for g in c.gpus()] == [f"node0.nic{i}" for i in range(8)]
    nvl = get_link("nvlink4-nvswitch")
    up = c.link("node0.gpu3->node0.nvswitch")
    assert up["kind"] == "nvlink"
    assert up["bandwidth"] == pytest.approx(450e9 * nvl.achievable_fraction)
    pcie = c.link("node0.gpu3->node0.pcie1")
    assert pcie["kind"] == "pcie" and pcie["bandwidth"] == pytest.approx(64e9 * 0.8)
    assert c.host_of("node0.gpu5") == "node0.host"
    assert c.graph.nodes["node0.host"]["capacity"] == pytest.approx(get_link("host-ddr5").capacity_gb * 1e9)
    assert c.nvme_of("node0.gpu5") == "node0.nvme"


def test_gpu_to_gpu_rides_nvlink_on_hgx_and_pcie_on_a_pcie_server():
    hgx = build_cluster({"topology": "hgx-a100"}, "a100")
    assert hgx.path("node0.gpu0", "node0.gpu5") == ("node0.gpu0->node0.nvswitch", "node0.nvswitch->node0.gpu5")
    assert hgx.bottleneck("node0.gpu0", "node0.gpu5") == (pytest.approx(300e9 * 0.58), pytest.approx(2.5e-6))
    box = build_cluster({"topology": "pcie-server", "gpu": "l40s"}, "a100")
    same_switch = box.path("node0.gpu0", "node0.gpu1")
    across = box.path("node0.gpu0", "node0.gpu5")
    assert same_switch == ("node0.gpu0->node0.pcie0", "node0.pcie0->node0.gpu1")
    assert across == ("node0.gpu0->node0.pcie0", "node0.pcie0->node0.rc", "node0.rc->node0.pcie1",
                      "node0.pcie1->node0.gpu5")
    assert set(kinds(box, across)) == {"pcie"}
    assert box.bottleneck("node0.gpu0", "node0.gpu5")[0] == pytest.approx(32e9 * 0.8)


def test_nvlink_bridges_pair_pcie_gpus():
    c = build_cluster({"topology": "pcie-server", "gpu": "h100-pcie"}, "a100")
    assert c.path("node0.gpu0", "node0.gpu1") == ("node0.gpu0->node0.gpu1",)
    assert kinds(c, c.path("node0.gpu1", "node0.gpu2")) == ["pcie", "pcie"]


def test_gpu_to_host_memory_crosses_its_pcie_switch_and_the_dram_bus():
    c = build_cluster({"topology": "hgx-h100"}, "a100")
    path = c.path("node0.gpu2", c.host_of("node0.gpu2"))
    assert path == ("node0.gpu2->node0.pcie1", "node0.pcie1->node0.rc", "node0.rc->node0.host")
    assert kinds(c, path) == ["pcie", "pcie", "host-memory"]
    assert c.path("node0.gpu2", "node0.nvme")[-1] == "node0.rc->node0.nvme"


def test_nvl72_is_one_nvlink_domain_of_18_trays_with_grace_hosts():
    c = build_cluster({"topology": "gb200-nvl72"}, "a100")
    assert c.nodes == 1 and len(c.gpus()) == 72
    assert len({c.graph.nodes[g]["tray"] for g in c.gpus()}) == 18
    assert c.path("node0.gpu0", "node0.gpu71") == ("node0.gpu0->node0.nvswitch", "node0.nvswitch->node0.gpu71")
    assert c.host_of("node0.gpu0") == c.host_of("node0.gpu1") == "node0.host0"
    assert c.host_of("node0.gpu2") == "node0.host1"
    assert kinds(c, c.path("node0.gpu2", "node0.host1")) == ["nvlink", "host-memory"]
    with pytest.raises(ConfigError, match="NVLink-5"):
        build_cluster({"topology": "nvl72", "gpu": "h100"}, "a100")


def test_edge_device_has_unified_memory():
    c = build_cluster(None, "apple-m2")
    assert c.gpus() == ("node0.gpu0",)
    assert kinds(c, c.path("node0.gpu0", c.host_of("node0.gpu0"))) == ["host-memory"]
    assert c.nvme_of("node0.gpu0") is None


def test_multi_node_rail_keeps_same_rail_traffic_off_the_spine():
    c = build_cluster({"topology": "multi-node", "node": "hgx", "gpu": "h100", "nodes": 2, "fabric": "ib-ndr",
                       "layout": "rail"}, "a100")
    assert c.nodes == 2 and len(c.gpus()) == 16
    same = c.path("node0.gpu3", "node1.gpu3")
    assert "node0.nic3->leaf3" in same and not any("spine" in lid for lid in same)
    cross = c.path("node0.gpu3", "node1.gpu4")
    assert any("spine0" in lid for lid in cross)
    ndr = get_link("ib-ndr")
    assert c.bottleneck("node0.gpu3", "node1.gpu3")[0] == pytest.approx(ndr.bandwidth)


def _cross_spine_rate(oversubscription: float) -> float:
    """Rate of each of 8 concurrent GPU i -> GPU i flows between two servers on different leaves."""
    c = build_cluster({"topology": "multi-node", "node": "hgx", "gpu": "a100", "nodes": 2, "layout": "fat-tree",
                       "nodes_per_leaf": 1, "oversubscription": oversubscription}, "a100")
    env = simpy.Environment()
    net = FlowNetwork(env, c.link_capacities())
    for i in range(8):
        path = c.path(f"node0.gpu{i}", f"node1.gpu{i}")
        assert "leaf0->spine0" in path
        net.transfer(path, 1e9, tag=f"f{i}")
    return net.rates()["f0"]


def test_fat_tree_oversubscription_halves_the_cross_spine_rate():
    full, half = _cross_spine_rate(1.0), _cross_spine_rate(2.0)
    assert full == pytest.approx(get_link("ib-hdr").bandwidth)
    assert half == pytest.approx(full / 2)


def test_fat_tree_servers_on_one_leaf_do_not_cross_the_spine():
    c = build_cluster({"topology": "hgx-a100", "nodes": 2, "layout": "fat-tree"}, "a100")
    assert "spine0" not in c.graph        # default nodes_per_leaf = 4: both servers on leaf0
    assert c.path("node0.gpu0", "node1.gpu5")[2:4] == ("node0.nic0->leaf0", "leaf0->node1.nic5")


def test_presets_and_defaults():
    assert build_cluster({"topology": "hgx-b200", "nodes": 3}, "a100").nodes == 3
    assert usual_server(get_gpu("h100")) == "hgx"
    assert usual_server(get_gpu("l40s")) == "pcie-server"
    assert usual_server(get_gpu("gb200")) == "nvl72"
    assert usual_server(get_gpu("jetson-orin-nx")) == "edge"
    d = default_cluster("h100", 20)
    assert d.nodes == 3 and len(d.gpus()) == 24
    assert default_cluster("l4", 1).nodes == 1
    assert len(default_cluster("gb200", 100).gpus()) == 144
    # the deployment's GPU is the default; cluster.gpu overrides it
    assert build_cluster({"topology": "hgx"}, "a100").gpu_types() == ("a100-sxm-80gb",)
    assert build_cluster({"topology": "hgx", "gpu": "h200"}, "a100").gpu_types() == ("h200-sxm-141gb",)
    for name in ("hgx", "pcie-server", "nvl72", "multi-node", "edge", "hgx-h100", "hgx-a100", "hgx-h200", "hgx-b200"):
        assert name in REGISTRY.names("topology")


def test_cluster_spec_round_trips():
    spec = ClusterSpec.from_dict({"topology": "multi-node", "node": "hgx", "nodes": 4, "layout": "fat-tree",
                                  "oversubscription": 2.0})
    assert ClusterSpec.from_dict(spec.to_dict()) == spec
    assert build_cluster(spec, "h100").nodes == 4


# ----------------------------------------------------------------------------- graphs from users

def test_graph_json_round_trip(tmp_path):
    c = build_cluster({"topology": "hgx-h100", "nodes": 2}, "a100")
    f = tmp_path / "cluster.json"
    c.to_json(f)
    back = build_cluster({"topology": str(f)}, "a100")
    assert back.gpus() == c.gpus()
    assert back.link_capacities() == c.link_capacities()
    assert back.path("node0.gpu1", "node1.gpu6") == c.path("node0.gpu1", "node1.gpu6")
    assert back.nic_of("node1.gpu6") == "node1.nic6"


def test_graphml_and_a_users_own_graph(tmp_path):
    g = nx.Graph()                      # undirected: each link becomes both directions
    g.add_node("box.gpu0", kind="gpu", gpu="l4", node=0)
    g.add_node("box.gpu1", kind="gpu", gpu="l4", node=0)
    g.add_node("box.sw", kind="switch")
    g.add_node("box.mem", kind="cpu", capacity=256e9)
    g.add_edge("box.gpu0", "box.sw", kind="pcie", bandwidth=20e9, latency_s=1e-6)
    g.add_edge("box.gpu1", "box.sw", kind="pcie", bandwidth=10e9, latency_s=1e-6)
    g.add_edge("box.sw", "box.mem", kind="host-memory", bandwidth=100e9, latency_s=1e-7)
    c = Cluster(g)
    assert c.bottleneck("box.gpu1", "box.gpu0") == (10e9, pytest.approx(2e-6))
    assert c.host_of("box.gpu0") == "box.mem"
    f = tmp_path / "box.graphml"
    nx.write_graphml(g, f)
    assert build_cluster({"topology": str(f)}, "a100").link_capacities() == c.link_capacities()


def test_gpus_never_relay_traffic():
    g = nx.DiGraph()
    for n in ("a", "b", "c"):
        g.add_node(n, kind="gpu", gpu="l4")
    g.add_edge("a", "b", bandwidth=1e9)
    g.add_edge("b", "c", bandwidth=1e9)
    with pytest.raises(ConfigError, match="no path from 'a' to 'c'"):
        Cluster(g).path("a", "c")


@pytest.mark.parametrize("spec, message", [
    ({"topology": "hgx", "nodez": 2}, "unknown key 'nodez'"),
    ({"topology": "hgx", "nodes": 0}, "cluster.nodes must be an integer >= 1"),
    ({"topology": "hgx", "layout": "torus"}, "cluster.layout 'torus'"),
    ({"topology": "hgx", "oversubscription": -1}, "oversubscription"),
    ({"topology": "hgxx"}, "unknown topology 'hgxx'"),
    ({"topology": "hgx", "gpu": "l40s"}, "use topology pcie-server"),
    ({"topology": "pcie-server", "gpu": "h100"}, "use topology hgx"),
    ({"topology": "hgx-h100", "gpu": "a100"}, "drop cluster.gpu"),
    ({"topology": "hgx", "gpu": "h1000"}, "unknown GPU"),
    ({"topology": "missing.json"}, "does not exist"),
    ({"topology": "x.json", "nodes": 2}, "cannot be combined with a graph file"),
    ({"topology": "multi-node", "node": "dgx"}, "not a server builder"),
])
def test_bad_specs_are_one_line_errors(spec, message):
    with pytest.raises(ServesimError, match=message) as info:
        build_cluster(spec, "h100")
    assert "\n" not in str(info.value)


def _graph(edits=None):
    g = nx.DiGraph()
    g.add_node("n.gpu0", kind="gpu", gpu="h100")
    g.add_node("n.sw", kind="switch")
    g.add_edge("n.gpu0", "n.sw", bandwidth=1e9, latency_s=0.0)
    for (node, key), value in (edits or {}).items():
        if isinstance(node, tuple):
            g.edges[node][key] = value
        else:
            g.nodes[node][key] = value
    return g


@pytest.mark.parametrize("edits, message", [
    ({("n.sw", "kind"): "router"}, "kind 'router'"),
    ({("n.gpu0", "gpu"): None}, "without a 'gpu' attribute"),
    ({("n.gpu0", "gpu"): "h1000"}, "unknown GPU"),
    ({(("n.gpu0", "n.sw"), "bandwidth"): 0}, "bandwidth"),
    ({(("n.gpu0", "n.sw"), "latency_s"): -1}, "latency_s"),
    ({("n.gpu0", "node"): "x"}, "attribute 'node'"),
    ({("n.gpu0", "nic"): "n.sw"}, "not a node of kind 'nic'"),
])
def test_bad_graphs_are_one_line_config_errors(edits, message):
    with pytest.raises(ConfigError, match=message) as info:
        Cluster(_graph(edits))
    assert "\n" not in str(info.value)


def test_a_graph_without_gpus_or_with_int_ids_is_refused():
    g = nx.DiGraph()
    g.add_node("s", kind="switch")
    with pytest.raises(ConfigError, match="no node of kind 'gpu'"):
        Cluster(g)
    g = nx.DiGraph()
    g.add_node(0, kind="gpu", gpu="h100")
    with pytest.raises(ConfigError, match="must be a non-empty string"):
        Cluster(g)


def test_the_cluster_is_a_copy_the_users_graph_cannot_change_it():
    g = _graph()
    c = Cluster(g)
    g.edges["n.gpu0", "n.sw"]["bandwidth"] = 5.0
    assert c.link("n.gpu0->n.sw")["bandwidth"] == 1e9
    with pytest.raises(nx.NetworkXError):
        c.graph.add_node("x")
