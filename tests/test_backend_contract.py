"""The contract every fitting backend keeps, one test per clause with the backend as the
parameter: values and gradients of ``render``/``loss_and_grad`` against the reference
renderer, bad and degenerate input, ``adam_step`` against the interface's definition, and
fits against the ``torch`` backend.

``torch`` and ``cpu`` run here; ``cuda`` runs on a real GPU where there is one, and always
under the Numba CUDA simulator: ``tests/test_simulator.py`` runs this file again
in a process of its own with ``NUMBA_ENABLE_CUDASIM=1``, where ``cuda`` is the only backend
and the cases too large for the simulator are left out. Backend-specific tests (tile sizes
and kernels of one backend) stay in ``test_kernels_cpu.py`` and ``cudasim/sim_gpu_kernels.py``.
"""

from __future__ import annotations

import tarfile
import threading
from io import BytesIO
from pathlib import Path

import numba
import numpy as np
import pytest
import torch
from cudasim.kernel_cases import (
    blob_images,
    random_splats,
    reference_loss_and_grad,
    relative_error,
)

from streamfit.fit import FitConfig, fit
from streamfit.fit.backends import get_backend
from streamfit.fit.backends.base import FitBackend
from streamfit.fit.backends.torch_backend import TorchBackend
from streamfit.render import render
from streamfit.splats import Splats

SIMULATOR = bool(numba.config.ENABLE_CUDASIM)
if SIMULATOR:
    BACKENDS: tuple[str, ...] = ("cuda",)
else:
    BACKENDS = ("torch", "cpu", *(("cuda",) if torch.cuda.is_available() else ()))
FITTING = [name for name in BACKENDS if name != "torch"]  # compared with the torch backend

RTOL = 1e-5  # float32 backends against the float64 reference
GRAD_RTOL = 1e-4  # each gradient column; approximate exp on the GPU


def full_size(*cases):
    """Cases too slow for the simulator (every GPU thread a Python thread) run elsewhere."""
    return [] if SIMULATOR else list(cases)


def make_backend(name: str) -> FitBackend:
    if name == "cpu":
        from streamfit.fit.backends.cpu import CpuBackend, warm_up

        warm_up()
        return CpuBackend()
    if name == "cuda":
        from streamfit.fit.backends.cuda import CudaBackend

        return CudaBackend(tile=8) if SIMULATOR else CudaBackend("cuda")
    return TorchBackend()


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request) -> FitBackend:
    return make_backend(request.param)


@pytest.fixture(scope="module", params=FITTING)
def fitting_backend(request) -> FitBackend:
    return make_backend(request.param)


def _on(backend: FitBackend, *tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.to(backend.device) for t in tensors]


def check_against_reference(backend, params, mask, target):
    """Image, per-image MSE and every gradient column against the float64 reference;
    masked splats get no gradient."""
    _, height, width, _ = target.shape
    ref_image, ref_mse, ref_grad = reference_loss_and_grad(params, mask, target)
    p, m, t = _on(backend, params, mask, target)
    image = backend.render(p, m, height, width).cpu()
    assert image.shape == target.shape and image.dtype == torch.float32
    assert relative_error(image, ref_image) < RTOL
    mse, grad = (x.cpu() for x in backend.loss_and_grad(p, m, t))
    assert mse.shape == (target.shape[0],) and grad.shape == params.shape
    assert relative_error(mse, ref_mse) < RTOL
    for k in range(8):  # each column on its own: positions and colours differ in scale
        assert relative_error(grad[..., k], ref_grad[..., k]) < GRAD_RTOL, k
    assert (grad[~mask] == 0).all()


@pytest.mark.parametrize(
    ("batch", "n", "height", "width"),
    [
        (1, 1, 8, 8),  # one splat
        # the simulator's own tile cases cover these sizes (sim_gpu_kernels.py)
        *full_size((2, 40, 20, 18), (3, 40, 37, 50), (2, 30, 17, 33)),
    ],
)
def test_random_splats_match_reference(backend, batch, n, height, width):
    """Varied size, elongation and colour sign, footprints clipped by the border, partial
    edge tiles, different valid counts per image."""
    params, mask = random_splats(batch, n, height, width, seed=n + height)
    target = torch.rand(batch, height, width, 3, generator=torch.Generator().manual_seed(1))
    check_against_reference(backend, params, mask, target)


