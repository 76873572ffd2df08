"""The CUDA kernels on a real GPU at realistic sizes (``cuda`` marker, skipped without one);
under the Numba CUDA simulator they are tested by ``cudasim/sim_gpu_kernels.py``
(``tests/test_simulator.py`` runs it)."""

from __future__ import annotations

import pytest
import torch
from cudasim.kernel_cases import (
    random_splats,
    reference_loss_and_grad,
    relative_error,
)

from streamfit.fit import FitConfig, fit
from streamfit.fit.backends.torch_backend import TorchBackend
from streamfit.fit.fitter import luminance

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def gpu_backend():
    from streamfit.fit.backends.cuda import CudaBackend

    return CudaBackend("cuda")


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("tile", [8, 16, 32])
@pytest.mark.parametrize(("batch", "n", "size"), [(4, 400, 224), (2, 3136, 224), (3, 1500, 100)])
def test_gpu_matches_reference(tile, batch, n, size):
    from streamfit.fit.backends.cuda import CudaBackend

    backend = CudaBackend("cuda", tile=tile)
    params, mask = random_splats(batch, n, size, size, seed=n)
    target = torch.rand(batch, size, size, 3, generator=torch.Generator().manual_seed(0))
    ref_mse, ref_grad = TorchBackend("cuda").loss_and_grad(
        params.cuda().double(), mask.cuda(), target.cuda().double()
    )
    mse, grad = backend.loss_and_grad(params.cuda(), mask.cuda(), target.cuda())
    assert relative_error(mse, ref_mse) < 1e-5
    for k in range(8):  # approximate exp2 on the GPU: a little looser than the values
        assert relative_error(grad[..., k], ref_grad[..., k]) < 1e-4, k
    image = backend.render(params.cuda(), mask.cuda(), size, size)
    ref_image, _, _ = reference_loss_and_grad(params[:1], mask[:1], target[:1])
    assert relative_error(image[:1].cpu(), ref_image) < 1e-5


@pytest.mark.cuda
@needs_gpu
def test_gpu_fit_from_a_background_thread_on_the_last_gpu():
    """The loader fits in a prefetch thread, whose default Numba context is GPU 0's: the
    backend must still run on its own GPU (with 2+ GPUs, one that is not GPU 0)."""
    import threading

    from streamfit.fit.backends.cuda import CudaBackend

    device = torch.device("cuda", torch.cuda.device_count() - 1)
    backend = CudaBackend(device)
    images = torch.rand(4, 64, 64, 3, generator=torch.Generator().manual_seed(1))
    cfg = FitConfig(gaussians=100, iters=20)
    here = fit(images.to(device), cfg, backend)
    there = {}
    worker = threading.Thread(target=lambda: there.update(result=fit(images, cfg, backend)))
    worker.start()
    worker.join()
    assert there["result"].splats.params.device == device
    # float atomics add in a varying order: equal up to rounding amplified by 20 Adam steps
    torch.testing.assert_close(there["result"].psnr, here.psnr, rtol=0, atol=1e-3)
    torch.testing.assert_close(
        there["result"].splats.params, here.splats.params, rtol=1e-3, atol=1e-3
    )


@pytest.mark.cuda
@needs_gpu
def test_runtime_signatures_are_the_reported_ones(gpu_backend):
    """``tools/kernel_report.py`` compiles ``kernel_signatures``: the types launches use."""
    from cuda_kernels import gpu

    params, mask = random_splats(2, 50, 40, 40)
    target = torch.rand(2, 40, 40, 3, device="cuda")
    _, grad = gpu_backend.loss_and_grad(params.cuda(), mask.cuda(), target)
    state = [torch.zeros_like(grad), torch.zeros_like(grad)]
    gpu_backend.adam_step(params.cuda(), grad, *state, torch.ones(8, device="cuda"), 1, (0.9, 0.99))
    gpu_backend.colour_system(params.cuda(), mask.cuda(), target)
    gpu_backend.adaptive_layout(target, 20, 0.9, 1.4, 1.0, 0.5)
    for name, (kernel, signature) in gpu.kernel_signatures(gpu_backend.tile).items():
        assert tuple(signature) in [tuple(s) for s in kernel.signatures], name


@pytest.mark.cuda
@needs_gpu
def test_gpu_fit_reaches_torch_psnr(gpu_backend):
    images = torch.rand(8, 64, 64, 3, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.25
    cfg = FitConfig(gaussians=100, iters=50, l1=0.01, prune_luminance=0.02)
    ours = fit(images.cuda(), cfg, gpu_backend)
    reference = fit(images.cuda(), cfg, TorchBackend("cuda"))
    assert (ours.psnr - reference.psnr).abs().max() < 0.1


@pytest.mark.cuda
@needs_gpu
def test_gpu_iteration_stays_on_device(gpu_backend):
    """A whole loss/gradient/Adam iteration is queued without a host synchronisation."""
    params, mask = random_splats(16, 400, 224, 224)
    params, mask = params.cuda(), mask.cuda()
    target = torch.rand(16, 224, 224, 3, device="cuda")
    state = [torch.zeros_like(params), torch.zeros_like(params)]
    lr = torch.full((8,), 0.01, device="cuda")
    gpu_backend.loss_and_grad(params, mask, target)  # compile first
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        _, grad = gpu_backend.loss_and_grad(params, mask, target)
        gpu_backend.adam_step(params, grad, *state, lr, 1, (0.9, 0.99))
        mask &= luminance(params[..., 5:8]) >= 0.02  # a pruning step
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert torch.isfinite(params).all()
