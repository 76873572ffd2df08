"""The run planner's model: wall time per epoch, the share of GPU time spent fitting splats,
splat-cache bytes per node, storage for a sidecar splat store, and the resource that bounds a
run, from a cluster, rates, a dataset and a recipe. ``tools/plan_run.py`` is its command line;
:mod:`streamfit.plan_measure` measures rates on this machine.

Per epoch ``e`` (``G`` GPUs, ``C`` CPU cores in all):

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

Measured figures are read from committed JSON reports (``docs/benchmarks/``), never written
here: the GPU check's ``gpu_report.json``, the H100 fitting grid ``fit_h100.json`` (the
relative cost of an iteration by splat count) and the offline demo's stage times
``demo.json``.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from streamfit import codec

GIB = 1024**3
BENCHMARKS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks"
GPU_REPORT = BENCHMARKS / "gpu_report.json"  # tools/gpu_check.sh's report, committed
FIT_GRID = BENCHMARKS / "fit_h100.json"
DEMO_REFERENCE = BENCHMARKS / "demo.json"
# Splat-cache bytes per entry on disk = a x splat bytes + b (SQLite pages, key, settings,
# checksum), fitted to the cache sizes of BENCHMARKS.md's "Data loader" section.
CACHE_SCALE, CACHE_ENTRY_BYTES = 1.30, 167
LOADER_BATCH = 256  # the loader fits one training batch per GPU at a time (the paper's)
DEMO_TOLERANCE = 0.25
JUDGED = ("gs_adapt_seconds", "mean_epoch_seconds")  # the demo check's pass/fail
LIVE_DEMO = {"samples": 400, "epochs": 3}  # the shrunk demo run by the check


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


# ---------------------------------------------------------------------------------- fit rates
@functools.cache
def _iteration_costs() -> tuple[tuple[int, float], ...]:
    """``(splats, seconds per image)`` at the largest batch of each splat count of the
    benchmark_fit JSON :data:`FIT_GRID`: the cost of an iteration by splat count, up to a
    common factor."""
    largest: dict[int, dict] = {}
    for row in _rows(FIT_GRID):
        if row["batch"] >= largest.get(row["gaussians"], {"batch": 0})["batch"]:
            largest[row["gaussians"]] = row
    return tuple(sorted((n, 1.0 / r["images_per_s"]) for n, r in largest.items()))


def iteration_cost(gaussians: int) -> float:
    """Relative cost of a fitting iteration of a 224x224 image with ``gaussians`` splats:
    piecewise linear in the measured costs (:data:`FIT_GRID`), through zero below the first."""
    pts = _iteration_costs()
    if gaussians <= pts[0][0]:
        return pts[0][1] * gaussians / pts[0][0]
    for (n0, f0), (n1, f1) in zip(pts, pts[1:], strict=False):
        if gaussians <= n1:
            return f0 + (f1 - f0) * (gaussians - n0) / (n1 - n0)
    (n0, f0), (n1, f1) = pts[-2], pts[-1]
    return f1 + (f1 - f0) * (gaussians - n1) / (n1 - n0)


def scale_fit_rate(row: dict, recipe: Recipe) -> float:
    """A fit rate measured at ``row``'s settings carried to the recipe's: x iterations, cost
    per iteration (splats) and pixels."""
    rate = float(row["images_per_s"]) * row["iters"] / recipe.iters
    if row["gaussians"] != recipe.gaussians:
        rate *= iteration_cost(row["gaussians"]) / iteration_cost(recipe.gaussians)
    return rate * (row["height"] / recipe.image_size) ** 2


def _rows(path: Path) -> list[dict]:
    data = json.loads(path.read_text())
    rows = data["rows"] if isinstance(data, dict) else data
    rows = [r for r in rows if r.get("images_per_s")]
    if not rows:
        raise ValueError(f"{path}: no benchmark_fit rows with images_per_s")
    return rows


def fit_rate_from_rows(rows: list[dict], recipe: Recipe, source: str) -> tuple[float, str]:
    """Images/s per GPU from benchmark_fit rows: the best batch at the recipe's splats,
    iterations and size, else the nearest row scaled (:func:`scale_fit_rate`)."""
    want = (recipe.gaussians, recipe.iters, recipe.image_size)
    exact = [r for r in rows if (r["gaussians"], r["iters"], r["height"]) == want]
    if exact:
        best = max(exact, key=lambda r: r["images_per_s"])
        return float(best["images_per_s"]), f"{source} (batch {best['batch']}, measured)"
    near = min(
        rows,
        key=lambda r: (
            abs(math.log(r["gaussians"] / recipe.gaussians)),
            abs(math.log(r["height"] / recipe.image_size)),
            -r["batch"],
        ),
    )
    label = (
        f"{source} row batch {near['batch']} x {near['gaussians']} splats x {near['iters']} "
        f"iters at {near['height']} px, scaled (iterations, splats, pixels)"
    )
    return scale_fit_rate(near, recipe), label


def fit_rate_from_json(path: Path, recipe: Recipe) -> tuple[float, str]:
    """:func:`fit_rate_from_rows` of a benchmark_fit JSON (a list of rows, or ``{"rows"}``)."""
    return fit_rate_from_rows(_rows(path), recipe, str(path))


def gpu_report_rates(path: Path, recipe: Recipe, rates: Rates) -> Rates:
    """Fill the fit and training rates ``rates`` lacks from the GPU check's report: the
    default fit at the loader's batch (scaled to the recipe) and the training step on cached
    splats (the warm run: fitting is planned apart). Fields the report lacks stay 0."""
    if not path.is_file():
        return rates
    report = json.loads(path.read_text())
    where = f"{path.name} ({report.get('device')}, {report.get('date')})"
    rows = [r for r in report.get("default_fit_rows") or [] if r.get("batch") == LOADER_BATCH]
    if not rates.fit and rows and rows[0].get("images_per_s"):
        rates.fit, rates.sources["fit"] = fit_rate_from_rows(rows, recipe, where)
    warm = (report.get("train_samples_per_s") or {}).get("warm")
    if not rates.train and warm:
        rates.train = float(warm)
        rates.sources["train"] = f"{where}: the warm-cache training step, measured"
    return rates


# ---------------------------------------------------------------------------------- the plan
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
    time_by: dict[str, float] = {}
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


# ---------------------------------------------------------------------------------- settings
@dataclass
class PlanConfig:
    """A preset, and what to change of it (unset: the preset's value); the rates given here
    replace reported, measured or assumed ones."""

    preset: str = "datacomp-small"
    """The cluster, dataset and recipe to start from (:data:`PRESETS`)."""
    # ---- cluster
    nodes: int | None = None
    """Nodes of the cluster."""
    gpus_per_node: int | None = None
    """GPUs a node."""
    cpus_per_node: int | None = None
    """CPU cores a node (decoding, the loader)."""
    read_gbps: float | None = None
    """Shard reading, GB/s per node."""
    cache_max_bytes: float | None = None
    """Splat cache per node (``data.cache_max_bytes``)."""
    # ---- rates
    gpu_report: str = str(GPU_REPORT)
    """The GPU check's report (``tools/gpu_check.sh``): the GPU rates not given otherwise."""
    fit_json: str | None = None
    """A ``tools/benchmark_fit.py`` JSON: the fit rate, scaled to the recipe."""
    fit_rate: float | None = None
    """Fit images/s per GPU at the recipe's splats, iterations and size."""
    train_rate: float | None = None
    """Training samples/s per GPU (splats from the cache: fitting is planned apart)."""
    eval_rate: float | None = None
    """Evaluation images/s per GPU (default: 3x the training rate)."""
    decode_rate: float | None = None
    """Image decodes (+ resize) per second per CPU core (default: measured here)."""
    loader_rate: float | None = None
    """Cached samples/s per CPU core (default: measured here)."""
    # ---- dataset and recipe
    samples: int | None = None
    """Samples an epoch."""
    shards: int | None = None
    """Shards they are stored in."""
    bytes_per_sample: float | None = None
    """Stored bytes a sample (image, caption, metadata)."""
    epochs: int | None = None
    """Epochs of the run."""
    gaussians: int | None = None
    """Splats an image."""
    iters: int | None = None
    """Fitting iterations an image."""
    image_size: int | None = None
    """Side of the fitted image, pixels."""
    eval_samples: int | None = None
    """Images of the evaluation run once an epoch."""
    schedule: str | None = None
    """``node`` (a node keeps its shards, and so its cache) or ``global``."""
    splat_format: str | None = None
    """How the cache and splat shards store splats (:data:`streamfit.codec.STORAGE_FORMATS`)."""

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


def resolve(cfg: PlanConfig, live: dict | None = None) -> tuple[Cluster, Rates, Dataset, Recipe]:
    """The preset with the settings given on top, and its rates: given, from ``fit_json``,
    from the GPU check's report, or (the demo's) those ``live`` measured; the evaluation rate
    assumed 3x training's when not given. GPU rates found nowhere are an error naming the
    flags; CPU rates found nowhere stay 0 (:func:`streamfit.plan_measure.measure_cpu_rates`)."""
    cluster, data, recipe, _ = PRESETS[cfg.preset]

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
        rates = replace(live["rates"], sources=dict(live["rates"].sources))
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
    rates = gpu_report_rates(Path(cfg.gpu_report), recipe, rates)
    missing = {
        "fit": "--fit-json FILE (a tools/benchmark_fit.py JSON, e.g. docs/benchmarks/"
        "fit_h100.json) or --fit-rate N (fit_rate=N)",
        "train": "--train-rate N (train_rate=N; a run's logged samples_per_s)",
    }
    for name, how in missing.items():
        if not getattr(rates, name):
            raise ValueError(
                f"no {name} rate: give {how}, or commit the GPU check's report "
                f"(tools/gpu_check.sh) as {cfg.gpu_report}"
            )
    if not rates.eval:
        rates.eval = 3 * rates.train
        rates.sources["eval"] = "assumed 3x the training rate (forward only): give --eval-rate"
    return cluster, rates, data, recipe


# ---------------------------------------------------------------------------------- the demo check
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


def demo_checks(live: dict, reference: Path = DEMO_REFERENCE) -> dict:
    """The demo planned from the live rates against (``now``) the shrunk demo run measured
    right after them and (``reference``) the full demo's stage times: a demo run's
    ``summary.json``, or :data:`DEMO_REFERENCE` (BENCHMARKS.md's run)."""
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
    ref = json.loads(reference.read_text())["stage_seconds"]
    full = plan(cluster, live["rates"], data, recipe)
    checks["reference"] = compare(
        full, ref["gs_adapt"], ref["gs_fitting_in_loader"], str(reference)
    )
    return checks
