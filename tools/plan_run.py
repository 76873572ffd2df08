#!/usr/bin/env python
"""Plan a run before buying it: wall time per epoch, the share of GPU time spent fitting
splats, splat-cache bytes per node, storage for a sidecar splat store, and the resource that
bounds the run, from a cluster, measured rates, a dataset and a recipe.

    python tools/plan_run.py --preset datacomp-small --fit-json runs/bench_fit_gpu.json \\
        --train-rate 1800 --json runs/plan_small.json
    python tools/plan_run.py --preset imagenet-1k --nodes 4 --schedule global   # what the old schedule costs
    python tools/plan_run.py --preset demo            # the offline demo on this machine

The model (per epoch ``e``; ``G`` GPUs, ``C`` CPU cores in all):

* cache hits: with the ``node`` schedule a node re-reads its own shards, so an epoch after
  the first is served from the cache as far as the cache holds the node's share
  (``min(1, cache_max_bytes / share bytes)``; shards in a fresh random order, so an LRU
  cache smaller than the share keeps about that fraction); with ``global`` a node has seen
  a sample before with probability ``1 - (1 - 1/nodes)^e`` (times the same capacity bound);
* GPU seconds = fitted images / (G x fit rate) + samples / (G x train rate)
  + evaluation images / (G x eval rate) (+ fitting them, the first time);
* CPU seconds = (fitted images + evaluation images) / (C x decode rate) + samples /
  (C x loader rate): cached samples are read, hashed and looked up, not decoded;
* storage seconds = samples x bytes per sample / (nodes x read bandwidth);
* epoch seconds = the largest of the three when the loader's CPU work overlaps the GPUs,
  their sum on a CPU-only machine (training, fitting and decoding share the cores; there the
  training and evaluation rates are measured with their loaders feeding them, so reading
  cached samples is inside them), plus one checkpoint.

Rates come from measurements: ``--fit-json`` (a ``tools/benchmark_fit.py`` JSON; the row of
the recipe's splats, iterations and size at the best batch, else the nearest row scaled by
iterations, FLOPs per iteration and pixels), or the flags. What was not measured falls back
to a labelled prediction or assumption, listed under ``sources``. ``--preset demo`` measures
its own rates on this machine (a 100-image fit, the recipe's DeepSpeed engine training
the demo model on 400 cached samples, a 200-sample loader pass; ~20 s) and checks the
planned epoch times against the offline demo's measured stage times in BENCHMARKS.md;
``--check-demo`` adds that check to any preset. The tool exits 1 when the check is off by
more than 25%.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from streamfit import codec
from streamfit.cli import parse_tool_args, tool_parser
from streamfit.report import print_key_values, print_table, write_json

GIB = 1024**3
# Splat-cache bytes per entry on disk = a x splat bytes + b (SQLite pages, key, settings,
# checksum), fitted to BENCHMARKS.md's data-loader cache sizes: 1.2 MB for 800 x 64 splats,
# 1.7 MB for 200 x 400 splats.
CACHE_SCALE, CACHE_ENTRY_BYTES = 1.30, 167
# Relative fitting cost per iteration per 224x224 image by splat count: the H100's measured
# seconds per image at batch 4096 (BENCHMARKS.md "CUDA backend", 2026-11-25: 4,730, 3,040,
# 2,035 and 1,527 images/s), in units of the 400-splat cost x 48.7 (the first entry keeps the
# scale of the former FLOP table, so only ratios matter).
FLOP_TABLE = ((400, 48.7), (1024, 75.8), (2025, 113.2), (3136, 150.9))
# BENCHMARKS.md "CUDA backend": measured on one H100 at batch 256 (the loader fits one
# training batch of 256 per GPU at a time), 400 splats, 100 iterations, 224x224.
MEASURED_FIT = {"images_per_s": 1450.0, "gaussians": 400, "iters": 100, "height": 224}
# The offline demo as measured (BENCHMARKS.md, "Training: the offline demo", 2026-11-25,
# 22:55): GS adaptation 5 epochs of 4000 samples, each with a zero-shot evaluation of the
# 400 validation images, and the training loader's fitting (summary.json's
# gs_fitting_in_loader).
DEMO_MEASURED = {"epochs": 5, "gs_adapt_seconds": 63.0, "fit_seconds": 12.0}
DEMO_TOLERANCE = 0.25
JUDGED = ("gs_adapt_seconds", "mean_epoch_seconds")  # the demo check's pass/fail
LIVE_DEMO = {"samples": 400, "epochs": 3}  # the shrunk demo run by the check
# Decoding + resizing to 224 on one core of this machine (2026-11-25): 700-800 images/s for
# the ~320x240 JPEGs of imagenet-sample (Decoder.decode_image, 200 photos); scaled by pixels.
MEASURED_DECODE = {"images_per_s": 750.0, "pixels": 320 * 240}
# The cached epoch of BENCHMARKS.md's data-loader table: 524 samples/s on 2 loaded cores.
MEASURED_LOADER_PER_CORE = 262.0


@dataclass
class Cluster:
    nodes: int = 8
    gpus_per_node: int = 8
    cpus_per_node: int = 96
    read_gbps: float = 1.0  # shard reading, GB/s per node
    cache_max_bytes: float = 8 * GIB  # splat cache per node (data.cache_max_bytes)
    cpu_only: bool = False  # the "GPU" is the CPU: everything shares the cores


@dataclass
class Rates:
    fit: float = 0.0  # images/s per GPU at the recipe's splats, iterations, size
    train: float = 0.0  # samples/s per GPU
    eval: float = 0.0  # images/s per GPU, forward only
    decode: float = 0.0  # images/s per CPU core (decode + resize)
    loader: float = 0.0  # cached samples/s per CPU core (read, hash, look up, tokenize)
    sources: dict[str, str] = field(default_factory=dict)


@dataclass
class Dataset:
    samples: int
    shards: int
    bytes_per_sample: float
    source_pixels: float = 512 * 384  # a typical stored image, for the decode rate


@dataclass
class Recipe:
    epochs: int
    gaussians: int
    iters: int
    image_size: int = 224
    eval_samples: int = 50_000  # per evaluation, one a epoch
    schedule: str = "node"  # node | global
    checkpoint_seconds: float = 0.0  # one checkpoint a epoch (not modelled: 0)
    splat_format: str = codec.DEFAULT_FORMAT  # how the cache and splat shards store splats


PRESETS: dict[str, tuple[Cluster, Dataset, Recipe, str]] = {
    # DataComp pools as img2dataset writes them (10k samples a shard, ~40 KB a sample at
    # 512 px: assumed); small follows the paper's GS adaptation (6 epochs, 400 splats,
    # recipes/configs/datacomp_small_gs_adapt.yaml), medium and large DataComp's protocol
    # (the pool seen once).
    "datacomp-small": (
        Cluster(cache_max_bytes=600e9),
        Dataset(12_800_000, 1288, 40e3),
        Recipe(6, 400, 200),
        "DataComp small, the paper's GS adaptation",
    ),
    "datacomp-medium": (
        Cluster(cache_max_bytes=600e9),
        Dataset(128_000_000, 12_800, 40e3),
        Recipe(1, 400, 200),
        "DataComp medium, seen once",
    ),
    "datacomp-large": (
        Cluster(nodes=32, cache_max_bytes=600e9),
        Dataset(1_280_000_000, 128_000, 40e3),
        Recipe(1, 400, 200),
        "DataComp large, seen once",
    ),
    "imagenet-1k": (
        Cluster(nodes=4, cache_max_bytes=100e9),
        Dataset(1_281_167, 1282, 110e3, 500 * 375),
        Recipe(30, 400, 200),
        "ImageNet-1k train, 30 epochs (~110 KB a JPEG)",
    ),
    "demo": (
        Cluster(nodes=1, gpus_per_node=1, cpus_per_node=2, read_gbps=0.5, cpu_only=True),
        Dataset(4000, 16, 3.5e3, 64 * 64),
        Recipe(5, 64, 20, image_size=64, eval_samples=400),
        "the offline demo (recipes/configs/tiny_cpu.yaml) on this machine",
    ),
}


def flop_per_iter(gaussians: int) -> float:
    """Relative cost per iteration per 224x224 image (piecewise linear in the measured
    table)."""
    pts = FLOP_TABLE
    if gaussians <= pts[0][0]:
        return pts[0][1] * gaussians / pts[0][0]
    for (n0, f0), (n1, f1) in zip(pts, pts[1:], strict=False):
        if gaussians <= n1:
            return f0 + (f1 - f0) * (gaussians - n0) / (n1 - n0)
    (n0, f0), (n1, f1) = pts[-2], pts[-1]
    return f1 + (f1 - f0) * (gaussians - n1) / (n1 - n0)


def scale_fit_rate(row: dict, recipe: Recipe) -> float:
    """A fit rate measured at ``row``'s settings carried to the recipe's: x iterations, FLOPs
    per iteration (splats) and pixels."""
    rate = float(row["images_per_s"]) * row["iters"] / recipe.iters
    rate *= flop_per_iter(row["gaussians"]) / flop_per_iter(recipe.gaussians)
    return rate * (row["height"] / recipe.image_size) ** 2


def fit_rate_from_json(path: Path, recipe: Recipe) -> tuple[float, str]:
    """Images/s per GPU from a benchmark_fit JSON: the best batch at the recipe's splats,
    iterations and size, else the nearest row scaled (:func:`scale_fit_rate`)."""
    data = json.loads(path.read_text())
    rows = data["rows"] if isinstance(data, dict) else data
    rows = [r for r in rows if r.get("images_per_s")]
    if not rows:
        raise ValueError(f"{path}: no benchmark_fit rows with images_per_s")
    want = (recipe.gaussians, recipe.iters, recipe.image_size)
    exact = [r for r in rows if (r["gaussians"], r["iters"], r["height"]) == want]
    if exact:
        best = max(exact, key=lambda r: r["images_per_s"])
        return float(best["images_per_s"]), f"{path} (batch {best['batch']}, measured)"
    near = min(
        rows,
        key=lambda r: (
            abs(math.log(r["gaussians"] / recipe.gaussians)),
            abs(math.log(r["height"] / recipe.image_size)),
            -r["batch"],
        ),
    )
    label = (
        f"{path} row batch {near['batch']} x {near['gaussians']} splats x {near['iters']} "
        f"iters at {near['height']} px, scaled (iterations, FLOPs, pixels)"
    )
    return scale_fit_rate(near, recipe), label


def plan(cluster: Cluster, rates: Rates, data: Dataset, recipe: Recipe) -> dict:
    """Per-epoch times and the run's totals (module docstring)."""
    if data.shards < cluster.nodes and recipe.schedule == "node":
        raise ValueError(f"{data.shards} shards cannot give each of {cluster.nodes} nodes a share")
    gpus = cluster.nodes * cluster.gpus_per_node
    cores = cluster.nodes * cluster.cpus_per_node
    splat_bytes = codec.stored_size(recipe.splat_format, recipe.gaussians)
    entry = CACHE_SCALE * splat_bytes + CACHE_ENTRY_BYTES
    share = data.samples / cluster.nodes  # samples a node reads per epoch
    held = min(1.0, cluster.cache_max_bytes / (share * entry))
    epochs = []
    for e in range(recipe.epochs):
        if recipe.schedule == "node":
            seen = 1.0 if e else 0.0
        else:
            seen = 1 - (1 - 1 / cluster.nodes) ** e
        # a node's cache holds at most `held` of what it would need: beyond, LRU forgets
        hit = seen * held
        fitted = data.samples * (1 - hit)
        eval_fitted = recipe.eval_samples if e == 0 else 0
        fit_s = (fitted + eval_fitted) / (gpus * rates.fit)
        train_s = data.samples / (gpus * rates.train)
        eval_s = recipe.eval_samples / (gpus * rates.eval)
        cpu_s = fitted / (cores * rates.decode)
        if not cluster.cpu_only:  # on a CPU-only machine the measured rates include these
            cpu_s += recipe.eval_samples / (cores * rates.decode)
            cpu_s += data.samples / (cores * rates.loader)
        io_s = data.samples * data.bytes_per_sample / (cluster.nodes * cluster.read_gbps * 1e9)
        gpu_s = fit_s + train_s + eval_s
        parts = {
            "GPU fitting": fit_s,
            "GPU training": train_s + eval_s,
            "CPU decoding/loading": cpu_s,
            "storage reads": io_s,
        }
        if cluster.cpu_only:
            seconds = gpu_s + cpu_s + io_s
        else:
            seconds = max(gpu_s, cpu_s, io_s)
            parts["GPU fitting" if fit_s >= train_s + eval_s else "GPU training"] = gpu_s
        seconds += recipe.checkpoint_seconds
        epochs.append(
            {
                "epoch": e,
                "seconds": seconds,
                "cache_hit_rate": hit,
                "fitted": fitted,
                "fit_s": fit_s,
                "eval_fit_s": eval_fitted / (gpus * rates.fit),
                "train_s": train_s,
                "eval_s": eval_s,
                "cpu_s": cpu_s,
                "io_s": io_s,
                "checkpoint_s": recipe.checkpoint_seconds,
                "bound": max(parts, key=lambda k: parts[k]),
            }
        )
    total = sum(e["seconds"] for e in epochs)
    gpu_total = sum(e["fit_s"] + e["train_s"] + e["eval_s"] for e in epochs)
    time_by = {}
    for e in epochs:
        time_by[e["bound"]] = time_by.get(e["bound"], 0.0) + e["seconds"]
    tar_member = 512 + math.ceil(splat_bytes / 512) * 512  # header + padded data
    return {
        "gpus": gpus,
        "epochs": epochs,
        "wall_seconds": total,
        "wall_hours": total / 3600,
        "fit_share_of_gpu_time": sum(e["fit_s"] for e in epochs) / gpu_total,
        "cache_bytes_per_node": min(share * entry, cluster.cache_max_bytes),
        "cache_bytes_per_node_needed": share * entry,
        "cache_holds_share": held,
        "sidecar_store_bytes": data.samples * tar_member + data.shards * 1024,
        "bound_by": max(time_by, key=lambda k: time_by[k]),
    }


