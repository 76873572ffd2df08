"""CPU kernel of the adaptive initialisation: :func:`streamfit.fit.init.adaptive_init` (the
torch reference, which the ``torch`` and ``cuda`` backends run) compiled with ``numba.njit``,
one image a thread.

Why a kernel: the reference is batched tensor code over every box at every level of the k-d
tree, evaluates both cut directions and gathers the summed-area tables at every pixel edge of
the widest box; on a CPU that costs more than 30 fitting iterations. Here each box is cut
once, along its longer side, by one walk over its pixel edges, and the per-image tables are
built in one pass over the pixels.

Same arithmetic as the reference, in float64 and without fast-math (the cuts are decisions:
``tests/test_init.py`` checks the kernel against the reference on random and flat images):
central-difference gradients with replicated borders; detail density
``(1 - detail) + detail * e / mean(e)`` with ``e`` the 3x3 box-blurred gradient magnitude to
the ``power``; summed-area tables read bilinearly at fractional coordinates; leaves in the
order of the reference's level-by-level split (depth first, first half first).

Arguments: ``images [B, H, W, 3]`` float32, ``params [B, n, 8]`` float64 (output; colours
are the plain box means, the caller applies any overlap normalisation).
"""

import numpy as np
from numba import njit, prange

_inline = njit(cache=True, inline="always")


@_inline
def _at(sat, x, y):
    """Bilinear read of ``sat [H+1, W+1]`` at ``(x, y)``, clamped to the table."""
    hp, wp = sat.shape
    x = min(max(x, 0.0), wp - 1.0)
    y = min(max(y, 0.0), hp - 1.0)
    x0 = min(np.floor(x), wp - 2.0)
    y0 = min(np.floor(y), hp - 2.0)
    fx = x - x0
    fy = y - y0
    i = int(y0)
    j = int(x0)
    top = sat[i, j] * (1 - fx) + sat[i, j + 1] * fx
    bottom = sat[i + 1, j] * (1 - fx) + sat[i + 1, j + 1] * fx
    return top * (1 - fy) + bottom * fy


@_inline
def _mass_before(sat, t, a, b, along_x):
    """Mass of the strip ``[.., t] x [a, b]`` (``along_x``) or ``[a, b] x [.., t]``."""
    if along_x:
        return _at(sat, t, b) - _at(sat, t, a)
    return _at(sat, b, t) - _at(sat, a, t)


@_inline
def _mass_cut(sat, lo, hi, a, b, fraction, along_x):
    """The coordinate in ``[lo, hi]`` with ``fraction`` of the box's mass before it: the mass
    is linear between pixel edges, so walk the edges to the first reaching the goal and
    interpolate (as the reference's ``searchsorted``)."""
    base = _mass_before(sat, lo, a, b, along_x)
    goal = fraction * (_mass_before(sat, hi, a, b, along_x) - base)
    t0 = lo
    m0 = 0.0
    edge = np.floor(lo) + 1.0
    while True:
        t1 = min(edge, hi)
        m1 = _mass_before(sat, t1, a, b, along_x) - base
        if m1 >= goal or t1 >= hi:
            break
        t0 = t1
        m0 = m1
        edge += 1.0
    cut = t0 + (goal - m0) / max(m1 - m0, 1e-300) * (t1 - t0)
    return min(max(cut, lo), hi)


@_inline
def _push(stack, depth, x0, y0, x1, y1, k):
    stack[depth, 0] = x0
    stack[depth, 1] = y0
    stack[depth, 2] = x1
    stack[depth, 3] = y1
    stack[depth, 4] = k


@_inline
def _box_mean(sat, x0, y0, x1, y1, area):
    return (_at(sat, x1, y1) - _at(sat, x0, y1) - _at(sat, x1, y0) + _at(sat, x0, y0)) / area


