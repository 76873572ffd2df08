"""The Numba CPU backend against the reference renderer: values, gradients, bad input, and
fitting quality against the torch backend."""

from __future__ import annotations

import tarfile
from io import BytesIO

import numpy as np
import pytest
import torch
from cudasim.kernel_cases import random_splats, reference_loss_and_grad, relative_error

from cuda_kernels import cpu as cpu_kernels
from streamfit.fit import FitConfig, fit
from streamfit.fit.backends import get_backend
from streamfit.fit.backends.base import FitBackend
from streamfit.fit.backends.cpu import CpuBackend, warm_up
from streamfit.fit.backends.torch_backend import TorchBackend
from streamfit.render import Q_CUTOFF, render
from streamfit.splats import Splats

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


def test_crowded_tile_matches_reference(backend):
    """Sixty splats on one 16x16 tile: long tile lists, every pair kept for the backward."""
    params, mask = random_splats(2, 60, 16, 16, seed=11, keep=1.0)
    target = torch.rand(2, 16, 16, 3, generator=torch.Generator().manual_seed(4))
    _, ref_mse, ref_grad = reference_loss_and_grad(params, mask, target)
    mse, grad = backend.loss_and_grad(params, mask, target)
    assert relative_error(mse, ref_mse) < RTOL
    for k in range(8):
        assert relative_error(grad[..., k], ref_grad[..., k]) < 10 * RTOL, k


@pytest.mark.parametrize("parts", [2, 3, 7])
def test_reduce_in_parts_matches_reduce_per_image(backend, parts):
    """``reduce_tiles`` splitting each image's splats among steps adds the same partials."""
    params, mask = random_splats(2, 23, 30, 35, seed=12)
    target = torch.rand(2, 30, 35, 3, generator=torch.Generator().manual_seed(7))
    proj, box, bad, (tiles_x, tiles_y) = backend._project(params, mask, 30, 35)
    offsets, order = cpu_kernels.bin_tiles(box, backend.tile, tiles_x, tiles_y)
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


def test_target_planes_follow_the_target(backend):
    """The backend keeps the planar copy of the last target: an in-place change of that
    tensor, or another tensor, must be seen."""
    params, mask = random_splats(2, 20, 18, 23, seed=9)
    target = torch.rand(2, 18, 23, 3, generator=torch.Generator().manual_seed(5))
    first, _ = backend.loss_and_grad(params, mask, target)
    target.mul_(0.5)
    halved, _ = backend.loss_and_grad(params, mask, target)
    _, ref_mse, _ = reference_loss_and_grad(params, mask, target)
    assert relative_error(halved, ref_mse) < RTOL and not torch.equal(first, halved)
    other = torch.rand(2, 18, 23, 3, generator=torch.Generator().manual_seed(6))
    _, ref_other, _ = reference_loss_and_grad(params, mask, other)
    assert relative_error(backend.loss_and_grad(params, mask, other)[0], ref_other) < RTOL


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


def test_realistic_size_matches_torch_backend(backend):
    """224x224, 400 splats of the structured layout: the convention of the torch backend
    (``mse [B]`` and ``d sum(mse) / d params``), to float32 rounding."""
    params, mask = random_splats(1, 400, 224, 224, seed=3, keep=0.9)
    target = torch.rand(1, 224, 224, 3, generator=torch.Generator().manual_seed(2))
    mse, grad = backend.loss_and_grad(params, mask, target)
    ref_mse, ref_grad = TorchBackend().loss_and_grad(params, mask, target)
    assert relative_error(mse, ref_mse) < RTOL
    for k in range(8):
        assert relative_error(grad[..., k], ref_grad[..., k]) < 1e-4, k
    image = backend.render(params, mask, 224, 224)
    assert relative_error(image, render(params.double(), mask, 224, 224)) < RTOL


