"""Placement: TP groups inside a server, PP stages consecutive, groups packed server by server."""
from __future__ import annotations

import warnings

import networkx as nx
import pytest

from sim.errors import ConfigError, DeploymentError
from topologies import Cluster, GroupRequest, build_cluster, place


@pytest.fixture(scope="module")
def two_hgx():
    return build_cluster({"topology": "hgx-h100", "nodes": 2}, "h100")


def test_replicas_are_packed_server_by_server_on_the_lowest_free_gpus(two_hgx):
    out = place(two_hgx, [GroupRequest("big", 3, tp=4), GroupRequest("small", 2, tp=2)])
    assert [(p.group, p.index, p.stages) for p in out] == [
        ("big", 0, (("node0.gpu0", "node0.gpu1", "node0.gpu2", "node0.gpu3"),)),
        ("big", 1, (("node0.gpu4", "node0.gpu5", "node0.gpu6", "node0.gpu7"),)),
        ("big", 2, (("node1.gpu0", "node1.gpu1", "node1.gpu2", "node1.gpu3"),)),
        ("small", 0, (("node1.gpu4", "node1.gpu5"),)),
        ("small", 1, (("node1.gpu6", "node1.gpu7"),)),
    ]
    assert out[3].name == "small[0]"


def test_no_gpu_is_used_twice_and_every_tp_group_is_inside_one_server(two_hgx):
    out = place(two_hgx, [GroupRequest("a", 1, tp=2, pp=2), GroupRequest("b", 1, tp=8), GroupRequest("c", 2, tp=1)])
    gpus = [g for p in out for g in p.gpus]
    assert len(gpus) == len(set(gpus)) == 4 + 8 + 2
    for p in out:
        for i, stage in enumerate(p.stages):
            assert {two_hgx.node_of(g) for g in stage} == {p.node_of_stage(i)}


def test_pp_stages_are_consecutive_and_spill_to_the_next_server(two_hgx):
    out = place(two_hgx, [GroupRequest("first", 1, tp=4), GroupRequest("pp", 1, tp=4, pp=3)])
    pp = out[1]
    assert pp.tp == 4 and pp.pp == 3
    assert pp.stages == (("node0.gpu4", "node0.gpu5", "node0.gpu6", "node0.gpu7"),
                         ("node1.gpu0", "node1.gpu1", "node1.gpu2", "node1.gpu3"),
                         ("node1.gpu4", "node1.gpu5", "node1.gpu6", "node1.gpu7"))
    assert [pp.node_of_stage(i) for i in range(3)] == [0, 1, 1]


def test_a_replica_that_fits_in_one_server_goes_there_whole(two_hgx):
    # after a tp=4 group, server 0 has 4 free GPUs: a tp=4 x pp=2 replica goes whole to server 1,
    # so its pipeline sends stay on NVLink
    out = place(two_hgx, [GroupRequest("first", 1, tp=4), GroupRequest("pp", 1, tp=4, pp=2), GroupRequest("c", 4, 1)])
    assert out[1].stages == (("node1.gpu0", "node1.gpu1", "node1.gpu2", "node1.gpu3"),
                             ("node1.gpu4", "node1.gpu5", "node1.gpu6", "node1.gpu7"))
    assert [p.gpus for p in out[2:]] == [(f"node0.gpu{i}",) for i in range(4, 8)]
    whole = place(two_hgx, [GroupRequest("w", 2, tp=2, pp=4)])
    assert [{two_hgx.node_of(g) for g in p.gpus} for p in whole] == [{0}, {1}]


def test_tp_larger_than_a_server_is_refused_naming_tp_and_the_node_size(two_hgx):
    with pytest.raises(DeploymentError, match=r"tp=16 does not fit in one node of 8 h100-sxm-80gb GPUs") as info:
        place(two_hgx, [GroupRequest("huge", 1, tp=16)])
    assert "\n" not in str(info.value)


def test_tp_across_nodes_when_allowed_warns_and_spans_consecutive_servers(two_hgx):
    with pytest.warns(UserWarning, match="tp=16 spans nodes"):
        out = place(two_hgx, [GroupRequest("huge", 1, tp=16, allow_cross_node_tp=True)])
    assert out[0].gpus == two_hgx.gpus()
    assert out[0].node_of_stage(0) == 0


def test_too_many_gpus_is_refused_with_the_count_and_the_fix(two_hgx):
    with pytest.raises(DeploymentError) as info:
        place(two_hgx, [GroupRequest("a", 3, tp=4), GroupRequest("b", 3, tp=2)])
    assert str(info.value) == ("the deployment needs 18 h100-sxm-80gb GPUs but the cluster has 16; "
                               "add nodes (cluster.nodes) or reduce replicas")


def test_fragmentation_is_refused_in_one_line(two_hgx):
    # 2 x tp=6 leaves 2 free GPUs per server: 4 free in all, but no server holds a tp=4 group
    with pytest.raises(DeploymentError, match="scattered over nodes"):
        place(two_hgx, [GroupRequest("a", 2, tp=6), GroupRequest("b", 1, tp=4)])


def _mixed_cluster() -> Cluster:
    a = build_cluster({"topology": "hgx-a100"}, "a100").graph
    h = build_cluster({"topology": "hgx-h100"}, "h100").graph
    g = nx.DiGraph()
    g.update(a)
    g.update(nx.relabel_nodes(h, {n: n.replace("node0.", "node1.") for n in h}))
    for n in g:
        if n.startswith("node1."):
            g.nodes[n]["node"] = 1
            if g.nodes[n].get("nic"):
                g.nodes[n]["nic"] = g.nodes[n]["nic"].replace("node0.", "node1.")
    return Cluster(g, name="mixed")


def test_only_gpus_of_the_requested_part_are_used():
    c = _mixed_cluster()
    out = place(c, [GroupRequest("h", 2, tp=4, gpu="h100"), GroupRequest("a", 1, tp=8, gpu="a100-sxm-80gb")])
    assert {c.gpu_name(g) for g in out[0].gpus + out[1].gpus} == {"h100-sxm-80gb"}
    assert {c.gpu_name(g) for g in out[2].gpus} == {"a100-sxm-80gb"}
    with pytest.raises(DeploymentError, match="needs 16 h100-sxm-80gb GPUs but the cluster has 8"):
        place(c, [GroupRequest("h", 4, tp=4, gpu="h100")])


def test_placement_is_deterministic(two_hgx):
    groups = [GroupRequest("a", 2, tp=2, pp=2), GroupRequest("b", 3, tp=1), GroupRequest("c", 1, tp=4)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        first = place(two_hgx, groups)
    again = place(build_cluster({"topology": "hgx-h100", "nodes": 2}, "h100"), list(groups))
    assert first == again


def test_bad_requests_are_config_errors(two_hgx):
    with pytest.raises(ConfigError, match="tp must be an integer >= 1"):
        GroupRequest("x", 1, tp=0)
    with pytest.raises(ConfigError, match="ep=3 must divide tp=4"):
        GroupRequest("x", 1, tp=4, ep=3)
    with pytest.raises(ConfigError, match="used twice"):
        place(two_hgx, [GroupRequest("x", 1, tp=1), GroupRequest("x", 1, tp=1)])
    assert place(two_hgx, [GroupRequest("moe", 1, tp=4, ep=4)])[0].ep == 4
