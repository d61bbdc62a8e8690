"""Validation of the cost model and the engine against the reference measurements.

`kernels` compares the cost model with six families of kernel-level measurements (gpt-fast, TensorRT-LLM,
Vidur GEMM and attention profiles, NCCL all-reduce, Splitwise); `fit_kernels` fits the constants those
families fix; `vllm_runs` replays the real vLLM serving runs. The data they read is a copy of
../shared/reference kept in `data/` (see data/README.md); docs/VALIDATION.md holds their reports.
"""
