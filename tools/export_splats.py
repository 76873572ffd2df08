#!/usr/bin/env python
"""Write fitted splats out as splat shards (``<key>.splats`` + ``<key>.txt`` + ``<key>.json``),
for those who want to keep a precomputed corpus: the loader reads such shards directly,
without fitting.

Walks the source shards in order, takes each sample's splats from the splat cache (fitting
the ones it lacks with ``--fit-missing``, else skipping them as ``not_cached``) and writes
them with the caption and metadata. ``.splats`` holds the splat blob in ``data.splat_format``
(:mod:`streamfit.codec`: ``q64`` by default, 8 bytes a splat; ``fp16`` 16), the very bytes the
cache holds; the ``.json`` gains
``"splats": {"height", "width", "count", "format", "fit_settings", "cache_settings"}``.

    python tools/export_splats.py --shards 'shards/{000000..000127}.tar' --cache runs/cache \\
        --image-size 224 --gaussians 400 --iters 16 --out splat_shards/ --json export.json
    python tools/export_splats.py ... data.splat_format=fp16     # 16 bytes a splat
"""

from __future__ import annotations

import streamfit.openmp  # noqa: F401 (first: before torch loads its OpenMP runtime)

# isort: split

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from tqdm.auto import tqdm

from streamfit import codec
from streamfit.cli import add_loader_flags, parse_tool_args, tool_parser
from streamfit.config import to_yaml
from streamfit.data import EmptyEpoch, LoaderRunConfig, build_loader, cache_settings
from streamfit.data.writer import ShardWriter, shard_pattern
from streamfit.report import print_key_values, write_json


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, LoaderRunConfig]:
    parser = tool_parser(__doc__, LoaderRunConfig)
    flags = add_loader_flags(parser, "source shard pattern")
    parser.add_argument("--out", type=Path, required=True, help="folder for the splat shards")
    parser.add_argument("--prefix", default="splats", help="shard names: PREFIX-000000.tar")
    parser.add_argument("--shard-size", type=int, default=1000, help="samples per splat shard")
    parser.add_argument("--fit-missing", action="store_true", help="fit samples the cache lacks")
    parser.add_argument("--json", type=Path, help="write the summary here")
    args, cfg = parse_tool_args(parser, LoaderRunConfig, argv, flags=flags)
    # file order, every sample, no pixels: an export is a plain pass over the shards
    cfg.data = replace(
        cfg.data, shuffle_shards=False, shuffle_buffer=1, yield_rgb=False, log_every=0
    )
    if not cfg.data.shards:
        parser.error("no shards: give --shards or data.shards")
    if not cfg.data.cache_dir and not args.fit_missing:
        parser.error("no cache to export from: give --cache, or --fit-missing to fit everything")
    return args, cfg


def export(args: argparse.Namespace, cfg: LoaderRunConfig) -> dict:
    loader = build_loader(cfg.data, cfg.fit, fit_misses=args.fit_missing)
    settings = {
        "format": cfg.data.splat_format,
        "fit_settings": cfg.fit.settings_hash(),
        "cache_settings": cache_settings(cfg.data, cfg.fit),
    }
    size = cfg.data.image_size
    with ShardWriter(args.out, prefix=args.prefix, shard_size=args.shard_size) as writer:
        for batch in tqdm(loader, desc="export", unit="batch"):
            splats = batch["splats"]
            counts = splats.counts().tolist()
            # the batch holds decoded blobs: encoding them again gives the same bytes
            blobs = codec.encode(cfg.data.splat_format, splats)
            for b, key in enumerate(batch["keys"]):
                meta = {
                    **batch["json"][b],
                    "splats": {"height": size, "width": size, "count": counts[b], **settings},
                }
                writer.write(
                    key,
                    {
                        "splats": blobs[b],
                        "txt": batch["captions"][b].encode(),
                        "json": json.dumps(meta).encode(),
                    },
                )
    stats = loader.epoch_stats(0)
    return {
        "shards": shard_pattern(writer.paths) if writer.paths else "",
        "n_shards": len(writer.paths),
        "exported": writer.samples,
        "from_cache": stats.cache_hits,
        "fitted": stats.cache_misses if args.fit_missing else 0,
        "skipped": dict(stats.skipped),
        "seconds": stats.seconds,
    }


def main(argv: list[str] | None = None) -> int:
    args, cfg = parse_args(argv)
    print(to_yaml(cfg))
    try:
        summary = export(args, cfg)
    except (FileNotFoundError, EmptyEpoch) as err:  # e.g. nothing cached and no --fit-missing
        print(f"error: {err}", file=sys.stderr)
        return 1
    print_key_values(summary)
    if args.json:
        write_json(args.json, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
