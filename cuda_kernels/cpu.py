"""CPU kernels: the tile algorithm of :mod:`cuda_kernels.gpu` with ``numba.njit`` and
``prange``, parallel over (image, tile) pairs.

The stages mirror the GPU's: :func:`project`, :func:`raster_tiles` (forward, loss and backward
of a tile while it is in cache; the GPU splits it into ``raster_tiles`` and ``render_tiles``)
and :func:`adam_step`. Two CPU-only stages replace what the GPU does with atomics:
:func:`bin_tiles` (the GPU sets bits in ``project``) and :func:`reduce_tiles` (the GPU adds
each tile's partial gradient atomically). Both modules follow one numerical contract, written
in :mod:`cuda_kernels.gpu` and compiled with the same fast-math flags (``splat_math.FASTMATH``).

A loss-and-gradient evaluation is four calls: :func:`project` (per splat: inverse factors,
in the scaled coordinates below, and the pixel box of its cut-off footprint),
:func:`bin_tiles` (per image: CSR lists of the splats touching each tile; on a CPU the list
lengths cost nothing to read, so the GPU's fixed-size bitmask is not needed),
:func:`raster_tiles` (per (image, tile): forward, squared error and, while the tile is in
cache, the tile's partial gradient of every splat in its list, written to that list entry),
and :func:`reduce_tiles` (per (image, part of its splats): the entries' partials summed, so
no two threads add into the same splat).

How the tile stages use the cores (the GPU's design, translated; measured in BENCHMARKS.md):

* SIMD over pixels. A tile's colours, then its residuals, are three planes of
  ``tile * tile`` floats. Each splat visits the rows of its box within the tile, all columns,
  as one flat loop over contiguous pixels with no branch but the cut-off's select: LLVM
  vectorises it (8 floats a ``ymm`` register: ``tools/cpu_time_split.py`` counts the
  packed ``vfmadd...ps`` in the compiled code). Pixel indices are unsigned, so no
  negative-index wraparound is tested in the loop, and no pair costs an integer division.
* A vectorisable exponential. Coordinates are scaled by ``EXP_SCALE`` so the quadratic form
  is ``u = q log2(e) / 16`` and ``exp(-q/2) = (2 ** -u) ** 8``; inside the cut-off
  ``u < 1``, so :func:`exp2_8` is a degree-5 polynomial and three squarings (range
  reduction by argument scaling), no libm call; relative error < 3e-6.
* Staging and fusion. The splats of a tile's list are copied into a small contiguous array
  first; forward, loss and backward of a tile run back to back; the forward keeps each
  pair's weight and whitened offset, so the backward (eight sums a splat, held in vector
  registers) evaluates no exponential. The loss reads a planar copy of the target.
* Work split. Tiles go to threads in runs of ``TILES_PER_RUN`` (each run allocates its work
  arrays once), so a single 224x224 image already gives 25 runs; :func:`project`,
  :func:`adam_step` and :func:`reduce_tiles` split per splat, so batch 1 uses every core.

Shapes (``B`` images, ``N`` splats, ``H x W`` pixels, ``T`` tiles, ``E`` list entries):
``params [B, N, 8]`` float32, ``mask [B, N]`` bool, ``image [B, H, W, 3]`` and the planar
``target [B, 3, H, W]`` float32, all C-contiguous NumPy arrays (zero-copy views of CPU
tensors, but the target planes, which the backend keeps for a fit).

Compiled code is cached on disk (``cache=True``) in a directory keyed by a hash of every
kernel source (:mod:`cuda_kernels`), so an edit of an inlined file never serves stale code.
"""

import math

import numpy as np
from numba import njit, prange

from cuda_kernels import splat_math

FASTMATH = splat_math.FASTMATH

_device = njit(fastmath=FASTMATH, cache=True, inline="always")
is_finite_splat = _device(splat_math.is_finite_splat)
inverse_diagonal = _device(splat_math.inverse_diagonal)
footprint_half_extents = _device(splat_math.footprint_half_extents)
pixel_span = _device(splat_math.pixel_span)
parameter_gradients = _device(splat_math.parameter_gradients)

_kernel = njit(parallel=True, fastmath=FASTMATH, cache=True)

