#!/usr/bin/env python
"""Fit 2D Gaussian splats to images: a folder, image files, or webdataset ``.tar`` shards.

Writes one ``<key>.splats`` file (see :mod:`streamfit.splats`) and one preview PNG
(original | reconstruction | splat ellipses) per image, a JSON summary, and prints a table.

    python tools/fit_images.py photo.jpg --gaussians 400 --iters 16 --out runs/fit
    python tools/fit_images.py shards/train-000000.tar --limit 32 --json runs/fit/summary.json
    python tools/fit_images.py imgs/ --backend torch lr_color=0.03   # key=value: FitConfig fields
"""

from __future__ import annotations

import streamfit.openmp  # noqa: F401 (first: before torch loads its OpenMP runtime)

# isort: split

import argparse
import itertools
import logging
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from streamfit import report
from streamfit.cli import parse_tool_args, tool_parser
from streamfit.config import to_yaml
from streamfit.data.local_images import ImageSource, iter_decoded
from streamfit.fit import BACKENDS, FitConfig, fit, get_backend
from streamfit.fit.config import COLOUR_SOLVES, INITS
from streamfit.fit.init import check_splat_count
from streamfit.report import splat_preview, write_json
from streamfit.splats import BYTES_PER_SPLAT, compression_ratio

# Below this side an image is a handful of pixels: nothing a splat fit can show.
MIN_SIZE = 8


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, FitConfig]:
    parser = tool_parser(__doc__, FitConfig)
    parser.add_argument("inputs", nargs="+", type=Path, help="images, folders or .tar shards")
    parser.add_argument("--gaussians", type=int, help="splats per image (default 400)")
    parser.add_argument("--iters", type=int, help="fitting iterations (default 16)")
    parser.add_argument("--backend", choices=("auto", *BACKENDS), help="default: auto")
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--init", choices=INITS, help="default: adaptive")
    parser.add_argument("--colour-solve", choices=COLOUR_SOLVES, help="default: init+final")
    parser.add_argument("--prune-luminance", type=float, help="0 disables pruning")
    parser.add_argument("--l1", type=float, help="L1 weight on splat colours")
    parser.add_argument(
        "--size",
        type=int,
        default=224,
        help=f"resize + centre-crop side (>= {MIN_SIZE}); 0 = keep; images too small for the splats are skipped",
    )
    parser.add_argument("--batch", type=int, default=8, help="images fitted together")
    parser.add_argument("--limit", type=int, help="fit at most this many images")
    parser.add_argument("--out", type=Path, help="folder for .splats files and previews")
    parser.add_argument("--no-previews", action="store_true", help="skip the preview PNGs")
    parser.add_argument("--json", type=Path, help="write the summary here")
    parser.add_argument(
        "--record-at", default="", help="also report mean PSNR at these iterations, e.g. 50,100"
    )
    args, cfg = parse_tool_args(parser, FitConfig, argv)
    if args.batch < 1:
        parser.error("--batch must be >= 1")
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be >= 1")
    if args.size != 0 and args.size < MIN_SIZE:
        parser.error(f"--size must be 0 (keep each image's size) or >= {MIN_SIZE}, got {args.size}")
    for path in args.inputs:
        if not path.exists():
            parser.error(f"no such image, folder or shard: {path}")
    try:
        if args.size:
            check_splat_count(cfg.gaussians, args.size, args.size)
    except ValueError as err:
        parser.error(str(err))
    if args.size and BYTES_PER_SPLAT * cfg.gaussians >= 3 * args.size**2:
        logging.warning(
            "%d splats take %d bytes, no fewer than the %d bytes of a %dx%d RGB image: "
            "no compression",
            cfg.gaussians,
            BYTES_PER_SPLAT * cfg.gaussians,
            3 * args.size**2,
            args.size,
            args.size,
        )
    return args, cfg


def fittable(
    decoded: Iterable[tuple[str, torch.Tensor]], gaussians: int, skipped: Counter
) -> Iterator[tuple[str, torch.Tensor]]:
    """The images that can hold ``gaussians`` splats (one pixel each at least); the others
    are logged and counted as ``too_small``, so one tiny image does not end the run."""
    for key, image in decoded:
        try:
            check_splat_count(gaussians, image.shape[0], image.shape[1])
        except ValueError as err:
            logging.warning("skipping %s: %s", key, err)
            skipped["too_small"] += 1
            continue
        yield key, image


