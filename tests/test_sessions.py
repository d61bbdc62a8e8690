"""Conversations, agent loops and closed-loop clients: prompt growth, pacing by completions, and end to end.

The pacing tests drive a workload's SimPy process against a toy server that finishes every request
a known time after it arrives, and assert the exact timeline; the end-to-end tests run the real
engine through `experiments.runner.run`.
"""
from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import numpy as np
import pytest
import simpy
from scipy import stats

from experiments.runner import run
from workloads.build import build_workload

SESSIONS = {"type": "sessions", "arrival": {"process": "poisson", "rate": 0.5, "duration_s": 60},
            "turns": {"dist": "uniform", "low": 2, "high": 5}, "system_prompt_len": 40, "num_system_prompts": 2,
            "user_message_len": {"dist": "uniform", "low": 20, "high": 60},
            "output_len": {"dist": "uniform", "low": 10, "high": 40},
            "think_time_s": {"dist": "exponential", "mean": 4}}
BASE = {"model": "llama-2-7b", "hardware": {"gpu": "h100"}, "engine": {"max_model_len": 4096},
        "sim": {"progress": False}, "seed": 3}


def by_session(specs) -> dict[str, list]:
    out = defaultdict(list)
    for s in specs:
        out[s.session_id].append(s)
    return out


def check_growth(turns: list) -> None:
    """Turn k's segments = turn k-1's + ("out", s, k-1) + the new message; lengths add up."""
    for k, (prev, cur) in enumerate(zip(turns, turns[1:]), start=1):
        n = len(prev.segments)
        assert cur.segments[:n] == prev.segments
        (out_key, out_n), (msg_key, msg_n) = cur.segments[n:]
        s = out_key[1]
        assert out_key == ("out", s, k - 1) and out_n == prev.output_tokens
        assert msg_key == ("msg", s, k)
        assert cur.input_tokens == prev.input_tokens + prev.output_tokens + msg_n
    for t in turns:
        assert sum(n for _, n in t.segments) == t.input_tokens


def drive(workload, service):
    """Run a process-driven workload against a toy server; return [(submit time, spec, finish time)]."""
    env = simpy.Environment()
    log: list = []
    outstanding = [0, 0]                                         # now, peak

    def submit(spec):
        row = [env.now, spec, None]
        log.append(row)
        outstanding[0] += 1
        outstanding[1] = max(outstanding[1], outstanding[0])

        def done(_ev):
            row[2] = env.now
            outstanding[0] -= 1
            workload.on_finish(SimpleNamespace(id=spec.request_id, finish=env.now))

        env.timeout(service(spec)).callbacks.append(done)

    proc = env.process(workload.process(env, submit))
    env.run()
    assert not proc.is_alive                                     # the process ends when the last request does
    return log, outstanding[1]


# ----------------------------------------------------------------------------- conversations


def test_open_loop_sessions_grow_their_prompts():
    specs = list(build_workload({**SESSIONS, "pacing": "after_arrival"}, seed=1))
    t = [s.arrival_s for s in specs]
    assert t == sorted(t) and [s.request_id for s in specs] == list(range(len(specs)))
    sessions = by_session(specs)
    for turns in sessions.values():
        check_growth(turns)
        assert turns[0].segments[0][0][0] == "sys" and turns[0].segments[0][1] == 40
        assert len({tt.segments[0] for tt in turns}) == 1        # one system prompt per conversation
    counts = np.bincount([len(v) for v in sessions.values()], minlength=6)[2:6]
    assert stats.chisquare(counts).pvalue > 0.01 and len(sessions) > 20


