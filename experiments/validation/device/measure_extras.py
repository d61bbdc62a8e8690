"""More kernel checks on a lent GPU: a CLIP ViT-L/14-336 vision tower, 2:4 semi-structured sparse GEMMs, and
PyTorch's weight-only int8 GEMM (run on a lent GPU machine only; nothing in servesim imports this file).

Why: the multimodal encoder price (policies/encoder_cost.py) has no reference measurement; the cost model's 2:4
sparsity doubles the tensor rate as the datasheets state; int8 weight-only GEMMs are priced memory-bound at every
row count. These timings check those shapes; no constant is fitted to them (docs/VALIDATION.md).

    python3 experiments/validation/device/measure_extras.py --out $OUT/h100_extras.json

Timing: CUDA-graph-captured repetitions, event-timed medians (`measure_kernels._bench`), random weights (the
vision tower is built from its published config with random initialisation: no download).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure_kernels import GEMM_SHAPES, _bench, _copies, _rotating, run_steps  # noqa: E402


def measure_vit(out: list, errors: list) -> None:
    """CLIP ViT-L/14 at 336 px: the vision transformer alone (24 layers, 577 positions), bf16, SDPA attention."""
    try:
        from transformers import CLIPVisionConfig, CLIPVisionModel
    except Exception as exc:                          # transformers missing: report and go on
        errors.append(f"vit import: {exc!r}")
        return
    cfg = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=24,
                           image_size=336, patch_size=14, attn_implementation="sdpa")
    model = CLIPVisionModel(cfg).to("cuda", torch.bfloat16).eval()
    for batch in (1, 2, 4, 8, 16, 32):
        pixels = torch.randn(batch, 3, 336, 336, device="cuda", dtype=torch.bfloat16)
        with torch.inference_mode():
            try:
                t = _bench(lambda: model(pixel_values=pixels), reps=10, inner=5)
            except Exception as exc:
                errors.append(f"vit batch {batch}: {exc!r}")
                return
        out.append({"graphed": _bench.graphed, "kind": "vit_clip_l336", "batch": batch, "layers": 24,
                    "positions": 577, "time_s": t})
    del model
    torch.cuda.empty_cache()


def measure_sparse(out: list, errors: list) -> None:
    """2:4 semi-structured sparse weights (torch.sparse.to_sparse_semi_structured, cuSPARSELt / CUTLASS) against the
    dense GEMM of the same shape."""
    try:
        from torch.sparse import to_sparse_semi_structured
    except Exception as exc:
        errors.append(f"sparse import: {exc!r}")
        return
    mask_row = torch.tensor([1, 1, 0, 0], device="cuda", dtype=torch.bool)
    for name in ("llama3-8b.gate_up", "llama3-8b.down", "llama2-70b.qkv"):
        k, n = GEMM_SHAPES[name]
        dense = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * mask_row.repeat(n, k // 4)
        try:
            sparse = to_sparse_semi_structured(dense)
        except Exception as exc:
            errors.append(f"sparse {name}: {exc!r}")
            return
        for m in (16, 64, 256, 1024, 4096, 8192):
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            try:
                ts = _bench(lambda: F.linear(x, sparse))
                td = _bench(lambda: F.linear(x, dense))
            except Exception as exc:
                errors.append(f"sparse mm {name} m={m}: {exc!r}")
                break
            out.append({"kind": "gemm_bf16_2to4", "shape": name, "m": m, "k": k, "n": n, "time_s": ts,
                        "dense_time_s": td})
        del dense, sparse
        torch.cuda.empty_cache()


def measure_int8(out: list, errors: list) -> None:
    """PyTorch's weight-only int8 GEMM (`_weight_int8pack_mm`: int8 weights, per-channel bf16 scales)."""
    for name in ("llama2-70b.qkv", "llama3-8b.gate_up"):
        k, n = GEMM_SHAPES[name]
        ws = _copies(lambda: (torch.randint(-127, 127, (n, k), device="cuda", dtype=torch.int8),
                              torch.rand(n, device="cuda", dtype=torch.bfloat16)), 3e8, n * k)
        for m in (1, 2, 4, 8, 16, 32, 64, 256):
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            try:
                t = _bench(_rotating(lambda p: torch.ops.aten._weight_int8pack_mm(x, p[0], p[1]), ws))
            except Exception as exc:
                errors.append(f"int8pack {name} m={m}: {exc!r}")
                return
            out.append({"graphed": _bench.graphed, "kind": "gemm_int8_weight_only", "shape": name, "m": m, "k": k,
                        "n": n, "time_s": t})
        del ws
        torch.cuda.empty_cache()


