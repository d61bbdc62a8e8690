"""What a deployment adds to summary.json and to the request records: per-pool and per-replica sections, KV
transfers, pipelines, links, swap and offload tiers, speculative decoding, front-end stages, the cascade's tiers,
autoscaling and energy (the runner calls `deployment_sections` and `request_columns` once, after the run)."""
from __future__ import annotations

import numpy as np

from sim.energy import energy_summary
from sim.metrics import distribution

from .deployment import Deployment


def deployment_sections(dep: Deployment, records: dict, sim_time: float) -> dict:
    """The summary sections a deployment adds: per pool and per replica (with more than one), the KV transfer
    times (disaggregated), link utilisation, swap and speculative-decoding counters (when used)."""

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
        from policies.speculative import alpha_for_mean_accepted

        k = next(r.spec.k for r in dep.replicas if r.spec is not None)
        mean_accepted = accepted / spec_steps if spec_steps else 0.0
        # vLLM's 'draft acceptance rate' (accepted / drafted) is not the config's per-token acceptance_rate (alpha):
        # alpha is what reproduces this run's mean accepted length, and is the value to feed back into a config
        out["speculative"] = {"draft_tokens": drafted, "accepted_tokens": accepted,
                              "draft_acceptance_rate": accepted / drafted if drafted else 0.0,
                              "per_token_alpha": alpha_for_mean_accepted(min(mean_accepted, k), k) if spec_steps else 0.0,
                              "mean_tokens_per_step": 1 + mean_accepted if spec_steps else 0.0}
    for stage in dep.stages:
        summary = getattr(stage, "summary", None)
        if summary is not None:
            out[stage.name] = summary()
    if dep.cascade is not None:
        out["cascade"] = cascade_section(dep, records, sim_time)
    if dep.scaler is not None:
        out["autoscaling"] = dep.scaler.summary(sim_time)
    out["energy"] = energy_section(dep, records, sim_time)
    return out


def energy_section(dep: Deployment, records: dict, sim_time: float) -> dict:
    """Energy of the run at each GPU's TDP while its replica steps (`sim.energy.energy_summary`; an autoscaled pool
    counts the GPUs it held, on average, as `gpus`); with several pools
    the same keys summed over them (`tdp_w` None when their GPUs differ) plus each pool's own section under
    ``pools``. None figures when a GPU's TDP is unknown."""
    tokens = int(np.sum(records["output_tokens"])) if len(records["output_tokens"]) else 0
    parts = []
    for pool in dep.pools:
        per_placement: dict[int, list] = {}
        for rep in pool.replicas:
            per_placement.setdefault(id(rep.placement), [rep.placement, [], rep.pipeline])[1].append(rep.steps.busy_s)
        gpus = sum(len(p.gpus) for p, _, _ in per_placement.values())
        if dep.scaler is not None and pool is dep.pools[0] and sim_time > 0:
            # an autoscaled pool holds only the GPUs it has switched on: the billed GPU-hours, as a mean count
            gpus = dep.scaler.gpu_hours(sim_time) * 3600.0 / sim_time
        busy = sum(len(p.gpus) * _busy_s(b, pipe, sim_time) for p, b, pipe in per_placement.values()) / gpus if gpus else 0.0
        e = dep.cfg.energy
        power = e.power_w if e.power_w is not None else pool.plan.cost.gpu.tdp_w
        parts.append(energy_summary(power, gpus, busy, sim_time, tokens, idle_fraction=e.idle_fraction))
    if len(parts) == 1:
        return parts[0]
    gpus = sum(p["gpus"] for p in parts)
    busy = sum(p["gpus"] * p["busy_s"] for p in parts) / gpus if gpus else 0.0
    tdps = {p["tdp_w"] for p in parts}
    out = {"tdp_w": tdps.pop() if len(tdps) == 1 else None, "gpus": gpus, "busy_s": busy,
           "utilization": busy / sim_time if sim_time > 0 else None, "idle_fraction": parts[0]["idle_fraction"]}
    for key in ("energy_j", "energy_kwh", "allocated_energy_j"):
        values = [p[key] for p in parts]
        out[key] = sum(values) if None not in values else None
    known = out["energy_j"] is not None
    out["j_per_output_token"] = out["energy_j"] / tokens if known and tokens else None
    out["mean_power_w"] = out["energy_j"] / sim_time if known and sim_time > 0 else None
    out["allocated_j_per_output_token"] = (out["allocated_energy_j"] / tokens
                                           if out["allocated_energy_j"] is not None and tokens else None)
    out["pools"] = {pool.name: part for pool, part in zip(dep.pools, parts)}
    return out


