#!/usr/bin/env python
"""Run the streaming data graph for some epochs and report, per epoch: samples yielded,
samples skipped (by reason), cache hits and misses, wall seconds, and where the time went
(waiting for decoded data vs fitting).

    python tools/benchmark_loader.py --shards '../shared/data/imagenet-sample/train-{000000..000003}.tar' \\
        --epochs 2 --backend cpu --gaussians 64 --iters 50 --image-size 64 --cache runs/cache \\
        --json runs/bench_loader.json
    python tools/benchmark_loader.py --config data.yaml data.decode_workers=4 fit.lr_color=0.03
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from streamfit.config import ConfigError, load_config, to_yaml
from streamfit.data import DataConfig, EmptyEpoch, build_loader
from streamfit.fit import BACKENDS, FitConfig
from streamfit.report import write_json


@dataclass
class BenchConfig:
    data: DataConfig = field(default_factory=DataConfig)
    fit: FitConfig = field(default_factory=FitConfig)


FLAGS = {  # flag -> config key
    "shards": "data.shards",
    "cache": "data.cache_dir",
    "image_size": "data.image_size",
    "batch_size": "data.batch_size",
    "decode_workers": "data.decode_workers",
    "backend": "fit.backend",
    "device": "fit.device",
    "gaussians": "fit.gaussians",
    "iters": "fit.iters",
}


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, BenchConfig]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("overrides", nargs="*", help="key=value config overrides (data.*, fit.*)")
    parser.add_argument("--config", help="YAML file with data: and fit: sections")
    parser.add_argument(
        "--shards", help="shard pattern (brace expansion, ::-separated lists, URLs)"
    )
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--cache", help="splat cache directory (default: no cache)")
    parser.add_argument("--backend", choices=("auto", *BACKENDS))
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--gaussians", type=int)
    parser.add_argument("--iters", type=int)
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--decode-workers", type=int)
    parser.add_argument("--rank", type=int, default=0)
    parser.add_argument("--world-size", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--log-batches", action="store_true", help="log every batch's timing")
    args = parser.parse_args(argv)
    overrides = [
        f"{key}={getattr(args, flag)}"
        for flag, key in FLAGS.items()
        if getattr(args, flag) is not None
    ]
    try:
        cfg = load_config(BenchConfig, args.config, [*overrides, *args.overrides])
    except (ConfigError, ValueError) as err:
        parser.error(str(err))
    if not cfg.data.shards:
        parser.error("no shards: give --shards or data.shards")
    if not args.log_batches:
        cfg.data.log_every = 0
    return args, cfg


def run(args: argparse.Namespace, cfg: BenchConfig) -> list[dict]:
    loader = build_loader(cfg.data, cfg.fit, rank=args.rank, world_size=args.world_size)
    results = []
    for epoch in range(args.epochs):
        with tqdm(desc=f"epoch {epoch}", unit="sample", leave=False) as progress:
            for batch in loader:
                progress.update(len(batch["keys"]))
        stats = loader.epoch_stats(epoch)
        row = stats.to_dict()
        row["samples_per_s"] = stats.samples / stats.seconds if stats.seconds else 0.0
        row["cache_hit_rate"] = row.pop("hit_rate")
        results.append(row)
    return results


def table(results: list[dict]) -> str:
    head = (
        f"{'epoch':>5} {'samples':>8} {'skipped':>8} {'hits':>7} {'misses':>7} {'hit%':>6} "
        f"{'seconds':>9} {'smp/s':>8} {'fit s':>8} {'wait s':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        hit = r["cache_hit_rate"]
        lines.append(
            f"{r['epoch']:>5} {r['samples']:>8} {sum(r['skipped'].values()):>8} {r['cache_hits']:>7} "
            f"{r['cache_misses']:>7} {'-' if hit != hit else f'{100 * hit:.0f}':>6} "
            f"{r['seconds']:>9.2f} {r['samples_per_s']:>8.1f} {r['fit_seconds']:>8.2f} "
            f"{r['data_wait_seconds']:>8.2f}"
        )
    for r in results:
        if r["skipped"]:
            reasons = ", ".join(f"{k}: {v}" for k, v in sorted(r["skipped"].items()))
            lines.append(f"epoch {r['epoch']} skipped: {reasons}")
    if len(results) > 1 and results[-1]["seconds"]:
        lines.append(
            f"epoch 0 / epoch {results[-1]['epoch']} time: {results[0]['seconds'] / results[-1]['seconds']:.1f}x"
        )
    lines.append("fit s: fitting cache misses; wait s: the fit node waiting for decoded samples")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    args, cfg = parse_args(argv)
    print(to_yaml(cfg))
    start = time.strftime("%Y-%m-%d %H:%M:%S")
    try:
        results = run(args, cfg)
    except (FileNotFoundError, EmptyEpoch) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(table(results))
    if args.json:
        report = {
            "epochs": results,
            "config": json.loads(json.dumps(cfg, default=lambda o: o.__dict__)),
            "machine": {
                "platform": platform.platform(),
                "processor": platform.processor(),
                "cpus": os.cpu_count(),
                "torch_threads": torch.get_num_threads(),
                "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            },
            "started": start,
            "command": " ".join(sys.argv),
        }
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
