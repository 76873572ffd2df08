#!/usr/bin/env python
"""Benchmark batched splat fitting: images/s, ms per iteration per image, PSNR at the budget,
and the speed-up over fitting one image at a time and over the ``torch`` reference backend.

    python tools/benchmark_fit.py --device cpu --json runs/bench_fit_cpu.json     # the CPU grid
    python tools/benchmark_fit.py --device cuda --json runs/bench_fit_gpu.json --plot runs/fig2.png
    python tools/benchmark_fit.py --device cuda --batches 4096 --gaussians 400 --iters 100

Defaults on a GPU reproduce the paper's Fig. 2 grid (224x224, batch 1..4096, 400..3136
splats). How each figure is measured:

* ``images_per_s``, ``ms_per_iter_image``: wall time of one fit of the whole batch
  (initialisation, colour solves, all iterations, final PSNR, the PSNR read back;
  synchronised), after a warm-up fit; the fastest of ``--repeats``. On a GPU the fit is a
  CUDA graph (:class:`streamfit.fit.FitGraphs`, captured during the warm-up) unless
  ``--eager``; ``graph`` in the row says which ran.
* ``speedup_vs_single``: against the same backend fitting ``--single-images`` images one at a
  time (same settings), i.e. per-image fitting (``--single-images 0`` skips it).
* ``speedup_vs_torch``: total time of the ``torch`` reference backend over ours, both
  fitting the same ``--torch-images`` images (a batch of that size) with the same settings
  and ``iters`` for the same ``--repeats`` (fastest of each): a ratio of totals.
  ``psnr_delta_vs_torch`` is our mean PSNR minus torch's on those fits, at the benchmark's
  own iteration count: the speed-up holds at the same quality when it is ~0.
* ``iteration_seconds``: the time of the ``iters`` iterations alone: a fit without the colour
  solve minus the same fit with 0 iterations (both fastest of ``--repeats``), so the
  initialisation, the colour solves and the final PSNR, which are not per-iteration work,
  are left out. The FLOP rates below divide by it.
* GPU only: ``tflops`` achieved, from the FLOPs per iteration counted in
  :mod:`cuda_kernels.gpu` (tile lists of the initial splats), and its fraction of
  ``--peak-tflops`` (the card's FP32 peak, non-tensor-core).
* CPU only: ``cutoff_pairs_per_image``, the (pixel, splat) pairs inside the 1/255 cut-off of
  the initial splats (mean over the batch; the work that does not depend on tiling),
  ``gflops`` achieved at ``FLOPS_PER_PAIR`` (50: forward and backward) per pair and
  iteration, ``matmul_gflops`` (the best float32 ``torch.mm`` rate of the same cores,
  measured before and after the grid in the same run) and ``peak_fraction`` = their ratio.

Images are real photos from ``--shards`` (cycled to fill large batches) or, without shards,
smooth synthetic images.
"""

from __future__ import annotations

import streamfit.openmp  # noqa: F401 (first: before torch loads its OpenMP runtime)

# isort: split

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from streamfit.benchmark import (
    FLOPS_PER_PAIR,
    Fitters,
    baselines,
    benchmark_images,
    benchmark_row,
    describe_machine,
    matmul_gflops,
)
from streamfit.cli import int_list, parse_tool_args, tool_parser
from streamfit.config import to_yaml
from streamfit.fit import FitConfig, get_backend
from streamfit.hardware import resolve_device
from streamfit.report import png_figure, write_json
from streamfit.report import print_table as print_table_rows

