"""Scalar maths of one splat and one pixel, as plain Python functions.

These are compiled twice, by ``numba.njit`` in :mod:`cuda_kernels.cpu` and by
``numba.cuda.jit(device=True)`` in :mod:`cuda_kernels.gpu`, so the CPU and GPU kernels
evaluate the very same expressions. All arithmetic stays in float32: the constants are
``np.float32`` (a bare ``0.5`` would promote every expression it touches to float64).

Model (see ``streamfit.render``): with ``i11 = exp(-log_l11)``, ``i22 = exp(-log_l22)``,

    z1 = (px - x) * i11,   z2 = ((py - y) - l21 * z1) * i22,   q = z1^2 + z2^2,
    w  = exp(-q / 2) if q <= qcut else 0,   pixel colour += w * (r, g, b).
"""

import math

import numpy as np

# The fast-math flags both kernel modules compile with: contraction, reassociation and
# approximate functions, but not 'nnan'/'ninf': non-finite values compare and propagate as
# IEEE says, because a non-finite image is detected downstream, never silently cleaned up.
FASTMATH = {"contract", "arcp", "reassoc", "nsz", "afn"}

HALF = np.float32(0.5)
ZERO = np.float32(0.0)
# Widening of the footprint box: pixels whose float32 q rounds to just below the cut-off
# must still be visited, so the box is made slightly larger than the exact ellipse's.
BOX_SLACK_REL = np.float32(1e-4)
BOX_SLACK_ABS = np.float32(1e-2)


def is_finite_splat(x, y, log_l11, l21, log_l22, r, g, b):
    """Whether all eight parameters are finite (NaN or inf poison their image)."""
    return (
        math.isfinite(x)
        and math.isfinite(y)
        and math.isfinite(log_l11)
        and math.isfinite(l21)
        and math.isfinite(log_l22)
        and math.isfinite(r)
        and math.isfinite(g)
        and math.isfinite(b)
    )


def inverse_diagonal(log_l11, log_l22):
    """``(1 / l11, 1 / l22)`` of the Cholesky factor."""
    return math.exp(-log_l11), math.exp(-log_l22)


def footprint_half_extents(log_l11, l21, log_l22, qcut):
    """Half-extents ``(rx, ry)`` in pixels of the ellipse ``q <= qcut``, slightly widened."""
    scale = math.sqrt(qcut)
    l11 = math.exp(log_l11)
    l22 = math.exp(log_l22)
    rx = scale * l11
    ry = scale * math.sqrt(l21 * l21 + l22 * l22)
    return (
        rx + rx * BOX_SLACK_REL + BOX_SLACK_ABS,
        ry + ry * BOX_SLACK_REL + BOX_SLACK_ABS,
    )


def pixel_span(centre, half_extent, size):
    """Inclusive range ``(lo, hi)`` of the pixel indices whose centres ``k + 0.5`` lie within
    ``half_extent`` of ``centre``, clipped to ``[0, size - 1]`` (``lo > hi`` when empty).

    The bounds are clipped in floating point before rounding so infinite extents stay
    well defined.
    """
    lo = max(centre - half_extent - HALF, np.float32(-1.0))
    hi = min(centre + half_extent - HALF, np.float32(size))
    return max(math.ceil(lo), 0), min(math.floor(hi), size - 1)


def splat_weight(dx, dy, i11, l21, i22, qcut):
    """Weight of a splat at a pixel offset ``(dx, dy) = pixel centre - splat centre``.

    Returns ``(w, z1, z2)``: the weight (0 beyond the cut-off) and the whitened offset the
    backward pass reuses.
    """
    z1 = dx * i11
    z2 = (dy - l21 * z1) * i22
    q = z1 * z1 + z2 * z2
    if q <= qcut:
        return math.exp(-HALF * q), z1, z2
    return ZERO, z1, z2


def pixel_gradient_terms(w, z1, z2, gr, gg, gb, r, g, b):
    """One pixel's contribution to a splat's gradient sums.

    ``(gr, gg, gb)`` is dLoss/dPixel. With ``k = dLoss/dq * 2 = -w * (g . colour)`` the sums
    ``(k z1, k z2, k z1^2, k z1 z2, k z2^2)`` determine the position and covariance gradients
    (:func:`parameter_gradients`); ``w * g`` is the colour gradient.
    """
    k = -w * (gr * r + gg * g + gb * b)
    kz1 = k * z1
    kz2 = k * z2
    return kz1, kz2, kz1 * z1, kz1 * z2, kz2 * z2, w * gr, w * gg, w * gb


def parameter_gradients(s1, s2, s11, s12, s22, i11, l21, i22):
    """Position and covariance gradients from the sums of :func:`pixel_gradient_terms`.

    Chain rule through ``z1 = dx i11``, ``z2 = (dy - l21 z1) i22``; returns
    ``(d x, d y, d log_l11, d l21, d log_l22)``.
    """
    return (
        -i11 * s1 + l21 * i11 * i22 * s2,
        -i22 * s2,
        -s11 + l21 * i22 * s12,
        -i22 * s12,
        -s22,
    )
