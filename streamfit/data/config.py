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
    """Settings of the shard -> decode -> fit -> tokenize graph.

    ``shards``: local paths, brace patterns (``shards/{00000..00127}.tar``), webdataset URLs
    (``pipe:``, ``http(s)://``, ...), several joined by ``::``.
    ``split``: how ranks share an epoch: ``shard`` gives each rank whole shards (round robin
    after the shuffle; needs at least ``world_size`` shards), ``sample`` has every rank read
    every shard and keep every ``world_size``-th sample (for few, large shards).
    ``schedule``: which shards each rank reads per epoch (:mod:`streamfit.data.schedule`):
    ``node`` keeps a fixed, sample-balanced share of the shards on each node across epochs
    (shuffled within the share every epoch) so the node-local splat cache serves later
    epochs; ``global`` reshuffles all shards over all ranks every epoch; ``auto`` (default) is
    ``node`` when the ranks span several nodes. ``ranks_per_node``: ranks sharing a node's
    cache (0: ``LOCAL_WORLD_SIZE`` / ``LOCAL_SIZE`` from the launcher, else one node).
    ``fit``: ``splats`` fits (or reads from the cache) the splats of every sample; ``none``
    yields pixels only (``rgb``, no ``splats``, no cache, no fitting backend): RGB stages and
    RGB evaluation.
    ``cache_key``: ``content`` keys the splat cache by a hash of the encoded image bytes (safe
    when sample keys repeat across datasets, as they do across img2dataset runs, which all
    number their samples from ``000000000``), ``key`` by the shard's sample key (only for keys
    unique over every shard the cache ever sees).
    ``cache_max_bytes``: bound on stored splat bytes; least recently used entries go first.
    ``splat_format``: how the cache stores splats (:mod:`streamfit.codec`): ``q64`` (8 bytes a
    splat, colours re-solved for the quantised geometry) or ``fp16`` (16 bytes a splat). Part
    of the cache's settings, and the format of splat shards written from this config. Batches
    always carry the splats as stored, so a cached epoch and a fitted one are identical.
    An empty ``cache_dir`` disables the cache (every sample is fitted every epoch).
    """

    shards: str = ""
    image_size: int = 224
    decode_workers: int = 2
    decode_method: str = "thread"  # thread | process
    shuffle_buffer: int = 1000
    shuffle_shards: bool = True
    seed: int = 0
    split: str = "shard"  # shard | sample
    schedule: str = "auto"  # auto | node | global
    ranks_per_node: int = 0
    fit: str = "splats"  # splats | none
    batch_size: int = 64
    drop_last: bool = False
    prefetch: int = 2
    max_image_pixels: int = 40_000_000
    cache_dir: str = ""
    cache_max_bytes: int = 8 * 1024**3
    cache_key: str = "content"  # content | key
    splat_format: str = DEFAULT_FORMAT  # q64 | fp16
    yield_rgb: bool = False
    tokenizer: str = "ViT-M-16"  # any open_clip model name accepted by get_tokenizer
    context_length: int = 77
    log_every: int = 1  # batches between per-batch timing log lines (0: never)
    # GPU only: the loader's device work (fits, uploads) on a CUDA stream of its own, or on
    # the device's default stream (which training uses: fitting and training take turns)
    fit_stream: str = "own"  # own | default
    fit_graphs: bool = True  # GPU only: whole fits as CUDA graphs (eager when capture fails)

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