def measure_demo_rates(tmp: str, fit_json: Path | None) -> tuple[Rates, float]:
    """The demo's rates on this machine, each measured on its own with the demo's config on
    the synthetic set in ``tmp`` (:func:`demo_check_live`; 200 of its train images, its 400
    held-out ones): fitting (a benchmark_fit JSON, else a 100-image fit), decoding, the
    cached loader path, training (the recipe's DeepSpeed engine on the demo model fed from
    the cache, as its loop runs after the first epoch), evaluation (the recipe's zero-shot
    evaluation once its splats are cached) and one checkpoint. Returns (rates, seconds a
    checkpoint takes); CPU rates are per core."""
    import os

    import numpy as np
    import torch

    from streamfit.config import load_config, to_yaml
    from streamfit.data import build_loader
    from streamfit.data.decode import Decoder
    from streamfit.eval import zero_shot, zero_shot_setup
    from streamfit.fit import fit, get_backend
    from streamfit.models import build_gs_clip
    from streamfit.train.checkpoint import save_checkpoint
    from streamfit.train.config import AdaptConfig
    from streamfit.train.distributed import init_distributed
    from streamfit.train.engine import build_engine
    from streamfit.train.loss import contrastive_loss

    # torch's intra-op threads, read before the Numba kernels first run: in this process
    # they share one OpenMP runtime, and torch was seen training on 1 thread after them
    threads = torch.get_num_threads()
    root = Path(__file__).resolve().parents[1]
    cfg = load_config(AdaptConfig, str(root / "recipes/configs/tiny_cpu.yaml"), [])
    size, batch, cores = cfg.data.image_size, cfg.data.batch_size, os.cpu_count() or 1
    fit_cfg = replace(cfg.fit, backend="cpu", device="cpu")
    backend = get_backend("cpu", "cpu")
    rates = Rates()
    data_cfg = replace(
        cfg.data,
        shards=f"{tmp}/train-{{000000..000001}}.tar",
        cache_dir=f"{tmp}/rates_cache",
        log_every=0,
    )
    loader = build_loader(data_cfg, fit_cfg)
    list(loader)  # epoch 0 fits (and warms up the kernels)
    list(loader)  # epoch 1 comes from the cache
    rates.loader = 2 * batch / loader.epoch_stats(1).seconds / cores
    rates.sources["loader"] = f"{2 * batch} synthetic samples from the cache, measured"
    dec = Decoder(size, data_cfg.max_image_pixels, need_image=True)
    raw = [s.members["png"] for s in _raw_samples(loader.reader.shards)]
    start = time.perf_counter()
    images = [dec.decode_image(blob) for blob in raw]
    rates.decode = len(raw) / (time.perf_counter() - start)
    rates.sources["decode"] = f"{len(raw)} synthetic PNGs on one thread, measured"
    if fit_json is not None:
        rates.fit, rates.sources["fit"] = fit_rate_from_json(fit_json, PRESETS["demo"][2])
    else:
        pixels = torch.from_numpy(np.stack(images[:batch])).float() / 255.0
        seconds = []
        for _ in range(2):  # the faster of two, as benchmark_fit takes the best repeat
            start = time.perf_counter()
            fit(pixels, fit_cfg, backend)
            seconds.append(time.perf_counter() - start)
        rates.fit = len(pixels) / min(seconds)
        rates.sources["fit"] = f"fit() of {len(pixels)} synthetic images, measured"

    rank, world, device = init_distributed()
    torch.set_num_threads(threads)  # as the recipe's training loop runs
    # the random backbone measured here stands for the demo's trained teacher: its
    # activations underflow into denormal floats, which slow a CPU step ~20% (TrainConfig.
    # flush_denormal); flushed, it steps as fast as the trained one, and so does the shrunk
    # demo below
    torch.set_flush_denormal(True)
    model = build_gs_clip(replace(cfg.model, pretrained=None))
    groups = model.param_groups(cfg.train.lr, cfg.train.weight_decay)
    engine, _ = build_engine(model, groups, cfg.train, batch, world, 100, device)
    # the steady rate of training steps: the demo's epochs are 40 steps long, so a loader's
    # start at each epoch is lost in them, but not in these epochs of 4 steps; each epoch's
    # first step is left out of the timing
    train_loader = build_loader(replace(data_cfg, shards=f"{tmp}/train-*.tar"), fit_cfg)

    def step(b: dict) -> int:
        splats = b["splats"]
        out = engine(splats.params, splats.mask, b["tokens"], size, size)
        loss = contrastive_loss(**out)
        engine.backward(loss)
        engine.step()
        loss.item()
        return len(b["keys"])

    samples, seconds = 0, 0.0
    for epoch in range(4):  # the first fits the shards not yet cached and warms up
        batches = iter(train_loader)
        step(next(batches))
        start = time.perf_counter()
        counted = sum(step(b) for b in batches)
        if epoch:
            samples += counted
            seconds += time.perf_counter() - start
    rates.train = samples / seconds
    rates.sources["train"] = (
        f"{samples} samples through the recipe's DeepSpeed engine from the cache, measured "
        "(steady steps)"
    )
    setup = zero_shot_setup(
        replace(cfg.eval, data=f"{tmp}/heldout-*.tar", classnames=f"{tmp}/classes.json")
    )

    def evaluate() -> float:
        start = time.perf_counter()
        zero_shot(
            engine.module,
            lambda b: engine.module.encode_splats(b.splats, normalize=True),
            setup,
            data_cfg,
            device,
            rank,
            world,
            fit_cfg,
            backend,
        )
        return time.perf_counter() - start

    evaluate()  # fits (and caches) the held-out splats, as the demo's first evaluation
    rates.eval = 400 / evaluate()
    rates.sources["eval"] = "a zero-shot evaluation of 400 cached images, measured"
    start = time.perf_counter()
    save_checkpoint(engine, f"{tmp}/ckpt", 1, {"step": 1}, loader.state_dict(), to_yaml(cfg))
    checkpoint_s = time.perf_counter() - start
    return rates, checkpoint_s