@pytest.mark.parametrize(
    ("batch", "n", "size", "seed", "keep", "unit_sigma", "target_seed"),
    [
        (1, 70, 8, 2, 0.8, True, 2),  # unit sigmas: nearly all on the tile, 3 bitmask words
        *full_size((2, 60, 16, 11, 1.0, False, 4)),  # long tile lists on one 16x16 tile
    ],
)
def test_crowded_tile_matches_reference(
    backend, batch, n, size, seed, keep, unit_sigma, target_seed
):
    """More splats on one tile than one bitmask word (GPU) holds; every pair kept for the
    backward (CPU)."""
    params, mask = random_splats(batch, n, size, size, seed=seed, keep=keep)
    if unit_sigma:
        params[..., 2:5:2] = 0.0
    target = torch.rand(batch, size, size, 3, generator=torch.Generator().manual_seed(target_seed))
    check_against_reference(backend, params, mask, target)


@pytest.mark.parametrize(
    ("height", "width", "thin_x"), [(13, 17, 13.0), *full_size((24, 31, 20.0))]
)
def test_extreme_and_degenerate_splats_match_reference(fitting_backend, height, width, thin_x):
    """Huge (beyond the image, exp overflowing to inf), tiny, far away, thin and tilted,
    zero-coloured, and an image whose splats are all masked (it renders black). Not asked of
    the torch backend: its float32 autograd turns the infinite footprint into NaN (inf x 0)."""
    backend = fitting_backend
    params = torch.tensor(
        [
            [10.0, 12.0, 100.0, 0.0, 1.0, 0.3, 0.2, 0.1],  # l11 = inf: a horizontal band
            [10.0, 12.0, 6.0, 50.0, 6.0, 0.2, 0.4, 0.1],  # covers everything
            [5.5, 7.5, -6.0, 0.0, -6.0, 1.0, 1.0, 1.0],  # much smaller than a pixel
            [-500.0, 12.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0],  # far outside
            [thin_x, 3.0, 2.0, -30.0, -1.0, -0.5, 0.5, 0.5],  # thin, tilted, negative red
            [8.0, 8.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0],  # black
        ]
    )[None].repeat(2, 1, 1)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1] = False
    target = torch.rand(2, height, width, 3, generator=torch.Generator().manual_seed(0))
    check_against_reference(backend, params, mask, target)
    _, grad = backend.loss_and_grad(*_on(backend, params, mask, target))
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize(
    ("n", "height", "width", "seed"), [(6, 8, 8, 1), *full_size((12, 16, 20, 5))]
)
def test_non_finite_input_poisons_only_its_image(fitting_backend, n, height, width, seed):
    """NaN or inf in a valid splat, or NaN in a target, makes that image's loss, gradient
    and render NaN (so the fitter drops it); a masked splat's values do not matter. The torch
    backend is the reference renderer, which leaves out a splat whose cut-off test is NaN."""
    backend = fitting_backend
    params, mask = random_splats(4, n, height, width, seed=seed, keep=1.0)
    target = torch.rand(4, height, width, 3, generator=torch.Generator().manual_seed(seed))
    clean = backend.loss_and_grad(*_on(backend, params, mask, target))
    assert all(torch.isfinite(x).all() for x in clean)
    params[0, n - 1, 0] = float("nan")
    mask[0, n - 1] = False
    params[1, 3, 4] = float("nan")
    params[2, 0, 6] = float("inf")
    target[3, 2, 5, 1] = float("nan")
    p, m, t = _on(backend, params, mask, target)
    mse, grad = (x.cpu() for x in backend.loss_and_grad(p, m, t))
    _, ref_mse, ref_grad = reference_loss_and_grad(params[:1], mask[:1], target[:1])
    assert relative_error(mse[:1], ref_mse) < RTOL
    valid = mask[:1]
    assert relative_error(grad[:1][valid], ref_grad[valid]) < GRAD_RTOL
    assert (grad[0, n - 1] == 0).all()
    assert torch.isnan(mse[1:]).all() and torch.isnan(grad[1:3]).all()
    assert torch.isnan(backend.render(p, m, height, width)[1:3]).all()


def test_empty_batches_and_empty_splat_sets(backend):
    mse, grad = backend.loss_and_grad(
        *_on(backend, torch.zeros(0, 4, 8), torch.zeros(0, 4, dtype=torch.bool)),
        torch.zeros(0, 8, 8, 3, device=backend.device),
    )
    assert mse.shape == (0,) and grad.shape == (0, 4, 8)
    mse, _ = backend.loss_and_grad(
        *_on(backend, torch.zeros(2, 0, 8), torch.zeros(2, 0, dtype=torch.bool)),
        torch.ones(2, 8, 8, 3, device=backend.device),
    )
    torch.testing.assert_close(mse.cpu(), torch.ones(2))
    nothing = backend.render(
        *_on(backend, torch.zeros(1, 3, 8), torch.zeros(1, 3, dtype=torch.bool)), 5, 6
    )
    assert nothing.abs().sum() == 0


