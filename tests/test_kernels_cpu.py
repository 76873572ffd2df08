"""The Numba CPU backend's own tests: tile sizes and edge shapes against the reference
renderer, its exp polynomial, tile reduction and cut-off count. The contract all backends
keep (bad input, Adam, fits against the torch backend) is ``tests/test_backend_contract.py``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cudasim.kernel_cases import random_splats, reference_loss_and_grad, relative_error

from cuda_kernels import cpu as cpu_kernels
from streamfit.fit.backends.cpu import CpuBackend, warm_up
from streamfit.render import Q_CUTOFF

# float32 kernels against a float64 reference
RTOL = 1e-5


@pytest.fixture(scope="module")
def backend() -> CpuBackend:
    warm_up()
    return CpuBackend()


@pytest.mark.parametrize(
    ("batch", "n", "height", "width", "tile"),
    [
        (1, 1, 8, 8, 16),
        (3, 40, 37, 50, 16),
        (2, 60, 33, 29, 7),
        (2, 30, 40, 40, 32),
        (1, 5, 3, 70, 1),
    ],
)
def test_forward_and_gradients_match_reference(batch, n, height, width, tile):
    params, mask = random_splats(batch, n, height, width, seed=n)
    target = torch.rand(batch, height, width, 3, generator=torch.Generator().manual_seed(1))
    ref_image, ref_mse, ref_grad = reference_loss_and_grad(params, mask, target)
    backend = CpuBackend(tile=tile)
    image = backend.render(params, mask, height, width)
    assert image.shape == (batch, height, width, 3) and image.dtype == torch.float32
    assert relative_error(image, ref_image) < RTOL
    mse, grad = backend.loss_and_grad(params, mask, target)
    assert mse.shape == (batch,) and grad.shape == params.shape
    assert relative_error(mse, ref_mse) < RTOL
    for k in range(8):  # each parameter column on its own: positions and colours differ in scale
        assert relative_error(grad[..., k], ref_grad[..., k]) < 10 * RTOL, k
    assert (grad[~mask] == 0).all()


def test_polynomial_exp_matches_math_exp_over_the_cutoff_range():
    """The kernels' vectorisable exp(-q/2) (polynomial and three squarings) on a dense grid of
    the cut-off range ``q in [0, 2 ln 255]``, ends included: far below the 1/255 scale of
    the cut-off, and close to float32 rounding."""
    qs = np.linspace(0.0, Q_CUTOFF, 20001, dtype=np.float32)
    got = np.array([cpu_kernels.exp_neg_half(q) for q in qs])
    want = np.exp(-qs.astype(np.float64) / 2)
    assert np.abs(got / want - 1).max() < 3e-6
    assert np.abs(got - want).max() < 1e-6
    assert cpu_kernels.exp_neg_half(np.float32(0.0)) == pytest.approx(1.0, rel=1e-6)


@pytest.mark.parametrize(
    ("batch", "n", "height", "width", "tile"),
    [
        (1, 3, 1, 1, 16),  # one pixel
        (2, 9, 1, 40, 16),  # one row: tiles of a single pixel row
        (1, 9, 40, 1, 16),  # one column: 15 of 16 lanes of every row are padding
        (3, 20, 16, 16, 16),  # exactly one tile
        (2, 30, 17, 33, 16),  # one pixel past a tile edge in both directions
        (1, 12, 50, 11, 5),  # tasks not a multiple of the run length, odd tile
    ],
)
def test_edge_sizes_match_reference(batch, n, height, width, tile):
    params, mask = random_splats(batch, n, height, width, seed=n + height)
    target = torch.rand(batch, height, width, 3, generator=torch.Generator().manual_seed(3))
    ref_image, ref_mse, ref_grad = reference_loss_and_grad(params, mask, target)
    backend = CpuBackend(tile=tile)
    assert relative_error(backend.render(params, mask, height, width), ref_image) < RTOL
    mse, grad = backend.loss_and_grad(params, mask, target)
    assert relative_error(mse, ref_mse) < RTOL
    for k in range(8):
        assert relative_error(grad[..., k], ref_grad[..., k]) < 10 * RTOL, k


@pytest.mark.parametrize("parts", [2, 3, 7])
def test_reduce_in_parts_matches_reduce_per_image(backend, parts):
    """``reduce_tiles`` splitting each image's splats among steps adds the same partials."""
    params, mask = random_splats(2, 23, 30, 35, seed=12)
    target = torch.rand(2, 30, 35, 3, generator=torch.Generator().manual_seed(7))
    p, m, proj, box, bad = backend._work(params, mask)
    offsets, order, tiles_x, n_tiles = cpu_kernels.launch_project(
        p, m, backend.tile, backend.qcut, 30, 35, proj, box, bad
    )
    tiles_y = n_tiles // tiles_x
    tile_sse = np.empty(2 * tiles_x * tiles_y, np.float32)
    partial = np.empty((order.shape[0], 8), np.float32)
    cpu_kernels.raster_tiles(
        proj, box, offsets, order, backend._planes(target), backend.tile, tiles_x, tiles_y,
        backend.qcut, np.float32(1.0), np.empty((0, 0, 0, 3), np.float32), tile_sse, partial,
    )  # fmt: skip
    results = []
    for n in (1, parts):
        loss, grad = np.empty(2, np.float32), np.zeros((2, 23, 8), np.float32)
        args = (tiles_x * tiles_y, n, np.float32(1.0), bad, loss, grad)
        cpu_kernels.reduce_tiles(offsets, order, partial, tile_sse, *args)
        results.append((loss, grad))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])


def test_cutoff_pairs_count_the_reference_footprints(backend):
    """``cutoff_pairs`` counts the pairs with ``q <= Q_CUTOFF``, per image."""
    params, mask = random_splats(2, 25, 30, 41, seed=7)
    counts = backend.cutoff_pairs(params, mask, 30, 41)
    ys, xs = torch.meshgrid(
        torch.arange(30, dtype=torch.float64) + 0.5,
        torch.arange(41, dtype=torch.float64) + 0.5,
        indexing="ij",
    )
    p = params.double()
    z1 = (xs[None, None] - p[..., 0, None, None]) * torch.exp(-p[..., 2, None, None])
    z2 = (ys[None, None] - p[..., 1, None, None] - p[..., 3, None, None] * z1) * torch.exp(
        -p[..., 4, None, None]
    )
    inside = ((z1 * z1 + z2 * z2) <= Q_CUTOFF) & mask[..., None, None]
    expected = inside.flatten(1).sum(1)
    # float32 against float64: a pair exactly at the cut-off may fall either way
    assert (counts - expected).abs().max() <= 2
    assert counts.sum() > 0


def test_params_and_mask_that_disagree_are_a_clear_error(backend):
    params, mask = random_splats(2, 3, 8, 8)
    with pytest.raises(ValueError, match="disagree"):
        backend.render(params, mask[:, :2], 8, 8)
