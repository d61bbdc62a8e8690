"""Build a replica from a validated config: cost model, memory plan, engine knobs, scheduler and policies.

The runner (`experiments.runner`) calls these once per replica (or per pool of a disaggregated
deployment); each function does one job and raises a one-line `ConfigError` / `DeploymentError` for
a config that cannot be served, before any simulation starts.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

import policies.batching  # noqa: F401  (registers the built-in schedulers)
import policies.memory  # noqa: F401  (registers kv_allocation and preemption modes)
import policies.request_batching  # noqa: F401
from policies.kv_eviction import make_kv_eviction, retained_tokens
from policies.multimodal import inline_memory_bytes_per_gpu, make_encoder_stage
from policies.admission import make_admission
from policies.ordering import make_ordering
from policies.speculative import make_speculator
from policies.victims import make_victim
from sim import registry
from sim.collective_cost import check_ep_degree
from sim.cost import CostModel
from sim.engine import EngineConfig, ReplicaPolicies
from sim.errors import ConfigError, DeploymentError
from sim.kvtiers import KVTiers
from sim.hardware import get_gpu, gpu_with_overrides
from sim.memory import MemoryPlan, plan_memory
from sim.models import get_model

from .config import RunConfig


@dataclass(frozen=True)
class ReplicaPlan:
    """What every replica of one pool shares: its cost model, memory plan and engine knobs."""

    cost: CostModel
    memory: MemoryPlan
    engine: EngineConfig
    max_model_len: int
    speculator: object = None


def build_cost_model(cfg: RunConfig, gpu_name: str | None = None, tp: int | None = None,
                     allreduce: tuple | None = None, alltoall=None, par=None) -> CostModel:
    """The cost model of a config's deployment: model, GPU (with a price override), TP degree, dtypes, engine
    profile; `allreduce` = (bus bandwidth B/s, latency s[, custom all-reduce usable]) of the placement's real path,
    when known."""
    model = get_model(cfg.model.name)
    gpu = get_gpu(gpu_name or cfg.hardware.gpu)
    # the group's parallelism (a pool's, a cascade tier's) when the deployment passes it, else the run's
    par = par or (cfg.sequence_parallel if cfg.pools is None else cfg.parallelism)
    sp = par.sp
    if sp > 1 and par.ep > 1:
        raise ConfigError("parallelism: expert parallelism (ep) together with sequence parallelism (sp) is not "
                          "modelled; use one of them")
    if sp > 1 and (cfg.offload is not None or cfg.powerinfer is not None):
        raise ConfigError("parallelism.sp: offload / powerinfer price one GPU; use sp: 1 with them")
    if cfg.pools is not None and (cfg.offload is not None or cfg.powerinfer is not None):
        raise ConfigError("offload / powerinfer with pools (disaggregation) is not modelled; remove one of them")
    tp = (tp // sp if tp else par.tp)        # a deployment passes the GPUs per stage: tp x sp
    if tp > gpu.gpus_per_node and allreduce is None:     # a placement across servers passes its path instead
        raise DeploymentError(f"parallelism.tp={tp} exceeds the {gpu.gpus_per_node} GPUs of one "
                              f"{gpu.name} node; tensor parallelism runs within a node, use tp <= {gpu.gpus_per_node}")
    if cfg.hardware.price_per_hour is not None:
        gpu = gpu_with_overrides(gpu, price_per_hour=cfg.hardware.price_per_hour)
    eviction = make_kv_eviction(cfg.kv_eviction)
    cost = CostModel(model, gpu, tp=tp, weight_dtype=cfg.model.weight_dtype,
                     kv_dtype=cfg.model.kv_dtype, engine=cfg.engine.profile,
                     allreduce=allreduce if sp == 1 else None, flash_decoding=cfg.engine.flash_decoding,
                     sparsity=cfg.model.sparsity, int4_kernel=cfg.model.int4_kernel,
                     kv_eviction=eviction.cost_terms() if eviction is not None else None,
                     expert_parallel=_expert_parallel(par, tp), expert_skew=par.expert_load_skew,
                     alltoall=alltoall if par.ep > 1 else None, ep_size=par.ep if par.ep > 1 else None)
    if cfg.offload is not None or cfg.powerinfer is not None:
        cost = offloaded_cost(cfg, cost)
    if sp > 1:
        cost = sequence_parallel_cost(cost, par, allreduce, alltoall)
    return cost


def _expert_parallel(par, tp: int) -> bool:
    """EP off (ep == 1), over the replica's TP GPUs (ep == tp > 1), or over the GPUs of several data-parallel
    replicas stepping in lockstep (ep == replicas x tp; the deployment checks the replica count)."""
    check_ep_degree(par.ep, tp, f"parallelism.ep={par.ep}")
    return par.ep > 1


_HARDWARE_KEYS = ("host_memory_gb", "disk", "disk_gb", "disk_read_gbps", "disk_write_gbps", "host_memory",
                  "host_mem_gbps", "host_flops", "pcie_gbps")


def offloaded_cost(cfg: RunConfig, cost: CostModel):
    """`cost` with the config's FlexGen placement (`offload`) or PowerInfer split (`powerinfer`)."""
    from sim.powerinfer import HotColdCostModel
    from sim.weight_offload import OffloadedCostModel, OffloadHardware, Placement

    if cfg.offload is not None and cfg.powerinfer is not None:
        raise ConfigError("give either offload (FlexGen placement) or powerinfer (hot/cold split), not both")
    key = "offload" if cfg.offload is not None else "powerinfer"
    spec = dict(cfg.offload if cfg.offload is not None else cfg.powerinfer)
    hw_args = {k: spec.pop(k) for k in _HARDWARE_KEYS if k in spec}
    own = ({f.name for f in dataclasses.fields(Placement)} if key == "offload"
           else {"hot_fraction", "activation_sparsity"})
    unknown = sorted(set(spec) - own)
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}: unknown key; known: {', '.join(sorted(own | set(_HARDWARE_KEYS)))}")
    for name, value in {**spec, **hw_args}.items():
        if name not in ("cpu_attention", "overlap", "disk", "host_memory") and value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ConfigError(f"{key}.{name}: must be a number, got {value!r}")
    try:
        hw = OffloadHardware.for_gpu(cost.gpu, **hw_args)
    except (KeyError, ValueError, TypeError) as exc:
        raise ConfigError(f"{key}: {exc}") from None
    if key == "offload":
        try:
            placement = Placement(**spec)
        except TypeError as exc:
            raise ConfigError(f"offload: {exc}") from None
        offloaded = OffloadedCostModel(cost, placement, hw)
        offloaded.check_weights_fit()
        return offloaded
    if "hot_fraction" not in spec:
        raise ConfigError("powerinfer.hot_fraction is required (share of each FFN's neurons kept on the GPU)")
    return HotColdCostModel(cost, spec["hot_fraction"], spec.get("activation_sparsity", 0.0), hw)