def measure_fp8(out: list, errors: list) -> None:
    """W8A8 fp8 GEMMs (torch._scaled_mm, per-tensor scales, e4m3) against bf16 on the same shapes."""
    for name in ("llama3-8b.gate_up", "llama3-8b.down", "llama2-70b.qkv"):
        k, n = GEMM_SHAPES[name]
        ws = _copies(lambda: torch.randn(n, k, device="cuda", dtype=torch.bfloat16).to(torch.float8_e4m3fn), 3e8, n * k)
        one = torch.tensor(1.0, device="cuda")
        for m in (16, 64, 256, 1024, 4096, 8192):
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16).to(torch.float8_e4m3fn)
            try:
                t = _bench(_rotating(lambda w: torch._scaled_mm(x, w.t(), scale_a=one, scale_b=one,
                                                                out_dtype=torch.bfloat16), ws))
            except Exception as exc:
                errors.append(f"fp8 {name} m={m}: {exc!r}")
                return
            out.append({"graphed": _bench.graphed, "kind": "gemm_fp8", "shape": name, "m": m, "k": k, "n": n,
                        "time_s": t})
        del ws
        torch.cuda.empty_cache()


def measure_moe(out: list, errors: list) -> None:
    """Mixtral-8x7B's expert FFN (8 experts, top-2, hidden 4096, intermediate 14336) as a grouped GEMM
    (torch._grouped_mm, bf16): gate/up then down over the tokens routed to each expert, uniform routing."""
    if not hasattr(torch, "_grouped_mm"):
        errors.append("moe: torch._grouped_mm missing")
        return
    e, h, inter, top_k = 8, 4096, 14336, 2
    w1 = torch.randn(e, h, 2 * inter, device="cuda", dtype=torch.bfloat16) * 0.01
    w2 = torch.randn(e, inter, h, device="cuda", dtype=torch.bfloat16) * 0.01
    for tokens in (1, 4, 16, 64, 256, 1024, 4096):
        rows = tokens * top_k
        counts = torch.full((e,), rows // e, dtype=torch.int32)
        counts[: rows % e] += 1
        # at small batches only the experts a token picks get rows: top-2 of 8 at one token
        if tokens * top_k < e:
            counts = torch.zeros(e, dtype=torch.int32)
            counts[: tokens * top_k] = 1
        offs = torch.cumsum(counts, 0).to(torch.int32).cuda()
        x = torch.randn(rows, h, device="cuda", dtype=torch.bfloat16)

        def ffn():
            a = torch._grouped_mm(x, w1, offs=offs)
            g = F.silu(a[:, :inter]) * a[:, inter:]
            return torch._grouped_mm(g, w2, offs=offs)
        try:
            t = _bench(ffn, reps=10)
        except Exception as exc:
            errors.append(f"moe tokens={tokens}: {exc!r}")
            return
        out.append({"graphed": _bench.graphed, "kind": "moe_grouped_ffn", "model": "mixtral-8x7b", "tokens": tokens,
                    "experts_touched": int((counts > 0).sum()), "time_s": t})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--only", default="", help="comma-separated subset: vit,sparse,int8,fp8,moe")
    args = parser.parse_args()
    props = torch.cuda.get_device_properties(0)
    meta = {"device": props.name, "sms": props.multi_processor_count, "torch": torch.__version__,
            "cuda": torch.version.cuda, "date": time.strftime("%Y-%m-%d"),
            "script": "experiments/validation/device/measure_extras.py"}
    rows: list = []
    errors: list = []
    torch.manual_seed(0)
    steps = {"vit": measure_vit, "sparse": measure_sparse, "int8": measure_int8, "fp8": measure_fp8,
             "moe": measure_moe}
    only = [n for n in args.only.split(",") if n] or list(steps)
    run_steps([(name, lambda f=steps[name]: f(rows, errors)) for name in only], meta, rows, errors, args.out)
    for r in rows:
        extra = f" dense {r['dense_time_s'] * 1e6:.1f} us" if "dense_time_s" in r else ""
        print(r["kind"], r.get("shape", ""), r.get("m", r.get("batch", r.get("tokens"))), f"{r['time_s'] * 1e6:.1f} us{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
