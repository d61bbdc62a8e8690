"""Benchmarks of the simulator itself: `python -m experiments.benchmarks.bench_engine` writes docs/PERFORMANCE.md."""
