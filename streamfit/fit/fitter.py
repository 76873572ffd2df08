"""The batched fitter: Adam on a whole batch of splat sets at once, L1 colour penalty,
luminance-threshold pruning, per-image PSNR; the backend does the rendering maths."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

import torch

from streamfit.fit.backends import FitBackend, get_backend
from streamfit.fit.colour import ColourSolve, exact_colours
from streamfit.fit.config import FitConfig
from streamfit.fit.init import (
    adaptive_init,
    check_splat_count,
    paper_init,
    random_init,
    structured_init,
)
from streamfit.render import psnr
from streamfit.splats import COLOR, Splats

# Rec. 601 luma weights: the luminance of a splat's colour decides whether pruning drops it.
LUMA = (0.299, 0.587, 0.114)


@dataclass
class FitResult:
    """What a batched fit produced. Dropped images (non-finite values during fitting) keep
    their slot in ``splats`` with an empty mask and ``psnr = nan``."""

    splats: Splats
    psnr: torch.Tensor  # [B] float32, dB
    seconds: float
    iters: int
    dropped: list[int] = field(default_factory=list)
    psnr_history: dict[int, torch.Tensor] = field(default_factory=dict)  # iteration -> [B]

    @property
    def ok(self) -> torch.Tensor:
        """``[B]`` bool: images that fitted without numerical failure."""
        ok = torch.ones(len(self.splats), dtype=torch.bool)
        ok[self.dropped] = False
        return ok


def check_images(images: torch.Tensor) -> None:
    """Clear errors for batches the fitter cannot take."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[-1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images)
        raise ValueError(f"images must be a [B, H, W, 3] tensor, got {shape}")
    if images.shape[0] == 0:
        raise ValueError("empty batch: nothing to fit")
    if not images.dtype.is_floating_point:
        raise ValueError(f"images must be float in 0..1, got {images.dtype}")


def luminance(colors: torch.Tensor) -> torch.Tensor:
    """``[..., 3]`` colours -> ``[...]`` luminance of their magnitudes (Python-float weights:
    no host-to-device copy, so pruning never waits for the GPU)."""
    magnitude = colors.abs()
    return magnitude[..., 0] * LUMA[0] + magnitude[..., 1] * LUMA[1] + magnitude[..., 2] * LUMA[2]


def initial_params(
    images: torch.Tensor, cfg: FitConfig, backend: FitBackend | None = None
) -> torch.Tensor:
    """``[B, N, 8]`` starting parameters for ``images [B, H, W, 3]`` as ``cfg.init`` says
    (``backend``: whose kernel computes the adaptive layout; default the reference)."""
    if cfg.init == "adaptive":
        return adaptive_init(
            images,
            cfg.gaussians,
            cfg.init_detail,
            cfg.init_scale,
            cfg.init_anisotropy,
            normalize_color=cfg.colour_solve not in ("init", "init+final"),
            detail_power=cfg.init_detail_power,
            layout=backend.adaptive_layout if backend is not None else None,
        )
    if cfg.init == "structured":
        return structured_init(images, cfg.gaussians, cfg.init_normalize_color)
    if cfg.init == "paper":
        return paper_init(images, cfg.gaussians)
    # seeded per image from its content, so a fit does not depend on the image's batch slot
    return torch.cat(
        [
            random_init(image[None], cfg.gaussians, torch.Generator().manual_seed(seed))
            for image, seed in zip(images, content_seeds(images, cfg.seed), strict=True)
        ]
    )


def content_seeds(images: torch.Tensor, seed: int) -> list[int]:
    """One 63-bit seed per image of ``[B, H, W, 3]``: a hash of its float32 pixels and ``seed``."""
    pixels = images.detach().to("cpu", torch.float32).contiguous().numpy()
    return [
        int.from_bytes(hashlib.sha256(f"{seed}/".encode() + image.tobytes()).digest()[:8]) >> 1
        for image in pixels
    ]


@dataclass
class DeviceFit:
    """A batch's fit as it stands on the backend's device, nothing read back to the host:
    ``params [B, N, 8]`` float32 (zero where masked), ``mask [B, N]`` bool, ``psnr [B]``
    float32 dB (NaN for a dropped image), ``ok [B]`` bool (False: dropped, its mask empty),
    ``psnr_history``: iteration -> ``[B]`` PSNR."""

    params: torch.Tensor
    mask: torch.Tensor
    psnr: torch.Tensor
    ok: torch.Tensor
    psnr_history: dict[int, torch.Tensor] = field(default_factory=dict)


def colour_solver(cfg: FitConfig, backend: FitBackend) -> str:
    """The colour solver a fit uses: ``cfg.colour_solver``, or the backend's with ``auto``."""
    return backend.colour_solver if cfg.colour_solver == "auto" else cfg.colour_solver