def _raw_samples(shards: list[str]):
    from streamfit.data.shards import iter_tar_samples, open_shard

    for i, shard in enumerate(shards):
        with open_shard(shard) as stream:
            yield from iter_tar_samples(stream, shard, i)


def default_rates(recipe: Recipe, data: Dataset, rates: Rates) -> Rates:
    """Fill what was not given: the predicted GPU fit rate (scaled to the recipe), the CPU
    rates measured here (decoding scaled to the dataset's image size) and assumptions for
    training and evaluation, each labelled in ``sources``."""
    if not rates.fit:
        rates.fit = scale_fit_rate({**MEASURED_FIT, "batch": 256}, recipe)
        rates.sources["fit"] = (
            "H100 rate at batch 256 measured 2026-11-25 (BENCHMARKS.md), scaled: give --fit-json"
        )
    if not rates.train:
        rates.train = 1500.0
        rates.sources["train"] = "assumed 1500 samples/s per GPU: give --train-rate"
    if not rates.eval:
        rates.eval = 3 * rates.train
        rates.sources["eval"] = "assumed 3x the training rate (forward only)"
    if not rates.decode:
        rates.decode = MEASURED_DECODE["images_per_s"] * MEASURED_DECODE["pixels"]
        rates.decode /= data.source_pixels
        rates.sources["decode"] = "measured on ~320x240 JPEGs here, scaled by pixels"
    if not rates.loader:
        rates.loader = MEASURED_LOADER_PER_CORE
        rates.sources["loader"] = "BENCHMARKS.md cached epoch, per core (2 loaded cores)"
    return rates