# projected splat, per [b, i]: x, y, i11 s, l21 / s, i22 s, r, g, b (float32, s = EXP_SCALE)
# and its pixel box c0, c1, r0, r1 (int32, inclusive; c0 > c1 when the splat touches no pixel)
PROJ_FIELDS = 8
# raster_tiles hands the (image, tile) tasks to threads in runs of this many (each run allocates
# its work arrays once)
TILES_PER_RUN = 8
ZERO = splat_math.ZERO
HALF = splat_math.HALF

# The weight exp(-q / 2) = 2 ** (-q log2(e) / 2) = (2 ** -u) ** 8 with u = q log2(e) / 16.
# The kernels work in coordinates scaled by EXP_SCALE = sqrt(log2(e) / 16), where the
# quadratic form is u directly; inside the cut-off u <= log2(255) / 8 < 1, so 2 ** -u needs
# a polynomial on [-1, 0] only (see exp2_8).
U_PER_Q = np.float32(0.5 / (8.0 * math.log(2.0)))
EXP_SCALE = np.float32(math.sqrt(0.5 / (8.0 * math.log(2.0))))
INV_SCALE = np.float32(1.0 / EXP_SCALE)
INV_SCALE_SQ = np.float32(INV_SCALE * INV_SCALE)
# 2 ** y on [-1, 0], degree 5, fitted for relative error (7.5e-8 in float64)
EXP2_C0 = np.float32(0.9999999403953552)
EXP2_C1 = np.float32(0.6931422352790833)
EXP2_C2 = np.float32(0.24017219245433807)
EXP2_C3 = np.float32(0.055279724299907684)
EXP2_C4 = np.float32(0.00918861199170351)
EXP2_C5 = np.float32(0.0009387882892042398)


@_kernel
def project(params, mask, height, width, qcut, proj, box, bad):
    """Per splat: ``proj [B, N, 8]`` and ``box [B, N, 4]`` (outputs); ``bad [B]`` uint8 is set
    to 1 for images with a non-finite parameter in a valid splat."""
    n_img, n_spl = mask.shape
    for idx in prange(n_img * n_spl):  # one splat a step: both cores work at batch 1 too
        b = idx // n_spl
        i = idx - b * n_spl
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
        proj[b, i, 2] = i11 * EXP_SCALE
        proj[b, i, 3] = p[3] * INV_SCALE
        proj[b, i, 4] = i22 * EXP_SCALE
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


@_device
def exp2_8(y):
    """``2 ** (8 y)`` for ``y`` in ``[-1, 0]``: a degree-5 polynomial for ``2 ** y`` (Horner,
    five FMAs) cubed by three squarings, so it vectorises (no libm call, no integer
    bit tricks). Relative error below 3e-6 on the range (``tests/test_kernels_cpu.py``)."""
    p = EXP2_C5 * y + EXP2_C4
    p = p * y + EXP2_C3
    p = p * y + EXP2_C2
    p = p * y + EXP2_C1
    p = p * y + EXP2_C0
    p = p * p
    p = p * p
    return p * p


@_device
def pair_weight(px, py, mx, my, i11, l21, i22, nucut):
    """``(weight, z1, z2)`` of one (pixel, splat) pair in scaled units: the whitened offset
    and ``2 ** (8 nu)`` inside the cut-off, zero beyond it."""
    z1 = (px - mx) * i11
    z2 = ((py - my) - l21 * z1) * i22
    nu = -(z1 * z1) - z2 * z2
    return (exp2_8(nu) if nu >= nucut else ZERO), z1, z2


@njit(fastmath=FASTMATH, cache=True)
def exp_neg_half(q):
    """``exp(-q / 2)`` as the tile kernels evaluate it, for ``q`` in ``[0, 2 ln 255]`` (the
    cut-off range; the kernels work in scaled units ``u = q * U_PER_Q`` directly)."""
    return exp2_8(-(q * U_PER_Q))


_stage = njit(fastmath=FASTMATH, cache=True)


