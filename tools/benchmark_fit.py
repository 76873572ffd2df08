#!/usr/bin/env python
"""Benchmark batched splat fitting: images/s, ms per iteration per image, PSNR at the budget,
and the speed-up over fitting one image at a time and over the ``torch`` reference backend.

    python tools/benchmark_fit.py --device cpu --json runs/bench_fit_cpu.json     # ~2 min, 2 cores
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

import os

# Idle OpenMP threads of torch and of the Numba kernels share the cores; spinning ones steal
# them from the threads doing work (a 10-50x slow-down on a busy 2-core machine). Must be set
# before torch loads libgomp.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402
from itertools import cycle, islice  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from streamfit.cli import parse_tool_args, tool_parser  # noqa: E402
from streamfit.config import to_yaml  # noqa: E402
from streamfit.fit import FitConfig, FitGraphs, fit_result, get_backend  # noqa: E402
from streamfit.fit.backends import FitBackend  # noqa: E402
from streamfit.hardware import peak_tflops, resolve_device  # noqa: E402
from streamfit.report import print_table as print_table_rows  # noqa: E402
from streamfit.report import write_json  # noqa: E402

DEFAULT_SHARDS = (
    Path(__file__).resolve().parents[2] / "shared/data/imagenet-sample/train-000000.tar"
)
GRIDS = {  # device -> (batches, gaussians)
    "cuda": ("1,16,64,256,1024,4096", "400,1024,2025,3136"),
    "cpu": ("1,8", "400"),
}
# CPU work unit: FLOPs per cut-off (pixel, splat) pair of one iteration, forward and backward
FLOPS_PER_PAIR = 50
MATMUL_SIZE = 1024  # float32 matmul of this size measures what the CPU cores sustain


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
        args.batches = _ints(args.batches or batches)
        args.gaussians = _ints(args.gaussians or gaussians)
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


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v]
    except ValueError:
        raise ValueError(f"expected a comma list of integers, got {text!r}") from None


# ---------------------------------------------------------------------------------- images
def load_images(count: int, size: int, shards: list[Path] | None) -> tuple[torch.Tensor, str]:
    """``[count, size, size, 3]`` float32 CPU images and a description of where they came from."""
    if shards:
        from streamfit.data.local_images import ImageSource, iter_decoded

        source = ImageSource(list(shards))
        unique = [img for _, img in islice(iter_decoded(source, size, source.skipped), count)]
        if unique:
            images = torch.stack(list(islice(cycle(unique), count)))
            return images, f"{len(unique)} photos from {', '.join(s.name for s in shards)}"
    return synthetic_images(count, size), "synthetic smooth images"


def synthetic_images(count: int, size: int, blobs: int = 24) -> torch.Tensor:
    """Sums of random coloured Gaussian blobs and a gradient: photo-like frequency content."""
    g = torch.Generator().manual_seed(0)
    ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    images = torch.empty(count, size, size, 3)
    for b in range(count):
        img = (
            torch.rand(3, generator=g) * 0.3
            + (xs / size)[..., None] * torch.rand(3, generator=g) * 0.3
        )
        for _ in range(blobs):
            cx, cy = torch.rand(2, generator=g) * size
            sigma = size * (0.01 + 0.08 * torch.rand(1, generator=g))
            blob = torch.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma**2))
            img = img + blob[..., None] * (torch.rand(3, generator=g) - 0.4)
        images[b] = img.clamp(0, 1)
    return images


# ---------------------------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Fitters:
    """One fitter per fit config: a :class:`FitGraphs` (CUDA graphs of whole fits on a GPU,
    captured by the first fit of a batch shape; eager with ``graphs=False`` or on a CPU)."""

    def __init__(self, graphs: bool) -> None:
        self.graphs = graphs
        self._fitters: dict[tuple[str, str], FitGraphs] = {}

    def __call__(self, cfg: FitConfig, backend: FitBackend) -> FitGraphs:
        key = (cfg.settings_hash(), backend.name)
        if key not in self._fitters:
            self._fitters[key] = FitGraphs(cfg, backend, enabled=self.graphs)
        return self._fitters[key]


def timed_fit(
    images: torch.Tensor,
    cfg: FitConfig,
    backend: FitBackend,
    repeats: int = 1,
    fitters: Fitters | None = None,
) -> tuple[float, torch.Tensor]:
    """Seconds of a synchronised fit (the fastest of ``repeats``: other load on the machine
    only ever adds time) and the per-image PSNR ``[B]``."""
    images = images.to(backend.device)
    fitter = (fitters or Fitters(False))(cfg, backend)
    best = math.inf
    for _ in range(repeats):
        _sync(backend.device)
        start = time.perf_counter()
        result = fit_result(fitter(images), images.shape[1], images.shape[2], cfg.iters, start)
        _sync(backend.device)
        best = min(best, time.perf_counter() - start)
    return best, result.psnr


def iteration_seconds(
    images: torch.Tensor, cfg: FitConfig, backend: FitBackend, repeats: int, fitters: Fitters
) -> float:
    """Seconds of ``cfg.iters`` fitting iterations of ``images``, without the fixed costs of
    a fit (see the module docstring)."""
    plain = replace(cfg, colour_solve="none")
    timed_fit(images, plain, backend, 1, fitters)  # warm-up (a graph's capture)
    with_iters, _ = timed_fit(images, plain, backend, repeats, fitters)
    setup = replace(plain, iters=0)
    timed_fit(images, setup, backend, 1, fitters)
    fixed, _ = timed_fit(images, setup, backend, repeats, fitters)
    return max(with_iters - fixed, 1e-9)


def single_rate(
    images: torch.Tensor, cfg: FitConfig, backend: FitBackend, repeats: int, fitters: Fitters
) -> float:
    """Images/s fitting each image on its own."""
    timed_fit(images[:1], cfg, backend, 1, fitters)  # warm-up (a graph's capture)
    one = [
        timed_fit(images[i : i + 1], cfg, backend, repeats, fitters)[0] for i in range(len(images))
    ]
    return len(images) / sum(one)


def torch_reference(
    images: torch.Tensor, cfg: FitConfig, backend: FitBackend, repeats: int
) -> dict[str, float]:
    """The ``torch`` reference and ``backend`` fitting the same ``images`` with the same
    ``cfg`` (its ``iters``) and ``repeats``: each one's seconds (fastest), their ratio and our
    mean PSNR minus the reference's."""
    reference = get_backend("torch", str(backend.device))
    torch_s, torch_psnr = timed_fit(images, replace(cfg, backend="torch"), reference, repeats)
    our_s, our_psnr = timed_fit(images, cfg, backend, repeats)
    return {
        "torch_seconds": torch_s,
        "our_seconds": our_s,
        "speedup": torch_s / our_s,
        "psnr_delta": float(our_psnr.nanmean() - torch_psnr.nanmean()),
    }