def fit_on_device(
    images: torch.Tensor,
    cfg: FitConfig,
    backend: FitBackend,
    record_psnr_at: tuple[int, ...] = (),
    progress: bool = False,
) -> DeviceFit:
    """The device work of :func:`fit`: the same arguments, a :class:`DeviceFit`.

    Nothing here synchronises with the host (the splats stay on the device, and a failing
    image is dropped by masks, not by reading flags back), so on the cuda backend a whole fit
    can be captured in a CUDA graph (:mod:`streamfit.fit.graphs`).
    """
    check_images(images)
    batch, height, width, _ = images.shape
    check_splat_count(cfg.gaussians, height, width)
    target = images.to(backend.device, torch.float32).contiguous()
    # a sum is finite exactly when every pixel is (or the image's values overflow float32,
    # bad input too): ~30x cheaper than an elementwise check of the whole batch
    finite = torch.isfinite(target.sum((1, 2, 3)))
    target = torch.where(finite[:, None, None, None], target, torch.zeros_like(target))

    params = initial_params(target, cfg, backend).contiguous()
    failed = ~finite
    mask = finite[:, None].expand(batch, cfg.gaussians).contiguous()
    solve = ColourSolve(cfg.colour_ridge, colour_solver(cfg, backend), cfg.colour_cg_iters)
    if cfg.colour_solve in ("init", "init+final"):
        exact_colours(backend, params, mask, target, solve)
    # the solve minimises the plain loss: with an L1 penalty it would undo the penalty's
    # shrinkage, so only the starting colours are solved then
    resolve = cfg.colour_solve_every > 0 and cfg.l1 == 0.0
    exp_avg = torch.zeros_like(params)
    exp_avg_sq = torch.zeros_like(params)
    # filled on the device: a host-to-device copy would end a CUDA graph's capture
    base_lr = torch.empty(8, dtype=params.dtype, device=params.device)
    base_lr[:2], base_lr[2:5], base_lr[5:] = cfg.lr_position, cfg.lr_covariance, cfg.lr_color
    history: dict[int, torch.Tensor] = {}
    steps = range(cfg.iters)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc=f"fit[{backend.name}] x{batch}", leave=False)
    for step in steps:
        if step in record_psnr_at:
            history[step] = _psnr(backend, params, mask, target)
        _, grad = backend.loss_and_grad(params, mask, target)
        if cfg.l1 > 0.0:
            # L1 on colours, normalised per splat so its weight does not depend on N
            grad[..., COLOR] += (cfg.l1 / cfg.gaussians) * params[..., COLOR].sign()
        # a non-finite gradient drops its image: its splats are masked out from here on,
        # without a host sync (the check stays on the device)
        failed |= ~torch.isfinite(grad).flatten(1).all(1)
        mask &= ~failed[:, None]
        grad = torch.where(mask[..., None], grad, torch.zeros_like(grad))
        backend.adam_step(
            params, grad, exp_avg, exp_avg_sq, base_lr * cfg.lr_factor(step), step + 1, cfg.betas
        )
        params.masked_fill_(~mask[..., None], 0.0)
        if resolve and (step + 1) % cfg.colour_solve_every == 0:
            exact_colours(backend, params, mask, target, solve)
        if cfg.is_prune_step(step):
            mask &= luminance(params[..., COLOR]) >= cfg.prune_luminance
            params.masked_fill_(~mask[..., None], 0.0)

    if cfg.colour_solve in ("final", "init+final") and cfg.iters > 0 and cfg.l1 == 0.0:
        exact_colours(backend, params, mask, target, solve)
    failed |= ~torch.isfinite(params).flatten(1).all(1)
    alive = ~failed
    final = _psnr(backend, params, mask & alive[:, None], target)
    final = torch.where(alive, final, torch.full_like(final, float("nan")))
    if cfg.iters in record_psnr_at:
        history[cfg.iters] = final
    mask &= alive[:, None]
    params = torch.where(mask[..., None], params, torch.zeros_like(params))
    return DeviceFit(params, mask, final, alive, history)


def fit(
    images: torch.Tensor,
    cfg: FitConfig,
    backend: FitBackend | None = None,
    record_psnr_at: tuple[int, ...] = (),
    progress: bool = False,
) -> FitResult:
    """Fit ``cfg.gaussians`` splats to each image of a batch.

    ``images``: ``[B, H, W, 3]`` float in 0..1 (any device; moved to the backend's). Returns a
    :class:`FitResult` whose splats live on the backend's device. ``record_psnr_at`` lists
    iteration counts at which the PSNR of every image is recorded (for convergence curves).
    Images whose loss or gradient turns non-finite are dropped (counted in ``dropped``); the
    rest of the batch goes on.
    """
    backend = backend or get_backend(cfg.backend, cfg.device)
    start = time.perf_counter()
    done = fit_on_device(images, cfg, backend, record_psnr_at, progress)
    return fit_result(done, images.shape[1], images.shape[2], cfg.iters, start)


def fit_result(done: DeviceFit, height: int, width: int, iters: int, start: float) -> FitResult:
    """The :class:`FitResult` of a device fit that began at ``start`` (``perf_counter``):
    reads the PSNR and the dropped images back to the host (a synchronisation)."""
    psnr = done.psnr.cpu()
    return FitResult(
        splats=Splats(done.params, done.mask, height, width),
        psnr=psnr,
        seconds=time.perf_counter() - start,
        iters=iters,
        dropped=(~done.ok).nonzero().flatten().tolist(),
        psnr_history={k: v.cpu() for k, v in done.psnr_history.items()},
    )


def _psnr(
    backend: FitBackend, params: torch.Tensor, mask: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    _, height, width, _ = target.shape
    safe = torch.where(torch.isfinite(params), params, torch.zeros_like(params))
    return psnr(backend.render(safe, mask, height, width), target)