def test_mismatched_shapes_are_clear_errors(backend):
    params, mask = random_splats(2, 3, 8, 8)
    with pytest.raises(ValueError, match="target"):
        backend.loss_and_grad(*_on(backend, params, mask, torch.zeros(3, 8, 8, 3)))
    with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
        fit([torch.rand(8, 8, 3), torch.rand(9, 8, 3)], FitConfig(gaussians=4, iters=1), backend)


@pytest.mark.parametrize(("height", "width"), [(10, 12), *full_size((20, 30))])
def test_splat_sets_of_different_sizes(backend, height, width):
    """A padded batch (``Splats.from_list``) renders each image as if it were alone."""
    sets = [random_splats(1, n, height, width, seed=n, keep=1.0)[0][0] for n in (3, 11, 1)]
    batch = Splats.from_list(sets, height, width)
    images = backend.render(*_on(backend, batch.params, batch.mask), height, width)
    for b, s in enumerate(sets):
        alone = backend.render(
            *_on(backend, s[None], torch.ones(1, s.shape[0], dtype=torch.bool)), height, width
        )
        torch.testing.assert_close(images[b], alone[0], rtol=0, atol=0)


@pytest.mark.parametrize(("n", "height", "width"), [(6, 8, 8), *full_size((20, 18, 23))])
def test_in_place_change_of_the_target_is_seen(backend, n, height, width):
    """A backend may keep a copy of the last target (the CPU one keeps planes): an in-place
    change of that tensor, or another tensor, must be seen."""
    params, mask = random_splats(2, n, height, width, seed=9)
    target = torch.rand(2, height, width, 3, generator=torch.Generator().manual_seed(5))
    p, m, t = _on(backend, params, mask, target)
    first, _ = backend.loss_and_grad(p, m, t)
    t.mul_(0.5)
    halved, _ = backend.loss_and_grad(p, m, t)
    _, ref_mse, _ = reference_loss_and_grad(params, mask, t.cpu())
    assert relative_error(halved.cpu(), ref_mse) < RTOL and not torch.equal(first, halved)
    other = torch.rand(2, height, width, 3, generator=torch.Generator().manual_seed(6))
    _, ref_other, _ = reference_loss_and_grad(params, mask, other)
    got = backend.loss_and_grad(p, m, other.to(backend.device))[0]
    assert relative_error(got.cpu(), ref_other) < RTOL


def test_adam_step_matches_interface_definition(backend):
    g = torch.Generator().manual_seed(0)
    params, grad = torch.randn(3, 17, 8, generator=g), torch.randn(3, 17, 8, generator=g)
    m, v = torch.randn(3, 17, 8, generator=g), torch.rand(3, 17, 8, generator=g)
    lr = torch.rand(8, generator=g)
    params, grad, m, v, lr = _on(backend, params, grad, m, v, lr)
    expected = [t.clone() for t in (params, m, v)]
    for step in (1, 2, 7, 50):
        TorchBackend(backend.device).adam_step(
            expected[0], grad, *expected[1:], lr, step, (0.9, 0.99)
        )
        backend.adam_step(params, grad, m, v, lr, step, (0.9, 0.99))
        for got, want in zip((params, m, v), expected, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("images", "gaussians", "iters", "pruning", "tolerance"),
    [
        ("random 2x8x8", 8, 4, {"l1": 0.01, "prune_luminance": 0.03, "prune_every": 1}, 0.05),
        *full_size(
            ("smooth 3x28x36", 30, 60, {"l1": 0.01, "prune_luminance": 0.02, "prune_every": 5}, 0.1)
        ),
    ],
)
@pytest.mark.parametrize("prune", [False, True])
def test_fit_matches_torch_backend(
    fitting_backend, images, gaussians, iters, pruning, tolerance, prune
):
    """The same fit on the reference backend: PSNR within ``tolerance`` dB, the same splats
    pruned (with L1 and luminance pruning)."""
    kind, size = images.split()
    batch, height, width = (int(v) for v in size.split("x"))
    if kind == "smooth":
        target = blob_images(batch, height, width, blobs=8, spread=6)
    else:
        target = torch.rand(batch, height, width, 3, generator=torch.Generator().manual_seed(0))
        target = target * 0.5 + 0.25
    cfg = FitConfig(gaussians=gaussians, iters=iters, **(pruning if prune else {}))
    ours = fit(target.to(fitting_backend.device), cfg, fitting_backend)
    reference = fit(target, cfg, TorchBackend())
    assert (ours.psnr.cpu() - reference.psnr).abs().max() < tolerance
    assert (ours.splats.counts().cpu() == reference.splats.counts()).all()


