"""The CUDA kernels under the Numba CUDA simulator (tiny sizes), against the reference.

Run only in a process started with ``NUMBA_ENABLE_CUDASIM=1`` (``tests/test_kernels_cudasim.py``
does that); the file name keeps it out of ordinary collection. Sizes are the smallest that
still exercise what is named: the simulator runs every GPU thread as a Python thread.
"""

from __future__ import annotations

import threading

import numba
import pytest
import torch
from kernel_cases import random_splats, reference_loss_and_grad, relative_error

from streamfit.fit import FitConfig, fit
from streamfit.fit.backends.base import FitBackend
from streamfit.fit.backends.torch_backend import TorchBackend

if not numba.config.ENABLE_CUDASIM:
    pytest.skip(
        "needs NUMBA_ENABLE_CUDASIM=1 set before numba is imported", allow_module_level=True
    )

from cuda_kernels.gpu import TILES  # noqa: E402
from streamfit.fit.backends.cuda import CudaBackend  # noqa: E402

RTOL = 1e-5
GRAD_RTOL = 1e-4
# per tile: an image of 2 x 2 tiles whose sides are not multiples of the tile
SHAPES = {8: (12, 14), 16: (20, 18), 32: (36, 34)}


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
    """Random splats over 2 x 2 tiles, partial edge tiles, two bitmask words, clipped
    footprints, different valid counts per image."""
    height, width = SHAPES[tile]
    params, mask = random_splats(2, 40, height, width, seed=tile)
    target = torch.rand(2, height, width, 3, generator=torch.Generator().manual_seed(tile))
    _check(CudaBackend(tile=tile), params, mask, target)


def test_extreme_and_degenerate_splats_match_reference():
    """Huge (beyond the image, exp overflowing to inf), tiny, far away, thin and tilted,
    zero-coloured, and a set with no valid splat."""
    params = torch.tensor(
        [
            [10.0, 12.0, 100.0, 0.0, 1.0, 0.3, 0.2, 0.1],  # l11 = inf: a horizontal band
            [10.0, 12.0, 6.0, 50.0, 6.0, 0.2, 0.4, 0.1],  # covers everything
            [5.5, 7.5, -6.0, 0.0, -6.0, 1.0, 1.0, 1.0],  # much smaller than a pixel
            [-500.0, 12.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0],  # far outside
            [13.0, 3.0, 2.0, -30.0, -1.0, -0.5, 0.5, 0.5],  # thin, tilted, negative red
            [8.0, 8.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0],  # black
        ]
    )[None].repeat(2, 1, 1)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1] = False  # an image whose splats are all pruned renders black
    target = torch.rand(2, 13, 17, 3, generator=torch.Generator().manual_seed(0))
    _check(CudaBackend(tile=8), params, mask, target)


def test_non_finite_splats_and_targets_poison_only_their_image():
    params, mask = random_splats(4, 6, 8, 8, seed=1, keep=1.0)
    target = torch.rand(4, 8, 8, 3, generator=torch.Generator().manual_seed(1))
    params[1, 3, 4] = float("nan")
    params[2, 0, 6] = float("inf")
    target[3, 2, 5, 1] = float("nan")
    backend = CudaBackend(tile=8)
    mse, grad = backend.loss_and_grad(params, mask, target)
    _, ref_mse, ref_grad = reference_loss_and_grad(params[:1], mask[:1], target[:1])
    assert relative_error(mse[:1], ref_mse) < RTOL
    assert relative_error(grad[:1], ref_grad) < GRAD_RTOL
    assert torch.isnan(mse[1:]).all() and torch.isnan(grad[1:3]).all()
    assert torch.isnan(backend.render(params, mask, 8, 8)[1:3]).all()


def test_empty_batch_and_empty_splat_sets():
    backend = CudaBackend(tile=8)
    mse, grad = backend.loss_and_grad(
        torch.zeros(0, 3, 8), torch.zeros(0, 3, dtype=torch.bool), torch.zeros(0, 8, 8, 3)
    )
    assert mse.shape == (0,) and grad.shape == (0, 3, 8)
    mse, _ = backend.loss_and_grad(
        torch.zeros(1, 0, 8), torch.zeros(1, 0, dtype=torch.bool), torch.ones(1, 8, 8, 3)
    )
    torch.testing.assert_close(mse, torch.ones(1))


def test_adam_kernel_matches_interface_definition():
    g = torch.Generator().manual_seed(0)
    params, grad = torch.randn(2, 5, 8, generator=g), torch.randn(2, 5, 8, generator=g)
    m, v = torch.randn(2, 5, 8, generator=g), torch.rand(2, 5, 8, generator=g)
    lr = torch.rand(8, generator=g)
    expected = [t.clone() for t in (params, m, v)]
    backend = CudaBackend(tile=8)
    for step in (1, 7):
        FitBackend.adam_step(
            backend, expected[0], grad, expected[1], expected[2], lr, step, (0.9, 0.99)
        )
        backend.adam_step(params, grad, m, v, lr, step, (0.9, 0.99))
        for got, want in zip((params, m, v), expected, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("options", [{}, {"l1": 0.01, "prune_luminance": 0.03, "prune_every": 1}])
def test_fit_with_pruning_and_l1_matches_torch_backend(options):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 8, 16, 3, generator=g) * 0.5 + 0.25
    cfg = FitConfig(gaussians=8, iters=4, **options)
    ours = fit(images, cfg, CudaBackend(tile=8))
    reference = fit(images, cfg, TorchBackend())
    assert (ours.psnr - reference.psnr).abs().max() < 0.05
    assert (ours.splats.counts() == reference.splats.counts()).all()


def test_fit_drops_non_finite_image():
    images = torch.rand(2, 8, 8, 3, generator=torch.Generator().manual_seed(3))
    images[1, 0, 0, 0] = float("nan")
    result = fit(images, FitConfig(gaussians=4, iters=2), CudaBackend(tile=8))
    assert result.dropped == [1] and torch.isnan(result.psnr[1]) and result.psnr[0] > 0


def test_fit_from_a_background_thread():
    """The loader fits in a prefetch thread: results there equal the main thread's and stay
    on the backend's device."""
    images = torch.rand(1, 8, 8, 3, generator=torch.Generator().manual_seed(4))
    cfg = FitConfig(gaussians=4, iters=2)
    backend = CudaBackend("cuda:0", tile=8)
    here = fit(images, cfg, backend)
    there = {}
    worker = threading.Thread(target=lambda: there.update(result=fit(images, cfg, backend)))
    worker.start()
    worker.join()
    assert there["result"].splats.params.device == backend.device
    torch.testing.assert_close(there["result"].splats.params, here.splats.params)


def test_more_splats_than_one_bitmask_word_per_lane():
    """70 splats on one tile: three bitmask words, each staged in turn."""
    params, mask = random_splats(1, 70, 8, 8, seed=2)
    params[..., 2:5:2] = 0.0  # unit standard deviations: most splats touch the tile
    target = torch.rand(1, 8, 8, 3, generator=torch.Generator().manual_seed(2))
    _check(CudaBackend(tile=8), params, mask, target)


def test_bad_tile_and_device_are_clear_errors():
    with pytest.raises(ValueError, match="choose 8, 16, 32"):
        CudaBackend(tile=24)
    with pytest.raises(ValueError, match="does not exist"):
        CudaBackend("cuda:3")
