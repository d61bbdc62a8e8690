"""servesim's Python API in one place.

For example:

    import servesim
    result = servesim.run("experiments/examples/quickstart.yaml", ["engine.max_num_seqs=64"])
    result.summary["ttft_s"]["p99"]; result.requests        # dict, pandas DataFrame
    est = servesim.estimate("llama-3.1-8b", "h100", batch=32, context=1024)
    est.latency_s, est.breakdown
"""
from __future__ import annotations

from experiments.config import RunConfig, load_config
from experiments.runner import RunResult, run
from sim.estimate import Estimate, estimate
from sim.hardware import get_gpu, list_gpus
from sim.models import get_model, list_models
from sim.registry import register

__all__ = ["run", "RunResult", "RunConfig", "load_config", "estimate", "Estimate", "get_gpu", "list_gpus",
           "get_model", "list_models", "register"]
__version__ = "0.1.0"
