"""What a recipe does around its loop: the run directory, logging and the printed and saved
config; the synthetic demo data; sizing the schedule; the lockstep epoch iterator; zero-shot
evaluation of the model being trained; the end-of-run summary."""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from streamfit.config import ConfigError, save_config, to_yaml
from streamfit.data import DataConfig
from streamfit.data.shards import count_shard, expand_shards, is_local
from streamfit.data.synthetic import write_synthetic_dataset
from streamfit.eval import ZeroShotTally, build_classifier, load_classnames, load_templates
from streamfit.eval.zeroshot import ZeroShotResult
from streamfit.fit import FitBackend, FitConfig
from streamfit.splats import compression_ratio
from streamfit.train.config import EvalConfig, RunConfig, SyntheticConfig
from streamfit.train.distributed import all_have, all_sum, barrier
from streamfit.train.labelled import LabelledBatch, LabelledLoader

logger = logging.getLogger("streamfit.train")


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


def setup_logging(rank: int) -> None:
    """Log lines to stdout with time and rank; streamfit's INFO lines on rank 0 only, and
    other libraries' (open_clip logs every model build through the root logger) from WARNING."""
    logging.basicConfig(
        level=logging.WARNING,
        format=f"%(asctime)s [rank {rank}] %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stdout,
        force=True,
    )
    logging.getLogger("streamfit").setLevel(logging.INFO if rank == 0 else logging.WARNING)


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
        write_synthetic_dataset(
            synthetic.dir,
            synthetic.n_train,
            synthetic.n_heldout,
            synthetic.image_size,
            synthetic.shard_size,
            synthetic.seed,
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


@dataclass
class ZeroShotSetup:
    """A labelled split, its class names and templates, resolved from :class:`EvalConfig`."""

    cfg: EvalConfig
    classnames: list[str]
    templates: list[Callable[[str], str]]


def zero_shot_setup(cfg: EvalConfig) -> ZeroShotSetup | None:
    if not cfg.data:
        return None
    return ZeroShotSetup(
        cfg, load_classnames(cfg.classnames), load_templates(cfg.templates, cfg.classnames)
    )


@torch.no_grad()
def zero_shot(
    model: torch.nn.Module,
    encode: Callable[[LabelledBatch], torch.Tensor],
    setup: ZeroShotSetup,
    data_cfg: DataConfig,
    device: torch.device,
    rank: int,
    world_size: int,
    fit_cfg: FitConfig | None = None,
    backend: FitBackend | None = None,
) -> tuple[ZeroShotResult, dict[str, float]]:
    """Zero-shot accuracy of ``model`` on ``setup``'s split, over all ranks.

    ``encode(batch)`` gives ``[B, D]`` normalised image features (from ``batch.rgb`` or
    ``batch.splats``); pass ``fit_cfg`` for GS models. Returns (result, extras: seconds,
    splats per image and compression ratio for GS, cache hits).
    """
    start = time.perf_counter()
    was_training = model.training
    model.eval()
    classifier = build_classifier(
        model,
        data_cfg.tokenizer,
        data_cfg.context_length,
        setup.classnames,
        setup.templates,
        device,
    )
    tally = ZeroShotTally(setup.classnames)
    loader = LabelledLoader(
        setup.cfg.data,
        data_cfg,
        setup.cfg.batch_size,
        device,
        fit_cfg,
        backend,
        rank,
        world_size,
        setup.cfg.max_samples,
    )
    # samples, splats, hits, lookups
    counts = torch.zeros(4, dtype=torch.float64)
    for batch in loader:
        tally.add(encode(batch), classifier, batch.labels)
        counts[0] += len(batch.keys)
        if batch.splats is not None:
            counts[1] += float(batch.splats.mask.sum())
            counts[2] += batch.hits
            counts[3] += batch.hits + batch.fitted
    tally.sum_over(all_sum)
    all_sum(counts)
    model.train(was_training)
    extras = {"seconds": time.perf_counter() - start}
    if fit_cfg is not None and counts[1] > 0:
        per_image = float(counts[1] / counts[0])
        extras["splats_per_image"] = per_image
        extras["compression_ratio"] = compression_ratio(
            data_cfg.image_size, data_cfg.image_size, per_image
        )
        extras["cache_hit_rate"] = float(counts[2] / counts[3]) if counts[3] else float("nan")
    return tally.result(), extras
