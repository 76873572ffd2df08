#!/usr/bin/env python
"""Ablation of the fitting method: initialisation x colour solve x schedule, each fitted at
several iteration budgets (every budget is a fit of its own, so its schedule is that of a fit
of that length), on the same photos, in one run, on one backend.

Prints a markdown table (mean PSNR at each budget, seconds per image of each fit, the
seconds per image of the cheapest measured budget reaching ``--target``), writes ``--json``
and a PNG of mean PSNR against fitting seconds per image (``--plot``).

    python tools/ablate_fit.py ../shared/data/imagenet-sample/heldout-000000.tar --limit 48 \\
        --backend cpu --json runs/ablation.json --plot docs/images/fit_ablation.png
    python tools/ablate_fit.py photos/ --gaussians 4900 --limit 16 --budgets 50,100,200 \\
        --variants old-default,new-default --batch 4
"""

from __future__ import annotations

import streamfit.openmp  # noqa: F401 (first: before torch loads its OpenMP runtime)

# isort: split

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import torch

from streamfit import report
from streamfit.benchmark import fit_in_batches
from streamfit.cli import parse_tool_args, tool_parser
from streamfit.data.local_images import load_images
from streamfit.fit import BACKENDS, FitConfig, fit, get_backend
from streamfit.report import png_figure, write_json

# the settings the fitter used before adaptive init and exact colours
OLD_SCHEDULE = dict(
    lr_position=1.5, lr_hold=0.0, lr_final_fraction=0.3, warmup_iters=0, betas=(0.8, 0.99)
)
VARIANTS: dict[str, dict] = {
    "old-default": dict(init="structured", colour_solve="none", **OLD_SCHEDULE),
    "paper": dict(init="paper", colour_solve="none", **OLD_SCHEDULE),
    "structured+solve": dict(init="structured", colour_solve="init+final", **OLD_SCHEDULE),
    "structured+solve+schedule": dict(init="structured", colour_solve="init+final"),
    "adaptive": dict(init="adaptive", colour_solve="none", **OLD_SCHEDULE),
    "adaptive+solve": dict(init="adaptive", colour_solve="init+final", **OLD_SCHEDULE),
    "adaptive+schedule": dict(init="adaptive", colour_solve="none"),
    "new-default": dict(),
    "new-default+solve/5": dict(colour_solve_every=5),
}


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, FitConfig]:
    parser = tool_parser(__doc__, FitConfig)
    parser.add_argument("inputs", nargs="+", type=Path, help="images, folders or .tar shards")
    parser.add_argument("--limit", type=int, default=48, help="photos (the first ones)")
    parser.add_argument("--gaussians", type=int, help="default 400")
    parser.add_argument("--size", type=int, default=224, help="resize + centre-crop side")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--backend", choices=("auto", *BACKENDS), help="default cpu")
    parser.add_argument("--budgets", default="10,20,50,100", help="iteration budgets")
    parser.add_argument(
        "--old-budgets", default="150,200", help="extra budgets of old-default (to reach --target)"
    )
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma list")
    parser.add_argument("--target", type=float, default=25.75, help="PSNR to reach, dB")
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="time every fit this often, in rounds over all fits; keep each one's fastest",
    )
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plot", type=Path, help="PNG: PSNR against seconds per image")
    # the config is the base every variant changes (a variant's own settings win)
    args, base = parse_tool_args(parser, FitConfig, argv, defaults=["backend=cpu"])
    unknown = set(args.variants.split(",")) - set(VARIANTS)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    return args, base


def measure(
    images: torch.Tensor, cfg: FitConfig, backend, batch: int
) -> tuple[float, float, float]:
    """``(mean PSNR, mean PSNR at iteration 0, fitting seconds per image)`` of fitting every
    image once; images that fail are left out of the means."""
    fits = fit_in_batches(images, cfg, backend, batch, record_psnr_at=(0,))
    psnrs, starts = fits["psnr"], fits["psnr_at"][0]
    return _mean(psnrs), _mean(starts), fits["seconds"] / len(images)


def _mean(values: list[float]) -> float:
    return sum(values) / max(1, len(values))


