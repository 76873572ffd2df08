"""The run planner's rates measured on this machine (:mod:`streamfit.plan`), each on its own:
decoding, the cached loader path, fitting, the library's GS training step, a zero-shot
evaluation and a checkpoint; and the offline demo itself, shrunk, run right after them so
the plan and the run see the same machine load (the demo check)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from streamfit.benchmark import synthetic_images, timed_fit
from streamfit.config import load_config, to_yaml
from streamfit.data import DataConfig, build_loader
from streamfit.data.decode import decode_image
from streamfit.data.local_images import ImageSource, load_images
from streamfit.data.synthetic import write_synthetic_dataset
from streamfit.eval import zero_shot, zero_shot_setup
from streamfit.fit import FitConfig, FitGraphs, get_backend
from streamfit.models import build_gs_clip, load_teacher, zero_shot_encoder
from streamfit.plan import LIVE_DEMO, PRESETS, Dataset, Rates, Recipe, fit_rate_from_json
from streamfit.train.checkpoint import save_checkpoint, save_weights
from streamfit.train.config import AdaptConfig
from streamfit.train.distributed import init_distributed
from streamfit.train.engine import clips_itself
from streamfit.train.gs import splat_loss
from streamfit.train.loop import build_trainer_engine, train_step
from streamfit.train.metrics import StepTimer
from streamfit.train.run import lockstep

ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = ROOT / "recipes" / "configs" / "tiny_cpu.yaml"
DECODE_IMAGES = 32  # JPEGs decoded to time decoding


def demo_config() -> AdaptConfig:
    """The offline demo's settings (``recipes/configs/tiny_cpu.yaml``)."""
    return load_config(AdaptConfig, str(DEMO_CONFIG), [])


def decode_rate(blobs: list[bytes], size: int, max_pixels: int) -> float:
    """Images/s decoding and resizing ``blobs`` to ``size`` on one thread, as the loader
    decodes (:func:`streamfit.data.decode.decode_image`), after one decode to warm up."""
    decode_image(blobs[0], size, max_pixels)
    start = time.perf_counter()
    for blob in blobs:
        decode_image(blob, size, max_pixels)
    return len(blobs) / (time.perf_counter() - start)


def loader_rate(data_cfg: DataConfig, fit_cfg: FitConfig) -> float:
    """Cached samples/s per CPU core of ``data_cfg``'s loader: its first epoch fits (and
    fills the cache), the second reads every sample from the cache."""
    loader = build_loader(data_cfg, fit_cfg)
    for epoch in range(2):
        loader.set_epoch(epoch)
        list(loader)
    stats = loader.epoch_stats(1)
    return stats.samples / stats.seconds / (os.cpu_count() or 1)


def measure_cpu_rates(rates: Rates, data: Dataset, recipe: Recipe) -> Rates:
    """Fill the CPU rates ``rates`` lacks, measured here: decoding synthetic JPEGs of the
    dataset's typical size to the recipe's, and the demo's cached loader path on a small
    synthetic set (its cost is per sample: reading, hashing, looking up, tokenizing)."""
    cfg = demo_config()
    if not rates.decode:
        side = round(data.source_pixels**0.5)
        blobs = []
        for image in synthetic_images(DECODE_IMAGES, side):
            out = io.BytesIO()
            Image.fromarray((image * 255).byte().numpy()).save(out, "JPEG", quality=90)
            blobs.append(out.getvalue())
        rates.decode = decode_rate(blobs, recipe.image_size, cfg.data.max_image_pixels)
        rates.sources["decode"] = f"{len(blobs)} synthetic {side}x{side} JPEGs, measured here"
    if not rates.loader:
        with tempfile.TemporaryDirectory() as tmp:
            size, batch = cfg.data.image_size, cfg.data.batch_size
            write_synthetic_dataset(tmp, 2 * batch, 1, size, batch, 0)
            data_cfg = _demo_data(cfg, tmp)
            rates.loader = loader_rate(data_cfg, replace(cfg.fit, backend="cpu", device="cpu"))
        rates.sources["loader"] = f"{2 * batch} synthetic samples from the cache, measured here"
    return rates


