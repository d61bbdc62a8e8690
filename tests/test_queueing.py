"""Closed forms: the engine built as a single-server queue matches queueing theory (DESIGN.md section 8).

A `Replica` with ``max_num_seqs=1``, a cost model whose every step takes the same time ``D`` and
requests of one output token is an M/D/1 queue (each request is exactly one step); with geometric
output lengths it is an M/G/1 queue whose service is a geometric number of ``D``-steps. Checked:

- per request, the engine's waiting and sojourn times equal the Lindley recursion
  ``W[n+1] = max(0, W[n] + S[n] - (A[n+1] - A[n]))`` on the same arrivals (exact, any load);
- the mean waiting time matches Pollaczek-Khinchine ``Wq = lambda E[S^2] / (2 (1 - rho))`` within
  4 batch-means standard errors;
- Little's law ``L = lambda W``, with L measured by sampling the replica's queue, not from timestamps;
- fast-forward and per-iteration modes give identical timestamps.
"""
from __future__ import annotations

import numpy as np
import pytest
import simpy

from policies.batching import VLLMScheduler
from sim.engine import EngineConfig, Replica, RequestLog, drive_arrivals
from sim.kvcache import KVCacheManager
from workloads.base import RequestSpec


class ConstantCost:
    """A cost model whose every iteration takes `d` seconds, whatever the batch."""

    def __init__(self, d: float) -> None:
        self.d = d
        self.steps = 0

    def step_time(self, shape) -> float:
        self.steps += 1
        return self.d

    def decode_run_times(self, seqs: int, ctx_sum: int, steps: int) -> np.ndarray:
        self.steps += steps
        return np.full(steps, self.d)


def simulate(arrivals: np.ndarray, outputs: np.ndarray, d: float, mode: str, *, prompt: int = 16,
             sample_every: float | None = None):
    """Run the queue; return (per-request columns sorted by id, replica, samples of the number in system)."""
    env = simpy.Environment()
    log = RequestLog()
    kv = KVCacheManager(num_blocks=1_000_000, block_size=16, enable_prefix_caching=False)
    engine = EngineConfig(max_num_seqs=1, max_num_batched_tokens=4096, enable_prefix_caching=False,
                          max_model_len=1_000_000)
    rep = Replica(env, 0, ConstantCost(d), kv, engine, VLLMScheduler(), log, mode=mode)
    specs = (RequestSpec(i, a, prompt, o) for i, (a, o) in enumerate(zip(arrivals.tolist(), outputs.tolist())))
    feeder = env.process(drive_arrivals(env, specs, rep.enqueue))
    samples: list[int] = []

    def monitor():
        while feeder.is_alive or rep.outstanding:
            samples.append(rep.outstanding)
            yield env.timeout(sample_every)

    if sample_every:
        env.process(monitor())
    env.run()
    cols = log.arrays()
    order = np.argsort(cols["request_id"], kind="stable")
    cols = {k: v[order] for k, v in cols.items()}
    assert np.array_equal(cols["request_id"], np.arange(len(arrivals))), "a request was lost or duplicated"
    kv.check_invariants()
    assert kv.num_free_blocks == kv.num_blocks
    return cols, rep, np.asarray(samples, dtype=float)


def lindley(arrivals: np.ndarray, service: np.ndarray) -> np.ndarray:
    """Waiting times in queue of a FCFS single-server queue."""
    w = np.zeros(len(arrivals))
    gaps = np.diff(arrivals)
    for n in range(len(arrivals) - 1):
        w[n + 1] = max(0.0, w[n] + service[n] - gaps[n])
    return w


def batch_means_se(x: np.ndarray, batches: int = 40) -> float:
    """Standard error of the mean of an autocorrelated series from `batches` batch means."""
    m = len(x) // batches * batches
    means = x[:m].reshape(batches, -1).mean(axis=1)
    return float(means.std(ddof=1) / np.sqrt(batches))


def poisson_arrivals(rng: np.random.Generator, lam: float, n: int) -> np.ndarray:
    return np.cumsum(rng.exponential(1.0 / lam, n))


# ----------------------------------------------------------------------------- M/D/1

