"""The run configuration: one typed schema, validated once at the boundary.

Every key has a default equal to vLLM V1's where vLLM has one (chunked prefill and prefix caching on,
block size 16, gpu_memory_utilization 0.9, ...). Unknown keys are errors. `load_config` reads YAML
safely (no Python object tags), applies dotted overrides (`engine.max_num_seqs=64`,
`workload.stages[0].rate=8`) and validates.
"""
from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PositiveFloat, PositiveInt,
                      ValidationError, model_validator)

from sim.errors import ConfigError, did_you_mean
from policies.multimodal import MultimodalConfig
from workloads.config import WorkloadConfig


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelConfig(_Model):
    """Which model, and in which precision."""

    name: str = Field(description="Catalogue name (`servesim catalog models`), Hugging Face id, or path to a config.json.")
    weight_dtype: Literal["bf16", "fp16", "fp8", "int8", "int4", "fp4"] | None = Field(
        None, description="Weight precision; default: the model's (or its alias's) checkpoint dtype.")
    kv_dtype: Literal["bf16", "fp16", "fp8", "int8", "int4"] | None = Field(
        None, description="KV-cache precision; default: the activation dtype (bf16/fp16). int4 carries group scales "
                          "and pays a dequantisation cost in decode attention.")
    sparsity: Literal["2:4"] | None = Field(
        None, description="2:4 structured weight sparsity: twice the tensor-core rate for GEMMs and ~0.56x the weight "
                          "bytes, on GPUs with sparse tensor cores (Ampere and later); refused elsewhere.")
    int4_kernel: Literal["tinygemm", "marlin"] | None = Field(
        None, description="Weight-only int4 GEMM: tinygemm (gpt-fast; cost grows with the rows of a step) or marlin "
                          "(vLLM); default: by engine profile.")


class HardwareConfig(_Model):
    """The accelerator each replica runs on."""

    gpu: str = Field("h100-sxm-80gb", description="GPU name (`servesim catalog gpus`); common spellings resolve.")
    price_per_hour: PositiveFloat | None = Field(None, description="Override the catalogue's USD per GPU-hour.")


class ParallelismConfig(_Model):
    """How one replica is split across GPUs."""

    tp: PositiveInt = Field(1, description="Tensor-parallel degree (GPUs per replica, within one node).")
    pp: PositiveInt = Field(1, description="Pipeline-parallel stages (each a TP group; layers split evenly). vLLM "
                                           "keeps pp batches in flight, one per virtual engine.")
    ep: PositiveInt = Field(1, description="Expert parallelism for MoE models: 1 (experts sliced by TP), equal to tp "
                                           "(vLLM's --enable-expert-parallel: whole experts spread over the TP GPUs, "
                                           "tokens dispatched and combined by two all-to-alls per MoE layer), or "
                                           "deployment.replicas x tp (DP attention: the replicas step in lockstep and "
                                           "their expert layers span all their GPUs).")
    expert_load_skew: float = Field(1.0, ge=1.0, description="Under EP, the busiest GPU's share of the tokens' expert "
                                                             "work over the mean (1 = perfectly balanced; EPLB aims "
                                                             "for it).")
    sp: PositiveInt = Field(1, description="Sequence (context) parallel degree for long prompts: each of sp TP groups "
                                           "holds 1/sp of every sequence's KV and computes 1/sp of its tokens; the "
                                           "replica spans tp x sp GPUs (which may span nodes).")
    sp_type: Literal["ring", "ulysses"] = Field(
        "ring", description="ring: KV blocks passed around a ring, overlapped with attention (ring attention); "
                            "ulysses: all-to-all of q/k/v and outputs around attention, heads split across ranks.")


class DeploymentConfig(_Model):
    """Data-parallel replicas of the model behind a router."""

    replicas: PositiveInt = Field(1, description="DP instances of the model, each on its own TP group.")
    parallelism: ParallelismConfig = Field(default_factory=ParallelismConfig, description="Each replica's TP degree.")
    allow_cross_node_tp: bool = Field(False, description="Let a TP group span nodes (priced on the inter-node "
                                                         "fabric); refused by default.")


