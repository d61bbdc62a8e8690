"""The hardware catalogue: required parts present, figures sane, lookups forgiving, bad YAML caught."""
from __future__ import annotations

import copy

import pytest

from sim import hardware
from sim.errors import CatalogError
from sim.hardware import (
    DTYPE_BYTES,
    GPUSpec,
    LinkSpec,
    get_gpu,
    get_link,
    gpu_with_overrides,
    list_gpus,
    list_links,
)

REQUIRED_GPUS = {
    "a100-sxm-40gb", "a100-sxm-80gb", "a100-pcie-40gb", "a100-pcie-80gb", "h100-sxm-80gb", "h100-pcie-80gb",
    "h100-nvl-94gb", "h200-sxm-141gb", "h200-nvl-141gb", "b200", "gb200", "l40s", "l4", "a10g", "t4",
    "v100-sxm-32gb", "rtx-4090", "mi300x", "mi325x", "gaudi3", "tpu-v5e", "tpu-v5p", "snapdragon-8-gen3",
    "apple-m2", "apple-m2-max", "apple-m3-max", "jetson-orin-nx", "jetson-agx-orin-64gb",
}

REQUIRED_LINKS = {
    "pcie-gen3-x16", "pcie-gen4-x16", "pcie-gen5-x16", "pcie-gen6-x16", "nvlink3-nvswitch", "nvlink4-nvswitch",
    "nvlink5-nvswitch", "nvlink-bridge", "infinity-fabric", "ib-hdr", "ib-ndr", "ib-xdr", "roce-400g", "roce-200g",
    "host-ddr4", "host-ddr5", "host-ddr5-12ch", "grace-lpddr5x", "nvme-gen4", "nvme-gen5",
}

# A minimal valid entry for the parser tests.
GOOD_GPU = {
    "vendor": "Acme", "display_name": "Acme X1", "peak_tflops": {"bf16": 100}, "memory_gb": 16,
    "usable_memory_gib": 15.5, "memory_bw_gbps": 500, "source": "https://example.com/x1", "aliases": ["x1"],
}


# --- GPU catalogue contents -------------------------------------------------------------------------

def test_every_required_gpu_is_catalogued():
    names = {g.name for g in list_gpus()}
    assert REQUIRED_GPUS <= names, sorted(REQUIRED_GPUS - names)


def test_list_gpus_is_sorted_by_name():
    names = [g.name for g in list_gpus()]
    assert names == sorted(names)
    assert all(isinstance(g, GPUSpec) for g in list_gpus())


@pytest.mark.parametrize("gpu", list_gpus(), ids=lambda g: g.name)
def test_gpu_entry_is_sane(gpu: GPUSpec):
    assert gpu.source.strip()
    assert gpu.memory_bw_gbps > 0
    assert any(v > 0 for v in gpu.peak_tflops.values())
    assert set(gpu.peak_tflops) <= set(DTYPE_BYTES)
    # Marketed GPU memory "GB" are binary (an 80GB H100 has 80 GiB and reports 79.2 GiB to CUDA), so
    # the reported figure never exceeds the marketed number read as GiB; and it is not implausibly
    # small either (catches a GB/GiB slip or a typo).
    assert 0.5 * gpu.memory_gb <= gpu.usable_memory_gib <= gpu.memory_gb + 0.01
    # Every part can run bf16 and fp8/int8/int4 models (natively or on a wider unit).
    for dtype in ("bf16", "fp16", "fp8", "int8", "int4"):
        assert gpu.peak_flops(dtype) > 0
    assert gpu.gpus_per_node >= 1
    assert gpu.price_per_hour is None or gpu.price_per_hour > 0


@pytest.mark.parametrize("gpu", list_gpus(), ids=lambda g: g.name)
def test_gpu_links_refer_to_catalogued_links(gpu: GPUSpec):
    get_link(gpu.host_link)
    if gpu.scaleup is None:
        assert gpu.scaleup_bw_gbps == 0
    else:
        get_link(gpu.scaleup)
        assert gpu.scaleup_bw_gbps > 0


