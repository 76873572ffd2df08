"""Parameter counts of an RGB CLIP's image encoder and of the GS-CLIP built from it, per part
and optimiser group (``tools/model_summary.py`` prints them). Weights are never loaded: the
counts do not depend on them."""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from streamfit.models.config import GSModelConfig
from streamfit.models.gs_clip import build_gs_clip
from streamfit.models.teacher import load_teacher


def count_by_child(module: nn.Module) -> dict[str, int]:
    """Parameters of ``module`` per top-level attribute (``conv1``, ``transformer`` ...)."""
    counts: dict[str, int] = {}
    for name, p in module.named_parameters():
        top = name.split(".", 1)[0]
        counts[top] = counts.get(top, 0) + p.numel()
    return counts


def summarize(cfg: GSModelConfig) -> dict[str, Any]:
    """Build the (random) teacher and GS-CLIP of ``cfg`` and count their parameters."""
    cfg = dataclasses.replace(cfg, pretrained=None)
    teacher = load_teacher(cfg.model_name, None, **cfg.model_kwargs)
    rgb_vision = count_by_child(teacher.visual)
    vision_params_rgb = sum(rgb_vision.values())
    rgb_total = sum(p.numel() for p in teacher.parameters())

    gs = build_gs_clip(cfg, teacher=teacher)
    parts = gs.parameter_counts()
    total, trainable = parts["all"]["total"], parts["all"]["trainable"]
    vision_parts = [p for p in parts if p not in ("text", "logit_scale", "all")]
    gs_vision_total = sum(parts[p]["total"] for p in vision_parts)
    gs_vision_trainable = sum(parts[p]["trainable"] for p in vision_parts)
    return {
        "config": dataclasses.asdict(cfg),
        "vision_params_rgb": vision_params_rgb,
        "rgb_total_params": rgb_total,
        "rgb_vision_parts": rgb_vision,
        "gs_total_params": total,
        "gs_trainable_params": trainable,
        "trainable_fraction": trainable / total,
        "gs_vision_params": gs_vision_total,
        "gs_vision_trainable_params": gs_vision_trainable,
        "gs_parts": {k: v for k, v in parts.items() if k != "all"},
        "embed_dim": gs.visual.output_dim,
        "num_tokens": cfg.num_tokens,
        "param_groups": [
            {
                "name": g["name"],
                "lr_scale": g["lr_scale"],
                "params": sum(p.numel() for p in g["params"]),
            }
            for g in gs.param_groups(base_lr=1.0, weight_decay=0.0)
        ],
    }
