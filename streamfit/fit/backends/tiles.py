"""Per-tile splat lists built with torch ops on the GPU: the input of the CUDA colour stage
(:mod:`cuda_kernels.colour_gpu`; the cpu backend's colour kernel reads its raster kernels'
lists instead).

The boxes are slightly wider than the kernels' footprint boxes; the colour kernel tests the
cut-off at every pixel, so a wider box only lists a splat in a tile it may not touch.
"""

from __future__ import annotations

import math

import torch

from streamfit.render import Q_CUTOFF

# proj layout shared with the raster kernels: x, y, i11, l21, i22, r, g, b
PROJ_FIELDS = 8


def tile_lists(
    params: torch.Tensor, mask: torch.Tensor, height: int, width: int, tile: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(proj [B, N, 8] float32, offsets [B*T + 1] int64, order [E] int32)``.

    Tile ``t`` (row-major, ``T = ceil(H/tile) * ceil(W/tile)``) of image ``b`` lists the valid
    splats (masked in, all parameters finite) whose footprint box touches it in
    ``order[offsets[b*T + t] : offsets[b*T + t + 1]]``, ascending.
    """
    n_img, n_spl, _ = params.shape
    p = params.detach().to(torch.float32)
    tiles_x, tiles_y = math.ceil(width / tile), math.ceil(height / tile)
    valid = mask & torch.isfinite(p).all(-1)
    p = torch.where(valid[..., None], p, torch.zeros_like(p))
    l11, l21, l22 = p[..., 2].exp(), p[..., 3], p[..., 4].exp()
    proj = torch.stack(
        [p[..., 0], p[..., 1], 1.0 / l11, l21, 1.0 / l22, p[..., 5], p[..., 6], p[..., 7]], -1
    ).contiguous()
    scale = math.sqrt(Q_CUTOFF) * 1.001
    rx = scale * l11 + 0.05
    ry = scale * torch.sqrt(l21 * l21 + l22 * l22) + 0.05
    # pixel k is inside when |k + 0.5 - centre| <= extent; clip in float before rounding
    c0 = (p[..., 0] - rx - 0.5).clamp(-1, width).ceil().clamp_min(0)
    c1 = (p[..., 0] + rx - 0.5).clamp(-1, width).floor().clamp_max(width - 1)
    r0 = (p[..., 1] - ry - 0.5).clamp(-1, height).ceil().clamp_min(0)
    r1 = (p[..., 1] + ry - 0.5).clamp(-1, height).floor().clamp_max(height - 1)
    valid &= (c0 <= c1) & (r0 <= r1)
    tx0, tx1 = (c0 / tile).floor().long(), (c1 / tile).floor().long()
    ty0, ty1 = (r0 / tile).floor().long(), (r1 / tile).floor().long()
    nx = torch.where(valid, tx1 - tx0 + 1, torch.zeros_like(tx0))
    ny = torch.where(valid, ty1 - ty0 + 1, torch.zeros_like(ty0))
    counts = (nx * ny).flatten()
    splat = torch.repeat_interleave(torch.arange(n_img * n_spl, device=p.device), counts)
    first = torch.cumsum(counts, 0) - counts
    k = torch.arange(splat.numel(), device=p.device) - first[splat]
    nx_s = nx.flatten()[splat]
    tx = tx0.flatten()[splat] + k % nx_s
    ty = ty0.flatten()[splat] + torch.div(k, nx_s, rounding_mode="floor")
    n_tiles = tiles_x * tiles_y
    key = torch.div(splat, n_spl, rounding_mode="floor") * n_tiles + ty * tiles_x + tx
    key, perm = torch.sort(key, stable=True)
    order = (splat[perm] % n_spl).to(torch.int32)
    offsets = torch.zeros(n_img * n_tiles + 1, dtype=torch.int64, device=p.device)
    offsets[1:] = torch.cumsum(torch.bincount(key, minlength=n_img * n_tiles), 0)
    return proj, offsets, order.contiguous()
