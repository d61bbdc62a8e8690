"""A deployment: pools of replicas placed on a cluster, a router in front of each pool, flows between them.

Colocated (``deployment: {replicas: R}``, or one replica by default): every request goes to the
router, which picks one replica of the pool. Disaggregated (``pools: {prefill, decode}``): the
request first runs its prompt on a prefill instance (as a one-token request, the way vLLM's
disaggregation proxy sends it); its KV cache then moves to a decode instance as flows between the
two instances' GPUs on the cluster's links (sharing bandwidth with every other transfer); the decode
instance admits it with that KV in place, computes the last prompt position and streams the
output. TTFT therefore includes the prefill, the queueing on both sides and the transfer.
Cascade (``cascade: {tiers: [...]}``): one pool per model tier; a request goes to the tier of its
difficulty score (`policies.cascade`), and an escalated one runs again on the next tier.
Autoscaling (``autoscaling:``): the colocated pool is placed for max_replicas, and a
`policies.autoscaling.ScalingController` decides which of them the router may use.

Every replica is a `sim.engine.Replica` on the GPUs its placement gives it; swap copies go over
those GPUs' links to their node's host memory.

Front-end stages. Before routing, a request passes the deployment's stages in order (a result cache,
a multimodal encoder, ...), added with ``Deployment.add_stage(stage)``. A stage is any object with

* ``name: str``: the key of its section in summary.json;
* ``enter(env, req)``: a generator function run inside a SimPy process (one per request, only when there
  are stages). It may yield SimPy events (``env.timeout(s)``, resource requests, flows) and *returns*
  True to pass the request on to the next stage and then the router, or False when the stage dealt with
  it. A stage that never waits may return a plain bool instead of being a generator;

and optionally

* ``finished(req)``: called when a request that passed every stage completes on the engine (or is
  refused there: ``req.state == "rejected"``), e.g. to put its answer into a cache;
* ``summary() -> dict``: its summary section;
* ``attach(deployment)``: called once by `add_stage` (to read the pools, the cluster, the env).

A request a stage returns False for is complete at that moment: its ``first_token`` (unless the stage
set an earlier one), ``finish`` and ``first_scheduled`` become ``env.now``, its ``generated`` its
``output_len`` (the whole answer at once), its ``replica`` -1; it is logged with the engine's requests
and the workload hears of it. To refuse a request instead, set ``req.state = "rejected"`` before
returning False: it is counted in ``requests.rejected`` and not logged. The time a request spends in
the stages is part of its TTFT and E2E (its arrival time is unchanged). With no stage, `route` hands
the request straight to the router (no process, no cost).
"""
from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import simpy

from policies.autoscaling import ScalingController, make_autoscaler
from policies.cascade import DifficultyCascade
from policies.multimodal import make_encoder_stage
from policies.result_cache import make_result_cache
from policies.routing import make_router
from sim import registry
from sim.engine import Replica, RequestLog
from sim.errors import ConfigError, DeploymentError
from sim.hardware import get_gpu
from sim.kvcache import KVCacheManager
from sim.links import FlowNetwork
from sim.request import FINISHED, REJECTED, Request
from sim.pipeline import Pipeline
from sim.lockstep import LockstepGroup
from topologies import (GroupRequest, allreduce_params, alltoall_time, build_cluster, default_cluster_for, p2p_time,
                        place)

from .build import ReplicaPlan, build_cost_model, build_policies, build_scheduler, plan_replica
from .config import RunConfig


@dataclass
class Pool:
    """Replicas that share a role, a plan (cost model, memory, engine knobs) and a router."""

    name: str
    plan: ReplicaPlan
    replicas: list[Replica]
    router: object
    routable: list[Replica] = field(default_factory=list)   # what the router picks from: the active replicas
    model: str = ""


class Stage(Protocol):
    """A front-end stage a request passes before routing (see the module docstring for the whole contract)."""

    name: str

    def enter(self, env: simpy.Environment, req: Request) -> Generator[simpy.Event, Any, bool] | bool:
        """Wait as the stage does; True passes the request on, False means the stage served (or refused) it."""


