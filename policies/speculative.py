"""Speculative decoding: draft K tokens cheaply, verify them in one target step, keep the accepted prefix.

Decoding is bandwidth-bound: one target step streams every weight to produce one token per sequence.
A speculator proposes K draft tokens per sequence; the target then verifies K + 1 positions (the
pending token and the K drafts) in one forward pass, which costs little more than a one-token step
while the GEMMs stay memory-bound. Rejection sampling (Leviathan et al. 2023, Chen et al. 2023)
accepts a prefix of the drafts and always adds one token of the target's own, so the output
distribution is exactly the target's and a step advances a sequence by ``accepted + 1`` tokens.

The engine runs the mechanism; a speculator (registry kind ``"speculative"``) supplies what the
engine cannot know (the `Speculator` protocol):

- ``k`` draft tokens per step, and ``draft_time(seqs, ctx_sum)``: the seconds drafting adds to a step
  of ``seqs`` decoding sequences whose KV-cache lengths sum to ``ctx_sum``;
- ``sample_accepted(n)``: accepted drafts (0..k) for n sequences, one vectorised draw per step, and
  ``expected_accepted()``, its mean;
- ``extra_weight_bytes_per_gpu``, ``extra_kv_bytes_per_token_per_gpu``: the memory the drafter takes
  from the KV cache on each target GPU.

Acceptance model: with a per-token acceptance rate alpha, independent across positions, the number
of accepted drafts is the number of leading successes capped at K: ``P(accepted >= i) = alpha^i``, so
a step yields ``(1 - alpha^(K+1)) / (1 - alpha)`` tokens (`expected_tokens_per_step`); with a draft
forward costing ``c`` target steps the speed-up over plain decoding is
``(1 - alpha^(K+1)) / ((1 - alpha)(K c + 1))`` (`expected_speedup`, Leviathan et al. 2023, Theorem 3.8).
A measured histogram of accepted lengths can replace alpha (``acceptance_lengths_path``).
Sampling draws one uniform per sequence and inverts the distribution's CDF (`np.searchsorted`).

Plugins: ``draft_model`` (a separate small model, vLLM ``speculative_config.model``), ``ngram`` (prompt
lookup, vLLM ``method: ngram``) and ``mtp`` (Medusa / EAGLE / DeepSeek multi-token-prediction heads).
`make_speculator` builds one from the user's ``speculative:`` mapping.
"""
from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sim.cost import WEIGHT_DTYPES, BatchShape, CostModel, EngineProfile, weight_element_bytes
from sim.errors import ConfigError, ServesimError
from sim.models import get_model
from sim.registry import REGISTRY, register

KIND = "speculative"


@runtime_checkable
class Speculator(Protocol):
    """What the engine asks of a drafter (see the module docstring)."""

    k: int
    extra_weight_bytes_per_gpu: float
    extra_kv_bytes_per_token_per_gpu: float

    def draft_time(self, seqs: int, ctx_sum: int) -> float:
        """Seconds the drafting of one step adds for `seqs` sequences whose KV-cache lengths sum to `ctx_sum`
        (each sequence's c: tokens cached before the step, as `BatchShape.add_decode(c)` takes it)."""

    def sample_accepted(self, n: int) -> list[int]:
        """Accepted draft tokens (0..k) for `n` sequences."""

    def expected_accepted(self) -> float:
        """Mean of `sample_accepted`."""


# ----------------------------------------------------------------------------- closed forms

def expected_tokens_per_step(alpha: float, k: int) -> float:
    """Tokens one step yields per sequence with i.i.d. acceptance `alpha` and `k` drafts: (1 - a^(k+1)) / (1 - a).

    The limits are 1 (alpha = 0: only the target's own token) and k + 1 (alpha = 1: every draft kept)."""
    if alpha >= 1.0:
        return float(k + 1)
    return (1.0 - alpha ** (k + 1)) / (1.0 - alpha)