def demo_check_live(fit_json: Path | None) -> dict:
    """Measure the demo's rates (:func:`measure_demo_rates`), then run the demo itself, shrunk
    to 400 training images and 3 epochs (``recipes/gsclip_adapt.py`` with the demo's config,
    a random teacher, a fresh cache, in a subprocess), on the same synthetic set right after:
    rates and run see the same machine load. Returns the rates, the checkpoint seconds and
    the run's ``stage_seconds``."""
    import os
    import subprocess

    from streamfit.config import load_config
    from streamfit.data.synthetic import write_synthetic_dataset
    from streamfit.models import load_teacher
    from streamfit.train.checkpoint import save_weights
    from streamfit.train.config import AdaptConfig

    root = Path(__file__).resolve().parents[1]
    cfg = load_config(AdaptConfig, str(root / "recipes/configs/tiny_cpu.yaml"), [])
    train, epochs = LIVE_DEMO["samples"], LIVE_DEMO["epochs"]
    with tempfile.TemporaryDirectory() as tmp:
        write_synthetic_dataset(
            tmp, train, 400, cfg.data.image_size, cfg.data.batch_size, 0, n_val=400
        )
        rates, checkpoint_s = measure_demo_rates(tmp, fit_json)
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
            "train.epochs": epochs,
            "train.progress": "false",
            "train.flush_denormal": "true",
        }
        cmd = [sys.executable, str(root / "recipes/gsclip_adapt.py")]
        cmd += [f"{k}={v}" for k, v in overrides.items()]
        # this process joined a process group of its own to measure: the run makes a new one
        launch = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
        env = {k: v for k, v in os.environ.items() if k not in launch}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
        done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"the demo run failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
        summary = json.loads((Path(tmp) / "runs/demo/summary.json").read_text())
    return {"rates": rates, "checkpoint_s": checkpoint_s, "stages": summary["stage_seconds"]}


