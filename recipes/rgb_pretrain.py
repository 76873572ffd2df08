"""RGB CLIP pre-training, the first stage: an open_clip CLIP trained contrastively on the RGB
batches of the streaming data graph, evaluated zero-shot every epoch; the best epoch's
weights (``best_model.pt``) are the teacher ``gsclip_adapt.py`` loads.

    deepspeed recipes/rgb_pretrain.py --config recipes/configs/datacomp_small_rgb.yaml
    python recipes/rgb_pretrain.py train.epochs=2           # one process, no launcher

With no ``--config`` it trains the small CPU teacher of the offline demo.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

# Loader threads and training threads share the cores: idle OpenMP workers must sleep rather
# than spin. Set before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
from open_clip.model import get_model_preprocess_cfg
from tqdm import tqdm

from streamfit.config import ConfigError, to_yaml
from streamfit.data import EmptyEpoch, build_loader
from streamfit.models import load_teacher
from streamfit.report import write_json
from streamfit.train.checkpoint import (
    find_checkpoint,
    load_checkpoint,
    save_checkpoint,
    save_weights,
)
from streamfit.train.config import RGBPretrainConfig, check_inputs, parse_args
from streamfit.train.distributed import init_distributed
from streamfit.train.engine import build_engine, clip_param_groups, group_lrs
from streamfit.train.loss import contrastive_loss
from streamfit.train.metrics import MetricsWriter, StepTimer, count_flops, peak_flops
from streamfit.train.run import (
    count_samples,
    ensure_data,
    lockstep,
    scheduled_steps,
    start_run,
    zero_shot,
    zero_shot_setup,
)

DEFAULT_CONFIG = str(Path(__file__).parent / "configs" / "tiny_cpu_rgb.yaml")


def train(cfg: RGBPretrainConfig) -> dict:
    """Run (or resume) the pre-training of ``cfg``; returns the summary also written to
    ``{run}/summary.json`` (``best_top1``, ``best_model``: the teacher weights' path, ...)."""
    wall_start = time.perf_counter()
    rank, world, device = init_distributed()
    run_dir = start_run(cfg.run, cfg, rank)
    ensure_data(cfg.data, cfg.synthetic, rank)
    check_inputs(cfg)
    torch.manual_seed(cfg.run.seed)

    # ---- model, data, engine
    model = load_teacher(cfg.model.model_name, cfg.model.pretrained, **cfg.model.model_kwargs)
    # the RGB stage reads pixels only: no fitting backend, no splats, no cache
    data_cfg = replace(cfg.data, yield_rgb=True, cache_dir="", fit="none")
    loader = build_loader(data_cfg, None, rank, world, device=device)
    samples = cfg.train.samples_per_epoch or count_samples(data_cfg.shards)
    total_steps = scheduled_steps(
        samples, cfg.train.epochs, data_cfg.batch_size, cfg.train.grad_accum, world
    )
    groups = clip_param_groups(model, cfg.train.lr, cfg.train.weight_decay)
    engine, precision = build_engine(
        model, groups, cfg.train, data_cfg.batch_size, world, total_steps, device
    )
    dtype = next(engine.module.parameters()).dtype
    pre = get_model_preprocess_cfg(engine.module)
    mean = torch.tensor(pre["mean"], device=device).view(1, 3, 1, 1)
    std = torch.tensor(pre["std"], device=device).view(1, 3, 1, 1)

    def normalise(rgb: torch.Tensor) -> torch.Tensor:
        """``[B, 3, S, S]`` 0..1 -> the model's input (mean/std, its dtype)."""
        return ((rgb - mean) / std).to(dtype)

    zs = zero_shot_setup(cfg.eval)
    metrics = MetricsWriter(run_dir, rank == 0)
    ckpt_dir = run_dir / "checkpoints"
    best_path = run_dir / "best_model.pt"
    state = {"step": 0, "micro_step": 0, "epoch": 0, "mid_epoch": False, "best_top1": -1.0}
    resume_from = find_checkpoint(cfg.run.resume, ckpt_dir)
    if resume_from is not None:
        client_state, loader_state = load_checkpoint(engine, resume_from)
        state.update({k: client_state[k] for k in state})
        # always: the finished epochs' loader stats come back even at an epoch boundary
        # (where set_epoch below then starts the next epoch afresh)
        loader.load_state_dict(loader_state)
    start_step = state["step"]

    def evaluate() -> dict:
        result, extras = zero_shot(
            engine.module,
            lambda b: engine.module.encode_image(normalise(b.rgb), normalize=True),
            zs,
            data_cfg,
            device,
            rank,
            world,
        )
        values = {**result.to_dict(), **extras, "epoch": state["epoch"]}
        metrics.log(state["step"], "eval", values)
        if rank == 0:
            print(f"eval step {state['step']}: top-1 {result.top1:.3f} top-5 {result.top5:.3f}")
        if result.top1 > state["best_top1"]:
            state["best_top1"] = result.top1
            if rank == 0:
                save_weights(engine.module.state_dict(), best_path)
        return values

    def checkpoint() -> None:
        save_checkpoint(
            engine,
            ckpt_dir,
            state["step"],
            state,
            loader.state_dict(),
            to_yaml(cfg),
            cfg.train.keep_checkpoints,
        )

    probe = (
        torch.zeros(1, 3, data_cfg.image_size, data_cfg.image_size, dtype=dtype, device=device),
        torch.zeros(1, data_cfg.context_length, dtype=torch.long, device=device),
    )
    timer = StepTimer(
        count_flops(engine.module, *probe), peak_flops(cfg.train.peak_tflops, device), world
    )
    losses: list[float] = []
    checkpoint_due = False
    every = cfg.train.checkpoint_every_steps

    # ---- the loop
    for epoch in range(state["epoch"], cfg.train.epochs):
        if not state["mid_epoch"]:
            loader.set_epoch(epoch)
        state.update(epoch=epoch, mid_epoch=True)
        bar = tqdm(desc=f"epoch {epoch}", unit="step", disable=rank != 0 or not cfg.train.progress)
        for batch, waited in lockstep(loader, device):
            images = normalise(batch["rgb"])
            image_features, text_features, logit_scale = engine(images, batch["tokens"].to(device))[
                :3
            ]
            loss = contrastive_loss(image_features, text_features, logit_scale)
            engine.backward(loss)
            engine.step()
            losses.append(loss.item())
            timer.add(len(batch["keys"]), waited, None)
            bar.update()
            state["micro_step"] += 1
            if state["micro_step"] % cfg.train.grad_accum:
                continue  # inside an accumulation: nothing below applies yet
            # open_clip's bound on the temperature: logits at most 100x the cosine
            with torch.no_grad():
                engine.module.logit_scale.clamp_(0, math.log(100))
            state["step"] += 1
            step = state["step"]
            if step % cfg.train.log_every == 0:
                values = {"loss": sum(losses) / len(losses), **timer.window()}
                values.update({f"lr/{k}": v for k, v in group_lrs(engine).items()})
                values["epoch"] = epoch
                metrics.log(step, "train", values)
                bar.set_postfix(loss=f"{values['loss']:.3f}", sps=f"{values['samples_per_s']:.0f}")
                losses.clear()
            if cfg.train.eval_every_steps and step % cfg.train.eval_every_steps == 0 and zs:
                evaluate()
            if checkpoint_due or (every and step % every == 0):
                checkpoint()
                checkpoint_due = False
            if cfg.train.stop_after_steps and step - start_step >= cfg.train.stop_after_steps:
                bar.close()
                checkpoint()
                print(f"stopped after {step - start_step} steps (train.stop_after_steps)")
                return {"stopped_at_step": step}
        bar.close()
        state.update(epoch=epoch + 1, mid_epoch=False)
        if zs and not cfg.train.eval_every_steps:
            evaluate()
        # A checkpoint mid-accumulation would lose the accumulated gradients: wait for the
        # next optimiser step.
        if state["micro_step"] % cfg.train.grad_accum:
            checkpoint_due = True
        elif not (every and state["step"] % every == 0):  # not just written by the step above
            checkpoint()

    # ---- the end
    if rank == 0:
        save_weights(engine.module.state_dict(), run_dir / "final_model.pt")
        if not best_path.exists():  # no evaluation configured: the last weights are the best
            save_weights(engine.module.state_dict(), best_path)
    summary = {
        "best_top1": state["best_top1"] if state["best_top1"] >= 0 else None,
        "best_model": str(best_path),
        "steps": state["step"],
        "precision": precision,
        "wall_seconds": time.perf_counter() - wall_start,
    }
    if rank == 0:
        write_json(run_dir / "summary.json", summary)
    metrics.close()
    return summary


def main(argv: list[str] | None = None) -> None:
    cfg = parse_args(RGBPretrainConfig, argv, DEFAULT_CONFIG)
    try:
        summary = train(cfg)
    except (ConfigError, FileNotFoundError, EmptyEpoch) as err:
        sys.exit(f"error: {err}")
    print(f"teacher weights: {summary.get('best_model')}")


if __name__ == "__main__":
    main()