def test_dense_not_sparse_figures():
    # The datasheets headline sparse numbers (2x); the catalogue must hold the dense ones.
    assert get_gpu("h100-sxm-80gb").peak_tflops["bf16"] == pytest.approx(989.4)
    assert get_gpu("a100-sxm-80gb").peak_tflops["bf16"] == pytest.approx(312)
    assert get_gpu("l40s").peak_tflops["fp8"] == pytest.approx(733)
    assert get_gpu("mi300x").peak_tflops["fp8"] == pytest.approx(2614.9)


def test_fp32_and_tf32_figures():
    a100 = get_gpu("a100-sxm-80gb")
    assert a100.peak_tflops["fp32"] == pytest.approx(19.5)
    assert a100.peak_tflops["tf32"] == pytest.approx(156)
    h100 = get_gpu("h100-sxm-80gb")
    assert h100.peak_tflops["fp32"] == pytest.approx(67)
    assert h100.peak_tflops["tf32"] == pytest.approx(494.7)


def test_edge_devices_have_no_price_and_one_gpu_per_node():
    for name in ("snapdragon-8-gen3", "apple-m2", "apple-m2-max", "apple-m3-max", "jetson-orin-nx",
                 "jetson-agx-orin-64gb"):
        gpu = get_gpu(name)
        assert gpu.price_per_hour is None
        assert gpu.gpus_per_node == 1


def test_nvl72_domain_size():
    assert get_gpu("gb200").gpus_per_node == 72
    assert get_gpu("h100-sxm-80gb").gpus_per_node == 8


# --- roofline --------------------------------------------------------------------------------------

def test_ridge_points():
    assert get_gpu("a100-sxm-80gb").ridge_point("bf16") == pytest.approx(312e12 / 2039e9, rel=0.01)
    assert get_gpu("a100-sxm-80gb").ridge_point("bf16") == pytest.approx(153, rel=0.01)
    assert get_gpu("h100-sxm-80gb").ridge_point("bf16") == pytest.approx(295, rel=0.01)
    # H200: same compute, more bandwidth -> lower ridge.
    assert get_gpu("h200").ridge_point() < get_gpu("h100").ridge_point()


def test_peak_flops_fallback():
    a100 = get_gpu("a100-sxm-80gb")
    assert "fp8" not in a100.peak_tflops
    assert a100.peak_flops("fp8") == pytest.approx(312e12)
    assert get_gpu("h100-sxm-80gb").peak_flops("fp8") == pytest.approx(1978.9e12)
    # Turing has no bf16: it runs at the fp16 rate.
    assert get_gpu("t4").peak_flops("bf16") == pytest.approx(65e12)


# --- lookup ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("query, key", [
    ("H100", "h100-sxm-80gb"),
    ("h100", "h100-sxm-80gb"),
    ("NVIDIA H100 80GB HBM3", "h100-sxm-80gb"),
    ("nvidia h100 80gb hbm3", "h100-sxm-80gb"),
    ("h100_sxm_80gb", "h100-sxm-80gb"),
    ("H100 SXM5 80GB", "h100-sxm-80gb"),
    ("A100-80GB", "a100-sxm-80gb"),
    ("a100", "a100-sxm-80gb"),
    ("A100-40GB", "a100-sxm-40gb"),
    ("NVIDIA A100 80GB PCIe", "a100-pcie-80gb"),
    ("H200", "h200-sxm-141gb"),
    ("MI300X", "mi300x"),
    ("AMD Instinct MI300X", "mi300x"),
    ("RTX 4090", "rtx-4090"),
    ("4090", "rtx-4090"),
    ("NVIDIA GeForce RTX 4090", "rtx-4090"),
    ("Tesla T4", "t4"),
    ("Tesla V100-SXM2-32GB", "v100-sxm-32gb"),
    ("  L40S ", "l40s"),
    ("B200", "b200"),
    ("B200 (HGX B200, per GPU)", "b200"),        # CSV display name
    ("B200 in GB200 NVL72 (per GPU)", "gb200"),  # CSV display name
    ("Gaudi 3 (HL-325L OAM)", "gaudi3"),
    ("A10 (proxy for AWS A10G)", "a10"),
    ("Apple M2 Max (38-core GPU)", "apple-m2-max"),
])
def test_gpu_aliases_resolve(query: str, key: str):
    assert get_gpu(query).name == key


def test_every_key_and_alias_resolves_to_its_own_entry():
    for gpu in list_gpus():
        for name in (gpu.name, gpu.name.upper(), *gpu.aliases):
            assert get_gpu(name) is gpu, name