def _own_router_options(group, what: str):
    """A pool's or cascade tier's router_options belong to its own router: refuse them without one."""
    if group.router_options and not group.router:
        raise ValueError(f"router_options configure the {what}'s own router: set router too (the top-level "
                         f"router takes the top-level router_options)")
    return group


class PoolConfig(_Model):
    """One pool of a disaggregated deployment."""

    replicas: PositiveInt = Field(1, description="Instances in the pool.")
    parallelism: ParallelismConfig = Field(default_factory=ParallelismConfig, description="Each instance's TP degree.")
    gpu: str | None = Field(None, description="GPU of this pool (default: hardware.gpu).")
    router: str | None = Field(None, description="Router within the pool (default: the top-level router).")
    router_options: dict[str, Any] = Field(default_factory=dict, description="Options of the pool's own router.")

    @model_validator(mode="after")
    def _options_need_a_router(self) -> PoolConfig:
        return _own_router_options(self, "pool")


class KVTransferConfig(_Model):
    """How a prefill instance's KV cache reaches the decode instance."""

    layerwise: bool = Field(False, description="Stream each layer's KV as soon as it is computed, overlapping the "
                                               "transfer with the prefill: all but the last layer's share flows from "
                                               "the prefill's first step, on the same links as other traffic.")


class PoolsConfig(_Model):
    """Prefill-decode disaggregation (xPyD): prompts run on the prefill pool, the KV moves, decode runs on the
    decode pool."""

    prefill: PoolConfig = Field(description="The prefill pool.")
    decode: PoolConfig = Field(description="The decode pool.")
    kv_transfer: KVTransferConfig = Field(default_factory=KVTransferConfig, description="KV transfer options.")


class EngineSection(_Model):
    """Engine knobs, named and defaulted as vLLM V1 names and defaults them."""

    profile: str = Field("vllm", description="Engine profile for per-step host overhead: vllm, trtllm, gpt-fast, ideal.")
    flash_decoding: bool = Field(True, description="Split-KV (Flash-Decoding) decode attention, which fills the SMs at "
                                                   "small batch and long context; false: one thread block per "
                                                   "(sequence, KV head).")
    max_num_seqs: PositiveInt = Field(256, description="Most sequences running at once (vLLM --max-num-seqs).")
    max_num_batched_tokens: PositiveInt = Field(
        8192, description="Token budget of one step (vLLM --max-num-batched-tokens); the prefill chunk size.")
    block_size: PositiveInt = Field(16, description="Tokens per KV block (vLLM --block-size).")
    gpu_memory_utilization: float = Field(
        0.9, gt=0, le=1, description="Fraction of GPU memory vLLM may use for weights, activations and KV.")
    enable_chunked_prefill: bool = Field(True, description="Split long prompts across steps (vLLM V1 default on).")
    enable_prefix_caching: bool = Field(True, description="Reuse KV blocks of shared prompt prefixes (V1 default on).")
    max_model_len: int | None = Field(
        None, ge=2, description="Longest sequence (prompt + output, at least 2); default: the model's context length.")
    preemption_mode: Literal["recompute", "swap"] = Field(
        "recompute", description="What happens to a preempted request's KV: recompute (vLLM V1: freed, computed "
                                 "again on resumption) or swap (vLLM V0: copied to host memory over PCIe and back).")
    swap_space: float = Field(
        4.0, ge=0, description="Host memory for swapped KV, GiB per GPU (vLLM --swap-space, default 4); a victim "
                               "that does not fit is recomputed.")
    cpu_offload_gb: float = Field(
        0.0, ge=0, description="Host-memory KV tier per replica, GiB (vLLM's CPU offloading connector): prefix "
                               "blocks evicted from the GPU are kept there and loaded back over PCIe on a hit.")
    nvme_offload_gb: float = Field(
        0.0, ge=0, description="NVMe KV tier per replica, GiB, below the host tier: blocks evicted from host memory "
                               "land there.")
    async_scheduling: bool | None = Field(
        None, description="Plan step n+1 while step n runs (vLLM --async-scheduling): host overhead overlaps the "
                          "GPU, and a request arriving during a step is first scheduled two steps later. "
                          "Default: the engine profile's setting.")


