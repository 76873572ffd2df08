"""CPU kernels: the tile algorithm of :mod:`cuda_kernels.gpu` with ``numba.njit`` and
``prange``, parallel over (image, tile) pairs.

The stages mirror the GPU's: :func:`project`, :func:`raster_tiles` (forward, loss and backward
of a tile while it is in cache; the GPU splits it into ``raster_tiles`` and ``render_tiles``)
and :func:`adam_step`. Two CPU-only stages replace what the GPU does with atomics:
:func:`bin_tiles` (the GPU sets bits in ``project``) and :func:`reduce_tiles` (the GPU adds
each tile's partial gradient atomically). Both modules follow one numerical contract, written
in :mod:`cuda_kernels.gpu` and compiled with the same fast-math flags (``splat_math.FASTMATH``).

A loss-and-gradient evaluation is four calls: :func:`project` (per splat: inverse factors and
the pixel box of its cut-off footprint), :func:`bin_tiles` (per image: CSR lists of the
splats touching each tile; on a CPU the list lengths cost nothing to read, so the GPU's
fixed-size bitmask is not needed), :func:`raster_tiles` (per (image, tile): forward image,
squared error and, while the tile is in cache, the tile's partial gradient of every splat in
its list, written to that list entry; each splat visits only its box's pixels), and
:func:`reduce_tiles` (one thread per image sums its entries' partials, so no two threads add
into the same splat).

Shapes (``B`` images, ``N`` splats, ``H x W`` pixels, ``T`` tiles, ``E`` list entries):
``params [B, N, 8]`` float32, ``mask [B, N]`` bool, ``target``/``image [B, H, W, 3]``
float32, all C-contiguous NumPy arrays (zero-copy views of CPU tensors).

Compiled code is cached on disk (``cache=True``), keyed on this file: after editing
:mod:`cuda_kernels.splat_math` alone, delete ``cuda_kernels/__pycache__`` (Numba does not
track the functions it inlines from other files).
"""

import numpy as np
from numba import njit, prange

from cuda_kernels import splat_math

FASTMATH = splat_math.FASTMATH

_device = njit(fastmath=FASTMATH, cache=True, inline="always")
is_finite_splat = _device(splat_math.is_finite_splat)
inverse_diagonal = _device(splat_math.inverse_diagonal)
footprint_half_extents = _device(splat_math.footprint_half_extents)
pixel_span = _device(splat_math.pixel_span)
splat_weight = _device(splat_math.splat_weight)
pixel_gradient_terms = _device(splat_math.pixel_gradient_terms)
parameter_gradients = _device(splat_math.parameter_gradients)

_kernel = njit(parallel=True, fastmath=FASTMATH, cache=True)

# projected splat, per [b, i]: x, y, i11, l21, i22, r, g, b (float32) and its pixel box
# c0, c1, r0, r1 (int32, inclusive; c0 > c1 when the splat touches no pixel)
PROJ_FIELDS = 8


@_kernel
def project(params, mask, height, width, qcut, proj, box, bad):
    """Per splat: ``proj [B, N, 8]`` and ``box [B, N, 4]`` (outputs); ``bad [B]`` uint8 is set
    to 1 for images with a non-finite parameter in a valid splat."""
    n_img, n_spl = mask.shape
    for b in prange(n_img):
        for i in range(n_spl):
            box[b, i, 0] = 1
            box[b, i, 1] = 0
            box[b, i, 2] = 1
            box[b, i, 3] = 0
            if not mask[b, i]:
                continue
            p = params[b, i]
            if not is_finite_splat(p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7]):
                bad[b] = 1
                continue
            i11, i22 = inverse_diagonal(p[2], p[4])
            rx, ry = footprint_half_extents(p[2], p[3], p[4], qcut)
            c0, c1 = pixel_span(p[0], rx, width)
            r0, r1 = pixel_span(p[1], ry, height)
            if c0 > c1 or r0 > r1:
                continue
            proj[b, i, 0] = p[0]
            proj[b, i, 1] = p[1]
            proj[b, i, 2] = i11
            proj[b, i, 3] = p[3]
            proj[b, i, 4] = i22
            proj[b, i, 5] = p[5]
            proj[b, i, 6] = p[6]
            proj[b, i, 7] = p[7]
            box[b, i, 0] = c0
            box[b, i, 1] = c1
            box[b, i, 2] = r0
            box[b, i, 3] = r1