def expected_speedup(alpha: float, k: int, c: float) -> float:
    """Leviathan et al. (2023) speed-up over plain decoding: (1 - a^(k+1)) / ((1 - a)(k c + 1)).

    `c` is the time of one draft forward over the time of one target step; verification is assumed
    to cost one target step."""
    return expected_tokens_per_step(alpha, k) / (k * c + 1.0)


def alpha_for_mean_accepted(mean_accepted: float, k: int) -> float:
    """The i.i.d. per-token rate alpha whose mean accepted drafts sum_{i=1..k} alpha^i equals `mean_accepted`.

    Converts a published mean acceptance length (accepted drafts per step, without the bonus token)
    into the `acceptance_rate` option. Bisection; `mean_accepted` must lie in [0, k]."""
    if not 0.0 <= mean_accepted <= k:
        raise ConfigError(f"mean accepted drafts {mean_accepted} must lie in 0..{k}")
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if expected_tokens_per_step(mid, k) - 1.0 < mean_accepted:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def acceptance_pmf(alphas: Sequence[float]) -> np.ndarray:
    """P(accepted = i), i = 0..K, when draft i is accepted with probability `alphas[i-1]` given all earlier ones were."""
    survive = np.concatenate([[1.0], np.cumprod(np.asarray(alphas, dtype=float))])   # P(accepted >= i)
    pmf = survive.copy()
    pmf[:-1] -= survive[1:]
    return pmf


def read_acceptance_lengths(path: str | Path, k: int) -> np.ndarray:
    """The distribution P(accepted = i), i = 0..k, from a file of observed accepted lengths.

    JSON: a list of observed lengths (``[4, 0, 4, 2, ...]``) or an object mapping a length to its count
    or frequency (``{"0": 143, "1": 62, ...}``). CSV: one row per observation (one column) or per
    length (``accepted,count``); a header row is optional. Lengths count accepted drafts, without the
    target's bonus token, and must lie in 0..k.
    """
    p = Path(path)
    where = f"speculative.acceptance_lengths_path '{p}'"
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{where}: cannot read ({e.strerror})") from None
    pairs: list[tuple[Any, Any]] = []
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{where}: invalid JSON ({e.msg} at line {e.lineno})") from None
        if isinstance(data, list):
            pairs = [(v, 1) for v in data]
        elif isinstance(data, dict):
            pairs = list(data.items())
        else:
            raise ConfigError(f"{where}: expected a list of lengths or an object length -> count")
    else:
        rows = [r for r in csv.reader(text.splitlines()) if r and any(c.strip() for c in r)]
        if rows and not _is_number(rows[0][0]):
            rows = rows[1:]                                   # a header
        for r in rows:
            pairs.append((r[0], r[1] if len(r) > 1 and r[1].strip() else 1))
    counts = np.zeros(k + 1)
    for length, weight in pairs:
        try:
            n, w = float(length), float(weight)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: {length!r} -> {weight!r} is not a number") from None
        if n != int(n) or not 0 <= n <= k:
            raise ConfigError(f"{where}: accepted length {length!r} is not an integer in 0..{k} "
                              f"(num_draft_tokens); the file must come from runs with the same K or fewer")
        if not w >= 0:
            raise ConfigError(f"{where}: negative count {weight!r} for length {length!r}")
        counts[int(n)] += w
    total = counts.sum()
    if not total > 0:
        raise ConfigError(f"{where}: no observations")
    return counts / total


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


# ----------------------------------------------------------------------------- pricing helpers

def draft_engine_profile(engine: EngineProfile) -> EngineProfile:
    """The engine profile a drafter's forwards run under: `engine` without its host-side costs.

    Drafting happens inside the engine's step, whose scheduling, input preparation and output
    processing the target's step already pays once; the draft forwards add only GPU work. So the
    step, per-sequence, per-prompt, per-token and front-end costs are zeroed and async scheduling is
    off (nothing to overlap), while what the GPU sees is kept: CUDA graphs or not (without graphs each
    draft kernel pays the launch time), the all-reduce latencies and the engine's kernel overrides.
    The draft's LM head and sampling kernels are part of its forward (`CostModel` prices them).
    """
    return replace(engine, name=f"{engine.name}+draft", step_overhead_s=0.0, per_seq_overhead_s=0.0,
                   per_prefill_seq_overhead_s=0.0, per_token_overhead_s=0.0, frontend_latency_s=0.0,
                   async_scheduling=False)


