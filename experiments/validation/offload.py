"""Offloading against FlexGen's Table 2: OPT-6.7B / 30B / 175B on one T4 with CPU DRAM and SSD offload.

    python -m experiments.validation.offload                  # print the table
    python -m experiments.validation.offload --markdown FILE  # also write the docs section

The points (../shared/reference/published_points.csv, rows with engine FlexGen / DeepSpeed ZeRO-Inference /
HF Accelerate): generation throughput (generated tokens / (prefill + decode time)) for prompt 512,
generation 32, on a GCP T4 16 GB with 208 GB DRAM and a 1.5 TB SSD, fp16 weights and KV.

The prediction prices the whole job with `sim.weight_offload`: one prefill of the effective batch and 31
decode steps, each layer max(GPU compute, CPU attention, PCIe, disk) with the first layer's load exposed.
Hardware: the T4 and its PCIe Gen3 x16 link from the catalogue (12.8 GB/s achievable), 208 GB DRAM and
1.5 TB disk (the CSV's notes), the SSD's read / write bandwidth as the FlexGen paper states it for this
machine (section 6, "about 2GB/s" read and "about 1GB/s" write: `SSD_READ_GBPS`, `SSD_WRITE_GBPS`), the
CPU side at the defaults of `sim.weight_offload` (catalogue DDR4 host memory, 1.0 TFLOP/s). The engine
profile is ``kernels`` (real kernel efficiencies, no serving-engine overhead) with naive attention
(FlexGen's OPT runs attention as torch.bmm + softmax). Nothing here is fitted to the points.

Policies. FlexGen: the policy its benchmark suite runs for each row (FlexGen's benchmark/flexgen/
bench_suite.py, prompt 512: `POLICIES`), and separately the best policy of our own search
(`sim.weight_offload.best_policy`). DeepSpeed ZeRO-Inference and HF Accelerate: all weights streamed
from where they fit (OPT-175B: the disk; OPT-6.7B: all on the GPU), KV cache on the GPU, the largest batch
that fits; ZeRO-Inference prefetches the next layer (overlap), Accelerate's offload hooks load a layer
when it is called (no overlap). The 4-bit rows (FlexGen (c)) are not modelled (no compression).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from pathlib import Path

from experiments.validation.kernels import published
from sim.cost import CostModel
from sim.hardware import get_gpu
from sim.models import get_model
from sim.weight_offload import OffloadHardware, Placement, best_policy, evaluate_policy, max_batch

PROMPT, GEN = 512, 32
HOST_MEMORY_GB, DISK_GB = 208, 1500           # published_points.csv notes: "1x T4 16GB + 208GB DRAM + 1.5TB SSD"
SSD_READ_GBPS, SSD_WRITE_GBPS = 2.0, 1.0      # FlexGen paper, section 6 (hardware of the T4 experiments)

# FlexGen's benchmark suite, prompt 512 / gen 32: (--percent wg wc cg cc hg hc, --gpu-batch-size,
# --num-gpu-batches, --cpu-cache-compute, --overlap)
POLICIES = {
    "opt-6.7b": ((100, 0, 100, 0, 100, 0), 2, 1, False, False),
    "opt-30b": ((20, 80, 0, 100, 0, 100), 48, 3, True, True),
    "opt-175b": ((0, 50, 0, 0, 0, 100), 32, 8, True, True),
}
# The baselines' placements (weights where they fit, KV on the GPU) and whether loads overlap compute.
BASELINES = {"DeepSpeed ZeRO-Inference": True, "HF Accelerate": False}


@dataclass(frozen=True)
class Row:
    model: str
    system: str
    policy: str
    measured: float
    predicted: float
    searched: float | None = None     # FlexGen rows: throughput of our own best policy

    @property
    def error(self) -> float:
        return self.predicted / self.measured - 1.0


def hardware() -> OffloadHardware:
    """The FlexGen T4 machine."""
    return OffloadHardware.for_gpu(get_gpu("t4"), host_memory_gb=HOST_MEMORY_GB, disk_gb=DISK_GB,
                                   disk_read_gbps=SSD_READ_GBPS, disk_write_gbps=SSD_WRITE_GBPS)


def base_cost(model: str) -> CostModel:
    return CostModel(get_model(model), get_gpu("t4"), weight_dtype="fp16", kv_dtype="fp16", engine="kernels",
                     flash_attention=False)


def baseline_placement(base: CostModel, hw: OffloadHardware, overlap: bool) -> Placement:
    """All weights on the GPU if they fit with one sequence, else in DRAM if they fit there, else on disk."""
    for pl in (Placement(1.0, 0.0), Placement(0.0, 1.0), Placement(0.0, 0.0)):
        pl = replace(pl, overlap=overlap)
        if max_batch(base, pl, PROMPT, GEN, hw, limit=1):
            return pl
    raise RuntimeError(f"{base.model.name}: no baseline placement fits")


def rows(search: bool = True) -> list[Row]:
    hw = hardware()
    d = published()
    d = d[(d.metric == "generation_throughput") & d.engine.isin(["FlexGen", *BASELINES])]
    out = []
    for r in d.itertuples():
        model = r.model.lower()
        base = base_cost(model)
        if r.engine == "FlexGen":
            pct, gbs, k, cpu, overlap = POLICIES[model]
            pl = Placement.from_percent(*pct, cpu_attention=cpu, overlap=overlap, gpu_batch=gbs)
            res = evaluate_policy(base, pl, gbs * k, PROMPT, GEN, hw)
            found = best_policy(base, PROMPT, GEN, hw).throughput if search else None
            label = f"{pl.label()}, batch {gbs}x{k}"
        else:
            pl = baseline_placement(base, hw, BASELINES[r.engine])
            bs = max_batch(base, pl, PROMPT, GEN, hw)
            res = evaluate_policy(base, pl, bs, PROMPT, GEN, hw)
            found, label = None, f"{pl.label()}, batch {bs}" + ("" if pl.overlap else ", no overlap")
        out.append(Row(r.model, r.engine, label, float(r.value), res.throughput, found))
    return out


def table(rs: list[Row]) -> str:
    """The markdown table."""
    lines = ["| model | system | policy (weights, KV: GPU/CPU/disk) | measured tok/s | predicted tok/s | error "
             "| our search's best tok/s |", "|---|---|---|---:|---:|---:|---:|"]
    for r in rs:
        lines.append(f"| {r.model} | {r.system} | {r.policy} | {r.measured:.2f} | {r.predicted:.3g} | "
                     f"{r.error:+.0%} | {'' if r.searched is None else f'{r.searched:.3g}'} |")
    return "\n".join(lines)


def markdown(rs: list[Row]) -> str:
    """The docs section: table and what it says."""
    return ("## Offloading: FlexGen on a T4\n\n"
            "Generation throughput of OPT models on one T4 16 GB with 208 GB DRAM and a 1.5 TB SSD (prompt 512, "
            "32 generated tokens), FlexGen's Table 2, against `sim.weight_offload` with each system's policy "
            "(`experiments/validation/offload.py`; hardware figures from the catalogue and the FlexGen paper, "
            "nothing fitted to these points).\n\n" + table(rs) + "\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--markdown", type=Path, help="write the docs section (markdown) here")
    ap.add_argument("--no-search", action="store_true", help="skip our own policy search")
    args = ap.parse_args(argv)
    rs = rows(search=not args.no_search)
    print(table(rs))
    if args.markdown:
        args.markdown.write_text(markdown(rs))


if __name__ == "__main__":
    main()
