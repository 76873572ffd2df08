"""CUDA kernel of the adaptive initialisation: the stages of :mod:`cuda_kernels.init_math`
(the same source :mod:`cuda_kernels.init_cpu` compiles for the CPU), one image a block.

The block's threads share each stage: the pixel stages stride over the pixels, the tables'
cumulative sums give each thread whole columns, then whole rows, and the k-d levels give
each thread whole boxes (level after level, a barrier between them). The image's mean
energy is a block reduction, so its rounding differs from the CPU's sequential sum; the
cuts follow the reference to ~1e-12 pixels all the same (``tests``). Float64 throughout and
no fast-math, as on the CPU: the cuts are decisions.

Launch ``adaptive_layout[B, THREADS, stream]`` with, per image ``b``: ``images [B, H, W, 3]``
float32; work arrays ``tables [B, TABLES, H+1, W+1]`` float64 (any content: the kernel
writes every element it reads), ``energy [B, H, W]`` float64, ``boxes [B, 2, n,
BOX_FIELDS]`` float64 (any content); output ``params [B, n, 8]`` float64. ``levels``:
:func:`init_math.levels` of ``n``.
"""

import numpy as np
from numba import config, cuda

from cuda_kernels import init_math

# threads a block; the simulator runs every thread as a Python thread, so it gets fewer
THREADS = 32 if config.ENABLE_CUDASIM else 256

# the stage functions as device functions (module-level names: a kernel calls a compiled
# function through a global, not through an attribute)
_maths = init_math.build(cuda.jit(device=True))
pixel_terms = _maths.pixel_terms
blurred_energy = _maths.blurred_energy
detail_density = _maths.detail_density
put_box = _maths.put_box
split_box = _maths.split_box
write_splat = _maths.write_splat


@cuda.jit
def adaptive_layout(
    images, detail, power, scale, anisotropy, flat_energy, levels, tables, energy, boxes, params
):
    """Fills ``params[b]`` for image ``b = blockIdx.x``; see the module."""
    b = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    threads = cuda.blockDim.x
    _, height, width, _ = images.shape
    n = params.shape[1]
    img = images[b]
    tab = tables[b]
    eng = energy[b]
    pixels = height * width

    # 1. per-pixel terms; the tables' first row and column are zero
    for p in range(tid, pixels, threads):
        pixel_terms(img, p // width, p % width, power, tab, eng)
    for i in range(tid, init_math.TABLES * (width + 1), threads):
        tab[i // (width + 1), 0, i % (width + 1)] = 0.0
    for i in range(tid, init_math.TABLES * height, threads):
        tab[i // height, 1 + i % height, 0] = 0.0
    cuda.syncthreads()

    # 2. blurred energy, its mean (a block reduction), the detail density
    partial = cuda.shared.array(THREADS, np.float64)
    total = 0.0
    for p in range(tid, pixels, threads):
        y = p // width
        x = p % width
        s = blurred_energy(eng, y, x)
        tab[init_math.DENSITY, y + 1, x + 1] = s
        total += s
    partial[tid] = total
    cuda.syncthreads()
    stride = THREADS // 2
    while stride > 0:
        if tid < stride:
            partial[tid] += partial[tid + stride]
        cuda.syncthreads()
        stride //= 2
    mean = partial[0] / pixels
    for p in range(tid, pixels, threads):
        y = 1 + p // width
        x = 1 + p % width
        tab[init_math.DENSITY, y, x] = detail_density(tab[init_math.DENSITY, y, x], mean, detail)
    cuda.syncthreads()

    # 3. summed-area tables: down the columns, then along the rows
    for i in range(tid, init_math.TABLES * width, threads):
        plane = i // width
        x = 1 + i % width
        for y in range(1, height + 1):
            tab[plane, y, x] += tab[plane, y - 1, x]
    cuda.syncthreads()
    for i in range(tid, init_math.TABLES * height, threads):
        plane = i // height
        y = 1 + i % height
        for x in range(1, width + 1):
            tab[plane, y, x] += tab[plane, y, x - 1]

    # 4. the k-d levels: the whole image, then halves of halves
    for slot in range(tid, n, threads):
        put_box(boxes[b, 0], slot, 0.0, 0.0, np.float64(width), np.float64(height), 0)
        put_box(boxes[b, 1], slot, 0.0, 0.0, np.float64(width), np.float64(height), 0)
    cuda.syncthreads()
    if tid == 0:
        put_box(boxes[b, 0], 0, 0.0, 0.0, np.float64(width), np.float64(height), n)
    cuda.syncthreads()
    for level in range(levels):
        src = boxes[b, level % 2]
        dst = boxes[b, (level + 1) % 2]
        for slot in range(tid, n, threads):
            split_box(tab, src, dst, slot)
        cuda.syncthreads()

    # 5. one splat a cell
    cells = boxes[b, levels % 2]
    for slot in range(tid, n, threads):
        write_splat(params[b, slot], cells[slot], tab, scale, anisotropy, flat_energy)
