"""The pure-PyTorch reference renderer: *the* definition of the splat image model.

Every fast kernel (Numba CPU, Numba CUDA) is tested against :func:`render`. The model:

    image(p) = sum_i c_i * w_i(p),   w_i(p) = exp(-q_i(p) / 2)  if q_i(p) <= Q_CUTOFF else 0
    q_i(p)   = (p - mu_i)^T Sigma_i^-1 (p - mu_i),  Sigma_i = L_i L_i^T

with ``L_i = [[exp(log_l11), 0], [l21, exp(log_l22)]]`` (layout in :mod:`streamfit.splats`).
``q`` is evaluated through the triangular solve ``z = L^-1 (p - mu)``, ``q = |z|^2``, which is
what the kernels do too. No sorting, no alpha compositing: a plain sum.

The cut-off drops a splat's contribution where its weight would be below 1/255 (one 8-bit
step), i.e. beyond ``sqrt(Q_CUTOFF) ~= 3.33`` standard deviations; it bounds each splat's
footprint so tile kernels only visit the tiles it touches. :func:`footprint_radius` gives that
footprint's axis-aligned half-extents.
"""

from __future__ import annotations

import math

import torch

from streamfit.splats import COLOR

WEIGHT_CUTOFF = 1.0 / 255.0
Q_CUTOFF = 2.0 * math.log(255.0)  # q above which exp(-q/2) < 1/255


def cholesky_factors(params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(l11, l21, l22)`` of each splat's Cholesky factor from ``[..., 8]`` parameters."""
    return params[..., 2].exp(), params[..., 3], params[..., 4].exp()


def covariance(params: torch.Tensor) -> torch.Tensor:
    """``[..., 2, 2]`` covariance matrices ``L L^T`` from ``[..., 8]`` parameters."""
    l11, l21, l22 = cholesky_factors(params)
    sxx = l11 * l11
    sxy = l11 * l21
    syy = l21 * l21 + l22 * l22
    return torch.stack([torch.stack([sxx, sxy], -1), torch.stack([sxy, syy], -1)], -2)


def footprint_radius(params: torch.Tensor) -> torch.Tensor:
    """``[..., 2]`` half-extents (x, y) in pixels of the ellipse ``q <= Q_CUTOFF``.

    The axis-aligned bounding box of ``{p : (p-mu)^T Sigma^-1 (p-mu) <= Q}`` has half-extents
    ``sqrt(Q * Sigma_xx)`` and ``sqrt(Q * Sigma_yy)``.
    """
    l11, l21, l22 = cholesky_factors(params)
    scale = math.sqrt(Q_CUTOFF)
    return torch.stack([scale * l11, scale * torch.sqrt(l21 * l21 + l22 * l22)], dim=-1)


def pixel_centers(
    height: int, width: int, device=None, dtype=torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[H*W]`` x and y coordinates of pixel centres (``j + 0.5``, ``i + 0.5``), row-major."""
    ys, xs = torch.meshgrid(
        torch.arange(height, device=device, dtype=dtype) + 0.5,
        torch.arange(width, device=device, dtype=dtype) + 0.5,
        indexing="ij",
    )
    return xs.reshape(-1), ys.reshape(-1)


def splat_weights(
    params: torch.Tensor, height: int, width: int, cutoff: bool = True
) -> torch.Tensor:
    """``[B, N, H*W]`` weight of every splat at every pixel centre (differentiable).

    ``params``: ``[B, N, 8]``. ``cutoff=False`` gives the smooth function without the 1/255
    cut-off (for gradient checks).
    """
    px, py = pixel_centers(height, width, params.device, params.dtype)
    l11, l21, l22 = cholesky_factors(params)
    dx = px - params[..., 0, None]
    dy = py - params[..., 1, None]
    z1 = dx / l11[..., None]
    z2 = (dy - l21[..., None] * z1) / l22[..., None]
    q = z1 * z1 + z2 * z2
    weight = torch.exp(-0.5 * q)
    if cutoff:
        weight = torch.where(q <= Q_CUTOFF, weight, torch.zeros_like(weight))
    return weight


def render(
    params: torch.Tensor,
    mask: torch.Tensor | None,
    height: int,
    width: int,
    cutoff: bool = True,
) -> torch.Tensor:
    """Render a batch of splat sets: ``[B, N, 8]`` (+ ``[B, N]`` bool mask) -> ``[B, H, W, 3]``.

    Channels-last, same dtype and device as ``params``; not clamped (the model is a plain sum).
    Memory is ``O(B * N * H * W)``: this is the reference, not the fast path.
    """
    weight = splat_weights(params, height, width, cutoff)
    colors = params[..., COLOR]
    if mask is not None:
        colors = colors * mask[..., None].to(colors.dtype)
    image = torch.einsum("bnp,bnc->bpc", weight, colors)
    return image.reshape(params.shape[0], height, width, 3)


def psnr(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of ``[B, H, W, 3]`` images on a 0..1 scale (prediction clamped)."""
    mse = (prediction.clamp(0.0, 1.0) - target).pow(2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(1.0 / mse.clamp_min(1e-12))
