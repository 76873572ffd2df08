"""Scalar maths of the adaptive initialisation, as plain Python functions.

Compiled twice, by ``numba.njit`` in :mod:`cuda_kernels.init_cpu` (one image a thread) and
by ``numba.cuda.jit(device=True)`` in :mod:`cuda_kernels.init_gpu` (one image a block), so
both evaluate the very same expressions of :func:`streamfit.fit.init.adaptive_layout` (the
torch reference). Everything is float64 and compiled without fast-math: the cuts are
decisions.

An image's work arrays: ``tables [TABLES, H+1, W+1]`` float64, its summed-area tables (row
0 and column 0 zero), and ``boxes [n, BOX_FIELDS]`` float64, the k-d cells of one level
indexed by their first leaf (``x0, y0, x1, y1, cells``; ``cells = 0``: no box starts here).

Stages, in this order on both backends:

1. :func:`pixel_terms` at every pixel: central-difference gradients with replicated borders,
   the structure tensor and the colour into the tables, the gradient energy to the ``power``;
2. :func:`blurred_energy` (3x3 box blur with replicated borders) into the density plane, its
   mean over the image, then :func:`detail_density` at every pixel;
3. summed-area tables: cumulative sums down every column, then along every row;
4. :func:`split_box` for every box of a level, level after level (a box of ``k`` cells is cut
   along its longer side at mass fraction ``floor(k/2)/k``; its first half keeps its slot, the
   second starts ``floor(k/2)`` slots on), until every box is one cell;
5. :func:`write_splat` for every cell.
"""

import math
from types import SimpleNamespace

import numpy as np

# planes of ``tables``: the detail density, the structure tensor, the colour
DENSITY, JXX, JXY, JYY, RED = 0, 1, 2, 3, 4
TABLES = 7
BOX_FIELDS = 5


def levels(n):
    """k-d levels that split one box of ``n`` cells into single cells (``ceil(log2 n)``)."""
    return (n - 1).bit_length()