def main(argv: list[str] | None = None) -> int:
    args, cfg = parse_args(argv)
    print(to_yaml(cfg), end="", file=sys.stderr)
    record_at = tuple(sorted({int(s) for s in args.record_at.split(",") if s.strip()}))
    backend = get_backend(cfg.backend, cfg.device)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)

    source = ImageSource(args.inputs)
    skipped: Counter = source.skipped
    decoded = fittable(iter_decoded(source, args.size or None, skipped), cfg.gaussians, skipped)
    if args.limit is not None:
        decoded = itertools.islice(decoded, args.limit)

    rows: list[dict] = []
    curves: dict[int, list[float]] = {k: [] for k in record_at}
    bar = tqdm(total=args.limit, unit="img", desc=f"fitting [{backend.name}]")
    while batch := list(itertools.islice(decoded, args.batch)):
        keys = [k for k, _ in batch]
        shapes = {tuple(img.shape) for _, img in batch}
        if len(shapes) > 1:
            # without --size images differ; fit them one at a time rather than pad
            groups = [[item] for item in batch]
        else:
            groups = [batch]
        for group in groups:
            rows += fit_group(group, cfg, backend, record_at, curves, args)
        bar.update(len(keys))
    bar.close()
    if not rows and not skipped:
        print(f"error: no images in {', '.join(map(str, args.inputs))}", file=sys.stderr)
        return 1

    fitted = [r for r in rows if r["psnr"] is not None]
    summary = {
        "images": rows,
        "mean_psnr": _mean([r["psnr"] for r in fitted]),
        "mean_splats": _mean([r["splats"] for r in fitted]),
        # all images side by side: total bytes over total bytes
        "compression_ratio": compression_ratio(
            sum(r["pixels"] for r in fitted), 1, sum(r["splats"] for r in fitted)
        )
        if fitted
        else None,
        "mean_seconds": _mean([r["seconds"] for r in fitted]),
        "psnr_at": {str(k): _mean(v) for k, v in curves.items()},
        "backend": backend.name,
        "iters": cfg.iters,
        "gaussians": cfg.gaussians,
        "init": cfg.init,
        "colour_solve": cfg.colour_solve,
        "prune_luminance": cfg.prune_luminance,
        "l1": cfg.l1,
        "fitted": len(fitted),
        "dropped": len(rows) - len(fitted),
        "skipped": dict(skipped),
    }
    print_table(summary)
    if args.json:
        write_json(args.json, summary)
        print(f"summary: {args.json}")
    return 0 if fitted else 1


def fit_group(group, cfg, backend, record_at, curves, args) -> list[dict]:
    """Fit one batch of equally sized images; write splats and previews; one row per image."""
    keys = [k for k, _ in group]
    images = torch.stack([img for _, img in group])
    start = time.perf_counter()
    result = fit(images, cfg, backend, record_psnr_at=record_at)
    per_image = (time.perf_counter() - start) / len(keys)
    for it in record_at:
        if it in result.psnr_history:
            curves[it] += result.psnr_history[it][result.ok].tolist()
    splats = result.splats
    recon = (
        backend.render(splats.params, splats.mask, splats.height, splats.width)
        if (args.out and not args.no_previews)
        else None
    )
    rows = []
    for b, key in enumerate(keys):
        ok = bool(result.ok[b])
        if not ok:
            logging.warning("dropped %s: non-finite values while fitting", key)
        rows.append(
            {
                "key": key,
                "psnr": float(result.psnr[b]) if ok else None,
                "splats": int(splats.counts()[b]),
                "pixels": splats.height * splats.width,
                "compression_ratio": float(splats.compression_ratios()[b]) if ok else None,
                "seconds": per_image,
            }
        )
        if args.out and ok:
            stem = args.out / key.replace("/", "__")
            splats.select([b]).save(stem.with_suffix(".splats"), keys=[key])
            if recon is not None:
                params = splats.params[b][splats.mask[b]]
                splat_preview(images[b], recon[b], params).save(stem.with_suffix(".png"))
    return rows


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def print_table(summary: dict) -> None:
    rows = [
        [r["key"][-40:], r["psnr"], r["splats"], r["compression_ratio"], r["seconds"]]
        for r in summary["images"]
    ]
    if summary["fitted"]:
        rows.append(
            [
                "mean (ratio: total over total)",
                summary["mean_psnr"],
                summary["mean_splats"],
                summary["compression_ratio"],
                summary["mean_seconds"],
            ]
        )
    print()
    report.print_table(
        ["key", "PSNR dB", "splats", "ratio", "s/img"], rows, ["", ".2f", ".1f", ".2f", ".3f"]
    )
    for it, value in summary["psnr_at"].items():
        print(f"mean PSNR at iteration {it}: {value:.2f} dB")
    print(
        f"backend={summary['backend']} iters={summary['iters']} fitted={summary['fitted']} "
        f"dropped={summary['dropped']} skipped={summary['skipped'] or 0}"
    )


if __name__ == "__main__":
    sys.exit(main())
