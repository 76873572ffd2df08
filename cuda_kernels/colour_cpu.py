"""CPU kernel of the colour stage: the normal equations ``(W^T W) c = W^T t`` of the best
colours for fixed splat geometry (``numba.njit``, parallel over images).

``W [H*W, N]`` holds the weight of every splat at every pixel, so the Gram ``W^T W`` only
couples splats whose footprints overlap, and both it and ``W^T t`` are sums over the pixels of
each tile of products of the splats listed for that tile.

It reads the projection and tile lists of the raster kernels (:func:`cuda_kernels.cpu.project`,
:func:`cuda_kernels.cpu.bin_tiles`) and weighs pairs as they do (scaled coordinates, the
polynomial :func:`cuda_kernels.cpu.exp2_8`), tile by tile: the weights of the tile's splats
over its pixels go into a small dense block (zero beyond the cut-off and the image), and each
pair of overlapping splats adds one dot product over the rows both cover. The dot products
and the weight loops are flat, unit-stride loops that LLVM vectorises, and the scattered
additions into the ``N x N`` Gram are per pair and tile, not per pixel. The CUDA kernel
(:mod:`cuda_kernels.colour_gpu`) computes the same sums one pixel at a time.

Arguments (``B`` images, ``N`` splats, ``T = tiles_x * tiles_y`` tiles, ``E`` list entries):
``proj [B, N, 8]`` and ``box [B, N, 4]`` from ``project``, ``offsets [B * T + 1]`` and
``order [E]`` from ``bin_tiles``, the planar ``target [B, 3, H, W]`` float32; outputs
``gram [B, N, N]`` and ``rhs [B, N, 3]`` float32 (overwritten: each thread zero-fills its
image's rows, so the pages are touched by the core that adds into them).
"""

import numpy as np
from numba import njit, prange

from cuda_kernels.cpu import FASTMATH, HALF, U_PER_Q, ZERO, pair_weight


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def gram_tiles(proj, box, offsets, order, target, tile, tiles_x, tiles_y, qcut, gram, rhs):
    """Accumulate ``gram`` and ``rhs``, one image a thread (no two threads add into the same
    entry; both triangles get the same sums in the same order, so the Gram is exactly
    symmetric)."""
    n_img, _, height, width = target.shape
    n_tiles = tiles_x * tiles_y
    n_pix = tile * tile
    nucut = -(qcut * U_PER_Q)
    most = 0
    for task in range(n_img * n_tiles):
        most = max(most, offsets[task + 1] - offsets[task])
    for b in prange(n_img):
        gram[b] = ZERO
        rhs[b] = ZERO
        pxs = np.empty(n_pix, np.float32)
        pys = np.empty(n_pix, np.float32)
        planes = np.zeros((3, n_pix), np.float32)
        weights = np.zeros((most, n_pix), np.float32)
        span = np.empty((most, 2), np.int64)
        for t in range(n_tiles):
            start = offsets[b * n_tiles + t]
            count = offsets[b * n_tiles + t + 1] - start
            if count == 0:
                continue
            ty = t // tiles_x
            x0 = (t - ty * tiles_x) * tile
            y0 = ty * tile
            rows = min(tile, height - y0)
            cols = min(tile, width - x0)
            for ly in range(tile):
                for lx in range(tile):
                    pxs[ly * tile + lx] = np.float32(x0 + lx) + HALF
                    pys[ly * tile + lx] = np.float32(y0 + ly) + HALF
            planes[:] = ZERO
            for c in range(3):
                for ly in range(rows):
                    planes[c, ly * tile : ly * tile + cols] = target[b, c, y0 + ly, x0 : x0 + cols]
            for j in range(count):
                i = order[start + j]
                mx, my = proj[b, i, 0], proj[b, i, 1]
                i11, l21, i22 = proj[b, i, 2], proj[b, i, 3], proj[b, i, 4]
                lo = (max(box[b, i, 2], y0) - y0) * tile
                hi = (min(box[b, i, 3], y0 + rows - 1) - y0 + 1) * tile
                span[j, 0] = lo
                span[j, 1] = hi
                row = weights[j]
                sr = sg = sb = ZERO
                for p in range(np.uint64(lo), np.uint64(hi)):
                    w = pair_weight(pxs[p], pys[p], mx, my, i11, l21, i22, nucut)[0]
                    row[p] = w
                    sr += w * planes[0, p]
                    sg += w * planes[1, p]
                    sb += w * planes[2, p]
                if cols < tile:  # pixels beyond the image's right edge weigh nothing
                    for ly in range(lo // tile, hi // tile):
                        row[ly * tile + cols : (ly + 1) * tile] = ZERO
                        # the sums above took them with a zero target: nothing to undo
                rhs[b, i, 0] += sr
                rhs[b, i, 1] += sg
                rhs[b, i, 2] += sb
            for j in range(count):
                i = order[start + j]
                wj = weights[j]
                for k in range(j, count):
                    m = order[start + k]
                    if box[b, m, 0] > box[b, i, 1] or box[b, i, 0] > box[b, m, 1]:
                        continue  # footprints apart along x
                    lo = max(span[j, 0], span[k, 0])
                    hi = min(span[j, 1], span[k, 1])
                    if lo >= hi:
                        continue
                    wk = weights[k]
                    s = ZERO
                    for p in range(np.uint64(lo), np.uint64(hi)):
                        s += wj[p] * wk[p]
                    gram[b, i, m] += s
                    if m != i:
                        gram[b, m, i] += s