class EnergySection(_Model):
    """How a run's energy is charged (summary `energy`)."""

    power_w: float | None = Field(None, gt=0, allow_inf_nan=False,
                                  description="Watts per GPU while it steps; default: the catalogue TDP (edge "
                                              "devices without one report no energy unless this is given).")
    idle_fraction: float = Field(0.0, ge=0, le=1, description="Power of an idle GPU as a fraction of power_w.")


class SimSection(_Model):
    """How the simulator itself runs."""

    mode: Literal["fast", "iteration"] = Field(
        "fast", description="fast: exact fast-forward over steady decode steps; iteration: one event per step (reference).")
    progress: bool = Field(True, description="Show a progress bar on runs that take more than a couple of seconds.")
    sample_interval_s: PositiveFloat | None = Field(
        None, description="Sample queue length, running batch and KV usage every this many simulated seconds "
                          "(the run's timeseries, for charts), and keep every link's utilisation change points "
                          "(links.parquet); default off. Within a fast-forward run the KV "
                          "usage is the value at the run's start (blocks are allocated at its end).")
    record_steps: bool = Field(
        False, description="Record every iteration's (start, end, tokens, batch size) for the timeline chart and "
                           "the Chrome trace; one row per step, so keep it for short runs.")
    chrome_trace: str | None = Field(
        None, description="Write a Chrome-trace / Perfetto JSON of the iterations to this path at the end of the "
                          "run (implies record_steps).")


class CascadeTier(_Model):
    """One model of a cascade: its own pool of replicas, cost model and memory plan."""

    name: str = Field(description="Tier name (summary key, request log `model` column).")
    model: str | None = Field(None, description="The tier's model (catalogue name, HF id or config.json); default: "
                                                "the top-level model.")
    weight_dtype: Literal["bf16", "fp16", "fp8", "int8", "int4", "fp4"] | None = Field(
        None, description="The tier's weight precision; default: its checkpoint dtype.")
    replicas: PositiveInt = Field(1, description="Replicas of the tier's model.")
    parallelism: ParallelismConfig = Field(default_factory=ParallelismConfig, description="Each replica's TP / PP.")
    gpu: str | None = Field(None, description="GPU of the tier (default: hardware.gpu).")
    router: str | None = Field(None, description="Router within the tier (default: the top-level router).")
    router_options: dict[str, Any] = Field(default_factory=dict, description="Options of the tier's own router.")
    max_difficulty: float | None = Field(
        None, gt=0, le=1, description="Requests with difficulty <= this (and above the previous tier's) go here; "
                                      "None (the last tier): everything harder.")
    escalate_fraction: float = Field(
        0.0, ge=0, lt=1, description="Fraction of this tier's answers judged inadequate and re-sent to the next "
                                     "tier after they finish (both runs are paid; latency counts from arrival).")

    @model_validator(mode="after")
    def _options_need_a_router(self) -> CascadeTier:
        return _own_router_options(self, "tier")


