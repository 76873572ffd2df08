"""The DeepSpeed engine of a run, built from :class:`TrainConfig`: ZeRO stage, precision and
gradient accumulation in the DeepSpeed config; AdamW over the model's parameter groups; the
per-group warm-up + cosine schedule stepped by the engine at each optimiser step."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from streamfit.train.config import TrainConfig
from streamfit.train.schedule import build_scheduler

logger = logging.getLogger("streamfit.train")


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> bf16 on GPU, fp32 on CPU; fp16 is refused on CPU (DeepSpeed cannot)."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("train.precision=fp16 needs a GPU; use fp32 or bf16 on the CPU")
    return precision


def clips_itself(cfg: TrainConfig, precision: str) -> bool:
    """Whether the loop clips the gradients (:func:`clip_gradients`) rather than DeepSpeed.

    DeepSpeed's clipping, like its bf16 optimiser wrapper, reads the gradient norm and
    overflow flags back to the host every step. Without ZeRO the gradients sit on the
    parameters, so the loop clips them on the device; ZeRO 1/2 partition them, and DeepSpeed
    clips (a few small host syncs a step); fp16's loss scaling is DeepSpeed's too."""
    return cfg.grad_clip > 0 and cfg.zero_stage == 0 and precision != "fp16"


def deepspeed_config(cfg: TrainConfig, micro_batch: int, world_size: int, precision: str) -> dict:
    """The DeepSpeed config dict for ``cfg`` (``micro_batch`` samples per rank and step).

    bf16 without ZeRO runs as torch autocast over fp32 parameters (DeepSpeed's bf16 wrapper
    checks for overflow on the host every step; autocast also keeps the model's own fp32
    parameters as the optimiser's, so a clamp on them holds). The throughput timer, which
    synchronises the device twice a step, is off: the loop times steps with CUDA events."""
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": cfg.grad_accum,
        "train_batch_size": micro_batch * cfg.grad_accum * world_size,
        "zero_optimization": {"stage": cfg.zero_stage},
        # AdamW comes from torch; DeepSpeed only vouches for its own optimisers under ZeRO.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,  # the loop logs; DeepSpeed's own step lines would duplicate
        "wall_clock_breakdown": False,
        "timers": {"throughput": {"enabled": False}},
    }
    if cfg.grad_clip > 0 and not clips_itself(cfg, precision):
        config["gradient_clipping"] = cfg.grad_clip
    if precision == "bf16" and cfg.zero_stage == 0:
        config["torch_autocast"] = {"enabled": True, "dtype": "bfloat16"}
    elif precision == "bf16":
        config["bf16"] = {"enabled": True}
    elif precision == "fp16":
        config["fp16"] = {"enabled": True, "initial_scale_power": 16}
    return config


def clip_gradients(engine: Any, max_norm: float) -> None:
    """Clip the trainable gradients of ``engine.module`` to ``max_norm`` (total 2-norm) on the
    device, at the end of a gradient accumulation: no host synchronisation."""
    if engine.is_gradient_accumulation_boundary():
        grads = [p for p in engine.module.parameters() if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(grads, max_norm, foreach=True)


def build_engine(
    model: nn.Module,
    param_groups: list[dict[str, Any]],
    cfg: TrainConfig,
    micro_batch: int,
    world_size: int,
    total_steps: int,
    device: torch.device,
) -> tuple[Any, str]:
    """``deepspeed.initialize`` the model with AdamW over ``param_groups`` (each keeps its
    ``lr``/``base_lr``/``weight_decay``) and the per-group schedule over ``total_steps``
    optimiser steps. Returns (engine, precision used)."""
    import deepspeed

    precision = resolve_precision(cfg.precision, device)
    optimizer = torch.optim.AdamW(param_groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        # A callable: DeepSpeed hands it the optimiser it wraps (ZeRO / bf16), whose groups
        # are the ones stepped.
        lr_scheduler=lambda opt: build_scheduler(
            opt, cfg.warmup_steps, total_steps, cfg.min_lr_ratio
        ),
        config=deepspeed_config(cfg, micro_batch, world_size, precision),
    )
    logger.info(
        "engine: ZeRO stage %d, %s, grad accumulation %d, %d optimiser steps scheduled",
        cfg.zero_stage,
        precision,
        cfg.grad_accum,
        total_steps,
    )
    return engine, precision


def group_lrs(engine: Any) -> dict[str, float]:
    """``{group name: current lr}`` of the engine's optimiser."""
    return {
        g.get("name", str(i)): float(g["lr"]) for i, g in enumerate(engine.optimizer.param_groups)
    }


def clip_param_groups(model: nn.Module, lr: float, weight_decay: float) -> list[dict[str, Any]]:
    """open_clip's training split of an RGB CLIP's parameters: weight decay on matrices,
    none on biases, norms and the logit scale/bias."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exclude = p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_" in name
        (no_decay if exclude else decay).append(p)
    groups = [
        {"name": "decay", "params": decay, "weight_decay": weight_decay},
        {"name": "no_decay", "params": no_decay, "weight_decay": 0.0},
    ]
    return [dict(g, lr=lr, base_lr=lr) for g in groups if g["params"]]
