"""The CUDA backend's own tests under the Numba CUDA simulator (tiny sizes): every tile size
against the reference, and its argument checks. The contract all backends keep is
``tests/test_backend_contract.py`` (which runs itself under the simulator for ``cuda``).

Run only in a process started with ``NUMBA_ENABLE_CUDASIM=1`` (``tests/test_simulator.py``
does that); the file name keeps it out of ordinary collection. Sizes are the smallest that
still exercise what is named: the simulator runs every GPU thread as a Python thread.
"""

from __future__ import annotations

import numba
import pytest
import torch
from kernel_cases import (
    blob_images,
    photo_like,
    random_splats,
    reference_loss_and_grad,
    relative_error,
)

if not numba.config.ENABLE_CUDASIM:
    pytest.skip(
        "needs NUMBA_ENABLE_CUDASIM=1 set before numba is imported", allow_module_level=True
    )

from cuda_kernels.gpu import TILES
from streamfit.fit import FitConfig, fit
from streamfit.fit.backends.cpu import CpuBackend
from streamfit.fit.backends.cuda import CudaBackend
from streamfit.fit.init import adaptive_layout

RTOL = 1e-5
GRAD_RTOL = 1e-4
# per tile (height, width): sides that are not multiples of the tile, so every tile is a
# partial edge tile in one direction at least; 2 x 2 tiles, but 1 x 2 for the 128-thread
# blocks of tile 32 (the simulator's cost grows with threads x blocks)
SHAPES = {8: (12, 14), 16: (20, 18), 32: (20, 36)}


def _check(backend, params, mask, target):
    """Render, loss and every gradient column against the float64 reference."""
    _, height, width, _ = target.shape
    ref_image, ref_mse, ref_grad = reference_loss_and_grad(params, mask, target)
    image = backend.render(params, mask, height, width)
    assert relative_error(image, ref_image) < RTOL
    mse, grad = backend.loss_and_grad(params, mask, target)
    assert relative_error(mse, ref_mse) < RTOL
    for k in range(8):
        assert relative_error(grad[..., k], ref_grad[..., k]) < GRAD_RTOL, k
    assert (grad[~mask] == 0).all()


@pytest.mark.parametrize("tile", TILES)
def test_every_tile_matches_reference(tile):
    """Random splats over several tiles, partial edge tiles, two bitmask words, clipped
    footprints; different valid counts per image at tile 8 (one image for the larger tiles,
    whose blocks cost the simulator more)."""
    height, width = SHAPES[tile]
    images = 2 if tile == 8 else 1
    params, mask = random_splats(images, 40, height, width, seed=tile)
    target = torch.rand(images, height, width, 3, generator=torch.Generator().manual_seed(tile))
    _check(CudaBackend(tile=tile), params, mask, target)


def test_bad_tile_and_device_are_clear_errors():
    with pytest.raises(ValueError, match="choose 8, 16, 32"):
        CudaBackend(tile=24)
    with pytest.raises(ValueError, match="does not exist"):
        CudaBackend("cuda:3")


@pytest.mark.parametrize(
    ("kind", "n", "h", "w"),
    [
        ("photo", 37, 12, 14),
        ("photo", 1, 9, 7),
        ("photo", 63, 7, 9),  # one splat per pixel
        ("photo", 12, 3, 40),  # a strip: cuts along one axis only
        ("flat", 6, 10, 12),
    ],
)
def test_adaptive_layout_matches_the_reference(kind, n, h, w):
    """The init kernel (one image a block) against the torch reference, to the same
    tolerances as the cpu kernel's: cells and colours to float64 rounding, covariances of
    nearly flat cells to the summed-area tables' rounding."""
    images = photo_like(2, h, w) if kind == "photo" else torch.full((2, h, w, 3), 0.4)
    settings = (0.9, 1.4, 1.0, 0.5)  # detail, detail power, scale, anisotropy
    expected = adaptive_layout(images, n, *settings)
    got = CudaBackend().adaptive_layout(images, n, *settings)
    assert got.dtype == torch.float64
    cells = [0, 1, 5, 6, 7]
    torch.testing.assert_close(got[..., cells], expected[..., cells], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_default_fit_matches_the_cpu_backend():
    """The default fit (adaptive init kernel, the colour kernel and conjugate gradients,
    the fused iterations) against the cpu backend's with the same colour solver."""
    images = blob_images(1, 8, 8, 3, 2.0)  # one tile: the simulator is slow
    cfg = FitConfig(gaussians=6, iters=1)
    ours = fit(images, cfg, CudaBackend(tile=8))
    reference = fit(images, FitConfig(gaussians=6, iters=1, colour_solver="cg"), CpuBackend())
    torch.testing.assert_close(ours.psnr, reference.psnr, rtol=0, atol=0.02)
    torch.testing.assert_close(ours.splats.params, reference.splats.params, rtol=1e-3, atol=1e-3)