def build(jit):
    """The functions below compiled by ``jit`` (``njit(inline="always")`` for the CPU,
    ``cuda.jit(device=True)`` for the GPU): a namespace of the compiled functions. They are
    defined inside this builder so that each calls the others in their compiled form."""

    @jit
    def neighbours(y, x, height, width):
        """The rows above and below and the columns left and right of ``(y, x)``, borders
        replicated: ``(yu, yd, xl, xr)``."""
        return max(y - 1, 0), min(y + 1, height - 1), max(x - 1, 0), min(x + 1, width - 1)

    @jit
    def pixel_terms(img, y, x, power, tables, energy):
        """Pixel ``(y, x)`` of ``img [H, W, 3]``: structure tensor and colour into ``tables``
        (at ``[.., y+1, x+1]``), gradient magnitude to the ``power`` into ``energy [H, W]``."""
        yu, yd, xl, xr = neighbours(y, x, img.shape[0], img.shape[1])
        jxx = 0.0
        jxy = 0.0
        jyy = 0.0
        for c in range(3):
            gx = (np.float64(img[y, xr, c]) - np.float64(img[y, xl, c])) / 2
            gy = (np.float64(img[yd, x, c]) - np.float64(img[yu, x, c])) / 2
            jxx += gx * gx
            jxy += gx * gy
            jyy += gy * gy
            tables[RED + c, y + 1, x + 1] = np.float64(img[y, x, c])
        energy[y, x] = (jxx + jyy) ** (0.5 * power)
        tables[JXX, y + 1, x + 1] = jxx
        tables[JXY, y + 1, x + 1] = jxy
        tables[JYY, y + 1, x + 1] = jyy

    @jit
    def blurred_energy(energy, y, x):
        """3x3 box mean of ``energy [H, W]`` around ``(y, x)``, borders replicated."""
        yu, yd, xl, xr = neighbours(y, x, energy.shape[0], energy.shape[1])
        s = 0.0
        for yy in (yu, y, yd):
            s += energy[yy, xl] + energy[yy, x] + energy[yy, xr]
        return s / 9.0

    @jit
    def detail_density(blurred, mean, detail):
        """``(1 - detail)`` uniform plus ``detail`` times the blurred energy over its mean (a flat
        image, mean ~0, gets the uniform density)."""
        e = blurred / mean if mean > 1e-12 else 1.0
        return (1.0 - detail) + detail * e

    @jit
    def table_at(tables, plane, x, y):
        """Bilinear read of ``tables[plane] [H+1, W+1]`` at ``(x, y)``, clamped to the table."""
        hp = tables.shape[1]
        wp = tables.shape[2]
        x = min(max(x, 0.0), wp - 1.0)
        y = min(max(y, 0.0), hp - 1.0)
        x0 = min(np.float64(math.floor(x)), wp - 2.0)
        y0 = min(np.float64(math.floor(y)), hp - 2.0)
        fx = x - x0
        fy = y - y0
        i = int(y0)
        j = int(x0)
        top = tables[plane, i, j] * (1 - fx) + tables[plane, i, j + 1] * fx
        bottom = tables[plane, i + 1, j] * (1 - fx) + tables[plane, i + 1, j + 1] * fx
        return top * (1 - fy) + bottom * fy

    @jit
    def mass_before(tables, t, a, b, along_x):
        """Density mass of the strip ``[.., t] x [a, b]`` (``along_x``) or ``[a, b] x [.., t]``."""
        if along_x:
            return table_at(tables, DENSITY, t, b) - table_at(tables, DENSITY, t, a)
        return table_at(tables, DENSITY, b, t) - table_at(tables, DENSITY, a, t)

    @jit
    def edge_at(lo, hi, k):
        """The ``k``-th cut candidate (``k >= 1``) after ``lo``: ``min(floor(lo) + k, hi)``."""
        return min(np.float64(math.floor(lo)) + k, hi)

    @jit
    def mass_cut(tables, lo, hi, a, b, fraction, along_x):
        """The coordinate in ``[lo, hi]`` with ``fraction`` of the box's mass before it.

        The mass is linear between pixel edges and grows with every edge, so a binary search
        finds the first edge whose mass reaches the goal (the reference's ``searchsorted``), and
        the cut interpolates between it and the edge before.
        """
        base = mass_before(tables, lo, a, b, along_x)
        goal = fraction * (mass_before(tables, hi, a, b, along_x) - base)
        first = 1
        last = max(int(math.ceil(hi)) - int(math.floor(lo)), 1)  # edge_at(lo, hi, last) == hi
        while first < last:
            mid = (first + last) // 2
            t = edge_at(lo, hi, mid)
            if t >= hi or mass_before(tables, t, a, b, along_x) - base >= goal:
                last = mid
            else:
                first = mid + 1
        t1 = edge_at(lo, hi, first)
        m1 = mass_before(tables, t1, a, b, along_x) - base
        t0 = lo
        m0 = 0.0
        if first > 1:
            t0 = edge_at(lo, hi, first - 1)
            m0 = mass_before(tables, t0, a, b, along_x) - base
        cut = t0 + (goal - m0) / max(m1 - m0, 1e-300) * (t1 - t0)
        return min(max(cut, lo), hi)

    @jit
    def put_box(boxes, slot, x0, y0, x1, y1, cells):
        boxes[slot, 0] = x0
        boxes[slot, 1] = y0
        boxes[slot, 2] = x1
        boxes[slot, 3] = y1
        boxes[slot, 4] = cells

    @jit
    def split_box(tables, src, dst, slot):
        """The box starting at leaf ``slot`` of ``src`` into ``dst``: cut in two when it holds
        more than one cell, copied when it holds one, nothing when no box starts there."""
        cells = int(src[slot, 4])
        if cells == 0:
            return
        x0 = src[slot, 0]
        y0 = src[slot, 1]
        x1 = src[slot, 2]
        y1 = src[slot, 3]
        if cells == 1:
            put_box(dst, slot, x0, y0, x1, y1, 1)
            return
        half = cells // 2
        if (x1 - x0) >= (y1 - y0):
            cut = mass_cut(tables, x0, x1, y0, y1, half / cells, True)
            put_box(dst, slot, x0, y0, cut, y1, half)
            put_box(dst, slot + half, cut, y0, x1, y1, cells - half)
        else:
            cut = mass_cut(tables, y0, y1, x0, x1, half / cells, False)
            put_box(dst, slot, x0, y0, x1, cut, half)
            put_box(dst, slot + half, x0, cut, x1, y1, cells - half)

    @jit
    def box_mean(tables, plane, x0, y0, x1, y1, area):
        total = (
            table_at(tables, plane, x1, y1)
            - table_at(tables, plane, x0, y1)
            - table_at(tables, plane, x1, y0)
            + table_at(tables, plane, x0, y0)
        )
        return total / area

    @jit
    def write_splat(out, box, tables, scale, anisotropy, flat_energy):
        """One cell's splat into ``out [8]``: its centre, its axis-aligned covariance stretched
        along the cell's edge direction (structure tensor), its mean colour."""
        x0 = box[0]
        y0 = box[1]
        x1 = box[2]
        y1 = box[3]
        area = max((x1 - x0) * (y1 - y0), 1e-12)
        jxx = box_mean(tables, JXX, x0, y0, x1, y1, area)
        jxy = box_mean(tables, JXY, x0, y0, x1, y1, area)
        jyy = box_mean(tables, JYY, x0, y0, x1, y1, area)
        half = (jxx - jyy) / 2
        root = math.sqrt(half * half + jxy * jxy)
        coherence = 2 * root / max(jxx + jyy, flat_energy)
        theta = 0.5 * math.atan2(2 * jxy, jxx - jyy)
        k = 1.0 + anisotropy * coherence
        cxx = max(scale * (x1 - x0) / 2, 0.3) ** 2
        cyy = max(scale * (y1 - y0) / 2, 0.3) ** 2
        cos = math.cos(theta)
        sin = math.sin(theta)
        a = cos * cos / k + sin * sin * k
        d = sin * sin / k + cos * cos * k
        c = cos * sin * (1 / k - k)
        sxx = a * a * cxx + c * c * cyy
        sxy = a * c * cxx + c * d * cyy
        syy = c * c * cxx + d * d * cyy
        l11 = math.sqrt(sxx)
        l21 = sxy / l11
        out[0] = (x0 + x1) / 2
        out[1] = (y0 + y1) / 2
        out[2] = math.log(l11)
        out[3] = l21
        out[4] = 0.5 * math.log(max(syy - l21 * l21, 1e-6))
        for ch in range(3):
            out[5 + ch] = box_mean(tables, RED + ch, x0, y0, x1, y1, area)

    return SimpleNamespace(
        neighbours=neighbours,
        pixel_terms=pixel_terms,
        blurred_energy=blurred_energy,
        detail_density=detail_density,
        table_at=table_at,
        mass_before=mass_before,
        edge_at=edge_at,
        mass_cut=mass_cut,
        put_box=put_box,
        split_box=split_box,
        box_mean=box_mean,
        write_splat=write_splat,
    )
