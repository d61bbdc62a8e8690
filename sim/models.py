"""Model architectures: the catalogue in ``sim/catalog/models.yaml`` and Hugging Face config.json import."""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .errors import CatalogError, did_you_mean


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A decoder-only transformer's shape: everything the cost model and KV manager need.

    Dense, MoE (every layer or all but the first ``first_k_dense`` layers) and MLA attention are
    described by the same fields; unused ones stay 0.
    """

    name: str                       # canonical key, e.g. "llama-3.1-8b"
    hf_id: str                      # e.g. "meta-llama/Llama-3.1-8B"
    architecture: str               # HF architectures[0], e.g. "LlamaForCausalLM"
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int          # dense FFN width (also MoE layers' width when moe_intermediate_size is 0)
    vocab_size: int
    max_position_embeddings: int
    ffn_type: str = "swiglu"        # "swiglu" | "geglu" (3 matrices) | "gelu" | "relu" (2 matrices)
    attention_type: str = "gqa"     # "mha" | "gqa" | "mqa" | "mla"
    qkv_bias: bool = False
    linear_bias: bool = False       # every projection, FFN matrix and LayerNorm has a bias (OPT, GPT-2)
    tie_word_embeddings: bool = False
    learned_positions: int = 0      # rows of a learned absolute position table (OPT: 2048 + offset 2); 0 = RoPE
    sliding_window: int | None = None
    global_attention_every: int = 0  # with sliding_window: every n-th layer attends globally (Gemma-2: 2); 0 = none
    # with sliding_window: how many softmax layers are local, for an HF layer_types pattern that no
    # global_attention_every reproduces (Qwen2: the first max_window_layers attend globally); None = derive
    sliding_layers: int | None = None
    # linear attention (a fixed-size recurrent state per sequence instead of a growing KV cache)
    linear_attention_layers: int = 0   # layers whose mixer is linear attention (their KV bytes per token: 0)
    linear_state_dim: int = 0          # key dimension of one head's d_k x d_v state (0 = head_dim)
    # MoE
    num_experts: int = 0            # routed experts (0 = dense)
    experts_per_token: int = 0      # top-k
    moe_intermediate_size: int = 0  # width of one routed expert
    num_shared_experts: int = 0
    shared_expert_intermediate_size: int = 0   # total width of the shared expert(s); 0 -> num_shared * moe width
    first_k_dense: int = 0          # leading layers with a dense FFN (DeepSeek-V3: 3)
    moe_layer_freq: int = 1         # every n-th layer is MoE (after first_k_dense)
    # MLA (DeepSeek-V2/V3)
    q_lora_rank: int = 0
    kv_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    default_weight_dtype: str = "bf16"
    # modules a quantized checkpoint keeps in the activation dtype besides the embedding, LM head and MoE router
    # (which vLLM never quantizes): "attention" = the Q/K/V/O projections (e.g. RedHatAI's Llama-4-Scout FP8-dynamic)
    unquantized_modules: tuple[str, ...] = ()
    total_params_b: float | None = None      # published figure, for cross-checks
    active_params_b: float | None = None
    source: str = ""
    aliases: tuple[str, ...] = field(default_factory=tuple)

    @property
    def is_moe(self) -> bool:
        """True for a mixture-of-experts model."""
        return self.num_experts > 0

    @property
    def num_moe_layers(self) -> int:
        """Layers whose FFN is a mixture of experts."""
        if not self.is_moe:
            return 0
        rest = self.num_layers - self.first_k_dense
        return rest // self.moe_layer_freq

    @property
    def num_dense_layers(self) -> int:
        """Layers with a dense FFN (all of them for a dense model)."""
        return self.num_layers - self.num_moe_layers

    # --- parameter counts (element counts, not billions) -------------------------------------

    @property
    def ffn_matrices(self) -> int:
        """Weight matrices per FFN: gated (SwiGLU/GeGLU) FFNs have gate, up and down; plain GELU/ReLU two."""
        return 2 if self.ffn_type in ("gelu", "relu") else 3

    @property
    def moe_width(self) -> int:
        """Width of one routed expert (Mixtral-style configs reuse ``intermediate_size``)."""
        return self.moe_intermediate_size or self.intermediate_size

    @property
    def attention_params_per_layer(self) -> float:
        """Q/K/V/O projections (and biases); for MLA the low-rank projections and their norms."""
        h, nh = self.hidden_size, self.num_heads
        if self.attention_type == "mla":
            qk_head = self.qk_nope_head_dim + self.qk_rope_head_dim
            if self.q_lora_rank:
                q = h * self.q_lora_rank + self.q_lora_rank + self.q_lora_rank * nh * qk_head
            else:
                q = h * nh * qk_head
            kv_a = h * (self.kv_lora_rank + self.qk_rope_head_dim) + self.kv_lora_rank
            kv_b = self.kv_lora_rank * nh * (self.qk_nope_head_dim + self.v_head_dim)
            o = nh * self.v_head_dim * h
            return float(q + kv_a + kv_b + o)
        q_out = nh * self.head_dim
        kv_out = self.num_kv_heads * self.head_dim
        params = h * q_out + 2 * h * kv_out + q_out * h
        if self.qkv_bias or self.linear_bias:
            params += q_out + 2 * kv_out
        if self.linear_bias:
            params += h                                  # o_proj bias
        return float(params)

    @property
    def dense_ffn_params(self) -> float:
        """One dense FFN of width ``intermediate_size`` (with biases when ``linear_bias``)."""
        bias = (self.ffn_matrices - 1) * self.intermediate_size + self.hidden_size if self.linear_bias else 0
        return float(self.ffn_matrices * self.hidden_size * self.intermediate_size + bias)

    @property
    def expert_params(self) -> float:
        """One routed expert (0 for a dense model)."""
        return float(self.ffn_matrices * self.hidden_size * self.moe_width) if self.is_moe else 0.0

    @property
    def shared_expert_params(self) -> float:
        """All shared experts of one MoE layer together (they run for every token)."""
        if not self.is_moe or not (self.num_shared_experts or self.shared_expert_intermediate_size):
            return 0.0
        width = self.shared_expert_intermediate_size or self.num_shared_experts * self.moe_width
        return float(self.ffn_matrices * self.hidden_size * width)

    @property
    def router_params(self) -> float:
        """The gate of one MoE layer: hidden -> one logit per routed expert."""
        return float(self.hidden_size * self.num_experts)

    @property
    def embedding_params(self) -> float:
        """Parameters of the input embedding (vocabulary x hidden size, plus a learned position table)."""
        return float((self.vocab_size + self.learned_positions) * self.hidden_size)

    @property
    def lm_head_params(self) -> float:
        """0 when tied: the head reuses the embedding matrix, so its weights are stored once."""
        return 0.0 if self.tie_word_embeddings else float(self.vocab_size * self.hidden_size)

    @property
    def norm_params(self) -> float:
        """All RMSNorm/LayerNorm weights: two per layer (Gemma-2/3: four) plus the final norm; LayerNorms
        with a bias (``linear_bias``) have twice as many."""
        # Gemma2/Gemma3DecoderLayer: input, post_attention, pre_feedforward and post_feedforward norms
        per_layer = 4 if self.architecture.startswith(("Gemma2", "Gemma3")) else 2
        return float((per_layer * self.num_layers + 1) * self.hidden_size * (2 if self.linear_bias else 1))

    def _layer_stack_params(self, experts: int) -> float:
        moe_ffn = experts * self.expert_params + self.shared_expert_params + self.router_params
        return (self.num_layers * self.attention_params_per_layer
                + self.num_dense_layers * self.dense_ffn_params
                + self.num_moe_layers * moe_ffn)

    @property
    def total_params(self) -> float:
        """Every stored weight: what has to fit in GPU memory (multi-token-prediction heads excluded)."""
        return (self.embedding_params + self.lm_head_params + self.norm_params
                + self._layer_stack_params(self.num_experts))

    @property
    def active_params(self) -> float:
        """Weights one token touches: top-k routed experts instead of all of them."""
        return (self.embedding_params + self.lm_head_params + self.norm_params
                + self._layer_stack_params(self.experts_per_token))

    # --- attention layer kinds -------------------------------------------------------------------

    @property
    def num_softmax_layers(self) -> int:
        """Layers with softmax attention over a KV cache (all but the linear-attention ones)."""
        return self.num_layers - self.linear_attention_layers

    @property
    def num_sliding_layers(self) -> int:
        """Softmax layers that attend only to the last ``sliding_window`` tokens (local layers).

        Mistral-7B v0.1: all of them; Gemma-2 (``global_attention_every: 2``): every other one; an
        explicit ``sliding_layers`` count wins.
        """
        if not self.sliding_window:
            return 0
        n = self.num_softmax_layers
        if self.sliding_layers is not None:
            return min(self.sliding_layers, n)
        return n - n // self.global_attention_every if self.global_attention_every else n

    @property
    def linear_state_elements(self) -> float:
        """Elements of one sequence's recurrent state in one linear-attention layer: heads x d_k x d_v."""
        return float(self.num_heads * (self.linear_state_dim or self.head_dim) * self.head_dim)

    def linear_state_bytes_per_seq(self, dtype_bytes: float = 4.0) -> float:
        """Fixed state bytes one sequence holds across the linear-attention layers (fp32 by default, as
        the recurrent kernels accumulate it); independent of context length, 0 without such layers."""
        return self.linear_attention_layers * self.linear_state_elements * dtype_bytes

    def kv_bytes_per_token(self, dtype_bytes: float = 2.0) -> float:
        """KV-cache bytes one token occupies across all (softmax-attention) layers.

        MLA caches the compressed latent plus the shared RoPE key (vLLM's layout), not per-head K/V.
        Linear-attention layers keep a fixed state instead (`linear_state_bytes_per_seq`).
        """
        layers = self.num_softmax_layers
        if self.attention_type == "mla":
            return float((self.kv_lora_rank + self.qk_rope_head_dim) * layers * dtype_bytes)
        return float(2 * self.num_kv_heads * self.head_dim * layers * dtype_bytes)