def _busy_s(engine_busy: list[float], pipeline, sim_time: float) -> float:
    """Mean busy time of one placement's GPUs. Under pipeline parallelism each stage's GPUs work only on their own
    part of every step (the stages' own busy times; the virtual engines' steps span all stages and overlap); without
    it, the GPUs are busy while the replica steps."""
    if pipeline is not None:
        return sum(pipeline.busy_s) / len(pipeline.busy_s)
    return min(sum(engine_busy), sim_time)


def request_columns(dep: Deployment, records: dict) -> None:
    """Columns the front end adds to the request records: ``result_cache_hit`` (answered by the result cache)
    and, in a cascade, ``model`` (the tier model that gave the answer; None for a cache hit)."""
    cache = next((s for s in dep.stages if getattr(s, "name", "") == "result_cache"), None)
    if cache is not None:
        records["result_cache_hit"] = np.isin(records["request_id"], np.asarray(cache.hit_ids, dtype=np.int64))
    encoder = next((s for s in dep.stages if getattr(s, "name", "") == "multimodal"), None)
    if encoder is not None:
        records["encoder_s"] = encoder.encoder_column(np.asarray(records["request_id"]))
    if dep.cascade is not None:
        names = np.array([r.cost.model.name for r in dep.replicas] + [None], dtype=object)
        records["model"] = names[records["replica"]]           # replica -1 (served by a stage) picks the None


def cascade_section(dep: Deployment, records: dict, sim_time: float) -> dict:
    """Per tier: requests routed there first, escalated on, answered there, their latency, the tokens its
    replicas computed (escalated attempts included), GPU-hours and cost (every replica billed for the whole run)."""

    served = records["replica"]
    arrival = records["arrival_s"]
    tiers = {}
    total_hours, total_cost = 0.0, 0.0
    for k, pool in enumerate(dep.pools):
        mine = np.isin(served, [r.index for r in pool.replicas])
        cost = pool.plan.cost
        gpus = sum(len(p.gpus) for p in dep.placements if p.group == pool.name)
        hours = gpus * sim_time / 3600.0
        price = cost.gpu.price_per_hour
        busy = sum(r.steps.busy_s for r in pool.replicas)
        tiers[pool.name] = {
            "model": pool.model, "gpu": cost.gpu.name, "tp": cost.tp, "replicas": len(pool.replicas), "gpus": gpus,
            "routed": dep.cascade.routed[k], "escalated": dep.cascade.escalated[k], "answered": int(mine.sum()),
            "ttft_s": distribution(records["first_token_s"][mine] - arrival[mine]),
            "e2e_s": distribution(records["finish_s"][mine] - arrival[mine]),
            "busy_fraction": busy / sim_time / len(pool.replicas) if sim_time > 0 else 0.0,
            "tokens": sum(r.steps.tokens for r in pool.replicas), "gpu_hours": hours, "usd_per_gpu_hour": price,
            "cost_usd": hours * price if price is not None else None}
        total_hours += hours
        total_cost = None if price is None or total_cost is None else total_cost + hours * price
    return {"tiers": tiers, "gpu_hours": total_hours, "cost_usd": total_cost,
            "default_difficulty": dep.cfg.cascade.default_difficulty}
