"""A deployment: pools of replicas placed on a cluster, a router in front of each pool, flows between them.

Colocated (``deployment: {replicas: R}``, or one replica by default): every request goes to the
router, which picks one replica of the pool. Disaggregated (``pools: {prefill, decode}``): the
request first runs its prompt on a prefill instance (as a one-token request, the way vLLM's
disaggregation proxy sends it); its KV cache then moves to a decode instance as flows between the
two instances' GPUs on the cluster's links (sharing bandwidth with every other transfer); the decode
instance admits it with that KV in place, computes the last prompt position and streams the
output. TTFT therefore includes the prefill, the queueing on both sides and the transfer.

Every replica is a `sim.engine.Replica` on the GPUs its placement gives it; swap copies go over
those GPUs' links to their node's host memory.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import simpy

from policies.routing import make_router
from sim.engine import Replica, RequestLog
from sim.errors import ConfigError, DeploymentError
from sim.hardware import get_gpu
from sim.kvcache import KVCacheManager
from sim.links import FlowNetwork
from sim.request import REJECTED, Request
from sim.pipeline import Pipeline
from topologies import GroupRequest, allreduce_params, build_cluster, default_cluster, p2p_time, place

from .build import ReplicaPlan, build_cost_model, build_policies, build_scheduler, plan_replica
from .config import RunConfig


@dataclass
class Pool:
    """Replicas that share a role, a plan (cost model, memory, engine knobs) and a router."""

    name: str
    plan: ReplicaPlan
    replicas: list[Replica]
    router: object


class Deployment:
    """Build the pools of a config on its cluster, and route requests through them."""

    def __init__(self, cfg: RunConfig, env: simpy.Environment, seed: np.random.SeedSequence, log: RequestLog,
                 mode: str = "fast") -> None:
        self.cfg, self.env, self.log = cfg, env, log
        groups = cfg.replica_groups()
        for name, _, tp, _, gpu, cross in groups:
            spec = get_gpu(gpu)
            if cfg.cluster is None and not cross and tp > spec.gpus_per_node:
                key = "parallelism.tp" if name == "replicas" else f"pools.{name}.parallelism.tp"
                raise DeploymentError(f"{key}={tp} exceeds the {spec.gpus_per_node} GPUs of one {spec.name} node; "
                                      f"tensor parallelism runs within a node, use tp <= {spec.gpus_per_node}")
        if cfg.cluster is not None:
            self.cluster = build_cluster(cfg.cluster, cfg.hardware.gpu)
        else:
            needs: dict[str, int] = {}
            for _, count, tp, pp, gpu, _ in groups:
                name = get_gpu(gpu).name
                needs[name] = needs.get(name, 0) + count * tp * pp
            if len(needs) > 1:
                raise ConfigError(f"pools on different GPUs ({', '.join(needs)}) need a cluster that has both; "
                                  f"give `cluster:` as a graph file (topology: path/to/graph.json)")
            (gpu_name, gpus_needed), = needs.items()
            self.cluster = default_cluster(gpu_name, gpus_needed)
        placements = place(self.cluster, [GroupRequest(name, count, tp, pp=pp, gpu=gpu, allow_cross_node_tp=cross)
                                          for name, count, tp, pp, gpu, cross in groups])
        # with timeseries sampling on, every link's utilisation change point is kept for the results
        self.net = FlowNetwork(env, self.cluster.link_capacities(), record=cfg.sim.sample_interval_s is not None)
        streams = iter(seed.spawn(2 + sum(g[1] * g[3] for g in groups)))
        router_rng = np.random.default_rng(next(streams))
        plan_rng = np.random.default_rng(next(streams))
        self.pools: list[Pool] = []
        self.replicas: list[Replica] = []
        self.prefill_log = RequestLog() if cfg.pools is not None else None
        for name, count, tp, pp, gpu, _ in groups:
            mine = [p for p in placements if p.group == name]
            cost = build_cost_model(cfg, gpu, tp, allreduce=self._allreduce(mine[0].stages[0], gpu, tp))
            plan = plan_replica(cfg, cost, plan_rng, pp=pp)
            pool_log = self.prefill_log if name == "prefill" else log
            replicas = []
            for placement in mine:
                pipeline = self._pipeline(placement, cost) if pp > 1 else None
                # with pipeline parallelism vLLM runs pp virtual engines, each with its own batches and its share of
                # the KV blocks, whose steps flow through the shared stages
                for _ in range(pp):
                    kv = KVCacheManager(plan.memory.num_blocks // pp, plan.engine.block_size,
                                        plan.engine.enable_prefix_caching)
                    pol = build_policies(cfg, plan, np.random.default_rng(next(streams)),
                                         self._host_mover(placement.stages[0]))
                    pol.pipeline = pipeline
                    rep = Replica(env, len(self.replicas), cost, kv, plan.engine, build_scheduler(cfg), pool_log, mode,
                                  pol)
                    rep.pool = name
                    rep.placement = placement
                    replicas.append(rep)
                    self.replicas.append(rep)
            router_name = self._router_name(name)
            router = make_router(router_name, cfg.router_options if router_name == cfg.router else {}, router_rng)
            self.pools.append(Pool(name, plan, replicas, router))
        self.placements = placements
        self.rejected = 0
        self.on_finish = None         # the workload's callback (closed loops, sessions), set by the runner
        self._serving = self.pools[-1]          # the pool whose replicas finish requests
        if cfg.pools is not None:
            self._prefill = self.pools[0]
            self._originals: dict[int, Request] = {}
            for rep in self._prefill.replicas:
                rep.on_finish = self._prefilled
        for rep in self._serving.replicas:
            rep.on_finish = self._finished

    # ------------------------------------------------------------ construction helpers
    def _router_name(self, pool: str) -> str:
        if self.cfg.pools is not None:
            own = getattr(self.cfg.pools, pool).router
            if own:
                return own
        return self.cfg.router

    def _allreduce(self, gpus, gpu_name: str, tp: int):
        """The placement's all-reduce (bandwidth, latency) when its path is not the GPU's own scale-up fabric
        (a PCIe box, a TP group across nodes); None keeps the calibrated scale-up figures."""
        if tp == 1:
            return None
        spec = get_gpu(gpu_name)
        one_node = len({self.cluster.node_of(g) for g in gpus}) == 1
        if one_node and spec.scaleup and spec.scaleup != "nvlink-bridge":
            return None
        return allreduce_params(self.cluster, gpus)

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
        """Requests in any replica, or moving between pools."""
        moving = len(self._originals) if self.cfg.pools is not None else 0
        return sum(r.outstanding for r in self.replicas) + moving

    def route(self, req: Request) -> None:
        """An arriving request: to the prefill pool (disaggregated) or to a replica of the only pool."""
        pool = self.pools[0]
        if self.cfg.pools is not None:
            clone = Request(req.id, req.arrival, req.prompt_len, 1, req.segments, req.session_id, req.stage,
                            req.tenant, req.priority, req.slo_ttft_s, req.slo_tpot_s)
            self._originals[req.id] = req
            req = clone
        self._enqueue(pool, req)

    def _enqueue(self, pool: Pool, req: Request) -> None:
        replicas = pool.replicas
        if len(replicas) == 1:
            replicas[0].enqueue(req)
            return
        first = replicas[0]
        if first.engine.enable_prefix_caching and req.segments is not None and not req.hashes:
            req.hashes = first.kv.block_hashes(req.segments, req.prompt_len)
        replicas[pool.router.choose(req, replicas)].enqueue(req)

    def _finished(self, req: Request) -> None:
        if req.state == REJECTED:
            self.rejected += 1
        if self.on_finish is not None:
            self.on_finish(req)

    # ------------------------------------------------------------ disaggregation
    def _prefilled(self, clone: Request) -> None:
        """A prompt finished on a prefill instance: move its KV to a decode instance, then queue it there."""
        req = self._originals[clone.id]
        if clone.state == REJECTED:
            del self._originals[clone.id]
            req.state = REJECTED
            self._finished(req)
            return
        req.first_scheduled = clone.first_scheduled
        req.cached_tokens = clone.cached_tokens
        req.recomputed_tokens = clone.recomputed_tokens
        req.preemptions = clone.preemptions
        req.prefill_replica = clone.replica
        decode = self.pools[1]
        if decode.replicas[0].engine.enable_prefix_caching and req.segments is not None:
            req.hashes = decode.replicas[0].kv.block_hashes(req.segments, req.prompt_len)
        target = decode.replicas[decode.router.choose(req, decode.replicas)] if len(decode.replicas) > 1 \
            else decode.replicas[0]
        src = self.replicas[clone.replica].placement.gpus      # every GPU holds a shard of the KV (its heads,
        dst = target.placement.gpus                            # its stage's layers)
        start = self.env.now
        done = self._transfer(src, dst, self._kv_bytes(req, clone, src, dst))

        def arrived(_ev) -> None:
            req.kv_transfer_s = self.env.now - start
            req.preloaded = req.prompt_len - 1     # the decode instance computes the last position (for its logits)
            del self._originals[req.id]
            target.enqueue(req)

        done.callbacks.append(arrived)

    def _kv_bytes(self, req: Request, clone: Request, src, dst) -> float:
        """Bytes of the prompt's KV left to move after the prefill (all of it, or with layer-wise streaming what
        the prefill's own duration could not hide, at least one layer's share)."""
        cost = self._prefill.plan.cost
        total = req.prompt_len * cost.kv_bytes_per_token_per_gpu * cost.tp
        if not self.cfg.pools.kv_transfer.layerwise:
            return total
        layers = cost.model.num_layers
        bw = self.cluster.bottleneck(src[0], dst[0])[0] * max(len(src), len(dst))
        hidden = (self.env.now - clone.first_scheduled) * bw
        return max(total / layers, total - hidden)

    def _transfer(self, src_gpus, dst_gpus, nbytes: float) -> simpy.Event:
        """`nbytes` from one TP group to another: one flow per shard pair (max of the two TP degrees), GPU i of
        the larger group paired with GPU i mod n of the other."""
        n = max(len(src_gpus), len(dst_gpus))
        flows = [self.net.transfer(self.cluster.path(src_gpus[k % len(src_gpus)], dst_gpus[k % len(dst_gpus)]),
                                   nbytes / n, "kv-transfer") for k in range(n)]
        return flows[0] if n == 1 else self.env.all_of(flows)


def deployment_sections(dep: Deployment, records: dict, sim_time: float) -> dict:
    """The summary sections a deployment adds: per pool and per replica (with more than one), the KV transfer
    times (disaggregated), link utilisation, swap and speculative-decoding counters (when used)."""
    from sim.metrics import distribution

    out: dict = {}
    served = records["replica"]
    prefilled = records["prefill_replica"]
    if len(dep.replicas) > 1 or dep.cfg.pools is not None:
        rows = []
        for r in dep.replicas:
            st = r.steps
            mine = (prefilled if r.pool == "prefill" else served) == r.index
            rows.append({"replica": r.index, "pool": r.pool, "gpus": list(r.placement.gpus),
                         "completed": int(mine.sum()), "rejected": st.rejected, "iterations": st.iterations,
                         "busy_fraction": st.busy_s / sim_time if sim_time > 0 else 0.0,
                         "mean_batch": st.batch_sum / st.iterations if st.iterations else 0.0,
                         "preemptions": st.preemptions, "peak_kv_usage": st.peak_kv_usage,
                         "prefix_hit_rate": r.kv.hit_tokens / r.kv.query_tokens if r.kv.query_tokens else 0.0})
        out["replicas"] = rows
        out["pools"] = {}
        for p in dep.pools:
            mine = [row for row in rows if row["pool"] == p.name]
            hit = sum(r.kv.hit_tokens for r in p.replicas)
            query = sum(r.kv.query_tokens for r in p.replicas)
            out["pools"][p.name] = {
                "replicas": len(p.replicas), "gpu": p.plan.cost.gpu.name, "tp": p.plan.cost.tp,
                "router": dep._router_name(p.name), "kv_blocks_per_replica": p.plan.memory.num_blocks,
                "busy_fraction": sum(m["busy_fraction"] for m in mine) / len(mine),
                "prefix_hit_rate": hit / query if query else 0.0,
                "completed": sum(m["completed"] for m in mine)}
    if dep.cfg.pools is not None:
        out["kv_transfer_s"] = distribution(records["kv_transfer_s"])
    pipelines = list({id(r.pipeline): r.pipeline for r in dep.replicas if r.pipeline is not None}.values())
    if pipelines:
        out["pipeline"] = {"stages": pipelines[0].stages,
                           "stage_utilisation": [[round(u, 4) for u in p.utilisation(sim_time)] for p in pipelines]}
    links = {k: v for k, v in dep.net.link_stats().items() if v["bytes"] > 0}
    out["links"] = dict(sorted(links.items(), key=lambda kv: -kv[1]["busy_s"])[:20])
    swaps = [r.swap for r in dep.replicas if r.swap is not None]
    if swaps:
        out["swap"] = {"swap_outs": sum(r.steps.swap_outs for r in dep.replicas),
                       "out_bytes_per_gpu": sum(s.out_bytes for s in swaps),
                       "in_bytes_per_gpu": sum(s.in_bytes for s in swaps),
                       "copy_wait_s": float(sum(r.steps.copy_wait_s for r in dep.replicas))}
    tiers = [(r.kv, r.tiers) for r in dep.replicas if r.tiers is not None]
    if tiers:
        query = sum(kv.query_tokens for kv, _ in tiers)
        out["offload"] = {
            "gpu_hit_rate": sum(kv.hit_tokens for kv, _ in tiers) / query if query else 0.0,
            "host_hit_rate": sum(t.host_hit_tokens for _, t in tiers) / query if query else 0.0,
            "nvme_hit_rate": sum(t.nvme_hit_tokens for _, t in tiers) / query if query else 0.0,
            "stored_bytes_per_gpu": sum(t.stored_bytes for _, t in tiers),
            "loaded_bytes_per_gpu": sum(t.loaded_bytes for _, t in tiers),
            "copy_wait_s": float(sum(r.steps.copy_wait_s for r in dep.replicas))}
    drafted = sum(r.steps.drafted_tokens for r in dep.replicas)
    if any(r.spec is not None for r in dep.replicas):
        accepted = sum(r.steps.accepted_tokens for r in dep.replicas)
        spec_steps = sum(r.steps.spec_steps for r in dep.replicas)
        out["speculative"] = {"draft_tokens": drafted, "accepted_tokens": accepted,
                              "acceptance_rate": accepted / drafted if drafted else 0.0,
                              "mean_tokens_per_step": (accepted + spec_steps) / spec_steps if spec_steps else 0.0}
    return out
