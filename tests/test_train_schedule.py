"""Per-group learning rates under the warm-up + cosine schedule, stepped by a real DeepSpeed
engine around a GS-CLIP: every group follows its own peak, the ratios between groups hold."""

from __future__ import annotations

import math

import pytest
import torch
from tiny_models import TINY_CLIP

from streamfit.models import GSModelConfig, build_gs_clip
from streamfit.train.config import TrainConfig
from streamfit.train.distributed import init_distributed
from streamfit.train.engine import build_engine, group_lrs
from streamfit.train.schedule import WarmupCosine, build_scheduler

MODEL_KWARGS = TINY_CLIP


def test_warmup_cosine_shape():
    f = WarmupCosine(warmup=4, total=20, min_ratio=0.1)
    assert [f(s) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert f(4) == pytest.approx(1.0)
    assert f(12) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(20) == pytest.approx(0.1)
    assert f(100) == pytest.approx(0.1)
    values = [f(s) for s in range(4, 21)]
    assert values == sorted(values, reverse=True)


def test_scheduler_keeps_each_groups_own_peak():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([{"params": [a], "lr": 1e-3}, {"params": [b], "lr": 1e-4}])
    sched = build_scheduler(opt, warmup=0, total=10)
    for _ in range(5):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.5)
    assert opt.param_groups[1]["lr"] == pytest.approx(1e-4 * 0.5)


def test_group_lrs_follow_the_schedule_in_a_deepspeed_engine():
    _, world, device = init_distributed()
    cfg = GSModelConfig(
        model_name="ViT-M-16",
        model_kwargs=MODEL_KWARGS,
        num_tokens=8,
        latent_dim=32,
        stem_dim=32,
        resampler_layers=1,
        resampler_heads=2,
        unfrozen_blocks=1,
        backbone_lr_scale=0.1,
    )
    model = build_gs_clip(cfg)
    train = TrainConfig(lr=1e-3, warmup_steps=3, min_lr_ratio=0.1, precision="fp32")
    groups = model.param_groups(train.lr, train.weight_decay)
    peaks = {g["name"]: g["lr"] for g in groups}
    assert peaks["gs_input"] == pytest.approx(1e-3)
    assert peaks["backbone"] == pytest.approx(1e-4)
    total = 10
    engine, _ = build_engine(model, groups, train, 2, world, total, device)
    schedule = WarmupCosine(3, total, 0.1)
    params = torch.rand(2, 6, 8) * 16
    mask = torch.ones(2, 6, dtype=torch.bool)
    tokens = torch.randint(0, 49000, (2, 16))
    for step in range(total):
        # the lr in force for this step, before the engine steps the scheduler
        for name, lr in group_lrs(engine).items():
            assert lr == pytest.approx(peaks[name] * schedule(step), rel=1e-6), (name, step)
        out = engine(params, mask, tokens, 16, 16)
        loss = (out["image_features"] * out["text_features"]).sum()
        engine.backward(loss)
        engine.step()
    lrs = group_lrs(engine)
    assert lrs["backbone"] / lrs["gs_input"] == pytest.approx(0.1)