def _demo_data(cfg: AdaptConfig, tmp: str) -> DataConfig:
    """The demo's data settings on the first two train shards of a synthetic set in ``tmp``."""
    shards = f"{tmp}/train-{{000000..000001}}.tar"
    return replace(cfg.data, shards=shards, cache_dir=f"{tmp}/rates_cache", log_every=0)


def gs_train_rate(
    cfg: AdaptConfig,
    data_cfg: DataConfig,
    fit_cfg: FitConfig,
    world: int,
    device: torch.device,
    epochs: int = 4,
) -> tuple[float, Any, Any]:
    """Samples/s of the library's GS training step (:func:`streamfit.train.loop.train_step`
    on the recipe's DeepSpeed engine and model) fed by the recipe's loader: the steady rate
    over ``epochs - 1`` epochs read from the cache, leaving out the first epoch (it fits and
    warms up) and each epoch's first step (the loader's start). Returns (rate, engine,
    loader)."""
    model = build_gs_clip(replace(cfg.model, pretrained=None))
    groups = model.param_groups(cfg.train.lr, cfg.train.weight_decay)
    engine, precision = build_trainer_engine(model, groups, cfg.train, data_cfg, world, device)
    clip = cfg.train.grad_clip if clips_itself(cfg.train, precision) else 0.0
    loader = build_loader(data_cfg, fit_cfg, 0, world, device=device)
    timer = StepTimer(0.0, 0.0, world, device)
    samples, seconds = 0, 0.0
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        losses = []
        for k, (batch, waited) in enumerate(lockstep(loader, device)):
            if k == 1:
                timer.window()  # the first step is left out
            losses.append(
                train_step(engine, batch, partial(splat_loss, engine), device, timer, clip)
            )
            timer.add(len(batch["keys"]), waited, batch["timing"])
        float(torch.stack(losses).sum())  # the steps are done
        window = timer.window()
        if epoch:
            samples, seconds = samples + window["samples"], seconds + window["seconds"]
    return samples / seconds, engine, loader