def compare(plan_out: dict, gs_adapt_seconds: float, fit_seconds: float, source: str) -> dict:
    """Planned demo epochs against measured stage times: the GS stage (all epochs with their
    evaluations and checkpoints) and the training loader's fitting."""
    epochs = plan_out["epochs"]
    planned = {
        "gs_adapt_seconds": plan_out["wall_seconds"],
        "mean_epoch_seconds": plan_out["wall_seconds"] / len(epochs),
        "fit_seconds": sum(e["fit_s"] - e["eval_fit_s"] for e in epochs),
    }
    measured = {
        "gs_adapt_seconds": gs_adapt_seconds,
        "mean_epoch_seconds": gs_adapt_seconds / len(epochs),
        "fit_seconds": fit_seconds,
    }
    errors = {k: planned[k] / measured[k] - 1 for k in planned}
    return {
        "planned": planned,
        "measured": measured,
        "measured_by": source,
        "relative_error": errors,
        # the epoch times decide; the loader's own fitting seconds are shown, not judged: on
        # a CPU-only machine its thread shares the cores with training, so they stretch by
        # the overlap while the epoch (what the plan adds up) does not
        "ok": all(abs(errors[k]) <= DEMO_TOLERANCE for k in JUDGED),
    }


def demo_checks(live: dict, summary: Path | None) -> dict:
    """The demo planned from the live rates against (``now``) the shrunk demo run measured
    right after them and (``reference``) the full demo's stage times: BENCHMARKS.md's, or
    those of a demo run's ``summary.json``."""
    cluster, data, recipe, _ = PRESETS["demo"]
    recipe = replace(recipe, checkpoint_seconds=live["checkpoint_s"])
    shrunk = replace(data, samples=LIVE_DEMO["samples"], shards=LIVE_DEMO["samples"] // 100)
    now = plan(cluster, live["rates"], shrunk, replace(recipe, epochs=LIVE_DEMO["epochs"]))
    stages = live["stages"]
    checks = {
        "now": compare(
            now, stages["gs_adapt"], stages["gs_fitting_in_loader"], "the shrunk demo, run now"
        )
    }
    full = plan(cluster, live["rates"], data, recipe)
    if summary is not None:
        ref = json.loads(summary.read_text())["stage_seconds"]
        checks["reference"] = compare(
            full, ref["gs_adapt"], ref["gs_fitting_in_loader"], str(summary)
        )
    else:
        checks["reference"] = compare(
            full, DEMO_MEASURED["gs_adapt_seconds"], DEMO_MEASURED["fit_seconds"], "BENCHMARKS.md"
        )
    return checks


@dataclass
class PlanConfig:
    """A preset, and what to change of it (unset: the preset's value); the rates given here
    replace measured or assumed ones."""

    preset: str = "datacomp-small"
    # cluster
    nodes: int | None = None
    gpus_per_node: int | None = None
    cpus_per_node: int | None = None
    read_gbps: float | None = None  # shard reading, GB/s per node
    cache_max_bytes: float | None = None  # splat cache per node
    # measured rates
    fit_json: str | None = None  # a tools/benchmark_fit.py JSON
    fit_rate: float | None = None  # fit images/s per GPU
    train_rate: float | None = None  # training samples/s per GPU
    eval_rate: float | None = None  # evaluation images/s per GPU
    decode_rate: float | None = None  # image decodes/s per CPU core
    loader_rate: float | None = None  # cached samples/s per CPU core
    # dataset and recipe
    samples: int | None = None
    shards: int | None = None
    bytes_per_sample: float | None = None
    epochs: int | None = None
    gaussians: int | None = None
    iters: int | None = None
    image_size: int | None = None
    eval_samples: int | None = None
    schedule: str | None = None  # node | global
    splat_format: str | None = None  # q64 | fp16

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {', '.join(sorted(PRESETS))}")
        if self.schedule not in (None, "node", "global"):
            raise ValueError(f"schedule must be node or global, got {self.schedule!r}")
        if self.splat_format not in (None, *codec.STORAGE_FORMATS):
            raise ValueError(f"splat_format must be one of {codec.STORAGE_FORMATS}")
        for name, value in asdict(self).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, PlanConfig]:
    p = tool_parser(__doc__, PlanConfig)
    p.add_argument("--preset", choices=sorted(PRESETS), help="default datacomp-small")
    g = p.add_argument_group("cluster")
    g.add_argument("--nodes", type=int)
    g.add_argument("--gpus-per-node", type=int)
    g.add_argument("--cpus-per-node", type=int)
    g.add_argument("--read-gbps", type=float, help="shard reading, GB/s per node")
    g.add_argument("--cache-max-bytes", type=float, help="splat cache per node")
    g = p.add_argument_group("measured rates")
    g.add_argument("--fit-json", help="tools/benchmark_fit.py JSON")
    g.add_argument("--fit-rate", type=float, help="fit images/s per GPU")
    g.add_argument("--train-rate", type=float, help="training samples/s per GPU")
    g.add_argument("--eval-rate", type=float, help="evaluation images/s per GPU")
    g.add_argument("--decode-rate", type=float, help="image decodes/s per CPU core")
    g.add_argument("--loader-rate", type=float, help="cached samples/s per CPU core")
    g = p.add_argument_group("dataset and recipe")
    g.add_argument("--samples", type=int)
    g.add_argument("--shards", type=int)
    g.add_argument("--bytes-per-sample", type=float)
    g.add_argument("--epochs", type=int)
    g.add_argument("--gaussians", type=int)
    g.add_argument("--iters", type=int)
    g.add_argument("--image-size", type=int)
    g.add_argument("--eval-samples", type=int)
    g.add_argument("--schedule", choices=("node", "global"))
    g.add_argument("--splat-format", choices=codec.STORAGE_FORMATS, help="default q64")
    p.add_argument(
        "--check-demo",
        action="store_true",
        help="also plan the offline demo from rates measured here and compare (exit 1 if >25%%)",
    )
    p.add_argument(
        "--demo-summary",
        type=Path,
        help="compare with this demo run's summary.json instead of BENCHMARKS.md's figures",
    )
    p.add_argument("--json", type=Path, help="write the plan here")
    return parse_tool_args(p, PlanConfig, argv)


