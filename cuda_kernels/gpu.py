"""CUDA kernels (``numba.cuda``): a whole batch of images per launch.

One fitting iteration is three launches on the caller's stream, with no host round trip:

1. :func:`project` (one thread per splat of every image): the projected parameters and the
   binning: each splat sets its bit in a ``[B, T, ceil(N/32)]`` uint32 bitmask for every tile
   its cut-off box touches. The bitmask has a fixed size, so binning needs neither a sort nor a
   host-read list length (the CPU, where list lengths are free, builds CSR lists instead).
2. ``raster_tiles`` (one block per (tile, image); built per tile size by :func:`build`):
   forward, loss and backward fused. Each thread owns ``rows`` pixels of one column of the
   tile and keeps their colours, then their residuals, in registers, so the rendered image
   never goes through device memory. Every warp walks the tile's bitmask (the same for all its
   lanes) splat by splat; a splat's parameters are one broadcast load. Forward: each pixel adds
   the splat's colour. Backward: each thread sums the splat's gradient terms over its pixels,
   a transposed butterfly over the warp (9 shuffles for 8 values) leaves each of the 8
   parameter sums in one lane, and one 8-lane atomic adds them into ``grad``. With no target it
   only renders (writes ``image``).
3. :func:`adam_step` (one thread per parameter): the optimiser step.

The per-pair inner loops are short because of three choices: pixel coordinates are
``float32`` values computed once per thread; a thread's pixels share a column, so ``z1`` (and
``z1^2``) is computed once per (thread, splat) and each pixel costs one FMA for ``z2``; and the
kernels work in coordinates scaled by ``EXP2_SCALE`` so the weight is ``exp2(-q')``, a single
``MUFU.EX2``. ``tools/kernel_report.py`` reads the instruction counts from the compiled code.

Numerical contract (the same as :mod:`cuda_kernels.cpu`): both are compiled with the
fast-math flags of ``splat_math.FASTMATH``, which allow contraction and approximate functions
but *not* ``nnan``/``ninf``: non-finite values compare and propagate as IEEE says. A valid splat with a
non-finite parameter flags its image in ``bad`` (the caller turns that image's loss and
gradient into NaN and the fitter drops it); a non-finite target pixel makes the loss and the
gradients of the splats that reach it NaN, as in the reference; a weight at or beyond the
cut-off (including a NaN ``q``) contributes nothing, as ``torch.where(q <= Q_CUTOFF, ...)``.

Everything runs under the Numba CUDA simulator too (tiny sizes), which is how it is tested
without a GPU. The simulator has no warp shuffles, ``syncwarp`` or ``math.exp2`` on every
Python, so :func:`shfl_xor`, :func:`warp_sync` and :func:`exp2` have simulator versions with
the same meaning (block barriers stand in for warp synchronisation; every thread of a block
reaches them, as on the GPU).
"""

from __future__ import annotations

import functools
import math
import threading
from types import SimpleNamespace

import numpy as np
from numba import config, cuda

from cuda_kernels import splat_math

SIMULATOR = bool(config.ENABLE_CUDASIM)
WARP = 32
FULL_MASK = 0xFFFFFFFF
MAX_GRID_Y = 65535  # images a launch: the tile kernels' grid is (tiles, images)

FASTMATH = splat_math.FASTMATH

# Tile edges whose kernels compile for sm_90 and are tested: tile -> pixel rows per thread.
# 8x8: one warp of 2-row threads; 16x16: one warp of 8-row threads; 32x32: four warps.
ROWS_PER_THREAD = {8: 2, 16: 8, 32: 8}
TILES = tuple(ROWS_PER_THREAD)

# exp(-q / 2) = exp2(-q'), q' = q * log2(e) / 2: coordinates are scaled by sqrt(log2(e) / 2)
EXP2_SCALE = np.float32(math.sqrt(0.5 / math.log(2.0)))
INV_SCALE = np.float32(1.0 / EXP2_SCALE)
INV_SCALE_SQ = np.float32(INV_SCALE * INV_SCALE)

