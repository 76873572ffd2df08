"""Timing fits, as the benchmark tools and the run planner measure them: synchronised wall
time, the fastest of some repeats (other load on a machine only ever adds time); the images
they fit; and the work a fit does (FLOPs, cut-off pairs) against what the hardware sustains."""

from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from streamfit.data.local_images import load_images
from streamfit.fit import FitConfig, FitGraphs, fit, fit_result, get_backend
from streamfit.fit.backends import FitBackend
from streamfit.hardware import peak_tflops

# CPU work unit: FLOPs per cut-off (pixel, splat) pair of one iteration, forward and backward
FLOPS_PER_PAIR = 50
MATMUL_SIZE = 1024  # float32 matmul of this size measures what the CPU cores sustain


def fastest(call: Callable[[], Any], repeats: int, device: torch.device | None = None) -> float:
    """Seconds of the fastest of ``repeats`` calls, synchronised on a CUDA ``device``."""
    best = math.inf
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        call()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def _sync(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------- images
def benchmark_images(count: int, size: int, shards: list[Path] | None) -> tuple[torch.Tensor, str]:
    """``[count, size, size, 3]`` float32 CPU images: real photos of ``shards`` (cycled to
    fill large batches) or, without any, :func:`synthetic_images`; and where they came from."""
    if shards:
        photos = load_images(shards, count, size)
        if len(photos):
            images = photos.repeat(-(-count // len(photos)), 1, 1, 1)[:count]
            return images, f"{len(photos)} photos from {', '.join(s.name for s in shards)}"
    return synthetic_images(count, size), "synthetic smooth images"


def synthetic_images(count: int, size: int, blobs: int = 24, seed: int = 0) -> torch.Tensor:
    """``[count, size, size, 3]`` sums of random coloured Gaussian blobs and a gradient:
    photo-like frequency content where no photos are at hand."""
    g = torch.Generator().manual_seed(seed)
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


# ---------------------------------------------------------------------------------- fits
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
    """Seconds of a synchronised fit of ``images [B, H, W, 3]`` (initialisation, colour
    solves, all iterations, the final PSNR read back; the fastest of ``repeats``) and the
    per-image PSNR ``[B]``."""
    images = images.to(backend.device)
    fitter = (fitters or Fitters(False))(cfg, backend)
    psnr: list[torch.Tensor] = []

    def one() -> None:
        start = time.perf_counter()
        result = fit_result(fitter(images), images.shape[1], images.shape[2], cfg.iters, start)
        psnr[:] = [result.psnr]

    return fastest(one, repeats, backend.device), psnr[0]


def fit_in_batches(
    images: torch.Tensor,
    cfg: FitConfig,
    backend: FitBackend,
    batch: int,
    record_psnr_at: tuple[int, ...] = (),
) -> dict[str, Any]:
    """Fit ``images [N, H, W, 3]`` once, ``batch`` at a time: ``{"psnr": [...], "psnr_at":
    {iteration: [...]}, "splats": [...]}`` of the images that fitted (a numerical failure is
    left out) and ``"seconds"``, the fits' wall time."""
    out: dict[str, Any] = {"psnr": [], "psnr_at": {k: [] for k in record_psnr_at}, "splats": []}
    out["seconds"] = 0.0
    for i in range(0, len(images), batch):
        start = time.perf_counter()
        result = fit(images[i : i + batch], cfg, backend, record_psnr_at=record_psnr_at)
        out["seconds"] += time.perf_counter() - start
        ok = result.ok
        out["psnr"] += result.psnr[ok].tolist()
        out["splats"] += result.splats.counts().cpu()[ok].tolist()
        for k in record_psnr_at:
            out["psnr_at"][k] += result.psnr_history[k][ok].tolist()
    return out


def iteration_seconds(
    images: torch.Tensor, cfg: FitConfig, backend: FitBackend, repeats: int, fitters: Fitters
) -> float:
    """Seconds of ``cfg.iters`` fitting iterations of ``images`` alone: a fit without the
    colour solve minus the same fit with 0 iterations (each after a warm-up), so the
    initialisation, the colour solves and the final PSNR are left out."""
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
    """Images/s fitting each of ``images`` on its own (per-image fitting)."""
    timed_fit(images[:1], cfg, backend, 1, fitters)  # warm-up (a graph's capture)
    one = [
        timed_fit(images[i : i + 1], cfg, backend, repeats, fitters)[0] for i in range(len(images))
    ]
    return len(images) / sum(one)


def torch_reference(
    images: torch.Tensor, cfg: FitConfig, backend: FitBackend, repeats: int
) -> dict[str, float]:
    """The ``torch`` reference and ``backend`` fitting the same ``images`` with the same
    ``cfg`` (its ``iters``) and ``repeats``: each one's seconds (fastest), their ratio (of
    totals) and our mean PSNR minus the reference's."""
    reference = get_backend("torch", str(backend.device))
    torch_s, torch_psnr = timed_fit(images, replace(cfg, backend="torch"), reference, repeats)
    our_s, our_psnr = timed_fit(images, cfg, backend, repeats)
    return {
        "torch_seconds": torch_s,
        "our_seconds": our_s,
        "speedup": torch_s / our_s,
        "psnr_delta": float(our_psnr.nanmean() - torch_psnr.nanmean()),
    }


# ---------------------------------------------------------------------------------- rows
def baselines(
    images: torch.Tensor,
    cfg: FitConfig,
    backend: FitBackend,
    repeats: int,
    fitters: Fitters,
    single_images: int,
    torch_images: int,
) -> dict[str, Any]:
    """What the rows of one backend and splat count compare with, measured once: the seconds
    of a first fit (compiling or loading the kernels), images/s fitting ``single_images``
    images one at a time (0: not measured) and the ``torch`` reference on ``torch_images``
    (:func:`torch_reference`; 0, or the torch backend itself: not measured)."""
    start = time.perf_counter()
    timed_fit(images[:1], replace(cfg, iters=2), backend)
    out: dict[str, Any] = {"warmup_s": time.perf_counter() - start, "single": None, "torch": {}}
    if single_images:
        out["single"] = single_rate(images[:single_images], cfg, backend, repeats, fitters)
    if torch_images and backend.name != "torch":
        out["torch"] = torch_reference(images[:torch_images], cfg, backend, repeats)
        out["torch_images"] = torch_images
    return out


def benchmark_row(
    images: torch.Tensor,
    cfg: FitConfig,
    backend: FitBackend,
    repeats: int,
    fitters: Fitters,
    base: dict[str, Any],
    machine: str,
    peak: float | None = None,
) -> dict[str, Any]:
    """One row of ``tools/benchmark_fit.py`` (its docstring defines the fields; the run
    planner and the GPU check read them): a fit of all ``images [B, S, S, 3]`` after a
    warm-up (a graph's capture), the fastest of ``repeats``, against ``base``
    (:func:`baselines`), and the work it does (:func:`work_rates`)."""
    batch, size = images.shape[0], images.shape[1]
    timed_fit(images, cfg, backend, 1, fitters)
    seconds, psnr = timed_fit(images, cfg, backend, repeats, fitters)
    rate, single, reference = batch / seconds, base["single"], base["torch"]
    row = {
        "backend": backend.name,
        "device": machine,
        "batch": batch,
        "gaussians": cfg.gaussians,
        "iters": cfg.iters,
        "height": size,
        "width": images.shape[2],
        "images_per_s": rate,
        "ms_per_iter_image": seconds * 1e3 / (cfg.iters * batch),
        "psnr": float(psnr.nanmean()),
        "seconds": seconds,
        "graph": fitters(cfg, backend).enabled,
        "warmup_s": base["warmup_s"],
        "single_images_per_s": single,
        "speedup_vs_single": rate / single if single else None,
        "torch_seconds": reference.get("torch_seconds"),
        "torch_our_seconds": reference.get("our_seconds"),
        "speedup_vs_torch": reference.get("speedup"),
        "psnr_delta_vs_torch": reference.get("psnr_delta"),
        "torch_images": base.get("torch_images"),
    }
    keys = ("iteration_seconds", "flops_per_iter", "tflops", "peak_fraction")
    row.update(dict.fromkeys((*keys, "cutoff_pairs_per_image", "gflops", "matmul_gflops")))
    row.update(work_rates(images, cfg, backend, repeats, fitters, peak))
    return row


# ---------------------------------------------------------------------------------- work
def work_rates(
    images: torch.Tensor,
    cfg: FitConfig,
    backend: FitBackend,
    repeats: int,
    fitters: Fitters,
    peak: float | None = None,
) -> dict[str, float | None]:
    """The work of one fitting iteration of ``images`` and the rate it runs at, over
    :func:`iteration_seconds`. CUDA backends: ``flops_per_iter`` counted in
    :mod:`cuda_kernels.gpu` on the initial splats' tile lists, ``tflops`` and its share of
    ``peak`` (TFLOP/s; default: the card's FP32 peak). CPU backends:
    ``cutoff_pairs_per_image`` (the (pixel, splat) pairs inside the 1/255 cut-off of the
    initial splats) at :data:`FLOPS_PER_PAIR` each, as ``gflops`` (the share of the CPU's
    peak is the caller's: :func:`matmul_gflops`). ``{}`` for a backend that counts neither."""
    from streamfit.fit.fitter import initial_params

    target = images.to(backend.device)
    params = initial_params(target, cfg, backend)
    mask = torch.ones(params.shape[:2], dtype=torch.bool, device=backend.device)
    batch, height, width, _ = images.shape
    if hasattr(backend, "tile_entries"):
        from cuda_kernels.gpu import flops_per_iteration

        entries = backend.tile_entries(params, mask, height, width)
        flops = flops_per_iteration(entries, backend.tile, mask.numel(), batch * height * width)
        seconds = iteration_seconds(images, cfg, backend, repeats, fitters)
        tflops = flops * cfg.iters / seconds / 1e12
        peak = peak or peak_tflops(backend.device, "fp32")
        return {
            "iteration_seconds": seconds,
            "flops_per_iter": flops,
            "tflops": tflops,
            "peak_fraction": tflops / peak if peak else None,
        }
    if hasattr(backend, "cutoff_pairs"):
        pairs = float(backend.cutoff_pairs(params, mask, height, width).double().mean())
        seconds = iteration_seconds(images, cfg, backend, repeats, fitters)
        flops = round(pairs * FLOPS_PER_PAIR * batch)
        return {
            "iteration_seconds": seconds,
            "cutoff_pairs_per_image": pairs,
            "flops_per_iter": flops,
            "gflops": flops * cfg.iters / seconds / 1e9,
            "tflops": flops * cfg.iters / seconds / 1e12,
        }
    return {}


def matmul_gflops(size: int = MATMUL_SIZE, repeats: int = 10) -> float:
    """GFLOP/s of a float32 ``size x size`` matmul on the CPU, the fastest of ``repeats``
    (with torch's threads: all the cores a fit uses)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    out = torch.empty(size, size)
    torch.mm(a, b, out=out)
    return 2 * size**3 / fastest(lambda: torch.mm(a, b, out=out), repeats) / 1e9


def describe_machine(device: torch.device) -> str:
    """The GPU's name, or the CPU's architecture, usable cores and load average now."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{platform.machine()} CPU, {cores} cores, load average {load:.1f} at start"