class CascadeConfig(_Model):
    """Multi-model routing: each request goes to the first tier whose max_difficulty covers its difficulty score."""

    tiers: list[CascadeTier] = Field(min_length=1, description="The tiers, easiest first.")
    default_difficulty: float | None = Field(
        None, ge=0, le=1, description="Difficulty of requests that carry none; None: drawn uniformly in [0, 1) "
                                      "from the run's seed, so tier k gets the width of its difficulty band.")

    @model_validator(mode="after")
    def _tiers(self) -> "CascadeConfig":
        names = [t.name for t in self.tiers]
        if len(set(names)) != len(names):
            raise ValueError(f"cascade.tiers: names must be unique (got {names})")
        bounds = [t.max_difficulty for t in self.tiers[:-1]]
        if any(b is None for b in bounds):
            raise ValueError("cascade.tiers: every tier but the last needs max_difficulty")
        if any(b >= a for a, b in zip(bounds[1:], bounds)) or (bounds and self.tiers[-1].max_difficulty is not None
                                                                and self.tiers[-1].max_difficulty <= bounds[-1]):
            raise ValueError("cascade.tiers: max_difficulty must increase from tier to tier")
        if self.tiers[-1].escalate_fraction:
            raise ValueError("cascade.tiers: the last tier has no next tier to escalate to; set its "
                             "escalate_fraction to 0")
        return self


class AutoscalingConfig(_Model):
    """Replicas added and removed while the run goes on (colocated deployments)."""

    policy: str = Field("queue_length", description="Scaling policy (kind 'autoscaler'): queue_length, "
                                                    "slo_attainment, kv_usage.")
    policy_options: dict[str, Any] = Field(
        default_factory=dict, description="Options of the policy, e.g. {target: 16} for queue_length (outstanding "
                                          "requests per replica).")
    min_replicas: PositiveInt = Field(1, description="Fewest replicas kept active (and billed).")
    max_replicas: PositiveInt = Field(description="Most replicas; GPUs for all of them are placed at build time.")
    interval_s: PositiveFloat = Field(15.0, description="Seconds between policy evaluations (Kubernetes HPA's "
                                                        "default sync period is 15 s).")
    provisioning_delay_s: float = Field(
        ge=0, description="Seconds from a scale-up decision until the replica serves (node, container, weight "
                          "load); billed from the decision.")
    scale_down_cooldown_s: float = Field(
        300.0, ge=0, description="Scale-down stabilisation window: replicas are removed only down to the highest "
                                 "recommendation of this many past seconds (HPA's default: 300 s).")

    @model_validator(mode="after")
    def _bounds(self) -> "AutoscalingConfig":
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"autoscaling: min_replicas={self.min_replicas} exceeds max_replicas={self.max_replicas}")
        from sim.registry import validate_options

        import policies.autoscaling  # noqa: F401  (registers the built-in policies)
        validate_options("autoscaler", self.policy, self.policy_options, "autoscaling.policy_options")
        return self


def _check_result_cache(v: dict[str, Any] | None) -> dict[str, Any] | None:
    """`result_cache: {type: exact, ...}`: the type and its options, checked at the boundary (one-line errors)."""
    if v is not None:
        from policies.result_cache import check_result_cache

        check_result_cache(v)
    return v


def _model_shorthand(v: Any) -> Any:
    """`model: llama-3.1-8b` is short for `model: {name: llama-3.1-8b}`."""
    return {"name": v} if isinstance(v, str) else v


