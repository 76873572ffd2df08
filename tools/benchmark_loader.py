#!/usr/bin/env python
"""Run the streaming data graph for some epochs and report, per epoch: samples yielded,
samples skipped (by reason), cache hits and misses, wall seconds, and where the time went
(waiting for decoded data vs fitting).

With ``--nodes K`` it simulates a multi-node run in one process: the loaders of all
``--world-size W`` ranks (rank ``r`` on node ``r // (W/K)``, one splat cache directory per
node under ``--cache``: ``node000``, ``node001``, ...) read each epoch one after the other (no
training), and each epoch's row sums the ranks' counts (``seconds`` too), checks that every
sample came exactly once (``distinct``, ``duplicates``) and lists the ranks under ``ranks``.
Compare the schedules with ``--schedule node`` (the default for several nodes) and
``--schedule global``.

    python tools/benchmark_loader.py --shards '../shared/data/imagenet-sample/train-{000000..000003}.tar' \\
        --epochs 2 --backend cpu --gaussians 64 --iters 50 --image-size 64 --cache runs/cache \\
        --json runs/bench_loader.json
    python tools/benchmark_loader.py --shards '../shared/data/imagenet-sample/train-{000000..000003}.tar' \
        --world-size 8 --nodes 4 --epochs 2 --backend cpu --gaussians 16 --iters 5 --image-size 64 \
        --cache runs/cache_4nodes --json runs/bench_loader_4nodes.json
    python tools/benchmark_loader.py --config data.yaml data.decode_workers=4 fit.lr_color=0.03
"""

from __future__ import annotations

import streamfit.openmp  # noqa: F401 (first: before torch loads its OpenMP runtime)

# isort: split

import argparse
import json
import os
import platform
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from streamfit.cli import add_loader_flags, parse_tool_args, tool_parser
from streamfit.config import to_yaml
from streamfit.data import EmptyEpoch, LoaderRunConfig, build_loader
from streamfit.report import format_table, write_json


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, LoaderRunConfig]:
    parser = tool_parser(__doc__, LoaderRunConfig)
    flags = add_loader_flags(parser, "shard pattern (brace expansion, ::-separated lists, URLs)")
    flags.update(decode_workers="data.decode_workers", schedule="data.schedule")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--decode-workers", type=int)
    parser.add_argument("--rank", type=int, default=0)
    parser.add_argument("--world-size", type=int, default=1)
    parser.add_argument(
        "--nodes", type=int, help="simulate all --world-size ranks on this many nodes"
    )
    parser.add_argument("--schedule", choices=("auto", "node", "global"))
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--log-batches", action="store_true", help="log every batch's timing")
    args, cfg = parse_tool_args(parser, LoaderRunConfig, argv, flags=flags)
    if not cfg.data.shards:
        parser.error("no shards: give --shards or data.shards")
    if not args.log_batches:
        cfg.data.log_every = 0
    if args.world_size < 1 or not 0 <= args.rank < args.world_size:
        parser.error(f"--rank {args.rank} outside --world-size {args.world_size}")
    if args.nodes is not None:
        if args.nodes < 1 or args.world_size % args.nodes:
            parser.error(
                f"--nodes {args.nodes} must divide --world-size {args.world_size} "
                "(ranks r live on node r // (world_size / nodes))"
            )
        if not cfg.data.cache_dir:
            parser.error("--nodes needs --cache (one cache directory per node is made in it)")
    return args, cfg


def rank_loaders(args: argparse.Namespace, cfg: LoaderRunConfig) -> list:
    """The loaders of the simulated ranks: all of them, each node's on its own cache
    directory, with ``--nodes``; else only ``--rank``."""
    if args.nodes is None:
        return [build_loader(cfg.data, cfg.fit, rank=args.rank, world_size=args.world_size)]
    per_node = args.world_size // args.nodes
    loaders = []
    for rank in range(args.world_size):
        cache = str(Path(cfg.data.cache_dir) / f"node{rank // per_node:03d}")
        data = replace(cfg.data, cache_dir=cache, ranks_per_node=per_node)
        loaders.append(build_loader(data, cfg.fit, rank=rank, world_size=args.world_size))
    return loaders


