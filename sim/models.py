"""Model architectures: the catalogue in ``sim/catalog/models.yaml`` and Hugging Face config.json import."""
from __future__ import annotations

import dataclasses
import functools
import json
import os
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
        """All RMSNorm/LayerNorm weights: two per layer (Gemma-2: four) plus the final norm; LayerNorms
        with a bias (``linear_bias``) have twice as many."""
        per_layer = 4 if self.architecture.startswith("Gemma2") else 2
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

        Mistral-7B v0.1: all of them; Gemma-2 (``global_attention_every: 2``): every other one.
        """
        if not self.sliding_window:
            return 0
        n = self.num_softmax_layers
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
    if spec.attention_type not in ("mha", "gqa", "mqa", "mla"):
        raise CatalogError(f"{where}: attention_type must be mha, gqa, mqa or mla, got '{spec.attention_type}'")
    if spec.attention_type == "mla" and not (spec.kv_lora_rank and spec.qk_rope_head_dim and spec.v_head_dim):
        raise CatalogError(f"{where}: MLA needs kv_lora_rank, qk_rope_head_dim and v_head_dim")
    if spec.is_moe and not 0 < spec.experts_per_token <= spec.num_experts:
        raise CatalogError(f"{where}: experts_per_token must be in 1..num_experts ({spec.num_experts})")
    if spec.moe_layer_freq < 1 or not 0 <= spec.first_k_dense <= spec.num_layers:
        raise CatalogError(f"{where}: moe_layer_freq must be >= 1 and first_k_dense in 0..num_layers")
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
    # vLLM's dtype="auto" serves float32 checkpoints in fp16.
    "float32": "fp16", "float": "fp16",
}
_UNGATED_MODEL_TYPES = frozenset({"gpt2", "gpt_neox", "gptj", "opt", "bloom", "falcon", "phi", "starcoder2", "gpt_bigcode"})


def _quant_weight_dtype(q: dict[str, Any]) -> str | None:
    """Weight dtype a quantization_config implies, or None when it cannot tell."""
    method = str(q.get("quant_method", "")).lower()
    if method in ("fp8", "fbgemm_fp8"):
        return "fp8"
    if method == "mxfp4":
        return "fp4"
    if method == "modelopt":
        algo = str(q.get("quant_algo", "")).upper()
        return "fp4" if "FP4" in algo else "fp8" if "FP8" in algo else None
    if method == "compressed-tensors":
        for group in (q.get("config_groups") or {}).values():
            w = (group or {}).get("weights") or {}
            bits, kind = w.get("num_bits"), w.get("type", "int")
            if bits in (4, 8):
                return f"{'fp' if kind == 'float' else 'int'}{bits}"
        return "fp8" if "float" in str(q.get("format", "")) else None
    bits = q.get("bits") or q.get("w_bit") or q.get("weight_bits")
    if q.get("load_in_4bit"):
        bits = 4
    elif q.get("load_in_8bit"):
        bits = 8
    return {4: "int4", 8: "int8"}.get(bits)


def _quant_unquantized_modules(q: dict[str, Any]) -> tuple[str, ...]:
    """Module groups a quantization_config leaves unquantized (its ignore list), as ModelSpec.unquantized_modules.

    compressed-tensors lists them under `ignore`, other methods under `ignored_layers` or `modules_to_not_convert`;
    the language model's attention projections there (not a vision tower's) mean attention runs in 16 bits."""
    names = [str(n) for key in ("ignore", "ignored_layers", "modules_to_not_convert") for n in (q.get(key) or [])]
    attention = any(any(p in n for p in _ATTENTION_PROJECTIONS) and not any(v in n for v in ("vision", "visual"))
                    for n in names)
    return ("attention",) if attention else ()


def _int(cfg: dict[str, Any], key: str, default: int = 0) -> int:
    """An integer config value; null counts as absent (e.g. DeepSeek-V2-Lite's q_lora_rank)."""
    v = cfg.get(key)
    return default if v is None else int(v)


def from_hf_config(config: dict, name: str = "custom", source: str = "") -> ModelSpec:
    """Translate a Hugging Face config.json (already parsed) into a ModelSpec.

    Covers Llama, Mistral, Mixtral, Qwen2/2.5, Qwen2-MoE, Qwen3 (dense and MoE), DeepSeek-V2/V3,
    Gemma-2, Phi-3 and Llama-4 (whose text model sits under ``text_config``).
    """
    where = f"model config '{source or name}'"
    if not isinstance(config, dict):
        raise CatalogError(f"{where}: expected a JSON object, got {type(config).__name__}")
    top = config
    cfg = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    for key in _HF_REQUIRED:
        if cfg.get(key) is None:
            raise CatalogError(f"{where}: missing required key '{key}'")
    model_type = str(cfg.get("model_type") or top.get("model_type") or "")
    archs = top.get("architectures") or cfg.get("architectures") or [""]
    try:
        h, layers, heads = int(cfg["hidden_size"]), int(cfg["num_hidden_layers"]), int(cfg["num_attention_heads"])
        for key, value in (("hidden_size", h), ("num_hidden_layers", layers), ("num_attention_heads (num_heads)", heads)):
            if value <= 0:
                raise CatalogError(f"{where}: '{key}' must be a positive integer, got {value}")
        kv_heads = _int(cfg, "num_key_value_heads", heads)
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
        # Gemma and OPT configs omit it and tie by default
        tie_default = model_type.startswith("gemma") or model_type == "opt"
        tie = top.get("tie_word_embeddings", cfg.get("tie_word_embeddings", tie_default))
        quant = top.get("quantization_config") or cfg.get("quantization_config")
        dtype = _quant_weight_dtype(quant) if isinstance(quant, dict) else None
        unquantized = _quant_unquantized_modules(quant) if dtype is not None else ()
        if dtype is None:
            torch_dtype = str(cfg.get("torch_dtype") or cfg.get("dtype") or top.get("torch_dtype")
                              or top.get("dtype") or "bfloat16")
            dtype = _TORCH_DTYPES.get(torch_dtype.removeprefix("torch."), "bf16")
        max_pos = _int(cfg, "max_position_embeddings") or _int(cfg, "seq_length") or 4096
        # OPT learns absolute positions, with its table offset by 2 rows (OPTLearnedPositionalEmbedding)
        learned = max_pos + 2 if model_type == "opt" else 0
        linear_bias = bool(cfg.get("enable_bias", True)) if model_type == "opt" else False
        # Gemma-2 alternates local and global layers; Gemma-3 names the period sliding_window_pattern
        global_every = 2 if model_type == "gemma2" else _int(cfg, "sliding_window_pattern")
        spec = ModelSpec(
            name=name,
            hf_id=str(top.get("_name_or_path") or name),
            architecture=str(archs[0]),
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
            tie_word_embeddings=bool(tie),
            linear_bias=linear_bias,
            learned_positions=learned,
            sliding_window=int(sliding) if sliding else None,
            global_attention_every=global_every if sliding else 0,
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
