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
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, PositiveFloat, PositiveInt, ValidationError,
                      model_validator)

from sim.errors import ConfigError
from workloads.config import WorkloadConfig


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelConfig(_Model):
    """Which model, and in which precision."""

    name: str = Field(description="Catalogue name (`servesim catalog models`), Hugging Face id, or path to a config.json.")
    weight_dtype: Literal["bf16", "fp16", "fp8", "int8", "int4"] | None = Field(
        None, description="Weight precision; default: the model's (or its alias's) checkpoint dtype.")
    kv_dtype: Literal["bf16", "fp16", "fp8", "int8"] | None = Field(
        None, description="KV-cache precision; default: the activation dtype (bf16/fp16).")


class HardwareConfig(_Model):
    """The accelerator each replica runs on."""

    gpu: str = Field("h100-sxm-80gb", description="GPU name (`servesim catalog gpus`); common spellings resolve.")
    price_per_hour: PositiveFloat | None = Field(None, description="Override the catalogue's USD per GPU-hour.")


class ParallelismConfig(_Model):
    """How one replica is split across GPUs."""

    tp: PositiveInt = Field(1, description="Tensor-parallel degree (GPUs per replica, within one node).")
    pp: PositiveInt = Field(1, description="Pipeline-parallel stages (each a TP group; layers split evenly). vLLM "
                                           "keeps pp batches in flight, one per virtual engine.")


class DeploymentConfig(_Model):
    """Data-parallel replicas of the model behind a router."""

    replicas: PositiveInt = Field(1, description="DP instances of the model, each on its own TP group.")
    parallelism: ParallelismConfig = Field(default_factory=ParallelismConfig, description="Each replica's TP degree.")
    allow_cross_node_tp: bool = Field(False, description="Let a TP group span nodes (priced on the inter-node "
                                                         "fabric); refused by default.")


class PoolConfig(_Model):
    """One pool of a disaggregated deployment."""

    replicas: PositiveInt = Field(1, description="Instances in the pool.")
    parallelism: ParallelismConfig = Field(default_factory=ParallelismConfig, description="Each instance's TP degree.")
    gpu: str | None = Field(None, description="GPU of this pool (default: hardware.gpu).")
    router: str | None = Field(None, description="Router within the pool (default: the top-level router).")


class KVTransferConfig(_Model):
    """How a prefill instance's KV cache reaches the decode instance."""

    layerwise: bool = Field(False, description="Stream each layer's KV as soon as it is computed, overlapping the "
                                               "transfer with the prefill (only what the last step cannot hide "
                                               "remains after it).")


class PoolsConfig(_Model):
    """Prefill-decode disaggregation (xPyD): prompts run on the prefill pool, the KV moves, decode runs on the
    decode pool."""

    prefill: PoolConfig = Field(description="The prefill pool.")
    decode: PoolConfig = Field(description="The decode pool.")
    kv_transfer: KVTransferConfig = Field(default_factory=KVTransferConfig, description="KV transfer options.")


class EngineSection(_Model):
    """Engine knobs, named and defaulted as vLLM V1 names and defaults them."""

    profile: str = Field("vllm", description="Engine profile for per-step host overhead: vllm, trtllm, gpt-fast, ideal.")
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



    @model_validator(mode="after")
    def _one_deployment(self) -> "RunConfig":
        # a default `parallelism` counts as not given, so a dumped config (which spells every default) loads again
        given = "parallelism" in self.model_fields_set and self.parallelism != ParallelismConfig()
        if self.deployment is not None and given:
            raise ValueError("give either parallelism (one replica) or deployment (replicas + parallelism), not both")
        if self.pools is not None and (self.deployment is not None or given):
            raise ValueError("give either pools (disaggregated) or deployment/parallelism (colocated), not both")
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
        if d is None:
            return [("replicas", 1, self.parallelism.tp, self.parallelism.pp, self.hardware.gpu, False)]
        return [("replicas", d.replicas, d.parallelism.tp, d.parallelism.pp, self.hardware.gpu, d.allow_cross_node_tp)]


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
            raise ConfigError(f"--set {dotted!r}: cannot parse {part!r}; use keys like engine.max_num_seqs or "
                              f"workload.stages[0].rate")
        key, idx = m.group(1), [int(x) for x in re.findall(r"\[(\d+)\]", m.group(2))]
        last = i == len(parts) - 1
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted!r}: {'.'.join(parts[:i])} is not a mapping")
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
                raise ConfigError(f"--set {dotted!r}: {key} has no item [{k}]")
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


def format_validation_error(exc: ValidationError) -> str:
    """One line: the first offending field, what is wrong, and how to fix it."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"] if not (isinstance(p, str) and p in ("function-after",)))
    kind = err["type"]
    if not loc:
        return f"config: {err['msg'].removeprefix('Value error, ')}"
    if kind == "extra_forbidden":
        return f"config key {loc!r} is not known; remove it or check its spelling (see `servesim schema`)"
    if kind == "missing":
        return f"config key {loc!r} is required; add it"
    if kind == "union_tag_invalid":
        return f"config key {loc!r}: {err['msg']}"
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"config key {loc!r}: {err['msg']}; got {err.get('input')!r}{more}"


def validate_config(data: dict) -> RunConfig:
    """A RunConfig from a plain dict; a validation failure becomes a one-line ConfigError naming the key."""
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None


def load_config(source: str | Path | dict, overrides: list[str] | None = None) -> RunConfig:
    """A validated RunConfig from a YAML path or a dict, with `--set`-style overrides applied."""
    base = source.parent if isinstance(source, Path) else None
    if isinstance(source, (str, Path)):
        base = Path(source).resolve().parent
        data = read_yaml(source)
    else:
        data = copy.deepcopy(source)
    for item in overrides or []:
        set_dotted(data, *parse_override(item))
    if base is not None and isinstance(data.get("workload"), dict):
        resolve_paths(data["workload"], base)
    return validate_config(data)


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
        raise ConfigError(f"{what} file: " + format_validation_error(exc).replace("config key", "key")) from None
    if isinstance(spec.base, str):
        base_path = Path(spec.base)
        if not base_path.is_absolute() and here is not None:
            base_path = here / base_path
        base, base_dir = read_yaml(base_path), base_path.resolve().parent
    else:
        base, base_dir = copy.deepcopy(spec.base), here
    if base_dir is not None and isinstance(base.get("workload"), dict):
        resolve_paths(base["workload"], base_dir)
    return spec, base, text