def test_unknown_gpu_suggests_close_names():
    with pytest.raises(CatalogError) as exc:
        get_gpu("h10")
    msg = str(exc.value)
    assert "unknown GPU 'h10'" in msg and "servesim catalog gpus" in msg
    assert "did you mean" in msg and "h100" in msg
    with pytest.raises(CatalogError, match=r"did you mean .*h100-sxm"):
        get_gpu("h100-sxm5-80")


def test_unknown_gpu_without_close_match_has_no_suggestion():
    with pytest.raises(CatalogError) as exc:
        get_gpu("zzzzzzzzzzzz")
    assert "did you mean" not in str(exc.value)


# --- links -----------------------------------------------------------------------------------------

def test_every_required_link_is_catalogued():
    names = {link.name for link in list_links()}
    assert REQUIRED_LINKS <= names, sorted(REQUIRED_LINKS - names)
    assert [link.name for link in list_links()] == sorted(names)


@pytest.mark.parametrize("link", list_links(), ids=lambda link: link.name)
def test_link_entry_is_sane(link: LinkSpec):
    assert link.source.strip()
    assert link.notes.strip()          # achievable_fraction must be documented
    assert link.bw_gbps_per_direction > 0
    assert 0 < link.achievable_fraction <= 1
    assert link.latency_us >= 0
    if link.kind in ("host-memory", "nvme") and link.name != "soc-unified-memory":
        assert link.capacity_gb and link.capacity_gb > 0


def test_link_ordering():
    assert get_link("pcie-gen5-x16").bandwidth > get_link("pcie-gen4-x16").bandwidth
    assert get_link("pcie-gen4-x16").bandwidth > get_link("pcie-gen3-x16").bandwidth
    assert get_link("nvlink4-nvswitch").bandwidth > get_link("pcie-gen5-x16").bandwidth
    assert get_link("nvlink5-nvswitch").bandwidth > get_link("nvlink4-nvswitch").bandwidth
    assert get_link("ib-ndr").bandwidth > get_link("ib-hdr").bandwidth
    assert get_link("nvme-gen5").bandwidth > get_link("nvme-gen4").bandwidth


def test_nvlink_fractions_match_measured_nccl_busbw():
    # Reference data: NCCL all-reduce busbw at 64 MiB, 174 GB/s on DGX A100 and 365 GB/s on H100.
    assert get_link("nvlink3-nvswitch").bandwidth / 1e9 == pytest.approx(174, rel=0.01)
    assert get_link("nvlink4-nvswitch").bandwidth / 1e9 == pytest.approx(365, rel=0.01)


def test_link_aliases_and_unknown_link():
    assert get_link("host-ddr5-8ch").name == "host-ddr5"
    assert get_link("PCIe Gen4 x16").name == "pcie-gen4-x16"
    assert get_link("IB_NDR").name == "ib-ndr"
    with pytest.raises(CatalogError, match=r"unknown link 'pcie-gen7-x16'.*did you mean"):
        get_link("pcie-gen7-x16")


# --- overrides -------------------------------------------------------------------------------------

def test_gpu_with_overrides_replaces_and_validates():
    h100 = get_gpu("h100")
    cheap = gpu_with_overrides(h100, price_per_hour=1.5)
    assert cheap.price_per_hour == 1.5
    assert cheap.peak_tflops == h100.peak_tflops and cheap.name == h100.name
    assert get_gpu("h100").price_per_hour == h100.price_per_hour   # catalogue untouched
    with pytest.raises(CatalogError, match="price_per_hour"):
        gpu_with_overrides(h100, price_per_hour="cheap")
    with pytest.raises(CatalogError, match="price_per_hour"):
        gpu_with_overrides(h100, price_per_hour=-1)
    with pytest.raises(CatalogError, match=r"'price_per_hr'.*did you mean price_per_hour"):
        gpu_with_overrides(h100, price_per_hr=1.0)
    with pytest.raises(CatalogError, match="usable_memory_gib"):
        gpu_with_overrides(h100, usable_memory_gib=100)


# --- parser ----------------------------------------------------------------------------------------