def verify_batch_shape(seqs: int, ctx_sum: int, k: int) -> BatchShape:
    """The target's verification work: `seqs` sequences, each scoring k + 1 positions (pending token + k drafts)
    after its cached context (contexts summing to `ctx_sum`); every position is sampled (logits for all k + 1).

    Attention is priced as a k+1-token causal chunk over the cache (how FlashAttention / FlashInfer run
    it: the KV is read once per sequence, not once per position)."""
    q = k + 1
    return BatchShape(tokens=seqs * q, sampled=seqs * q, prefill_attn=q * ctx_sum + seqs * q * (q + 1) / 2,
                      prefill_kv=ctx_sum + seqs * q, prefill_tokens=seqs * q, prefill_seqs=seqs)


def _derived_cost(target: CostModel, model=None, tp: int | None = None, weight_dtype: str | None = None) -> CostModel:
    """A cost model on the target's GPU, dtypes and constants, under the draft engine profile."""
    return CostModel(model or target.model, target.gpu, tp=tp or target.tp,
                     weight_dtype=weight_dtype or target.weight_dtype, kv_dtype=target.kv_dtype,
                     engine=draft_engine_profile(target.engine), act_dtype=target.act_dtype,
                     constants=target.k, flash_attention=target.flash_attention)


def _decode_steps_time(cost: CostModel, seqs: int, ctx_sum: int, steps: int, shape: BatchShape) -> float:
    """Sum of `steps` decode steps of `seqs` sequences, the i-th (0-based) at contexts summing to ctx_sum + i*seqs."""
    shape.tokens = shape.sampled = shape.decode_seqs = seqs
    total = 0.0
    for i in range(steps):
        shape.decode_ctx = ctx_sum + (i + 1) * seqs
        total += cost.step_time(shape)
    return total


# ----------------------------------------------------------------------------- plugins

class _Accepting:
    """Acceptance sampling shared by the plugins: inverse-CDF draws from `self.pmf` over 0..k."""

    k: int
    pmf: np.ndarray

    def _set_pmf(self, pmf: np.ndarray, rng: np.random.Generator) -> None:
        self.pmf = np.asarray(pmf, dtype=float)
        self._cdf = np.cumsum(self.pmf)
        self._cdf[-1] = 1.0                       # a uniform draw in [0, 1) never passes the last bin
        self._mean = float(np.dot(np.arange(len(self.pmf)), self.pmf))
        self._rng = rng

    def sample_accepted(self, n: int) -> list[int]:
        """Accepted draft tokens (0..k) for `n` sequences: one vectorised draw from the run's generator."""
        if n <= 0:
            return []
        return np.searchsorted(self._cdf, self._rng.random(n), side="right").tolist()

    def expected_accepted(self) -> float:
        """Mean accepted drafts per sequence and step (tokens per step are this + 1)."""
        return self._mean

    def expected_tokens_per_step(self) -> float:
        """Mean tokens a step adds to a sequence: accepted drafts plus the target's own token."""
        return self._mean + 1.0


