"""Initial splat sets: content-adaptive placement (the default), the paper's structured grid
initialisation (overlap-normalised, or exactly as the paper has it) and a random baseline."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from streamfit.render import Q_CUTOFF, cholesky_factors
from streamfit.splats import PARAMS_PER_SPLAT

# mean squared gradient (summed over channels) below which a cell counts as flat: a 1/255 step
# between neighbours gives ~4e-6, the summed-area tables' rounding ~1e-13
FLAT_ENERGY = 1e-9


def check_splat_count(n: int, height: int, width: int) -> None:
    """Clear errors for splat counts the grid cannot hold."""
    if n < 1:
        raise ValueError(f"need at least 1 splat per image, got {n}")
    if n > height * width:
        raise ValueError(
            f"{n} splats for a {height}x{width} image: more splats than pixels ({height * width})"
        )


def grid_layout(n: int, height: int, width: int) -> list[int]:
    """Cells per row of a grid of exactly ``n`` cells over an ``height x width`` image.

    Rows are chosen so cells are as square as possible; when ``n`` is not a product of two
    near-equal factors, the first ``n % rows`` rows get one extra cell, so every splat still owns
    one cell and the whole image is covered.
    """
    check_splat_count(n, height, width)
    rows = max(1, min(n, height, round(math.sqrt(n * height / width))))
    base, extra = divmod(n, rows)
    return [base + (1 if r < extra else 0) for r in range(rows)]


def _cell_boxes(n: int, height: int, width: int) -> torch.Tensor:
    """``[n, 4]`` cell boxes ``(x0, y0, x1, y1)`` in pixels (float64), row-major."""
    per_row = grid_layout(n, height, width)
    rows = len(per_row)
    boxes = []
    for r, cols in enumerate(per_row):
        y0, y1 = r * height / rows, (r + 1) * height / rows
        for c in range(cols):
            boxes.append((c * width / cols, y0, (c + 1) * width / cols, y1))
    return torch.tensor(boxes, dtype=torch.float64)


def _cell_means(images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Mean colour of the pixels whose centres fall in each box (at least one pixel each).

    ``images``: ``[B, H, W, 3]``; ``boxes``: ``[n, 4]`` -> ``[B, n, 3]``. Uses a summed-area table
    so the cost does not grow with the cell size.
    """
    b, h, w, _ = images.shape
    sat = torch.zeros(b, h + 1, w + 1, 3, dtype=torch.float64, device=images.device)
    sat[:, 1:, 1:] = images.to(torch.float64).cumsum(1).cumsum(2)
    # pixel j is in [x0, x1) when its centre j + 0.5 is: j in [ceil(x0 - 0.5), ceil(x1 - 0.5))
    j0 = torch.ceil(boxes[:, 0] - 0.5).long().clamp(0, w - 1)
    i0 = torch.ceil(boxes[:, 1] - 0.5).long().clamp(0, h - 1)
    j1 = torch.maximum(torch.ceil(boxes[:, 2] - 0.5).long().clamp(0, w), j0 + 1)
    i1 = torch.maximum(torch.ceil(boxes[:, 3] - 0.5).long().clamp(0, h), i0 + 1)
    j0, i0, j1, i1 = (t.to(images.device) for t in (j0, i0, j1, i1))
    total = sat[:, i1, j1] - sat[:, i0, j1] - sat[:, i1, j0] + sat[:, i0, j0]
    area = ((i1 - i0) * (j1 - j0)).to(torch.float64)[None, :, None]
    return (total / area).to(images.dtype)


def structured_init(images: torch.Tensor, n: int, normalize_color: bool = True) -> torch.Tensor:
    """The paper's structured initialisation of ``n`` splats per image.

    Centres on a uniform grid (see :func:`grid_layout`), isotropic covariance whose standard
    deviation is the radius of the largest circle inside the cell, colour = the cell's mean
    colour. ``images``: ``[B, H, W, 3]`` float in 0..1 -> ``[B, n, 8]`` on the same device.

    Neighbouring grid splats overlap (their weights sum to ~1.6 inside the image), so the
    paper's cell-mean colours render too bright. ``normalize_color`` divides each colour by the
    summed weight of all splats at its centre, which makes the initial render match the cell
    means and starts fitting ~7 dB higher; ``False`` gives the paper's exact recipe.
    """
    _, height, width, _ = images.shape
    boxes = _cell_boxes(n, height, width)
    centres = torch.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], -1)
    radius = torch.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) / 2
    params = torch.zeros(
        images.shape[0], n, PARAMS_PER_SPLAT, dtype=images.dtype, device=images.device
    )
    params[..., 0:2] = centres.to(params)
    params[..., 2] = radius.log().to(params)
    params[..., 4] = radius.log().to(params)
    params[..., 5:8] = _cell_means(images, boxes)
    if normalize_color:
        params[..., 5:8] /= _grid_coverage(params[0]).to(params)[None, :, None]
    return params


