"""Collectives priced on the topology: the closed form, the link that decides, and NCCL measurements."""
from __future__ import annotations

import math

import pytest

from experiments.validation import collectives as validation
from sim.cost import allreduce_time as ring_formula
from sim.errors import ConfigError
from sim.hardware import get_link
from topologies import allreduce_params, allreduce_time, alltoall_time, build_cluster, p2p_time
from topologies.collectives import NCCL_LAUNCH_S

MiB = 2**20


@pytest.fixture(scope="module")
def hgx():
    return build_cluster({"topology": "hgx-h100", "nodes": 2}, "h100")


@pytest.fixture(scope="module")
def box():
    return build_cluster({"topology": "pcie-server", "gpu": "l40s"}, "l40s")


def test_ring_closed_form_on_nvswitch(hgx):
    nvl = get_link("nvlink4-nvswitch")
    gpus = hgx.gpus(0)[:4]
    busbw, latency = allreduce_params(hgx, gpus)
    assert busbw == pytest.approx(450e9 * nvl.achievable_fraction)
    assert latency == pytest.approx(NCCL_LAUNCH_S + 2 * 3 * nvl.latency_us * 1e-6)
    nbytes = 64 * MiB
    assert allreduce_time(hgx, gpus, nbytes) == pytest.approx(latency + 2 * 3 / 4 * nbytes / busbw)
    assert allreduce_time(hgx, gpus, nbytes) == ring_formula(nbytes, 4, busbw, latency)


def test_one_gpu_costs_nothing(hgx):
    assert allreduce_time(hgx, ["node0.gpu0"], 1e9) == 0.0
    assert allreduce_params(hgx, ["node0.gpu0"]) == (math.inf, 0.0)
    assert alltoall_time(hgx, ["node0.gpu0"], 1e9) == 0.0
    assert p2p_time(hgx, "node0.gpu0", "node0.gpu0", 1e9) == 0.0


def test_tp_across_nvlink_beats_tp_across_pcie(hgx, box):
    nbytes = 16 * MiB
    nvlink = allreduce_time(hgx, hgx.gpus(0)[:4], nbytes)
    pcie = allreduce_time(box, box.gpus(0)[:4], nbytes)
    assert pcie > 5 * nvlink
    # four GPUs on one PCIe switch share nothing but their own ports; eight cross the root complex
    assert allreduce_params(box, box.gpus()[:4])[0] == pytest.approx(32e9 * 0.8)
    assert allreduce_params(box, box.gpus()[:8])[1] > allreduce_params(box, box.gpus()[:4])[1]


def test_the_ring_follows_the_pcie_layout_whatever_the_given_order():
    # L4 server: gpu0-3 on pcie0, gpu4-7 on pcie1. The natural ring 0,1,4,5 crosses the root complex
    # once each way (busbw = one PCIe port); the order 0,4,1,5 taken literally would put two hops on
    # each switch up-link (half that).
    box = build_cluster({"topology": "pcie-server", "gpu": "l4"}, "l4")
    port = 32e9 * 0.8
    assert allreduce_params(box, ["node0.gpu0", "node0.gpu1", "node0.gpu4", "node0.gpu5"])[0] == pytest.approx(port)
    assert allreduce_params(box, ["node0.gpu0", "node0.gpu4", "node0.gpu1", "node0.gpu5"])[0] == pytest.approx(port)


def test_cross_node_is_slower_and_goes_through_the_nics(hgx):
    nbytes = 64 * MiB
    one = allreduce_time(hgx, hgx.gpus(0), nbytes)
    two = allreduce_time(hgx, hgx.gpus(), nbytes)
    assert two > one
    busbw, latency = allreduce_params(hgx, hgx.gpus())
    # 8 channels, one per rail: the servers' 8 NDR NICs together carry the cross-node hops
    assert busbw == pytest.approx(8 * get_link("ib-ndr").bandwidth)
    assert latency > allreduce_params(hgx, hgx.gpus(0))[1]
    # two GPUs per server: the cross-node hops have only 2 NICs to share
    pair = ["node0.gpu0", "node0.gpu1", "node1.gpu0", "node1.gpu1"]
    assert allreduce_params(hgx, pair)[0] == pytest.approx(2 * get_link("ib-ndr").bandwidth)


