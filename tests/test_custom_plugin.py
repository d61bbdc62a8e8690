"""A scheduler registered from a user's own file, outside the package, runs through the normal runner.

The file is the one docs/how-to/add-policy.md shows (docs/examples/priority_scheduler.py), imported
from a scratch directory as a user would import it. It must register under its name, be selected by
``scheduler:`` in a config, change what it promises to change (urgent requests first), stay exact
(fast-forward == per-iteration timestamps) and not be allowed to take a name that is already taken.
"""
from __future__ import annotations

import copy
import importlib
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from experiments.runner import run
from sim.errors import ConfigError
from sim.registry import REGISTRY, register

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "priority_scheduler.py"

CONFIG = {
    "model": "llama-3.1-8b",
    "hardware": {"gpu": "h100"},
    "engine": {"max_num_seqs": 32},
    "sim": {"progress": False},
    "workload": {
        "type": "poisson",
        "stages": [{"rate": 12, "duration_s": 40}],
        "input_len": {"dist": "lognormal", "mean": 1500, "sigma": 0.5, "max": 4000},
        "output_len": {"dist": "lognormal", "mean": 300, "sigma": 0.5, "max": 1000},
        "classes": [{"tenant": "interactive", "priority": 0, "weight": 1},
                    {"tenant": "batch", "priority": 1, "weight": 3}],
    },
    "seed": 3,
}


@pytest.fixture()
def user_module(tmp_path, monkeypatch):
    """Import the example as `priority_scheduler` from a directory outside the package; unregister after."""
    shutil.copy(EXAMPLE, tmp_path / "priority_scheduler.py")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("priority_scheduler", None)
    module = importlib.import_module("priority_scheduler")
    yield module
    REGISTRY._specs["scheduler"].pop("priority", None)      # the registry has no public unregister
    sys.modules.pop("priority_scheduler", None)


def _median_ttft(cfg: dict, scheduler: str) -> dict[str, float]:
    result = run({**copy.deepcopy(cfg), "scheduler": scheduler})
    assert result.summary["requests"]["completed"] == result.summary["requests"]["total"] > 0
    assert result.summary["deployment"]["scheduler"] == scheduler
    return result.requests.groupby("tenant")["ttft_s"].median().to_dict()


def test_user_scheduler_registers_and_runs(user_module):
    assert "priority" in REGISTRY.names("scheduler")
    assert REGISTRY.get("scheduler", "priority") is user_module.PriorityScheduler

    fcfs = _median_ttft(CONFIG, "vllm")
    prio = _median_ttft(CONFIG, "priority")
    # the load queues requests; FCFS treats both classes alike, priority serves the urgent class first
    assert prio["interactive"] < 0.5 * fcfs["interactive"]
    assert prio["interactive"] < 0.5 * prio["batch"]
    assert prio["batch"] >= fcfs["batch"]


def test_user_scheduler_is_exact_in_fast_mode(user_module):
    cfg = copy.deepcopy(CONFIG)
    cfg["scheduler"] = "priority"
    cfg["workload"]["stages"] = [{"rate": 9, "duration_s": 15}]
    out = {}
    for mode in ("fast", "iteration"):
        c = copy.deepcopy(cfg)
        c["sim"]["mode"] = mode
        out[mode] = run(c).requests.sort_values("request_id").reset_index(drop=True)
    for col in ("first_scheduled_s", "first_token_s", "finish_s", "preemptions"):
        assert np.array_equal(out["fast"][col].values, out["iteration"][col].values), col


def test_user_plugin_cannot_take_a_registered_name(user_module):
    with pytest.raises(ConfigError, match="already registered"):
        register("scheduler", "vllm")(type("Impostor", (), {"__doc__": "Not vLLM."}))
    with pytest.raises(ConfigError, match="already registered"):
        register("scheduler", "priority")(type("Other", (), {"__doc__": "Another priority policy."}))


def test_unknown_scheduler_lists_the_registered_ones():
    with pytest.raises(ConfigError, match="unknown scheduler 'no-such-policy'; choose one of: .*vllm"):
        run({**copy.deepcopy(CONFIG), "scheduler": "no-such-policy"})