def test_fit_drops_an_image_with_a_non_finite_pixel(backend):
    images = torch.rand(2, 8, 8, 3, generator=torch.Generator().manual_seed(3))
    images[1, 0, 0, 0] = float("nan")
    result = fit(images.to(backend.device), FitConfig(gaussians=4, iters=2), backend)
    assert result.dropped == [1] and torch.isnan(result.psnr[1]) and result.psnr[0] > 0


@pytest.mark.parametrize(("size", "gaussians", "iters"), [(8, 4, 4), *full_size((20, 16, 10))])
def test_fit_drops_an_image_that_turns_non_finite_and_continues(backend, size, gaussians, iters):
    """Parameters of image 1 turn NaN after the third Adam step: only that image is dropped,
    the other ends as it would have."""
    images = blob_images(2, size, size, blobs=8, spread=6).to(backend.device)
    cfg = FitConfig(gaussians=gaussians, iters=iters)
    clean = fit(images, cfg, backend)
    step = backend.adam_step

    def nan_after_third_step(params, grad, exp_avg, exp_avg_sq, lr, n, betas, eps=1e-8):
        step(params, grad, exp_avg, exp_avg_sq, lr, n, betas, eps)
        if n == 3:
            params[1, 2, 3] = float("nan")

    backend.adam_step = nan_after_third_step
    try:
        result = fit(images, cfg, backend)
    finally:
        del backend.adam_step
    assert result.dropped == [1] and torch.isnan(result.psnr[1])
    assert result.splats.counts().tolist() == [gaussians, 0]
    torch.testing.assert_close(result.psnr[0], clean.psnr[0])


def test_fit_from_a_background_thread(backend):
    """The loader fits in a prefetch thread: results there equal the main thread's and stay
    on the backend's device."""
    images = torch.rand(1, 8, 8, 3, generator=torch.Generator().manual_seed(4))
    images = images.to(backend.device)
    cfg = FitConfig(gaussians=4, iters=2)
    here = fit(images, cfg, backend)
    there = {}
    worker = threading.Thread(target=lambda: there.update(result=fit(images, cfg, backend)))
    worker.start()
    worker.join()
    assert there["result"].splats.params.device == backend.device
    torch.testing.assert_close(there["result"].splats.params, here.splats.params)


if not SIMULATOR:  # too large for the simulator; and the simulator's own run

    def test_fit_real_photos_matches_torch_backend(fitting_backend, imagenet_sample):
        images = _photos(imagenet_sample / "train-000000.tar", 2, 48)
        cfg = FitConfig(gaussians=64, iters=40)
        ours = fit(images.to(fitting_backend.device), cfg, fitting_backend)
        reference = fit(images, cfg, TorchBackend())
        assert (ours.psnr.cpu() - reference.psnr).abs().max() < 0.1
        assert (ours.psnr > 15).all()

    def test_realistic_size_matches_torch_backend(fitting_backend):
        """224x224, 400 splats: the convention of the torch backend (``mse [B]`` and
        ``d sum(mse) / d params``), to float32 rounding."""
        params, mask = random_splats(1, 400, 224, 224, seed=3, keep=0.9)
        target = torch.rand(1, 224, 224, 3, generator=torch.Generator().manual_seed(2))
        p, m, t = _on(fitting_backend, params, mask, target)
        mse, grad = (x.cpu() for x in fitting_backend.loss_and_grad(p, m, t))
        ref_mse, ref_grad = TorchBackend().loss_and_grad(params, mask, target)
        assert relative_error(mse, ref_mse) < RTOL
        for k in range(8):
            assert relative_error(grad[..., k], ref_grad[..., k]) < GRAD_RTOL, k
        image = fitting_backend.render(p, m, 224, 224).cpu()
        assert relative_error(image, render(params.double(), mask, 224, 224)) < RTOL

    def test_registry_returns_the_backend(backend):
        assert isinstance(get_backend(backend.name, str(backend.device)), type(backend))


def _photos(shard: Path, count: int, size: int) -> torch.Tensor:
    """The first ``count`` photos of ``shard``, resized to ``size`` x ``size``."""
    from PIL import Image

    images = []
    with tarfile.open(shard) as tar:
        for member in tar:
            if member.name.endswith(".jpg"):
                photo = Image.open(BytesIO(tar.extractfile(member).read())).convert("RGB")
                photo = photo.resize((size, size), Image.BILINEAR)
                images.append(torch.from_numpy(np.asarray(photo, dtype=np.float32) / 255.0))
                if len(images) == count:
                    break
    return torch.stack(images)
