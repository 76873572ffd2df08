"""RGB CLIP pre-training, the first stage: an open_clip CLIP trained contrastively on the RGB
batches of the streaming data graph and evaluated zero-shot; the chosen epoch's weights
(``best_model.pt``) are the teacher GS-CLIP is built around. ``recipes/rgb_pretrain.py``
runs it alone; ``recipes/gsclip_adapt.py`` runs it first when it has no teacher."""

from __future__ import annotations

import math
import time
from dataclasses import replace

import torch

from streamfit.data import build_loader
from streamfit.eval import ZeroShotSetup, zero_shot
from streamfit.models import example_inputs, load_teacher, rgb_normaliser, zero_shot_encoder
from streamfit.train.checkpoint import save_weights
from streamfit.train.config import RGBPretrainConfig
from streamfit.train.distributed import all_sum
from streamfit.train.engine import clip_param_groups
from streamfit.train.loop import Evaluator, Trainer, build_trainer_engine
from streamfit.train.loss import contrastive_loss
from streamfit.train.run import begin


def pretrain_rgb(cfg: RGBPretrainConfig) -> dict:
    """Run (or resume) the pre-training of ``cfg``; returns the summary also written to
    ``{run}/summary.json``: ``best_model`` (the teacher weights' path), ``best_top1`` /
    ``best_top5`` (the chosen model on ``eval.data``), ``val_top1`` (on ``eval.val_data``, the
    split that chose it, when set), ``chance_top1``, ..."""
    wall_start = time.perf_counter()
    rank, world, device, run_dir = begin(cfg)
    torch.manual_seed(cfg.run.seed)

    model = load_teacher(cfg.model.model_name, cfg.model.pretrained, **cfg.model.model_kwargs)
    # the RGB stage reads pixels only: no fitting backend, no splats, no cache
    data_cfg = replace(cfg.data, yield_rgb=True, cache_dir="", fit="none")
    loader = build_loader(data_cfg, None, rank, world, device=device)
    groups = clip_param_groups(model, cfg.train.lr, cfg.train.weight_decay)
    engine, precision = build_trainer_engine(model, groups, cfg.train, data_cfg, world, device)
    normalise = rgb_normaliser(engine.module)

    encode = zero_shot_encoder(engine.module)

    def evaluate(setup: ZeroShotSetup):
        return zero_shot(
            engine.module, encode, setup, data_cfg, device, rank, world, reduce=all_sum
        )

    every = cfg.train.eval_every_steps
    evaluator = Evaluator(cfg.eval, evaluate, engine.module, run_dir, every, rank)
    best_path = evaluator.best_path
    probe = example_inputs(engine.module, data_cfg.image_size, data_cfg.context_length)
    trainer = Trainer(cfg, run_dir, engine, loader, evaluator, probe, rank, world, device)

    def loss_of(batch: dict) -> torch.Tensor:
        tokens = batch["tokens"].to(device)
        return contrastive_loss(*engine(normalise(batch["rgb"]), tokens)[:3])

    def bound_temperature() -> None:
        # open_clip's bound on the temperature: logits at most 100x the cosine
        with torch.no_grad():
            engine.module.logit_scale.clamp_(0, math.log(100))

    if not trainer.fit(loss_of, bound_temperature):
        trainer.close()
        return {"stopped_at_step": trainer.state.step}

    if rank == 0:
        save_weights(engine.module.state_dict(), run_dir / "final_model.pt")
        if not best_path.exists():  # no evaluation configured: the last weights are the best
            save_weights(engine.module.state_dict(), best_path)
    chosen = evaluator.report(trainer.state)  # loads the best weights with a validation split
    summary = {
        "best_top1": chosen.get("top1"),
        "best_top5": chosen.get("top5"),
        "val_top1": chosen.get("val_top1"),
        "chance_top1": chosen.get("chance_top1"),
        "best_model": str(best_path),
        "steps": trainer.state.step,
        "precision": precision,
        "wall_seconds": time.perf_counter() - wall_start,
    }
    return trainer.finish(summary)