def test_extreme_splats_match_reference(backend):
    """Huge (footprint beyond the image, exp overflowing to inf), tiny, far away, flat."""
    params = torch.tensor(
        [
            [10.0, 12.0, 100.0, 0.0, 1.0, 0.3, 0.2, 0.1],  # l11 = inf: a horizontal band
            [10.0, 12.0, 6.0, 50.0, 6.0, 0.2, 0.4, 0.1],  # covers everything
            [5.5, 7.5, -6.0, 0.0, -6.0, 1.0, 1.0, 1.0],  # much smaller than a pixel
            [-500.0, 12.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0],  # far outside
            [20.0, 3.0, 2.0, -30.0, -1.0, -0.5, 0.5, 0.5],  # thin, tilted, negative red
        ]
    )[None]
    mask = torch.ones(1, 5, dtype=torch.bool)
    target = torch.rand(1, 24, 31, 3, generator=torch.Generator().manual_seed(0))
    image = backend.render(params, mask, 24, 31)
    ref_image, ref_mse, ref_grad = reference_loss_and_grad(params, mask, target)
    assert relative_error(image, ref_image) < RTOL
    mse, grad = backend.loss_and_grad(params, mask, target)
    assert relative_error(mse, ref_mse) < RTOL
    assert torch.isfinite(grad).all()
    assert relative_error(grad, ref_grad) < 1e-4


def test_splat_sets_of_different_sizes(backend):
    """A padded batch (``Splats.from_list``) renders each image as if it were alone."""
    sets = [random_splats(1, n, 20, 30, seed=n, keep=1.0)[0][0] for n in (3, 11, 1)]
    batch = Splats.from_list(sets, 20, 30)
    images = backend.render(batch.params, batch.mask, 20, 30)
    for b, s in enumerate(sets):
        alone = backend.render(s[None], torch.ones(1, s.shape[0], dtype=torch.bool), 20, 30)
        torch.testing.assert_close(images[b], alone[0], rtol=0, atol=0)


def test_non_finite_parameters_poison_only_their_image(backend):
    params, mask = random_splats(3, 12, 16, 20, seed=5, keep=1.0)
    target = torch.rand(3, 16, 20, 3)
    clean_mse, clean_grad = backend.loss_and_grad(params, mask, target)
    params[1, 4, 2] = float("nan")
    params[2, 0, 6] = float("inf")
    params[0, 7, 0] = float("nan")
    mask[0, 7] = False  # a masked splat's values do not matter
    mse, grad = backend.loss_and_grad(params, mask, target)
    assert torch.isnan(mse[1:]).all() and torch.isnan(grad[1:]).all()
    _, ref_mse, ref_grad = reference_loss_and_grad(params[:1], mask[:1], target[:1])
    assert relative_error(mse[:1], ref_mse) < RTOL
    valid = mask[:1]
    assert relative_error(grad[:1][valid], ref_grad[valid]) < 1e-4
    assert (grad[0, 7] == 0).all()
    assert torch.isnan(backend.render(params, mask, 16, 20)[1:]).all()
    assert torch.isfinite(clean_mse).all() and torch.isfinite(clean_grad).all()


def test_empty_batches_and_empty_splat_sets(backend):
    mse, grad = backend.loss_and_grad(
        torch.zeros(0, 4, 8), torch.zeros(0, 4, dtype=torch.bool), torch.zeros(0, 8, 8, 3)
    )
    assert mse.shape == (0,) and grad.shape == (0, 4, 8)
    mse, grad = backend.loss_and_grad(
        torch.zeros(2, 0, 8), torch.zeros(2, 0, dtype=torch.bool), torch.ones(2, 8, 8, 3)
    )
    torch.testing.assert_close(mse, torch.ones(2))
    assert (
        backend.render(torch.zeros(1, 3, 8), torch.zeros(1, 3, dtype=torch.bool), 5, 6).abs().sum()
        == 0
    )
    with pytest.raises(ValueError, match="target"):
        backend.loss_and_grad(
            torch.zeros(2, 3, 8), torch.ones(2, 3, dtype=torch.bool), torch.zeros(3, 8, 8, 3)
        )


