"""FlowNetwork: max-min fair sharing with exact completion times, checked against hand computation."""
from __future__ import annotations

import math

import pytest
import simpy
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.errors import ConfigError
from sim.links import FlowNetwork, LinkCapacity, transfer_time


def run_transfers(links, flows, record=False):
    """Start `flows` = [(start time, path, bytes, tag)]; return ({tag: finish time}, {tag: duration}, net)."""
    env = simpy.Environment()
    net = FlowNetwork(env, links, record=record)
    finish, duration = {}, {}

    def starter(t, path, nbytes, tag):
        yield env.timeout(t)
        d = yield net.transfer(path, nbytes, tag)
        finish[tag] = env.now
        duration[tag] = d

    for t, path, nbytes, tag in flows:
        env.process(starter(t, path, nbytes, tag))
    env.run()
    return finish, duration, net


ONE = {"L": LinkCapacity(bandwidth=100.0, latency_s=0.0)}


def test_a_flow_alone_gets_the_whole_bandwidth():
    finish, duration, _ = run_transfers(ONE, [(0.0, ["L"], 250.0, "a")])
    assert finish == {"a": pytest.approx(2.5)}
    assert duration == {"a": pytest.approx(2.5)}


def test_two_equal_flows_share_and_finish_together_at_twice_the_time():
    finish, _, _ = run_transfers(ONE, [(0.0, ["L"], 100.0, "a"), (0.0, ["L"], 100.0, "b")])
    assert finish["a"] == pytest.approx(2.0)
    assert finish["b"] == pytest.approx(2.0)


def test_the_path_bottleneck_sets_the_rate():
    links = {"fast": LinkCapacity(1000.0), "slow": LinkCapacity(10.0)}
    finish, _, _ = run_transfers(links, [(0.0, ["fast", "slow"], 50.0, "a")])
    assert finish["a"] == pytest.approx(5.0)


def test_max_min_a_flow_held_back_elsewhere_leaves_the_rest_to_the_others():
    # a crosses L (100) and S (20): it is held to 20 by S, so b gets the 80 left on L, not 50.
    links = {"L": LinkCapacity(100.0), "S": LinkCapacity(20.0)}
    env = simpy.Environment()
    net = FlowNetwork(env, links)
    net.transfer(["L", "S"], 1000.0, "a")
    net.transfer(["L"], 1000.0, "b")
    assert net.rates() == {"a": pytest.approx(20.0), "b": pytest.approx(80.0)}
    finish, _, _ = run_transfers(links, [(0.0, ["L", "S"], 200.0, "a"), (0.0, ["L"], 400.0, "b")])
    # a: 200 / 20 = 10 s. b: 80 B/s for 5 s -> 400 B: done at 5 s.
    assert finish == {"a": pytest.approx(10.0), "b": pytest.approx(5.0)}


def test_a_flow_starting_mid_transfer_slows_the_other_exactly_as_by_hand():
    # a: 100 B alone at 100 B/s; at t=0.5 it has 50 B left when b (30 B) arrives; both get 50 B/s:
    # b is done at 0.5 + 30/50 = 1.1, when a has 20 B left; alone again it ends at 1.1 + 0.2 = 1.3.
    finish, duration, _ = run_transfers(ONE, [(0.0, ["L"], 100.0, "a"), (0.5, ["L"], 30.0, "b")])
    assert finish == {"a": pytest.approx(1.3), "b": pytest.approx(1.1)}
    assert duration == {"a": pytest.approx(1.3), "b": pytest.approx(0.6)}


def test_flows_finishing_together_fire_in_start_order():
    env = simpy.Environment()
    net = FlowNetwork(env, ONE)
    log = []
    for tag in ("b", "a", "c"):
        net.transfer(["L"], 100.0, tag).callbacks.append(lambda ev, tag=tag: log.append((tag, env.now, ev.value)))
    env.run()
    assert log == [("b", pytest.approx(3.0), pytest.approx(3.0)), ("a", pytest.approx(3.0), pytest.approx(3.0)),
                   ("c", pytest.approx(3.0), pytest.approx(3.0))]


def test_latency_is_paid_once_per_link_of_the_path():
    links = {"x": LinkCapacity(100.0, latency_s=0.25), "y": LinkCapacity(50.0, latency_s=0.5)}
    finish, _, _ = run_transfers(links, [(0.0, ["x", "y"], 100.0, "a")])
    assert finish["a"] == pytest.approx(0.25 + 0.5 + 100.0 / 50.0)
    assert transfer_time(100.0, links.values()) == pytest.approx(finish["a"])


def test_latency_is_not_bandwidth_the_link_is_free_while_the_last_byte_travels():
    # a pays 1 s of latency after its bytes leave; b, starting right when a's bytes are out, gets the full link.
    links = {"L": LinkCapacity(100.0, latency_s=1.0)}
    finish, _, _ = run_transfers(links, [(0.0, ["L"], 100.0, "a"), (1.0, ["L"], 100.0, "b")])
    assert finish == {"a": pytest.approx(2.0), "b": pytest.approx(3.0)}


