"""What the training loop and zero-shot evaluation ask of a model, for both kinds the recipes
train: GS-CLIP (:class:`streamfit.models.GSCLIP`, fed splats) and an open_clip RGB CLIP (the
teacher, fed pixels). Take them once the model sits on its device in its training dtype."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from streamfit.models.gs_clip import GSCLIP
from streamfit.models.teacher import rgb_normaliser


def zero_shot_encoder(model: nn.Module) -> Callable[[Any], torch.Tensor]:
    """``batch -> [B, D]`` L2-normalised image embeddings of an evaluation batch (its
    ``splats`` for GS-CLIP, its ``rgb`` pixels in 0..1 for an RGB CLIP)."""
    if isinstance(model, GSCLIP):
        return lambda batch: model.encode_splats(batch.splats, normalize=True)
    normalise = rgb_normaliser(model)
    return lambda batch: model.encode_image(normalise(batch.rgb), normalize=True)


def example_inputs(
    model: nn.Module, image_size: int, context_length: int, gaussians: int = 1
) -> tuple[Any, ...]:
    """The arguments of one sample's forward pass (``model(*inputs)``), on the model's
    device: ``(params [1, gaussians, 8], mask [1, gaussians], tokens [1, L], H, W)`` for
    GS-CLIP, ``(image [1, 3, S, S], tokens [1, L])`` for an RGB CLIP. For FLOP counts."""
    device = next(model.parameters()).device
    tokens = torch.zeros(1, context_length, dtype=torch.long, device=device)
    if isinstance(model, GSCLIP):
        params = torch.zeros(1, gaussians, 8, device=device)
        mask = torch.ones(1, gaussians, dtype=torch.bool, device=device)
        return params, mask, tokens, image_size, image_size
    image = torch.zeros(1, 3, image_size, image_size, device=device)
    return rgb_normaliser(model)(image), tokens