def flop_count(backend: FitBackend, images: torch.Tensor, cfg: FitConfig) -> int | None:
    """FLOPs of one iteration of the CUDA kernels on this batch (initial splats)."""
    if not hasattr(backend, "tile_entries"):
        return None
    from cuda_kernels.gpu import flops_per_iteration
    from streamfit.fit.fitter import initial_params

    target = images.to(backend.device)
    params = initial_params(target, cfg, backend)
    mask = torch.ones(params.shape[:2], dtype=torch.bool, device=backend.device)
    _, height, width, _ = images.shape
    entries = backend.tile_entries(params, mask, height, width)
    return flops_per_iteration(
        entries, backend.tile, mask.numel(), images.shape[0] * height * width
    )


def cutoff_pairs(backend: FitBackend, images: torch.Tensor, cfg: FitConfig) -> float | None:
    """Mean (pixel, splat) pairs inside the cut-off per image of the initial splats."""
    if not hasattr(backend, "cutoff_pairs"):
        return None
    from streamfit.fit.fitter import initial_params

    params = initial_params(images.to(backend.device), cfg, backend)
    mask = torch.ones(params.shape[:2], dtype=torch.bool, device=backend.device)
    _, height, width, _ = images.shape
    return float(backend.cutoff_pairs(params, mask, height, width).double().mean())


