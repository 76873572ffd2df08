"""Leaving the process group at a program's end: after :func:`shutdown` no gloo or store
thread of the run's groups is left for the interpreter's teardown (one left there can abort
the process as it ends, "terminate called without an active exception", after the run's
work is done). In a child process: the group is the process's own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")

CHILD = """
import json, os, torch
from streamfit.train.config import TrainConfig
from streamfit.train.distributed import init_distributed, shutdown
from streamfit.train.engine import build_engine

def native_threads():
    names = []
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/comm") as f:
            names.append(f.read().strip())
    return names

def train_a_step():
    # a run as a program makes it: its engine and model go with the function's end
    _, world, device = init_distributed()
    model = torch.nn.Linear(4, 4)
    groups = [{"name": "all", "params": list(model.parameters()), "lr": 1e-3, "weight_decay": 0.0}]
    engine, _ = build_engine(model, groups, TrainConfig(precision="fp32"), 2, world, 4, device)
    engine.backward(engine(torch.rand(2, 4)).sum())
    engine.step()
    return native_threads()

before = train_a_step()
shutdown()
print(json.dumps({"before": before, "after": native_threads()}))
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux's /proc")
def test_shutdown_leaves_no_thread_of_the_groups_to_the_teardown():
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    run = subprocess.run(
        [sys.executable, "-c", CHILD], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    threads = json.loads(run.stdout.strip().splitlines()[-1])

    def of_groups(names: list[str]) -> list[str]:
        return [n for n in names if "gloo" in n or "tcpstore" in n]

    assert of_groups(threads["before"])  # the check sees the groups' threads
    assert of_groups(threads["after"]) == []