@_stage
def forward_pass(staged, span, pxs, pys, nucut, acc_r, acc_g, acc_b, keep_w, keep_z1, keep_z2):
    """Adds every staged splat's colour into the tile's planes ``acc_* [tile * tile]``; with
    non-empty ``keep_*`` also keeps each pair's weight and whitened offset for the backward.

    One flat loop a splat over the pixels ``span[j, 0] : span[j, 1]`` (the rows of its box
    within the tile, all columns): no branch but the cut-off's select, so LLVM vectorises it.
    Indices are unsigned, so no negative-index wraparound is tested in the loop.
    """
    keep = keep_w.shape[0] > 0
    for j in range(staged.shape[0]):
        mx, my, i11, l21, i22 = (
            staged[j, 0],
            staged[j, 1],
            staged[j, 2],
            staged[j, 3],
            staged[j, 4],
        )
        cr, cg, cb = staged[j, 5], staged[j, 6], staged[j, 7]
        lo = np.uint64(span[j, 0])
        hi = np.uint64(span[j, 1])
        if keep:
            shift = np.uint64(span[j, 2] - span[j, 0])
            for p in range(lo, hi):
                w, z1, z2 = pair_weight(pxs[p], pys[p], mx, my, i11, l21, i22, nucut)
                acc_r[p] += w * cr
                acc_g[p] += w * cg
                acc_b[p] += w * cb
                keep_w[p + shift] = w
                keep_z1[p + shift] = z1
                keep_z2[p + shift] = z2
        else:
            for p in range(lo, hi):
                w = pair_weight(pxs[p], pys[p], mx, my, i11, l21, i22, nucut)[0]
                acc_r[p] += w * cr
                acc_g[p] += w * cg
                acc_b[p] += w * cb


@_stage
def write_tile(acc_r, acc_g, acc_b, image, b, x0, y0, rows, cols, tile):
    """Writes the tile's colour planes into ``image [B, H, W, 3]``."""
    for ly in range(rows):
        out = image[b, y0 + ly, x0 : x0 + cols]
        for lx in range(cols):
            p = ly * tile + lx
            out[lx, 0] = acc_r[p]
            out[lx, 1] = acc_g[p]
            out[lx, 2] = acc_b[p]


@_stage
def loss_pass(acc_r, acc_g, acc_b, target, b, x0, y0, rows, cols, tile, grad_scale):
    """Turns the tile's colour planes into dLoss/dPixel (zero outside the image) against the
    planar ``target [B, 3, H, W]`` and returns the tile's squared error. Planes against
    planes: every row is three unit-stride loops LLVM vectorises."""
    sse = ZERO
    for ly in range(rows):
        lo = ly * tile
        for plane, acc in ((0, acc_r), (1, acc_g), (2, acc_b)):
            ref = target[b, plane, y0 + ly, x0 : x0 + cols]
            row = acc[lo : lo + cols]
            for lx in range(cols):
                d = row[lx] - ref[lx]
                sse += d * d
                row[lx] = grad_scale * d
            acc[lo + cols : lo + tile] = ZERO
    acc_r[rows * tile :] = ZERO
    acc_g[rows * tile :] = ZERO
    acc_b[rows * tile :] = ZERO
    return sse