def sequence_parallel_cost(cost: CostModel, par, path: tuple[float, float] | None, alltoall=None):
    """Wrap `cost` for `par.sp` sequence-parallel ranks; the ring runs at `path` = (bandwidth B/s, latency s) of the
    group's slowest link when the placement knows it, else on the GPU's scale-up link; Ulysses' exchanges use
    `alltoall(bytes_per_gpu) -> s` (the placement's all-to-all over the SP ranks) when given."""
    from sim.hardware import get_link
    from sim.sequence_parallel import wrap

    if path is None:
        spec = get_link(cost.gpu.scaleup or cost.gpu.host_link)
        path = (spec.bw_gbps_per_direction * 1e9 * spec.achievable_fraction, spec.latency_us * 1e-6)
    return wrap(cost, par.sp, par.sp_type, path[0], path[1], alltoall=alltoall)


def engine_config(cfg: RunConfig, max_model_len: int, cost: CostModel) -> EngineConfig:
    """The engine knobs of a config (async scheduling from the engine profile unless set; contiguous KV
    allocation shares no prefixes)."""
    e = cfg.engine
    async_scheduling = cost.engine.async_scheduling if e.async_scheduling is None else e.async_scheduling
    return EngineConfig(max_num_seqs=e.max_num_seqs, max_num_batched_tokens=e.max_num_batched_tokens,
                        block_size=e.block_size,
                        enable_chunked_prefill=e.enable_chunked_prefill,
                        # under token eviction an evicted prompt no longer matches its block hashes
                        enable_prefix_caching=(e.enable_prefix_caching and cfg.kv_allocation == "paged"
                                               and not cfg.kv_eviction),
                        max_model_len=max_model_len, preemption_mode=e.preemption_mode,
                        async_scheduling=async_scheduling)


