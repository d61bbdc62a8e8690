"""GPU, link and host specs, loaded from the YAML catalogue in ``sim/catalog/``.

Figures are datasheet numbers (dense, no sparsity). What a kernel really achieves is the cost
model's business (`sim.cost`), not the catalogue's.
"""
from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Generic, TypeVar

import yaml

from .errors import CatalogError, did_you_mean

# Bytes per element of each dtype the cost model knows.
DTYPE_BYTES: dict[str, float] = {
    "fp32": 4.0, "tf32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int8": 1.0, "fp4": 0.5, "int4": 0.5,
}


@dataclass(frozen=True, slots=True)
class GPUSpec:
    """One accelerator, as its datasheet describes it.

    Units: FLOP/s figures in TFLOP/s (TOP/s for integers), memory in GB (1e9 bytes) as marketed plus
    the usable GiB the device reports, bandwidths in GB/s (1e9 bytes/s).
    """

    name: str                                  # canonical catalogue key, e.g. "h100-sxm-80gb"
    vendor: str
    display_name: str                          # e.g. "NVIDIA H100 SXM5 80GB"
    peak_tflops: dict[str, float]              # dense peak per dtype: fp32, tf32, bf16, fp16, fp8, fp4, int8, int4
    memory_gb: float                           # marketed capacity (GB)
    usable_memory_gib: float                   # what the device reports to the framework (GiB), e.g. 79.2 on H100 80GB
    memory_bw_gbps: float                      # peak DRAM/HBM bandwidth, GB/s
    l2_mb: float | None = None                 # L2 / on-chip SRAM, MB
    scaleup: str | None = None                 # e.g. "nvlink4-nvswitch"; None when the part has none
    scaleup_bw_gbps: float = 0.0               # bidirectional per GPU, GB/s (0 = none)
    host_link: str = "pcie-gen4-x16"           # link catalogue key
    host_bw_gbps: float = 64.0                 # bidirectional, GB/s
    tdp_w: float | None = None
    price_per_hour: float | None = None        # USD per GPU-hour; users override in config
    gpus_per_node: int = 8                     # GPUs in the usual server of this part (HGX: 8)
    sms: int | None = None                     # streaming multiprocessors (AMD: compute units); None = unknown
    boost_clock_mhz: float | None = None       # SM boost clock; None = unknown
    structured_sparsity: bool = False          # tensor cores run 2:4 sparse GEMMs at twice the dense rate
    form_factor: str = ""
    source: str = ""                           # datasheet URL(s)
    notes: str = ""
    aliases: tuple[str, ...] = field(default_factory=tuple)

    def peak_flops(self, dtype: str) -> float:
        """Dense peak in FLOP/s for `dtype`, falling back to the nearest wider dtype the part has."""
        for d in _FALLBACK.get(dtype, (dtype,)):
            v = self.peak_tflops.get(d)
            if v:
                return v * 1e12
        raise KeyError(f"{self.name} has no {dtype} peak")

    @property
    def sm_clocks_per_s(self) -> float | None:
        """SMs x clock (SM-cycles per second): the rate of per-SM pipelines that issue once per clock, such as
        the L1 load path. Without a catalogued clock it is derived from the FP32 peak assuming 128 FP32 lanes
        per SM (Ampere GA10x, Ada, Hopper, Blackwell); None when the SM count is unknown."""
        if not self.sms:
            return None
        if self.boost_clock_mhz:
            return self.sms * self.boost_clock_mhz * 1e6
        fp32 = self.peak_tflops.get("fp32")
        return fp32 * 1e12 / 256.0 if fp32 else None

    @property
    def memory_bw(self) -> float:
        """Peak memory bandwidth in bytes/s."""
        return self.memory_bw_gbps * 1e9

    @property
    def usable_memory_bytes(self) -> float:
        """Device memory the framework can use, in bytes."""
        return self.usable_memory_gib * 2**30

    def ridge_point(self, dtype: str = "bf16") -> float:
        """FLOP per byte at which compute and memory time are equal (the roofline's knee)."""
        return self.peak_flops(dtype) / self.memory_bw


# A part without a native dtype runs it on the next wider unit (e.g. fp8 on an A100 runs as bf16).
_FALLBACK: dict[str, tuple[str, ...]] = {
    "fp4": ("fp4", "fp8", "bf16", "fp16"),
    "int4": ("int4", "int8", "fp16", "bf16"),
    "fp8": ("fp8", "bf16", "fp16"),
    "int8": ("int8", "fp16", "bf16"),
    "bf16": ("bf16", "fp16", "fp32"),
    "fp16": ("fp16", "bf16", "fp32"),
    "tf32": ("tf32", "fp32"),
    "fp32": ("fp32",),
}