def measure_demo_rates(cfg: AdaptConfig, tmp: str, fit_json: Path | None) -> tuple[Rates, float]:
    """The demo's rates on this machine with the demo's config ``cfg``, on the synthetic set in
    ``tmp`` (200 of its train images, its 400 held-out ones): fitting (a benchmark_fit JSON,
    else a fit of one loader batch), decoding, the cached loader path, training
    (:func:`gs_train_rate`), evaluation (the recipe's zero-shot evaluation once its splats are
    cached) and one checkpoint. Returns (rates, seconds a checkpoint takes); CPU rates are
    per core."""
    # torch's intra-op threads, read before the Numba kernels first run: in this process
    # they share one OpenMP runtime, and torch was seen training on 1 thread after them
    threads = torch.get_num_threads()
    size, batch = cfg.data.image_size, cfg.data.batch_size
    fit_cfg = replace(cfg.fit, backend="cpu", device="cpu")
    backend = get_backend("cpu", "cpu")
    rates = Rates()
    data_cfg = _demo_data(cfg, tmp)
    rates.loader = loader_rate(data_cfg, fit_cfg)  # also warms up the kernels
    rates.sources["loader"] = f"{2 * batch} synthetic samples from the cache, measured"
    shards = [Path(tmp) / f"train-{i:06d}.tar" for i in range(2)]
    blobs = [blob for _, blob in ImageSource(shards)]
    rates.decode = decode_rate(blobs, size, data_cfg.max_image_pixels)
    rates.sources["decode"] = f"{len(blobs)} synthetic PNGs on one thread, measured"
    if fit_json is not None:
        rates.fit, rates.sources["fit"] = fit_rate_from_json(fit_json, PRESETS["demo"][2])
    else:
        pixels = load_images(shards, batch, size)
        seconds, _ = timed_fit(pixels, fit_cfg, backend, repeats=2)
        rates.fit = len(pixels) / seconds
        rates.sources["fit"] = f"fit() of {len(pixels)} synthetic images, measured (best of 2)"

    torch.set_num_threads(threads)  # as the recipe's training loop runs
    # the random backbone measured here stands for the demo's trained teacher: its
    # activations underflow into denormal floats, which slow a CPU step (TrainConfig.
    # flush_denormal); flushed, it steps as fast as the trained one, and so does the shrunk
    # demo run after
    torch.set_flush_denormal(True)
    _, world, device = init_distributed()
    train_data = replace(data_cfg, shards=f"{tmp}/train-*.tar")
    rates.train, engine, loader = gs_train_rate(cfg, train_data, fit_cfg, world, device)
    rates.sources["train"] = (
        "the library's GS step on the recipe's DeepSpeed engine, fed from the cache, measured "
        "(steady steps)"
    )
    setup = zero_shot_setup(
        replace(cfg.eval, data=f"{tmp}/heldout-*.tar", classnames=f"{tmp}/classes.json")
    )

    encode = zero_shot_encoder(engine.module)

    fitter = FitGraphs(fit_cfg, backend)

    def evaluate() -> tuple[int, float]:
        start = time.perf_counter()
        result, _ = zero_shot(
            engine.module, encode, setup, data_cfg, device, 0, world, fit_cfg, fitter
        )
        return result.samples, time.perf_counter() - start

    evaluate()  # fits (and caches) the held-out splats, as the demo's first evaluation
    images, seconds = evaluate()
    rates.eval = images / seconds
    rates.sources["eval"] = f"a zero-shot evaluation of {images} cached images, measured"
    start = time.perf_counter()
    save_checkpoint(engine, f"{tmp}/ckpt", 1, {"step": 1}, loader.state_dict(), to_yaml(cfg))
    return rates, time.perf_counter() - start


def demo_check_live(fit_json: Path | None) -> dict:
    """Measure the demo's rates (:func:`measure_demo_rates`), then run the demo itself, shrunk
    (``LIVE_DEMO``: ``recipes/gsclip_adapt.py`` with the demo's config, a random teacher, a
    fresh cache, in a subprocess), on the same synthetic set right after: rates and run see
    the same machine load. Returns the rates, the checkpoint seconds and the run's
    ``stage_seconds``."""
    cfg = demo_config()
    with tempfile.TemporaryDirectory() as tmp:
        write_synthetic_dataset(
            tmp, LIVE_DEMO["samples"], 400, cfg.data.image_size, cfg.data.batch_size, 0, n_val=400
        )
        rates, checkpoint_s = measure_demo_rates(cfg, tmp, fit_json)
        teacher = load_teacher(cfg.model.model_name, None, **cfg.model.model_kwargs)
        save_weights(teacher.state_dict(), f"{tmp}/teacher.pt")
        overrides = {
            "run.dir": f"{tmp}/runs",
            "run.name": "demo",
            "model.pretrained": f"{tmp}/teacher.pt",
            "data.shards": f"{tmp}/train-*.tar",
            "data.cache_dir": f"{tmp}/cache",
            "eval.data": f"{tmp}/heldout-*.tar",
            "eval.val_data": f"{tmp}/val-*.tar",
            "eval.classnames": f"{tmp}/classes.json",
            "train.epochs": LIVE_DEMO["epochs"],
            "train.progress": "false",
            "train.flush_denormal": "true",
        }
        cmd = [sys.executable, str(ROOT / "recipes/gsclip_adapt.py")]
        cmd += [f"{k}={v}" for k, v in overrides.items()]
        # this process joined a process group of its own to measure: the run makes a new one
        launch = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
        env = {k: v for k, v in os.environ.items() if k not in launch}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"the demo run failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
        summary = json.loads((Path(tmp) / "runs/demo/summary.json").read_text())
    return {"rates": rates, "checkpoint_s": checkpoint_s, "stages": summary["stage_seconds"]}
