"""What a recipe does around its loop: the run directory, logging and the printed and saved
config; the synthetic demo data; sizing the schedule; the lockstep epoch iterator."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from streamfit.config import ConfigError, save_config, to_yaml
from streamfit.data import DataConfig
from streamfit.data.shards import count_shard, expand_shards, is_local
from streamfit.data.synthetic import write_synthetic_dataset
from streamfit.report import setup_logging
from streamfit.train.config import (
    AdaptConfig,
    RGBPretrainConfig,
    RunConfig,
    SyntheticConfig,
    check_inputs,
)
from streamfit.train.distributed import all_have, barrier, init_distributed

logger = logging.getLogger("streamfit.train")


def begin(cfg: RGBPretrainConfig | AdaptConfig) -> tuple[int, int, torch.device, Path]:
    """A recipe's first steps: join the process group, make the run directory (printing and
    saving the config), write the demo data when asked, and stop early on a missing input.
    Returns (rank, world size, device, run directory)."""
    rank, world, device = init_distributed()
    if device.type == "cpu" and cfg.train.flush_denormal:
        torch.set_flush_denormal(True)
    run_dir = start_run(cfg.run, cfg, rank)
    ensure_data(cfg.data, cfg.synthetic, rank)
    check_inputs(cfg)
    return rank, world, device, run_dir


def start_run(run: RunConfig, config: Any, rank: int) -> Path:
    """Create ``run.path``, set up logging (rank 0 at INFO, others at WARNING), print the
    resolved config and save it as ``config.yaml``. Returns the run directory."""
    path = run.path
    setup_logging(rank)
    if rank == 0:
        path.mkdir(parents=True, exist_ok=True)
        print(f"# resolved config of {path}\n{to_yaml(config)}", flush=True)
        save_config(config, path / "config.yaml")
    barrier()
    return path


def ensure_data(data: DataConfig, synthetic: SyntheticConfig, rank: int) -> None:
    """Write the synthetic dataset (rank 0; others wait) when ``data.shards`` matches nothing
    and ``synthetic.generate`` is on; otherwise a pattern matching nothing stops the run,
    naming ``data.shards``."""
    try:
        expand_shards(data.shards)
        return
    except FileNotFoundError:
        if not synthetic.generate:
            raise ConfigError(f"data.shards: no shards match {data.shards!r}") from None
    if rank == 0:
        start = time.perf_counter()
        logger.info("writing the synthetic dataset to %s", synthetic.dir)
        # the validation split's keyword only when one is asked for
        val = {"n_val": synthetic.n_val} if synthetic.n_val else {}
        write_synthetic_dataset(
            synthetic.dir,
            synthetic.n_train,
            synthetic.n_heldout,
            synthetic.image_size,
            synthetic.shard_size,
            synthetic.seed,
            **val,
        )
        logger.info("synthetic dataset written in %.1f s", time.perf_counter() - start)
    barrier()
    try:
        expand_shards(data.shards)
    except FileNotFoundError:
        raise ConfigError(
            f"data.shards: {data.shards!r} matches nothing even after writing the synthetic "
            f"dataset to {synthetic.dir}"
        ) from None


def count_samples(pattern: str) -> int:
    """Usable samples in the local shards of ``pattern``, judged as the loader judges them
    (:func:`streamfit.data.shards.count_shard`: tar headers and captions, no image bytes);
    skipped shards and samples are logged by reason. Zero is an error naming the pattern."""
    total = 0
    skipped: Counter[str] = Counter()
    shards = expand_shards(pattern)
    for shard in shards:
        if not is_local(shard):
            raise ConfigError(
                "train.samples_per_epoch: remote shards cannot be counted; set it "
                "(DataComp small: 12800000 minus the samples your download missed)"
            )
        samples, problems = count_shard(shard)
        total += samples
        skipped += problems
    if skipped:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(skipped.items()))
        logger.warning("counting %s: %d usable samples; skipped %s", pattern, total, reasons)
    if not total:
        raise ConfigError(
            f"data.shards {pattern!r} matched {len(shards)} ({', '.join(shards[:3])}"
            f"{', ...' if len(shards) > 3 else ''}) but holds no usable sample "
            f"(skipped {dict(skipped) or 'nothing'})"
        )
    return total


def scheduled_steps(samples: int, epochs: int, batch: int, grad_accum: int, world: int) -> int:
    """Optimiser steps of the whole run (each rank reads about ``samples / world`` a epoch)."""
    micro = -(-samples // (world * batch))
    return epochs * max(1, -(-micro // grad_accum))


def lockstep(loader: Any, device: torch.device) -> Iterator[tuple[dict, float]]:
    """``(batch, seconds waited for it)`` from one epoch of ``loader``, ending on every rank
    as soon as one rank runs out (ranks may hold a batch more or less when shards split
    unevenly; the few samples left over on the others are logged)."""
    it = iter(loader)
    while True:
        start = time.perf_counter()
        batch = next(it, None)
        waited = time.perf_counter() - start
        if not all_have(batch is not None, device):
            if batch is not None:
                logger.warning(
                    "another rank finished the epoch first: %d samples of this rank's last "
                    "batch wait for the next epoch",
                    len(batch["keys"]),
                )
            return
        yield batch, waited