def _grid_coverage(params: torch.Tensor) -> torch.Tensor:
    """``[n]`` summed weight of all splats ``[n, 8]`` at each splat's centre (same for every
    image of a batch: the grid does not depend on the pixels)."""
    p = params.to(torch.float64)
    l11, _, l22 = cholesky_factors(p)  # isotropic grid splats: l21 = 0
    dx = p[:, None, 0] - p[None, :, 0]
    dy = p[:, None, 1] - p[None, :, 1]
    q = (dx / l11[None, :]) ** 2 + (dy / l22[None, :]) ** 2
    weight = torch.where(q <= Q_CUTOFF, torch.exp(-0.5 * q), torch.zeros_like(q))
    return weight.sum(dim=1)


def random_init(
    images: torch.Tensor, n: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Random baseline: uniform centres and colours, isotropic sizes jittered around the grid's.

    ``images``: ``[B, H, W, 3]`` (only its shape, dtype and device are used) -> ``[B, n, 8]``.
    """
    b, height, width, _ = images.shape
    check_splat_count(n, height, width)
    cell = math.sqrt(height * width / n)
    u = torch.rand(b, n, 6, generator=generator, dtype=torch.float64)
    params = torch.zeros(b, n, PARAMS_PER_SPLAT, dtype=torch.float64)
    params[..., 0] = u[..., 0] * width
    params[..., 1] = u[..., 1] * height
    params[..., 2] = math.log(cell / 2) + (u[..., 2] - 0.5)
    params[..., 4] = math.log(cell / 2) + (u[..., 2] - 0.5)
    params[..., 5:8] = u[..., 3:6]
    return params.to(images.dtype).to(images.device)


def paper_init(images: torch.Tensor, n: int) -> torch.Tensor:
    """The paper's exact structured initialisation: grid centres, inscribed-circle sizes and
    the cells' mean colours, without the overlap correction of :func:`structured_init`."""
    return structured_init(images, n, normalize_color=False)


def _gradients(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, 3, H, W]`` central-difference gradients ``(gx, gy)`` (replicated borders)."""
    x = images.to(torch.float64).permute(0, 3, 1, 2)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate")
    gx = (padded[..., 1:-1, 2:] - padded[..., 1:-1, :-2]) / 2
    gy = (padded[..., 2:, 1:-1] - padded[..., :-2, 1:-1]) / 2
    return gx, gy


def detail_density(images: torch.Tensor, detail: float, power: float = 1.0) -> torch.Tensor:
    """``[B, H, W]`` float64 density, mean 1 per image: ``1 - detail`` uniform plus ``detail``
    times the local gradient magnitude to the ``power`` (central differences over the
    channels, a 3x3 box blur), normalised. A flat image gets the uniform density."""
    gx, gy = _gradients(images)
    energy = (gx * gx + gy * gy).sum(1, keepdim=True) ** (0.5 * power)
    energy = torch.nn.functional.avg_pool2d(
        torch.nn.functional.pad(energy, (1, 1, 1, 1), mode="replicate"), 3, stride=1
    )[:, 0]
    mean = energy.flatten(1).mean(1)[:, None, None]
    normalised = torch.where(mean > 1e-12, energy / mean.clamp_min(1e-12), torch.ones_like(energy))
    return (1.0 - detail) + detail * normalised


def _integral_at(sat: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Integral of a per-pixel constant density over ``[0, x] x [0, y]``: bilinear in the
    summed-area table ``sat [B, H+1, W+1]`` (exact for such densities). ``x``, ``y``:
    ``[B, ...]`` -> ``[B, ...]``."""
    b, hp, wp = sat.shape
    x = x.clamp(0, wp - 1)
    y = y.clamp(0, hp - 1)
    x0 = x.floor().clamp(max=wp - 2).long()
    y0 = y.floor().clamp(max=hp - 2).long()
    fx, fy = x - x0, y - y0
    flat = sat.reshape(b, -1)
    shape = x.shape

    def at(yi: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        return flat.gather(1, (yi * wp + xi).reshape(b, -1)).reshape(shape)

    top = at(y0, x0) * (1 - fx) + at(y0, x0 + 1) * fx
    bottom = at(y0 + 1, x0) * (1 - fx) + at(y0 + 1, x0 + 1) * fx
    return top * (1 - fy) + bottom * fy


def _summed_area(values: torch.Tensor) -> torch.Tensor:
    """``[B, H+1, W+1, ...]`` summed-area table (float64) of ``values [B, H, W, ...]``."""
    b, h, w = values.shape[:3]
    sat = torch.zeros(b, h + 1, w + 1, *values.shape[3:], dtype=torch.float64, device=values.device)
    sat[:, 1:, 1:] = values.to(torch.float64).cumsum(1).cumsum(2)
    return sat


def _box_means(values: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """``[B, K, C]`` mean of ``values [B, H, W, C]`` over each box ``[B, K, 4]``."""
    sat = _summed_area(values)
    area = ((boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])).clamp_min(1e-12)
    x0, y0, x1, y1 = boxes.unbind(-1)
    out = []
    for c in range(values.shape[-1]):
        t = sat[..., c]
        total = (
            _integral_at(t, x1, y1)
            - _integral_at(t, x0, y1)
            - _integral_at(t, x1, y0)
            + _integral_at(t, x0, y0)
        )
        out.append(total / area)
    return torch.stack(out, -1)


def _mass_cut(sat: torch.Tensor, boxes: torch.Tensor, fraction: torch.Tensor, axis: int):
    """Coordinate along ``axis`` (0: x, 1: y) splitting each box ``[B, K, 4]`` so that
    ``fraction [K]`` of its mass lies before the cut (exact: the mass is piecewise linear
    between pixel edges)."""
    lo, hi = boxes[..., axis], boxes[..., axis + 2]
    other_lo, other_hi = boxes[..., 1 - axis], boxes[..., 3 - axis]
    # the pixel edges inside each box: lo, then floor(lo) + 1 ... up to the widest box's hi
    span = int((hi - lo).max().item()) + 2
    knots = lo.floor()[..., None] + torch.arange(1, span + 1, dtype=sat.dtype, device=sat.device)
    knots = torch.minimum(knots, hi[..., None])
    knots = torch.cat([lo[..., None], knots, hi[..., None]], -1)

    def mass_before(t: torch.Tensor) -> torch.Tensor:
        a, b = other_lo[..., None].expand_as(t), other_hi[..., None].expand_as(t)
        if axis == 0:
            return _integral_at(sat, t, b) - _integral_at(sat, t, a)
        return _integral_at(sat, b, t) - _integral_at(sat, a, t)

    mass = mass_before(knots)
    mass = mass - mass[..., :1]
    goal = fraction * mass[..., -1]
    idx = torch.searchsorted(mass, goal[..., None].contiguous()).clamp(1, mass.shape[-1] - 1)
    m0, m1 = mass.gather(-1, idx - 1), mass.gather(-1, idx)
    t0, t1 = knots.gather(-1, idx - 1), knots.gather(-1, idx)
    step = (m1 - m0).clamp_min(1e-300)
    cut = t0 + (goal[..., None] - m0) / step * (t1 - t0)
    return torch.minimum(torch.maximum(cut[..., 0], lo), hi)


def equal_mass_boxes(density: torch.Tensor, n: int) -> torch.Tensor:
    """``[B, n, 4]`` boxes ``(x0, y0, x1, y1)`` tiling each image into ``n`` cells of equal
    ``density`` mass, by recursive bisection of the longer side (a k-d tree): deterministic,
    batched, on the density's device. A box of ``k`` cells is cut at mass fraction
    ``floor(k/2) / k``; the tree's shape depends on ``n`` only, so the whole batch splits in
    lockstep."""
    b, height, width = density.shape
    check_splat_count(n, height, width)
    sat = _summed_area(density)
    boxes = torch.tensor([0.0, 0.0, width, height], dtype=torch.float64, device=density.device)
    boxes = boxes.expand(b, 1, 4).clone()
    counts = [n]
    while max(counts) > 1:
        split = torch.tensor([k > 1 for k in counts], device=density.device)
        # a box of one cell is "cut" at its far edge: its first half is the whole box
        fraction = torch.tensor(
            [(k // 2) / k if k > 1 else 1.0 for k in counts], dtype=torch.float64
        )
        fraction = fraction.to(sat).expand(b, -1)
        wide = (boxes[..., 2] - boxes[..., 0]) >= (boxes[..., 3] - boxes[..., 1])
        cut = torch.where(
            wide, _mass_cut(sat, boxes, fraction, 0), _mass_cut(sat, boxes, fraction, 1)
        )
        first, second = boxes.clone(), boxes.clone()
        first[..., 2] = torch.where(wide, cut, boxes[..., 2])
        first[..., 3] = torch.where(wide, boxes[..., 3], cut)
        second[..., 0] = torch.where(wide, cut, boxes[..., 0])
        second[..., 1] = torch.where(wide, boxes[..., 1], cut)
        pairs = torch.stack([first, second], 2)  # [B, K, 2, 4]
        keep = torch.stack([torch.ones_like(split), split], 1).flatten()
        boxes = pairs.flatten(1, 2)[:, keep]
        counts = [c for k in counts for c in ((k // 2, k - k // 2) if k > 1 else (k,))]
    return boxes


def adaptive_init(
    images: torch.Tensor,
    n: int,
    detail: float = 0.9,
    scale: float = 1.0,
    anisotropy: float = 0.5,
    normalize_color: bool = True,
    detail_power: float = 1.4,
    layout: Callable[..., torch.Tensor] | None = None,
) -> torch.Tensor:
    """Content-adaptive initialisation: splats where the detail is, shaped like it.

    The image is cut into ``n`` cells of equal mass of :func:`detail_density` (``detail``,
    ``detail_power``: small cells on edges and texture, large ones on flat regions); each cell
    gets a splat at its centre with the cell's axis-aligned covariance (standard deviations
    ``scale`` times its half-sides), stretched along the cell's dominant edge direction (the
    structure tensor averaged over the cell) by ``1 + anisotropy * coherence`` and squeezed
    across it by the same factor. Colours are the cells' mean colours, with
    ``normalize_color`` divided by the summed weight of the splats at the centre (skip that
    when the exact colour solve replaces them anyway). ``images [B, H, W, 3]`` ->
    ``[B, n, 8]`` on the same device. Deterministic.

    ``layout`` computes the splats before normalisation (same arguments and result as
    :func:`adaptive_layout`, the reference): a backend's kernel.
    """
    params = (layout or adaptive_layout)(images, n, detail, detail_power, scale, anisotropy)
    if normalize_color:
        params[..., 5:8] /= _coverage(params)[..., None]
    return params.to(images.dtype)


def adaptive_layout(
    images: torch.Tensor,
    n: int,
    detail: float,
    detail_power: float,
    scale: float,
    anisotropy: float,
) -> torch.Tensor:
    """The reference of :func:`adaptive_init` without the colour normalisation: ``[B, n, 8]``
    float64 on the images' device, colours the cells' plain mean colours."""
    b, height, width, _ = images.shape
    boxes = equal_mass_boxes(detail_density(images, detail, detail_power), n)
    gx, gy = _gradients(images)
    tensor = torch.stack([(gx * gx).sum(1), (gx * gy).sum(1), (gy * gy).sum(1)], -1)
    jxx, jxy, jyy = _box_means(tensor, boxes).unbind(-1)
    half = (jxx - jyy) / 2
    root = torch.sqrt(half * half + jxy * jxy)
    # below FLAT_ENERGY the cell is flat: its tensor is rounding noise, and so its coherence
    coherence = 2 * root / (jxx + jyy).clamp_min(FLAT_ENERGY)
    theta = 0.5 * torch.atan2(2 * jxy, jxx - jyy)  # the gradient's direction
    # the cell's axis-aligned covariance, stretched by S = R diag(1/k, k) R^T (R: gradient,
    # edge directions): S C S keeps the area and lengthens the splat along the edge
    k = 1.0 + anisotropy * coherence
    cxx = (scale * (boxes[..., 2] - boxes[..., 0]) / 2).clamp_min(0.3) ** 2
    cyy = (scale * (boxes[..., 3] - boxes[..., 1]) / 2).clamp_min(0.3) ** 2
    cos, sin = torch.cos(theta), torch.sin(theta)
    a = cos * cos / k + sin * sin * k
    d = sin * sin / k + cos * cos * k
    c = cos * sin * (1 / k - k)
    sxx = a * a * cxx + c * c * cyy
    sxy = a * c * cxx + c * d * cyy
    syy = c * c * cxx + d * d * cyy
    l11 = sxx.sqrt()
    l21 = sxy / l11
    params = torch.zeros(b, n, PARAMS_PER_SPLAT, dtype=torch.float64, device=images.device)
    params[..., 0] = (boxes[..., 0] + boxes[..., 2]) / 2
    params[..., 1] = (boxes[..., 1] + boxes[..., 3]) / 2
    params[..., 2] = l11.log()
    params[..., 3] = l21
    params[..., 4] = 0.5 * (syy - l21 * l21).clamp_min(1e-6).log()
    params[..., 5:8] = _box_means(images, boxes)
    return params


def _coverage(params: torch.Tensor) -> torch.Tensor:
    """``[B, n]`` summed weight of all splats at each splat's centre, evaluated in chunks of
    centres so memory stays ``O(B * n * chunk)``."""
    l11, l21, l22 = cholesky_factors(params)
    out = []
    for start in range(0, params.shape[1], 512):
        at = params[:, start : start + 512]
        z1 = (at[:, :, None, 0] - params[:, None, :, 0]) / l11[:, None, :]
        z2 = (at[:, :, None, 1] - params[:, None, :, 1] - l21[:, None, :] * z1) / l22[:, None, :]
        q = z1 * z1 + z2 * z2
        out.append(torch.where(q <= Q_CUTOFF, torch.exp(-0.5 * q), torch.zeros_like(q)).sum(-1))
    return torch.cat(out, 1)
