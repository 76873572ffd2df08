"""The model configurations: GS-CLIP (one plain dataclass, the single source of the model's
shape) and the RGB CLIP it is built around."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class GSModelConfig:
    """Everything :func:`streamfit.models.build_gs_clip` needs.

    The defaults are the paper's GS-CLIP: an open_clip ``ViT-M-16`` backbone, 196 resampler
    tokens, all vision blocks but the first 2 frozen, the text tower frozen, and the unfrozen
    backbone parts at 0.1x the base learning rate.
    """

    # ---- backbone / teacher
    model_name: str = "ViT-M-16"
    """open_clip model name (built-in name, or an ``hf-hub:``/``local-dir:`` source)."""
    pretrained: str | None = None
    """open_clip pretrained tag, or a local checkpoint path (open_clip or streamfit RGB
    checkpoint, see :func:`streamfit.models.load_teacher`); None = random weights."""
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    """Overrides passed to the open_clip model constructor (e.g. a smaller ``vision_cfg``)."""

    # ---- GS stem
    fourier_freqs: int = 8
    """Octaves of the position encoding: ``sin/cos(pi * 2^k * p)`` for ``k < fourier_freqs``,
    ``p`` the position normalised to [0, 1]; the finest period is ``2^-(fourier_freqs-1)`` of
    the image side (1.75 px at 224 for 8)."""
    stem_dim: int = 256
    """Width of the gated sigmoid linear layer."""

    # ---- Perceiver Resampler
    num_tokens: int = 196
    """Learned query tokens = tokens the transformer sees besides the pooled one (196 or 98)."""
    latent_dim: int | None = 256
    """Width of the splat tokens and the resampler; its output is projected to the transformer
    width. None = the transformer width (no extra projection). 256 keeps the trainable share of
    ``ViT-M-16`` near the paper's ~7%."""
    resampler_layers: int = 2
    """Perceiver Resampler blocks (the queries attend to the splat tokens and themselves,
    then a feed-forward)."""
    resampler_heads: int = 4
    """Attention heads of the resampler; they must divide its width (``latent_dim``)."""
    resampler_mlp_ratio: float = 2.0
    """Hidden width of the resampler's MLPs, as a multiple of ``latent_dim``."""

    # ---- freezing and learning rates
    unfrozen_blocks: int = 2
    """Vision transformer blocks, counted from the input, that train (the rest are frozen)."""
    backbone_lr_scale: float = 0.1
    """lr multiplier of the trainable backbone parts (unfrozen blocks, ``ln_post``, ``proj``)
    relative to the stem and resampler."""
    train_logit_scale: bool = False
    """Let the contrastive temperature train (at the backbone lr) instead of keeping the
    teacher's."""
    from_scratch: bool = False
    """Random backbone and text tower, nothing frozen, every group at the base lr: the
    paper's from-scratch comparison. Requires ``pretrained = None``."""

    def __post_init__(self) -> None:
        positive = {
            "fourier_freqs": self.fourier_freqs,
            "stem_dim": self.stem_dim,
            "num_tokens": self.num_tokens,
            "resampler_layers": self.resampler_layers,
            "resampler_heads": self.resampler_heads,
        }
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.latent_dim is not None and self.latent_dim % self.resampler_heads:
            raise ValueError(
                f"latent_dim {self.latent_dim} is not divisible by {self.resampler_heads} heads"
            )
        if self.unfrozen_blocks < 0 or self.backbone_lr_scale < 0:
            raise ValueError("unfrozen_blocks and backbone_lr_scale must be >= 0")
        if self.from_scratch and self.pretrained is not None:
            raise ValueError("from_scratch builds a random backbone; set pretrained to None")


@dataclass
class RGBModelConfig:
    """An open_clip CLIP created by name, optionally with ``model_kwargs`` overrides (a small
    ``vision_cfg``/``text_cfg``) and weights (``pretrained``: tag or local file)."""

    model_name: str = "ViT-M-16"
    """open_clip model name."""
    pretrained: str | None = None
    """open_clip pretrained tag, or a local checkpoint path; None = random weights."""
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    """Overrides passed to the open_clip model constructor."""
