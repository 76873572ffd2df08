"""The GPU path end to end, on a real CUDA GPU (``cuda`` marker, skipped without one): the
default fit's kernels at realistic sizes against their references, whole fits as CUDA
graphs against eager fits, and neither a fit nor a training step waiting for the host."""

from __future__ import annotations

import pytest
import torch
from cudasim.colour_cases import colour_case, reference_system, relative_error
from cudasim.kernel_cases import blob_images, photo_like

from streamfit.fit import FitConfig, FitGraphs, fit, fit_on_device
from streamfit.fit.backends.cpu import CpuBackend
from streamfit.fit.init import adaptive_layout

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.fixture(scope="module")
def backend():
    from streamfit.fit.backends.cuda import CudaBackend

    return CudaBackend("cuda")


@pytest.fixture(autouse=True)
def sync_debug_off():
    yield
    torch.cuda.set_sync_debug_mode("default")


def test_adaptive_layout_kernel_at_224(backend):
    images = photo_like(3, 224, 224)
    settings = (0.9, 1.4, 1.0, 0.5)
    expected = adaptive_layout(images.double(), 400, *settings)
    got = backend.adaptive_layout(images.cuda(), 400, *settings).cpu()
    cells = [0, 1, 5, 6, 7]
    torch.testing.assert_close(got[..., cells], expected[..., cells], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("tile", [8, 16, 32])
def test_gram_kernel_at_realistic_sizes(tile):
    from streamfit.fit.backends.cuda import CudaBackend

    params, mask, target = colour_case(2, 400, 96, 112, seed=tile)
    gram, rhs = CudaBackend("cuda", tile=tile).colour_system(
        params.cuda(), mask.cuda(), target.cuda()
    )
    ref_gram, ref_rhs = reference_system(params, mask, target)
    assert relative_error(gram.cpu(), ref_gram) < 1e-5
    assert relative_error(rhs.cpu(), ref_rhs) < 1e-5


def test_default_fit_matches_the_cpu_backend(backend):
    """The cuda backend's default fit (conjugate gradients) and the cpu backend's (Cholesky)
    reach the same quality on photo-like images."""
    images = blob_images(8, 96, 96, 40, 6.0)
    cfg = FitConfig(gaussians=200)
    ours = fit(images.cuda(), cfg, backend)
    reference = fit(images, cfg, CpuBackend())
    assert abs(float(ours.psnr.mean() - reference.psnr.mean())) < 0.05


def test_a_graphed_fit_equals_an_eager_fit_and_pads_short_batches(backend):
    images = blob_images(5, 64, 64, 12, 4.0).cuda()
    images[3, 0, 0, 0] = float("nan")  # dropped, as eagerly
    cfg = FitConfig(gaussians=64)
    graphs = FitGraphs(cfg, backend)
    eager = fit_on_device(images, cfg, backend)
    graphed = graphs(images)
    assert graphs.enabled and graphs.captured == [(8, 64, 64)]
    assert graphed.params.shape == eager.params.shape
    torch.testing.assert_close(graphed.ok, eager.ok)
    assert not bool(graphed.ok[3])
    # float atomics add in a varying order: equal up to rounding carried by 16 Adam steps
    torch.testing.assert_close(graphed.psnr, eager.psnr, rtol=0, atol=1e-3, equal_nan=True)
    torch.testing.assert_close(graphed.params, eager.params, rtol=1e-3, atol=1e-3)
    again = graphs(blob_images(7, 64, 64, 12, 4.0, seed=1).cuda())  # same graph, new pixels
    assert graphs.captured == [(8, 64, 64)] and bool(again.ok.all())


def test_a_fit_never_waits_for_the_host(backend):
    """Eager and graphed: every torch op of a whole fit is queued without a synchronisation
    (torch raises on one in this mode)."""
    images = blob_images(4, 64, 64, 12, 4.0).cuda()
    cfg = FitConfig(gaussians=64)
    graphs = FitGraphs(cfg, backend)
    graphs(images)  # capture first
    fit_on_device(images, cfg, backend)  # compile first
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    done = fit_on_device(images, cfg, backend)
    replayed = graphs(images)
    torch.cuda.set_sync_debug_mode("default")
    assert bool(done.ok.all()) and bool(replayed.ok.all())


def test_a_training_step_never_waits_for_the_host():
    """A GS-CLIP step as the loop runs it (the batch claimed for the training stream,
    forward, backward, optimiser step, the step timer, the loss kept on the device) in bf16
    under DeepSpeed, with the paper's gradient clipping."""
    from streamfit.models import GSModelConfig, build_gs_clip
    from streamfit.splats import Splats
    from streamfit.train.config import TrainConfig
    from streamfit.train.distributed import init_distributed
    from streamfit.train.engine import build_engine, clips_itself
    from streamfit.train.loop import train_step
    from streamfit.train.loss import contrastive_loss
    from streamfit.train.metrics import StepTimer

    _, world, device = init_distributed()
    model_kwargs = {
        "embed_dim": 64,
        "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 3},
        "text_cfg": {"context_length": 16, "width": 64, "heads": 2, "layers": 2},
    }
    model = build_gs_clip(
        GSModelConfig(model_kwargs=model_kwargs, num_tokens=16, latent_dim=64, stem_dim=64)
    )
    train = TrainConfig(precision="bf16", grad_clip=1.0, zero_stage=0)
    assert clips_itself(train, "bf16")
    groups = model.param_groups(1e-3, 0.1)
    engine, _ = build_engine(model.to(device), groups, train, 8, world, 10, device)
    timer = StepTimer(1.0, 1.0, world, device)
    params = torch.rand(8, 50, 8, device=device)  # log-scales, shear, colours in 0..1
    params[..., :2] *= 32  # centres in the 32 x 32 image
    splats = Splats(params, torch.ones(8, 50, dtype=torch.bool, device=device), 32, 32)
    losses = []

    def loss_of(batch: dict) -> torch.Tensor:
        params, mask = batch["splats"].params, batch["splats"].mask
        return contrastive_loss(**engine(params, mask, batch["tokens"], 32, 32))

    def step() -> None:
        batch = {"splats": splats, "tokens": torch.randint(0, 1000, (8, 16))}
        losses.append(train_step(engine, batch, loss_of, device, timer, train.grad_clip))
        timer.add(8, 0.0, {"fit_s": 0.0, "fit_gpu_s": 0.0, "hits": 0, "fitted": 8})

    for _ in range(2):
        step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    for _ in range(3):
        step()
    torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(torch.stack(losses)).all()
    assert timer.window()["samples_per_s"] > 0
