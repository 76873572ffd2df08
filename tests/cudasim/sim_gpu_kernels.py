"""The CUDA kernels under the Numba CUDA simulator (tiny sizes), against the reference.

Run only in a process started with ``NUMBA_ENABLE_CUDASIM=1`` (``tests/test_kernels_cudasim.py``
does that); the file name keeps it out of ordinary collection.
"""

from __future__ import annotations

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

from streamfit.fit.backends.cuda import CudaBackend  # noqa: E402

RTOL = 1e-5


def test_forward_and_gradients_match_reference():
    """Two bitmask words per tile (40 splats), clipped footprints, a partial edge tile."""
    params, mask = random_splats(2, 40, 12, 20, seed=4)
    target = torch.rand(2, 12, 20, 3, generator=torch.Generator().manual_seed(0))
    ref_image, ref_mse, ref_grad = reference_loss_and_grad(params, mask, target)
    backend = CudaBackend(tile=8)
    image = backend.render(params, mask, 12, 20)
    assert relative_error(image, ref_image) < RTOL
    mse, grad = backend.loss_and_grad(params, mask, target)
    assert relative_error(mse, ref_mse) < RTOL
    for k in range(8):
        assert relative_error(grad[..., k], ref_grad[..., k]) < 10 * RTOL, k
    assert (grad[~mask] == 0).all()


def test_tile_16_and_non_finite_image():
    params, mask = random_splats(2, 6, 16, 16, seed=1, keep=1.0)
    params[1, 3, 4] = float("nan")
    target = torch.rand(2, 16, 16, 3, generator=torch.Generator().manual_seed(1))
    backend = CudaBackend(tile=16)
    mse, grad = backend.loss_and_grad(params, mask, target)
    _, ref_mse, ref_grad = reference_loss_and_grad(params[:1], mask[:1], target[:1])
    assert relative_error(mse[:1], ref_mse) < RTOL
    assert relative_error(grad[:1], ref_grad) < 1e-4
    assert torch.isnan(mse[1]) and torch.isnan(grad[1]).all()


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


def test_fit_reaches_torch_psnr():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(1, 8, 16, 3, generator=g) * 0.5 + 0.25
    cfg = FitConfig(gaussians=6, iters=3)
    ours = fit(images, cfg, CudaBackend(tile=8))
    reference = fit(images, cfg, TorchBackend())
    assert (ours.psnr - reference.psnr).abs().max() < 0.1


def test_more_splats_than_one_list_round():
    """1100 splats on one tile: the tile list is expanded in two rounds of 1024."""
    params, mask = random_splats(1, 1100, 8, 8, seed=2)
    params[..., 2:5:2] = 0.0  # unit standard deviations: most splats touch the tile
    target = torch.rand(1, 8, 8, 3, generator=torch.Generator().manual_seed(2))
    ref_image, ref_mse, ref_grad = reference_loss_and_grad(params, mask, target)
    backend = CudaBackend(tile=8)
    mse, grad = backend.loss_and_grad(params, mask, target)
    assert relative_error(mse, ref_mse) < RTOL
    assert relative_error(grad, ref_grad) < 1e-4