@njit(parallel=True, cache=True)
def adaptive_init(images, detail, power, scale, anisotropy, flat_energy, params):
    """Fills ``params [B, n, 8]`` (float64) for ``images [B, H, W, 3]``; see the module."""
    n_img, height, width, _ = images.shape
    n = params.shape[1]
    for b in prange(n_img):
        img = images[b]
        energy = np.empty((height, width))
        # summed-area tables: density, structure tensor (xx, xy, yy), colour (r, g, b)
        sat_d = np.zeros((height + 1, width + 1))
        sat_t = np.zeros((3, height + 1, width + 1))
        sat_c = np.zeros((3, height + 1, width + 1))
        for y in range(height):
            yu, yd = max(y - 1, 0), min(y + 1, height - 1)
            for x in range(width):
                xl, xr = max(x - 1, 0), min(x + 1, width - 1)
                jxx = 0.0
                jxy = 0.0
                jyy = 0.0
                for c in range(3):
                    gx = (np.float64(img[y, xr, c]) - np.float64(img[y, xl, c])) / 2
                    gy = (np.float64(img[yd, x, c]) - np.float64(img[yu, x, c])) / 2
                    jxx += gx * gx
                    jxy += gx * gy
                    jyy += gy * gy
                    sat_c[c, y + 1, x + 1] = np.float64(img[y, x, c])
                energy[y, x] = (jxx + jyy) ** (0.5 * power)
                sat_t[0, y + 1, x + 1] = jxx
                sat_t[1, y + 1, x + 1] = jxy
                sat_t[2, y + 1, x + 1] = jyy
        total = 0.0
        for y in range(height):
            yu, yd = max(y - 1, 0), min(y + 1, height - 1)
            for x in range(width):
                xl, xr = max(x - 1, 0), min(x + 1, width - 1)
                s = 0.0
                for yy in (yu, y, yd):
                    s += energy[yy, xl] + energy[yy, x] + energy[yy, xr]
                sat_d[y + 1, x + 1] = s / 9.0
                total += s / 9.0
        mean = total / (height * width)
        for y in range(1, height + 1):
            for x in range(1, width + 1):
                e = sat_d[y, x] / mean if mean > 1e-12 else 1.0
                sat_d[y, x] = (1.0 - detail) + detail * e
        for table in (sat_d, sat_t[0], sat_t[1], sat_t[2], sat_c[0], sat_c[1], sat_c[2]):
            for y in range(1, height + 1):
                for x in range(1, width + 1):
                    table[y, x] += table[y - 1, x]
            for y in range(1, height + 1):
                for x in range(1, width + 1):
                    table[y, x] += table[y, x - 1]

        # k-d bisection, depth first with the first half first: the reference's leaf order
        stack = np.empty((64, 5))
        _push(stack, 0, 0.0, 0.0, width, height, n)
        depth = 1
        leaf = 0
        while depth > 0:
            depth -= 1
            x0, y0, x1, y1 = stack[depth, 0], stack[depth, 1], stack[depth, 2], stack[depth, 3]
            k = int(stack[depth, 4])
            if k == 1:
                _write_splat(
                    params[b, leaf], x0, y0, x1, y1, sat_t, sat_c, scale, anisotropy, flat_energy
                )
                leaf += 1
                continue
            half = k // 2
            wide = (x1 - x0) >= (y1 - y0)
            if wide:
                cut = _mass_cut(sat_d, x0, x1, y0, y1, half / k, True)
                _push(stack, depth, cut, y0, x1, y1, k - half)
                _push(stack, depth + 1, x0, y0, cut, y1, half)
            else:
                cut = _mass_cut(sat_d, y0, y1, x0, x1, half / k, False)
                _push(stack, depth, x0, cut, x1, y1, k - half)
                _push(stack, depth + 1, x0, y0, x1, cut, half)
            depth += 2


@_inline
def _write_splat(out, x0, y0, x1, y1, sat_t, sat_c, scale, anisotropy, flat_energy):
    """One cell's splat: centre, structure-tensor-stretched covariance, mean colour."""
    area = max((x1 - x0) * (y1 - y0), 1e-12)
    jxx = _box_mean(sat_t[0], x0, y0, x1, y1, area)
    jxy = _box_mean(sat_t[1], x0, y0, x1, y1, area)
    jyy = _box_mean(sat_t[2], x0, y0, x1, y1, area)
    half = (jxx - jyy) / 2
    root = np.sqrt(half * half + jxy * jxy)
    coherence = 2 * root / max(jxx + jyy, flat_energy)
    theta = 0.5 * np.arctan2(2 * jxy, jxx - jyy)
    k = 1.0 + anisotropy * coherence
    cxx = max(scale * (x1 - x0) / 2, 0.3) ** 2
    cyy = max(scale * (y1 - y0) / 2, 0.3) ** 2
    cos, sin = np.cos(theta), np.sin(theta)
    a = cos * cos / k + sin * sin * k
    d = sin * sin / k + cos * cos * k
    c = cos * sin * (1 / k - k)
    sxx = a * a * cxx + c * c * cyy
    sxy = a * c * cxx + c * d * cyy
    syy = c * c * cxx + d * d * cyy
    l11 = np.sqrt(sxx)
    l21 = sxy / l11
    out[0] = (x0 + x1) / 2
    out[1] = (y0 + y1) / 2
    out[2] = np.log(l11)
    out[3] = l21
    out[4] = 0.5 * np.log(max(syy - l21 * l21, 1e-6))
    for ch in range(3):
        out[5 + ch] = _box_mean(sat_c[ch], x0, y0, x1, y1, area)