def run(args: argparse.Namespace, cfg: LoaderRunConfig) -> list[dict]:
    loaders = rank_loaders(args, cfg)
    results = []
    for epoch in range(args.epochs):
        seen: Counter[str] = Counter()
        rows = []
        with tqdm(desc=f"epoch {epoch}", unit="sample", leave=False) as progress:
            for loader in loaders:
                for batch in loader:
                    seen.update(
                        f"{s}/{k}" for s, k in zip(batch["shards"], batch["keys"], strict=True)
                    )
                    progress.update(len(batch["keys"]))
                row = loader.epoch_stats(epoch).to_dict()
                row["rank"] = loader.reader.rank
                rows.append(row)
        results.append(epoch_row(epoch, rows, seen))
    return results


def epoch_row(epoch: int, rows: list[dict], seen: Counter[str]) -> dict:
    """One epoch: the ranks' counts summed (skips by reason), the exactly-once check over the
    sample ids (shard/key) yielded, and the per-rank rows when there are several."""
    row: dict = {"epoch": epoch, "skipped": {}}
    for r in rows:
        for name, value in r.items():
            if name == "skipped":
                for reason, n in value.items():
                    row["skipped"][reason] = row["skipped"].get(reason, 0) + n
            elif isinstance(value, (int, float)) and name not in ("epoch", "rank", "hit_rate"):
                row[name] = row.get(name, 0) + value
    row["complete"] = all(r["complete"] for r in rows)
    looked_up = row["cache_hits"] + row["cache_misses"]
    row["cache_hit_rate"] = row["cache_hits"] / looked_up if looked_up else float("nan")
    row["samples_per_s"] = row["samples"] / row["seconds"] if row["seconds"] else 0.0
    row["distinct"] = len(seen)
    row["duplicates"] = sum(n - 1 for n in seen.values())
    if len(rows) > 1:
        row["ranks"] = rows
    return row


def table(results: list[dict]) -> str:
    header = ["epoch", "samples", "skipped", "hits", "misses", "hit%", "seconds", "smp/s"]
    header += ["fit s", "wait s"]
    rows = [
        [
            r["epoch"], r["samples"], sum(r["skipped"].values()), r["cache_hits"],
            r["cache_misses"], 100 * r["cache_hit_rate"], r["seconds"], r["samples_per_s"],
            r["fit_seconds"], r["data_wait_seconds"],
        ]
        for r in results
    ]  # fmt: skip
    formats = ["", "", "", "", "", ".0f", ".2f", ".1f", ".2f", ".2f"]
    lines = [format_table(header, rows, formats)]
    for r in results:
        if r["skipped"]:
            reasons = ", ".join(f"{k}: {v}" for k, v in sorted(r["skipped"].items()))
            lines.append(f"epoch {r['epoch']} skipped: {reasons}")
    if len(results) > 1 and results[-1]["seconds"]:
        lines.append(
            f"epoch 0 / epoch {results[-1]['epoch']} time: {results[0]['seconds'] / results[-1]['seconds']:.1f}x"
        )
    for r in results:
        if r["duplicates"]:
            lines.append(f"epoch {r['epoch']}: {r['duplicates']} samples came more than once")
    lines.append("fit s: fitting cache misses; wait s: the fit node waiting for decoded samples")
    if "ranks" in results[0]:
        lines.append(f"sums over {len(results[0]['ranks'])} ranks read one after the other")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args, cfg = parse_args(argv)
    print(to_yaml(cfg))
    start = time.strftime("%Y-%m-%d %H:%M:%S")
    try:
        results = run(args, cfg)
    except (FileNotFoundError, EmptyEpoch) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except ValueError as err:  # a layout the schedule refuses (e.g. more nodes than shards)
        print(f"error: {err}", file=sys.stderr)
        return 2
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
