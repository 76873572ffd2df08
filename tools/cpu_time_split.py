#!/usr/bin/env python
"""Where the time of the ``cpu`` backend goes: one loss-and-gradient evaluation split into
its stages, on the benchmark's layout (structured splats on real photos, 224x224).

    python tools/cpu_time_split.py                # batch 8, 400 splats, one thread
    python tools/cpu_time_split.py --threads 2 --json runs/cpu_split.json

Two kinds of figures, all ms per image, the fastest of ``--repeats`` calls (load from other
jobs only ever adds time; one thread by default, so they are per-core costs):

* the kernels of :mod:`cuda_kernels.cpu` called one by one (``project``, ``bin_tiles``,
  ``raster_tiles`` without and with a target, ``reduce_tiles``, ``adam_step``) and the
  backend's whole ``loss_and_grad``;
* inside ``raster_tiles``, what removing one part saves: each variant is a copy of
  ``cuda_kernels/cpu.py`` with one stage switched off (``no_backward``: the backward pass;
  ``no_forward``: forward and backward; ``no_exp``: the exponential replaced by ``1 + y``),
  timed in a fresh process with its own compile cache.
"""

from __future__ import annotations

import streamfit.openmp  # noqa: F401 (first: before torch loads its OpenMP runtime)

# isort: split

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from streamfit.cli import parse_tool_args, tool_parser
from streamfit.report import print_table, write_json

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SHARD = ROOT.parent / "shared/data/imagenet-sample/train-000000.tar"
KERNELS = "cuda_kernels/cpu.py"
# variant -> (text in KERNELS, its replacement); each must match exactly once
VARIANTS = {
    "no_backward": [
        ("            backward_pass(\n", "            if False:\n                backward_pass(\n")
    ],
    "no_forward": [
        ("            backward_pass(\n", "            if False:\n                backward_pass(\n"),
        ("            forward_pass(\n", "            if False:\n                forward_pass(\n"),
    ],
    "no_exp": [
        (
            "    p = EXP2_C5 * y + EXP2_C4\n",
            "    return y + np.float32(1.0)\n    p = EXP2_C5 * y + EXP2_C4\n",
        )
    ],
}