def resolve(cfg: PlanConfig, live: dict | None) -> tuple[Cluster, Rates, Dataset, Recipe, str]:
    """The preset with the settings given on top (the demo's rates: those ``live`` measured)."""
    cluster, data, recipe, title = PRESETS[cfg.preset]

    def given(obj, names: tuple[str, ...]):
        return replace(obj, **{n: getattr(cfg, n) for n in names if getattr(cfg, n) is not None})

    cluster = given(
        cluster, ("nodes", "gpus_per_node", "cpus_per_node", "read_gbps", "cache_max_bytes")
    )
    data = given(data, ("samples", "shards", "bytes_per_sample"))
    recipe = given(
        recipe,
        ("epochs", "gaussians", "iters", "image_size", "eval_samples", "schedule", "splat_format"),
    )
    if live is not None and cfg.preset == "demo":
        rates = live["rates"]
        recipe = replace(recipe, checkpoint_seconds=live["checkpoint_s"])
    else:
        rates = Rates()
        if cfg.fit_json is not None:
            rates.fit, rates.sources["fit"] = fit_rate_from_json(Path(cfg.fit_json), recipe)
    for name in ("fit", "train", "eval", "decode", "loader"):
        value = getattr(cfg, f"{name}_rate")
        if value is not None:
            setattr(rates, name, value)
            rates.sources[name] = f"given ({name}_rate)"
    return cluster, default_rates(recipe, data, rates), data, recipe, title