def test_parser_accepts_a_good_entry():
    catalog = hardware._parse_gpus({"acme-x1": copy.deepcopy(GOOD_GPU)}, "t.yaml")
    gpu = catalog.entries["acme-x1"]
    assert gpu.peak_flops("bf16") == 100e12 and gpu.aliases == ("x1",)
    assert catalog.index["x1"] == "acme-x1"


def test_parser_rejects_unknown_field():
    bad = {**GOOD_GPU, "memory_bandwidth": 900}
    with pytest.raises(CatalogError, match=r"t\.yaml: entry 'acme-x1': unknown field 'memory_bandwidth'"):
        hardware._parse_gpus({"acme-x1": bad}, "t.yaml")


@pytest.mark.parametrize("field", ["memory_bw_gbps", "peak_tflops", "source", "usable_memory_gib"])
def test_parser_rejects_missing_required_field(field: str):
    bad = {k: v for k, v in GOOD_GPU.items() if k != field}
    with pytest.raises(CatalogError, match=rf"t\.yaml: entry 'acme-x1': missing required field '{field}'"):
        hardware._parse_gpus({"acme-x1": bad}, "t.yaml")


@pytest.mark.parametrize("field, value", [
    ("memory_bw_gbps", -5), ("memory_bw_gbps", "fast"), ("peak_tflops", {"bf17": 10}),
    ("peak_tflops", {}), ("gpus_per_node", 0), ("source", ""), ("usable_memory_gib", 40),
])
def test_parser_rejects_bad_values(field: str, value):
    bad = {**GOOD_GPU, field: value}
    with pytest.raises(CatalogError, match=rf"entry 'acme-x1': .*'{field}'"):
        hardware._parse_gpus({"acme-x1": bad}, "t.yaml")


def test_parser_rejects_duplicate_alias():
    other = {**GOOD_GPU, "display_name": "Acme X2", "aliases": ["X1"]}
    with pytest.raises(CatalogError, match=r"alias 'X1' is already claimed by entry 'acme-x1'"):
        hardware._parse_gpus({"acme-x1": GOOD_GPU, "acme-x2": other}, "t.yaml")


def test_link_parser_rejects_missing_source():
    link = {k: v for k, v in get_link_fields("ib-ndr").items() if k != "source"}
    with pytest.raises(CatalogError, match=r"entry 'ib-ndr': missing required field 'source'"):
        hardware._parse_links({"ib-ndr": link}, "l.yaml")


def test_link_parser_rejects_fraction_above_one():
    link = {**get_link_fields("ib-ndr"), "achievable_fraction": 1.2}
    with pytest.raises(CatalogError, match="achievable_fraction"):
        hardware._parse_links({"ib-ndr": link}, "l.yaml")


@pytest.fixture
def fake_catalog_dir(monkeypatch, tmp_path):
    """Point the packaged-resource reader at a temp `catalog/` folder, with the caches cleared."""
    (tmp_path / "catalog").mkdir()
    monkeypatch.setattr(hardware.resources, "files", lambda _pkg: tmp_path)
    hardware._gpu_catalog.cache_clear()
    yield tmp_path / "catalog"
    hardware._gpu_catalog.cache_clear()


def test_malformed_entry_in_file_names_file_entry_and_field(fake_catalog_dir):
    (fake_catalog_dir / "gpus.yaml").write_text(
        "acme-x1:\n  vendor: Acme\n  display_name: Acme X1\n  peak_tflops: {bf16: 100}\n  memory_gb: 16\n"
        "  usable_memory_gib: 15\n  memory_bw_gbps: 500\n  source: https://example.com\n  tdp: 300\n",
        encoding="utf-8")
    with pytest.raises(CatalogError, match=r"gpus\.yaml: entry 'acme-x1': unknown field 'tdp'.*tdp_w"):
        list_gpus()


def test_invalid_yaml_file_is_a_catalog_error(fake_catalog_dir):
    (fake_catalog_dir / "gpus.yaml").write_text("acme-x1: {vendor: Acme, peak_tflops: [\n", encoding="utf-8")
    with pytest.raises(CatalogError, match=r"gpus\.yaml: not valid YAML"):
        get_gpu("acme-x1")


def get_link_fields(name: str) -> dict:
    link = get_link(name)
    return {f: getattr(link, f) for f in hardware._LINK_SCHEMA}
