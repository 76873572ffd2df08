"""GS-CLIP adaptation, the main job: splats fitted inside the data loader (with the
persistent cache) feed a GS-CLIP built around an RGB teacher; the GS stem, the resampler and
the first vision blocks train under DeepSpeed, evaluated zero-shot every epoch.

    deepspeed recipes/gsclip_adapt.py                     # the offline CPU demo
    deepspeed recipes/gsclip_adapt.py --config recipes/configs/datacomp_small_gs_adapt.yaml
    python recipes/gsclip_adapt.py train.epochs=2         # one process, no launcher

Without a teacher (``model.pretrained`` unset) it first runs ``rgb_pretrain.py`` with
``teacher_config`` into ``{run}/teacher``. It ends with a table of the RGB and GS zero-shot
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
from tqdm import tqdm

# the RGB stage lives beside this file (recipes/ is a folder of scripts, not a package)
sys.path.insert(0, str(Path(__file__).parent))
import rgb_pretrain  # noqa: E402

from streamfit.config import ConfigError, load_config, to_yaml  # noqa: E402
from streamfit.data import EmptyEpoch, build_loader  # noqa: E402
from streamfit.fit import get_backend  # noqa: E402
from streamfit.models import build_gs_clip  # noqa: E402
from streamfit.report import write_json  # noqa: E402
from streamfit.train.checkpoint import find_checkpoint, load_checkpoint, save_checkpoint  # noqa: E402
from streamfit.train.config import (  # noqa: E402
    AdaptConfig,
    RGBPretrainConfig,
    check_inputs,
    parse_args,
)
from streamfit.train.distributed import all_sum, init_distributed  # noqa: E402
from streamfit.train.engine import build_engine, group_lrs  # noqa: E402
from streamfit.train.loss import contrastive_loss  # noqa: E402
from streamfit.train.metrics import MetricsWriter, StepTimer, count_flops, peak_flops  # noqa: E402
from streamfit.train.run import (  # noqa: E402
    count_samples,
    ensure_data,
    lockstep,
    scheduled_steps,
    setup_logging,
    start_run,
    zero_shot,
    zero_shot_setup,
)

DEFAULT_CONFIG = str(Path(__file__).parent / "configs" / "tiny_cpu.yaml")


def train(cfg: AdaptConfig, wall_start: float) -> dict:
    """Run (or resume) the adaptation of ``cfg``; returns the summary written to
    ``{run}/summary.json``."""
    rank, world, device = init_distributed()
    run_dir = start_run(cfg.run, cfg, rank)
    ensure_data(cfg.data, cfg.synthetic, rank)
    check_inputs(cfg)
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
    size = cfg.data.image_size
    samples = cfg.train.samples_per_epoch or count_samples(cfg.data.shards)
    total_steps = scheduled_steps(
        samples, cfg.train.epochs, cfg.data.batch_size, cfg.train.grad_accum, world
    )
    groups = model.param_groups(cfg.train.lr, cfg.train.weight_decay)
    engine, precision = build_engine(
        model, groups, cfg.train, cfg.data.batch_size, world, total_steps, device
    )
    backend = get_backend(cfg.fit.backend, str(device))
    zs = zero_shot_setup(cfg.eval)
    metrics = MetricsWriter(run_dir, rank == 0)
    ckpt_dir = run_dir / "checkpoints"
    state = {"step": 0, "micro_step": 0, "epoch": 0, "mid_epoch": False, "last_eval": {}}
    resume_from = find_checkpoint(cfg.run.resume, ckpt_dir)
    if resume_from is not None:
        client_state, loader_state = load_checkpoint(engine, resume_from)
        state.update({k: client_state[k] for k in state})
        # always: the finished epochs' loader stats come back even at an epoch boundary
        # (where set_epoch below then starts the next epoch afresh)
        loader.load_state_dict(loader_state)
    start_step = state["step"]
    seen = open(run_dir / f"samples_rank{rank}.tsv", "a") if cfg.run.record_samples else None

    def evaluate() -> dict:
        result, extras = zero_shot(
            engine.module,
            lambda b: engine.module.encode_splats(b.splats, normalize=True),
            zs,
            cfg.data,
            device,
            rank,
            world,
            cfg.fit,
            backend,
        )
        values = {**result.to_dict(), **extras, "epoch": state["epoch"]}
        metrics.log(state["step"], "eval", values)
        if rank == 0:
            print(f"eval step {state['step']}: top-1 {result.top1:.3f} top-5 {result.top5:.3f}")
        state["last_eval"] = values
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

    n_probe = cfg.fit.gaussians
    probe = (
        torch.zeros(1, n_probe, 8, device=device),
        torch.ones(1, n_probe, dtype=torch.bool, device=device),
        torch.zeros(1, cfg.data.context_length, dtype=torch.long, device=device),
        size,
        size,
    )
    timer = StepTimer(
        count_flops(engine.module, *probe), peak_flops(cfg.train.peak_tflops, device), world
    )
    losses: list[float] = []
    checkpoint_due = False
    every = cfg.train.checkpoint_every_steps
    stage_start = time.perf_counter()

    # ---- the loop
    for epoch in range(state["epoch"], cfg.train.epochs):
        if not state["mid_epoch"]:
            loader.set_epoch(epoch)
        state.update(epoch=epoch, mid_epoch=True)
        bar = tqdm(desc=f"epoch {epoch}", unit="step", disable=rank != 0 or not cfg.train.progress)
        for batch, waited in lockstep(loader, device):
            splats = batch["splats"]
            out = engine(splats.params, splats.mask, batch["tokens"].to(device), size, size)
            loss = contrastive_loss(**out)
            engine.backward(loss)
            engine.step()
            losses.append(loss.item())
            timer.add(len(batch["keys"]), waited, batch["timing"])
            if seen is not None:
                seen.writelines(f"{epoch}\t{key}\n" for key in batch["keys"])
            bar.update()
            state["micro_step"] += 1
            if state["micro_step"] % cfg.train.grad_accum:
                continue  # inside an accumulation: nothing below applies yet
            state["step"] += 1
            step = state["step"]
            if step % cfg.train.log_every == 0:
                values = {"loss": sum(losses) / len(losses), **timer.window()}
                values.update({f"lr/{k}": v for k, v in group_lrs(engine).items()})
                values["epoch"] = epoch
                metrics.log(step, "train", values)
                bar.set_postfix(
                    loss=f"{values['loss']:.3f}",
                    sps=f"{values['samples_per_s']:.0f}",
                    fit=f"{values['fit_share']:.0%}",
                    hits=f"{values['cache_hit_rate']:.0%}",
                )
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
                if seen is not None:
                    seen.close()
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
    stages["gs_adapt"] = time.perf_counter() - stage_start
    stages["gs_fitting_in_loader"] = sum(e.fit_seconds for e in loader.stats.epochs.values())

    # ---- the summary
    done = run_dir / "summary.json"
    if state["step"] == start_step and done.is_file():  # a finished run, started again
        summary = json.loads(done.read_text())
        if rank == 0:
            print_summary(summary, done)
        metrics.close()
        return summary
    final = state["last_eval"]
    if zs and not final:  # the last step was not followed by an evaluation
        stage_start = time.perf_counter()
        final = evaluate()
        stages["gs_final_eval"] = time.perf_counter() - stage_start
    # hits and lookups of the training loader over the run: its stats survive a resume
    epochs = loader.stats.epochs.values()
    hits = sum(e.cache_hits for e in epochs)
    lookups = hits + sum(e.cache_misses for e in epochs)
    cache_counts = all_sum(torch.tensor([hits, lookups], dtype=torch.float64))
    summary = {
        "rgb_top1": teacher_summary.get("best_top1"),
        "gs_top1": final.get("top1"),
        "gs_top5": final.get("top5"),
        "chance_top1": final.get("chance_top1"),
        "compression_ratio": final.get("compression_ratio"),
        "splats_per_image": final.get("splats_per_image"),
        "cache_hit_rate": float(cache_counts[0] / cache_counts[1]) if cache_counts[1] else None,
        "steps": state["step"],
        "precision": precision,
        "world_size": world,
        "teacher": cfg.model.pretrained,
        "stage_seconds": stages,
        "wall_seconds": time.perf_counter() - wall_start,
    }
    if rank == 0:
        write_json(run_dir / "summary.json", summary)
        print_summary(summary, run_dir / "summary.json")
    metrics.close()
    if seen is not None:
        seen.close()
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
    summary = rgb_pretrain.train(rgb_cfg)
    setup_logging(int(torch.distributed.get_rank()))  # the teacher's run set its own
    return summary


def print_summary(summary: dict, path: Path) -> None:
    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:.1f}%"

    rows = [
        ("zero-shot top-1, RGB teacher", pct(summary["rgb_top1"])),
        ("zero-shot top-1, GS-CLIP", pct(summary["gs_top1"])),
        ("zero-shot top-5, GS-CLIP", pct(summary["gs_top5"])),
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