_device = cuda.jit(device=True, fastmath=FASTMATH)
# Device functions that take the per-thread register arrays must be inlined for those to stay
# in registers (the simulator's jit has no such option and needs none).
INLINE = {} if SIMULATOR else {"forceinline": True}
is_finite_splat = _device(splat_math.is_finite_splat)
inverse_diagonal = _device(splat_math.inverse_diagonal)
footprint_half_extents = _device(splat_math.footprint_half_extents)
pixel_span = _device(splat_math.pixel_span)
parameter_gradients = _device(splat_math.parameter_gradients)


# ------------------------------------------------------------------ warp primitives
if SIMULATOR:
    # each simulated GPU thread is a Python thread: its own count of the shuffles it made
    _shuffles = threading.local()

    @_device
    def shfl_xor(value, lane_mask, scratch):
        """``value`` of lane ``lane ^ lane_mask``, through shared ``scratch [2 * threads]``:
        the halves alternate from one shuffle to the next (every thread of the block makes
        the same shuffles), so one barrier a shuffle suffices (a thread can only overwrite
        a half after every thread has passed the barrier of the shuffle between)."""
        tid = cuda.threadIdx.x
        count = getattr(_shuffles, "count", 0)
        _shuffles.count = count + 1
        half = (count % 2) * (scratch.shape[0] // 2)
        scratch[half + tid] = value
        cuda.syncthreads()
        return scratch[half + (tid ^ lane_mask)]

    @_device
    def warp_sync():
        cuda.syncthreads()

    @_device
    def exp2(x):
        return np.float32(2.0) ** x

else:

    @_device
    def shfl_xor(value, lane_mask, scratch):
        """``value`` of lane ``lane ^ lane_mask`` (``scratch`` is for the simulator only)."""
        return cuda.shfl_xor_sync(FULL_MASK, value, lane_mask)

    @_device
    def warp_sync():
        cuda.syncwarp(FULL_MASK)

    @_device
    def exp2(x):
        return math.exp2(x)  # libdevice exp2f: one MUFU.EX2 with flush-to-zero


@_device
def warp_sum(value, scratch):
    """Sum of ``value`` over the 32 lanes of the warp, in every lane."""
    for lane_mask in (16, 8, 4, 2, 1):
        value += shfl_xor(value, lane_mask, scratch)
    return value


@_device
def warp_sum8(v0, v1, v2, v3, v4, v5, v6, v7, lane, scratch):
    """Sums of eight values over the warp by a transposed butterfly (9 shuffles, not 40):
    lane ``4 k`` returns the sum of ``v_k``; the other lanes return partial sums."""
    hi = (lane & 16) != 0
    a0 = (v4 if hi else v0) + shfl_xor(v0 if hi else v4, 16, scratch)
    a1 = (v5 if hi else v1) + shfl_xor(v1 if hi else v5, 16, scratch)
    a2 = (v6 if hi else v2) + shfl_xor(v2 if hi else v6, 16, scratch)
    a3 = (v7 if hi else v3) + shfl_xor(v3 if hi else v7, 16, scratch)
    hi = (lane & 8) != 0
    b0 = (a2 if hi else a0) + shfl_xor(a0 if hi else a2, 8, scratch)
    b1 = (a3 if hi else a1) + shfl_xor(a1 if hi else a3, 8, scratch)
    hi = (lane & 4) != 0
    c = (b1 if hi else b0) + shfl_xor(b0 if hi else b1, 4, scratch)
    c += shfl_xor(c, 2, scratch)
    c += shfl_xor(c, 1, scratch)
    return c


# ------------------------------------------------------------------ FLOP accounting
# Floating-point operations per (pixel, splat) pair a tile kernel evaluates (every pixel of a
# tile against every splat in the tile's list), counted from the source (an FMA is 2, exp 1):
# forward: z2 2, q 2, exp2 1, colour accumulation 6; backward: the weight 5, residual .
# colour 5, k 1, the z2 products and sums 5, colour gradient 6.
FLOPS_PER_PAIR_FORWARD = 11
FLOPS_PER_PAIR_BACKWARD = 22
# per splat: projection ~20, per-thread set-up ~12 per pass, parameter gradients ~25,
# Adam 8 x 12; per pixel: loss and residual
FLOPS_PER_SPLAT = 20 + 25 + 8 * 12
FLOPS_PER_PIXEL = 3 * 5


def flops_per_iteration(tile_entries: int, tile: int, n_splats: int, n_pixels: int) -> int:
    """FLOPs of one fitting iteration of a batch with ``tile_entries`` (splat, tile) pairs in
    its tile lists, ``n_splats`` valid splats and ``n_pixels`` pixels in all."""
    pairs = tile_entries * tile * tile
    return (
        pairs * (FLOPS_PER_PAIR_FORWARD + FLOPS_PER_PAIR_BACKWARD)
        + n_splats * FLOPS_PER_SPLAT
        + n_pixels * FLOPS_PER_PIXEL
    )


# ------------------------------------------------------------------ kernels
@cuda.jit(fastmath=FASTMATH)
def project(params, mask, height, width, tile, tiles_x, qcut, proj, bits, bad):
    """Per splat ``(b, i)``: ``proj [B, N, 8]`` (x, y, i11 s, l21 / s, i22 s, r, g, b with
    ``s = EXP2_SCALE``) and its bit in ``bits [B, T, W]`` uint32 (zeroed by the caller) for
    each tile its footprint touches. ``bad [B]`` int32 is set to 1 for an image with a
    non-finite valid splat."""
    n_img, n_spl = mask.shape
    idx = cuda.grid(1)
    if idx >= n_img * n_spl:
        return
    b = idx // n_spl
    i = idx - b * n_spl
    if not mask[b, i]:
        return
    x = params[b, i, 0]
    y = params[b, i, 1]
    s11 = params[b, i, 2]
    l21 = params[b, i, 3]
    s22 = params[b, i, 4]
    if not is_finite_splat(x, y, s11, l21, s22, params[b, i, 5], params[b, i, 6], params[b, i, 7]):
        bad[b] = 1
        return
    i11, i22 = inverse_diagonal(s11, s22)
    rx, ry = footprint_half_extents(s11, l21, s22, qcut)
    c0, c1 = pixel_span(x, rx, width)
    r0, r1 = pixel_span(y, ry, height)
    if c0 > c1 or r0 > r1:
        return
    proj[b, i, 0] = x
    proj[b, i, 1] = y
    proj[b, i, 2] = i11 * EXP2_SCALE
    proj[b, i, 3] = l21 * INV_SCALE
    proj[b, i, 4] = i22 * EXP2_SCALE
    proj[b, i, 5] = params[b, i, 5]
    proj[b, i, 6] = params[b, i, 6]
    proj[b, i, 7] = params[b, i, 7]
    word = i // 32
    bit = np.uint32(1 << (i - word * 32))
    for ty in range(r0 // tile, r1 // tile + 1):
        for tx in range(c0 // tile, c1 // tile + 1):
            cuda.atomic.or_(bits, (b, ty * tiles_x + tx, word), bit)


@cuda.jit(fastmath=FASTMATH)
def adam_step(params, grad, exp_avg, exp_avg_sq, lr, beta1, rest1, beta2, rest2, bias1, bias2, eps):
    """In-place Adam on flat float32 arrays of ``B * N * 8`` elements with ``lr [8]``; the
    scalars are float32 (``rest = 1 - beta``), as the reference's are."""
    idx = cuda.grid(1)
    if idx >= params.shape[0]:
        return
    g = grad[idx]
    m = exp_avg[idx] * beta1 + g * rest1
    v = exp_avg_sq[idx] * beta2 + rest2 * g * g
    exp_avg[idx] = m
    exp_avg_sq[idx] = v
    denom = math.sqrt(v / bias2) + eps
    params[idx] -= m * (lr[idx % 8] / bias1) / denom


def check_tile(tile: int) -> None:
    """A clear error for a tile edge without a compiled, tested kernel."""
    if tile not in ROWS_PER_THREAD:
        allowed = ", ".join(str(t) for t in TILES)
        raise ValueError(f"tile {tile} is not supported by the cuda backend; choose {allowed}")


@functools.cache
def build(tile: int) -> SimpleNamespace:
    """The fused tile kernel for ``tile x tile`` pixel tiles (one of :data:`TILES`) and its
    launch geometry: ``raster_tiles``, ``threads`` per block, ``rows`` per thread."""
    check_tile(tile)
    rows = ROWS_PER_THREAD[tile]
    threads = tile * tile // rows
    scratch_size = threads * (2 if SIMULATOR else 1)  # the simulator's shuffles use 2 halves

    @cuda.jit(device=True, fastmath=FASTMATH)
    def stage_word(proj_b, word, w, tid, staged, staged_index):
        """Copies the projected parameters of the splats set in bitmask word ``w`` into
        ``staged [8, 32]`` (shared), in ascending order; returns how many. Every thread of the
        block calls it with the same word."""
        cuda.syncthreads()  # the previous word's splats have been read by every thread
        if tid < WARP and (word >> tid) & 1:
            slot = cuda.popc(word & ((np.int64(1) << tid) - 1))
            i = w * WARP + tid
            staged_index[slot] = i
            for k in range(8):
                staged[k, slot] = proj_b[i, k]
        cuda.syncthreads()
        return cuda.popc(word)

    @cuda.jit(device=True, fastmath=FASTMATH, **INLINE)
    def pixel_origin(tiles_x):
        """This thread's column and the centre of its first pixel: ``(col, row0, px, py0)``."""
        tid = cuda.threadIdx.x
        t = cuda.blockIdx.x
        col = (t % tiles_x) * tile + tid % tile
        row0 = (t // tiles_x) * tile + (tid // tile) * rows
        return col, row0, np.float32(col) + splat_math.HALF, np.float32(row0) + splat_math.HALF

    @cuda.jit(device=True, fastmath=FASTMATH, **INLINE)
    def forward(proj_b, bits_bt, px, py0, nqcut, staged, staged_index, acc_r, acc_g, acc_b):
        """The colours of this thread's ``rows`` pixels into ``acc_* [rows]`` (registers)."""
        tid = cuda.threadIdx.x
        for k in range(rows):
            acc_r[k] = np.float32(0.0)
            acc_g[k] = np.float32(0.0)
            acc_b[k] = np.float32(0.0)
        for w in range(bits_bt.shape[0]):
            word = np.int64(bits_bt[w])
            if word == 0:
                continue
            for j in range(stage_word(proj_b, word, w, tid, staged, staged_index)):
                i22 = staged[4, j]
                z1 = (px - staged[0, j]) * staged[2, j]
                nz1sq = -(z1 * z1)
                v = ((py0 - staged[1, j]) - staged[3, j] * z1) * i22
                cr = staged[5, j]
                cg = staged[6, j]
                cb = staged[7, j]
                for k in range(rows):
                    z2 = cuda.fma(np.float32(k), i22, v)
                    nq = cuda.fma(-z2, z2, nz1sq)
                    if nq >= nqcut:
                        weight = exp2(nq)
                        acc_r[k] += weight * cr
                        acc_g[k] += weight * cg
                        acc_b[k] += weight * cb

    @cuda.jit(fastmath=FASTMATH)
    def render_tiles(proj, bits, tiles_x, qcut, image):
        """Grid ``(T, B)``, block ``threads``: ``image [B, H, W, 3]``. ``qcut`` is the
        cut-off in scaled units."""
        b = cuda.blockIdx.y
        col, row0, px, py0 = pixel_origin(tiles_x)
        staged = cuda.shared.array((8, WARP), np.float32)
        staged_index = cuda.shared.array(WARP, np.int32)
        acc_r = cuda.local.array(rows, np.float32)
        acc_g = cuda.local.array(rows, np.float32)
        acc_b = cuda.local.array(rows, np.float32)
        forward(
            proj[b],
            bits[b, cuda.blockIdx.x],
            px,
            py0,
            -qcut,
            staged,
            staged_index,
            acc_r,
            acc_g,
            acc_b,
        )
        if col < image.shape[2]:
            for k in range(rows):
                if row0 + k < image.shape[1]:
                    image[b, row0 + k, col, 0] = acc_r[k]
                    image[b, row0 + k, col, 1] = acc_g[k]
                    image[b, row0 + k, col, 2] = acc_b[k]

    @cuda.jit(fastmath=FASTMATH)
    def raster_tiles(proj, bits, target, tiles_x, qcut, loss_scale, grad_scale, loss, grad):
        """Grid ``(T, B)``, block ``threads``. Adds ``loss_scale * SSE`` of each image into
        ``loss [B]`` and ``d(grad_scale * SSE / 2)/d params`` into ``grad [B, N, 8]`` (both
        zeroed by the caller); the rendered image stays in registers. ``qcut`` is the
        cut-off in scaled units."""
        lane = cuda.threadIdx.x % WARP
        b = cuda.blockIdx.y
        height = target.shape[1]
        width = target.shape[2]
        col, row0, px, py0 = pixel_origin(tiles_x)
        nqcut = -qcut
        proj_b = proj[b]
        bits_bt = bits[b, cuda.blockIdx.x]
        staged = cuda.shared.array((8, WARP), np.float32)
        staged_index = cuda.shared.array(WARP, np.int32)
        scratch = cuda.shared.array(scratch_size, np.float32)
        acc_r = cuda.local.array(rows, np.float32)
        acc_g = cuda.local.array(rows, np.float32)
        acc_b = cuda.local.array(rows, np.float32)
        forward(proj_b, bits_bt, px, py0, nqcut, staged, staged_index, acc_r, acc_g, acc_b)

        # ---- loss; the colours become dLoss/dPixel
        sse = np.float32(0.0)
        for k in range(rows):
            if col < width and row0 + k < height:
                dr = acc_r[k] - target[b, row0 + k, col, 0]
                dg = acc_g[k] - target[b, row0 + k, col, 1]
                db = acc_b[k] - target[b, row0 + k, col, 2]
                sse += dr * dr + dg * dg + db * db
                acc_r[k] = grad_scale * dr
                acc_g[k] = grad_scale * dg
                acc_b[k] = grad_scale * db
            else:
                acc_r[k] = np.float32(0.0)
                acc_g[k] = np.float32(0.0)
                acc_b[k] = np.float32(0.0)
        sse = warp_sum(sse, scratch)
        if lane == 0:
            cuda.atomic.add(loss, b, loss_scale * sse)

        # ---- backward: per splat, sums over this thread's pixels, then over the warp
        tid = cuda.threadIdx.x
        grad_b = grad[b]
        for w in range(bits_bt.shape[0]):
            word = np.int64(bits_bt[w])
            if word == 0:
                continue
            for j in range(stage_word(proj_b, word, w, tid, staged, staged_index)):
                i11 = staged[2, j]
                l21 = staged[3, j]
                i22 = staged[4, j]
                z1 = (px - staged[0, j]) * i11
                nz1sq = -(z1 * z1)
                v = ((py0 - staged[1, j]) - l21 * z1) * i22
                cr = staged[5, j]
                cg = staged[6, j]
                cb = staged[7, j]
                sk = sk2 = sk22 = sr = sg = sb = np.float32(0.0)
                for k in range(rows):
                    z2 = cuda.fma(np.float32(k), i22, v)
                    nq = cuda.fma(-z2, z2, nz1sq)
                    weight = exp2(nq) if nq >= nqcut else np.float32(0.0)
                    gr = acc_r[k]
                    gg = acc_g[k]
                    gb = acc_b[k]
                    kk = weight * (gr * cr + gg * cg + gb * cb)
                    sk += kk
                    kz2 = kk * z2
                    sk2 += kz2
                    sk22 += kz2 * z2
                    sr += weight * gr
                    sg += weight * gg
                    sb += weight * gb
                # back to model units: z = z' / s, k = -kk (see splat_math.pixel_gradient_terms)
                z1m = z1 * INV_SCALE
                s1 = -z1m * sk
                s2 = -INV_SCALE * sk2
                gx, gy, g11, g21, g22 = parameter_gradients(
                    s1,
                    s2,
                    s1 * z1m,
                    s2 * z1m,
                    -INV_SCALE_SQ * sk22,
                    i11 * INV_SCALE,
                    l21 * EXP2_SCALE,
                    i22 * INV_SCALE,
                )
                total = warp_sum8(gx, gy, g11, g21, g22, sr, sg, sb, lane, scratch)
                if lane % 4 == 0:
                    cuda.atomic.add(grad_b, (staged_index[j], lane // 4), total)

    return SimpleNamespace(
        tile=tile, threads=threads, rows=rows, raster_tiles=raster_tiles, render_tiles=render_tiles
    )


# ------------------------------------------------------------------ launches
def scaled_qcut(qcut: float) -> np.float32:
    """The cut-off ``qcut`` (model units) in the tile kernels' scaled units."""
    return np.float32(qcut * EXP2_SCALE * EXP2_SCALE)


def launch_project(
    params, mask, tile: int, qcut: float, height: int, width: int, proj, bits, bad, stream
):
    """Projection and binning of a batch; returns ``(tiles_x, tiles)``."""
    n_img, n_spl = mask.shape
    tiles_x = (width + tile - 1) // tile
    if n_img * n_spl > 0:
        project[(n_img * n_spl + 255) // 256, 256, stream](
            params, mask, height, width, tile, tiles_x, qcut, proj, bits, bad
        )
    return tiles_x, tiles_x * ((height + tile - 1) // tile)


def image_chunks(n_img: int):
    """Image ranges of at most :data:`MAX_GRID_Y` (the tile kernels' grid is (tiles, images))."""
    return [(lo, min(n_img, lo + MAX_GRID_Y)) for lo in range(0, n_img, MAX_GRID_Y)]


def launch_render(params, mask, tile: int, qcut: float, proj, bits, bad, image, stream=0) -> None:
    """Render a batch into ``image [B, H, W, 3]`` f32 on the device.

    ``params [B, N, 8]`` f32, ``mask [B, N]`` bool; work arrays (device arrays or, under the
    simulator, NumPy arrays): ``proj [B, N, 8]`` f32, ``bits [B, T, ceil(N/32)]`` u32 zeroed,
    ``bad [B]`` i32 zeroed (the caller marks the images it flags). ``qcut`` in model units.
    """
    kernels = build(tile)
    n_img, height, width = image.shape[0], image.shape[1], image.shape[2]
    tiles_x, n_tiles = launch_project(
        params, mask, tile, qcut, height, width, proj, bits, bad, stream
    )
    qcut_scaled = scaled_qcut(qcut)
    for lo, hi in image_chunks(n_img):
        kernels.render_tiles[(n_tiles, hi - lo), kernels.threads, stream](
            proj[lo:hi], bits[lo:hi], tiles_x, qcut_scaled, image[lo:hi]
        )


def launch_loss_and_grad(
    params, mask, target, tile: int, qcut: float, proj, bits, bad, loss, grad, stream=0
) -> None:
    """MSE and its gradient for a batch, entirely on the device.

    As :func:`launch_render`, with ``target [B, H, W, 3]`` f32 and the outputs ``loss [B]``
    f32 zeroed (sum of squared errors / (H*W*3)) and ``grad [B, N, 8]`` f32 zeroed
    (d sum_b loss_b / d params).
    """
    kernels = build(tile)
    n_img, height, width = target.shape[0], target.shape[1], target.shape[2]
    tiles_x, n_tiles = launch_project(
        params, mask, tile, qcut, height, width, proj, bits, bad, stream
    )
    count = height * width * 3
    qcut_scaled = scaled_qcut(qcut)
    for lo, hi in image_chunks(n_img):
        kernels.raster_tiles[(n_tiles, hi - lo), kernels.threads, stream](
            proj[lo:hi],
            bits[lo:hi],
            target[lo:hi],
            tiles_x,
            qcut_scaled,
            np.float32(1.0 / count),
            np.float32(2.0 / count),
            loss[lo:hi],
            grad[lo:hi],
        )


def launch_adam(
    params,
    grad,
    exp_avg,
    exp_avg_sq,
    lr,
    betas: tuple[float, float],
    step: int,
    eps: float,
    stream=0,
) -> None:
    """Adam on flat ``[B * N * 8]`` float32 arrays (views of the ``[B, N, 8]`` tensors)."""
    size = params.shape[0]
    if size == 0:
        return
    beta1, beta2 = betas
    adam_step[(size + 255) // 256, 256, stream](
        params,
        grad,
        exp_avg,
        exp_avg_sq,
        lr,
        np.float32(beta1),
        np.float32(1.0 - beta1),
        np.float32(beta2),
        np.float32(1.0 - beta2),
        np.float32(1.0 - beta1**step),
        np.float32(1.0 - beta2**step),
        np.float32(eps),
    )


# ------------------------------------------------------------------ compiled forms
def kernel_signatures(tile: int) -> dict:
    """``name -> (kernel, argument types)`` of every kernel a fit launches with ``tile``, as
    the backend calls them (C-contiguous arrays, int64 sizes, float32 scalars): what
    ``tools/kernel_report.py`` compiles ahead of time without a GPU."""
    from numba import types

    from cuda_kernels import colour_gpu, init_gpu

    def array(dtype, ndim):
        return types.Array(dtype, ndim, "C")

    f32, i64 = types.float32, types.int64
    kernels = build(tile)
    return {
        "project": (
            project,
            (
                array(f32, 3),
                array(types.boolean, 2),
                i64,
                i64,
                i64,
                i64,
                f32,
                array(f32, 3),
                array(types.uint32, 3),
                array(types.int32, 1),
            ),
        ),
        "raster_tiles": (
            kernels.raster_tiles,
            (
                array(f32, 3),
                array(types.uint32, 3),
                array(f32, 4),
                i64,
                f32,
                f32,
                f32,
                array(f32, 1),
                array(f32, 3),
            ),
        ),
        "render_tiles": (
            kernels.render_tiles,
            (array(f32, 3), array(types.uint32, 3), i64, f32, array(f32, 4)),
        ),
        "adam_step": (adam_step, (array(f32, 1),) * 5 + (f32,) * 7),
        # the default fit's fixed costs: its initialisation and its colour systems
        "adaptive_layout": (
            init_gpu.adaptive_layout,
            (array(f32, 4),)
            + (types.float64,) * 5
            + (i64,)
            + (array(types.float64, 4), array(types.float64, 3))
            + (array(types.float64, 4), array(types.float64, 3)),
        ),
        "gram_tiles": (
            colour_gpu.gram_tiles,
            (
                array(f32, 3),
                array(types.uint32, 3),
                array(f32, 4),
                i64,
                i64,
                f32,
                array(f32, 3),
                array(f32, 3),
            ),
        ),
    }
