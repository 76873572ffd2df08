"""GS-CLIP adaptation, the main job: splats fitted inside the data loader (with the
persistent cache) feed a GS-CLIP built around an RGB teacher; the GS stem, the resampler and
the first vision blocks train under DeepSpeed, evaluated zero-shot every epoch.

    deepspeed recipes/gsclip_adapt.py                     # the offline CPU demo
    deepspeed recipes/gsclip_adapt.py --config recipes/configs/datacomp_small_gs_adapt.yaml
    python recipes/gsclip_adapt.py train.epochs=2         # one process, no launcher

Without a teacher (``model.pretrained`` unset) it first runs the RGB pre-training
(:func:`streamfit.train.rgb.pretrain_rgb`) with ``teacher_config`` into ``{run}/teacher``.
With ``eval.val_data`` set, each stage's best epoch is chosen on that split and only the
chosen model is measured on ``eval.data``. It ends with a table of the RGB and GS zero-shot
accuracies and writes it as ``{run}/summary.json``.
"""

from __future__ import annotations

import json
import os
import sys
import time

# Fitting threads (Numba) and training threads (torch) share the cores: idle OpenMP workers
# must sleep rather than spin. Set before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from dataclasses import replace
from pathlib import Path

import torch

from streamfit.config import ConfigError, load_config
from streamfit.data import EmptyEpoch, build_loader
from streamfit.eval import ZeroShotSetup, zero_shot
from streamfit.fit import get_backend
from streamfit.models import build_gs_clip
from streamfit.report import setup_logging, write_json
from streamfit.train.config import AdaptConfig, RGBPretrainConfig, parse_args
from streamfit.train.distributed import all_sum
from streamfit.train.loop import Evaluator, Trainer, build_trainer_engine
from streamfit.train.loss import contrastive_loss
from streamfit.train.rgb import pretrain_rgb
from streamfit.train.run import begin

DEFAULT_CONFIG = str(Path(__file__).parent / "configs" / "tiny_cpu.yaml")


def train(cfg: AdaptConfig, wall_start: float) -> dict:
    """Run (or resume) the adaptation of ``cfg``; returns the summary written to
    ``{run}/summary.json``."""
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
    model = build_gs_clip(cfg.model)
    loader = build_loader(cfg.data, cfg.fit, rank, world, device=device)
    groups = model.param_groups(cfg.train.lr, cfg.train.weight_decay)
    engine, precision = build_trainer_engine(model, groups, cfg.train, cfg.data, world, device)
    backend = get_backend(cfg.fit.backend, str(device))

    def evaluate(setup: ZeroShotSetup):
        def encode(b):
            return engine.module.encode_splats(b.splats, normalize=True)

        return zero_shot(
            engine.module, encode, setup, cfg.data, device, rank, world, cfg.fit, backend, all_sum
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
    size, n_probe = cfg.data.image_size, cfg.fit.gaussians
    probe = (
        torch.zeros(1, n_probe, 8, device=device),
        torch.ones(1, n_probe, dtype=torch.bool, device=device),
        torch.zeros(1, cfg.data.context_length, dtype=torch.long, device=device),
        size,
        size,
    )
    trainer = Trainer(cfg, run_dir, engine, loader, evaluator, probe, rank, world, device)

    def loss_of(batch: dict) -> torch.Tensor:
        splats = batch["splats"]
        return contrastive_loss(
            **engine(splats.params, splats.mask, batch["tokens"].to(device), size, size)
        )

    stage_start = time.perf_counter()
    if not trainer.fit(loss_of):
        trainer.close()
        return {"stopped_at_step": trainer.state.step}
    stages["gs_adapt"] = time.perf_counter() - stage_start
    stages["gs_fitting_in_loader"] = sum(e.fit_seconds for e in loader.stats.epochs.values())

    # ---- the summary
    done = run_dir / "summary.json"
    if trainer.state.step == trainer.start_step and done.is_file():  # finished, started again
        summary = json.loads(done.read_text())
        if rank == 0:
            print_summary(summary, done)
        trainer.close()
        return summary
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
    if rank == 0:
        write_json(run_dir / "summary.json", summary)
        print_summary(summary, run_dir / "summary.json")
    trainer.close()
    return summary


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


def print_summary(summary: dict, path: Path) -> None:
    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:.1f}%"

    rows = [
        ("zero-shot top-1, RGB teacher", pct(summary["rgb_top1"])),
        ("zero-shot top-5, RGB teacher", pct(summary.get("rgb_top5"))),
        ("zero-shot top-1, GS-CLIP", pct(summary["gs_top1"])),
        ("zero-shot top-5, GS-CLIP", pct(summary["gs_top5"])),
        *(
            (f"validation top-1, {name} (chose it)", pct(summary[key]))
            for name, key in (("RGB teacher", "rgb_val_top1"), ("GS-CLIP", "gs_val_top1"))
            if summary.get(key) is not None
        ),
        ("chance top-1", pct(summary["chance_top1"])),
        ("compression ratio (vs 8-bit RGB)", f"{summary['compression_ratio'] or 0:.1f}x"),
        ("splats per image", f"{summary['splats_per_image'] or 0:.1f}"),
        ("fit cache hit rate (training)", pct(summary["cache_hit_rate"])),
        *((f"  {name} time", f"{s:.0f} s") for name, s in summary["stage_seconds"].items()),
        ("wall time", f"{summary['wall_seconds']:.0f} s"),
    ]
    width = max(len(name) for name, _ in rows)
    print("\n" + "\n".join(f"{name:<{width}}  {value:>8}" for name, value in rows))
    print(f"\nsummary: {path}")


def main(argv: list[str] | None = None) -> None:
    wall_start = time.perf_counter()
    cfg = parse_args(AdaptConfig, argv, DEFAULT_CONFIG)
    try:
        train(cfg, wall_start)
    except (ConfigError, FileNotFoundError, EmptyEpoch) as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