@dataclass(frozen=True, slots=True)
class LinkSpec:
    """A link or host-side resource: PCIe, NVLink/NVSwitch, InfiniBand, RoCE, host DRAM, NVMe."""

    name: str                  # canonical key, e.g. "pcie-gen5-x16", "nvlink4-nvswitch", "ib-ndr"
    kind: str                  # "pcie" | "nvlink" | "infiniband" | "ethernet" | "host-memory" | "nvme"
    display_name: str
    bw_gbps_per_direction: float   # peak, GB/s, one direction
    achievable_fraction: float     # typical achieved fraction of peak (documented per entry)
    latency_us: float              # one-way latency / per-message overhead, microseconds
    capacity_gb: float | None = None   # for memory tiers (host DRAM, NVMe): typical capacity
    source: str = ""
    notes: str = ""
    aliases: tuple[str, ...] = field(default_factory=tuple)

    @property
    def bandwidth(self) -> float:
        """Achievable bytes/s in one direction."""
        return self.bw_gbps_per_direction * 1e9 * self.achievable_fraction


# Loading and lookup (get_gpu, list_gpus, get_link, list_links) follow below.

_T = TypeVar("_T")

# Words users put in front of a part's name that never distinguish two parts ("NVIDIA H100",
# "AMD Instinct MI300X", "Tesla T4"); lookups ignore them so nvidia-smi / torch names resolve.
_VENDOR_PREFIXES = ("nvidia", "amd", "instinct", "geforce", "tesla", "intel", "habana", "google", "qualcomm")


def _lookup_form(name: str) -> str:
    """The one spelling used for matching: lower case, runs of spaces/underscores/dashes -> '-',
    leading vendor words dropped."""
    form = re.sub(r"[\s_\-]+", "-", str(name).strip().lower()).strip("-")
    stripped = True
    while stripped:
        stripped = False
        for prefix in _VENDOR_PREFIXES:
            if form.startswith(prefix + "-"):
                form, stripped = form[len(prefix) + 1:], True
    return form


# --- field checkers: each returns the cleaned value or raises ValueError("must be ...") -------------

def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _text(*, required: bool) -> Callable[[Any], str]:
    def check(v: Any) -> str:
        if not isinstance(v, str) or (required and not v.strip()):
            raise ValueError("must be a non-empty string" if required else "must be a string")
        return v.strip()
    return check


def _optional_text(v: Any) -> str | None:
    if v is None:
        return None
    return _text(required=True)(v)


def _number(*, minimum: float = 0.0, strict: bool = True, maximum: float | None = None,
            optional: bool = False) -> Callable[[Any], float | None]:
    def check(v: Any) -> float | None:
        if v is None and optional:
            return None
        ok = _is_number(v) and (v > minimum if strict else v >= minimum) and (maximum is None or v <= maximum)
        if not ok:
            bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
            if maximum is not None:
                bound += f" and <= {maximum:g}"
            raise ValueError(f"must be a number {bound}{' or null' if optional else ''}, got {v!r}")
        return float(v)
    return check


def _count(v: Any) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"must be an integer >= 1, got {v!r}")
    return v


def _optional_count(v: Any) -> int | None:
    return None if v is None else _count(v)


def _flag(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"must be true or false, got {v!r}")
    return v


def _peaks(v: Any) -> dict[str, float]:
    if not isinstance(v, Mapping) or not v:
        raise ValueError(f"must be a non-empty mapping dtype -> TFLOP/s (dtypes: {', '.join(DTYPE_BYTES)})")
    out: dict[str, float] = {}
    for dtype, tflops in v.items():
        if dtype not in DTYPE_BYTES:
            raise ValueError(f"has unknown dtype {dtype!r}{did_you_mean(str(dtype), DTYPE_BYTES)}")
        if not _is_number(tflops) or tflops <= 0:
            raise ValueError(f"[{dtype}] must be a number > 0, got {tflops!r}")
        out[dtype] = float(tflops)
    return out


def _alias_list(v: Any) -> tuple[str, ...]:
    if v is None:
        return ()
    if not isinstance(v, (list, tuple)) or not all(isinstance(a, (str, int)) and str(a).strip() for a in v):
        raise ValueError("must be a list of non-empty strings")
    return tuple(str(a).strip() for a in v)


