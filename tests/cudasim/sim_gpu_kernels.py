"""The CUDA backend's own tests under the Numba CUDA simulator (tiny sizes): every tile size
against the reference, and its argument checks. The contract all backends keep is
``tests/test_backend_contract.py`` (which runs itself under the simulator for ``cuda``).

Run only in a process started with ``NUMBA_ENABLE_CUDASIM=1`` (``tests/test_kernels_cudasim.py``
does that); the file name keeps it out of ordinary collection. Sizes are the smallest that
still exercise what is named: the simulator runs every GPU thread as a Python thread.
"""

from __future__ import annotations

import numba
import pytest
import torch
from kernel_cases import random_splats, reference_loss_and_grad, relative_error

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


def test_bad_tile_and_device_are_clear_errors():
    with pytest.raises(ValueError, match="choose 8, 16, 32"):
        CudaBackend(tile=24)
    with pytest.raises(ValueError, match="does not exist"):
        CudaBackend("cuda:3")
