#!/usr/bin/env python
"""Splat files against image codecs at equal bytes: PSNR and bytes of every splat format
(``fp16``, ``q64``, ``compact``) for each splat count and iteration budget, and of JPEG, WebP
and AVIF (Pillow) at their best quality under each splat file's bytes.

IMAGES (a folder, image files or ``.tar`` shards) are resized and centre-cropped to
``--size``² as the loader does. PSNR is the 8-bit PSNR a viewer sees: splat renders are
clamped and rounded like a decoded JPEG. Each row has the mean and the worst image
(``bytes_max``, ``psnr_min``); an image codec row covers the images whose smallest file fits
the budget (``fit`` says how many).

    python tools/codec_compare.py ../shared/data/imagenet-sample/heldout-000000.tar --limit 48 \\
        --json runs/codec.json --plot runs/rd.png
    python tools/codec_compare.py photos/ --gaussians 400 --iters 20 --formats q64,compact

``bd_psnr_vs_jpeg``: for each splat format and iteration budget, the Bjøntegaard delta PSNR
over JPEG's curve (its quality sweep) between ``--bd-range`` bytes (default 1,500..3,000):
positive when the splats beat JPEG at equal bytes; null where a curve does not span the range.
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
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from streamfit import codec
from streamfit.cli import int_list, parse_tool_args, tool_parser
from streamfit.config import to_yaml
from streamfit.data.local_images import load_images
from streamfit.fit import BACKENDS, FitBackend, FitConfig, fit, get_backend
from streamfit.fit.init import check_splat_count
from streamfit.rd import ImageCodec, available_image_codecs, bd_psnr, psnr_8bit, to_uint8
from streamfit.report import png_figure, print_table, write_json
from streamfit.splats import Splats


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, FitConfig]:
    parser = tool_parser(__doc__, FitConfig)
    parser.add_argument("inputs", nargs="+", type=Path, help="images, folders or .tar shards")
    parser.add_argument("--gaussians", default="100,200,400,800,1600", help="splat counts")
    parser.add_argument("--iters", default="20,100", help="fitting iterations, each a fit")
    parser.add_argument("--formats", default=",".join(codec.FORMATS), help="splat formats")
    parser.add_argument(
        "--image-codecs", default="jpeg,webp,avif", help="image codecs (jpeg is the BD reference)"
    )
    parser.add_argument("--size", type=int, default=224, help="resize + centre-crop side")
    parser.add_argument("--limit", type=int, default=48, help="the first N images")
    parser.add_argument("--batch", type=int, default=16, help="images fitted together")
    parser.add_argument("--bd-range", default="1500,3000", help="bytes: BD-PSNR's range")
    parser.add_argument("--backend", choices=("auto", *BACKENDS), help="default auto")
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--json", type=Path, help="write the rows and BD-PSNR here")
    parser.add_argument("--plot", type=Path, help="rate-distortion plot (PNG)")
    args, cfg = parse_tool_args(
        parser, FitConfig, argv, flags={"backend": "backend", "device": "device"}
    )
    try:
        args.gaussians = int_list(args.gaussians)
        args.iters = int_list(args.iters)
        args.bd_range = tuple(float(v) for v in args.bd_range.split(","))
    except ValueError as err:
        parser.error(f"a list of numbers, comma-separated: {err}")
    args.formats = [f for f in args.formats.split(",") if f]
    args.image_codecs = [c for c in args.image_codecs.split(",") if c]
    if unknown := set(args.formats) - set(codec.FORMATS):
        parser.error(f"unknown splat formats {sorted(unknown)}; choose from {codec.FORMATS}")
    if unknown := set(args.image_codecs) - {"jpeg", "webp", "avif"}:
        parser.error(f"unknown image codecs {sorted(unknown)}; choose from jpeg, webp, avif")
    if len(args.bd_range) != 2 or not 0 < args.bd_range[0] < args.bd_range[1]:
        parser.error(f"--bd-range must be LOW,HIGH bytes with 0 < LOW < HIGH, got {args.bd_range}")
    if args.limit < 1 or args.batch < 1:
        parser.error("--limit and --batch must be >= 1")
    try:
        for n in args.gaussians:
            check_splat_count(n, args.size, args.size)
            codec.check_size(args.size, args.size, n)
    except ValueError as err:
        parser.error(str(err))
    if missing := [c for c in args.image_codecs if c not in available_image_codecs()]:
        logging.warning("this Pillow cannot write %s: left out", ", ".join(missing))
        args.image_codecs = [c for c in args.image_codecs if c not in missing]
    return args, cfg


def fit_all(images: torch.Tensor, cfg: FitConfig, backend: FitBackend, batch: int) -> Splats:
    """Splats of every image, fitted ``batch`` at a time."""
    parts = [fit(images[i : i + batch], cfg, backend) for i in range(0, len(images), batch)]
    return Splats(
        torch.cat([p.splats.params for p in parts]),
        torch.cat([p.splats.mask for p in parts]),
        images.shape[1],
        images.shape[2],
    )


def measure_format(
    fmt: str,
    splats: Splats,
    images: torch.Tensor,
    targets: torch.Tensor,
    backend: FitBackend,
    cfg: FitConfig,
    batch: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Bytes and 8-bit PSNR (against ``targets``, ``images`` in 8 bits) of each image's
    ``fmt`` blob, decoded and rendered."""
    sizes, quality = [], []
    for i in range(0, len(images), batch):
        part = splats.select(slice(i, i + batch))
        target = images[i : i + batch]
        blobs = codec.encode(fmt, part, target, backend, cfg.colour_ridge)
        if any(b is None for b in blobs):
            raise RuntimeError(f"{fmt}: a fit the format cannot hold (non-finite splats)")
        back = codec.decode_batch(blobs, backend.device)
        shown = backend.render(back.params.contiguous(), back.mask, back.height, back.width)
        sizes += [len(b) for b in blobs]
        quality += psnr_8bit(to_uint8(shown), targets[i : i + batch]).tolist()
    return np.asarray(sizes), np.asarray(quality)


