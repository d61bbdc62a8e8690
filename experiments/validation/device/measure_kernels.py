"""Measure the kernels the cost model prices, on a real GPU, with PyTorch (run on a lent GPU machine only).

Why: the calibration references in ``../shared/reference`` were measured by others on A100s; these timings
check the *shape* of the cost model (how GEMM time grows with rows, what weight-only int4 costs at M = 2..16,
how decode attention's achieved bandwidth depends on batch and context, what FlashAttention-style prefill
reaches) on the machine we were lent. They are a check, never a calibration target: no constant is fitted to
them (see docs/VALIDATION.md, "H100 kernel checks").

Nothing in servesim imports this file and the project never needs a GPU. Usage on the GPU machine::

    python3 experiments/validation/device/measure_kernels.py --out $OUT/h100_kernels.json

Every timing is the median of CUDA-event-timed repetitions after warm-up, rotating over several copies of
the inputs so that weights do not sit in L2 between repetitions (as in a real forward pass).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time

import torch
import torch.nn.functional as F


def _bench(fn, reps: int = 15, warmup: int = 3, inner: int = 20) -> float:
    """Median seconds of one call of `fn`: `inner` calls are captured in a CUDA graph and its replays are
    event-timed, so host dispatch (tens of microseconds for small kernels) stays out of the number."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    graph = None
    try:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                fn()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(inner):
                fn()
        run, per = graph.replay, inner
    except Exception:                       # not capturable: time batches of eager calls instead
        graph = None
        torch.cuda.synchronize()

        def run():
            for _ in range(inner):
                fn()
        per = inner
    run()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / per)
    _bench.graphed = graph is not None
    return statistics.median(times)


def _copies(make, total_bytes_wanted: float, one_bytes: float, cap: int = 8) -> list:
    """Enough copies of an input to rotate through more than the L2 cache."""
    n = max(1, min(cap, math.ceil(total_bytes_wanted / max(one_bytes, 1.0))))
    return [make() for _ in range(n)]


def _rotating(fn_of, items):
    state = {"i": 0}

    def call():
        item = items[state["i"] % len(items)]
        state["i"] += 1
        return fn_of(item)
    return call


ROWS = [1, 2, 3, 4, 5, 6, 8, 12, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192]
GEMM_SHAPES = {  # (K, N) of each linear layer, one GPU
    "llama3-8b.qkv": (4096, 6144), "llama3-8b.o": (4096, 4096),
    "llama3-8b.gate_up": (4096, 28672), "llama3-8b.down": (14336, 4096),
    "llama2-70b.qkv": (8192, 10240), "llama2-70b.down": (28672, 8192),
}


def measure_bandwidth(out: list) -> None:
    for mib in (64, 256, 1024, 4096):
        n = mib * 2**20 // 2
        a = torch.randn(n, device="cuda", dtype=torch.bfloat16)
        b = torch.empty_like(a)
        t = _bench(lambda: b.copy_(a), reps=20)
        out.append({"graphed": _bench.graphed, "kind": "copy", "bytes": 2 * a.numel() * 2, "time_s": t})
        del a, b
    torch.cuda.empty_cache()


def measure_gemm_bf16(out: list) -> None:
    for name, (k, n) in GEMM_SHAPES.items():
        weights = _copies(lambda: torch.randn(n, k, device="cuda", dtype=torch.bfloat16), 3e8, n * k * 2)
        for m in ROWS:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            t = _bench(_rotating(lambda w: F.linear(x, w), weights))
            out.append({"graphed": _bench.graphed, "kind": "gemm_bf16", "shape": name, "m": m, "k": k, "n": n, "time_s": t})
        del weights
        torch.cuda.empty_cache()


