"""CUDA kernels (``numba.cuda``): a whole batch of images per launch.

One fitting iteration is four launches on the caller's stream, with no host round trip:

1. :func:`project` (one thread per splat of every image): inverse Cholesky diagonal, the
   pixel box of the cut-off footprint, and the binning: each splat sets its bit in a
   ``[B, T, ceil(N/32)]`` uint32 bitmask for every tile its box touches. The bitmask has a
   fixed size, so binning needs neither a sort nor a host-read list length.
2. :func:`forward` (one block per tile per image, one thread per pixel): the block expands its
   tile's bitmask into an ordered splat list in shared memory, stages the splats' projected
   parameters through shared memory in batches, and every pixel accumulates their colours;
   with a target it also adds the tile's squared error into the image's loss.
3. :func:`backward` (one block per tile per image): the pixel residuals live in shared memory;
   the 32 lanes of a warp take 32 different splats and each warp a different slice of the
   tile's pixels, so a thread sums its splat's gradient over its pixels in registers. A block
   reduction over the warps then leaves one global atomic per (splat, parameter) per tile.
4. :func:`adam` (one thread per parameter): the optimiser step.

Kernels are built per tile size by :func:`build` (the tile fixes the block and the shared
arrays' shapes). Everything runs under the Numba CUDA simulator too (tiny sizes), which is
how it is tested without a GPU; the simulator lacks warp shuffles, hence shared-memory
reductions throughout.
"""

import functools
import math
from types import SimpleNamespace

import numpy as np
from numba import cuda

from cuda_kernels import splat_math

WARP = 32
# splat indices expanded from the bitmask per round: one bitmask word per lane of one warp
ROUND_SPLATS = WARP * 32
MAX_GRID_Y = 65535  # images a launch: the tile kernels' grid is (tiles, images)

_device = cuda.jit(device=True)
is_finite_splat = _device(splat_math.is_finite_splat)
inverse_diagonal = _device(splat_math.inverse_diagonal)
footprint_half_extents = _device(splat_math.footprint_half_extents)
pixel_span = _device(splat_math.pixel_span)
splat_weight = _device(splat_math.splat_weight)
pixel_gradient_terms = _device(splat_math.pixel_gradient_terms)
parameter_gradients = _device(splat_math.parameter_gradients)


# Floating-point operations per (pixel, splat) pair a tile kernel evaluates (every pixel of a
# tile against every splat in the tile's list), counted from the source (an FMA is 2, exp 2):
# forward: offsets 2, whitening 4, q 3, exp(-q/2) 3, colour accumulation 6;
# backward: the same weight 12, residual . colour 5, k 1, the five z products 5, the eight
# accumulations 8, colour gradient 3.
FLOPS_PER_PAIR_FORWARD = 18
FLOPS_PER_PAIR_BACKWARD = 34
# per splat: projection ~16, parameter gradients ~12, Adam 8 x 12; per pixel: loss and residual
FLOPS_PER_SPLAT = 16 + 12 + 8 * 12
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


