"""The `torch` backend: the reference renderer with autograd. Slow, exact, runs anywhere."""

from __future__ import annotations

import torch

from streamfit.fit.backends.base import FitBackend, check_target
from streamfit.render import render

# Elements of the [b, N, H*W] weight tensor evaluated at once: bounds peak memory (~1.5 GB
# with autograd's saved tensors) whatever the batch size.
_MAX_ELEMENTS = 40_000_000


class TorchBackend(FitBackend):
    name = "torch"

    def _chunks(self, params: torch.Tensor, height: int, width: int) -> list[slice]:
        per_image = max(1, params.shape[1] * height * width)
        step = max(1, _MAX_ELEMENTS // per_image)
        # an empty batch is one empty chunk: the results keep their shapes
        return [slice(i, i + step) for i in range(0, max(1, params.shape[0]), step)]

    @torch.no_grad()
    def render(
        self, params: torch.Tensor, mask: torch.Tensor, height: int, width: int
    ) -> torch.Tensor:
        chunks = self._chunks(params, height, width)
        return torch.cat([render(params[c], mask[c], height, width) for c in chunks])

    def loss_and_grad(
        self, params: torch.Tensor, mask: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        height, width = check_target(params, target)
        losses, grads = [], []
        for c in self._chunks(params, height, width):
            with torch.enable_grad():
                p = params[c].detach().requires_grad_(True)
                mse = (render(p, mask[c], height, width) - target[c]).pow(2).flatten(1).mean(1)
                (grad,) = torch.autograd.grad(mse.sum(), p)
            losses.append(mse.detach())
            # where, not a product: a masked splat's NaN must not leak into its gradient
            grads.append(torch.where(mask[c, :, None], grad, 0.0))
        return torch.cat(losses), torch.cat(grads)