def _int4_pack(w: torch.Tensor, group: int):
    """Quantise an (n, k) bf16 weight to tinygemm's int4 layout, as gpt-fast does; returns (packed, scales)."""
    n, k = w.shape
    wg = w.float().reshape(n, k // group, group)
    lo, hi = wg.amin(-1, keepdim=True), wg.amax(-1, keepdim=True)
    scale = ((hi - lo).clamp(min=1e-6) / 15)
    zero = lo + scale * 8
    q = ((wg - lo) / scale).round().clamp(0, 15).to(torch.int32).reshape(n, k)
    sz = torch.cat([scale.reshape(n, k // group, 1), zero.reshape(n, k // group, 1)], -1)
    sz = sz.transpose(0, 1).contiguous().to(torch.bfloat16)  # (k/group, n, 2)
    try:
        packed_u8 = (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8)
        packed = torch.ops.aten._convert_weight_to_int4pack(packed_u8, 8)
    except Exception:  # older layout: int32 values
        packed = torch.ops.aten._convert_weight_to_int4pack(q, 8)
    return packed, sz


def measure_int4(out: list, errors: list) -> None:
    group = 128
    for name in ("llama2-70b.qkv", "llama2-70b.down", "llama3-8b.gate_up"):
        k, n = GEMM_SHAPES[name]
        try:
            packs = [_int4_pack(torch.randn(n, k, device="cuda", dtype=torch.bfloat16), group) for _ in range(4)]
        except Exception as exc:  # report and go on: the other families still count
            errors.append(f"int4 pack {name}: {exc!r}")
            return
        for m in [r for r in ROWS if r <= 256]:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            try:
                t = _bench(_rotating(lambda p: torch.ops.aten._weight_int4pack_mm(x, p[0], group, p[1]), packs))
            except Exception as exc:
                errors.append(f"int4 mm {name} m={m}: {exc!r}")
                return
            out.append({"graphed": _bench.graphed, "kind": "gemm_int4_tinygemm", "shape": name, "m": m, "k": k, "n": n, "time_s": t})
        del packs
        torch.cuda.empty_cache()


def measure_int8_compiled(out: list, errors: list) -> None:
    """gpt-fast's weight-only int8: F.linear(x, w.to(bf16)) * scales, fused by torch.compile."""
    def linear_int8(x, w, s):
        return F.linear(x, w.to(x.dtype)) * s

    try:
        torch._dynamo.config.recompile_limit = 64
        fn = torch.compile(linear_int8, dynamic=False)
    except Exception as exc:
        errors.append(f"int8 compile: {exc!r}")
        return
    for name in ("llama2-70b.qkv", "llama3-8b.gate_up"):
        k, n = GEMM_SHAPES[name]
        ws = [(torch.randint(-127, 127, (n, k), device="cuda", dtype=torch.int8),
               torch.rand(n, device="cuda", dtype=torch.bfloat16)) for _ in range(4)]
        for m in (1, 2, 4, 5, 8, 16):
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            try:
                t = _bench(_rotating(lambda p: fn(x, p[0], p[1]), ws), reps=20, warmup=3)
            except Exception as exc:
                errors.append(f"int8 {name} m={m}: {exc!r}")
                return
            out.append({"graphed": _bench.graphed, "kind": "gemm_int8_compiled", "shape": name, "m": m, "k": k, "n": n, "time_s": t})
        del ws
        torch.cuda.empty_cache()


def _sdpa(backend):
    from torch.nn.attention import sdpa_kernel

    def run(q, k, v, causal):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
    return run


def measure_attention(out: list, errors: list) -> None:
    from torch.nn.attention import SDPBackend
    heads, kv_heads, dim = 32, 8, 128  # Llama-3.1-8B, one GPU
    backends = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                "math": SDPBackend.MATH}
    for label, backend in backends.items():
        run = _sdpa(backend)
        for length in (128, 512, 1024, 2048, 4096, 8192, 16384):
            if label == "math" and length > 4096:
                continue
            q = torch.randn(1, heads, length, dim, device="cuda", dtype=torch.bfloat16)
            k = torch.randn(1, kv_heads, length, dim, device="cuda", dtype=torch.bfloat16)
            v = torch.randn_like(k)
            try:
                t = _bench(lambda: run(q, k, v, True), reps=20)
            except Exception as exc:
                errors.append(f"prefill {label} L={length}: {exc!r}")
                break
            out.append({"graphed": _bench.graphed, "kind": "attn_prefill", "backend": label, "batch": 1, "length": length,
                        "heads": heads, "kv_heads": kv_heads, "dim": dim, "time_s": t})
    for label in ("flash", "efficient"):
        run = _sdpa(backends[label])
        for context in (512, 2048, 8192, 32768, 131072):
            for batch in (1, 2, 4, 8, 16, 32, 64, 128, 256):
                kv_bytes = 2 * batch * kv_heads * context * dim * 2
                if kv_bytes > 12e9:
                    continue
                q = torch.randn(batch, heads, 1, dim, device="cuda", dtype=torch.bfloat16)
                kvs = _copies(lambda: tuple(torch.randn(batch, kv_heads, context, dim, device="cuda",
                                                        dtype=torch.bfloat16) for _ in range(2)),
                              2e8, kv_bytes, cap=3)
                try:
                    t = _bench(_rotating(lambda kv: run(q, kv[0], kv[1], False), kvs), reps=20)
                except Exception as exc:
                    errors.append(f"decode {label} B={batch} C={context}: {exc!r}")
                    break
                out.append({"graphed": _bench.graphed, "kind": "attn_decode", "backend": label, "batch": batch, "context": context,
                            "heads": heads, "kv_heads": kv_heads, "dim": dim, "kv_bytes": kv_bytes, "time_s": t})
                del kvs
            torch.cuda.empty_cache()


def run_steps(steps: list, meta: dict, rows: list, errors: list, out: str) -> None:
    """Run each (name, step) in turn; a failing family is recorded and the others go on. The JSON is rewritten
    after every step, so a run cut short by the machine's time limit still returns what it measured."""
    for name, step in steps:
        t0 = time.time()
        try:
            step()
        except Exception as exc:
            errors.append(f"{name}: {exc!r}")
        print(f"{name}: {time.time() - t0:.1f} s", flush=True)
        with open(out, "w") as fh:
            json.dump({"meta": meta, "rows": rows, "errors": errors}, fh)
    print(json.dumps(meta))
    for e in errors:
        print("ERROR", e)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--skip", default="", help="comma-separated families to skip")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    props = torch.cuda.get_device_properties(0)
    meta = {"device": props.name, "sms": props.multi_processor_count, "memory_bytes": props.total_memory,
            "torch": torch.__version__, "cuda": torch.version.cuda,
            "date": time.strftime("%Y-%m-%d"), "script": "experiments/validation/device/measure_kernels.py"}
    rows: list = []
    errors: list = []
    torch.manual_seed(0)
    steps = [("bandwidth", lambda: measure_bandwidth(rows)), ("gemm_bf16", lambda: measure_gemm_bf16(rows)),
             ("int4", lambda: measure_int4(rows, errors)), ("attention", lambda: measure_attention(rows, errors)),
             ("int8", lambda: measure_int8_compiled(rows, errors))]
    run_steps([(name, step) for name, step in steps if name not in skip], meta, rows, errors, args.out)
    for r in rows:
        if r["kind"] in ("gemm_int4_tinygemm", "copy") or (r["kind"] == "gemm_bf16" and r["m"] in (1, 5, 16, 4096)):
            print(r["kind"], r.get("shape", ""), r.get("m", r.get("bytes")), f"{r['time_s'] * 1e6:.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
