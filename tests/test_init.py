import math

import pytest
import torch
from cudasim.kernel_cases import photo_like

from streamfit.fit.backends.cpu import CpuBackend
from streamfit.fit.init import (
    adaptive_init,
    adaptive_layout,
    detail_density,
    equal_mass_boxes,
    grid_layout,
    paper_init,
    random_init,
    structured_init,
)
from streamfit.render import render


@pytest.mark.parametrize(
    "n,h,w",
    [
        (1, 224, 224),
        (2, 224, 224),
        (7, 30, 40),
        (400, 224, 224),
        (401, 224, 224),
        (3136, 224, 224),
        (400, 100, 300),
        (50, 1, 50),
        (12, 3, 4),
    ],
)
def test_grid_covers_exactly_n_cells(n, h, w):
    per_row = grid_layout(n, h, w)
    assert sum(per_row) == n
    assert max(per_row) - min(per_row) <= 1


def test_square_grid_for_square_counts():
    assert grid_layout(400, 224, 224) == [20] * 20
    assert grid_layout(3136, 224, 224) == [56] * 56
    # wide image: more columns than rows
    per_row = grid_layout(300, 100, 300)
    assert len(per_row) == 10 and per_row[0] == 30


def test_structured_init_invariants():
    h, w, n = 40, 60, 24  # 4 rows x 6 columns of 10x10 cells
    images = torch.rand(2, h, w, 3)
    params = structured_init(images, n, normalize_color=False)
    assert params.shape == (2, n, 8)
    assert grid_layout(n, h, w) == [6] * 4
    xs, ys = params[0, :, 0], params[0, :, 1]
    assert sorted(set(xs.tolist())) == [5.0 + 10 * i for i in range(6)]
    assert sorted(set(ys.tolist())) == [5.0 + 10 * i for i in range(4)]
    # isotropic, sigma = radius of the largest circle in a 10x10 cell
    torch.testing.assert_close(params[..., 2], torch.full((2, n), math.log(5.0)))
    torch.testing.assert_close(params[..., 4], torch.full((2, n), math.log(5.0)))
    assert not params[..., 3].any()
    # colour = mean of the cell's pixels
    cell = images[1, 10:20, 30:40].reshape(-1, 3).mean(0)
    torch.testing.assert_close(params[1, 6 + 3, 5:], cell)


def test_uneven_counts_and_rectangular_cells():
    h, w, n = 37, 91, 13
    images = torch.rand(1, h, w, 3)
    params = structured_init(images, n)[0]
    assert (params[:, 0] > 0).all() and (params[:, 0] < w).all()
    assert (params[:, 1] > 0).all() and (params[:, 1] < h).all()
    # rectangular cells: sigma is half the shorter side
    per_row = grid_layout(n, h, w)
    rows = len(per_row)
    expected = min(h / rows, w / per_row[0]) / 2
    assert params[0, 2].exp().item() == pytest.approx(expected, rel=1e-5)
    assert len({(round(x, 3), round(y, 3)) for x, y in params[:, :2].tolist()}) == n


def test_one_splat_per_pixel():
    images = torch.rand(1, 3, 4, 3)
    params = structured_init(images, 12, normalize_color=False)[0]
    torch.testing.assert_close(params[:, 5:], images[0].reshape(-1, 3))


def test_bad_counts_are_clear_errors():
    images = torch.rand(1, 4, 4, 3)
    with pytest.raises(ValueError, match="at least 1 splat"):
        structured_init(images, 0)
    with pytest.raises(ValueError, match="more splats than pixels"):
        structured_init(images, 17)
    with pytest.raises(ValueError, match="more splats than pixels"):
        random_init(images, 17)


def test_random_init_is_seeded_and_in_range():
    images = torch.rand(2, 20, 30, 3)
    a = random_init(images, 10, torch.Generator().manual_seed(1))
    b = random_init(images, 10, torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b)
    assert (a[..., 0] >= 0).all() and (a[..., 0] <= 30).all()
    assert (a[..., 5:] >= 0).all() and (a[..., 5:] <= 1).all()


