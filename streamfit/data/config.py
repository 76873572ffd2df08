"""`DataConfig`: where samples come from and how the streaming graph turns them into batches.

The fitting settings live in :class:`streamfit.fit.FitConfig`, passed beside this one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from streamfit.codec import DEFAULT_FORMAT, STORAGE_FORMATS
from streamfit.config import check_at_least, check_choice
from streamfit.data.schedule import SCHEDULES
from streamfit.data.shards import check_pattern
from streamfit.fit.config import FitConfig

CACHE_KEYS = ("content", "key")
SPLITS = ("shard", "sample")
FIT_MODES = ("splats", "none")


@dataclass
class DataConfig:
    """Settings of the shard -> decode -> fit -> tokenize graph."""

    shards: str = ""
    """Local paths, brace patterns (``shards/{00000..00127}.tar``), webdataset URLs
    (``pipe:``, ``http(s)://``, ...), several joined by ``::``."""
    image_size: int = 224
    """Side of the square images the samples are resized and centre-cropped to."""
    decode_workers: int = 2
    """Workers decoding images."""
    decode_method: str = "thread"
    """thread | process: what the decode workers are."""
    shuffle_buffer: int = 1000
    """Samples in the shuffle buffer."""
    shuffle_shards: bool = True
    """Shuffle the order of the shards every epoch."""
    seed: int = 0
    """Seed of the shuffles."""
    split: str = "shard"
    """How ranks share an epoch: ``shard`` gives each rank whole shards (round robin after the
    shuffle; needs at least ``world_size`` shards), ``sample`` has every rank read every
    shard and keep every ``world_size``-th sample (for few, large shards)."""
    schedule: str = "auto"
    """Which shards each rank reads per epoch (:mod:`streamfit.data.schedule`): ``node``
    keeps a fixed, sample-balanced share of the shards on each node across epochs (shuffled
    within the share) so the node-local splat cache serves later epochs; ``global``
    reshuffles all shards over all ranks every epoch; ``auto`` is ``node`` when the ranks
    span several nodes."""
    ranks_per_node: int = 0
    """Ranks sharing a node's cache (0: ``LOCAL_WORLD_SIZE`` / ``LOCAL_SIZE`` from the
    launcher, else one node)."""
    fit: str = "splats"
    """``splats`` fits (or reads from the cache) the splats of every sample; ``none`` yields
    pixels only (``rgb``; no splats, no cache, no fitting backend)."""
    batch_size: int = 64
    """Samples a batch on each rank."""
    drop_last: bool = False
    """Drop an epoch's short last batch (counted as ``drop_last``)."""
    prefetch: int = 2
    """Batches prepared ahead in a background thread (0: none)."""
    max_image_pixels: int = 40_000_000
    """Larger images are skipped (decompression bombs)."""
    cache_dir: str = ""
    """The splat cache's folder (empty: no cache, every sample is fitted every epoch)."""
    cache_max_bytes: int = 8 * 1024**3
    """Bound on stored splat bytes; the least recently used entries go first."""
    cache_key: str = "content"
    """``content`` keys the splat cache by a hash of the encoded image bytes (safe when
    sample keys repeat across datasets, as across img2dataset runs), ``key`` by the sample
    key (only for keys unique over every shard the cache ever sees)."""
    splat_format: str = DEFAULT_FORMAT
    """How the cache stores splats (:mod:`streamfit.codec`): ``q64`` (8 bytes a splat,
    colours re-solved for the quantised geometry) or ``fp16`` (16). Part of the cache's
    settings and the format of splat shards written from this config; batches always carry
    the splats as stored, so a cached epoch and a fitted one are identical."""
    yield_rgb: bool = False
    """Batches carry the pixels (``rgb``) too."""
    tokenizer: str = "ViT-M-16"
    """Any open_clip model name ``get_tokenizer`` accepts."""
    context_length: int = 77
    """Tokens a caption."""
    log_every: int = 1
    """Batches between per-batch timing log lines (0: never)."""
    fit_stream: str = "own"
    """GPU only: the loader's device work (fits, uploads) on a CUDA stream of its ``own``, or
    on the device's ``default`` stream, which training uses (then they take turns)."""
    fit_graphs: bool = True
    """GPU only: whole fits as CUDA graphs (eager fits where a capture fails)."""

    def __post_init__(self) -> None:
        try:
            check_pattern(self.shards)
        except ValueError as err:
            raise ValueError(f"data.shards: {err}") from None
        check_at_least(
            data__image_size=(self.image_size, 8),
            data__batch_size=(self.batch_size, 1),
            data__decode_workers=(self.decode_workers, 0),
            data__shuffle_buffer=(self.shuffle_buffer, 1),
            data__ranks_per_node=(self.ranks_per_node, 0),
            data__cache_max_bytes=(self.cache_max_bytes, 1),
            data__prefetch=(self.prefetch, 0),
        )
        check_choice("data.decode_method", self.decode_method, ("thread", "process"))
        check_choice("data.split", self.split, SPLITS)
        check_choice("data.schedule", self.schedule, SCHEDULES)
        check_choice("data.fit", self.fit, FIT_MODES)
        check_choice("data.fit_stream", self.fit_stream, ("own", "default"))
        check_choice("data.cache_key", self.cache_key, CACHE_KEYS)
        check_choice("data.splat_format", self.splat_format, STORAGE_FORMATS)


@dataclass
class LoaderRunConfig:
    """The config of a tool that runs the streaming loader on its own (no model)."""

    data: DataConfig = field(default_factory=DataConfig)
    """The streaming data, its splat cache and where fits run."""
    fit: FitConfig = field(default_factory=FitConfig)
    """How the loader fits splats."""