@_stage
def backward_pass(staged, span, acc_r, acc_g, acc_b, keep_w, keep_z1, keep_z2, partial):
    """``partial [count, 8]``: each staged splat's gradient over the tile's pixels, from the
    residual planes ``acc_*`` and the pairs the forward kept. One flat loop a splat; its
    eight sums stay in vector registers."""
    for j in range(staged.shape[0]):
        i11, l21, i22 = staged[j, 2], staged[j, 3], staged[j, 4]
        cr, cg, cb = staged[j, 5], staged[j, 6], staged[j, 7]
        lo = np.uint64(span[j, 0])
        hi = np.uint64(span[j, 1])
        shift = np.uint64(span[j, 2] - span[j, 0])
        s1 = s2 = s11 = s12 = s22 = gr = gg = gb = ZERO
        for p in range(lo, hi):
            w = keep_w[p + shift]
            # pairs beyond the cut-off add nothing (their z may be inf: 0 * inf is NaN)
            if w != ZERO:
                z1, z2 = keep_z1[p + shift], keep_z2[p + shift]
                rr, rg, rb = acc_r[p], acc_g[p], acc_b[p]
                kk = w * (rr * cr + rg * cg + rb * cb)
                kz1 = kk * z1
                kz2 = kk * z2
                s1 += kz1
                s2 += kz2
                s11 += kz1 * z1
                s12 += kz1 * z2
                s22 += kz2 * z2
                gr += w * rr
                gg += w * rg
                gb += w * rb
        # back to model units: z = z' / s and k = -kk (splat_math.pixel_gradient_terms)
        gx, gy, g11, g21, g22 = parameter_gradients(
            -INV_SCALE * s1,
            -INV_SCALE * s2,
            -INV_SCALE_SQ * s11,
            -INV_SCALE_SQ * s12,
            -INV_SCALE_SQ * s22,
            i11 * INV_SCALE,
            l21 * EXP_SCALE,
            i22 * INV_SCALE,
        )
        partial[j, 0] = gx
        partial[j, 1] = gy
        partial[j, 2] = g11
        partial[j, 3] = g21
        partial[j, 4] = g22
        partial[j, 5] = gr
        partial[j, 6] = gg
        partial[j, 7] = gb


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
    """Forward, loss and backward of every (image, tile), fused.

    With an empty ``target`` (a forward pass only) writes ``image [B, H, W, 3]``. With a
    planar ``target [B, 3, H, W]`` (``image`` is then not written and may be empty) writes
    ``tile_sse [B * T]`` (sums of squared errors) and ``partial [E, 8]``: the gradient of
    ``grad_scale * SSE / 2`` with respect to the parameters of splat ``order[e]``,
    restricted to the pixels of entry ``e``'s tile.

    Per tile, the listed splats' parameters and pixel ranges are staged into small
    contiguous arrays; the tile's colours, then residuals, live in three planes of
    ``tile * tile`` pixels; the forward keeps each pair's weight and whitened offset, so the
    backward evaluates no exponential (:func:`forward_pass`, :func:`loss_pass` or
    :func:`write_tile`, :func:`backward_pass`).
    """
    with_loss = target.shape[0] > 0
    if with_loss:
        n_img, _, height, width = target.shape
    else:
        n_img, height, width, _ = image.shape
    n_tiles = tiles_x * tiles_y
    n_tasks = n_img * n_tiles
    n_pix = tile * tile
    nucut = -(qcut * U_PER_Q)
    most = 0  # the longest tile list: the size of each thread's work arrays
    for task in range(n_tasks):
        most = max(most, offsets[task + 1] - offsets[task])
    n_runs = (n_tasks + TILES_PER_RUN - 1) // TILES_PER_RUN
    for run in prange(n_runs):
        pxs = np.empty(n_pix, np.float32)
        pys = np.empty(n_pix, np.float32)
        staged_all = np.empty((most, PROJ_FIELDS), np.float32)
        span_all = np.empty((most, 3), np.int64)
        kept = most * n_pix if with_loss else 0
        keep_w = np.empty(kept, np.float32)
        keep_z1 = np.empty(kept, np.float32)
        keep_z2 = np.empty(kept, np.float32)
        acc_r = np.empty(n_pix, np.float32)
        acc_g = np.empty(n_pix, np.float32)
        acc_b = np.empty(n_pix, np.float32)
        for task in range(run * TILES_PER_RUN, min((run + 1) * TILES_PER_RUN, n_tasks)):
            b = task // n_tiles
            t = task - b * n_tiles
            ty = t // tiles_x
            x0 = (t - ty * tiles_x) * tile
            y0 = ty * tile
            rows = min(tile, height - y0)
            start = offsets[task]
            count = offsets[task + 1] - start
            # pixel centres of the whole tile, row-major (columns beyond the image included:
            # their colours are never written and their residuals are zero)
            for ly in range(tile):
                for lx in range(tile):
                    pxs[ly * tile + lx] = np.float32(x0 + lx) + HALF
                    pys[ly * tile + lx] = np.float32(y0 + ly) + HALF
            staged = staged_all[:count]
            # per entry: its first and one-past-last pixel (the rows of its box within the
            # tile, all columns) and where its pairs start in the keep_* arrays
            span = span_all[:count]
            lanes = 0
            for j in range(count):
                i = order[start + j]
                for k in range(PROJ_FIELDS):
                    staged[j, k] = proj[b, i, k]
                span[j, 0] = (max(box[b, i, 2], y0) - y0) * tile
                span[j, 1] = (min(box[b, i, 3], y0 + rows - 1) - y0 + 1) * tile
                span[j, 2] = lanes
                lanes += span[j, 1] - span[j, 0]
            acc_r[:] = ZERO
            acc_g[:] = ZERO
            acc_b[:] = ZERO
            forward_pass(
                staged, span, pxs, pys, nucut, acc_r, acc_g, acc_b, keep_w, keep_z1, keep_z2
            )
            cols = min(tile, width - x0)
            if not with_loss:
                write_tile(acc_r, acc_g, acc_b, image, b, x0, y0, rows, cols, tile)
                continue
            tile_sse[task] = loss_pass(
                acc_r, acc_g, acc_b, target, b, x0, y0, rows, cols, tile, grad_scale
            )
            backward_pass(
                staged,
                span,
                acc_r,
                acc_g,
                acc_b,
                keep_w,
                keep_z1,
                keep_z2,
                partial[start : start + count],
            )