class RunConfig(_Model):
    """A single-replica serving experiment."""

    model: Annotated[ModelConfig, BeforeValidator(_model_shorthand, json_schema_input_type=Union[str, ModelConfig])] = Field(
        description="The model: a name/id/path, or a mapping with dtypes.")
    hardware: HardwareConfig = Field(default_factory=HardwareConfig, description="The GPU.")
    parallelism: ParallelismConfig = Field(default_factory=ParallelismConfig, description="TP degree.")
    engine: EngineSection = Field(default_factory=EngineSection, description="Engine knobs (vLLM names).")
    scheduler: str = Field("vllm", description="Batching scheduler plugin (registry kind 'scheduler'): vllm, "
                                               "vllm-v0, sarathi, orca, static, dynamic, or your own.")
    scheduler_options: dict[str, Any] = Field(
        default_factory=dict, description="Options of the chosen scheduler (`servesim catalog policies`), e.g. "
                                          "{max_batch_size: 32, max_wait_s: 0.05} for static.")
    ordering: str = Field("fcfs", description="Order of the waiting queue (registry kind 'ordering'): fcfs, sjf, "
                                              "priority (lower value first, as vLLM), edf, fair.")
    ordering_options: dict[str, Any] = Field(default_factory=dict, description="Options of the ordering, e.g. "
                                                                             "{by: output} for sjf.")
    preemption_victim: str = Field("newest", description="Which running request is preempted when KV blocks run "
                                                         "out (kind 'victim'): newest (vLLM), lowest_priority, largest_kv.")
    admission: dict[str, Any] | None = Field(
        None, description="Admission control at arrival (kind 'admission'): {type: bounded_queue, max_queue: 1000}, "
                          "{type: token_bucket, rate: 10, burst: 20}, {type: slo_feasible}; rejected requests are "
                          "counted in summary.requests.rejected.")
    kv_allocation: Literal["paged", "contiguous"] = Field(
        "paged", description="paged: KV blocks allocated as sequences grow (PagedAttention); contiguous: each request "
                             "reserves max_model_len tokens at admission (the pre-PagedAttention baseline; no prefix "
                             "sharing).")
    offload: dict[str, Any] | None = Field(
        None, description="FlexGen-style placement for one GPU (tp 1): {weights_gpu: 0.2, weights_cpu: 0.8, kv_gpu: 1, "
                          "kv_cpu: 0, cpu_attention: false, overlap: true, gpu_batch: null} (the rest of each on disk), "
                          "plus the tiers beside the GPU: host_memory_gb, disk (a link name), disk_gb, disk_read_gbps, "
                          "pcie_gbps, host_flops. Weights stream over PCIe layer by layer, overlapped with compute.")
    powerinfer: dict[str, Any] | None = Field(
        None, description="PowerInfer hot/cold FFN split for one GPU: {hot_fraction: 0.3, activation_sparsity: 0.9, "
                          "host_memory_gb: ...}: hot neurons on the GPU, cold ones computed by the CPU from host DRAM.")
    multimodal: MultimodalConfig | None = Field(
        None, description="Multimodal requests (images in the workload): {encoder: clip-vit-l-336, mode: inline|async, "
                          "cache_images: 1000, encoder_gpus: 1}: a ViT encoder priced by the roofline runs inline in "
                          "the step that first schedules the request, or on its own encoder pool before routing.")
    kv_eviction: dict[str, Any] | None = Field(
        None, description="Token eviction from the KV cache (kind 'kv_eviction'): {type: streaming_llm, sink_tokens: 4, "
                          "window_tokens: 2044} or {type: h2o, retained_fraction: 0.2}; each sequence holds at most its "
                          "budget of KV (more sequences fit; decode attention reads less); turns prefix caching off.")
    speculative: dict[str, Any] | None = Field(
        None, description="Speculative decoding (kind 'speculative'): {method: draft_model, draft_model: "
                          "llama-3.2-1b, num_draft_tokens: 4, acceptance_rate: 0.8}, or method ngram / mtp.")
    workload: WorkloadConfig = Field(
        description="The traffic: poisson, shared_prefix, synthetic (any arrival process and length "
                    "distributions), sessions, agent, closed_loop, or trace (with format and transformations).")
    cluster: dict[str, Any] | None = Field(
        None, description="The cluster: {topology: hgx-h100, nodes: 2}, {topology: multi-node, node: hgx, nodes: 4, "
                          "fabric: ib-ndr, layout: rail}, or {topology: path/to/graph.json}. Default: as many "
                          "nodes of hardware.gpu's usual server as the deployment needs.")
    deployment: DeploymentConfig | None = Field(
        None, description="DP replicas behind the router; top-level `parallelism` is shorthand for one replica.")
    pools: PoolsConfig | None = Field(None, description="Prefill-decode disaggregation instead of `deployment`.")
    router: str = Field("round_robin", description="Router across replicas (kind 'router'): round_robin, random, "
                                                   "least_outstanding_requests, least_kv_usage, power_of_two, "
                                                   "prefix_affinity, session_affinity.")
    router_options: dict[str, Any] = Field(default_factory=dict, description="Options of the router.")
    seed: int = Field(0, description="Seed of every random stream in the run.")
    sim: SimSection = Field(default_factory=SimSection, description="Simulator settings.")
    energy: EnergySection = Field(default_factory=EnergySection, description="Power per GPU and idle power.")
    result_cache: Annotated[dict[str, Any] | None, AfterValidator(_check_result_cache)] = Field(
        None, description="A response cache in front of the engine (kind 'result_cache'): {type: exact, capacity: "
                          "100000} (same prompt answered before) or {type: semantic, hit_rate: 0.3} (similar "
                          "prompt); a hit is answered after lookup_s, a miss pays lookup_s and goes on.")
    cascade: CascadeConfig | None = Field(
        None, description="Multi-model routing: tiers of models (each its own pool) chosen by a request's "
                          "difficulty score; instead of `deployment` / `pools`.")
    autoscaling: AutoscalingConfig | None = Field(
        None, description="Replicas scaled by a policy with a provisioning delay (colocated `deployment` only; "
                          "deployment.replicas is the number active at the start).")



    @model_validator(mode="after")
    def _one_deployment(self) -> "RunConfig":
        # a default `parallelism` counts as not given, so a dumped config (which spells every default) loads again
        given = "parallelism" in self.model_fields_set and self.parallelism != ParallelismConfig()
        if self.deployment is not None and given:
            raise ValueError("give either parallelism (one replica) or deployment (replicas + parallelism), not both")
        if self.pools is not None and (self.deployment is not None or given):
            raise ValueError("give either pools (disaggregated) or deployment/parallelism (colocated), not both")
        if self.pools is not None and (self.pools.prefill.parallelism.sp > 1 or self.pools.decode.parallelism.sp > 1):
            raise ValueError("pools.*.parallelism.sp: sequence parallelism in disaggregated pools is not modelled; "
                             "use a colocated deployment")
        return self

    def replica_groups(self) -> list[tuple[str, int, int, int, str, bool]]:
        """(pool name, replicas, tp, pp, gpu, cross-node TP allowed) of each pool of the deployment."""
        if self.pools is not None:
            out = []
            for name in ("prefill", "decode"):
                pool = getattr(self.pools, name)
                out.append((name, pool.replicas, pool.parallelism.tp, pool.parallelism.pp,
                            pool.gpu or self.hardware.gpu, False))
            return out
        d = self.deployment
        par = self.parallelism if d is None else d.parallelism
        # a sequence-parallel replica places tp x sp GPUs per stage; its SP ranks may sit on different nodes
        cross = par.sp > 1 or (d is not None and d.allow_cross_node_tp)
        return [("replicas", 1 if d is None else d.replicas, par.tp * par.sp, par.pp, self.hardware.gpu, cross)]

    @property
    def sequence_parallel(self) -> ParallelismConfig:
        """The colocated deployment's parallelism (sp and sp_type are read from it)."""
        return self.parallelism if self.deployment is None else self.deployment.parallelism