DEFAULT_SHARDS = (
    Path(__file__).resolve().parents[2] / "shared/data/imagenet-sample/train-000000.tar"
)
GRIDS = {  # device -> (batches, gaussians)
    "cuda": ("1,16,64,256,1024,4096", "400,1024,2025,3136"),
    "cpu": ("1,8", "400"),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = tool_parser(__doc__, FitConfig)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--backends", help="comma list of backends to time (default: the device's fast one)"
    )
    parser.add_argument("--batches", help="comma list of batch sizes (default by device)")
    parser.add_argument("--gaussians", help="comma list of splat counts (default by device)")
    parser.add_argument("--iters", type=int, help="iteration budget (default 100)")
    parser.add_argument("--size", type=int, default=224, help="image side in pixels")
    parser.add_argument("--shards", type=Path, nargs="*", help="webdataset .tar shards of photos")
    parser.add_argument(
        "--repeats", type=int, default=1, help="time each fit this often, keep the best"
    )
    parser.add_argument("--single-images", type=int, default=4, help="images fitted one at a time")
    parser.add_argument(
        "--torch-images", type=int, help="batch of the torch reference and ours (cpu 2, cuda 16)"
    )
    parser.add_argument("--no-torch", action="store_true", help="skip the torch reference")
    parser.add_argument(
        "--eager", action="store_true", help="GPU: launch fits op by op, not as CUDA graphs"
    )
    parser.add_argument("--peak-tflops", type=float, help="FP32 peak of the GPU (default: by name)")
    parser.add_argument("--json", type=Path, help="write the rows here")
    parser.add_argument("--plot", type=Path, help="PNG of the speed-up over per-image fitting")
    # --gaussians is a grid here, not FitConfig's one count
    args, args.fit = parse_tool_args(
        parser, FitConfig, argv, flags={"iters": "iters"}, defaults=["iters=100"]
    )
    args.device = resolve_device(args.device).type
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is visible")
    args.iters = args.fit.iters
    batches, gaussians = GRIDS[args.device]
    try:
        args.batches = int_list(args.batches or batches)
        args.gaussians = int_list(args.gaussians or gaussians)
    except ValueError as err:
        parser.error(str(err))
    args.backends = (args.backends or args.device).split(",")
    if args.torch_images is None:
        args.torch_images = 16 if args.device == "cuda" else 2
    if min(args.batches) < 1 or min(args.gaussians) < 1 or min(args.iters, args.repeats) < 1:
        parser.error("batches, gaussians, --iters and --repeats must be >= 1")
    if args.single_images < 0:
        parser.error("--single-images must be >= 0")
    if args.shards is None and DEFAULT_SHARDS.is_file():
        args.shards = [DEFAULT_SHARDS]
    return args


# ---------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    base = replace(args.fit, device=args.device)
    print(to_yaml(base), file=sys.stderr)
    device = torch.device(args.device)
    images, origin = benchmark_images(
        max(args.batches + [args.single_images, args.torch_images]), args.size, args.shards
    )
    machine = describe_machine(device)
    print(f"# {machine}; {args.size}x{args.size}; {origin}; iters {args.iters}", file=sys.stderr)
    matmul = matmul_gflops() if device.type == "cpu" else None

    fitters = Fitters(graphs=device.type == "cuda" and not args.eager)
    rows: list[dict] = []
    grid = [(name, n, b) for name in args.backends for n in args.gaussians for b in args.batches]
    progress = tqdm(grid, desc="benchmark", unit="config")
    per_splat_count: dict[tuple[str, int], dict] = {}
    for name, n, batch in progress:
        progress.set_postfix(backend=name, gaussians=n, batch=batch)
        backend = get_backend(name, args.device)
        cfg = replace(base, gaussians=n, backend=name)
        if (name, n) not in per_splat_count:
            torch_images = 0 if args.no_torch else args.torch_images
            per_splat_count[name, n] = baselines(
                images, cfg, backend, args.repeats, fitters, args.single_images, torch_images
            )
        row = benchmark_row(
            images[:batch], cfg, backend, args.repeats, fitters, per_splat_count[name, n],
            machine, args.peak_tflops,
        )  # fmt: skip
        rows.append(row)

    if matmul is not None:  # the best of before and after: load only ever slows it down
        matmul = max(matmul, matmul_gflops())
        for row in rows:
            if row["gflops"] is not None:
                row["matmul_gflops"] = matmul
                row["peak_fraction"] = row["gflops"] / matmul
    print_table(rows)
    if args.json:
        write_json(args.json, rows)
    if args.plot:
        plot(rows, args.plot)
    return rows


def print_table(rows: list[dict]) -> None:
    header = ["backend", "batch", "splats", "iters", "img/s", "ms/it/img", "PSNR", "x single"]
    header += ["torch s", "x torch", "dPSNR", "TFLOP/s", "of peak"]
    keys = ["backend", "batch", "gaussians", "iters", "images_per_s", "ms_per_iter_image", "psnr"]
    keys += ["speedup_vs_single", "torch_seconds", "speedup_vs_torch", "psnr_delta_vs_torch"]
    keys += ["tflops", "peak_fraction"]
    formats = ["", "", "", "", ".2f", ".3f", ".2f", ".2f", ".2f", ".1f", "+.2f", ".2f", ".1%"]
    print_table_rows(header, [[r[k] for k in keys] for r in rows], formats)
    for r in rows:
        if r["matmul_gflops"] is not None:
            print(
                f"# {r['backend']} batch {r['batch']}: {r['cutoff_pairs_per_image']:,.0f} cut-off "
                f"pairs/image x {FLOPS_PER_PAIR} FLOP = {r['gflops']:.1f} GFLOP/s; float32 matmul "
                f"{r['matmul_gflops']:.1f} GFLOP/s in this run; peak_fraction "
                f"{r['peak_fraction']:.1%}"
            )
    for r in rows:
        if r["torch_seconds"] is not None:
            print(
                f"# x torch: {r['torch_images']} images x {r['iters']} iterations, best of the "
                f"same repeats: torch {r['torch_seconds']:.2f} s / ours "
                f"{r['torch_our_seconds']:.3f} s; dPSNR at {r['iters']} iterations"
            )
            break


def plot(rows: list[dict], path: Path) -> None:
    with png_figure(path) as ax:
        for name, n in sorted({(r["backend"], r["gaussians"]) for r in rows}):
            sel = [r for r in rows if (r["backend"], r["gaussians"]) == (name, n)]
            sel = sorted((r for r in sel if r["speedup_vs_single"]), key=lambda r: r["batch"])
            ax.plot(
                [r["batch"] for r in sel],
                [r["speedup_vs_single"] for r in sel],
                marker="o",
                label=f"{name}, {n} splats",
            )
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel("speed-up over per-image fitting")
        ax.legend()


if __name__ == "__main__":
    main()