# Parameter counts, KV bytes per token, loading and lookup follow below.

_FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(ModelSpec)}
_REQUIRED = tuple(n for n, f in _FIELDS.items()
                  if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
# Fields an alias mapping may override besides `weight_dtype` (a variant checkpoint of the same model).
_ALIAS_OVERRIDABLE = frozenset(_FIELDS) - {"name", "aliases", "source"}
_WEIGHT_DTYPES = frozenset({"fp32", "bf16", "fp16", "fp8", "int8", "fp4", "int4"})
_UNQUANTIZABLE = frozenset({"attention"})
_ATTENTION_PROJECTIONS = ("self_attn", "q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj")
_HF_REQUIRED = ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")


def _norm(name: str) -> str:
    """Lookup form of a name: case-, '_'/'-'- and trailing '-hf'-insensitive."""
    n = name.strip().lower().replace("_", "-")
    return n[:-3] if n.endswith("-hf") else n


def _check_type(key: str, fname: str, value: Any) -> Any:
    """Check one YAML value against the dataclass annotation (kept as a string by __future__)."""
    ann = str(_FIELDS[fname].type)
    if value is None and "None" in ann:
        return None
    if ann.startswith("int"):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif ann.startswith("float"):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif ann.startswith("bool"):
        ok = isinstance(value, bool)
    elif ann.startswith("str"):
        ok = isinstance(value, str)
    else:
        ok = True
    if not ok:
        raise CatalogError(f"models.yaml entry '{key}': field '{fname}' must be {ann}, got {value!r}")
    return value


def _check_spec(spec: ModelSpec, where: str) -> ModelSpec:
    """Shape sanity checks that would otherwise surface as nonsense costs much later."""
    for f in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim", "vocab_size"):
        if getattr(spec, f) <= 0:
            raise CatalogError(f"{where}: '{f}' must be positive, got {getattr(spec, f)}")
    if spec.num_heads % spec.num_kv_heads:
        raise CatalogError(f"{where}: num_heads {spec.num_heads} is not a multiple of num_kv_heads {spec.num_kv_heads}")
    if spec.ffn_type not in ("swiglu", "geglu", "gelu", "relu"):
        raise CatalogError(f"{where}: ffn_type must be swiglu, geglu, gelu or relu, got '{spec.ffn_type}'")
    if spec.learned_positions < 0 or spec.global_attention_every < 0 or spec.linear_state_dim < 0:
        raise CatalogError(f"{where}: learned_positions, global_attention_every and linear_state_dim must be >= 0")
    if not 0 <= spec.linear_attention_layers <= spec.num_layers:
        raise CatalogError(f"{where}: linear_attention_layers must be in 0..num_layers ({spec.num_layers})")
    if spec.sliding_window is not None and spec.sliding_window < 1:
        raise CatalogError(f"{where}: sliding_window must be >= 1 or null, got {spec.sliding_window}")
    if spec.sliding_layers is not None and not 0 <= spec.sliding_layers <= spec.num_layers:
        raise CatalogError(f"{where}: sliding_layers must be in 0..num_layers ({spec.num_layers}) or null")
    if spec.attention_type not in ("mha", "gqa", "mqa", "mla"):
        raise CatalogError(f"{where}: attention_type must be mha, gqa, mqa or mla, got '{spec.attention_type}'")
    if spec.attention_type == "mla" and not (spec.kv_lora_rank and spec.qk_rope_head_dim and spec.v_head_dim):
        raise CatalogError(f"{where}: MLA needs kv_lora_rank, qk_rope_head_dim and v_head_dim")
    if spec.is_moe and not 0 < spec.experts_per_token <= spec.num_experts:
        raise CatalogError(f"{where}: experts_per_token must be in 1..num_experts ({spec.num_experts})")
    if spec.moe_layer_freq < 1 or not 0 <= spec.first_k_dense <= spec.num_layers:
        raise CatalogError(f"{where}: moe_layer_freq must be >= 1 and first_k_dense in 0..num_layers")
    # FFN widths: a negative or missing one would surface as a TypeError deep in the cost model
    if spec.intermediate_size < 0 or (spec.num_dense_layers and spec.intermediate_size == 0):
        raise CatalogError(f"{where}: 'intermediate_size' must be positive (the dense FFN width), "
                           f"got {spec.intermediate_size}")
    for f in ("moe_intermediate_size", "shared_expert_intermediate_size"):
        if getattr(spec, f) < 0:
            raise CatalogError(f"{where}: '{f}' must be >= 0, got {getattr(spec, f)}")
    if spec.is_moe and spec.moe_width <= 0:
        raise CatalogError(f"{where}: 'moe_intermediate_size' must be positive for an MoE model (the expert width), "
                           f"got {spec.moe_width}")
    unknown = set(spec.unquantized_modules) - _UNQUANTIZABLE
    if unknown:
        raise CatalogError(f"{where}: unquantized_modules {sorted(unknown)} not understood; use a subset of "
                           f"{sorted(_UNQUANTIZABLE)}")
    if spec.default_weight_dtype not in _WEIGHT_DTYPES:
        raise CatalogError(f"{where}: default_weight_dtype '{spec.default_weight_dtype}' is not one of "
                           f"{', '.join(sorted(_WEIGHT_DTYPES))}")
    return spec


def _alias_entry(key: str, raw: Any) -> tuple[str, dict[str, Any]]:
    """An alias is a plain id, or a mapping {id, weight_dtype?, <field>: value} for a variant checkpoint."""
    if isinstance(raw, str) and raw.strip():
        return raw, {}
    if not isinstance(raw, dict) or not isinstance(raw.get("id"), str):
        raise CatalogError(f"models.yaml entry '{key}': alias {raw!r} must be a string or a mapping with 'id'")
    changes: dict[str, Any] = {}
    for k, v in raw.items():
        if k == "id":
            continue
        fname = "default_weight_dtype" if k == "weight_dtype" else k
        if fname not in _ALIAS_OVERRIDABLE:
            raise CatalogError(f"models.yaml entry '{key}': alias '{raw['id']}' has unknown field '{k}'"
                               + did_you_mean(k, ["weight_dtype", *_ALIAS_OVERRIDABLE]))
        changes[fname] = tuple(v) if isinstance(v, list) else _check_type(key, fname, v)
    return raw["id"], changes


@dataclass(frozen=True)
class _Catalogue:
    specs: dict[str, ModelSpec]                              # canonical key -> spec, YAML order
    index: dict[str, tuple[str, tuple[tuple[str, Any], ...]]]  # normalised name -> (key, overrides)


@functools.lru_cache(maxsize=1)
def _catalogue() -> _Catalogue:
    """Parse and validate models.yaml once; every lookup goes through this."""
    return _parse_catalogue((resources.files("sim") / "catalog" / "models.yaml").read_text(encoding="utf-8"))


def _parse_catalogue(text: str) -> _Catalogue:
    """Validate the catalogue text: unknown or missing fields and clashing aliases fail at load, not later."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise CatalogError(f"models.yaml is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict) or not data:
        raise CatalogError("models.yaml must be a non-empty mapping of model key -> fields")
    specs: dict[str, ModelSpec] = {}
    index: dict[str, tuple[str, tuple[tuple[str, Any], ...]]] = {}
    seen_literal: dict[str, str] = {}

    def add(name: str, key: str, changes: dict[str, Any]) -> None:
        literal = name.strip().lower()
        if literal in seen_literal:
            raise CatalogError(f"models.yaml: duplicate alias '{name}' (entries '{seen_literal[literal]}' and '{key}')")
        seen_literal[literal] = key
        n, value = _norm(name), (key, tuple(sorted(changes.items())))
        if n in index and index[n] != value:
            raise CatalogError(f"models.yaml: alias '{name}' clashes with one of entry '{index[n][0]}'")
        index[n] = value

    for key, fields in data.items():
        if not isinstance(key, str) or not isinstance(fields, dict):
            raise CatalogError(f"models.yaml entry {key!r} must map a string key to a mapping of fields")
        for fname in fields:
            if fname not in _FIELDS or fname == "name":
                raise CatalogError(f"models.yaml entry '{key}': unknown field '{fname}'" + did_you_mean(fname, _FIELDS))
        for fname in _REQUIRED:
            if fname != "name" and fname not in fields:
                raise CatalogError(f"models.yaml entry '{key}': missing field '{fname}'")
        if not str(fields.get("source") or "").strip():
            raise CatalogError(f"models.yaml entry '{key}': missing field 'source' (cite the config.json)")
        kwargs = {f: _check_type(key, f, v) for f, v in fields.items() if f != "aliases"}
        aliases = [_alias_entry(key, a) for a in fields.get("aliases") or []]
        spec = _check_spec(ModelSpec(name=key, aliases=tuple(a for a, _ in aliases), **kwargs),
                           f"models.yaml entry '{key}'")
        specs[key] = spec
        add(key, key, {})
        for alias, changes in aliases:
            add(alias, key, changes)
    # Bare repo names ("Llama-3.1-8B-Instruct") resolve too, unless two entries claim the same one.
    bare: dict[str, tuple[str, tuple[tuple[str, Any], ...]] | None] = {}
    for n, value in index.items():
        if "/" in n:
            b = n.rsplit("/", 1)[1]
            bare[b] = value if bare.get(b, value) == value else None
    for b, value in bare.items():
        if value is not None and b not in index:
            index[b] = value
    return _Catalogue(specs, index)


def list_models() -> list[ModelSpec]:
    """Every catalogue entry, in catalogue order."""
    return list(_catalogue().specs.values())


def _config_path(name_or_path: str) -> Path | None:
    """The config.json a name points at, if it is a path rather than a catalogue name."""
    p = Path(os.path.expanduser(name_or_path))
    if p.is_dir() and (p / "config.json").is_file():
        return p / "config.json"
    if p.suffix.lower() == ".json":
        if not p.is_file():
            raise CatalogError(f"model config '{name_or_path}' does not exist")
        return p
    return None


def load_hf_config(path: str | os.PathLike[str]) -> ModelSpec:
    """Build a spec from a config.json on disk; errors name the file."""
    p = Path(path)
    try:
        config = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CatalogError(f"model config '{p}': invalid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except OSError as e:
        raise CatalogError(f"model config '{p}': cannot read ({e.strerror})") from None
    name = p.parent.name if p.name == "config.json" and p.parent.name else p.stem
    return from_hf_config(config, name=name, source=str(p))


def get_model(name_or_path: str) -> ModelSpec:
    """A catalogue key or alias (case-, '_'/'-'- and '-hf'-insensitive), or a path to a config.json."""
    cat = _catalogue()
    hit = cat.index.get(_norm(name_or_path))
    if hit is not None:
        key, changes = hit
        spec = cat.specs[key]
        return dataclasses.replace(spec, **dict(changes)) if changes else spec
    path = _config_path(name_or_path)
    if path is not None:
        return load_hf_config(path)
    choices = [*cat.specs, *(a for s in cat.specs.values() for a in s.aliases)]
    raise CatalogError(f"unknown model '{name_or_path}'; see `servesim catalog models` or pass a path to a "
                       f"Hugging Face config.json" + did_you_mean(name_or_path, choices))


def in_catalogue(name: str) -> bool:
    """Whether `name` is a catalogue key or alias (which `get_model` prefers to a file of that name)."""
    return _norm(name) in _catalogue().index


def model_with_overrides(spec: ModelSpec, **changes: Any) -> ModelSpec:
    """A copy of `spec` with some fields changed (e.g. a smaller vocab or another weight dtype), checked."""
    for k in changes:
        if k not in _FIELDS:
            raise CatalogError(f"model '{spec.name}': unknown field '{k}'" + did_you_mean(k, _FIELDS))
    if "aliases" in changes:
        changes["aliases"] = tuple(changes["aliases"])
    return _check_spec(dataclasses.replace(spec, **changes), f"model '{spec.name}'")


# --- Hugging Face config.json import ----------------------------------------------------------

_TORCH_DTYPES = {
    "bfloat16": "bf16", "float16": "fp16", "half": "fp16",
    # vLLM's dtype="auto" serves float32 checkpoints in fp16 (Gemma: bf16, see from_hf_config).
    "float32": "fp16", "float": "fp16",
}
_UNGATED_MODEL_TYPES = frozenset({"gpt2", "gpt_neox", "gptj", "opt", "bloom", "falcon", "phi", "starcoder2", "gpt_bigcode"})

# Architectures the importer does not model, by HF model_type (the config class's `model_type`).
_ENCODER_ONLY = frozenset({"bert", "roberta", "xlm-roberta", "distilbert", "albert", "electra", "deberta",
                           "deberta-v2", "camembert", "modernbert", "mpnet", "ernie", "nomic_bert"})
_ENCODER_DECODER = frozenset({"t5", "mt5", "umt5", "longt5", "bart", "mbart", "pegasus", "marian", "led", "blenderbot",
                              "m2m_100", "whisper", "switch_transformers", "t5gemma", "encoder-decoder"})
_STATE_SPACE = frozenset({"mamba", "mamba2", "falcon_mamba", "jamba", "zamba", "zamba2", "bamba", "falcon_h1",
                          "nemotron_h", "granitemoehybrid", "rwkv", "recurrent_gemma", "lfm2", "qwen3_next"})

# GPT-2-era config classes name the shape n_embd / n_layer / n_head / n_inner / n_positions; their
# `attribute_map`s (transformers configuration_gpt2.py, _gptj, _gpt_bigcode, _bloom, _falcon) map the standard
# names onto them, and BLOOM / Falcon still accept n_embed. n_inner / ffn_hidden_size null means 4 x hidden.
_KEY_ALIASES = {
    "hidden_size": ("n_embd", "n_embed"), "num_hidden_layers": ("n_layer",), "num_attention_heads": ("n_head",),
    "max_position_embeddings": ("n_positions",), "intermediate_size": ("n_inner", "ffn_hidden_size"),
}
_ALIASED_MODEL_TYPES = frozenset({"gpt2", "gptj", "gpt_bigcode", "bloom", "falcon"})
# Config classes whose tie_word_embeddings default (PretrainedConfig's True) their config.json files rely on.
_TIED_BY_DEFAULT = frozenset({"opt", "gpt2", "gpt_bigcode", "bloom", "falcon"})
# GPT-2 / GPT-BigCode learn absolute positions (wpe: n_positions rows); they and BLOOM bias every projection.
_LEARNED_POSITIONS = frozenset({"gpt2", "gpt_bigcode"})
_BIASED = frozenset({"gpt2", "gpt_bigcode", "bloom"})

# transformers configuration_gemma3.py, Gemma3TextConfig.__init__ defaults (sliding_window_pattern 6: layer i is
# global when (i + 1) % 6 == 0). Gemma-3 config.json files omit the keys that equal them (google/gemma-3-4b-it's
# text_config has no num_attention_heads, num_key_value_heads, head_dim or vocab_size).
_GEMMA3_TEXT_DEFAULTS = {
    "vocab_size": 262_208, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
    "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "max_position_embeddings": 131_072,
    "sliding_window": 4096, "sliding_window_pattern": 6, "tie_word_embeddings": True,
}
# transformers configuration_falcon.py: FalconConfig(max_position_embeddings=2048); Falcon-7B/40B omit it.
_FALCON_DEFAULTS = {"max_position_embeddings": 2048}

_LAYER_KINDS = frozenset({"sliding_attention", "full_attention"})
_LAYER_INDEX = re.compile(r"layers\.(\d+)(?:\.|$)")
_VISION = ("vision", "visual")


def _check_architecture(configs: tuple[dict[str, Any], ...], arch: str, where: str) -> None:
    """Refuse encoder and state-space models: priced as a decoder their params and KV cache would be nonsense."""
    types = {str(c.get("model_type") or "") for c in configs}
    if types & _ENCODER_DECODER or any(c.get("is_encoder_decoder") is True for c in configs):
        kind = "an encoder-decoder"
    elif types & _ENCODER_ONLY or arch.endswith("ForMaskedLM"):
        kind = "an encoder-only"
    elif types & _STATE_SPACE or "Mamba" in arch:
        kind = "a state-space / hybrid recurrent"
    else:
        return
    name = arch or next((f"model_type '{t}'" for t in sorted(types) if t), "this model")
    raise CatalogError(f"{where}: {name} is {kind} model, which is not supported; servesim imports decoder-only "
                       f"transformers (Llama, Mistral, Qwen, DeepSeek, Gemma, GPT-2, Falcon, ...)")


def _with_defaults(cfg: dict[str, Any], model_type: str) -> dict[str, Any]:
    """The config as transformers reads it: class defaults for omitted keys, GPT-2-style names mapped."""
    if model_type in ("gemma3", "gemma3_text"):
        cfg = {**_GEMMA3_TEXT_DEFAULTS, **cfg}
    elif model_type == "falcon":
        cfg = {**_FALCON_DEFAULTS, **cfg}
    if model_type in _ALIASED_MODEL_TYPES:
        cfg = dict(cfg)
        for key, names in _KEY_ALIASES.items():
            if cfg.get(key) is None:
                cfg[key] = next((cfg[n] for n in names if cfg.get(n) is not None), None)
    return cfg


def _layer_pattern(kinds: Any, layers: int, where: str) -> tuple[int, int | None]:
    """(global_attention_every, sliding_layers) for an HF `layer_types` list naming each layer's attention.

    The cost model works from counts (AttentionCost groups layers by window), so a period that gives the same
    number of global layers stands for the pattern; an irregular one keeps its exact count in sliding_layers.
    """
    if not isinstance(kinds, list) or len(kinds) != layers:
        raise CatalogError(f"{where}: 'layer_types' must list one entry per layer ({layers}), "
                           f"got {len(kinds) if isinstance(kinds, list) else repr(kinds)}")
    unknown = sorted(set(map(str, kinds)) - _LAYER_KINDS)
    if unknown:
        raise CatalogError(f"{where}: layer_types entry '{unknown[0]}' is not supported; the importer models "
                           f"sliding_attention and full_attention layers only")
    full = kinds.count("full_attention")
    if full == 0:
        return 0, None                                   # every layer local
    every = layers // full
    return (every, None) if layers // every == full else (0, layers - full)


def _unmodelled(where: str, what: str, nearest: str | None = "int4") -> CatalogError:
    """One line for a quantization format with no weight dtype in the simulator's set."""
    fix = f"{nearest}, the nearest modelled precision" if nearest else "the nearest of bf16, fp16, fp8, int8, int4, fp4"
    return CatalogError(f"{where}: quantization_config {what} is not modelled; delete quantization_config from "
                        f"the config.json and set the weight dtype (model.weight_dtype, --weight-dtype) to {fix}")


def _int_bits(bits: Any, where: str, what: str) -> str:
    """int4 / int8 for a 4- or 8-bit integer format; other widths (GPTQ 2/3-bit, ...) are refused."""
    if isinstance(bits, str) and bits.isdigit():
        bits = int(bits)
    elif isinstance(bits, float) and bits.is_integer():
        bits = int(bits)
    if bits in (4, 8):
        return f"int{bits}"
    raise _unmodelled(where, f"{what} with {bits}-bit weights")


def _hqq_bits(q: dict[str, Any]) -> Any:
    """HQQ's weight bits: HqqConfig.to_dict keeps them in quant_config.weight_quant_params.nbits (or one such
    dict per layer name with a dynamic_config); None when absent or mixed."""
    qc = q.get("quant_config") if isinstance(q.get("quant_config"), dict) else {}
    per_layer = [qc] if "weight_quant_params" in qc else [v for v in qc.values() if isinstance(v, dict)]
    bits = {(c.get("weight_quant_params") or {}).get("nbits") for c in per_layer} - {None}
    return bits.pop() if len(bits) == 1 else q.get("nbits")


def _quant_weight_dtype(q: dict[str, Any], where: str) -> str | None:
    """Weight dtype a quantization_config implies; None when it quantizes no weights (compressed-tensors
    sparsity or KV-cache only). A format with no matching dtype is refused rather than priced as 16-bit."""
    method = str(q.get("quant_method", "")).lower()
    if method in ("fp8", "fbgemm_fp8"):
        return "fp8"
    if method == "mxfp4":
        return "fp4"
    if method == "eetq":                     # EETQ is int8 weight-only (transformers EetqConfig: weights="int8")
        return "int8"
    if method == "aqlm":
        raise _unmodelled(where, "'aqlm' (additive codebooks, ~2 bits per weight)")
    if method == "modelopt":
        # TensorRT Model Optimizer quant_algo names: FP8, NVFP4, NVFP4_AWQ, W4A16_AWQ, W4A8_AWQ, W8A8_SQ_PER_CHANNEL
        algo = str(q.get("quant_algo", "")).upper()
        for key, dtype in (("FP4", "fp4"), ("W4", "int4"), ("INT4", "int4"), ("FP8", "fp8"), ("W8", "int8"),
                           ("INT8", "int8")):
            if key in algo:
                return dtype
        raise _unmodelled(where, f"'modelopt' quant_algo '{algo}'", None)
    if method == "compressed-tensors":
        for group in (q.get("config_groups") or {}).values():
            w = (group or {}).get("weights") or {}
            bits, kind = w.get("num_bits"), w.get("type", "int")
            if bits in (4, 8):
                return f"{'fp' if kind == 'float' else 'int'}{bits}"
            if bits:
                raise _unmodelled(where, f"'compressed-tensors' with {bits}-bit weights")
        return "fp8" if "float" in str(q.get("format", "")) else None
    if method == "hqq":
        return _int_bits(_hqq_bits(q), where, "'hqq'")
    if method == "quanto":                   # QuantoConfig.weights: float8, int8, int4 or int2
        weights = str(q.get("weights", "")).lower()
        if weights == "float8":
            return "fp8"
        return _int_bits(int(weights[3:]) if weights[3:].isdigit() else weights, where, "'quanto'")
    bits = q.get("bits") or q.get("w_bit") or q.get("weight_bits")     # GPTQ, AWQ, AutoRound, ...
    if q.get("load_in_4bit"):                                            # bitsandbytes
        bits = 4
    elif q.get("load_in_8bit"):
        bits = 8
    if bits is None:
        raise _unmodelled(where, f"quant_method '{method or '?'}'", None)
    return _int_bits(bits, where, f"'{method or '?'}'")


def _quant_unquantized_modules(q: dict[str, Any], num_layers: int) -> tuple[str, ...]:
    """Module groups a quantization_config leaves unquantized (its ignore list), as ModelSpec.unquantized_modules.

    compressed-tensors lists them under `ignore`, ModelOpt under `exclude_modules`, bitsandbytes under
    `llm_int8_skip_modules`, HQQ under `skip_modules`, others under `ignored_layers` or `modules_to_not_convert`.
    Attention runs in 16 bits when the language model's attention (not a vision tower's) is kept in at least half
    of its layers, or by a pattern or bare name ("re:.*self_attn.*", "model.layers.*.self_attn") that covers every
    layer; a few layers kept in 16 bits are priced as fully quantized (docs/concepts/cost-model.md)."""
    keys = ("ignore", "ignored_layers", "modules_to_not_convert", "exclude_modules", "llm_int8_skip_modules",
            "skip_modules")
    names = [str(n) for key in keys for n in (q.get(key) or []) if not any(v in str(n) for v in _VISION)]
    layers: set[int] = set()
    for n in names:
        attention = any(p in n for p in _ATTENTION_PROJECTIONS)
        m = _LAYER_INDEX.search(n)
        if m is None:
            if attention:                                # no layer index: it matches every layer's attention
                return ("attention",)
        elif attention or m.end() == len(n):             # "model.layers.0" keeps the whole layer, attention included
            layers.add(int(m.group(1)))
    return ("attention",) if 2 * len(layers) >= num_layers > 0 else ()


def _int(cfg: dict[str, Any], key: str, default: int = 0) -> int:
    """An integer config value; null counts as absent (e.g. DeepSeek-V2-Lite's q_lora_rank). A fractional or
    boolean value is refused rather than truncated."""
    v = cfg.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()):
        raise ValueError(f"'{key}' must be an integer, got {v!r}")
    return int(v)