@_kernel
def bin_tiles(box, tile, tiles_x, tiles_y):
    """CSR lists of the splats touching each tile: ``offsets [B * T + 1]`` int64 and
    ``order [E]`` int32 (splat indices, ascending within each tile). Tile ``t`` of image ``b``
    owns ``order[offsets[b*T + t] : offsets[b*T + t + 1]]``."""
    n_img, n_spl = box.shape[0], box.shape[1]
    n_tiles = tiles_x * tiles_y
    counts = np.zeros(n_img * n_tiles + 1, dtype=np.int64)
    for b in prange(n_img):
        base = b * n_tiles + 1
        for i in range(n_spl):
            if box[b, i, 0] > box[b, i, 1]:
                continue
            for ty in range(box[b, i, 2] // tile, box[b, i, 3] // tile + 1):
                for tx in range(box[b, i, 0] // tile, box[b, i, 1] // tile + 1):
                    counts[base + ty * tiles_x + tx] += 1
    offsets = np.cumsum(counts)
    order = np.empty(offsets[-1], dtype=np.int32)
    for b in prange(n_img):
        cursor = offsets[b * n_tiles : (b + 1) * n_tiles].copy()
        for i in range(n_spl):
            if box[b, i, 0] > box[b, i, 1]:
                continue
            for ty in range(box[b, i, 2] // tile, box[b, i, 3] // tile + 1):
                for tx in range(box[b, i, 0] // tile, box[b, i, 1] // tile + 1):
                    t = ty * tiles_x + tx
                    order[cursor[t]] = i
                    cursor[t] += 1
    return offsets, order


@_kernel
def raster_tiles(
    proj,
    box,
    offsets,
    order,
    target,
    tile,
    tiles_x,
    tiles_y,
    qcut,
    grad_scale,
    image,
    tile_sse,
    partial,
):
    """Forward (and backward) of every (image, tile).

    Writes ``image [B, H, W, 3]``; with ``target`` (``[B, H, W, 3]``, or an empty array for
    a forward pass only) also ``tile_sse [B * T]`` (sum of squared errors) and
    ``partial [E, 8]``: the gradient of ``grad_scale * SSE / 2`` with respect to the
    parameters of splat ``order[e]``, restricted to the pixels of entry ``e``'s tile.
    Each pixel only visits the splats listed for its tile, and each splat only the pixels of
    its footprint box.
    """
    n_img, height, width, _ = image.shape
    n_tiles = tiles_x * tiles_y
    with_loss = target.shape[0] > 0
    half = splat_math.HALF
    for task in prange(n_img * n_tiles):
        b = task // n_tiles
        t = task % n_tiles
        x0 = (t % tiles_x) * tile
        y0 = (t // tiles_x) * tile
        x1 = min(x0 + tile, width) - 1
        y1 = min(y0 + tile, height) - 1
        acc = np.zeros((tile, tile, 3), dtype=np.float32)
        start, stop = offsets[task], offsets[task + 1]
        for e in range(start, stop):
            i = order[e]
            mx, my, i11, l21, i22 = (
                proj[b, i, 0],
                proj[b, i, 1],
                proj[b, i, 2],
                proj[b, i, 3],
                proj[b, i, 4],
            )
            cr, cg, cb = proj[b, i, 5], proj[b, i, 6], proj[b, i, 7]
            c0 = max(box[b, i, 0], x0)
            c1 = min(box[b, i, 1], x1)
            for row in range(max(box[b, i, 2], y0), min(box[b, i, 3], y1) + 1):
                dy = np.float32(row) + half - my
                ly = row - y0
                for col in range(c0, c1 + 1):
                    w, _, _ = splat_weight(np.float32(col) + half - mx, dy, i11, l21, i22, qcut)
                    lx = col - x0
                    acc[ly, lx, 0] += w * cr
                    acc[ly, lx, 1] += w * cg
                    acc[ly, lx, 2] += w * cb
        for row in range(y0, y1 + 1):
            for col in range(x0, x1 + 1):
                for c in range(3):
                    image[b, row, col, c] = acc[row - y0, col - x0, c]
        if not with_loss:
            continue
        # acc becomes dLoss/dPixel; the squared error is summed on the way
        sse = np.float32(0.0)
        for row in range(y0, y1 + 1):
            for col in range(x0, x1 + 1):
                for c in range(3):
                    diff = acc[row - y0, col - x0, c] - target[b, row, col, c]
                    sse += diff * diff
                    acc[row - y0, col - x0, c] = grad_scale * diff
        tile_sse[task] = sse
        for e in range(start, stop):
            i = order[e]
            mx, my, i11, l21, i22 = (
                proj[b, i, 0],
                proj[b, i, 1],
                proj[b, i, 2],
                proj[b, i, 3],
                proj[b, i, 4],
            )
            cr, cg, cb = proj[b, i, 5], proj[b, i, 6], proj[b, i, 7]
            s1 = s2 = s11 = s12 = s22 = gr = gg = gb = np.float32(0.0)
            c0 = max(box[b, i, 0], x0)
            c1 = min(box[b, i, 1], x1)
            for row in range(max(box[b, i, 2], y0), min(box[b, i, 3], y1) + 1):
                dy = np.float32(row) + half - my
                ly = row - y0
                for col in range(c0, c1 + 1):
                    w, z1, z2 = splat_weight(np.float32(col) + half - mx, dy, i11, l21, i22, qcut)
                    if w == 0.0:
                        continue
                    lx = col - x0
                    t1, t2, t11, t12, t22, tr, tg, tb = pixel_gradient_terms(
                        w, z1, z2, acc[ly, lx, 0], acc[ly, lx, 1], acc[ly, lx, 2], cr, cg, cb
                    )
                    s1 += t1
                    s2 += t2
                    s11 += t11
                    s12 += t12
                    s22 += t22
                    gr += tr
                    gg += tg
                    gb += tb
            gx, gy, g11, g21, g22 = parameter_gradients(s1, s2, s11, s12, s22, i11, l21, i22)
            partial[e, 0] = gx
            partial[e, 1] = gy
            partial[e, 2] = g11
            partial[e, 3] = g21
            partial[e, 4] = g22
            partial[e, 5] = gr
            partial[e, 6] = gg
            partial[e, 7] = gb


@_kernel
def reduce_tiles(offsets, order, partial, tile_sse, n_tiles, loss_scale, bad, loss, grad):
    """Per image: ``loss [B] = loss_scale * sum of its tiles' SSE`` and ``grad [B, N, 8]`` (zeroed
    by the caller) += the partials of its entries; NaN for images flagged in ``bad``."""
    n_img = loss.shape[0]
    for b in prange(n_img):
        if bad[b]:
            loss[b] = np.nan
            grad[b, :, :] = np.nan
            continue
        total = np.float32(0.0)
        for t in range(b * n_tiles, (b + 1) * n_tiles):
            total += tile_sse[t]
        loss[b] = loss_scale * total
        for e in range(offsets[b * n_tiles], offsets[(b + 1) * n_tiles]):
            g = grad[b, order[e]]
            for k in range(8):
                g[k] += partial[e, k]


@_kernel
def adam_step(params, grad, exp_avg, exp_avg_sq, lr, beta1, beta2, bias1, bias2, eps):
    """In-place Adam on ``[B, N, 8]`` float32 arrays with ``lr [8]`` float32 (one rate per
    parameter column); the scalars are float32 and ``beta1``/``beta2`` are ``(beta, 1 - beta)``
    pairs, so this evaluates the same float32 expressions as ``FitBackend.adam_step``."""
    n_img, n_spl, n_par = params.shape
    for b in prange(n_img):
        for i in range(n_spl):
            for k in range(n_par):
                g = grad[b, i, k]
                m = exp_avg[b, i, k] * beta1[0] + g * beta1[1]
                v = exp_avg_sq[b, i, k] * beta2[0] + beta2[1] * g * g
                exp_avg[b, i, k] = m
                exp_avg_sq[b, i, k] = v
                denom = np.sqrt(v / bias2) + eps
                params[b, i, k] -= m * (lr[k] / bias1) / denom
