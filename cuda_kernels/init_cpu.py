"""CPU kernel of the adaptive initialisation: :func:`streamfit.fit.init.adaptive_layout` (the
torch reference) compiled with ``numba.njit``, one image a thread.

Why a kernel: the reference is batched tensor code over every box at every level of the k-d
tree, evaluates both cut directions and gathers the summed-area tables at every pixel edge of
the widest box; on a CPU that costs more than 30 fitting iterations. Here each box is cut
once, along its longer side, by a binary search over its pixel edges, and the per-image
tables are built in one pass over the pixels.

The stages and their maths are those of :mod:`cuda_kernels.init_math`, which
:mod:`cuda_kernels.init_gpu` compiles for the GPU (one image a block) from the same source.

Arguments: ``images [B, H, W, 3]`` float32, ``params [B, n, 8]`` float64 (output; colours
are the plain box means, the caller applies any overlap normalisation).
"""

import numpy as np
from numba import njit, prange

from cuda_kernels import init_math

# the stage functions, compiled for the CPU and inlined into the kernel (module-level names:
# a kernel can call a compiled function through a global, not through an attribute)
_maths = init_math.build(njit(cache=True, inline="always"))
pixel_terms = _maths.pixel_terms
blurred_energy = _maths.blurred_energy
detail_density = _maths.detail_density
put_box = _maths.put_box
split_box = _maths.split_box
write_splat = _maths.write_splat


@njit(parallel=True, cache=True)
def adaptive_layout(images, detail, power, scale, anisotropy, flat_energy, levels, params):
    """Fills ``params [B, n, 8]`` (float64) for ``images [B, H, W, 3]`` (``levels``:
    :func:`init_math.levels` of ``n``); see the module."""
    n_img, height, width, _ = images.shape
    n = params.shape[1]
    for b in prange(n_img):
        img = images[b]
        tables = np.zeros((init_math.TABLES, height + 1, width + 1))
        energy = np.empty((height, width))
        for y in range(height):
            for x in range(width):
                pixel_terms(img, y, x, power, tables, energy)
        total = 0.0
        for y in range(height):
            for x in range(width):
                s = blurred_energy(energy, y, x)
                tables[init_math.DENSITY, y + 1, x + 1] = s
                total += s
        mean = total / (height * width)
        for y in range(1, height + 1):
            for x in range(1, width + 1):
                blurred = tables[init_math.DENSITY, y, x]
                tables[init_math.DENSITY, y, x] = detail_density(blurred, mean, detail)
        for plane in range(init_math.TABLES):
            for y in range(1, height + 1):
                for x in range(1, width + 1):
                    tables[plane, y, x] += tables[plane, y - 1, x]
            for y in range(1, height + 1):
                for x in range(1, width + 1):
                    tables[plane, y, x] += tables[plane, y, x - 1]

        src = np.zeros((n, init_math.BOX_FIELDS))
        dst = np.zeros((n, init_math.BOX_FIELDS))
        put_box(src, 0, 0.0, 0.0, float(width), float(height), n)
        for _ in range(levels):
            for slot in range(n):
                split_box(tables, src, dst, slot)
            src, dst = dst, src
        for slot in range(n):
            write_splat(params[b, slot], src[slot], tables, scale, anisotropy, flat_energy)
