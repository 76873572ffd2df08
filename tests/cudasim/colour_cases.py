"""Cases of the colour-stage tests shared by the CPU test and the simulator test: random splat
batches with masked, clipped, elongated and non-finite splats, and the dense reference."""

from __future__ import annotations

import torch

from streamfit.fit.backends.torch_backend import TorchBackend


def colour_case(
    batch: int, n: int, height: int, width: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(params [B, N, 8], mask [B, N], target [B, H, W, 3])``: centres a little beyond the
    border, varied sizes and shears, about 80 % of the splats valid, one NaN splat that is
    masked out and one that is masked in (a colour kernel skips it: it gets a zero row)."""
    g = torch.Generator().manual_seed(seed)
    p = torch.zeros(batch, n, 8)
    p[..., 0] = torch.rand(batch, n, generator=g) * (width + 6) - 3
    p[..., 1] = torch.rand(batch, n, generator=g) * (height + 6) - 3
    cell = (height * width / n) ** 0.5
    p[..., 2] = torch.log(torch.tensor(cell / 2)) + 0.4 * torch.randn(batch, n, generator=g)
    p[..., 3] = 0.5 * cell / 2 * torch.randn(batch, n, generator=g)
    p[..., 4] = torch.log(torch.tensor(cell / 2)) + 0.4 * torch.randn(batch, n, generator=g)
    p[..., 5:] = torch.rand(batch, n, 3, generator=g)
    mask = torch.rand(batch, n, generator=g) < 0.8
    mask[0, 0], p[0, 0, 2] = False, float("nan")
    mask[-1, 1], p[-1, 1, 0] = True, float("nan")
    target = torch.rand(batch, height, width, 3, generator=g)
    return p, mask, target


def reference_system(
    params: torch.Tensor, mask: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The dense definition of the colour normal equations (:class:`FitBackend`'s)."""
    return TorchBackend().colour_system(params, mask, target)


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return float((value - reference).abs().max() / reference.abs().max().clamp_min(1e-12))