class _SafeLoader(yaml.SafeLoader):
    """yaml.SafeLoader: Python object tags are refused, never constructed."""


def read_yaml(path: str | Path) -> dict:
    """A YAML file as a mapping, read with the safe loader: Python object tags and malformed YAML are one-line
    ConfigErrors."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} not found")
    try:
        data = yaml.load(p.read_text(), Loader=_SafeLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.constructor.ConstructorError as exc:
        raise ConfigError(f"{p}: unsupported YAML tag ({exc.problem}); configs are plain data, "
                          f"remove the tag") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{p}:{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: a config must be a mapping of keys (model, hardware, engine, workload, ...)")
    return data


_INDEX = re.compile(r"^([^\[\]]+)((?:\[\d+\])*)$")


def set_dotted(data: dict, dotted: str, value: Any) -> None:
    """Set `a.b[0].c` in nested dicts/lists, creating mappings as needed."""
    parts = dotted.split(".")
    node: Any = data
    for i, part in enumerate(parts):
        m = _INDEX.match(part)
        if not m:
            raise ConfigError(f"key {dotted!r}: cannot parse {part!r}; use keys like engine.max_num_seqs or "
                              f"workload.stages[0].rate")
        key, idx = m.group(1), [int(x) for x in re.findall(r"\[(\d+)\]", m.group(2))]
        last = i == len(parts) - 1
        if not isinstance(node, dict):
            raise ConfigError(f"key {dotted!r}: {'.'.join(parts[:i])} is not a mapping")
        if not idx:
            if last:
                node[key] = value
            else:
                if isinstance(node.get(key), str) and key == "model":
                    node[key] = {"name": node[key]}
                node = node.setdefault(key, {})
            continue
        seq = node.get(key)
        for j, k in enumerate(idx):
            if not isinstance(seq, list) or k >= len(seq):
                n = len(seq) if isinstance(seq, list) else 0
                raise ConfigError(f"key {dotted!r}: {key} has no item [{k}]; it has {n} (numbered from 0)")
            if last and j == len(idx) - 1:
                seq[k] = value
                return
            parent, seq = seq, seq[k]
        node = seq


def parse_override(item: str) -> tuple[str, Any]:
    """Split a ``--set dotted.key=value`` item; the value is parsed as YAML (safely), else kept as text."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected dotted.key=value")
    key, raw = item.split("=", 1)
    try:
        value = yaml.load(raw, Loader=_SafeLoader) if raw else ""  # noqa: S506
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _user_loc(loc: tuple, data: Any) -> tuple:
    """`loc` without the tags pydantic inserts for a tagged union's member (workload.poisson.stages ->
    workload.stages), found by walking the user's own data: a part that is not a key there is such a tag."""
    out: list = []
    node = data
    for part in loc:
        if isinstance(node, dict) and isinstance(part, str) and part not in node and part in node.values():
            continue                                     # the member chosen by node's tag value
        if isinstance(part, str) and part in ("function-after",):
            continue
        out.append(part)
        node = node.get(part) if isinstance(node, dict) else (
            node[part] if isinstance(node, list) and isinstance(part, int) and part < len(node) else None)
    return tuple(out)