@pytest.mark.parametrize("rho", [0.5, 0.8])
def test_md1_matches_pollaczek_khinchine_and_lindley(rho):
    d = 0.02
    lam = rho / d
    n = 60_000
    arr = poisson_arrivals(np.random.default_rng(11 + int(rho * 10)), lam, n)
    ones = np.ones(n, dtype=np.int64)
    fast, rep, samples = simulate(arr, ones, d, "fast", sample_every=d * 0.37)
    it, rep_it, _ = simulate(arr, ones, d, "iteration")
    for col in ("first_scheduled_s", "first_token_s", "finish_s"):
        assert np.array_equal(fast[col], it[col]), col

    wq = fast["first_scheduled_s"] - fast["arrival_s"]
    ttft = fast["first_token_s"] - fast["arrival_s"]
    # each request is exactly one step of length d: service = d, TTFT = wait + d = sojourn
    np.testing.assert_allclose(ttft - wq, d, rtol=0, atol=1e-9)
    np.testing.assert_allclose(fast["finish_s"], fast["first_token_s"], rtol=0, atol=0)
    assert rep.steps.iterations == n

    # sample path: exactly the Lindley recursion of the same arrivals
    np.testing.assert_allclose(wq, lindley(arr, np.full(n, d)), rtol=1e-9, atol=1e-9)

    # Pollaczek-Khinchine for M/D/1
    theory = rho * d / (2 * (1 - rho))
    se = batch_means_se(wq)
    assert abs(wq.mean() - theory) < 4 * se, (wq.mean(), theory, se)
    assert se < 0.1 * theory  # the tolerance is a real constraint, not a blank cheque

    # Little's law: the time-average number in system (sampled from the replica's queues)
    # equals the arrival rate times the mean sojourn time
    lam_hat = n / fast["finish_s"][-1]
    w = ttft.mean()
    assert samples.mean() == pytest.approx(lam_hat * w, rel=0.03)
    # and the load matches: the server is busy a fraction rho of the time
    assert rep.steps.busy_s / rep.clock == pytest.approx(rho, rel=0.03)


def test_md1_idle_server_serves_immediately():
    """Arrivals far apart never wait: first_scheduled == arrival, finish == arrival + d."""
    d = 0.05
    arr = np.arange(1, 101, dtype=float) * 1.0
    cols, _, _ = simulate(arr, np.ones(100, dtype=np.int64), d, "fast")
    assert np.array_equal(cols["first_scheduled_s"], arr)
    np.testing.assert_allclose(cols["finish_s"], arr + d, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- M/G/1, geometric service

@pytest.mark.parametrize("mode", ["fast", "iteration"])
def test_mg1_geometric_service_matches_pollaczek_khinchine(mode):
    """Service = N steps of d with N ~ Geometric(p) on {1, 2, ...}: E[S] = d/p, E[S^2] = d^2 (2-p)/p^2."""
    p, d, rho = 0.1, 0.01, 0.7
    es, es2 = d / p, d * d * (2 - p) / p**2
    lam = rho / es
    n = 30_000
    rng = np.random.default_rng(2024)
    arr = poisson_arrivals(rng, lam, n)
    out = rng.geometric(p, n).astype(np.int64)
    cols, rep, _ = simulate(arr, out, d, mode)

    assert np.array_equal(cols["output_tokens"], out), "tokens out != tokens asked"
    service = out * d
    sojourn = cols["finish_s"] - cols["arrival_s"]
    wq = cols["first_scheduled_s"] - cols["arrival_s"]
    np.testing.assert_allclose(sojourn - wq, service, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(wq, lindley(arr, service), rtol=1e-9, atol=1e-8)
    assert rep.steps.iterations == int(out.sum())

    theory_wq = lam * es2 / (2 * (1 - rho))
    se = batch_means_se(wq)
    assert abs(wq.mean() - theory_wq) < 4 * se, (wq.mean(), theory_wq, se)
    assert se < 0.1 * theory_wq
    # M/M/1 limit: as d -> 0 with E[S] fixed, E[S^2] -> 2 E[S]^2 and W -> E[S] / (1 - rho);
    # at p = 0.1 the P-K value sits within (1 - p/2) of it
    mm1_w = es / (1 - rho)
    assert (theory_wq + es) == pytest.approx(mm1_w, rel=0.05)


def test_geometric_service_fast_equals_iteration():
    """Fast-forwarded decode runs cut by arrivals land on the per-iteration timestamps, bit for bit."""
    p, d, rho = 0.05, 0.003, 0.9
    lam = rho * p / d
    rng = np.random.default_rng(7)
    n = 4000
    arr = poisson_arrivals(rng, lam, n)
    out = rng.geometric(p, n).astype(np.int64)
    fast, rep_f, _ = simulate(arr, out, d, "fast")
    it, rep_i, _ = simulate(arr, out, d, "iteration")
    for col in ("first_scheduled_s", "first_token_s", "finish_s"):
        assert np.array_equal(fast[col], it[col]), col
    assert rep_f.steps.iterations == rep_i.steps.iterations == int(out.sum())
    # fast mode prices whole runs it may cut short, but never prices fewer steps than it runs
    assert rep_f.cost.steps >= rep_i.cost.steps