def test_after_finish_sends_the_next_turn_when_the_previous_finishes():
    w = build_workload(SESSIONS, seed=2)
    assert not hasattr(w, "__len__") or w.expected_count is not None
    with pytest.raises(TypeError, match="process"):
        iter(w)
    log, _ = drive(w, lambda spec: 0.5 + 0.01 * spec.output_tokens)
    assert len(log) == w.expected_count
    assert [row[1].request_id for row in log] == list(range(len(log)))
    plan = w.plan
    sessions = defaultdict(list)
    for row in log:
        sessions[row[1].session_id].append(row)
    for sid, rows in sessions.items():
        check_growth([r[1] for r in rows])
        s = int(sid[1:])
        assert rows[0][0] == pytest.approx(plan.start[s])
        for k in range(1, len(rows)):
            think = plan.think[plan.first_turn[s] + k]
            assert rows[k][0] == pytest.approx(rows[k - 1][2] + think)    # finish + think, never before
            assert rows[k][0] >= rows[k - 1][2]
    # the preview has the same prompts, on the zero-service-time timeline
    prev = {(s.session_id, s.input_tokens, s.output_tokens) for s in w.preview()}
    assert prev == {(r[1].session_id, r[1].input_tokens, r[1].output_tokens) for r in log}


def test_agent_loops_and_shared_tool_prompt():
    cfg = {"type": "agent", "arrival": {"process": "poisson", "rate": 0.3, "num_requests": 12},
           "steps": {"dist": "uniform", "low": 3, "high": 6}, "system_prompt_len": 500, "task_len": 100,
           "tool_result_len": {"dist": "lognormal", "mean": 200, "sigma": 0.5}, "output_len": 30,
           "tool_latency_s": 1.5}
    w = build_workload(cfg, seed=4)
    log, _ = drive(w, lambda spec: 0.2)
    tasks = defaultdict(list)
    for row in log:
        tasks[row[1].session_id].append(row)
    assert len(tasks) == 12
    for rows in tasks.values():
        check_growth([r[1] for r in rows])
        assert rows[0][1].input_tokens == 600                   # tool definitions + the task
        for a, b in zip(rows, rows[1:]):
            assert b[0] == pytest.approx(a[2] + 1.5)
    assert {rows[0][1].segments[0] for rows in tasks.values()} == {(("sys", 0), 500)}


def test_conversations_end_at_max_model_len():
    cfg = {**SESSIONS, "pacing": "after_arrival", "turns": 8, "user_message_len": 200, "output_len": 100}
    w = build_workload(cfg, seed=5, max_model_len=1000)
    specs = list(w)
    for turns in by_session(specs).values():
        check_growth(turns)
        assert all(t.input_tokens + t.output_tokens <= 1000 for t in turns)
        # 40 + 200 = 240, then +300 per turn: 240, 540, 840 fit with 100 out; the 4th (1140) does not
        assert [t.input_tokens for t in turns] == [240, 540, 840]
    assert w.clipped == len(by_session(specs)) * 5


# ----------------------------------------------------------------------------- closed loop


@pytest.mark.parametrize("think", [0.0, {"dist": "exponential", "mean": 0.3}])
def test_closed_loop_never_exceeds_its_clients(think):
    cfg = {"type": "closed_loop", "clients": 5, "num_requests": 200, "input_len": {"dist": "uniform", "low": 10,
                                                                                    "high": 90},
           "output_len": 20, "think_time_s": think}
    w = build_workload(cfg, seed=6)
    log, peak = drive(w, lambda spec: 0.1 + spec.input_tokens / 1000)
    assert len(log) == 200 and peak == 5 == w.peak_outstanding
    assert sorted(r[1].request_id for r in log) == list(range(200))
    by_client = defaultdict(list)
    for row in log:
        by_client[row[1].session_id].append(row)
    for rows in by_client.values():
        for a, b in zip(rows, rows[1:]):
            assert b[0] >= a[2]                                  # a client waits for its previous request
            if think == 0.0:
                assert b[0] == a[2]


