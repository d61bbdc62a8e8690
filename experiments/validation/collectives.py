"""Validation of topology-priced all-reduces against NCCL measurements on a DGX A100.

    python -m experiments.validation.collectives

Each row of Vidur's DGX-A100 NCCL all-reduce table (2, 4 and 8 GPUs of one server, 2 KiB to
64 MiB) is priced with `topologies.collectives.allreduce_time` on an ``hgx-a100`` cluster: a ring
over the GPUs' NVSwitch ports, the bus bandwidth from the links' achievable bandwidth and the
latency from the hop latencies plus one call overhead. The error of a row is
predicted / measured - 1; the acceptance metric is the median |error| of the rows of >= 1 MiB
(smaller messages run NCCL's low-latency protocols, which the bandwidth formula does not model).

The table's cross-server rows (devices_per_node < num_workers) are printed for information only:
their bus bandwidth (6-22 GB/s) is far below what 8 x HDR InfiniBand per server gives, so the
profiling cluster's network is not the DGX SuperPOD fabric the ``hgx-a100`` preset describes.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from topologies import allreduce_time, build_cluster

DATA = Path(__file__).resolve().parent / "data" / "measured" / "vidur_a100_dgx_all_reduce_summary.csv"
MIN_BYTES = 2**20
TARGET_MEDIAN = 0.15


@dataclass(frozen=True, slots=True)
class Row:
    """One measured all-reduce and its prediction."""

    gpus: int
    gpus_per_node: int
    nbytes: int
    measured_s: float
    predicted_s: float

    @property
    def error(self) -> float:
        """predicted / measured - 1."""
        return self.predicted_s / self.measured_s - 1.0


def measured() -> pd.DataFrame:
    """The Vidur DGX-A100 all-reduce table (sizes in bytes, times in ms)."""
    return pd.read_csv(DATA)


def rows(min_bytes: int = MIN_BYTES, cross_node: bool = False) -> list[Row]:
    """Predicted vs measured, one row per message size; intra-server rows unless `cross_node`."""
    d = measured()
    d = d[d.size_bytes >= min_bytes]
    d = d[(d.devices_per_node < d.num_workers) if cross_node else (d.devices_per_node == d.num_workers)]
    out = []
    for (n, per), grp in d.groupby(["num_workers", "devices_per_node"]):
        n, per = int(n), int(per)
        cluster = build_cluster({"topology": "hgx-a100", "nodes": n // per}, "a100-sxm-80gb")
        gpus = [g for node in range(n // per) for g in cluster.gpus(node)[:per]]
        for r in grp.itertuples():
            out.append(Row(n, per, int(r.size_bytes), float(r.median_ms) * 1e-3,
                           allreduce_time(cluster, gpus, float(r.size_bytes))))
    return out


def error_table(points: list[Row]) -> pd.DataFrame:
    """Median and p90 |error| (and the median signed error) per GPU count, plus all rows together."""
    recs = []
    keys = sorted({(p.gpus, p.gpus_per_node) for p in points})
    for key in keys + [None]:
        sel = [p for p in points if key is None or (p.gpus, p.gpus_per_node) == key]
        e = np.array([p.error for p in sel])
        label = "all" if key is None else (f"{key[0]}" if key[0] == key[1] else f"{key[0]} ({key[1]}/node)")
        recs.append({"gpus": label, "rows": len(sel), "median_abs_error": float(np.median(np.abs(e))),
                     "p90_abs_error": float(np.percentile(np.abs(e), 90)), "median_error": float(np.median(e))})
    return pd.DataFrame(recs)


def to_markdown(table: pd.DataFrame) -> str:
    """The table as Markdown (for docs/concepts/cluster.md)."""
    lines = ["| GPUs | rows | median \\|error\\| | p90 \\|error\\| | median error |", "|---|---:|---:|---:|---:|"]
    for r in table.itertuples():
        lines.append(f"| {r.gpus} | {r.rows} | {r.median_abs_error:.1%} | {r.p90_abs_error:.1%} | "
                     f"{r.median_error:+.1%} |")
    return "\n".join(lines)


def main() -> None:
    """Print the intra-server error table (the acceptance metric) and the cross-server rows."""
    table = error_table(rows())
    print(f"All-reduce on hgx-a100 vs Vidur DGX-A100 NCCL, messages >= {MIN_BYTES // 2**20} MiB "
          f"(target: median |error| <= {TARGET_MEDIAN:.0%})")
    print(to_markdown(table))
    ok = table.iloc[-1].median_abs_error <= TARGET_MEDIAN
    print(f"\nmedian |error| {table.iloc[-1].median_abs_error:.1%}: {'PASS' if ok else 'FAIL'}")
    print("\nCross-server rows (information only: the profiling cluster's network is not the preset's fabric)")
    print(to_markdown(error_table(rows(cross_node=True))))


if __name__ == "__main__":
    main()