def test_zero_bytes_pay_latency_only_and_an_empty_path_is_instant():
    links = {"L": LinkCapacity(100.0, latency_s=0.125)}
    finish, duration, _ = run_transfers(links, [(0.0, ["L"], 0.0, "z"), (1.0, [], 1e9, "e")])
    assert finish == {"z": pytest.approx(0.125), "e": 1.0}
    assert duration == {"z": pytest.approx(0.125), "e": 0.0}


def test_bytes_are_conserved_and_accounted_per_link():
    links = {"A": LinkCapacity(100.0), "B": LinkCapacity(40.0), "C": LinkCapacity(70.0)}
    flows = [(0.0, ["A", "B"], 123.0, "f1"), (0.3, ["A"], 77.0, "f2"), (0.1, ["A", "C"], 250.0, "f3"),
             (2.0, ["B", "C"], 10.0, "f4")]
    _, _, net = run_transfers(links, flows)
    stats = net.link_stats()
    assert net.delivered_bytes == pytest.approx(sum(f[2] for f in flows))
    assert net.requested_bytes == net.delivered_bytes
    for lid in links:
        carried = sum(f[2] for f in flows if lid in f[1])
        assert stats[lid]["bytes"] == pytest.approx(carried, rel=1e-12)
        assert stats[lid]["busy_s"] == pytest.approx(carried / links[lid].bandwidth, rel=1e-12)
    assert net.active == 0


def test_utilisation_windows_and_the_timeline():
    finish, _, net = run_transfers(ONE, [(0.0, ["L"], 100.0, "a"), (3.0, ["L"], 50.0, "b")], record=True)
    assert finish == {"a": pytest.approx(1.0), "b": pytest.approx(3.5)}
    assert net.rate_timeline() == [(0.0, "L", 1.0), (pytest.approx(1.0), "L", 0.0), (3.0, "L", 1.0),
                                   (pytest.approx(3.5), "L", 0.0)]
    assert net.utilisation("L") == pytest.approx(1.5 / 3.5)
    assert net.utilisation("L", 0.5, 3.25) == pytest.approx(0.75 / 2.75)
    assert net.utilisation("L", 1.0, 3.0) == 0.0
    assert net.link_stats()["L"]["mean_utilisation"] == pytest.approx(1.5 / 3.5)


def test_windows_need_record_and_bad_input_is_one_line():
    _, _, net = run_transfers(ONE, [(0.0, ["L"], 100.0, "a")])
    with pytest.raises(ConfigError, match="record=True"):
        net.utilisation("L", 0.2, 0.4)
    with pytest.raises(ConfigError, match="unknown link id 'M'"):
        net.transfer(["M"], 1.0)
    with pytest.raises(ConfigError, match="twice"):
        net.transfer(["L", "L"], 1.0)
    with pytest.raises(ConfigError, match="nbytes"):
        net.transfer(["L"], -1.0)
    with pytest.raises(ConfigError, match="bandwidth"):
        LinkCapacity(0.0)


def test_many_flows_at_one_instant_keep_float_dust_out_of_the_result():
    n = 1000
    links = {"L": LinkCapacity(3e10, 2e-6)}
    finish, _, net = run_transfers(links, [(1e4, ["L"], 1e6 + i, f"f{i}") for i in range(n)])
    last = max(finish.values())
    assert last == pytest.approx(1e4 + sum(1e6 + i for i in range(n)) / 3e10 + 2e-6, rel=1e-12)
    assert net.active == 0


# ----------------------------------------------------------------------------- properties

LINKS = {name: LinkCapacity(bw, lat) for name, bw, lat in
         [("a", 100.0, 0.01), ("b", 40.0, 0.0), ("c", 250.0, 0.02), ("d", 10.0, 0.05)]}
paths = st.lists(st.sampled_from(sorted(LINKS)), min_size=1, max_size=4, unique=True)
flow = st.tuples(st.floats(0.0, 5.0), paths, st.floats(0.0, 500.0))


@settings(max_examples=150, deadline=None)
@given(st.lists(flow, min_size=1, max_size=12))
def test_no_flow_beats_its_uncontended_closed_form(flows):
    specs = [(t, p, b, f"f{i}") for i, (t, p, b) in enumerate(flows)]
    finish, duration, net = run_transfers(LINKS, specs)
    for t, p, b, tag in specs:
        alone = transfer_time(b, [LINKS[x] for x in p])
        assert duration[tag] >= alone * (1 - 1e-9) - 1e-12
        assert finish[tag] == pytest.approx(t + duration[tag])
    assert net.delivered_bytes == pytest.approx(sum(b for _, _, b, _ in specs))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.floats(1.0, 1e6), min_size=1, max_size=20), st.floats(0.0, 0.01))
def test_work_conservation_on_one_link(sizes, latency):
    links = {"L": LinkCapacity(1e5, latency)}
    finish, _, _ = run_transfers(links, [(0.0, ["L"], b, f"f{i}") for i, b in enumerate(sizes)])
    assert max(finish.values()) == pytest.approx(sum(sizes) / 1e5 + latency, rel=1e-9)
    # max-min on one link with a common start: smaller flows never finish after larger ones
    order = sorted(range(len(sizes)), key=lambda i: sizes[i])
    times = [finish[f"f{i}"] for i in order]
    assert all(x <= y * (1 + 1e-9) for x, y in zip(times, times[1:]))
    assert not math.isnan(sum(times))