def test_normalized_colours_render_a_flat_image_flat():
    h, w, n = 48, 48, 36
    images = torch.full((1, h, w, 3), 0.5)
    normalized = render(structured_init(images, n), None, h, w)[0]
    plain = render(structured_init(images, n, normalize_color=False), None, h, w)[0]
    inner = (slice(8, 40), slice(8, 40))  # away from the border, where fewer splats overlap
    torch.testing.assert_close(normalized[inner], images[0][inner], rtol=0, atol=0.06)
    # the paper's cell-mean colours: the overlapping grid renders ~1.6x too bright
    assert plain[inner].mean() > 0.75


def test_equal_mass_boxes_tile_the_image_with_equal_mass():
    images = photo_like(2, 40, 56)
    density = detail_density(images, 0.9)
    boxes = equal_mass_boxes(density, 37)
    assert boxes.shape == (2, 37, 4)
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    torch.testing.assert_close(area.sum(1), torch.full((2,), 40.0 * 56, dtype=area.dtype))
    assert (area > 0).all()


def test_adaptive_init_puts_splats_where_the_detail_is():
    images = photo_like(1, 48, 64)
    params = adaptive_init(images, 64, detail=0.9)
    assert torch.isfinite(params).all()
    assert (params[0, :, 0] > 32).sum() > 48  # most splats on the detailed right half
    # and deterministic, whatever the batch around an image
    again = adaptive_init(torch.cat([photo_like(1, 48, 64, seed=5), images]), 64, detail=0.9)
    torch.testing.assert_close(again[1], params[0])


def test_adaptive_init_on_flat_and_tiny_images():
    flat = torch.full((1, 20, 30, 3), 0.4)
    params = adaptive_init(flat, 6)
    assert torch.isfinite(params).all()
    assert params[0, :, 0].unique().numel() > 1  # a uniform grid-like split, not a collapse
    tiny = adaptive_init(torch.rand(1, 2, 2, 3), 4)  # one splat per pixel
    assert torch.isfinite(tiny).all()
    with pytest.raises(ValueError, match="more splats than pixels"):
        adaptive_init(torch.rand(1, 2, 2, 3), 5)


@pytest.mark.parametrize(
    ("kind", "n", "h", "w"),
    [
        ("photo", 400, 64, 80),
        ("photo", 37, 40, 56),
        ("photo", 1, 9, 7),
        ("photo", 63, 7, 9),  # one splat per pixel
        ("photo", 12, 3, 40),  # a strip: cuts along one axis only
        ("flat", 6, 20, 30),
        ("noise", 50, 16, 16),
    ],
)
def test_cpu_layout_kernel_matches_the_reference(kind, n, h, w):
    """The cpu backend's compiled adaptive layout against the torch reference: the same
    cells and colours to float64 rounding; the covariances of nearly flat cells carry the
    summed-area tables' rounding (different summation orders), hence 1e-6."""
    if kind == "photo":
        images = photo_like(2, h, w)
    elif kind == "flat":
        images = torch.full((2, h, w, 3), 0.4)
    else:
        images = torch.rand(2, h, w, 3, generator=torch.Generator().manual_seed(n))
    settings = (0.9, 1.4, 1.0, 0.5)  # detail, detail power, scale, anisotropy
    expected = adaptive_layout(images, n, *settings)
    got = CpuBackend().adaptive_layout(images, n, *settings)
    assert got.dtype == torch.float64
    cells = [0, 1, 5, 6, 7]
    torch.testing.assert_close(got[..., cells], expected[..., cells], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="more splats than pixels"):
        CpuBackend().adaptive_layout(images, h * w + 1, *settings)


def test_paper_init_is_structured_without_overlap_correction():
    images = torch.rand(2, 16, 16, 3)
    torch.testing.assert_close(paper_init(images, 16), structured_init(images, 16, False))