def test_fused_adam_matches_interface_definition(backend):
    g = torch.Generator().manual_seed(0)
    params, grad = torch.randn(3, 17, 8, generator=g), torch.randn(3, 17, 8, generator=g)
    m, v = torch.randn(3, 17, 8, generator=g), torch.rand(3, 17, 8, generator=g)
    lr = torch.rand(8, generator=g)
    expected = [t.clone() for t in (params, m, v)]
    for step in (1, 2, 50):
        FitBackend.adam_step(backend, *expected[:1], grad, *expected[1:], lr, step, (0.9, 0.99))
        backend.adam_step(params, grad, m, v, lr, step, (0.9, 0.99))
        for got, want in zip((params, m, v), expected, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_registry_returns_cpu_backend():
    assert isinstance(get_backend("cpu"), CpuBackend)


def _smooth_images(batch: int, height: int, width: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    ys, xs = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    img = torch.zeros(batch, height, width, 3)
    for _ in range(8):
        cx, cy = torch.rand(2, generator=g) * torch.tensor([width, height])
        s = 3 + 6 * torch.rand(1, generator=g)
        col = torch.rand(batch, 1, 1, 3, generator=g)
        img += col * torch.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * s**2))[None, :, :, None]
    return img.clamp(0, 1)


def _photos(folder, count: int, size: int) -> torch.Tensor:
    from PIL import Image

    images = []
    with tarfile.open(folder / "train-000000.tar") as tar:
        for member in tar:
            if member.name.endswith(".jpg"):
                photo = Image.open(BytesIO(tar.extractfile(member).read())).convert("RGB")
                photo = photo.resize((size, size), Image.BILINEAR)
                images.append(torch.from_numpy(np.asarray(photo, dtype=np.float32) / 255.0))
                if len(images) == count:
                    break
    return torch.stack(images)


@pytest.mark.parametrize("options", [{}, {"l1": 0.01, "prune_luminance": 0.02, "prune_every": 5}])
def test_fit_reaches_torch_psnr(backend, options):
    images = _smooth_images(3, 28, 36)
    cfg = FitConfig(gaussians=30, iters=60, **options)
    ours = fit(images, cfg, backend)
    reference = fit(images, cfg, TorchBackend())
    assert (ours.psnr - reference.psnr).abs().max() < 0.1
    assert (ours.splats.counts() == reference.splats.counts()).all()


def test_fit_real_photos_reaches_torch_psnr(backend, imagenet_sample):
    images = _photos(imagenet_sample, 2, 48)
    cfg = FitConfig(gaussians=64, iters=40)
    ours = fit(images, cfg, backend)
    reference = fit(images, cfg, TorchBackend())
    assert (ours.psnr - reference.psnr).abs().max() < 0.1
    assert (ours.psnr > 15).all()


class _NanAfterStep(CpuBackend):
    """Corrupts one parameter of image 1 after the third Adam step."""

    def adam_step(self, params, grad, exp_avg, exp_avg_sq, lr, step, betas, eps=1e-8):
        super().adam_step(params, grad, exp_avg, exp_avg_sq, lr, step, betas, eps)
        if step == 3:
            params[1, 2, 3] = float("nan")


def test_fit_drops_non_finite_image_and_continues(backend):
    images = _smooth_images(3, 20, 20)
    cfg = FitConfig(gaussians=16, iters=10)
    clean = fit(images, cfg, backend)
    result = fit(images, cfg, _NanAfterStep())
    assert result.dropped == [1] and torch.isnan(result.psnr[1])
    assert result.splats.counts().tolist() == [16, 0, 16]
    torch.testing.assert_close(result.psnr[[0, 2]], clean.psnr[[0, 2]])


def test_images_of_different_sizes_are_a_clear_error(backend):
    """A batch is one ``[B, H, W, 3]`` tensor: differently sized images cannot be mixed."""
    with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
        fit([torch.rand(8, 8, 3), torch.rand(9, 8, 3)], FitConfig(gaussians=4, iters=1), backend)
    params, mask = random_splats(2, 3, 8, 8)
    with pytest.raises(ValueError, match="disagree"):
        backend.render(params, mask[:, :2], 8, 8)
