"""Validation of the cost model and the engine against the reference measurements.

`kernels` compares the cost model with the kernel-level families (gpt-fast, TensorRT-LLM, Vidur GEMM,
norm/activation and attention profiles, NCCL all-reduce, Splitwise); `fit_kernels` fits the constants
those families fix; `vllm_runs` replays the real vLLM serving runs and checks the KV capacity;
`fit_vllm` fits the Hopper constants, the vllm engine profile and the memory constants on them;
`ttft_mechanism` gathers the evidence on why TTFT is about 3 x ITL. The data they read is a copy of
../shared/reference kept in `data/` (see data/README.md); docs/VALIDATION.md holds their reports.
"""