def compare(args: argparse.Namespace, cfg: FitConfig) -> dict:
    start = time.perf_counter()
    skipped: Counter = Counter()
    images = load_images(args.inputs, args.limit, args.size, skipped)
    if not len(images):
        raise FileNotFoundError(f"no images in {', '.join(map(str, args.inputs))}")
    backend = get_backend(cfg.backend, cfg.device)
    targets = to_uint8(images)
    image_codecs = {name: ImageCodec(name, targets) for name in args.image_codecs}
    rows: list[dict] = []
    runs = list(itertools.product(args.iters, args.gaussians))
    for iters, gaussians in tqdm(runs, desc="fit + encode", unit="setting"):
        fitted = fit_all(
            images, replace(cfg, gaussians=gaussians, iters=iters), backend, args.batch
        )
        for fmt in args.formats:
            sizes, quality = measure_format(fmt, fitted, images, targets, backend, cfg, args.batch)
            base = {"gaussians": gaussians, "iters": iters}
            rows.append(
                {"codec": fmt, **base, **_means(sizes, quality), "fit": len(images), "budget": fmt}
            )
            for name, image_codec in image_codecs.items():
                got = [image_codec.best_under(i, int(b)) for i, b in enumerate(sizes)]
                kept = [g for g in got if g is not None]
                row = _means(np.array([b for b, _ in kept]), np.array([p for _, p in kept]))
                rows.append({"codec": name, **base, **row, "fit": len(kept), "budget": fmt})
    curves = {
        name: image_codec.curve(step=1 if name == "jpeg" else 5)
        for name, image_codec in image_codecs.items()
    }
    low, high = args.bd_range
    bd = {}
    if "jpeg" in curves:
        reference = [(p["bytes_mean"], p["psnr_mean"]) for p in curves["jpeg"]]
        for fmt, iters in itertools.product(args.formats, args.iters):
            points = [
                (r["bytes_mean"], r["psnr_mean"])
                for r in rows
                if r["codec"] == fmt and r["iters"] == iters
            ]
            bd[f"{fmt}@{iters}"] = bd_psnr(points, reference, low, high)
    return {
        "images": len(images),
        "size": args.size,
        "skipped": dict(skipped),
        "backend": backend.name,
        "fit": asdict(cfg),
        "rows": rows,
        "bd_psnr_vs_jpeg": bd,
        "bd_range_bytes": [low, high],
        "curves": curves,
        "seconds": time.perf_counter() - start,
    }


