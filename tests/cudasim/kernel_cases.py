"""Random splat batches and reference values shared by the kernel tests (CPU and simulator)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from streamfit.render import render


def run_under_simulator(*scripts: Path) -> None:
    """Runs the pytest files ``scripts`` in one process of their own with the Numba CUDA
    simulator on (it must be set before numba is first imported, and must not leak into this
    process); fails unless their tests ran and passed."""
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *map(str, scripts)],
        env=env,
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout[-2000:]


def random_splats(
    batch: int, n: int, height: int, width: int, seed: int = 0, keep: float = 0.8
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, N, 8]`` float32 splats of varied size, elongation and colour sign, and a ``[B, N]``
    mask with about ``keep`` of them valid (different counts per image)."""
    g = torch.Generator().manual_seed(seed)
    p = torch.zeros(batch, n, 8)
    # centres a little beyond the border too: footprints that are clipped by the image
    p[..., 0] = torch.rand(batch, n, generator=g) * (width + 8) - 4
    p[..., 1] = torch.rand(batch, n, generator=g) * (height + 8) - 4
    cell = (height * width / n) ** 0.5
    p[..., 2] = torch.log(torch.tensor(cell / 2)) + 0.4 * torch.randn(batch, n, generator=g)
    p[..., 3] = 0.6 * cell / 2 * torch.randn(batch, n, generator=g)
    p[..., 4] = torch.log(torch.tensor(cell / 2)) + 0.4 * torch.randn(batch, n, generator=g)
    p[..., 5:] = torch.rand(batch, n, 3, generator=g) * 1.2 - 0.1
    mask = torch.rand(batch, n, generator=g) < keep
    return p, mask


def reference_loss_and_grad(
    params: torch.Tensor,
    mask: torch.Tensor,
    target: torch.Tensor,
    dtype: torch.dtype = torch.float64,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Image, per-image MSE ``[B]`` and ``d(sum_b mse_b)/d params`` from :func:`render` with
    autograd, in ``dtype``; masked splats get zero gradient."""
    _, height, width, _ = target.shape
    p = params.to(dtype).detach().requires_grad_(True)
    image = render(p, mask, height, width)
    mse = (image - target.to(dtype)).pow(2).flatten(1).mean(1)
    (grad,) = torch.autograd.grad(mse.sum(), p)
    return image.detach(), mse.detach(), grad * mask[..., None]


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``|actual - expected| / |expected|`` in the 2-norm, in float64."""
    expected = expected.to(torch.float64)
    return float((actual.to(torch.float64) - expected).norm() / expected.norm().clamp_min(1e-30))


def blob_images(
    batch: int, height: int, width: int, blobs: int, spread: float, seed: int = 0
) -> torch.Tensor:
    """``[batch, height, width, 3]`` sums of ``blobs`` coloured Gaussian blobs (standard
    deviations 3 to ``3 + spread`` pixels), clamped to 0..1: photo-like content that few
    splats represent well and fits converge on."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    img = torch.zeros(batch, height, width, 3)
    for _ in range(blobs):
        cx, cy = torch.rand(2, generator=g) * torch.tensor([width, height])
        s = 3 + spread * torch.rand(1, generator=g)
        col = torch.rand(batch, 1, 1, 3, generator=g)
        img += col * torch.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * s**2))[None, :, :, None]
    return img.clamp(0, 1)


def photo_like(b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """``[b, h, w, 3]``: a smooth left half, a sharp checkerboard on the right (the detail the
    adaptive initialisation must find)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(b, 1, 1, 3, generator=g).expand(b, h, w, 3).clone()
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    checks = (((xs // 3) + (ys // 3)) % 2).float()[None, :, :, None]
    images[:, :, w // 2 :] = checks[:, :, w // 2 :] * 0.8 + 0.1
    return images