def main(argv: list[str] | None = None) -> int:
    args, base = parse_args(argv)
    images = load_images(args.inputs, args.limit, args.size)
    if not len(images):
        raise SystemExit("no decodable images in the inputs")
    backend = get_backend(base.backend, base.device)
    budgets = [int(b) for b in args.budgets.split(",")]
    base = replace(base, backend=backend.name)
    fit(images[:1], replace(base, iters=2), backend)  # compile / load the kernels
    print(
        f"# {len(images)} images {args.size}x{args.size}, {base.gaussians} splats, "
        f"backend {backend.name}, {torch.get_num_threads()} threads",
        file=sys.stderr,
    )
    names = args.variants.split(",")
    extra = [int(b) for b in args.old_budgets.split(",") if b]
    fits = [
        (name, iters)
        for name in names
        for iters in budgets + (extra if name == "old-default" else [])
    ]
    # repeats go round every fit in turn, so a burst of load on the machine hits all sides of
    # a comparison alike; the fit is deterministic, so a repeat only times it again and the
    # fastest counts (other jobs can only add time)
    measured: dict[tuple[str, int], tuple[float, float, float]] = {}
    for round_ in range(args.repeats):
        for name, iters in fits:
            cfg = replace(base, iters=iters, **VARIANTS[name])
            psnr, start, seconds = measure(images, cfg, backend, args.batch)
            if (name, iters) in measured:
                seconds = min(seconds, measured[name, iters][2])
            measured[name, iters] = (psnr, start, seconds)
            if round_ == args.repeats - 1:
                print(
                    f"{name:28s} iters {iters:4d}: {psnr:6.2f} dB {seconds:7.3f} s/img",
                    file=sys.stderr,
                )
    rows = []
    for name in names:
        row = {"variant": name, "settings": VARIANTS[name], "psnr": {}, "seconds": {}}
        for (variant, iters), (psnr, start, seconds) in measured.items():
            if variant == name:
                row["psnr"]["0"] = start
                row["psnr"][str(iters)], row["seconds"][str(iters)] = psnr, seconds
        reached = [int(k) for k, v in row["psnr"].items() if k != "0" and v >= args.target]
        row["reach_iters"] = min(reached) if reached else None
        row["reach_seconds"] = row["seconds"][str(min(reached))] if reached else None
        rows.append(row)
    summary = {
        "images": len(images),
        "size": args.size,
        "gaussians": base.gaussians,
        "backend": backend.name,
        "target_db": args.target,
        "repeats": args.repeats,
        "rows": rows,
    }
    print_table(summary, budgets)
    if args.json:
        write_json(args.json, summary)
    if args.plot:
        plot(summary, args.plot)
    return 0


def print_table(summary: dict, budgets: list[int]) -> None:
    cols = ["0", *map(str, budgets)]
    target = summary["target_db"]
    header = [
        "variant",
        *(f"{c} it" for c in cols),
        *(f"s/img @{b}" for b in budgets),
        f"iters to {target} dB",
        f"s/img to {target} dB",
    ]
    rows = [
        [
            row["variant"],
            *(row["psnr"][c] for c in cols),
            *(row["seconds"][str(b)] for b in budgets),
            row["reach_iters"],
            row["reach_seconds"],
        ]
        for row in summary["rows"]
    ]
    formats = ["", *[".2f"] * len(cols), *[".3f"] * len(budgets), "", ".3f"]
    report.print_table(header, rows, formats, markdown=True)


def plot(summary: dict, path: Path) -> None:
    with png_figure(path, size=(7, 4.5)) as ax:
        for row in summary["rows"]:
            iters = sorted(int(k) for k in row["seconds"])
            ax.plot(
                [row["seconds"][str(i)] for i in iters],
                [row["psnr"][str(i)] for i in iters],
                marker="o",
                label=row["variant"],
            )
        ax.axhline(summary["target_db"], color="grey", linestyle=":", label="target")
        ax.set_xscale("log")
        ax.set_xlabel(f"fitting seconds per image ({summary['backend']} backend)")
        ax.set_ylabel("mean PSNR (dB)")
        ax.set_title(f"{summary['images']} photos, {summary['gaussians']} splats")
        ax.legend(fontsize=7)


if __name__ == "__main__":
    sys.exit(main())