def matmul_gflops(size: int = MATMUL_SIZE, repeats: int = 10) -> float:
    """GFLOP/s of a float32 ``size x size`` matmul on the CPU, the fastest of ``repeats``
    (with torch's threads: all the cores the fit uses)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    out = torch.empty(size, size)
    torch.mm(a, b, out=out)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


# ---------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    base = replace(args.fit, device=args.device)
    print(to_yaml(base), file=sys.stderr)
    device = torch.device(args.device)
    images, origin = load_images(
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
        key = (name, n)
        if key not in per_splat_count:
            compile_start = time.perf_counter()
            timed_fit(images[:1], replace(cfg, iters=2), backend)  # compile / load kernels
            info = {"warmup_s": time.perf_counter() - compile_start, "single": None}
            if args.single_images:
                singles = images[: args.single_images]
                info["single"] = single_rate(singles, cfg, backend, args.repeats, fitters)
            if not args.no_torch and name != "torch":
                info["torch"] = torch_reference(
                    images[: args.torch_images], cfg, backend, args.repeats
                )
            per_splat_count[key] = info
        info = per_splat_count[key]
        reference = info.get("torch", {})
        timed_fit(images[:batch], cfg, backend, 1, fitters)  # warm-up (a graph's capture)
        seconds, psnr = timed_fit(images[:batch], cfg, backend, args.repeats, fitters)
        rate = batch / seconds
        ms = seconds * 1e3 / (args.iters * batch)
        row = {
            "backend": name,
            "device": machine,
            "batch": batch,
            "gaussians": n,
            "iters": args.iters,
            "height": args.size,
            "width": args.size,
            "images_per_s": rate,
            "ms_per_iter_image": ms,
            "psnr": float(psnr.nanmean()),
            "seconds": seconds,
            "graph": fitters(cfg, backend).enabled,
            "warmup_s": info["warmup_s"],
            "single_images_per_s": info["single"],
            "speedup_vs_single": rate / info["single"] if info["single"] else None,
            "torch_seconds": reference.get("torch_seconds"),
            "torch_our_seconds": reference.get("our_seconds"),
            "speedup_vs_torch": reference.get("speedup"),
            "psnr_delta_vs_torch": reference.get("psnr_delta"),
            "torch_images": args.torch_images if reference else None,
            "iteration_seconds": None,
            "flops_per_iter": None,
            "tflops": None,
            "peak_fraction": None,
            "cutoff_pairs_per_image": None,
            "gflops": None,
            "matmul_gflops": None,
        }
        if device.type == "cuda":
            flops = flop_count(backend, images[:batch], cfg)
            if flops is not None:
                iter_s = iteration_seconds(images[:batch], cfg, backend, args.repeats, fitters)
                row["iteration_seconds"] = iter_s
                row["flops_per_iter"] = flops
                row["tflops"] = flops * args.iters / iter_s / 1e12
                peak = args.peak_tflops or peak_tflops(device, "fp32")
                row["peak_fraction"] = row["tflops"] / peak if peak else None
        else:
            pairs = cutoff_pairs(backend, images[:batch], cfg)
            if pairs is not None:
                iter_s = iteration_seconds(images[:batch], cfg, backend, args.repeats, fitters)
                row["iteration_seconds"] = iter_s
                row["cutoff_pairs_per_image"] = pairs
                row["flops_per_iter"] = round(pairs * FLOPS_PER_PAIR * batch)
                row["gflops"] = row["flops_per_iter"] * args.iters / iter_s / 1e9
                row["tflops"] = row["gflops"] / 1e3
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


def describe_machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{platform.machine()} CPU, {cores} cores, load average {load:.1f} at start"


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, n in sorted({(r["backend"], r["gaussians"]) for r in rows}):
        sel = sorted(
            (
                r
                for r in rows
                if r["backend"] == name and r["gaussians"] == n and r["speedup_vs_single"]
            ),
            key=lambda r: r["batch"],
        )
        ax.plot(
            [r["batch"] for r in sel],
            [r["speedup_vs_single"] for r in sel],
            marker="o",
            label=f"{name}, {n} splats",
        )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("speed-up over per-image fitting")
    ax.grid(True, alpha=0.3)
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
