"""A loader killed with SIGKILL mid-epoch resumes from its last saved state with exactly the
samples it had not yielded yet (one rank of two, in a subprocess)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from streamfit.data import DataConfig, build_loader
from streamfit.data.synthetic import write_split
from streamfit.fit import FitConfig

TRAINER = textwrap.dedent(
    """
    import json, os, sys, time
    from streamfit.data import DataConfig, build_loader
    from streamfit.fit import FitConfig
    data = DataConfig(**json.loads(sys.argv[1]))
    loader = build_loader(data, FitConfig(gaussians=4, iters=2, backend="torch", device="cpu"),
                          rank=int(sys.argv[3]), world_size=2)
    out = sys.argv[2]
    for batch in loader:
        with open(out + ".log", "a") as f:
            f.write(json.dumps(batch["keys"]) + "\\n")
        # a checkpoint: the last batch's keys and the loader state, replaced atomically
        with open(out + ".tmp", "w") as f:
            json.dump({"keys": batch["keys"], "state": loader.state_dict()}, f)
        os.replace(out + ".tmp", out)
        time.sleep(0.2)
    """
)


def test_sigkill_mid_epoch_then_resume(tmp_path: Path) -> None:
    shards = write_split(tmp_path / "shards", "train", 40, image_size=12, shard_size=9, seed=0)
    data = {
        "shards": shards,
        "image_size": 8,
        "batch_size": 3,
        "shuffle_buffer": 6,
        "log_every": 0,
        "cache_dir": str(tmp_path / "cache"),
    }
    fit_cfg = FitConfig(gaussians=4, iters=2, backend="torch", device="cpu")
    # rank 1 of 2: the other rank's resume is exercised in-process in test_data_loader.py
    for rank in [1]:
        full = [
            k
            for b in build_loader(DataConfig(**data), fit_cfg, rank=rank, world_size=2)
            for k in b["keys"]
        ]
        ckpt = tmp_path / f"rank{rank}.json"
        proc = subprocess.Popen(
            [sys.executable, "-c", TRAINER, json.dumps(data), str(ckpt), str(rank)]
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            log = ckpt.with_suffix(".json.log")
            if log.exists() and len(log.read_text().splitlines()) >= 3:
                break
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        saved = json.loads(ckpt.read_text())
        # the batches yielded up to the checkpoint, as logged by the killed run
        lines = [
            json.loads(line) for line in ckpt.with_suffix(".json.log").read_text().splitlines()
        ]
        upto = next(i for i, keys in enumerate(lines) if keys == saved["keys"])
        head = [k for keys in lines[: upto + 1] for k in keys]
        assert 0 < len(head) < len(full)
        resumed = build_loader(DataConfig(**data), fit_cfg, rank=rank, world_size=2)
        resumed.load_state_dict(saved["state"])
        rest = [k for b in resumed for k in b["keys"]]
        assert head + rest == full
