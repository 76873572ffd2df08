"""CUDA kernel of the colour stage: the normal equations ``(W^T W) c = W^T t`` of the best
colours for fixed splat geometry, accumulated over the raster kernels' tile lists (the same
sums as :mod:`cuda_kernels.colour_cpu`).

It reads what :func:`cuda_kernels.gpu.project` makes for a fitting iteration (the projected
splats in scaled units and the ``[B, T, ceil(N/32)]`` bitmask of each tile's splats) and
weighs pixels as the raster kernels do (one :func:`cuda_kernels.gpu.exp2` a weight), so the
stage needs no sort and no list length on the host, and can be captured in a CUDA graph.

One block per (tile, image), :data:`THREADS` threads. The tile's list is cut into chunks of
32 splats (a popcount prefix over the bitmask words locates each list entry); for every pair
of chunks ``(a, b)``, ``a <= b``, the weights of both chunks' splats over a strip of
:data:`PIXELS` pixels go into shared memory, pixel-major, and each thread adds a 4x4 block of
pair sums over a quarter of the strip's pixels: eight shared loads for sixteen FMAs. The four
quarters meet in shared memory and one atomic add per pair and tile puts the block into the
Gram (pairs within one chunk once, the transposed entry too). ``W^T t`` is summed while a
chunk meets itself. The Gram is symmetric up to the order of its atomic additions.

Arguments (``B`` images, ``N`` splats, ``T = tiles_x * tiles_y`` tiles): ``proj [B, N, 8]``
float32 and ``bits [B, T, ceil(N/32)]`` uint32 from ``project``, ``target [B, H, W, 3]``
float32, ``tile`` the tile edge, ``qcut`` the cut-off in scaled units (as ``raster_tiles``
takes it); outputs ``gram [B, N, N]`` and ``rhs [B, N, 3]`` float32, zero-filled by the
caller. Launch ``gram_tiles[(T, B), THREADS, stream]``; ``N <= 32 * MAX_WORDS``.
"""

import numpy as np
from numba import config, cuda

from cuda_kernels.gpu import FASTMATH, WARP, exp2

# threads a block (the simulator runs each as a Python thread, so it gets fewer)
THREADS = 64 if config.ENABLE_CUDASIM else 256
PIXELS = 128  # pixels whose weights are staged at once
GROUPS = THREADS // 64  # pixel quarters: 64 threads cover a 32 x 32 block of pairs in 4 x 4
MAX_WORDS = 256  # bitmask words an image's list may span (N <= 8192)
# shared-array sizes (compile-time constants)
PREFIX_SIZE = MAX_WORDS + 1
WEIGHTS_SIZE = PIXELS * WARP


@cuda.jit(device=True, fastmath=FASTMATH)
def list_entry(bits_bt, prefix, n_words, k):
    """Splat index of entry ``k`` of the tile's list (``prefix``: popcounts before each
    bitmask word): the word by binary search, the bit by a walk over the word."""
    lo = 0
    hi = n_words - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if prefix[mid] <= k:
            lo = mid
        else:
            hi = mid - 1
    word = np.int64(bits_bt[lo])
    rank = k - prefix[lo]
    for bit in range(WARP):
        if (word >> bit) & 1:
            if rank == 0:
                return lo * WARP + bit
            rank -= 1
    return -1


@cuda.jit(device=True, fastmath=FASTMATH)
def stage_chunk(proj_b, bits_bt, prefix, n_words, total, chunk, ids, params):
    """Indices ``ids [32]`` (-1 past the list's end) and projected parameters ``params [5,
    32]`` (x, y, i11, l21, i22) of the list's chunk ``chunk``; called by every thread."""
    tid = cuda.threadIdx.x
    if tid < WARP:
        k = chunk * WARP + tid
        i = list_entry(bits_bt, prefix, n_words, k) if k < total else -1
        ids[tid] = i
        if i >= 0:
            for f in range(5):
                params[f, tid] = proj_b[i, f]


@cuda.jit(device=True, fastmath=FASTMATH)
def stage_weights(params, ids, weights, x0, y0, p0, tile, height, width, nqcut, pixel):
    """Weights of a chunk's 32 splats at pixel ``p0 + pixel`` of the tile into ``weights
    [PIXELS * 32]`` (pixel-major; zero beyond the image, the cut-off and the list)."""
    p = p0 + pixel
    x = x0 + p % tile
    y = y0 + p // tile
    inside = p < tile * tile and x < width and y < height
    px = np.float32(x) + np.float32(0.5)
    py = np.float32(y) + np.float32(0.5)
    for j in range(WARP):
        weight = np.float32(0.0)
        if inside and ids[j] >= 0:
            z1 = (px - params[0, j]) * params[2, j]
            z2 = ((py - params[1, j]) - params[3, j] * z1) * params[4, j]
            nq = -(z1 * z1) - z2 * z2
            if nq >= nqcut:
                weight = exp2(nq)
        weights[pixel * WARP + j] = weight