def format_validation_error(exc: ValidationError, data: Any = None) -> str:
    """One line: the first offending field, what is wrong, and how to fix it (`data`: the input, to name fields
    as the user wrote them).

    An unknown key is reported before anything else: a misspelt key usually also leaves a required one missing,
    and the misspelling is the fix (with the missing key as its likely correction)."""
    errors = [{**e, "loc": _user_loc(e["loc"], data)} for e in exc.errors()]
    extras = [e for e in errors if e["type"] == "extra_forbidden"]
    err = extras[0] if extras else errors[0]
    loc = ".".join(str(p) for p in err["loc"])
    kind = err["type"]
    if not loc:
        return f"config: {err['msg'].removeprefix('Value error, ')}"
    if kind == "extra_forbidden":
        parent = err["loc"][:-1]
        siblings = [str(e["loc"][-1]) for e in errors if e["type"] == "missing" and e["loc"][:-1] == parent]
        hint = did_you_mean(str(err["loc"][-1]), siblings)
        return f"config key {loc!r} is not known{hint}; remove it or check its spelling (see `servesim schema`)"
    if kind == "missing":
        return f"config key {loc!r} is required; add it"
    if kind == "union_tag_invalid":
        return f"config key {loc!r}: {err['msg']}"
    if kind == "union_tag_not_found":
        tag = (err.get("ctx") or {}).get("discriminator", "type").strip("'")
        return f"config key {loc!r} needs a {tag!r} key saying which kind it is (see `servesim schema` for the choices)"
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    msg = err["msg"].removeprefix("Value error, ")
    if kind == "value_error":       # our own validators' messages say what is wrong and the fix already
        return f"config key {loc!r}: {msg}{more}"
    return f"config key {loc!r}: {msg}; got {err.get('input')!r}{more}"


