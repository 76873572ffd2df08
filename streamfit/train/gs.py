"""GS-CLIP adaptation, the second stage and the main job: splats fitted inside the data loader
(with the persistent cache) feed a GS-CLIP built around an RGB teacher; the GS stem, the
resampler and the first vision blocks train under DeepSpeed, evaluated zero-shot.

Without a teacher (``model.pretrained`` unset) the RGB pre-training
(:func:`streamfit.train.rgb.pretrain_rgb`) runs first with ``teacher_config`` into
``{run}/teacher``. With ``data.fit: none`` the same stage trains the teacher itself on
pixels, with GS-CLIP's parts frozen (:func:`streamfit.models.freeze_like_gs`): the RGB
reference of the step's speed. ``recipes/gsclip_adapt.py`` runs :func:`adapt_gs`.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from streamfit.config import ConfigError, load_config
from streamfit.data import build_loader
from streamfit.eval import ZeroShotSetup, default_fitter, zero_shot
from streamfit.models import (
    build_gs_clip,
    example_inputs,
    freeze_like_gs,
    load_teacher,
    rgb_normaliser,
    zero_shot_encoder,
)
from streamfit.report import setup_logging
from streamfit.train.config import AdaptConfig, RGBPretrainConfig
from streamfit.train.distributed import all_sum
from streamfit.train.engine import clip_param_groups
from streamfit.train.loop import Evaluator, Trainer, build_trainer_engine
from streamfit.train.loss import contrastive_loss
from streamfit.train.rgb import pretrain_rgb
from streamfit.train.run import begin


def adapt_gs(cfg: AdaptConfig, wall_start: float | None = None) -> dict:
    """Run (or resume) the adaptation of ``cfg``; returns the summary written to
    ``{run}/summary.json`` (``{"stopped_at_step": n}`` when ``train.stop_after_steps`` ended
    it early)."""
    wall_start = time.perf_counter() if wall_start is None else wall_start
    rank, world, device, run_dir = begin(cfg)
    stages: dict[str, float] = {"setup": time.perf_counter() - wall_start}

    # ---- the teacher: given, or pre-trained here first
    teacher_summary: dict = {}
    if not cfg.model.pretrained and not cfg.model.from_scratch:
        stage_start = time.perf_counter()
        teacher_summary = pretrain_teacher(cfg, run_dir)
        cfg = replace(cfg, model=replace(cfg.model, pretrained=teacher_summary["best_model"]))
        stages["rgb_pretrain"] = time.perf_counter() - stage_start
    elif cfg.model.pretrained and Path(cfg.model.pretrained).is_file():
        # a teacher from rgb_pretrain.py: its run's summary holds its zero-shot accuracy
        teacher_run = Path(cfg.model.pretrained).parent / "summary.json"
        if teacher_run.is_file():
            teacher_summary = json.loads(teacher_run.read_text())
    torch.manual_seed(cfg.run.seed)

    # ---- model, data, engine
    pixels = cfg.data.fit == "none"
    size = cfg.data.image_size
    if pixels:
        model = load_teacher(cfg.model.model_name, cfg.model.pretrained, **cfg.model.model_kwargs)
        model = freeze_like_gs(model, cfg.model.unfrozen_blocks)
        groups = clip_param_groups(model, cfg.train.lr, cfg.train.weight_decay)
    else:
        model = build_gs_clip(cfg.model)
        groups = model.param_groups(cfg.train.lr, cfg.train.weight_decay)
    loader = build_loader(cfg.data, cfg.fit, rank, world, device=device)
    engine, precision = build_trainer_engine(model, groups, cfg.train, cfg.data, world, device)
    # one fitter for every evaluation: its CUDA graphs are captured once
    fitter = None if pixels else default_fitter(cfg.fit, cfg.data, device)
    normalise = rgb_normaliser(engine.module) if pixels else None
    encode = zero_shot_encoder(engine.module)

    def evaluate(setup: ZeroShotSetup):
        fit_cfg = None if pixels else cfg.fit
        return zero_shot(
            engine.module, encode, setup, cfg.data, device, rank, world, fit_cfg, fitter, all_sum
        )

    evaluator = Evaluator(
        cfg.eval,
        evaluate,
        engine.module,
        run_dir,
        cfg.train.eval_every_steps,
        rank,
        keep_best=False,  # the last weights are the run's result, unless val_data chooses
    )
    probe = example_inputs(engine.module, size, cfg.data.context_length, cfg.fit.gaussians)
    trainer = Trainer(cfg, run_dir, engine, loader, evaluator, probe, rank, world, device)

    def loss_of(batch: dict) -> torch.Tensor:
        if pixels:
            return contrastive_loss(*engine(normalise(batch["rgb"]), batch["tokens"])[:3])
        return splat_loss(engine, batch)

    stage_start = time.perf_counter()
    if not trainer.fit(loss_of):
        trainer.close()
        return {"stopped_at_step": trainer.state.step}
    stages["gs_adapt"] = time.perf_counter() - stage_start
    stages["gs_fitting_in_loader"] = sum(e.fit_seconds for e in loader.stats.epochs.values())

    # ---- the summary
    done = run_dir / "summary.json"
    if trainer.state.step == trainer.start_step and done.is_file():  # finished, started again
        trainer.close()
        return json.loads(done.read_text())
    stage_start = time.perf_counter()
    # held-out figures of the chosen model: the last one, or the best on eval.val_data
    final = evaluator.report(trainer.state, last=True)
    stages["gs_final_eval"] = time.perf_counter() - stage_start
    # hits and lookups of the training loader over the run: its stats survive a resume
    epochs = loader.stats.epochs.values()
    hits = sum(e.cache_hits for e in epochs)
    lookups = hits + sum(e.cache_misses for e in epochs)
    cache_counts = all_sum(torch.tensor([hits, lookups], dtype=torch.float64))
    summary = {
        "rgb_top1": teacher_summary.get("best_top1"),
        "rgb_top5": teacher_summary.get("best_top5"),
        "rgb_val_top1": teacher_summary.get("val_top1"),
        "gs_top1": final.get("top1"),
        "gs_top5": final.get("top5"),
        "gs_val_top1": final.get("val_top1"),
        "chance_top1": final.get("chance_top1"),
        "compression_ratio": final.get("compression_ratio"),
        "splats_per_image": final.get("splats_per_image"),
        "cache_hit_rate": float(cache_counts[0] / cache_counts[1]) if cache_counts[1] else None,
        "steps": trainer.state.step,
        "precision": precision,
        "world_size": world,
        "teacher": cfg.model.pretrained,
        "stage_seconds": stages,
        "wall_seconds": time.perf_counter() - wall_start,
    }
    return trainer.finish(summary)


def splat_loss(engine: Any, batch: dict) -> torch.Tensor:
    """GS-CLIP's contrastive loss on a loader batch (its splats and tokens on the device)."""
    splats = batch["splats"]
    out = engine(splats.params, splats.mask, batch["tokens"], splats.height, splats.width)
    return contrastive_loss(**out)


def pretrain_teacher(cfg: AdaptConfig, run_dir: Path) -> dict:
    """The RGB teacher of this run: ``{run}/teacher`` trained with ``teacher_config`` (or
    taken as it is when that run already finished)."""
    done = run_dir / "teacher" / "summary.json"
    if done.is_file():
        summary = json.loads(done.read_text())
        print(f"teacher: reusing {summary['best_model']} (top-1 {summary['best_top1']})")
        return summary
    if not cfg.teacher_config:
        raise ConfigError(
            "model.pretrained: no teacher checkpoint and no teacher_config to train one"
        )
    rgb_cfg = load_config(
        RGBPretrainConfig, cfg.teacher_config, [f"run.dir={run_dir}", "run.name=teacher"]
    )
    summary = pretrain_rgb(rgb_cfg)
    setup_logging(int(torch.distributed.get_rank()))  # the teacher's run set its own
    return summary
