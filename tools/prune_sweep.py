#!/usr/bin/env python
"""Sweep the luminance pruning threshold: splats kept, compression and PSNR for each value.

Fits the same images once per threshold (and optional L1 weight) and prints a table; writes
``--json`` and a PNG plot (PSNR and compression ratio against the threshold).

    python tools/prune_sweep.py shards/train-000000.tar --limit 16 \
        --thresholds 0,0.02,0.05,0.1,0.2 --l1 0.005 --png runs/prune.png --json runs/prune.json
"""

from __future__ import annotations

import os

# Idle OpenMP threads of torch and of the Numba kernels share the cores; spinning ones steal
# them from the threads doing work. Must be set before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import itertools
import sys
from collections import Counter
from pathlib import Path

import torch
from tqdm.auto import tqdm

from streamfit.config import load_config, to_yaml
from streamfit.data.local_images import ImageSource, iter_decoded
from streamfit.fit import BACKENDS, FitConfig, fit, get_backend
from streamfit.report import write_json


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("inputs", nargs="+", type=Path, help="images, folders or .tar shards")
    parser.add_argument("--thresholds", default="0,0.01,0.02,0.05,0.1")
    parser.add_argument("--l1", type=float, default=0.0, help="L1 colour weight when pruning")
    parser.add_argument("--gaussians", type=int, default=400)
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--backend", choices=("auto", *BACKENDS), default="auto")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--limit", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--png", type=Path)
    args = parser.parse_args(argv)
    thresholds = [float(t) for t in args.thresholds.split(",")]

    skipped: Counter = Counter()
    decoded = iter_decoded(ImageSource(args.inputs, skipped), args.size, skipped)
    images = torch.stack([img for _, img in itertools.islice(decoded, args.limit)])
    base = load_config(
        FitConfig,
        overrides=[f"gaussians={args.gaussians}", f"iters={args.iters}", f"backend={args.backend}"],
    )
    print(to_yaml(base), end="", file=sys.stderr)
    backend = get_backend(base.backend, base.device)

    rows = []
    for threshold in tqdm(thresholds, desc="thresholds"):
        cfg = load_config(
            FitConfig,
            overrides=[
                f"gaussians={args.gaussians}",
                f"iters={args.iters}",
                f"prune_luminance={threshold}",
                f"l1={args.l1 if threshold > 0 else 0.0}",
            ],
        )
        psnrs, counts, ratios = [], [], []
        for start in range(0, len(images), args.batch):
            result = fit(images[start : start + args.batch], cfg, backend)
            ok = result.ok
            psnrs += result.psnr[ok].tolist()
            counts += result.splats.counts().cpu()[ok].tolist()
            ratios += result.splats.compression_ratios().cpu()[ok].tolist()
        rows.append(
            {
                "prune_luminance": threshold,
                "l1": cfg.l1,
                "mean_psnr": sum(psnrs) / len(psnrs),
                "mean_splats": sum(counts) / len(counts),
                "pruned_fraction": 1.0 - sum(counts) / (len(counts) * args.gaussians),
                "mean_compression_ratio": sum(ratios) / len(ratios),
                "images": len(psnrs),
            }
        )

    print(f"\n{'threshold':>9} {'l1':>6} {'PSNR dB':>8} {'splats':>7} {'pruned':>7} {'ratio':>7}")
    for r in rows:
        print(
            f"{r['prune_luminance']:>9.3f} {r['l1']:>6.3f} {r['mean_psnr']:>8.2f} "
            f"{r['mean_splats']:>7.1f} {r['pruned_fraction']:>7.1%} {r['mean_compression_ratio']:>7.2f}"
        )
    result = {
        "backend": backend.name,
        "gaussians": args.gaussians,
        "iters": args.iters,
        "size": args.size,
        "rows": rows,
    }
    if args.json:
        write_json(args.json, result)
    if args.png:
        plot(rows, args.png)
    return 0


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    xs = [r["pruned_fraction"] * 100 for r in rows]
    ax.plot(xs, [r["mean_psnr"] for r in rows], "o-", color="tab:blue")
    for r, x in zip(rows, xs, strict=True):
        ax.annotate(f"T={r['prune_luminance']:g}", (x, r["mean_psnr"]), fontsize=7)
    ax.set_xlabel("splats pruned (%)")
    ax.set_ylabel("mean PSNR (dB)", color="tab:blue")
    twin = ax.twinx()
    twin.plot(xs, [r["mean_compression_ratio"] for r in rows], "s--", color="tab:orange")
    twin.set_ylabel("compression ratio (x)", color="tab:orange")
    ax.set_title("luminance pruning sweep")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


if __name__ == "__main__":
    sys.exit(main())