class _AttemptLog:
    """The request log of a tier that escalates: a first attempt that will be re-sent is not a completion."""

    __slots__ = ("log", "attempts", "skipped")

    def __init__(self, log: RequestLog, attempts: dict) -> None:
        self.log, self.attempts, self.skipped = log, attempts, 0

    def add(self, r: Request) -> None:
        entry = self.attempts.get(r.id)
        if entry is not None and entry[0] is not r:
            self.skipped += 1
            return
        self.log.add(r)

    def __len__(self) -> int:
        return len(self.log)


def reads_kv(plugin) -> bool:
    """Whether a router or autoscaler reads the replicas' KV state (``kv.usage``, ``prefix_hits``), in which case the
    replicas must not fast-forward across KV block boundaries (sim.engine.Replica.kv_observed) for the run to stay
    exact. A plugin says so with a ``reads_kv`` attribute, as the built-in ones that read it do. A user plugin without
    one is assumed to read it: exact by default, and ``reads_kv = False`` on a plugin that only counts requests gets
    the full fast-forward back."""
    flag = getattr(plugin, "reads_kv", None)
    if flag is None:
        return not getattr(plugin, "__module__", "").startswith("policies.")
    return bool(flag)


class Deployment:
    """Build the pools of a config on its cluster, and route requests through them (and its front-end stages)."""

    def __init__(self, cfg: RunConfig, env: simpy.Environment, seed: np.random.SeedSequence, log: RequestLog,
                 mode: str = "fast") -> None:
        self.cfg, self.env, self.log = cfg, env, log
        groups, group_cfgs = self._groups(cfg)
        for name, _, tp, _, gpu, cross in groups:
            spec = get_gpu(gpu)
            if cfg.cluster is None and not cross and tp > spec.gpus_per_node:
                key = ("parallelism.tp" if name == "replicas" else
                       f"cascade.tiers[{name}].parallelism.tp" if cfg.cascade is not None else
                       f"pools.{name}.parallelism.tp")
                raise DeploymentError(f"{key}={tp} exceeds the {spec.gpus_per_node} GPUs of one {spec.name} node; "
                                      f"tensor parallelism runs within a node, use tp <= {spec.gpus_per_node}")
        if cfg.cluster is not None:
            self.cluster = build_cluster(cfg.cluster, cfg.hardware.gpu)
        else:
            needs: dict[str, int] = {}
            for _, count, tp, pp, gpu, _ in groups:
                name = get_gpu(gpu).name
                needs[name] = needs.get(name, 0) + count * tp * pp
            # one part: its usual servers; several (e.g. H100 prefill, H200 decode): servers of each on one fabric
            self.cluster = default_cluster_for(needs)
        placements = place(self.cluster, [GroupRequest(name, count, tp, pp=pp, gpu=gpu, allow_cross_node_tp=cross)
                                          for name, count, tp, pp, gpu, cross in groups])
        # with timeseries sampling on, every link's utilisation change point is kept for the results
        self.net = FlowNetwork(env, self.cluster.link_capacities(), record=cfg.sim.sample_interval_s is not None)
        streams = iter(seed.spawn(2 + sum(g[1] * g[3] for g in groups)))
        router_rng = np.random.default_rng(next(streams))
        plan_rng = np.random.default_rng(next(streams))
        self.pools: list[Pool] = []
        self.replicas: list[Replica] = []
        self.lockstep: LockstepGroup | None = None
        self.prefill_log = RequestLog() if cfg.pools is not None else None
        self._attempts: dict[int, tuple[Request, list[int]]] = {}     # cascade: request id -> (original, tiers left)
        self.attempt_logs: dict[str, _AttemptLog] = {}
        escalating = {t.name for t in cfg.cascade.tiers if t.escalate_fraction} if cfg.cascade is not None else set()
        for name, count, tp, pp, gpu, _ in groups:
            gcfg = group_cfgs.get(name, cfg)
            mine = [p for p in placements if p.group == name]
            par = self._parallelism(gcfg, name)
            lockstep = par.ep > tp                   # experts over the GPUs of every replica: one lockstep group
            if lockstep:
                _check_wide_ep(cfg, name, count, tp, pp, par)
            ep_gpus = [g for p in mine for g in p.stages[0]] if lockstep else mine[0].stages[0]
            cost = build_cost_model(gcfg, gpu, tp, allreduce=self._allreduce(mine[0].stages[0], gpu, tp),
                                    alltoall=self._alltoall(ep_gpus, par, tp), par=par)
            plan = plan_replica(gcfg, cost, plan_rng, pp=pp)
            pool_log = self.prefill_log if name == "prefill" else log
            if name in escalating:
                pool_log = self.attempt_logs[name] = _AttemptLog(log, self._attempts)
            replicas = []
            for placement in mine:
                pipeline = self._pipeline(placement, cost) if pp > 1 else None
                # with pipeline parallelism vLLM runs pp virtual engines, each with its own batches and its share of
                # the KV blocks, whose steps flow through the shared stages
                for _ in range(pp):
                    kv = KVCacheManager(plan.memory.num_blocks // pp, plan.engine.block_size,
                                        plan.engine.enable_prefix_caching)
                    pol = build_policies(gcfg, plan, np.random.default_rng(next(streams)),
                                         self._host_mover(placement.stages[0]))
                    pol.pipeline = pipeline
                    rep = Replica(env, len(self.replicas), cost, kv, plan.engine, build_scheduler(gcfg), pool_log,
                                  mode, pol, own_loop=not lockstep)
                    rep.pool = name
                    rep.placement = placement
                    replicas.append(rep)
                    self.replicas.append(rep)
            if lockstep:
                self.lockstep = LockstepGroup(env, replicas, fast=mode == "fast")
            router_name = self._router_name(name)
            router = make_router(router_name, self._router_options(name), router_rng)
            if len(replicas) > 1 and reads_kv(registry.get("router", router_name)):
                for rep in replicas:
                    rep.kv_observed = True
            self.pools.append(Pool(name, plan, replicas, router, replicas, cost.model.name))
        self.placements = placements
        self._check_host_budgets()
        self.rejected = 0
        self.on_finish = None         # the workload's callback (closed loops, sessions), set by the runner
        self._serving = self.pools[-1]          # the pool whose replicas finish requests
        if cfg.pools is not None:
            self._prefill = self.pools[0]
            self._originals: dict[int, Request] = {}
            self._streams: dict[int, tuple] = {}     # layer-wise: request id -> (decode replica, flows so far)
            for rep in self._prefill.replicas:
                rep.on_finish = self._prefilled
                if cfg.pools.kv_transfer.layerwise:
                    rep.on_admit = self._prefill_started
        serving = self.replicas if cfg.cascade is not None else self._serving.replicas
        for rep in serving:
            rep.on_finish = self._tier_finished if rep.pool in escalating else self._finished
        # front-end stages, finish hooks and the optional cascade / autoscaler; their random streams are spawned
        # after the replicas', so a run without them draws exactly what it drew before they existed
        self.stages: list[Stage] = []
        self._finish_hooks: list[Callable[[Request], None]] = []
        self._in_stages = 0
        self.stage_served = 0
        self.cascade: DifficultyCascade | None = None
        self.scaler: ScalingController | None = None
        self._direct = cfg.pools is None and cfg.cascade is None
        if cfg.result_cache is not None or cfg.cascade is not None or cfg.autoscaling is not None:
            cache_ss, cascade_ss, scaler_ss = seed.spawn(3)
            if cfg.result_cache is not None:
                self.add_stage(make_result_cache(cfg.result_cache, np.random.default_rng(cache_ss)))
            if cfg.cascade is not None:
                c = cfg.cascade
                self.cascade = DifficultyCascade([t.max_difficulty for t in c.tiers],
                                                 [t.escalate_fraction for t in c.tiers], c.default_difficulty,
                                                 np.random.default_rng(cascade_ss))
            if cfg.autoscaling is not None:
                self._build_scaler(cfg, np.random.default_rng(scaler_ss))
        if cfg.multimodal is not None:
            # after the result cache: an answered request needs no encoding
            self.add_stage(make_encoder_stage(cfg.multimodal, self.pools[0].plan.cost))

    # ------------------------------------------------------------ front-end stages and controllers
    def add_stage(self, stage: Stage, index: int | None = None) -> None:
        """Put `stage` in front of the router: last (or at position `index`) of the stages a request passes.
        Its ``attach(deployment)`` is called now, its ``finished(req)`` at every engine completion."""
        if not callable(getattr(stage, "enter", None)):
            raise ConfigError(f"front-end stage {stage!r} has no enter(env, request) method")
        self.stages.insert(len(self.stages) if index is None else index, stage)
        self._direct = False
        attach = getattr(stage, "attach", None)
        if attach is not None:
            attach(self)
        hook = getattr(stage, "finished", None)
        if hook is not None:
            self._finish_hooks.append(hook)

    def start(self, finished: Callable[[], bool]) -> None:
        """Start the deployment's own processes (the autoscaler), which stop once `finished()` is true."""
        if self.scaler is not None:
            self.env.process(self.scaler.run(finished))

    def _groups(self, cfg: RunConfig) -> tuple[list[tuple[str, int, int, int, str, bool]], dict[str, RunConfig]]:
        """The pools to place, and for a cascade each tier's config (the run's, with the tier's model)."""
        if cfg.cascade is not None:
            given = "parallelism" in cfg.model_fields_set and cfg.parallelism != type(cfg.parallelism)()
            if cfg.pools is not None or cfg.deployment is not None or cfg.autoscaling is not None or given:
                raise ConfigError("cascade: give the replicas and parallelism of each tier in cascade.tiers, without "
                                  "deployment, pools, autoscaling or a top-level parallelism")
            groups, cfgs = [], {}
            for t in cfg.cascade.tiers:
                if t.name in ("prefill", "decode", "replicas"):
                    raise ConfigError(f"cascade.tiers: the name {t.name!r} is reserved; pick another")
                if t.parallelism.sp > 1:
                    raise ConfigError(f"cascade.tiers[{t.name}].parallelism.sp: sequence parallelism in a cascade "
                                      f"tier is not modelled; use sp: 1")
                # the run's model section (KV dtype, sparsity, int4 kernel) with the tier's model and weight dtype
                # (None: the tier model's own checkpoint dtype)
                model = cfg.model.model_copy(update={"name": t.model or cfg.model.name, "weight_dtype": t.weight_dtype})
                cfgs[t.name] = cfg.model_copy(update={"model": model, "parallelism": t.parallelism})
                groups.append((t.name, t.replicas, t.parallelism.tp, t.parallelism.pp, t.gpu or cfg.hardware.gpu,
                               False))
            return groups, cfgs
        groups = cfg.replica_groups()
        a = cfg.autoscaling
        if a is not None:
            if cfg.pools is not None:
                raise ConfigError("autoscaling: scales a colocated deployment; remove pools (disaggregation) or "
                                  "autoscaling")
            initial = groups[0][1]
            if not a.min_replicas <= initial <= a.max_replicas:
                raise ConfigError(f"autoscaling: deployment.replicas={initial} (the replicas active at the start) "
                                  f"must lie within min_replicas={a.min_replicas} and max_replicas={a.max_replicas}")
            groups = [(groups[0][0], a.max_replicas, *groups[0][2:])]
        return groups, {}

    def _build_scaler(self, cfg: RunConfig, rng: np.random.Generator) -> None:
        a = cfg.autoscaling
        pool = self.pools[0]
        pool.routable = []
        cost = pool.plan.cost
        per_replica = len(self.replicas) // a.max_replicas                  # pp virtual engines share a replica
        if per_replica != 1:
            raise ConfigError("autoscaling with pipeline parallelism (pp > 1) is not modelled; use pp: 1")
        if reads_kv(registry.get("autoscaler", a.policy)):
            for rep in pool.replicas:
                rep.kv_observed = True
        self.scaler = ScalingController(
            self.env, pool.replicas, pool.routable, make_autoscaler(a.policy, a.policy_options, rng),
            initial=cfg.replica_groups()[0][1], min_replicas=a.min_replicas, max_replicas=a.max_replicas,
            interval_s=a.interval_s, provisioning_delay_s=a.provisioning_delay_s,
            scale_down_cooldown_s=a.scale_down_cooldown_s, gpus_per_replica=getattr(cost, "gpus_per_replica", cost.tp),
            usd_per_gpu_hour=cost.gpu.price_per_hour)
        self._finish_hooks.append(self.scaler.completed)

    # ------------------------------------------------------------ construction helpers
    def _check_host_budgets(self) -> None:
        """Refuse KV tiers and swap space that the cluster's host memory or NVMe drives cannot hold: every replica
        takes its cpu_offload_gb (and swap_space per GPU, when preemption swaps) from the host memory next to its
        GPUs, and its nvme_offload_gb from the drives there (a node with no stated capacity is not checked)."""
        e = self.cfg.engine
        swap = e.swap_space if e.preemption_mode == "swap" else 0.0
        if not (e.cpu_offload_gb or e.nvme_offload_gb or swap):
            return
        need: dict[str, float] = {}
        cluster = self.cluster
        for placement in self.placements:
            gpus = placement.gpus
            if not gpus:
                continue
            host = cluster.host_of(gpus[0])
            need[host] = need.get(host, 0.0) + (e.cpu_offload_gb + swap * len(gpus)) * 2**30
            if e.nvme_offload_gb:
                drive = cluster.nvme_of(gpus[0])
                if drive is not None:
                    need[drive] = need.get(drive, 0.0) + e.nvme_offload_gb * 2**30
        for where, nbytes in need.items():
            capacity = float(cluster.graph.nodes[where].get("capacity", 0.0) or 0.0)
            if capacity and nbytes > capacity:
                what = "NVMe" if cluster.graph.nodes[where].get("kind") == "nvme" else "host memory"
                raise DeploymentError(
                    f"the replicas next to {where} ask {nbytes / 1e9:,.0f} GB of {what} (engine.cpu_offload_gb / "
                    f"nvme_offload_gb per replica, swap_space per GPU) but it holds {capacity / 1e9:,.0f} GB; lower "
                    f"them, or spread the replicas over more nodes")

    def _own_router(self, pool: str):
        """The pool's or cascade tier's own config entry when it names a router of its own, else None."""
        if self.cfg.pools is not None:
            own = getattr(self.cfg.pools, pool)
            return own if own.router else None
        if self.cfg.cascade is not None:
            own = next(t for t in self.cfg.cascade.tiers if t.name == pool)
            return own if own.router else None
        return None

    def _router_options(self, pool: str) -> dict:
        """A pool's own router takes its own router_options (the top-level ones when it names the top-level router
        and gives none); the top-level router the top-level ones."""
        own = self._own_router(pool)
        if own is None:
            return self.cfg.router_options
        if not own.router_options and own.router == self.cfg.router:
            return self.cfg.router_options          # the same router as the top level: its options too
        return own.router_options

    def _router_name(self, pool: str) -> str:
        own = self._own_router(pool)
        return own.router if own is not None else self.cfg.router

    def _allreduce(self, gpus, gpu_name: str, tp: int):
        """The placement's all-reduce (bandwidth, latency) when its path is not the GPU's own scale-up fabric
        (a PCIe box, a TP group across nodes); None keeps the calibrated scale-up figures."""
        if tp == 1:
            return None
        spec = get_gpu(gpu_name)
        one_node = len({self.cluster.node_of(g) for g in gpus}) == 1
        if one_node and spec.scaleup and spec.scaleup != "nvlink-bridge":
            return None
        # the ring's bus bandwidth, and the latency of whichever algorithm is faster for a latency-bound message:
        # NCCL runs small all-reduces (a decode step's) as a tree, whose log-depth crosses the network fewer times
        busbw, ring_latency = allreduce_params(self.cluster, gpus, "ring")
        _, tree_latency = allreduce_params(self.cluster, gpus, "tree")
        # vLLM's custom all-reduce still runs on two GPUs of one server over PCIe peer access (it needs NVLink only
        # beyond two), so their small messages keep the engine's latency
        custom = one_node and tp == 2
        return busbw, min(ring_latency, tree_latency), custom

    @staticmethod
    def _parallelism(cfg: RunConfig, pool: str):
        """The parallelism of one pool: a disaggregated pool's own, else the deployment's (a cascade tier's config
        carries its tier's)."""
        if cfg.pools is not None:
            return getattr(cfg.pools, pool).parallelism
        return cfg.sequence_parallel

    def _alltoall(self, gpus, par, tp: int):
        """The all-to-all a replica's parallelism needs, on the placement's real paths
        (`topologies.collectives.alltoall_time`): EP's over the TP group (with the expert-load skew), Ulysses' over
        the SP ranks (one per TP index: the stage's GPUs are TP groups one after another); None otherwise."""
        cluster = self.cluster
        if par.ep > 1 and len(gpus) > 1:
            group, skew = list(gpus), par.expert_load_skew
            return lambda nbytes: alltoall_time(cluster, group, nbytes, skew)
        if par.sp > 1:
            ranks = list(gpus)[::par.tp]
            return lambda nbytes: alltoall_time(cluster, ranks, nbytes)
        return None

    def _pipeline(self, placement, cost) -> Pipeline:
        """The stages of one PP replica, with the activations' point-to-point time between consecutive stages."""
        cluster = self.cluster
        hops = [(placement.stages[i][0], placement.stages[i + 1][0]) for i in range(len(placement.stages) - 1)]
        act_bytes = cost.model.hidden_size * 2.0          # bf16 hidden states of each token in the step

        def p2p(stage: int, tokens: int) -> float:
            src, dst = hops[stage]
            return p2p_time(cluster, src, dst, tokens * act_bytes)

        return Pipeline(len(placement.stages), p2p)

    def _host_mover(self, gpus):
        """Copies between each GPU of a replica and its node's host memory, as parallel flows (one per TP shard)."""
        net, cluster, env = self.net, self.cluster, self.env
        paths = {"out": [cluster.path(g, cluster.host_of(g)) for g in gpus],
                 "in": [cluster.path(cluster.host_of(g), g) for g in gpus]}
        nvme = [cluster.nvme_of(g) for g in gpus]
        if self.cfg.engine.nvme_offload_gb:
            if any(d is None for d in nvme):
                raise ConfigError(f"engine.nvme_offload_gb: the cluster has no NVMe next to {gpus[0]}; set it to 0 "
                                  f"or use a topology with NVMe drives")
            paths["nvme-out"] = [cluster.path(cluster.host_of(g), d) for g, d in zip(gpus, nvme)]
            paths["nvme-in"] = [cluster.path(d, g) for g, d in zip(gpus, nvme)]

        def move(direction: str, bytes_per_gpu: float):
            flows = [net.transfer(p, bytes_per_gpu, f"kv-{direction}") for p in paths[direction]]
            return flows[0] if len(flows) == 1 else env.all_of(flows)

        return move

    # ------------------------------------------------------------ routing
    @property
    def outstanding(self) -> int:
        """Requests in any replica, in a front-end stage, or moving between pools."""
        moving = len(self._originals) if self.cfg.pools is not None else 0
        return sum(r.outstanding for r in self.replicas) + moving + self._in_stages

    def route(self, req: Request) -> None:
        """An arriving request: through the front-end stages (if any), then to its pool's router."""
        if self._direct:                  # one colocated pool, no stage: the hot path of most runs
            self._enqueue(self.pools[0], req)
            return
        if self.stages:
            self._in_stages += 1
            self.env.process(self._front(req))
            return
        self._dispatch(req)

    def _front(self, req: Request):
        """SimPy process: the request passes the stages in order; one that serves it ends its journey."""
        env = self.env
        for stage in self.stages:
            forward = stage.enter(env, req)
            if not isinstance(forward, bool):
                forward = yield from forward
            if not forward:
                self._in_stages -= 1
                self._served(req)
                return
        self._in_stages -= 1
        self._dispatch(req)            # (Replica.enqueue stamps the time it is handed over: `enqueued`)

    def _served(self, req: Request) -> None:
        """A stage answered (or refused) the request: complete it now (see the module docstring)."""
        self.stage_served += 1
        if req.state == REJECTED:
            self.rejected += 1
        else:
            now = self.env.now
            req.state = FINISHED
            if req.first_scheduled < 0:
                req.first_scheduled = now
            if req.first_token < 0:
                req.first_token = now
            req.finish = now
            if not req.generated:
                req.generated = req.output_len
            req.replica = -1
            self.log.add(req)
        if self.on_finish is not None:
            self.on_finish(req)

    def _dispatch(self, req: Request) -> None:
        """To the prefill pool (disaggregated), to the tier of its difficulty (cascade), or to the only pool."""
        if self.cascade is not None:
            self._to_tiers(req, self.cascade.path(req))
            return
        pool = self.pools[0]
        if self.cfg.pools is not None:
            clone = self._clone(req, 1)
            clone.encoder_s, req.encoder_s = req.encoder_s, 0.0     # the prefill instance encodes the images
            self._originals[req.id] = req
            req = clone
        self._enqueue(pool, req)

    @staticmethod
    def _clone(req: Request, output_len: int) -> Request:
        """A copy of an arriving request for another run of it (a prefill, a cascade attempt)."""
        c = Request(req.id, req.arrival, req.prompt_len, output_len, req.segments, req.session_id, req.stage,
                    req.tenant, req.priority, req.slo_ttft_s, req.slo_tpot_s)
        c.images, c.encoder_s, c.difficulty, c.cache_hit = req.images, req.encoder_s, req.difficulty, req.cache_hit
        return c

    def _enqueue(self, pool: Pool, req: Request) -> None:
        replicas = pool.routable
        if len(pool.replicas) == 1:        # a lone replica: no router to consult (an autoscaled pool always asks its
            replicas[0].enqueue(req)       # router, so a stateful one sees every request, e.g. to remember sessions)
            return
        first = replicas[0]
        if first.engine.enable_prefix_caching and req.segments is not None and not req.hashes:
            req.hashes = first.kv.block_hashes(req.segments, req.prompt_len)
        replicas[pool.router.choose(req, replicas)].enqueue(req)

    def _finished(self, req: Request) -> None:
        if req.state == REJECTED:
            self.rejected += 1
        for hook in self._finish_hooks:
            hook(req)
        if self.on_finish is not None:
            self.on_finish(req)

    # ------------------------------------------------------------ cascade
    def _to_tiers(self, req: Request, tiers: list[int]) -> None:
        """Run `req` on tiers[0]; with more tiers, as an attempt whose completion sends it on to the rest."""
        pool = self.pools[tiers[0]]
        if len(tiers) == 1:
            req.model = pool.model
            self._enqueue(pool, req)
            return
        attempt = self._clone(req, req.output_len)
        attempt.model = pool.model
        self._attempts[req.id] = (req, tiers[1:])
        self._enqueue(pool, attempt)

    def _tier_finished(self, r: Request) -> None:
        """A request finished on a tier that escalates: an attempt goes on to its next tier, an answer is final."""
        entry = self._attempts.get(r.id)
        if entry is None or entry[0] is r:
            self._finished(r)
            return
        req, rest = self._attempts.pop(r.id)
        if r.state == REJECTED:
            req.state = REJECTED
            self._finished(req)
            return
        req.admitted = r.admitted                 # an escalation is not an arrival: admission judged it already
        self._to_tiers(req, rest)

    # ------------------------------------------------------------ disaggregation
    def _decode_target(self, req: Request) -> Replica:
        """The decode instance a prompt's KV goes to (its prefix hashes set first, for cache-aware routers)."""
        decode = self.pools[1]
        if decode.replicas[0].engine.enable_prefix_caching and req.segments is not None and not req.hashes:
            req.hashes = decode.replicas[0].kv.block_hashes(req.segments, req.prompt_len)
        return decode.replicas[decode.router.choose(req, decode.replicas)] if len(decode.replicas) > 1 \
            else decode.replicas[0]

    def _kv_total(self, req: Request) -> float:
        """Bytes of a prompt's KV over the prefill instance's GPUs."""
        cost = self._prefill.plan.cost
        return req.prompt_len * cost.kv_bytes_per_token_per_gpu * cost.tp

    def _prefill_started(self, clone: Request) -> None:
        """Layer-wise streaming: a prompt's first prefill step starts, so its KV starts to flow to the decode
        instance as the layers produce it. Every layer but the last is sent from now on, as flows that share the
        links with all other traffic; the last layer's share follows when the prefill ends (`_prefilled`)."""
        req = self._originals[clone.id]
        target = self._decode_target(req)
        total = self._kv_total(req)
        src = self.replicas[clone.replica].placement.gpus
        layers = self._prefill.plan.cost.model.num_layers
        self._streams[clone.id] = (target, self._transfer(src, target.placement.gpus, total * (layers - 1) / layers))

    def _prefilled(self, clone: Request) -> None:
        """A prompt finished on a prefill instance: move its KV to a decode instance, then queue it there."""
        req = self._originals[clone.id]
        stream = self._streams.pop(clone.id, None)
        if clone.state == REJECTED:
            del self._originals[clone.id]
            req.state = REJECTED
            self._finished(req)
            return
        req.first_scheduled = clone.first_scheduled
        req.admitted = clone.admitted            # admitted at the prefill pool: the decode pool does not judge it again
        req.cached_tokens = clone.cached_tokens
        req.recomputed_tokens = clone.recomputed_tokens
        req.preemptions = clone.preemptions
        req.prefill_replica = clone.replica
        src = self.replicas[clone.replica].placement.gpus      # every GPU holds a shard of the KV (its heads,
        total = self._kv_total(req)                            # its stage's layers)
        start = self.env.now
        if stream is None:
            target = self._decode_target(req)
            done = self._transfer(src, target.placement.gpus, total)
        else:
            # the last layer's KV exists only now; the rest has been flowing since the prefill started
            target, streamed = stream
            last = self._transfer(src, target.placement.gpus, total / self._prefill.plan.cost.model.num_layers)
            done = self.env.all_of([streamed, last])

        def arrived(_ev) -> None:
            req.kv_transfer_s = self.env.now - start
            req.preloaded = req.prompt_len - 1     # the decode instance computes the last position (for its logits)
            del self._originals[req.id]
            target.enqueue(req)

        done.callbacks.append(arrived)

    def _transfer(self, src_gpus, dst_gpus, nbytes: float) -> simpy.Event:
        """`nbytes` from one TP group to another: one flow per shard pair (max of the two TP degrees), GPU i of
        the larger group paired with GPU i mod n of the other."""
        n = max(len(src_gpus), len(dst_gpus))
        flows = [self.net.transfer(self.cluster.path(src_gpus[k % len(src_gpus)], dst_gpus[k % len(dst_gpus)]),
                                   nbytes / n, "kv-transfer") for k in range(n)]
        return flows[0] if n == 1 else self.env.all_of(flows)