def plan_replica(cfg: RunConfig, cost: CostModel, rng: np.random.Generator | None = None, pp: int = 1) -> ReplicaPlan:
    """Memory plan and engine knobs of one replica on `cost`'s GPUs (each of `pp` stages holding 1/pp of the layers),
    refusing deployments that cannot serve the configured max_model_len. A speculative drafter's weights and KV come
    out of the same memory."""
    if pp > 1 and cfg.speculative:
        raise ConfigError("speculative decoding with pipeline parallelism (pp > 1) is not modelled; use pp: 1")
    if cfg.speculative and getattr(cost, "degree", 1) > 1:
        # its K + 1 verification positions would be priced as a prefill chunk over the sequence-parallel ring
        raise ConfigError("speculative decoding with sequence parallelism (sp > 1) is not modelled; use sp: 1 or "
                          "remove speculative")
    if cfg.speculative and hasattr(registry.get("scheduler", cfg.scheduler), "shape"):
        # a request-level batch pads every sequence to the longest; the speculative step prices the batch as it is
        raise ConfigError(f"speculative decoding with the padded static batches of scheduler {cfg.scheduler!r} is "
                          f"not modelled; use another scheduler (vllm, dynamic, orca, sarathi) or remove speculative")
    layers = cost.model.num_layers
    if pp > layers:
        # each stage holds whole layers (vLLM refuses more stages than layers)
        raise DeploymentError(f"pp={pp} exceeds {cost.model.name}'s {layers} layers: each pipeline stage holds at "
                              f"least one whole layer; use pp <= {layers}")
    speculator = make_speculator(cfg.speculative, cost, rng or np.random.default_rng(0)) if cfg.speculative else None
    max_model_len = cfg.engine.max_model_len or cost.model.max_position_embeddings
    e = cfg.engine
    extra_w = getattr(speculator, "extra_weight_bytes_per_gpu", 0.0) if speculator else 0.0
    if cfg.multimodal is not None:
        # an inline encoder's weights and its cache of encoded images live on the LLM's GPUs
        extra_w += inline_memory_bytes_per_gpu(make_encoder_stage(cfg.multimodal, cost))
    extra_kv = getattr(speculator, "extra_kv_bytes_per_token_per_gpu", 0.0) if speculator else 0.0
    # a sequence-parallel rank runs its 1/sp of the step's tokens through the layers
    step_tokens = -(-e.max_num_batched_tokens // getattr(cost, "degree", 1))
    mem = plan_memory(cost, e.gpu_memory_utilization, step_tokens, e.max_num_seqs, e.block_size,
                      extra_weight_bytes=extra_w, extra_kv_bytes_per_token=extra_kv, pipeline_stages=pp)
    if hasattr(cost, "kv_capacity_tokens"):
        # an offloaded KV cache is bounded by every tier it spans (GPU, host DRAM, disk)
        blocks = min(mem.num_blocks, cost.kv_capacity_tokens(mem.kv_gb * 1e9) // e.block_size)
        mem = dataclasses.replace(mem, num_blocks=blocks, max_kv_tokens=blocks * e.block_size)
    eviction = make_kv_eviction(cfg.kv_eviction)
    longest = retained_tokens(eviction, max_model_len)      # the most KV one sequence can hold
    if mem.max_kv_tokens // pp < longest:
        raise DeploymentError(
            f"the KV cache holds {mem.max_kv_tokens:,} tokens per replica, less than one sequence of max_model_len="
            f"{max_model_len:,} needs ({longest:,}); "
            f"lower engine.max_model_len, raise engine.gpu_memory_utilization or parallelism.tp")
    ecfg = engine_config(cfg, max_model_len, cost)
    sched = registry.get("scheduler", cfg.scheduler)
    chunked = getattr(sched, "chunked", True)
    chunked = ecfg.enable_chunked_prefill if chunked is None else chunked
    if ecfg.max_num_batched_tokens < max_model_len and not chunked and issubclass(sched, policies.batching.VLLMScheduler):
        raise DeploymentError(
            f"engine.max_num_batched_tokens={ecfg.max_num_batched_tokens} is below max_model_len={max_model_len} "
            f"with chunked prefill off ({cfg.scheduler}), so long prompts could never run; raise it, enable chunked "
            f"prefill, or lower engine.max_model_len")
    return ReplicaPlan(cost, mem, ecfg, max_model_len, speculator)


def build_scheduler(cfg: RunConfig):
    """A fresh scheduler instance (one per replica: request-level schedulers keep their batch in progress)."""
    cls = registry.get("scheduler", cfg.scheduler)
    options = registry.validate_options("scheduler", cfg.scheduler, cfg.scheduler_options, "scheduler_options")
    return cls(options) if options is not None else cls()


def build_policies(cfg: RunConfig, plan: ReplicaPlan, rng: np.random.Generator, move=None) -> ReplicaPolicies:
    """Ordering, victim, admission, KV allocation, preemption mode and speculator of one replica.

    `move(direction, bytes_per_gpu) -> event` copies KV between the replica's GPUs, host memory and NVMe (swap,
    offload tiers)."""
    e = cfg.engine
    reserve = registry.get("kv_allocation", cfg.kv_allocation)(plan.max_model_len)
    swap = None
    if e.preemption_mode == "swap":
        block_bytes = plan.memory.kv_bytes_per_token * e.block_size
        capacity = int(e.swap_space * 2**30 // block_bytes) if block_bytes else 0
        swap = registry.get("preemption", "swap")(capacity, block_bytes, move)
    tiers = None
    if e.cpu_offload_gb or e.nvme_offload_gb:
        if cfg.kv_eviction is not None:
            raise ConfigError("engine.cpu_offload_gb / nvme_offload_gb offload prefix blocks, and kv_eviction turns "
                              "prefix caching off; remove one of them")
        if not plan.engine.enable_prefix_caching:
            raise ConfigError("engine.cpu_offload_gb / nvme_offload_gb offload prefix blocks: enable "
                              "engine.enable_prefix_caching (and use kv_allocation: paged)")
        # a replica's block spans its TP (and sequence-parallel) ranks
        replica_block = plan.memory.kv_bytes_per_token * e.block_size * getattr(plan.cost, "gpus_per_replica", plan.cost.tp)
        tiers = KVTiers(int(e.cpu_offload_gb * 2**30 // replica_block), int(e.nvme_offload_gb * 2**30 // replica_block),
                        plan.memory.kv_bytes_per_token * e.block_size, e.block_size, move)
    return ReplicaPolicies(eviction=make_kv_eviction(cfg.kv_eviction),
                           ordering=make_ordering(cfg.ordering, cfg.ordering_options, rng),
                           victim=make_victim(cfg.preemption_victim),
                           admission=make_admission(cfg.admission, rng) if cfg.admission else None,
                           reserve_tokens=reserve, swap=swap, speculator=plan.speculator, tiers=tiers)