class _OptionsBase(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _options(cls: type, options: Any) -> Any:
    """`options` as the plugin's Options model (a mapping is validated; errors are one-line ConfigErrors)."""
    if isinstance(options, cls.Options):
        return options
    try:
        return cls.Options.model_validate(options or {})
    except ValidationError as e:
        raise ConfigError(_one_line(e, getattr(cls, "method", cls.__name__), cls.Options)) from None


@register(KIND, "draft_model")
class DraftModel(_Accepting):
    """A smaller model drafts K tokens autoregressively; the target verifies them in one step.

    Leviathan, Kalman & Matias, "Fast Inference from Transformers via Speculative Decoding" (ICML 2023);
    Chen et al., "Accelerating Large Language Model Decoding with Speculative Sampling" (2023); vLLM's
    draft-model speculator (``speculative_config: {model: ..., num_speculative_tokens: K}``) and
    gpt-fast's ``--draft_checkpoint_path``. Drafting is K sequential decode steps of the draft model at
    the step's batch, priced by a `CostModel` of the draft on the target's GPU under
    `draft_engine_profile` (GPU work only). The draft's weights and KV cache (vLLM allocates the
    draft's KV alongside the target's) are taken from every target GPU's memory; with ``draft_tp: 1``
    the whole draft sits on one GPU of the group, which then binds.
    """

    method = "draft_model"

    class Options(_OptionsBase):
        """Options of the ``draft_model`` speculator."""

        draft_model: str = Field(description="the draft model: a catalogue name or alias, or a path to a Hugging "
                                             "Face config.json; no larger than the target")
        num_draft_tokens: int = Field(4, ge=1, le=64, description="K, draft tokens proposed per sequence per step")
        acceptance_rate: float | None = Field(0.8, ge=0.0, le=1.0, description=(
            "per-token acceptance probability alpha, i.i.d. across positions (a workload property: it depends on "
            "the draft/target pair, the task and the temperature)"))
        acceptance_lengths_path: str | None = Field(None, description=(
            "a CSV or JSON file of observed accepted lengths 0..K to sample from instead of alpha (see "
            "read_acceptance_lengths)"))
        draft_weight_dtype: str | None = Field(None, description="the draft's weight dtype; default: the target's")
        draft_tp: int | None = Field(None, ge=1, description=(
            "tensor parallelism of the draft: the target's TP (default) or 1, as vLLM allows"))

        @field_validator("draft_weight_dtype")
        @classmethod
        def _dtype(cls, v: str | None) -> str | None:
            if v is not None and v.lower() not in WEIGHT_DTYPES:
                raise ValueError(f"must be one of {', '.join(WEIGHT_DTYPES)}")
            return v.lower() if v else v

        @model_validator(mode="after")
        def _one_acceptance(self) -> "DraftModel.Options":
            if self.acceptance_lengths_path is not None and "acceptance_rate" in self.model_fields_set \
                    and self.acceptance_rate is not None:
                raise ValueError("give acceptance_rate or acceptance_lengths_path, not both")
            if self.acceptance_lengths_path is None and self.acceptance_rate is None:
                raise ValueError("acceptance_rate or acceptance_lengths_path is required")
            return self

    def __init__(self, options: Options | Mapping, target: CostModel, rng: np.random.Generator) -> None:
        o = self.options = _options(DraftModel, options)
        self.k = o.num_draft_tokens
        try:
            draft = get_model(o.draft_model)
        except ServesimError as e:
            raise ConfigError(f"speculative.draft_model: {e}") from None
        if draft.total_params > target.model.total_params:
            raise ConfigError(f"speculative.draft_model {draft.name} ({draft.total_params / 1e9:.1f}B parameters) is "
                              f"larger than the target {target.model.name} ({target.model.total_params / 1e9:.1f}B); "
                              f"choose a smaller draft")
        tp = o.draft_tp or target.tp
        if tp not in (1, target.tp):
            raise ConfigError(f"speculative.draft_tp must be 1 or the target's tp ({target.tp}), got {tp}")
        try:
            self.draft_cost = _derived_cost(target, draft, tp, o.draft_weight_dtype or target.weight_dtype)
        except ServesimError as e:
            raise ConfigError(f"speculative draft {draft.name}: {e}") from None
        self.extra_weight_bytes_per_gpu = self.draft_cost.weight_bytes_per_gpu
        self.extra_kv_bytes_per_token_per_gpu = self.draft_cost.kv_bytes_per_token_per_gpu
        if o.acceptance_lengths_path is not None:
            pmf = read_acceptance_lengths(o.acceptance_lengths_path, self.k)
        else:
            pmf = acceptance_pmf([o.acceptance_rate] * self.k)
        self._set_pmf(pmf, rng)
        self._shape = BatchShape()

    def draft_time(self, seqs: int, ctx_sum: int) -> float:
        """K sequential draft decode steps at batch `seqs`; the i-th (0-based) attends c + 1 + i tokens per sequence,
        where the cached lengths c sum to `ctx_sum`."""
        if seqs <= 0:
            return 0.0
        return _decode_steps_time(self.draft_cost, seqs, ctx_sum, self.k, self._shape)


@register(KIND, "ngram")
class NGram(_Accepting):
    """Prompt lookup: drafts are the tokens that followed the last n-gram's earlier occurrence in the context.

    Saxena, "Prompt Lookup Decoding" (2023); vLLM's ``speculative_config: {method: ngram}``. No weights
    and no KV cache; drafting is a CPU string match, priced as ``lookup_latency_s`` per step. That value
    (20 us) is an assumption, not a measurement: a KMP-style match over a few thousand tokens per
    sequence in compiled code (vLLM jit-compiles its proposer with numba). Acceptance is workload
    dependent and usually bimodal (high on code edits and RAG copies, near zero on free text): set
    ``acceptance_rate`` from your traffic.
    """

    method = "ngram"

    class Options(_OptionsBase):
        """Options of the ``ngram`` speculator."""

        num_draft_tokens: int = Field(4, ge=1, le=64, description="K, draft tokens proposed per sequence per step")
        acceptance_rate: float = Field(0.5, ge=0.0, le=1.0, description="per-token acceptance probability alpha, i.i.d.")
        lookup_latency_s: float = Field(2e-5, ge=0.0, description=(
            "host time of the n-gram lookup per step (an assumption: 20 us, a compiled match over the context)"))

    extra_weight_bytes_per_gpu = 0.0
    extra_kv_bytes_per_token_per_gpu = 0.0

    def __init__(self, options: Options | Mapping, target: CostModel, rng: np.random.Generator) -> None:
        o = self.options = _options(NGram, options)
        self.k = o.num_draft_tokens
        self._set_pmf(acceptance_pmf([o.acceptance_rate] * self.k), rng)

    def draft_time(self, seqs: int, ctx_sum: int) -> float:
        """The lookup latency, once per step that has decoding sequences."""
        return self.options.lookup_latency_s if seqs > 0 else 0.0


@register(KIND, "mtp")
class MTP(_Accepting):
    """Draft heads on the target's hidden state (Medusa, EAGLE, DeepSeek multi-token prediction) draft K tokens.

    Cai et al., "Medusa" (2024); Li et al., "EAGLE" (ICML 2024); DeepSeek-AI, "DeepSeek-V3 Technical
    Report" (2024) section 2.2; vLLM's ``method: eagle`` / ``deepseek_mtp``. Each draft token costs
    ``head_layers`` target decoder layers at the step's batch plus the (shared) LM head and sampling,
    priced with the target's own cost model under `draft_engine_profile`. The head module
    (``head_layers`` layers' weights, one layer's KV per layer) is reused for every draft token, as
    vLLM runs EAGLE and MTP, so neither memory term grows with K. Acceptance of the i-th head is
    ``acceptance_rate * acceptance_decay^(i-1)``: later heads see less of the truth.
    """

    method = "mtp"

    class Options(_OptionsBase):
        """Options of the ``mtp`` speculator."""

        num_draft_tokens: int = Field(1, ge=1, le=64, description="K, draft tokens (heads, or head passes) per step")
        acceptance_rate: float = Field(0.8, ge=0.0, le=1.0, description="acceptance probability of the first head")
        head_layers: float = Field(1.0, gt=0.0, description=(
            "size of the head module in target decoder layers: each draft token costs this many layers at the "
            "current batch, and its weights and KV are this many layers' worth"))
        acceptance_decay: float = Field(1.0, gt=0.0, le=1.0, description=(
            "the i-th head accepts with acceptance_rate * acceptance_decay^(i-1)"))

    def __init__(self, options: Options | Mapping, target: CostModel, rng: np.random.Generator) -> None:
        o = self.options = _options(MTP, options)
        self.k = o.num_draft_tokens
        m = target.model
        self.head_cost = _derived_cost(target)
        wb = weight_element_bytes(target.weight_dtype)
        layer_params = (m.total_params - m.embedding_params - m.lm_head_params) / m.num_layers
        self.layer_weight_bytes_per_gpu = layer_params * wb / target.tp
        self.extra_weight_bytes_per_gpu = o.head_layers * self.layer_weight_bytes_per_gpu
        self.extra_kv_bytes_per_token_per_gpu = o.head_layers * target.kv_bytes_per_token_per_gpu / m.num_layers
        self._fraction = o.head_layers / m.num_layers
        self._once: dict[int, float] = {}       # seqs -> embedding + LM head + sampling time
        self._set_pmf(acceptance_pmf([o.acceptance_rate * o.acceptance_decay ** i for i in range(self.k)]), rng)
        self._shape = BatchShape()

    def _once_time(self, seqs: int) -> float:
        t = self._once.get(seqs)
        if t is None:
            ops = self.head_cost.breakdown(BatchShape.decode(seqs, 0))
            t = self._once[seqs] = sum(op.time_s for op in ops if op.name in ("embedding", "lm_head", "sampling"))
        return t

    def draft_time(self, seqs: int, ctx_sum: int) -> float:
        """K head passes: head_layers / num_layers of a target decode step's layers, plus LM head and sampling each."""
        if seqs <= 0:
            return 0.0
        once = self._once_time(seqs)
        full = _decode_steps_time(self.head_cost, seqs, ctx_sum, self.k, self._shape)
        return self._fraction * (full - self.k * once) + self.k * once


# ----------------------------------------------------------------------------- building

def make_speculator(spec: Mapping[str, Any] | None, target: CostModel,
                    rng: np.random.Generator) -> Speculator | None:
    """The speculator the user's ``speculative:`` mapping asks for, or None without one.

    ``method`` names the plugin (``draft_model``, ``ngram``, ``mtp`` or one a user registered under kind
    ``"speculative"``); it defaults to ``draft_model`` when a ``draft_model`` key is given. The other keys
    are the plugin's options. Mistakes are one-line `ConfigError`s naming the key.
    """
    if spec is None:
        return None
    if not isinstance(spec, Mapping):
        raise ConfigError(f"speculative must be a mapping (method: ..., num_draft_tokens: ...), got {spec!r}")
    if not spec:
        return None
    data = dict(spec)
    method = data.pop("method", None)
    if method is None:
        if "draft_model" not in data:
            raise ConfigError(f"speculative.method is missing; choose one of: {', '.join(REGISTRY.names(KIND))} "
                              f"(or give draft_model: NAME)")
        method = "draft_model"
    try:
        cls = REGISTRY.get(KIND, str(method))
    except ConfigError:
        raise ConfigError(f"unknown speculative.method {method!r}; choose one of: "
                          f"{', '.join(REGISTRY.names(KIND))}") from None
    options_cls = getattr(cls, "Options", None)
    if options_cls is None:
        return cls(data, target, rng)
    try:
        options = options_cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_one_line(e, str(method), options_cls)) from None
    return cls(options, target, rng)


def _one_line(e: ValidationError, method: str, options_cls: type[BaseModel]) -> str:
    err = e.errors()[0]
    key = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        return (f"unknown key speculative.{key} for method {method}; allowed: method, "
                f"{', '.join(options_cls.model_fields)}")
    if err["type"] == "missing":
        return f"speculative.{key} is required for method {method}"
    msg = err["msg"].removeprefix("Value error, ")
    where = f"speculative.{key}" if key else "speculative"
    got = f" (got {err['input']!r})" if key and not isinstance(err.get("input"), Mapping) else ""
    return f"{where}: {msg}{got}"


__all__ = ["KIND", "DraftModel", "MTP", "NGram", "Speculator", "acceptance_pmf", "alpha_for_mean_accepted",
           "draft_engine_profile", "expected_speedup", "expected_tokens_per_step", "make_speculator",
           "read_acceptance_lengths", "verify_batch_shape"]