def test_tree_saves_latency_across_nodes_not_bandwidth(hgx):
    ring = allreduce_params(hgx, hgx.gpus(), "ring")
    tree = allreduce_params(hgx, hgx.gpus(), "tree")
    assert tree[0] == ring[0]
    assert tree[1] < ring[1]
    small = 64 * 1024
    assert allreduce_time(hgx, hgx.gpus(), small, "auto") == allreduce_time(hgx, hgx.gpus(), small, "tree")
    with pytest.raises(ConfigError, match="algorithm 'butterfly'"):
        allreduce_time(hgx, hgx.gpus(), small, "butterfly")


def test_oversubscribed_fat_tree_halves_cross_node_busbw():
    def busbw(o):
        c = build_cluster({"topology": "multi-node", "node": "hgx", "gpu": "a100", "nodes": 2, "layout": "fat-tree",
                           "nodes_per_leaf": 1, "oversubscription": o}, "a100")
        return allreduce_params(c, c.gpus())[0]
    hdr = get_link("ib-hdr").bandwidth
    assert busbw(1.0) == pytest.approx(min(8 * hdr, 300e9 * 0.58))
    assert busbw(4.0) == pytest.approx(8 * hdr / 4)


def test_alltoall_uniform_and_skewed(hgx):
    gpus = hgx.gpus(0)
    port = 450e9 * get_link("nvlink4-nvswitch").achievable_fraction
    nbytes = 8 * MiB
    base = alltoall_time(hgx, gpus, nbytes)
    latency = NCCL_LAUNCH_S + 2.5e-6
    # each GPU sends 7/8 of its buffer out of its own port
    assert base == pytest.approx(latency + nbytes * 7 / 8 / port)
    # the hottest GPU receives twice the mean: its port carries 2 x 7/8
    assert alltoall_time(hgx, gpus, nbytes, skew=2.0) == pytest.approx(latency + 2 * nbytes * 7 / 8 / port)
    assert alltoall_time(hgx, hgx.gpus(), nbytes) > base
    with pytest.raises(ConfigError, match="skew"):
        alltoall_time(hgx, gpus, nbytes, skew=0.5)


def test_p2p_is_latency_plus_bytes_over_the_narrowest_link(hgx):
    bw, lat = hgx.bottleneck("node0.gpu7", "node1.gpu7")
    assert bw == pytest.approx(get_link("ib-ndr").bandwidth)
    assert p2p_time(hgx, "node0.gpu7", "node1.gpu7", 1e9) == pytest.approx(lat + 1e9 / bw)
    assert p2p_time(hgx, "node0.gpu0", "node0.gpu1", 1e9) < p2p_time(hgx, "node0.gpu7", "node1.gpu7", 1e9)


def test_bad_gpu_sets(hgx):
    with pytest.raises(ConfigError, match="appears twice"):
        allreduce_time(hgx, ["node0.gpu0", "node0.gpu0"], 1.0)
    with pytest.raises(ConfigError, match="not a GPU"):
        allreduce_time(hgx, ["node0.gpu0", "node0.nvswitch"], 1.0)


def test_vidur_dgx_a100_allreduce_median_error_within_15_percent():
    rows = validation.rows()
    assert {r.gpus for r in rows} == {2, 4, 8}
    assert len(rows) > 2000
    table = validation.error_table(rows)
    overall = table.iloc[-1]
    assert overall.gpus == "all"
    assert overall.median_abs_error <= validation.TARGET_MEDIAN
    for r in table.itertuples():                   # no GPU count is off on its own
        assert r.median_abs_error <= validation.TARGET_MEDIAN, r
