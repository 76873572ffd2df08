#!/usr/bin/env python
"""What the CUDA fitting kernels compile to, and how fast that should run on an H100, with no GPU.

    python tools/kernel_report.py                      # every accepted tile size
    python tools/kernel_report.py --tiles 16 --json runs/kernels.json --sass-dir runs/sass

Per kernel: registers, shared memory, spills, stack frame, occupancy on an H100 and SASS
instructions; for the tile kernel the SASS per (pixel, splat) pair of its two hot loops; then
the predicted images/s of ``fit()`` per tile size. How each is read and the model behind the
prediction: :mod:`streamfit.kernel_analysis` (needs ``ptxas`` and ``nvdisasm``: the CUDA
toolkit, or the tools in the triton wheel).

``--json FILE`` writes ``{"predicted_images_per_s", "tiles", "kernels": [{"name", "tile",
"registers", "shared_bytes", "spill_bytes", "occupancy", ...}], "model": {...}}``. Figures
are predictions until ``tools/benchmark_fit.py`` measures them on a GPU.
"""

from __future__ import annotations

import streamfit.openmp  # noqa: F401 (first: before torch loads its OpenMP runtime)

# isort: split

import argparse
import tempfile
from pathlib import Path

from cuda_kernels import gpu
from streamfit.cli import int_list, parse_tool_args, tool_parser
from streamfit.kernel_analysis import KernelReportConfig, analyse
from streamfit.report import print_table, write_json


def print_report(result: dict) -> None:
    keys = ["name", "tile", "threads", "registers", "shared_bytes", "spill_bytes"]
    keys += ["stack_bytes", "occupancy", "sass_instructions"]
    print_table(
        ["kernel", "tile", "threads", "regs", "smem B", "spill B", "stack B", "occupancy", "SASS"],
        [[k[key] for key in keys] for k in result["kernels"]],
        [""] * 7 + [".0%"],
    )
    print()
    print_table(
        ["tile", "rows", "entries/img", "fwd/pair", "bwd/pair", "Mwarp-instr/img-it", "bound"]
        + ["pred. img/s"],
        [
            [
                tile, m["rows_per_thread"], m["layout"]["entries"], m["sass_per_pair_forward"],
                m["sass_per_pair_backward"], m["warp_instructions_per_image_iteration"] / 1e6,
                m["bound"], m["images_per_s"],
            ]
            for tile, m in result["model"].items()
        ],
        ["", "", "", ".2f", ".2f", ".3f", "", ".0f"],
    )  # fmt: skip
    a = next(iter(result["model"].values()))["assumptions"]
    print(
        f"\nprediction (tile {result['predicted_tile']}): {result['predicted_images_per_s']:.0f} "
        f"images/s on an H100 SXM at batch {a['batch']}, {a['gaussians']} splats, "
        f"{a['size']}x{a['size']}, {a['iters']} iterations "
        f"({a['sms']} SMs, {a['clock_ghz']} GHz, issue efficiency {a['efficiency']})"
    )


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, KernelReportConfig]:
    parser = tool_parser(__doc__, KernelReportConfig)
    parser.add_argument("--tiles", type=int_list, help="comma list of tile sizes (default 8,16,32)")
    for name in ("batch", "gaussians", "size", "iters", "sms"):
        parser.add_argument(f"--{name}", type=int)
    parser.add_argument("--clock-ghz", type=float, help="sustained SM clock")
    parser.add_argument("--efficiency", type=float, help="share of issue slots used")
    parser.add_argument("--bandwidth-tbs", type=float, help="HBM3 bandwidth")
    parser.add_argument("--json", type=Path, help="write the report here")
    parser.add_argument("--sass-dir", type=Path, help="keep the PTX, cubins and SASS here")
    args, cfg = parse_tool_args(parser, KernelReportConfig, argv)
    try:
        for tile in cfg.tiles:
            gpu.check_tile(tile)
    except ValueError as err:
        parser.error(str(err))
    if not 0 < cfg.efficiency <= 1:
        parser.error("efficiency must lie in (0, 1]")
    return args, cfg


def main(argv: list[str] | None = None) -> dict:
    args, cfg = parse_args(argv)
    try:
        if args.sass_dir:
            args.sass_dir.mkdir(parents=True, exist_ok=True)
            result = analyse(cfg, args.sass_dir)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                result = analyse(cfg, Path(tmp))
    except RuntimeError as err:
        raise SystemExit(f"kernel_report: {err}") from None
    print_report(result)
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
