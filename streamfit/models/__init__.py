"""GS-CLIP models: the GS stem, the Perceiver Resampler and an open_clip CLIP around them.

Models see splat tensors only (``[B, N, 8]`` parameters + ``[B, N]`` mask); they never import
data or fitting code.
"""

from streamfit.models.config import GSModelConfig, RGBModelConfig
from streamfit.models.gs_clip import (
    GSCLIP,
    PART_GROUP,
    GSVisionEncoder,
    build_gs_clip,
    input_bytes,
    part_of,
    text_tower,
)
from streamfit.models.interface import example_inputs, zero_shot_encoder
from streamfit.models.resampler import PerceiverResampler, masked_mean
from streamfit.models.stem import GSStem, num_splat_features, splat_features
from streamfit.models.teacher import freeze_like_gs, load_teacher, rgb_normaliser

__all__ = [
    "GSCLIP",
    "GSModelConfig",
    "RGBModelConfig",
    "GSStem",
    "GSVisionEncoder",
    "PART_GROUP",
    "PerceiverResampler",
    "build_gs_clip",
    "example_inputs",
    "freeze_like_gs",
    "input_bytes",
    "load_teacher",
    "masked_mean",
    "num_splat_features",
    "part_of",
    "rgb_normaliser",
    "splat_features",
    "zero_shot_encoder",
    "text_tower",
]