@cuda.jit
def project(params, mask, height, width, tile, tiles_x, qcut, proj, bits, bad):
    """Per splat ``(b, i)``: ``proj [B, N, 8]`` (x, y, i11, l21, i22, r, g, b) and its bit in
    ``bits [B, T, W]`` uint32 (zeroed by the caller) for each tile its footprint touches.
    ``bad [B]`` int32 is set to 1 for an image with a non-finite valid splat."""
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
    proj[b, i, 2] = i11
    proj[b, i, 3] = l21
    proj[b, i, 4] = i22
    proj[b, i, 5] = params[b, i, 5]
    proj[b, i, 6] = params[b, i, 6]
    proj[b, i, 7] = params[b, i, 7]
    word = i // 32
    bit = np.uint32(1 << (i - word * 32))
    for ty in range(r0 // tile, r1 // tile + 1):
        for tx in range(c0 // tile, c1 // tile + 1):
            cuda.atomic.or_(bits, (b, ty * tiles_x + tx, word), bit)


@cuda.jit
def adam(params, grad, exp_avg, exp_avg_sq, lr, beta1, rest1, beta2, rest2, bias1, bias2, eps):
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


@functools.cache
def build(tile: int) -> SimpleNamespace:
    """The tile kernels for ``tile x tile`` pixel tiles (``tile * tile`` a multiple of 32,
    at most 1024): ``forward``, ``backward`` and the launch geometry ``threads``."""
    threads = tile * tile
    if threads % WARP or threads > 1024:
        raise ValueError(f"tile {tile}: tile*tile must be a multiple of {WARP} and <= 1024")
    warps = threads // WARP
    pixels_per_warp = threads // warps  # = WARP: a warp's slice of the tile in the backward pass

    @cuda.jit(device=True)
    def expand_round(bits, b, t, w0, word_count, splat_list):
        """Expand bitmask words ``w0 .. w0 + 31`` of tile ``t`` into ascending splat indices in
        ``splat_list`` (shared); returns how many. All threads of the block must call it."""
        tid = cuda.threadIdx.x
        cuda.syncthreads()  # the previous round's list and count have been read by all
        word = np.uint32(0)
        if tid < WARP and w0 + tid < bits.shape[2]:
            word = bits[b, t, w0 + tid]
        if tid < WARP:
            word_count[tid] = cuda.popc(word)
        cuda.syncthreads()
        if tid == 0:
            running = 0
            for k in range(WARP):
                running += word_count[k]
                word_count[k] = running
        cuda.syncthreads()
        if tid < WARP and word != 0:
            pos = word_count[tid] - cuda.popc(word)
            for k in range(32):
                if (word >> k) & 1:
                    splat_list[pos] = (w0 + tid) * 32 + k
                    pos += 1
        cuda.syncthreads()
        return word_count[WARP - 1]

    @cuda.jit(fastmath=True)
    def forward(proj, bits, target, tiles_x, qcut, loss_scale, image, loss):
        """Grid ``(T, B)``, block ``tile * tile``. Writes ``image [B, H, W, 3]``; when
        ``target`` is non-empty adds ``loss_scale * SSE`` of each image into ``loss [B]``
        (zeroed by the caller)."""
        tid = cuda.threadIdx.x
        t = cuda.blockIdx.x
        b = cuda.blockIdx.y
        height = image.shape[1]
        width = image.shape[2]
        col = (t % tiles_x) * tile + tid % tile
        row = (t // tiles_x) * tile + tid // tile
        inside = row < height and col < width
        px = np.float32(col) + splat_math.HALF
        py = np.float32(row) + splat_math.HALF

        word_count = cuda.shared.array(WARP, np.int32)
        splat_list = cuda.shared.array(ROUND_SPLATS, np.int32)
        staged = cuda.shared.array((8, threads), np.float32)
        sse = cuda.shared.array(threads, np.float32)

        acc_r = np.float32(0.0)
        acc_g = np.float32(0.0)
        acc_b = np.float32(0.0)
        for w0 in range(0, bits.shape[2], WARP):
            count = expand_round(bits, b, t, w0, word_count, splat_list)
            for s0 in range(0, count, threads):
                if s0 + tid < count:
                    i = splat_list[s0 + tid]
                    for k in range(8):
                        staged[k, tid] = proj[b, i, k]
                cuda.syncthreads()
                if inside:
                    for j in range(min(threads, count - s0)):
                        w, _, _ = splat_weight(
                            px - staged[0, j],
                            py - staged[1, j],
                            staged[2, j],
                            staged[3, j],
                            staged[4, j],
                            qcut,
                        )
                        acc_r += w * staged[5, j]
                        acc_g += w * staged[6, j]
                        acc_b += w * staged[7, j]
                cuda.syncthreads()

        err = np.float32(0.0)
        if inside:
            image[b, row, col, 0] = acc_r
            image[b, row, col, 1] = acc_g
            image[b, row, col, 2] = acc_b
            if target.shape[0] > 0:
                dr = acc_r - target[b, row, col, 0]
                dg = acc_g - target[b, row, col, 1]
                db = acc_b - target[b, row, col, 2]
                err = dr * dr + dg * dg + db * db
        if target.shape[0] == 0:
            return
        sse[tid] = err
        cuda.syncthreads()
        stride = threads // 2
        while stride > 0:
            if tid < stride:
                sse[tid] += sse[tid + stride]
            cuda.syncthreads()
            stride //= 2
        if tid == 0:
            cuda.atomic.add(loss, b, loss_scale * sse[0])

    @cuda.jit(fastmath=True)
    def backward(proj, bits, image, target, tiles_x, qcut, grad_scale, grad):
        """Grid ``(T, B)``, block ``tile * tile``. Adds ``d(grad_scale * SSE / 2)/d params``
        into ``grad [B, N, 8]`` (zeroed by the caller), from the forward ``image``."""
        tid = cuda.threadIdx.x
        t = cuda.blockIdx.x
        b = cuda.blockIdx.y
        height = image.shape[1]
        width = image.shape[2]
        x0 = (t % tiles_x) * tile
        y0 = (t // tiles_x) * tile

        word_count = cuda.shared.array(WARP, np.int32)
        splat_list = cuda.shared.array(ROUND_SPLATS, np.int32)
        residual = cuda.shared.array((3, threads), np.float32)
        staged = cuda.shared.array((8, WARP), np.float32)
        partial = cuda.shared.array((warps, 8, WARP), np.float32)

        # dLoss/dPixel of this thread's pixel, 0 outside the image
        row = y0 + tid // tile
        col = x0 + tid % tile
        for c in range(3):
            residual[c, tid] = np.float32(0.0)
            if row < height and col < width:
                residual[c, tid] = grad_scale * (image[b, row, col, c] - target[b, row, col, c])

        lane = tid % WARP
        warp = tid // WARP
        first = warp * pixels_per_warp
        for w0 in range(0, bits.shape[2], WARP):
            count = expand_round(bits, b, t, w0, word_count, splat_list)
            for s0 in range(0, count, WARP):
                n_here = min(WARP, count - s0)
                if tid < n_here:
                    i = splat_list[s0 + tid]
                    for k in range(8):
                        staged[k, tid] = proj[b, i, k]
                cuda.syncthreads()
                s1 = s2 = s11 = s12 = s22 = gr = gg = gb = np.float32(0.0)
                if lane < n_here:
                    mx = staged[0, lane]
                    my = staged[1, lane]
                    i11 = staged[2, lane]
                    l21 = staged[3, lane]
                    i22 = staged[4, lane]
                    for p in range(first, first + pixels_per_warp):
                        w, z1, z2 = splat_weight(
                            np.float32(x0 + p % tile) + splat_math.HALF - mx,
                            np.float32(y0 + p // tile) + splat_math.HALF - my,
                            i11,
                            l21,
                            i22,
                            qcut,
                        )
                        if w != 0.0:
                            t1, t2, t11, t12, t22, tr, tg, tb = pixel_gradient_terms(
                                w,
                                z1,
                                z2,
                                residual[0, p],
                                residual[1, p],
                                residual[2, p],
                                staged[5, lane],
                                staged[6, lane],
                                staged[7, lane],
                            )
                            s1 += t1
                            s2 += t2
                            s11 += t11
                            s12 += t12
                            s22 += t22
                            gr += tr
                            gg += tg
                            gb += tb
                    gx, gy, g11, g21, g22 = parameter_gradients(
                        s1, s2, s11, s12, s22, i11, l21, i22
                    )
                    partial[warp, 0, lane] = gx
                    partial[warp, 1, lane] = gy
                    partial[warp, 2, lane] = g11
                    partial[warp, 3, lane] = g21
                    partial[warp, 4, lane] = g22
                    partial[warp, 5, lane] = gr
                    partial[warp, 6, lane] = gg
                    partial[warp, 7, lane] = gb
                cuda.syncthreads()
                # block reduction over the warps, then one atomic per (splat, parameter)
                for slot in range(tid, 8 * WARP, threads):
                    k = slot // WARP
                    j = slot - k * WARP
                    if j < n_here:
                        total = np.float32(0.0)
                        for v in range(warps):
                            total += partial[v, k, j]
                        if total != 0.0:
                            cuda.atomic.add(grad, (b, splat_list[s0 + j], k), total)
                cuda.syncthreads()

    return SimpleNamespace(tile=tile, threads=threads, forward=forward, backward=backward)


def launch_loss_and_grad(
    params, mask, target, tile: int, qcut: float, proj, bits, bad, image, loss, grad, stream=0
) -> None:
    """Render, MSE and its gradient for a batch, entirely on the device.

    ``params [B, N, 8]`` f32, ``mask [B, N]`` bool, ``target [B, H, W, 3]`` f32 (or an empty
    ``[0, 0, 0, 3]`` array for a forward pass only). Work arrays (device arrays or, under the
    simulator, NumPy arrays): ``proj [B, N, 8]`` f32, ``bits [B, T, ceil(N/32)]`` u32 zeroed, ``bad [B]`` i32 zeroed. Outputs: ``image``
    ``[B, H, W, 3]`` f32, ``loss [B]`` f32 zeroed (sum of squared errors / (H*W*3)),
    ``grad [B, N, 8]`` f32 zeroed (d sum_b loss_b / d params; untouched without a target).
    The caller marks the images flagged in ``bad``.
    """
    kernels = build(tile)
    n_img, height, width, _ = image.shape
    n_spl = mask.shape[1]
    tiles_x = (width + tile - 1) // tile
    n_tiles = tiles_x * ((height + tile - 1) // tile)
    count = height * width * 3
    if n_img > MAX_GRID_Y:
        raise ValueError(f"at most {MAX_GRID_Y} images a launch (the grid's y extent), got {n_img}")
    if n_img * n_spl > 0:
        blocks = (n_img * n_spl + 255) // 256
        project[blocks, 256, stream](
            params, mask, height, width, tile, tiles_x, qcut, proj, bits, bad
        )
    grid = (n_tiles, n_img)
    kernels.forward[grid, kernels.threads, stream](
        proj, bits, target, tiles_x, qcut, np.float32(1.0 / count), image, loss
    )
    if target.shape[0] > 0 and n_spl > 0:
        kernels.backward[grid, kernels.threads, stream](
            proj, bits, image, target, tiles_x, qcut, np.float32(2.0 / count), grad
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
    adam[(size + 255) // 256, 256, stream](
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
