#!/usr/bin/env python
"""Benchmark batched splat fitting: images/s, ms per iteration per image, PSNR at the budget,
and the speed-up over fitting one image at a time and over the ``torch`` reference backend.

    python tools/benchmark_fit.py --device cpu --json runs/bench_fit_cpu.json     # ~2 min, 2 cores
    python tools/benchmark_fit.py --device cuda --json runs/bench_fit_gpu.json --plot runs/fig2.png
    python tools/benchmark_fit.py --device cuda --batches 4096 --gaussians 400 --iters 100

Defaults on a GPU reproduce the paper's Fig. 2 grid (224x224, batch 1..4096, 400..3136
splats). How each figure is measured:

* ``images_per_s``, ``ms_per_iter_image``: wall time of one ``fit()`` of the whole batch
  (initialisation, all iterations, final PSNR; synchronised), after a warm-up fit; the
  fastest of ``--repeats``.
* ``speedup_vs_single``: against the same backend fitting ``--single-images`` images one at a
  time (same settings), i.e. per-image fitting.
* ``speedup_vs_torch``: per-iteration time of the ``torch`` reference backend on the same
  device, from ``--torch-images`` images fitted for ``--torch-iters`` iterations minus a
  0-iteration fit (so its set-up is not counted), over our ``ms_per_iter_image``.
  ``psnr_delta_vs_torch`` is our mean PSNR minus torch's on those images with those settings:
  the speed-up holds at the same quality when it is ~0.
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

from streamfit.config import ConfigError, load_config, to_yaml  # noqa: E402
from streamfit.fit import FitConfig, fit, get_backend  # noqa: E402
from streamfit.fit.backends import FitBackend  # noqa: E402
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
# FP32 (non-tensor-core) peaks, TFLOP/s, by device-name fragment
PEAK_TFLOPS = {"H100 PCIe": 51.2, "H100": 66.9, "H200": 66.9, "A100": 19.5}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument(
        "--backends", help="comma list of backends to time (default: the device's fast one)"
    )
    parser.add_argument("--batches", help="comma list of batch sizes (default by device)")
    parser.add_argument("--gaussians", help="comma list of splat counts (default by device)")
    parser.add_argument("--iters", type=int, default=100, help="iteration budget")
    parser.add_argument("--size", type=int, default=224, help="image side in pixels")
    parser.add_argument("--shards", type=Path, nargs="*", help="webdataset .tar shards of photos")
    parser.add_argument(
        "--repeats", type=int, default=1, help="time each fit this often, keep the best"
    )
    parser.add_argument("--single-images", type=int, default=4, help="images fitted one at a time")
    parser.add_argument(
        "--torch-images", type=int, help="images for the torch reference (cpu 2, cuda 16)"
    )
    parser.add_argument(
        "--torch-iters", type=int, default=3, help="iterations for the torch reference"
    )
    parser.add_argument("--no-torch", action="store_true", help="skip the torch reference")
    parser.add_argument("--peak-tflops", type=float, help="FP32 peak of the GPU (default: by name)")
    parser.add_argument("--json", type=Path, help="write the rows here")
    parser.add_argument("--plot", type=Path, help="PNG of the speed-up over per-image fitting")
    parser.add_argument("--config", help="YAML file of FitConfig fields")
    parser.add_argument(
        "overrides", nargs="*", help="key=value FitConfig fields, e.g. lr_color=0.03"
    )
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is visible")
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
    if args.shards is None and DEFAULT_SHARDS.is_file():
        args.shards = [DEFAULT_SHARDS]
    try:
        args.fit = load_config(FitConfig, args.config, [*args.overrides, f"iters={args.iters}"])
    except (ConfigError, ValueError) as err:
        parser.error(str(err))
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


def timed_fit(
    images: torch.Tensor, cfg: FitConfig, backend: FitBackend, repeats: int = 1
) -> tuple[float, torch.Tensor]:
    """Seconds of a synchronised ``fit`` (the fastest of ``repeats``: other load on the machine
    only ever adds time) and the per-image PSNR ``[B]``."""
    images = images.to(backend.device)
    best = math.inf
    for _ in range(repeats):
        _sync(backend.device)
        start = time.perf_counter()
        result = fit(images, cfg, backend)
        _sync(backend.device)
        best = min(best, time.perf_counter() - start)
    return best, result.psnr


def iteration_seconds(
    images: torch.Tensor, cfg: FitConfig, backend: FitBackend, repeats: int
) -> float:
    """Seconds of ``cfg.iters`` fitting iterations of ``images``, without the fixed costs of
    a fit (see the module docstring)."""
    plain = replace(cfg, colour_solve="none")
    with_iters, _ = timed_fit(images, plain, backend, repeats)
    setup, _ = timed_fit(images, replace(plain, iters=0), backend, repeats)
    return max(with_iters - setup, 1e-9)


def single_rate(images: torch.Tensor, cfg: FitConfig, backend: FitBackend, repeats: int) -> float:
    """Images/s fitting each image on its own."""
    total = sum(timed_fit(images[i : i + 1], cfg, backend, repeats)[0] for i in range(len(images)))
    return len(images) / total


def torch_reference(
    images: torch.Tensor, cfg: FitConfig, backend: FitBackend, device: torch.device, iters: int
) -> tuple[float, float]:
    """``(ms per iteration per image, PSNR delta)`` of the torch backend on ``images``."""
    reference = get_backend("torch", str(device))
    t_iters, torch_psnr = timed_fit(images, replace(cfg, iters=iters), reference)
    t_setup, _ = timed_fit(images, replace(cfg, iters=0), reference)
    _, our_psnr = timed_fit(images, replace(cfg, iters=iters), backend)
    ms = max(t_iters - t_setup, 1e-9) * 1e3 / (iters * len(images))
    return ms, float(our_psnr.nanmean() - torch_psnr.nanmean())


def flop_count(backend: FitBackend, images: torch.Tensor, cfg: FitConfig) -> int | None:
    """FLOPs of one iteration of the CUDA kernels on this batch (initial splats)."""
    if not hasattr(backend, "tile_entries"):
        return None
    from cuda_kernels.gpu import flops_per_iteration
    from streamfit.fit.fitter import initial_params

    target = images.to(backend.device)
    params = initial_params(target, cfg)
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

    params = initial_params(images.to(backend.device), cfg)
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
            info = {"warmup_s": time.perf_counter() - compile_start}
            info["single"] = single_rate(images[: args.single_images], cfg, backend, args.repeats)
            if not args.no_torch and name != "torch":
                ms, delta = torch_reference(
                    images[: args.torch_images], cfg, backend, device, args.torch_iters
                )
                info["torch_ms"], info["psnr_delta"] = ms, delta
            per_splat_count[key] = info
        info = per_splat_count[key]
        seconds, psnr = timed_fit(images[:batch], cfg, backend, args.repeats)
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
            "warmup_s": info["warmup_s"],
            "single_images_per_s": info["single"],
            "speedup_vs_single": rate / info["single"],
            "torch_ms_per_iter_image": info.get("torch_ms"),
            "speedup_vs_torch": info["torch_ms"] / ms if "torch_ms" in info else None,
            "psnr_delta_vs_torch": info.get("psnr_delta"),
            "torch_images": args.torch_images if "torch_ms" in info else None,
            "torch_iters": args.torch_iters if "torch_ms" in info else None,
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
                iter_s = iteration_seconds(images[:batch], cfg, backend, args.repeats)
                row["iteration_seconds"] = iter_s
                row["flops_per_iter"] = flops
                row["tflops"] = flops * args.iters / iter_s / 1e12
                peak = args.peak_tflops or peak_tflops(device)
                row["peak_fraction"] = row["tflops"] / peak if peak else None
        else:
            pairs = cutoff_pairs(backend, images[:batch], cfg)
            if pairs is not None:
                iter_s = iteration_seconds(images[:batch], cfg, backend, args.repeats)
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


def peak_tflops(device: torch.device) -> float | None:
    name = torch.cuda.get_device_name(device)
    for fragment, peak in PEAK_TFLOPS.items():
        if fragment in name:
            return peak
    return None


def _fmt(value, spec: str) -> str:
    return (
        "-"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else format(value, spec)
    )


def print_table(rows: list[dict]) -> None:
    header = (
        f"{'backend':>7} {'batch':>6} {'splats':>6} {'iters':>5} {'img/s':>9} {'ms/it/img':>9} "
        f"{'PSNR':>6} {'x single':>8} {'torch ms':>9} {'x torch':>8} {'dPSNR':>6} {'TFLOP/s':>8} "
        f"{'of peak':>7}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['backend']:>7} {r['batch']:>6} {r['gaussians']:>6} {r['iters']:>5} "
            f"{r['images_per_s']:>9.2f} {r['ms_per_iter_image']:>9.3f} {r['psnr']:>6.2f} "
            f"{_fmt(r['speedup_vs_single'], '8.2f')} {_fmt(r['torch_ms_per_iter_image'], '9.1f')} "
            f"{_fmt(r['speedup_vs_torch'], '8.1f')} "
            f"{_fmt(r['psnr_delta_vs_torch'], '+6.2f')} {_fmt(r['tflops'], '8.2f')} "
            f"{_fmt(r['peak_fraction'], '7.1%')}"
        )
    for r in rows:
        if r["matmul_gflops"] is not None:
            print(
                f"# {r['backend']} batch {r['batch']}: {r['cutoff_pairs_per_image']:,.0f} cut-off "
                f"pairs/image x {FLOPS_PER_PAIR} FLOP = {r['gflops']:.1f} GFLOP/s; float32 matmul "
                f"{r['matmul_gflops']:.1f} GFLOP/s in this run; peak_fraction "
                f"{r['peak_fraction']:.1%}"
            )


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, n in sorted({(r["backend"], r["gaussians"]) for r in rows}):
        sel = sorted(
            (r for r in rows if r["backend"] == name and r["gaussians"] == n),
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