def _check_wide_ep(cfg: RunConfig, pool: str, replicas: int, tp: int, pp: int, par) -> None:
    """Expert parallelism over several replicas (vLLM's data-parallel attention with --enable-expert-parallel): the
    plain replicas of one deployment, each a TP group, whose GPUs together hold the experts."""
    if pool != "replicas" or cfg.autoscaling is not None:
        raise ConfigError(f"parallelism.ep={par.ep} > tp={tp} (experts over several data-parallel replicas) is "
                          f"modelled for a deployment's replicas only, without pools, cascade or autoscaling; "
                          f"use ep: {tp}")
    if par.ep != replicas * tp:
        raise ConfigError(f"parallelism.ep={par.ep}: experts spread over data-parallel replicas span all of them; "
                          f"use ep: {replicas * tp} (deployment.replicas={replicas} x tp={tp}) or ep: {tp}")
    if pp > 1 or par.sp > 1:
        raise ConfigError("parallelism.ep over data-parallel replicas with pp or sp is not modelled; use pp: 1 and sp: 1")
    if cfg.speculative is not None:
        raise ConfigError("parallelism.ep over data-parallel replicas with speculative decoding is not modelled; "
                          f"remove speculative or use ep: {tp}")
    if cfg.offload is not None or cfg.powerinfer is not None:
        raise ConfigError("parallelism.ep over data-parallel replicas with offload / powerinfer is not modelled; "
                          f"remove them or use ep: {tp}")
