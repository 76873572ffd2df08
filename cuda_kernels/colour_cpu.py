"""CPU kernel of the colour stage: the normal equations ``(W^T W) c = W^T t`` of the best
colours for fixed splat geometry, accumulated over the per-tile splat lists (``numba.njit``,
parallel over images). Mirrors :mod:`cuda_kernels.colour_gpu`: same name, same arguments.

``W [H*W, N]`` holds the weight of every splat at every pixel, so the Gram ``W^T W`` only
couples splats whose footprints overlap and both it and ``W^T t`` are sums over pixels of
products of the splats listed for the pixel's tile.

Arguments (``B`` images, ``N`` splats, ``T = tiles_x * tiles_y`` tiles, ``E`` list entries):
``proj [B, N, 8]`` float32 projected splats (x, y, i11, l21, i22, then unused colour),
``offsets [B * T + 1]`` int64 and ``order [E]`` int32 the tile lists (splat indices ascending
within a tile), ``target [B, H, W, 3]`` float32, outputs ``gram [B, N, N]`` and
``rhs [B, N, 3]`` float32, zero-filled by the caller.
"""

import numpy as np
from numba import njit, prange

from cuda_kernels import splat_math

FASTMATH = splat_math.FASTMATH
splat_weight = njit(fastmath=FASTMATH, cache=True, inline="always")(splat_math.splat_weight)


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def gram_tiles(proj, offsets, order, target, tile, tiles_x, tiles_y, qcut, gram, rhs):
    """Accumulate ``gram`` and ``rhs`` (one thread per image, so no two threads add into the
    same entry). Per pixel, the non-zero weights of the tile's splats are computed once and
    their pairwise products added to both triangles of the Gram."""
    n_img, height, width, _ = target.shape
    n_tiles = tiles_x * tiles_y
    for b in prange(n_img):
        weights = np.empty(proj.shape[1], np.float32)
        index = np.empty(proj.shape[1], np.int32)
        for t in range(n_tiles):
            lo = offsets[b * n_tiles + t]
            hi = offsets[b * n_tiles + t + 1]
            if lo == hi:
                continue
            y0 = (t // tiles_x) * tile
            x0 = (t % tiles_x) * tile
            for py in range(y0, min(y0 + tile, height)):
                for px in range(x0, min(x0 + tile, width)):
                    count = 0
                    for e in range(lo, hi):
                        i = order[e]
                        p = proj[b, i]
                        dx = np.float32(px) + np.float32(0.5) - p[0]
                        dy = np.float32(py) + np.float32(0.5) - p[1]
                        w, _, _ = splat_weight(dx, dy, p[2], p[3], p[4], qcut)
                        if w > 0:
                            weights[count] = w
                            index[count] = i
                            count += 1
                    for a in range(count):
                        ia = index[a]
                        wa = weights[a]
                        for c in range(3):
                            rhs[b, ia, c] += wa * target[b, py, px, c]
                        gram[b, ia, ia] += wa * wa
                        for k in range(a + 1, count):
                            ww = wa * weights[k]
                            gram[b, ia, index[k]] += ww
                            gram[b, index[k], ia] += ww