@_kernel
def cutoff_pairs(proj, box, qcut, counts):
    """``counts [B]`` int64 (output): the (pixel, splat) pairs of each image inside the cut-off,
    as :func:`raster_tiles` evaluates ``q``; the work unit of the FLOP rates the benchmark
    reports."""
    n_img, n_spl = box.shape[0], box.shape[1]
    nucut = -(qcut * U_PER_Q)
    for b in prange(n_img):
        total = 0
        for i in range(n_spl):
            mx, my, i11, l21, i22 = (
                proj[b, i, 0],
                proj[b, i, 1],
                proj[b, i, 2],
                proj[b, i, 3],
                proj[b, i, 4],
            )
            for row in range(box[b, i, 2], box[b, i, 3] + 1):
                dy = np.float32(row) + HALF - my
                for col in range(box[b, i, 0], box[b, i, 1] + 1):
                    z1 = (np.float32(col) + HALF - mx) * i11
                    z2 = (dy - l21 * z1) * i22
                    if -(z1 * z1) - z2 * z2 >= nucut:
                        total += 1
        counts[b] = total


@_kernel
def reduce_tiles(offsets, order, partial, tile_sse, n_tiles, parts, loss_scale, bad, loss, grad):
    """Per image: ``loss [B] = loss_scale * sum of its tiles' SSE`` and ``grad [B, N, 8]`` (zeroed
    by the caller) += the partials of its entries; NaN for images flagged in ``bad``.

    One step per (image, part of its splats): each step reads all the image's entries (in
    order, so the reads stream) and adds those of its own splats, so no two steps write the
    same splat. ``parts > 1`` keeps every core busy when there are fewer images than cores.
    """
    n_img, n_spl = grad.shape[0], grad.shape[1]
    for idx in prange(n_img * parts):
        b = idx // parts
        part = idx - b * parts
        lo = part * n_spl // parts
        hi = (part + 1) * n_spl // parts
        if bad[b]:
            loss[b] = np.nan
            grad[b, lo:hi, :] = np.nan
            continue
        if part == 0:
            total = np.float32(0.0)
            for t in range(b * n_tiles, (b + 1) * n_tiles):
                total += tile_sse[t]
            loss[b] = loss_scale * total
        for e in range(offsets[b * n_tiles], offsets[(b + 1) * n_tiles]):
            i = order[e]
            if lo <= i < hi:
                for k in range(8):
                    grad[b, i, k] += partial[e, k]


@_kernel
def adam_step(params, grad, exp_avg, exp_avg_sq, lr, beta1, beta2, bias1, bias2, eps):
    """In-place Adam on ``[B, N, 8]`` float32 arrays with ``lr [8]`` float32 (one rate per
    parameter column); the scalars are float32 and ``beta1``/``beta2`` are ``(beta, 1 - beta)``
    pairs, so this evaluates the same float32 expressions as ``FitBackend.adam_step``."""
    n_img, n_spl, n_par = params.shape
    for idx in prange(n_img * n_spl):  # one splat a step: both cores work at batch 1 too
        b = idx // n_spl
        i = idx - b * n_spl
        for k in range(n_par):
            g = grad[b, i, k]
            m = exp_avg[b, i, k] * beta1[0] + g * beta1[1]
            v = exp_avg_sq[b, i, k] * beta2[0] + beta2[1] * g * g
            exp_avg[b, i, k] = m
            exp_avg_sq[b, i, k] = v
            denom = np.sqrt(v / bias2) + eps
            params[b, i, k] -= m * (lr[k] / bias1) / denom


