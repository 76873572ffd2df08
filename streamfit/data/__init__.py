"""Streaming data: DataComp-style shards -> decode -> in-loop batched fitting with a persistent
splat cache -> tokenized batches (torchdata.nodes), plus the synthetic demo dataset."""

from streamfit.data.cache import SplatCache
from streamfit.data.config import DataConfig, LoaderRunConfig
from streamfit.data.fetch import SplatSource, cache_settings
from streamfit.data.loader import StreamLoader, build_loader
from streamfit.data.nodes import EmptyEpoch
from streamfit.data.stats import EpochStats, LoaderStats

__all__ = [
    "DataConfig",
    "EmptyEpoch",
    "EpochStats",
    "LoaderRunConfig",
    "LoaderStats",
    "SplatCache",
    "SplatSource",
    "StreamLoader",
    "build_loader",
    "cache_settings",
]
