#!/usr/bin/env python
"""Sweep the luminance pruning threshold: splats kept, compression and PSNR for each value.

Fits the same images once per threshold (and optional L1 weight) and prints a table; writes
``--json`` and a PNG plot (PSNR and compression ratio against the threshold).

    python tools/prune_sweep.py shards/train-000000.tar --limit 16 \
        --thresholds 0,0.02,0.05,0.1,0.2 --l1 0.005 --png runs/prune.png --json runs/prune.json

"ratio" is the set's compression: its pixel bytes (8-bit RGB) over its splat bytes (float16).
"""

from __future__ import annotations

import streamfit.openmp  # noqa: F401 (first: before torch loads its OpenMP runtime)

# isort: split

import sys
from dataclasses import replace
from pathlib import Path

from tqdm.auto import tqdm

from streamfit.benchmark import fit_in_batches
from streamfit.cli import parse_tool_args, tool_parser
from streamfit.config import to_yaml
from streamfit.data.local_images import load_images
from streamfit.fit import BACKENDS, FitConfig, get_backend
from streamfit.report import png_figure, print_table, write_json
from streamfit.splats import compression_ratio


def main(argv: list[str] | None = None) -> int:
    parser = tool_parser(__doc__, FitConfig)
    parser.add_argument("inputs", nargs="+", type=Path, help="images, folders or .tar shards")
    parser.add_argument("--thresholds", default="0,0.01,0.02,0.05,0.1")
    parser.add_argument("--l1", type=float, help="L1 colour weight when pruning (default 0)")
    parser.add_argument("--gaussians", type=int, help="default 400")
    parser.add_argument("--iters", type=int, help="default 200")
    parser.add_argument("--backend", choices=("auto", *BACKENDS), help="default auto")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--limit", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--png", type=Path)
    args, base = parse_tool_args(parser, FitConfig, argv, defaults=["iters=200"])
    thresholds = [float(t) for t in args.thresholds.split(",")]

    images = load_images(args.inputs, args.limit, args.size)
    if not len(images):
        print(f"error: no decodable images in {', '.join(map(str, args.inputs))}", file=sys.stderr)
        return 1
    print(to_yaml(base), end="", file=sys.stderr)
    backend = get_backend(base.backend, base.device)

    rows = []
    for threshold in tqdm(thresholds, desc="thresholds"):
        cfg = replace(base, prune_luminance=threshold, l1=base.l1 if threshold > 0 else 0.0)
        fits = fit_in_batches(images, cfg, backend, args.batch)
        psnrs, counts = fits["psnr"], fits["splats"]
        rows.append(
            {
                "prune_luminance": threshold,
                "l1": cfg.l1,
                "mean_psnr": sum(psnrs) / len(psnrs),
                "mean_splats": sum(counts) / len(counts),
                "pruned_fraction": 1.0 - sum(counts) / (len(counts) * cfg.gaussians),
                # total pixel bytes over total splat bytes, not a mean of per-image ratios
                "compression_ratio": compression_ratio(
                    args.size, args.size, sum(counts), len(counts)
                ),
                "images": len(psnrs),
            }
        )

    print()
    print_table(
        ["threshold", "l1", "PSNR dB", "splats", "pruned", "ratio"],
        [
            [
                r["prune_luminance"],
                r["l1"],
                r["mean_psnr"],
                r["mean_splats"],
                r["pruned_fraction"],
                r["compression_ratio"],
            ]
            for r in rows
        ],
        [".3f", ".3f", ".2f", ".1f", ".1%", ".2f"],
    )
    result = {
        "backend": backend.name,
        "gaussians": base.gaussians,
        "iters": base.iters,
        "size": args.size,
        "rows": rows,
    }
    if args.json:
        write_json(args.json, result)
    if args.png:
        plot(rows, args.png)
    return 0


def plot(rows: list[dict], path: Path) -> None:
    with png_figure(path, size=(5, 3.2), grid=None) as ax:
        xs = [r["pruned_fraction"] * 100 for r in rows]
        ax.plot(xs, [r["mean_psnr"] for r in rows], "o-", color="tab:blue")
        for r, x in zip(rows, xs, strict=True):
            ax.annotate(f"T={r['prune_luminance']:g}", (x, r["mean_psnr"]), fontsize=7)
        ax.set_xlabel("splats pruned (%)")
        ax.set_ylabel("mean PSNR (dB)", color="tab:blue")
        twin = ax.twinx()
        twin.plot(xs, [r["compression_ratio"] for r in rows], "s--", color="tab:orange")
        twin.set_ylabel("compression ratio (x)", color="tab:orange")
        ax.set_title("luminance pruning sweep")


if __name__ == "__main__":
    sys.exit(main())