@dataclass
class SplitConfig:
    """The measured layout; each stage's time is the fastest of ``repeats`` calls."""

    batch: int = 8
    """Photos a call."""
    gaussians: int = 400
    """Structured splats an image."""
    size: int = 224
    """Side of the square images."""
    threads: int = 1
    """Numba threads."""
    repeats: int = 30
    """Calls timed per stage."""
    shard: str = str(DEFAULT_SHARD)
    """Photos (.tar); smooth synthetic images when it is absent."""


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, SplitConfig]:
    parser = tool_parser(__doc__, SplitConfig)
    for name in ("batch", "gaussians", "size", "repeats"):
        parser.add_argument(f"--{name}", type=int)
    parser.add_argument("--threads", type=int, help="Numba threads (default 1)")
    parser.add_argument("--shard", help="photos (.tar)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args, cfg = parse_tool_args(parser, SplitConfig, argv)
    if min(cfg.batch, cfg.gaussians, cfg.size, cfg.threads, cfg.repeats) < 1:
        parser.error("batch, gaussians, size, threads and repeats must be >= 1")
    return args, cfg


def measure(cfg: SplitConfig) -> dict[str, float]:
    """Stage times of the kernels importable from the working directory (ms per image)."""
    import numpy as np
    import torch

    from cuda_kernels import cpu as kernels
    from streamfit.benchmark import benchmark_images, fastest
    from streamfit.fit import FitConfig
    from streamfit.fit.backends.cpu import CpuBackend, reduce_parts, warm_up
    from streamfit.fit.fitter import initial_params
    from streamfit.kernel_analysis import fma_counts

    warm_up()
    images, _ = benchmark_images(
        cfg.batch, cfg.size, [Path(cfg.shard)] if Path(cfg.shard).is_file() else None
    )
    backend = CpuBackend()
    params = initial_params(images, FitConfig(gaussians=cfg.gaussians), backend).contiguous()
    mask = torch.ones(params.shape[:2], dtype=torch.bool)
    p, m, proj, box, bad = backend._work(params, mask)
    kernels.project(p, m, cfg.size, cfg.size, backend.qcut, proj, box, bad)
    tiles_x = tiles_y = -(-cfg.size // backend.tile)
    offsets, order = kernels.bin_tiles(box, backend.tile, tiles_x, tiles_y)
    planes = backend._planes(images)
    image = np.empty((cfg.batch, cfg.size, cfg.size, 3), np.float32)
    empty = np.empty((0, 0, 0, 3), np.float32)
    tile_sse = np.empty(cfg.batch * tiles_x * tiles_y, np.float32)
    partial = np.empty((order.shape[0], 8), np.float32)
    loss = np.empty(cfg.batch, np.float32)
    grad = np.zeros((cfg.batch, cfg.gaussians, 8), np.float32)
    zeros = [torch.zeros_like(params) for _ in range(3)]

    def raster(target, out, sse, part):
        kernels.raster_tiles(
            proj, box, offsets, order, target, backend.tile, tiles_x, tiles_y,
            backend.qcut, np.float32(1e-5), out, sse, part,
        )  # fmt: skip

    stages = {
        "project": lambda: kernels.project(p, m, cfg.size, cfg.size, backend.qcut, proj, box, bad),
        "bin_tiles": lambda: kernels.bin_tiles(box, backend.tile, tiles_x, tiles_y),
        "raster_tiles (render)": lambda: raster(empty, image, tile_sse[:0], partial[:0]),
        "raster_tiles (loss and gradient)": lambda: raster(planes, empty, tile_sse, partial),
        "reduce_tiles": lambda: kernels.reduce_tiles(
            offsets,
            order,
            partial,
            tile_sse,
            tiles_x * tiles_y,
            reduce_parts(cfg.batch),
            np.float32(1e-5),
            bad,
            loss,
            grad,
        ),  # fmt: skip
        "adam_step": lambda: backend.adam_step(params, *zeros, torch.zeros(8), 1, (0.9, 0.99)),
        "loss_and_grad (backend)": lambda: backend.loss_and_grad(params, mask, images),
    }
    times = {f"asm: {k}": v for k, v in fma_counts(kernels.raster_tiles).items()}
    for name, call in stages.items():
        call()
        times[name] = fastest(call, cfg.repeats) * 1e3 / cfg.batch
    return times


def variant_times(cfg: SplitConfig, name: str) -> dict[str, float]:
    """:func:`measure` in a fresh process on a copy of the tree with ``name`` switched off."""
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "tree"
        shutil.copytree(ROOT / "cuda_kernels", tree / "cuda_kernels", ignore=_no_cache)
        source = (ROOT / KERNELS).read_text()
        for old, new in VARIANTS[name]:
            if source.count(old) != 1:
                raise SystemExit(f"cpu_time_split: {KERNELS} changed; update VARIANTS[{name!r}]")
            source = source.replace(old, new)
        (tree / KERNELS).write_text(source)
        return _run(cfg, tree, Path(tmp) / "cache")


def _no_cache(_dir: str, names: list[str]) -> list[str]:
    return [n for n in names if n == "__pycache__"]


def _run(cfg: SplitConfig, kernels_root: Path, cache: Path) -> dict[str, float]:
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(kernels_root), str(ROOT)]),
        NUMBA_NUM_THREADS=str(cfg.threads),
        NUMBA_CACHE_DIR=str(cache),
    )
    command = [sys.executable, __file__, "--measure", *_forwarded(cfg)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"cpu_time_split: a measurement failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def _forwarded(cfg: SplitConfig) -> list[str]:
    return [f"{key}={value}" for key, value in asdict(cfg).items()]


def main(argv: list[str] | None = None) -> dict:
    args, cfg = parse_args(argv)
    if args.measure:
        print(json.dumps(measure(cfg)))
        return {}
    with tempfile.TemporaryDirectory() as cache:
        result = {"full": _run(cfg, ROOT, Path(cache))}
    for name in VARIANTS:
        result[name] = variant_times(cfg, name)
    full = result["full"]
    print(f"# ms per image, {cfg.threads} thread(s), batch {cfg.batch}, {cfg.gaussians} splats")
    print_table(["stage", "ms per image"], full.items(), ["", ".4f"])
    print("# what switching one part off saves (ms per image, and share of the whole)")
    saved = [
        [f"{name} in {stage}", full[stage] - result[name][stage]]
        for stage in ("raster_tiles (render)", "loss_and_grad (backend)")
        for name in VARIANTS
    ]
    print_table(
        ["switched off", "saved ms", "share"],
        [[what, ms, ms / full[what.split(" in ", 1)[1]]] for what, ms in saved],
        ["", ".4f", ".0%"],
    )
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