# ------------------------------------------------------------------ launches
# The same stages, names and argument order as the launchers of cuda_kernels.gpu: projection
# and binning, the fused tile pass, the reduction of its partial gradients (the GPU adds
# them with atomics inside its tile pass instead), Adam. The CPU's work arrays are
# ``proj [B, N, 8]``, ``box [B, N, 4]`` int32 (the GPU's: ``proj`` and the tile bitmask) and
# ``bad [B]`` uint8; its target is planar, ``[B, 3, H, W]``.
def launch_project(params, mask, tile: int, qcut, height: int, width: int, proj, box, bad):
    """Projection and binning of a batch; returns ``(offsets, order, tiles_x, n_tiles)``,
    the CSR tile lists (their lengths are free on a CPU, so no bitmask is needed)."""
    project(params, mask, height, width, qcut, proj, box, bad)
    tiles_x = (width + tile - 1) // tile
    tiles_y = (height + tile - 1) // tile
    offsets, order = bin_tiles(box, tile, tiles_x, tiles_y)
    return offsets, order, tiles_x, tiles_x * tiles_y


def launch_render(params, mask, tile: int, qcut, proj, box, bad, image) -> None:
    """Render a batch into ``image [B, H, W, 3]`` float32 (the caller marks the images
    flagged in ``bad``)."""
    height, width = image.shape[1], image.shape[2]
    offsets, order, tiles_x, n_tiles = launch_project(
        params, mask, tile, qcut, height, width, proj, box, bad
    )
    lists, grid = (proj, box, offsets, order), (tile, tiles_x, n_tiles // tiles_x)
    no_target, no_loss = np.empty((0, 0, 0, 3), np.float32), np.empty(0, np.float32)
    no_grad = np.empty((0, 8), np.float32)
    raster_tiles(*lists, no_target, *grid, qcut, np.float32(0.0), image, no_loss, no_grad)


def launch_loss_and_grad(
    params, mask, target, tile: int, qcut, proj, box, bad, loss, grad, parts: int
) -> None:
    """MSE ``loss [B]`` (sum of squared errors / (H*W*3); NaN where ``bad``) and ``grad [B, N,
    8]`` (zeroed by the caller; d sum_b loss_b / d params) for the planar ``target``.
    ``parts``: see :func:`reduce_tiles`."""
    n_img, _, height, width = target.shape
    offsets, order, tiles_x, n_tiles = launch_project(
        params, mask, tile, qcut, height, width, proj, box, bad
    )
    count = height * width * 3
    tile_sse = np.empty(n_img * n_tiles, np.float32)
    partial = np.empty((order.shape[0], 8), np.float32)
    lists, grid = (proj, box, offsets, order), (tile, tiles_x, n_tiles // tiles_x)
    no_image = np.empty((0, 0, 0, 3), np.float32)
    raster_tiles(*lists, target, *grid, qcut, np.float32(2.0 / count), no_image, tile_sse, partial)
    reduce_tiles(
        offsets, order, partial, tile_sse, n_tiles, parts, np.float32(1.0 / count), bad, loss, grad
    )


def launch_adam(params, grad, exp_avg, exp_avg_sq, lr, betas, step: int, eps: float) -> None:
    """Adam on ``[B, N, 8]`` float32 arrays with ``lr [8]``; the float32 scalars of
    ``FitBackend.adam_step``."""
    beta1, beta2 = betas
    adam_step(
        params,
        grad,
        exp_avg,
        exp_avg_sq,
        lr,
        np.array([beta1, 1.0 - beta1], np.float32),
        np.array([beta2, 1.0 - beta2], np.float32),
        np.float32(1.0 - beta1**step),
        np.float32(1.0 - beta2**step),
        np.float32(eps),
    )