def report(
    title: str, cluster: Cluster, rates: Rates, data: Dataset, recipe: Recipe, out: dict
) -> None:
    print(
        f"# {title}: {cluster.nodes} nodes x {cluster.gpus_per_node} GPUs, "
        f"{cluster.cpus_per_node} cores and {cluster.read_gbps:g} GB/s of shard reads a node; "
        f"{recipe.schedule} schedule; {recipe.epochs} epochs x {data.samples} samples, "
        f"{recipe.gaussians} splats, {recipe.iters} iterations"
    )
    print_table(
        ["epoch", "seconds", "hit%", "fit s", "train s", "cpu s", "io s", "bound"],
        [
            [
                e["epoch"], e["seconds"], 100 * e["cache_hit_rate"], e["fit_s"],
                e["train_s"] + e["eval_s"], e["cpu_s"], e["io_s"], e["bound"],
            ]
            for e in out["epochs"]
        ],
        ["", ".1f", ".0f", ".1f", ".1f", ".1f", ".1f"],
    )  # fmt: skip
    print_key_values(
        {
            "wall time": f"{out['wall_hours']:.2f} h ({out['wall_seconds']:.0f} s)",
            "GPU time fitting": f"{100 * out['fit_share_of_gpu_time']:.1f}%",
            "cache per node": f"{out['cache_bytes_per_node'] / GIB:.1f} GiB "
            f"(holds {100 * out['cache_holds_share']:.0f}% of the node's share)",
            "sidecar store": f"{out['sidecar_store_bytes'] / GIB:.1f} GiB",
            "bounded by": out["bound_by"],
        }
    )
    print("rates:")
    print_table(
        ["rate", "per s", "source"],
        [[name, getattr(rates, name), source] for name, source in rates.sources.items()],
        ["", ".1f"],
    )


