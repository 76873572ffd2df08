"""Training under DeepSpeed: the recipes' config tree, engine set-up with per-group
warm-up + cosine schedules, the cross-rank contrastive loss, atomic checkpoints that include
the data loader state, metrics, and zero-shot evaluation during training."""

from streamfit.train.config import (
    AdaptConfig,
    EvalConfig,
    RGBModelConfig,
    RGBPretrainConfig,
    RunConfig,
    SyntheticConfig,
    TrainConfig,
    check_inputs,
)
from streamfit.train.schedule import WarmupCosine, build_scheduler

__all__ = [
    "AdaptConfig",
    "EvalConfig",
    "RGBModelConfig",
    "RGBPretrainConfig",
    "RunConfig",
    "SyntheticConfig",
    "TrainConfig",
    "WarmupCosine",
    "build_scheduler",
    "check_inputs",
]