def validate_config(data: dict) -> RunConfig:
    """A RunConfig from a plain dict; a validation failure becomes a one-line ConfigError naming the key."""
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, data)) from None


def load_config(source: str | Path | dict, overrides: list[str] | None = None) -> RunConfig:
    """A validated RunConfig from a YAML path or a dict, with `--set`-style overrides applied."""
    if isinstance(source, (str, Path)):
        data = read_yaml(source)
        resolve_config_paths(data, Path(source).resolve().parent)   # the file's paths: against its folder
    else:
        data = copy.deepcopy(source)
    for item in overrides or []:
        set_dotted(data, *parse_override(item))
    resolve_config_paths(data, Path.cwd())    # --set paths and a mapping's: against the working directory
    return validate_config(data)


def resolve_config_paths(data: dict, base: Path) -> None:
    """Make a run config's relative input paths absolute against `base`: the workload's files, a speculative
    drafter's acceptance lengths, a model given as a path to its config.json and a cluster graph file. The resolved
    config (written as config.yaml) then reruns from any directory. A model or topology name that is not a file
    under `base` is left as it is (a catalogue name or a Hugging Face id)."""
    if not isinstance(data, dict):
        return
    for key in ("workload", "speculative"):
        if isinstance(data.get(key), (dict, list)):
            resolve_paths(data[key], base)
    model = data.get("model")
    holder, key = (data, "model") if isinstance(model, str) else (model, "name") if isinstance(model, dict) else (None, None)
    if holder is not None and isinstance(holder.get(key), str):
        from sim.models import in_catalogue

        value = holder[key]
        p = Path(value).expanduser()
        if not p.is_absolute() and not in_catalogue(value) and (base / p).exists():
            holder[key] = str(base / p)
    cluster = data.get("cluster")
    if isinstance(cluster, dict) and isinstance(cluster.get("topology"), str):
        p = Path(cluster["topology"]).expanduser()
        if not p.is_absolute() and (base / p).is_file():
            cluster["topology"] = str(base / p)


def resolve_paths(node: Any, base: Path) -> None:
    """Make the workload's file paths (`path`, `*_path` at any depth) relative to the config file."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in list(items):
        if isinstance(value, (dict, list)):
            resolve_paths(value, base)
        elif isinstance(key, str) and (key == "path" or key.endswith("_path")) and isinstance(value, str):
            p = Path(value).expanduser()
            if not p.is_absolute():
                node[key] = str(base / p)


def config_schema() -> dict:
    """JSON Schema of the run config (for editors and the reference docs)."""
    return RunConfig.model_json_schema()


def load_study_file(source: str | Path | dict, model: type[BaseModel], what: str) -> tuple[Any, dict, str]:
    """A sweep or plan file: (validated spec, its base run config with workload paths made absolute,
    the file's text). `base:` is a path relative to the file or an inline mapping."""
    if isinstance(source, dict):
        data, here, text = copy.deepcopy(source), None, yaml.safe_dump(source, sort_keys=False)
    else:
        path = Path(source)
        data, here, text = read_yaml(path), path.resolve().parent, path.read_text()
    try:
        spec = model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{what} file: " + format_validation_error(exc, data).replace("config key", "key")) from None
    if isinstance(spec.base, str):
        base_path = Path(spec.base)
        if not base_path.is_absolute() and here is not None:
            base_path = here / base_path
        base, base_dir = read_yaml(base_path), base_path.resolve().parent
    else:
        base, base_dir = copy.deepcopy(spec.base), here
    if base_dir is not None:
        resolve_config_paths(base, base_dir)
    return spec, base, text
