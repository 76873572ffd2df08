"""`DataConfig`: where samples come from and how the streaming graph turns them into batches.

The fitting settings live in :class:`streamfit.fit.FitConfig`, passed beside this one.
"""

from __future__ import annotations

from dataclasses import dataclass

from streamfit.codec import DEFAULT_FORMAT, STORAGE_FORMATS
from streamfit.data.schedule import SCHEDULES
from streamfit.data.shards import check_pattern

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
        if self.image_size < 8:
            raise ValueError(f"data.image_size must be >= 8, got {self.image_size}")
        if self.batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {self.batch_size}")
        if self.decode_workers < 0:
            raise ValueError(f"data.decode_workers must be >= 0, got {self.decode_workers}")
        if self.decode_method not in ("thread", "process"):
            raise ValueError(
                f"data.decode_method must be thread or process, got {self.decode_method!r}"
            )
        if self.shuffle_buffer < 1:
            raise ValueError(f"data.shuffle_buffer must be >= 1, got {self.shuffle_buffer}")
        if self.split not in SPLITS:
            raise ValueError(f"data.split must be one of {SPLITS}, got {self.split!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"data.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.ranks_per_node < 0:
            raise ValueError(f"data.ranks_per_node must be >= 0, got {self.ranks_per_node}")
        if self.fit not in FIT_MODES:
            raise ValueError(f"data.fit must be one of {FIT_MODES}, got {self.fit!r}")
        if self.fit_stream not in ("own", "default"):
            raise ValueError(f"data.fit_stream must be own or default, got {self.fit_stream!r}")
        if self.cache_key not in CACHE_KEYS:
            raise ValueError(f"data.cache_key must be one of {CACHE_KEYS}, got {self.cache_key!r}")
        if self.splat_format not in STORAGE_FORMATS:
            raise ValueError(
                f"data.splat_format must be one of {STORAGE_FORMATS}, got {self.splat_format!r}"
            )
        if self.cache_max_bytes < 1:
            raise ValueError(f"data.cache_max_bytes must be >= 1, got {self.cache_max_bytes}")
        if self.prefetch < 0:
            raise ValueError(f"data.prefetch must be >= 0, got {self.prefetch}")
