"""The interface every fitting backend implements (torch reference, Numba CPU, Numba CUDA)."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from streamfit.fit.init import adaptive_layout
from streamfit.render import splat_weights


def check_target(params: torch.Tensor, target: torch.Tensor) -> tuple[int, int]:
    """``(height, width)`` of a ``[B, H, W, 3]`` target matching ``params [B, N, 8]``; a clear
    error otherwise."""
    if target.ndim != 4 or target.shape[0] != params.shape[0] or target.shape[-1] != 3:
        raise ValueError(f"target must be [{params.shape[0]}, H, W, 3], got {tuple(target.shape)}")
    return target.shape[1], target.shape[2]


# the moment tensors of Adam, in place: (params, grad, exp_avg, exp_avg_sq)
AdamTensors = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
Betas = tuple[float, float]


class FitBackend(ABC):
    """Renders splats and differentiates the reconstruction loss for the batched fitter.

    All tensors live on ``self.device``. Shapes: ``params [B, N, 8]`` float32 (layout in
    :mod:`streamfit.splats`), ``mask [B, N]`` bool, ``target [B, H, W, 3]`` float32 in 0..1.
    Masked splats contribute nothing and receive zero gradient. The image model and its
    cut-off are those of :func:`streamfit.render.render`.
    """

    name: str = "abstract"
    # the colour solver ``FitConfig.colour_solver = "auto"`` picks (see streamfit.fit.colour)
    colour_solver: str = "cholesky"

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)

    @abstractmethod
    def render(
        self, params: torch.Tensor, mask: torch.Tensor, height: int, width: int
    ) -> torch.Tensor:
        """``[B, H, W, 3]`` float32 image (unclamped)."""

    @abstractmethod
    def loss_and_grad(
        self, params: torch.Tensor, mask: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image MSE ``[B]`` (mean over ``H*W*3``) and ``d(sum_b mse_b)/d params [B, N, 8]``."""

    def adam_step(
        self,
        params: torch.Tensor,
        grad: torch.Tensor,
        exp_avg: torch.Tensor,
        exp_avg_sq: torch.Tensor,
        lr: torch.Tensor,
        step: int,
        betas: tuple[float, float],
        eps: float = 1e-8,
    ) -> None:
        """One in-place Adam update; ``lr`` is ``[8]`` (one rate per parameter column).

        A backend's fused kernel (:meth:`fused_adam`) runs when all four tensors are
        contiguous float32; otherwise these torch ops, the definition the kernels match (the
        torch backend has no kernel: it is the reference).
        """
        tensors = (params, grad, exp_avg, exp_avg_sq)
        if all(t.is_contiguous() and t.dtype == torch.float32 for t in tensors):
            if self.fused_adam(tensors, lr, step, betas, eps):
                return
        beta1, beta2 = betas
        exp_avg.mul_(beta1).add_(grad, alpha=1.0 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        bias1 = 1.0 - beta1**step
        bias2 = 1.0 - beta2**step
        denom = (exp_avg_sq / bias2).sqrt_().add_(eps)
        params.addcdiv_(exp_avg * (lr / bias1), denom, value=-1.0)

    def fused_adam(
        self, tensors: AdamTensors, lr: torch.Tensor, step: int, betas: Betas, eps: float
    ) -> bool:
        """The backend's one-pass Adam kernel on contiguous float32 ``tensors`` (torch's
        takes seven passes); False when it has none."""
        return False

    # the adaptive initialisation's splats before colour normalisation: the reference
    # (streamfit.fit.init.adaptive_layout) itself; backends may replace it with a kernel
    adaptive_layout = staticmethod(adaptive_layout)

    def colour_system(
        self, params: torch.Tensor, mask: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Normal equations of the best colours for fixed geometry: ``W^T W [B, N, N]`` and
        ``W^T t [B, N, 3]`` (float32), ``W`` the weights of the valid, finite splats at every
        pixel (other splats get zero rows).

        This dense definition is the reference; backends replace it with a tile kernel.
        """
        height, width = check_target(params, target)
        grams, rhs = [], []
        for b in range(params.shape[0]):
            valid = mask[b] & torch.isfinite(params[b]).all(-1)
            p = torch.where(valid[:, None], params[b], torch.zeros_like(params[b]))
            w = splat_weights(p[None].float(), height, width)[0] * valid[:, None]
            grams.append(w @ w.T)
            rhs.append(w @ target[b].reshape(-1, 3).float())
        return torch.stack(grams), torch.stack(rhs)