@cuda.jit(fastmath=FASTMATH)
def gram_tiles(proj, bits, target, tile, tiles_x, qcut, gram, rhs):
    """Accumulate ``gram`` and ``rhs`` for the (tile ``blockIdx.x``, image ``blockIdx.y``)."""
    tid = cuda.threadIdx.x
    b = cuda.blockIdx.y
    t = cuda.blockIdx.x
    height = target.shape[1]
    width = target.shape[2]
    n_words = bits.shape[2]
    bits_bt = bits[b, t]
    proj_b = proj[b]
    x0 = (t % tiles_x) * tile
    y0 = (t // tiles_x) * tile
    nqcut = -qcut

    prefix = cuda.shared.array(PREFIX_SIZE, np.int32)
    ids_a = cuda.shared.array(WARP, np.int32)
    ids_b = cuda.shared.array(WARP, np.int32)
    params_a = cuda.shared.array((5, WARP), np.float32)
    params_b = cuda.shared.array((5, WARP), np.float32)
    # the two chunks' weights; after a pair's pixels, the four quarters' block sums
    weights_a = cuda.shared.array(WEIGHTS_SIZE, np.float32)
    weights_b = cuda.shared.array(WEIGHTS_SIZE, np.float32)
    rhs_part = cuda.shared.array((WARP, 3), np.float32)

    if tid == 0:
        count = 0
        for w in range(n_words):
            prefix[w] = count
            count += cuda.popc(bits_bt[w])
        prefix[n_words] = count
    cuda.syncthreads()
    total = prefix[n_words]
    chunks = (total + WARP - 1) // WARP

    # this thread's 4 x 4 block of pairs and quarter of the staged pixels
    block = tid % 64
    rows = 4 * (block // 8)
    cols = 4 * (block % 8)
    quarter = tid // 64
    acc = cuda.local.array(16, np.float32)
    n_pix = tile * tile
    for ca in range(chunks):
        stage_chunk(proj_b, bits_bt, prefix, n_words, total, ca, ids_a, params_a)
        for cb in range(ca, chunks):
            same = ca == cb
            if not same:
                stage_chunk(proj_b, bits_bt, prefix, n_words, total, cb, ids_b, params_b)
            if same:
                for jc in range(tid, WARP * 3, THREADS):
                    rhs_part[jc % WARP, jc // WARP] = np.float32(0.0)
            cuda.syncthreads()
            left = total - ca * WARP
            right = total - cb * WARP
            active = rows < left and cols < right and (not same or rows <= cols)
            for k in range(16):
                acc[k] = np.float32(0.0)
            for p0 in range(0, n_pix, PIXELS):
                # chunk a's weights, then chunk b's (when it is another), a pixel a thread
                for item in range(tid, PIXELS if same else 2 * PIXELS, THREADS):
                    if item < PIXELS:
                        stage_weights(
                            params_a, ids_a, weights_a, x0, y0, p0, tile, height, width, nqcut, item
                        )
                    else:
                        stage_weights(
                            params_b,
                            ids_b,
                            weights_b,
                            x0,
                            y0,
                            p0,
                            tile,
                            height,
                            width,
                            nqcut,
                            item - PIXELS,
                        )
                cuda.syncthreads()
                right_weights = weights_a if same else weights_b
                if active:
                    for pixel in range(quarter, PIXELS, GROUPS):
                        base = pixel * WARP
                        a0 = weights_a[base + rows]
                        a1 = weights_a[base + rows + 1]
                        a2 = weights_a[base + rows + 2]
                        a3 = weights_a[base + rows + 3]
                        for v in range(4):
                            w = right_weights[base + cols + v]
                            acc[v] += a0 * w
                            acc[4 + v] += a1 * w
                            acc[8 + v] += a2 * w
                            acc[12 + v] += a3 * w
                for jc in range(tid, WARP * 3 if same else 0, THREADS):
                    # W^T t: thread (j, channel) over this strip's pixels
                    j = jc % WARP
                    c = jc // WARP
                    s = np.float32(0.0)
                    for pixel in range(min(PIXELS, n_pix - p0)):
                        p = p0 + pixel
                        x = x0 + p % tile
                        y = y0 + p // tile
                        if x < width and y < height:
                            s += weights_a[pixel * WARP + j] * target[b, y, x, c]
                    rhs_part[j, c] += s
                cuda.syncthreads()
            # the quarters' sums meet in the (now free) weight arrays
            for k in range(16):
                weights_a[(quarter * 64 + block) * 16 + k] = acc[k]
            cuda.syncthreads()
            if quarter == 0 and active:
                for k in range(16):
                    s = acc[k]
                    for q in range(1, GROUPS):
                        s += weights_a[(q * 64 + block) * 16 + k]
                    i = rows + k // 4
                    j = cols + k % 4
                    if i < left and j < right and s != 0:
                        ia = ids_a[i]
                        ib = ids_a[j] if same else ids_b[j]
                        cuda.atomic.add(gram, (b, ia, ib), s)
                        if not same or rows < cols:
                            # a diagonal 4 x 4 block holds both orders of its pairs itself
                            cuda.atomic.add(gram, (b, ib, ia), s)
            for jc in range(tid, WARP * 3 if same else 0, THREADS):
                j = jc % WARP
                c = jc // WARP
                if ids_a[j] >= 0:
                    cuda.atomic.add(rhs, (b, ids_a[j], c), rhs_part[j, c])
            cuda.syncthreads()