def _means(sizes: np.ndarray, quality: np.ndarray) -> dict[str, float | None]:
    if not len(sizes):
        return dict.fromkeys(("bytes_mean", "psnr_mean", "bytes_max", "psnr_min"))
    return {
        "bytes_mean": float(sizes.mean()),
        "psnr_mean": float(quality.mean()),
        "bytes_max": int(sizes.max()),
        "psnr_min": float(quality.min()),
    }


def print_report(result: dict) -> None:
    header = ["codec", "budget", "gaussians", "iters", "bytes_mean", "bytes_max", "psnr_mean"]
    header += ["psnr_min", "fit"]
    rows = sorted(result["rows"], key=lambda r: (r["iters"], r["gaussians"], r["budget"]))
    print_table(
        header,
        [[r[k] for k in header] for r in rows],
        ["", "", "d", "d", ".0f", "d", ".2f", ".2f", "d"],
    )
    low, high = result["bd_range_bytes"]
    print(f"\nBD-PSNR over JPEG, {low:.0f}..{high:.0f} bytes ({result['images']} images):")
    print_table(
        ["splats", "dB"], [[k, v] for k, v in result["bd_psnr_vs_jpeg"].items()], ["", "+.2f"]
    )


def plot(result: dict, path: Path) -> None:
    """PSNR against bytes (log axis): a line per splat format and iteration budget, the image
    codecs' quality sweeps, and the BD-PSNR range shaded."""
    with png_figure(path, size=(8, 5.5), grid="both") as ax:
        colours = {"fp16": "tab:red", "q64": "tab:orange", "compact": "tab:green"}
        iters = sorted({r["iters"] for r in result["rows"]})
        styles = dict(zip(iters, ["--", "-", ":", "-."], strict=False))
        for fmt in colours:
            for it in iters:
                points = sorted(
                    (r["bytes_mean"], r["psnr_mean"])
                    for r in result["rows"]
                    if r["codec"] == fmt and r["iters"] == it
                )
                if points:
                    x, y = zip(*points, strict=True)
                    label = f"{fmt}, {it} it"
                    ax.plot(x, y, styles[it], marker="o", color=colours[fmt], label=label)
        for name, colour in (("jpeg", "black"), ("webp", "tab:blue"), ("avif", "tab:purple")):
            if name in result["curves"]:
                curve = result["curves"][name]
                ax.plot(
                    [p["bytes_mean"] for p in curve],
                    [p["psnr_mean"] for p in curve],
                    color=colour,
                    linewidth=1,
                    label=name,
                )
        low, high = result["bd_range_bytes"]
        ax.axvspan(low, high, color="grey", alpha=0.15, label="BD-PSNR range")
        ax.set_xscale("log")
        ax.set_xlim(400, 40_000)
        ax.set_xlabel("bytes per image")
        ax.set_ylabel("PSNR (dB, 8-bit)")
        size = result["size"]
        ax.set_title(f"{result['images']} images at {size}x{size}: splats vs image codecs")
        ax.legend(fontsize=8, ncol=2, loc="upper left")


def main(argv: list[str] | None = None) -> int:
    args, cfg = parse_args(argv)
    print(to_yaml(cfg), end="", file=sys.stderr)
    try:
        result = compare(args, cfg)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print_report(result)
    if args.json:
        write_json(args.json, result)
    if args.plot:
        plot(result, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