# field -> (required, checker). Required = no default in the dataclass, plus `source` (every figure
# must be traceable).
_GPU_SCHEMA: dict[str, tuple[bool, Callable[[Any], Any]]] = {
    "vendor": (True, _text(required=True)),
    "display_name": (True, _text(required=True)),
    "peak_tflops": (True, _peaks),
    "memory_gb": (True, _number()),
    "usable_memory_gib": (True, _number()),
    "memory_bw_gbps": (True, _number()),
    "l2_mb": (False, _number(optional=True)),
    "scaleup": (False, _optional_text),
    "scaleup_bw_gbps": (False, _number(strict=False)),
    "host_link": (False, _text(required=True)),
    "host_bw_gbps": (False, _number(strict=False)),
    "tdp_w": (False, _number(optional=True)),
    "price_per_hour": (False, _number(strict=False, optional=True)),
    "gpus_per_node": (False, _count),
    "sms": (False, _optional_count),
    "boost_clock_mhz": (False, _number(optional=True)),
    "structured_sparsity": (False, _flag),
    "form_factor": (False, _text(required=False)),
    "source": (True, _text(required=True)),
    "notes": (False, _text(required=False)),
    "aliases": (False, _alias_list),
}

_LINK_SCHEMA: dict[str, tuple[bool, Callable[[Any], Any]]] = {
    "kind": (True, _text(required=True)),
    "display_name": (True, _text(required=True)),
    "bw_gbps_per_direction": (True, _number()),
    "achievable_fraction": (True, _number(maximum=1.0)),
    "latency_us": (True, _number(strict=False)),
    "capacity_gb": (False, _number(optional=True)),
    "source": (True, _text(required=True)),
    "notes": (False, _text(required=False)),
    "aliases": (False, _alias_list),
}


def _check_fields(where: str, key: str, data: Any, schema: Mapping[str, tuple[bool, Callable[[Any], Any]]]
                  ) -> dict[str, Any]:
    """Validate one entry against `schema`; every problem is one line naming file, entry and field."""
    if not isinstance(data, Mapping):
        raise CatalogError(f"{where}: entry {key!r} must be a mapping of fields, got {type(data).__name__}")
    for f in data:
        if f not in schema:
            raise CatalogError(f"{where}: entry {key!r}: unknown field {f!r}{did_you_mean(str(f), schema)}")
    out: dict[str, Any] = {}
    for f, (required, check) in schema.items():
        if f not in data:
            if required:
                raise CatalogError(f"{where}: entry {key!r}: missing required field {f!r}")
            continue
        try:
            out[f] = check(data[f])
        except ValueError as exc:
            raise CatalogError(f"{where}: entry {key!r}: field {f!r} {exc}") from None
    return out


def _make_gpu(where: str, key: str, data: Any) -> GPUSpec:
    fields = _check_fields(where, key, data, _GPU_SCHEMA)
    # Marketed GPU memory "GB" are binary (an 80GB H100 has 80 GiB of DRAM), so a device cannot
    # report more GiB than the marketed figure; more means a typo or a GB/GiB mix-up.
    if fields["usable_memory_gib"] > fields["memory_gb"] + 1e-9:
        raise CatalogError(f"{where}: entry {key!r}: field 'usable_memory_gib' ({fields['usable_memory_gib']:g}) "
                           f"exceeds memory_gb ({fields['memory_gb']:g})")
    if "gpus_per_node" in fields:
        fields["gpus_per_node"] = int(fields["gpus_per_node"])
    return GPUSpec(name=key, **fields)


def _make_link(where: str, key: str, data: Any) -> LinkSpec:
    return LinkSpec(name=key, **_check_fields(where, key, data, _LINK_SCHEMA))


@dataclasses.dataclass(frozen=True)
class _Catalog(Generic[_T]):
    """Parsed entries by canonical key, and every lookup form (key or alias) -> key."""

    entries: dict[str, _T]
    index: dict[str, str]


def _parse(data: Any, where: str, make: Callable[[str, str, Any], _T]) -> _Catalog[_T]:
    if not isinstance(data, Mapping) or not data:
        raise CatalogError(f"{where}: must be a non-empty mapping of entries")
    entries: dict[str, _T] = {}
    index: dict[str, str] = {}
    for key, fields in data.items():
        if not isinstance(key, str) or _lookup_form(key) != key:
            raise CatalogError(f"{where}: entry key {key!r} must be lower-case with '-' separators "
                               f"(e.g. {_lookup_form(str(key))!r})")
        entries[key] = spec = make(where, key, fields)
        for name in (key, *spec.aliases):
            form = _lookup_form(name)
            owner = index.setdefault(form, key)
            if owner != key:
                raise CatalogError(f"{where}: entry {key!r}: alias {name!r} is already claimed by entry {owner!r}")
    return _Catalog(entries, index)