def main(argv: list[str] | None = None) -> int:
    args, cfg = parse_args(argv)
    try:
        live = None
        if cfg.preset == "demo" or args.check_demo:
            fit_json = Path(cfg.fit_json) if cfg.fit_json and cfg.preset == "demo" else None
            live = demo_check_live(fit_json)
        cluster, rates, data, recipe, title = resolve(cfg, live)
        out = plan(cluster, rates, data, recipe)
    except (ValueError, KeyError, OSError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    report(title, cluster, rates, data, recipe, out)
    result = {
        "preset": cfg.preset,
        "cluster": asdict(cluster),
        "dataset": asdict(data),
        "recipe": asdict(recipe),
        "rates": asdict(rates),
        **out,
    }
    code = 0
    if live is not None:
        checks = demo_checks(live, args.demo_summary)
        result["demo_check"] = {**checks, "rates": asdict(live["rates"]), "tolerance": 0.25}
        print("\ndemo check: the demo planned from rates measured here, against")
        for check in checks.values():
            errors = ", ".join(
                f"{k} {check['planned'][k]:.1f} vs {check['measured'][k]:.1f} ({100 * v:+.0f}%)"
                for k, v in check["relative_error"].items()
            )
            verdict = "ok" if check["ok"] else "off by more than 25%"
            print(f"  {check['measured_by']}: {errors}: {verdict}")
        code = 0 if checks["now"]["ok"] else 1
    if args.json:
        write_json(args.json, result)
    return code


if __name__ == "__main__":
    sys.exit(main())