def test_closed_loop_duration_and_start_spread():
    cfg = {"type": "closed_loop", "clients": 4, "duration_s": 10.0, "input_len": 50, "output_len": 5,
           "start_spread_s": 2.0, "system_prompt_len": 30}
    w = build_workload(cfg, seed=7)
    log, peak = drive(w, lambda spec: 0.7)
    assert peak <= 4
    by_client = defaultdict(list)
    for r in log:
        by_client[r[1].session_id].append(r[0])
    for i in range(4):                                 # client i sends at 0.5 i + 0.7 j, while before 10 s
        n = int(np.ceil((10.0 - 0.5 * i) / 0.7))
        assert by_client[f"c{i}"] == pytest.approx([0.5 * i + 0.7 * j for j in range(n)])
    assert all(r[1].segments == ((("sys", 0), 30), (("req", r[1].request_id), 50)) for r in log)


# ----------------------------------------------------------------------------- end to end through the engine


def test_session_prefixes_raise_the_prefix_hit_rate_end_to_end(tmp_path):
    res = run({**BASE, "workload": {**SESSIONS, "system_prompt_len": 0}})
    specs = list(build_workload({**SESSIONS, "system_prompt_len": 0, "pacing": "after_arrival"},
                                np.random.SeedSequence(3).spawn(1)[0]))
    flat = tmp_path / "flat.csv"
    flat.write_text("arrival_time_s,input_tokens,output_tokens\n"
                    + "".join(f"{s.arrival_s},{s.input_tokens},{s.output_tokens}\n" for s in specs))
    res_flat = run({**BASE, "workload": {"type": "trace", "path": str(flat)}})
    assert res.summary["requests"]["completed"] == res_flat.summary["requests"]["completed"] == len(specs)
    assert sorted(res.requests.input_tokens) == sorted(s.input_tokens for s in specs)   # same lengths
    assert res_flat.summary["kv"]["prefix_hit_rate"] == 0.0
    assert res.summary["kv"]["prefix_hit_rate"] > 0.4
    assert res.requests.cached_tokens.sum() > 0


def test_closed_loop_end_to_end_with_classes(monkeypatch):
    import experiments.runner as runner

    built = []
    build = runner.build_workload
    monkeypatch.setattr(runner, "build_workload", lambda *a, **k: built.append(build(*a, **k)) or built[-1])
    cfg = {"type": "closed_loop", "clients": 4, "num_requests": 80,
           "input_len": {"dist": "uniform", "low": 100, "high": 800}, "output_len": {"dist": "uniform", "low": 10,
                                                                                     "high": 100},
           "classes": [{"tenant": "gold", "priority": 1, "slo_ttft_s": 0.05, "slo_tpot_s": 0.02},
                       {"tenant": "free", "weight": 2}]}
    res = run({**BASE, "workload": cfg})
    r = res.requests
    assert res.summary["requests"]["completed"] == 80 and res.summary["requests"]["unfinished"] == 0
    assert built[0].peak_outstanding == 4 and built[0].sent == 80
    assert set(r.tenant) == {"gold", "free"}
    assert (r[r.tenant == "gold"].priority == 1).all() and r[r.tenant == "free"].slo_ttft_s.isna().all()
    classes = res.summary["classes"]
    assert set(classes) == {"gold", "free"}
    gold = r[r.tenant == "gold"]
    ttft_ok = (gold.first_token_s - gold.arrival_s) <= 0.05
    assert classes["gold"]["requests"] == len(gold)
    assert classes["gold"]["attainment"]["ttft"] == pytest.approx(ttft_ok.mean())
    assert classes["free"]["attainment"]["both"] == 1.0 and classes["gold"]["slo"]["tpot_s"] == 0.02


def test_summary_has_no_classes_section_without_classes():
    res = run({**BASE, "workload": {"type": "poisson", "stages": [{"rate": 5, "duration_s": 2}],
                                    "input_len": 100, "output_len": 10}})
    assert "classes" not in res.summary
    assert res.requests.tenant.isna().all() and res.requests.slo_ttft_s.isna().all()