def _parse_gpus(data: Any, filename: str = "gpus.yaml") -> _Catalog[GPUSpec]:
    """Parse and validate the GPU catalogue (a mapping key -> fields); factored out so tests can feed dicts."""
    return _parse(data, filename, _make_gpu)


def _parse_links(data: Any, filename: str = "links.yaml") -> _Catalog[LinkSpec]:
    """Parse and validate the link catalogue (a mapping key -> fields)."""
    return _parse(data, filename, _make_link)


def _read_catalog_file(filename: str) -> Any:
    """Read a YAML file shipped inside the package (works from a wheel, needs no repo checkout)."""
    where = f"sim/catalog/{filename}"
    try:
        text = (resources.files("sim") / "catalog" / filename).read_text(encoding="utf-8")
        return yaml.safe_load(text)
    except FileNotFoundError:
        raise CatalogError(f"{where}: catalogue file is missing from the installed package") from None
    except yaml.YAMLError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CatalogError(f"{where}: not valid YAML: {first}") from None


@functools.lru_cache(maxsize=None)
def _gpu_catalog() -> _Catalog[GPUSpec]:
    return _parse_gpus(_read_catalog_file("gpus.yaml"), "sim/catalog/gpus.yaml")


@functools.lru_cache(maxsize=None)
def _link_catalog() -> _Catalog[LinkSpec]:
    return _parse_links(_read_catalog_file("links.yaml"), "sim/catalog/links.yaml")


def _resolve(catalog: _Catalog[_T], name: str, what: str, cli: str) -> _T:
    key = catalog.index.get(_lookup_form(name))
    if key is not None:
        return catalog.entries[key]
    choices = list(dict.fromkeys([*catalog.entries, *catalog.index]))
    raise CatalogError(f"unknown {what} {name!r}; see `servesim catalog {cli}`"
                       + did_you_mean(_lookup_form(name), choices))


def list_gpus() -> list[GPUSpec]:
    """Every catalogued accelerator, sorted by canonical key (stable output for the CLI and docs)."""
    catalog = _gpu_catalog()
    return [catalog.entries[k] for k in sorted(catalog.entries)]


def get_gpu(name: str) -> GPUSpec:
    """Look a GPU up by canonical key, alias or display name, ignoring case, spaces/underscores and
    leading vendor words, so configs can say "H100", "NVIDIA H100 80GB HBM3" or "h100_sxm_80gb"."""
    return _resolve(_gpu_catalog(), name, "GPU", "gpus")


def list_links() -> list[LinkSpec]:
    """Every catalogued link / memory tier, sorted by canonical key."""
    catalog = _link_catalog()
    return [catalog.entries[k] for k in sorted(catalog.entries)]


def get_link(name: str) -> LinkSpec:
    """Look a link up by canonical key or alias (same matching rules as `get_gpu`)."""
    return _resolve(_link_catalog(), name, "link", "links")


_GPU_FIELD_NAMES = tuple(f.name for f in dataclasses.fields(GPUSpec))


def gpu_with_overrides(gpu: GPUSpec, **changes: Any) -> GPUSpec:
    """A copy of `gpu` with some fields replaced (a user's price, a measured bandwidth), validated
    with the catalogue's own rules so a bad override fails here, not deep inside a simulation.

    `peak_tflops` is replaced whole; pass ``{**gpu.peak_tflops, "fp8": ...}`` to change one dtype.
    """
    for f in changes:
        if f not in _GPU_FIELD_NAMES:
            raise CatalogError(f"GPU {gpu.name!r}: cannot override unknown field {f!r}"
                               f"{did_you_mean(f, _GPU_FIELD_NAMES)}")
    name = changes.pop("name", gpu.name)
    if not isinstance(name, str) or not name.strip():
        raise CatalogError(f"GPU {gpu.name!r}: override of field 'name' must be a non-empty string")
    data = {f: getattr(gpu, f) for f in _GPU_SCHEMA}
    data.update(changes)
    return _make_gpu(f"overrides for GPU {gpu.name!r}", name, data)
