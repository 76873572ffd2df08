"""CUDA kernel of the colour stage: the normal equations ``(W^T W) c = W^T t`` of the best
colours for fixed splat geometry, accumulated over the per-tile splat lists of
:func:`streamfit.fit.backends.tiles.tile_lists`. The same sums as :mod:`cuda_kernels.colour_cpu`,
one pixel at a time.

Arguments (``B`` images, ``N`` splats, ``T = tiles_x * tiles_y`` tiles, ``E`` list entries):
``proj [B, N, 8]`` float32 projected splats (x, y, i11, l21, i22, then unused colour),
``offsets [B * T + 1]`` int64 and ``order [E]`` int32 the tile lists (splat indices ascending
within a tile), ``target [B, H, W, 3]`` float32, outputs ``gram [B, N, N]`` and
``rhs [B, N, 3]`` float32, zero-filled by the caller.

Launch ``gram_tiles[B * T, threads]``: one block per (image, tile); its threads stride over the
tile's list entries, and the thread of entry ``a`` adds splat ``a``'s row of the Gram and its
right-hand side over the tile's pixels. Tiles add into shared rows, so the additions are
atomic. The stage runs once or a few times per fit, so it is written plainly (no shared
memory, no warp intrinsics) and runs under the Numba CUDA simulator as it is.
"""

import numpy as np
from numba import cuda

from cuda_kernels import splat_math

splat_weight = cuda.jit(device=True)(splat_math.splat_weight)


@cuda.jit
def gram_tiles(proj, offsets, order, target, tile, tiles_x, tiles_y, qcut, gram, rhs):
    """Accumulate ``gram`` and ``rhs`` for the (image, tile) of this block."""
    n_img, height, width, _ = target.shape
    n_tiles = tiles_x * tiles_y
    pair = cuda.blockIdx.x
    if pair >= n_img * n_tiles:
        return
    b = pair // n_tiles
    t = pair % n_tiles
    lo = offsets[pair]
    hi = offsets[pair + 1]
    y0 = (t // tiles_x) * tile
    x0 = (t % tiles_x) * tile
    e = lo + cuda.threadIdx.x
    while e < hi:
        ia = order[e]
        pa = proj[b, ia]
        for py in range(y0, min(y0 + tile, height)):
            for px in range(x0, min(x0 + tile, width)):
                fx = np.float32(px) + np.float32(0.5)
                fy = np.float32(py) + np.float32(0.5)
                wa, _, _ = splat_weight(fx - pa[0], fy - pa[1], pa[2], pa[3], pa[4], qcut)
                if wa > 0:
                    for c in range(3):
                        cuda.atomic.add(rhs, (b, ia, c), wa * target[b, py, px, c])
                    for f in range(lo, hi):
                        ib = order[f]
                        pb = proj[b, ib]
                        wb, _, _ = splat_weight(fx - pb[0], fy - pb[1], pb[2], pb[3], pb[4], qcut)
                        if wb > 0:
                            cuda.atomic.add(gram, (b, ia, ib), wa * wb)
        e += cuda.blockDim.x