def _flag(value: Any, key: str, default: bool = False) -> bool:
    """A JSON boolean (null: the config class's default); a string like "false" would otherwise read as true."""
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    raise ValueError(f"'{key}' must be true or false, got {value!r}")


def _kv_heads(cfg: dict[str, Any], model_type: str, heads: int) -> int:
    """KV heads: num_key_value_heads, or the multi-query flags of Falcon and GPT-BigCode."""
    if model_type == "falcon":
        # transformers modeling_falcon.py, FalconAttention: num_kv_heads with new_decoder_architecture (Falcon-40B),
        # else one shared KV head when multi_query (FalconConfig default True: Falcon-7B), else all heads
        if cfg.get("new_decoder_architecture"):
            return _int(cfg, "num_kv_heads") or _int(cfg, "n_head_kv") or heads
        return 1 if cfg.get("multi_query", True) else heads
    if model_type == "gpt_bigcode":
        # modeling_gpt_bigcode.py: multi_query (GPTBigCodeConfig default True) -> one KV head (StarCoder)
        return 1 if cfg.get("multi_query", True) else heads
    return _int(cfg, "num_key_value_heads", heads)


def from_hf_config(config: dict, name: str = "custom", source: str = "") -> ModelSpec:
    """Translate a Hugging Face config.json (already parsed) into a ModelSpec.

    Covers Llama, Mistral, Mixtral, Qwen2/2.5, Qwen2-MoE, Qwen3 (dense and MoE), DeepSeek-V2/V3,
    Gemma-2/3, gpt-oss, Phi-3, GPT-2, GPT-J, GPT-BigCode (StarCoder), BLOOM, Falcon, OPT and Llama-4 (whose
    text model sits under ``text_config``); encoder and state-space models are refused.
    """
    where = f"model config '{source or name}'"
    if not isinstance(config, dict):
        raise CatalogError(f"{where}: expected a JSON object, got {type(config).__name__}")
    top = config
    cfg = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    model_type = str(cfg.get("model_type") or top.get("model_type") or "")
    archs = top.get("architectures") or cfg.get("architectures")
    arch = str(archs[0]) if isinstance(archs, list) and archs else ""
    _check_architecture((top, cfg), arch, where)
    cfg = _with_defaults(cfg, model_type)
    for key in _HF_REQUIRED:
        if cfg.get(key) is None:
            raise CatalogError(f"{where}: missing required key '{key}'")
    try:
        h, layers, heads = _int(cfg, "hidden_size"), _int(cfg, "num_hidden_layers"), _int(cfg, "num_attention_heads")
        for key, value in (("hidden_size", h), ("num_hidden_layers", layers), ("num_attention_heads (num_heads)", heads)):
            if value <= 0:
                raise CatalogError(f"{where}: '{key}' must be a positive integer, got {value}")
        kv_heads = _kv_heads(cfg, model_type, heads)
        kv_lora = _int(cfg, "kv_lora_rank")
        if kv_lora:
            head_dim = _int(cfg, "qk_nope_head_dim") + _int(cfg, "qk_rope_head_dim")
        else:
            head_dim = _int(cfg, "head_dim", h // heads)
        inter = _int(cfg, "intermediate_size") or _int(cfg, "ffn_dim") or 4 * h     # OPT: ffn_dim
        # MoE: each family names the same things differently.
        experts = _int(cfg, "num_local_experts") or _int(cfg, "num_experts") or _int(cfg, "n_routed_experts")
        moe_inter = _int(cfg, "moe_intermediate_size")
        shared = shared_width = first_dense = 0
        freq = 1
        if experts:
            if model_type.startswith("llama4"):
                # Llama-4: intermediate_size is the expert (and shared expert) width, intermediate_size_mlp the dense one.
                moe_inter, inter = inter, _int(cfg, "intermediate_size_mlp", inter)
                shared, shared_width = 1, moe_inter
                freq = _int(cfg, "interleave_moe_layer_step", 1)
            elif "n_routed_experts" in cfg:                     # DeepSeek-V2/V3
                shared = _int(cfg, "n_shared_experts")
                shared_width = shared * moe_inter
                first_dense = _int(cfg, "first_k_dense_replace")
                freq = _int(cfg, "moe_layer_freq", 1)
            else:                                                 # Mixtral, Qwen2-MoE, Qwen3-MoE
                freq = _int(cfg, "decoder_sparse_step", 1)
                # mlp_only_layers are dense; counted as leading ones (exact count when every other layer is MoE).
                first_dense = len(cfg.get("mlp_only_layers") or [])
                shared_width = _int(cfg, "shared_expert_intermediate_size")
                shared = 1 if shared_width else 0
            moe_inter = moe_inter or inter
        sliding = cfg.get("sliding_window")
        if cfg.get("use_sliding_window") is False:
            sliding = None
        if kv_lora:
            attention = "mla"
        elif kv_heads == heads:
            attention = "mha"
        elif kv_heads == 1:
            attention = "mqa"
        else:
            attention = "gqa"
        if model_type.startswith("gemma"):
            ffn = "geglu"
        elif model_type in _UNGATED_MODEL_TYPES:
            act = str(cfg.get("activation_function") or cfg.get("hidden_act") or "gelu").lower()
            ffn = "relu" if act == "relu" else "gelu"
        else:
            ffn = "swiglu"
        qkv_bias = bool(cfg.get("attention_bias", False)) or model_type in ("qwen2", "qwen2_moe")
        tie_default = model_type.startswith("gemma") or model_type in _TIED_BY_DEFAULT
        tie = top.get("tie_word_embeddings", cfg.get("tie_word_embeddings", tie_default))
        quant = top.get("quantization_config") or cfg.get("quantization_config")
        if quant is not None and not isinstance(quant, dict):
            raise CatalogError(f"{where}: 'quantization_config' must be an object, got {quant!r}")
        dtype = _quant_weight_dtype(quant, where) if quant else None
        unquantized = _quant_unquantized_modules(quant, layers) if dtype is not None else ()
        if dtype is None:
            torch_dtype = str(cfg.get("torch_dtype") or cfg.get("dtype") or top.get("torch_dtype")
                              or top.get("dtype") or "bfloat16").removeprefix("torch.")
            if torch_dtype.startswith("float8"):
                dtype = "fp8"                               # float8_e4m3fn weights without a quantization_config
            else:
                dtype = _TORCH_DTYPES.get(torch_dtype, "bf16")
            if torch_dtype in ("float32", "float") and model_type.startswith("gemma"):
                # vLLM serves float32 Gemma checkpoints in bf16, not fp16, which Gemma-2 does not support well
                # (vllm/config.py _get_and_verify_dtype: model_type gemma2, later every gemma*)
                dtype = "bf16"
        max_pos = _int(cfg, "max_position_embeddings") or _int(cfg, "seq_length") or 4096
        # OPT learns absolute positions, with its table offset by 2 rows (OPTLearnedPositionalEmbedding)
        learned = max_pos + 2 if model_type == "opt" else max_pos if model_type in _LEARNED_POSITIONS else 0
        if model_type == "opt":
            linear_bias = bool(cfg.get("enable_bias", True))
        elif model_type == "falcon":
            linear_bias = bool(cfg.get("bias", False))      # FalconLinear(..., bias=config.bias)
        else:
            linear_bias = model_type in _BIASED
        # Gemma-2 alternates local and global layers; Gemma-3 names the period sliding_window_pattern;
        # layer_types (gpt-oss, Gemma-3, newer transformers) names each layer's kind and wins.
        global_every = 2 if model_type == "gemma2" else _int(cfg, "sliding_window_pattern")
        sliding_layers = None
        if sliding and cfg.get("layer_types") is not None:
            global_every, sliding_layers = _layer_pattern(cfg["layer_types"], layers, where)
            if "sliding_attention" not in cfg["layer_types"]:
                sliding = None
        spec = ModelSpec(
            name=name,
            hf_id=str(top.get("_name_or_path") or name),
            architecture=arch,
            hidden_size=h,
            num_layers=layers,
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            intermediate_size=inter,
            vocab_size=int(cfg["vocab_size"]),
            max_position_embeddings=max_pos,
            ffn_type=ffn,
            attention_type=attention,
            qkv_bias=qkv_bias,
            tie_word_embeddings=_flag(tie, "tie_word_embeddings", tie_default),
            linear_bias=linear_bias,
            learned_positions=learned,
            sliding_window=int(sliding) if sliding else None,
            global_attention_every=global_every if sliding else 0,
            sliding_layers=sliding_layers if sliding else None,
            num_experts=experts,
            experts_per_token=_int(cfg, "num_experts_per_tok") if experts else 0,
            moe_intermediate_size=moe_inter if experts else 0,
            num_shared_experts=shared,
            shared_expert_intermediate_size=shared_width,
            first_k_dense=first_dense,
            moe_layer_freq=freq,
            q_lora_rank=_int(cfg, "q_lora_rank") if kv_lora else 0,
            kv_lora_rank=kv_lora,
            qk_nope_head_dim=_int(cfg, "qk_nope_head_dim") if kv_lora else 0,
            qk_rope_head_dim=_int(cfg, "qk_rope_head_dim") if kv_lora else 0,
            v_head_dim=_int(cfg, "v_head_dim") if kv_lora else 0,
            default_weight_dtype=dtype,
            unquantized_modules=unquantized,
            source=source,
        )
    except (TypeError, ValueError, ZeroDivisionError, OverflowError) as e:
        raise CatalogError(f"{where}: malformed value ({e})") from None
    return _check_spec(spec, where)
