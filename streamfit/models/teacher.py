"""Building the RGB CLIP whose towers GS-CLIP reuses (open_clip weights or streamfit's own), and
the one place its pixels are normalised."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import open_clip
import torch
from open_clip.model import get_model_preprocess_cfg
from open_clip.pretrained import get_pretrained_cfg
from torch import nn


def load_teacher(
    model_name: str, pretrained: str | os.PathLike[str] | None = None, **model_kwargs: Any
) -> nn.Module:
    """Create an open_clip model, random or with weights.

    Args:
        model_name: open_clip model name, e.g. ``"ViT-M-16"`` (or an ``hf-hub:``/``local-dir:``
            source, whose own weights are then used and ``pretrained`` is ignored).
        pretrained: None for random weights; an open_clip pretrained tag (downloaded from the
            Hugging Face Hub, or read from its cache: with ``HF_HUB_OFFLINE=1`` nothing is
            fetched); or the path of a local file, read offline. Accepted files: a ``.safetensors`` file, or a ``torch.save`` file read
            with ``weights_only=True``, holding either the model's ``state_dict()`` (what
            streamfit's RGB pre-training writes) or an open_clip training checkpoint
            ``{"state_dict": ...}``; a ``module.`` prefix (DDP) is stripped. Loading is strict.
        model_kwargs: overrides of the open_clip model config (top-level keys such as
            ``embed_dim`` or ``vision_cfg`` replace the named config's entries).

    Returns:
        The open_clip model (``CLIP`` or ``CustomTextCLIP``) on the CPU in float32, with a
        1-element ``logit_scale`` (``nonscalar_logit_scale=True``: DeepSpeed with 2+ ranks
        cannot handle 0-dim parameters; checkpoints with a 0-dim scale still load).
    """
    source = None if pretrained is None else os.fspath(pretrained)
    is_tag = source is not None and not os.path.isfile(source) and ":" not in model_name
    if is_tag and _looks_like_path(source):
        raise FileNotFoundError(f"teacher checkpoint {source!r} does not exist")
    if is_tag and not get_pretrained_cfg(model_name, source):
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        raise FileNotFoundError(
            f"{source!r} is neither a file nor an open_clip pretrained tag of {model_name} "
            f"(its tags: {', '.join(tags) or 'none'})"
        )
    try:
        return open_clip.create_model(
            model_name,
            pretrained=source,
            nonscalar_logit_scale=True,
            require_pretrained=source is not None,
            **model_kwargs,
        )
    except RuntimeError as err:
        if not is_tag or "Failed to download" not in str(err):
            raise
        raise FileNotFoundError(
            f"the weights of {model_name} {source!r} are neither downloadable nor in the Hugging "
            f"Face cache ({os.environ.get('HF_HOME', '~/.cache/huggingface')}); with "
            "HF_HUB_OFFLINE=1, load them once with the network on (README: adapting from "
            "public weights)"
        ) from None


def freeze_like_gs(model: nn.Module, unfrozen_blocks: int) -> nn.Module:
    """``model`` (an open_clip ViT CLIP) set to train what GS-CLIP trains of its teacher, on
    pixels: the patch embedding, class token and positional embedding in the place of the GS
    input, the first ``unfrozen_blocks`` vision blocks, ``ln_post`` and ``proj``; the text tower
    and the rest frozen. The RGB reference of a GS-CLIP training step (same model, same
    backward). Returns ``model``."""
    visual = model.visual
    model.requires_grad_(False)
    for module in (visual.conv1, visual.ln_post, *visual.transformer.resblocks[:unfrozen_blocks]):
        module.requires_grad_(True)
    for param in (visual.class_embedding, visual.positional_embedding, visual.proj):
        if param is not None:
            param.requires_grad_(True)
    return model


def rgb_normaliser(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``[B, 3, S, S]`` pixels in 0..1 -> ``model``'s image input: its own preprocessing mean
    and std, then its parameters' dtype. Take it once the model sits on its device in its
    training dtype (the data loaders hand out pixels unnormalised)."""
    pre = get_model_preprocess_cfg(model)
    param = next(model.parameters())
    mean = torch.tensor(pre["mean"], device=param.device).view(1, 3, 1, 1)
    std = torch.tensor(pre["std"], device=param.device).view(1, 3, 1, 1)

    def normalise(rgb: torch.Tensor) -> torch.Tensor:
        return ((rgb - mean) / std).to(param.dtype)

    return normalise


def _looks_like_path(source: str) -> bool:
    """Pretrained tags are bare words (``laion2b_s34b_b88k``); anything with a separator or a
    checkpoint suffix was meant as a file, and deserves a file error, not a download attempt."""
    return os.sep in source or source.endswith((".pt", ".pth", ".bin", ".safetensors", ".ckpt"))
