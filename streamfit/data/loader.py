"""`build_loader`: the streaming graph from DataComp-style shards to training batches.

Graph (torchdata.nodes)::

    ShardReader (rank split, shuffle, resumable)
      -> ParallelMapper(Decoder)   decode + resize/centre-crop, ``decode_workers`` threads/processes
      -> SampleBatcher             drops (and counts) skipped samples
      -> FitNode                   cache lookup, batched fit of the misses, write-back
      -> Mapper(Tokenize)          open_clip tokenizer
      -> Prefetcher                ``prefetch`` batches ahead, in a background thread
      -> EpochMeter                per-epoch stats, consumer wait time
      => StreamLoader (a torchdata.nodes.Loader)

Batch dict (``B`` = samples in the batch, at most ``batch_size``; fewer for the last batch
of an epoch or when fits fail; ``S`` = ``image_size``):

==============  ==========================================================================
``keys``        ``list[str]``: sample keys as in the shard
``shards``      ``list[str]``: the shard each sample came from
``captions``    ``list[str]``: the ``.txt`` captions, stripped
``json``        ``list[dict]``: the ``.json`` metadata (``{}`` when absent)
``splats``      :class:`streamfit.splats.Splats`: ``params [B, N, 8]`` float32 and
                ``mask [B, N]`` bool on the fitting device (fits never leave it), pixel
                units of an ``S x S`` image, valid splats first; values are those
                ``data.splat_format`` stores (the cache's and a fresh fit's alike). Absent
                with ``data.fit: none``
``tokens``      ``[B, context_length]`` int64 on the CPU (open_clip tokenizer)
``rgb``         only with ``yield_rgb`` or ``data.fit: none``: ``[B, 3, S, S]`` float32 in
                0..1 on the fitting device, *not* mean/std normalised (the model side
                normalises)
``epoch``       ``int``: the epoch the batch belongs to
``timing``      ``{"data_wait_s", "fit_s", "fit_gpu_s", "hits", "fitted"}`` of the fit node
                for this batch (``fit_gpu_s``: CUDA-event seconds on the loader's stream)
==============  ==========================================================================

On a GPU the device work of a batch runs on the loader's own CUDA stream (``data.fit_stream``)
and is complete when the batch is yielded; a consumer on another stream passes each batch
through :func:`streamfit.data.nodes.claim` first. Fits of a batch shape are CUDA graphs
(:class:`streamfit.fit.FitGraphs`, ``data.fit_graphs``).

Epochs: each ``for batch in loader`` runs one epoch; the next ``iter`` starts the next epoch
(:meth:`StreamLoader.set_epoch` picks one). ``loader.state_dict()`` taken after any batch,
loaded into a fresh loader built with the same configs, continues with exactly the samples
not yet yielded, then the following epochs.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import torch
from torchdata.nodes import BaseNode, Loader, Mapper, ParallelMapper, Prefetcher

from streamfit.data.cache import SplatCache
from streamfit.data.config import DataConfig
from streamfit.data.decode import Decoder
from streamfit.data.fetch import SplatSource
from streamfit.data.nodes import (
    DeviceStage,
    EpochMeter,
    FitNode,
    PixelNode,
    SampleBatcher,
    Tokenize,
)
from streamfit.data.schedule import (
    NodeSchedule,
    ranks_per_node_from_env,
    resolve_schedule,
    shard_sizes,
)
from streamfit.data.shards import ShardReader, expand_shards
from streamfit.data.stats import EpochStats, LoaderStats
from streamfit.fit import FitConfig, FitGraphs, get_backend

logger = logging.getLogger("streamfit.data")


class StreamLoader(Loader[dict]):
    """A :class:`torchdata.nodes.Loader` over the streaming graph, with its per-epoch
    ``stats``, the ``reader`` (epoch control) and the ``cache`` (or None)."""

    def __init__(
        self, root: EpochMeter, reader: ShardReader, stats: LoaderStats, cache: SplatCache | None
    ) -> None:
        super().__init__(root)
        self.reader, self.stats, self.cache = reader, stats, cache

    @property
    def epoch(self) -> int:
        """The epoch being read (or, between epochs, the last one read)."""
        return self.reader.epoch

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter(loader)`` start ``epoch`` from its beginning."""
        self.reader.set_epoch(epoch)
        self._next_iter_state_dict = None
        self._it = None

    def state_dict(self) -> dict:
        """The graph's state (where to go on reading, the current epoch's counters so far)
        plus the finished epochs' stats (``history``)."""
        return {**super().state_dict(), "history": self.stats.history()}

    def load_state_dict(self, state_dict: dict) -> None:
        """Resume from ``state_dict`` at the next ``iter``; the finished epochs' stats come
        back at once (and stay when :meth:`set_epoch` then starts another epoch)."""
        self.stats.load_history(state_dict.get("history", {}))
        super().load_state_dict(state_dict)

    def epoch_stats(self, epoch: int | None = None) -> EpochStats:
        """Stats of ``epoch`` (default: the current one)."""
        return self.stats.current if epoch is None else self.stats.epochs[epoch]


def build_reader(
    data_cfg: DataConfig, rank: int, world_size: int, epoch: int, stats: LoaderStats
) -> ShardReader:
    """The source node of one rank, on the schedule ``data_cfg.schedule`` resolves to."""
    shards = expand_shards(data_cfg.shards)
    per_node = data_cfg.ranks_per_node or ranks_per_node_from_env(world_size)
    node_schedule = None
    if resolve_schedule(data_cfg.schedule, world_size, per_node) == "node":
        sizes = shard_sizes(shards)
        node_schedule = NodeSchedule(
            shards,
            world_size,
            per_node,
            data_cfg.seed,
            data_cfg.shuffle_shards,
            data_cfg.split,
            sizes,
        )
        node = rank // per_node
        counted = sum(s is not None for s in sizes)
        expected = node_schedule.rank_samples(epoch)
        logger.info(
            "data: node-affine schedule, %d nodes of %d ranks; node %d owns %d of %d shards; "
            "per-rank samples %.0f..%.0f (%d of %d shard sizes counted, the rest averaged)",
            len(node_schedule.layout),
            per_node,
            node,
            len(node_schedule.shares[node]),
            len(shards),
            min(expected),
            max(expected),
            counted,
            len(shards),
        )
        if min(expected) < 0.9 * max(expected):
            logger.warning(
                "data: ranks read %.0f to %.0f samples an epoch (whole shards of unequal "
                "sizes); the training loop ends each epoch with the first rank to run out: "
                "more, smaller shards or data.split=sample balance them",
                min(expected),
                max(expected),
            )
        if node in node_schedule.fallbacks():
            logger.warning(
                "data: node %d owns %d shards for %d ranks: its ranks split samples instead of "
                "shards (%d of %d nodes do)",
                node,
                len(node_schedule.shares[node]),
                node_schedule.layout[node],
                len(node_schedule.fallbacks()),
                len(node_schedule.layout),
            )
    return ShardReader(
        shards,
        rank=rank,
        world_size=world_size,
        seed=data_cfg.seed,
        epoch=epoch,
        shuffle_buffer=data_cfg.shuffle_buffer,
        shuffle_shards=data_cfg.shuffle_shards,
        split=data_cfg.split,
        stats=stats,
        node_schedule=node_schedule,
    )


def build_loader(
    data_cfg: DataConfig,
    fit_cfg: FitConfig | None,
    rank: int = 0,
    world_size: int = 1,
    epoch: int = 0,
    device: torch.device | str | None = None,
    fit_misses: bool = True,
) -> StreamLoader:
    """The streaming loader of one rank (batch dict in the module docstring).

    ``device``: where fitting runs and splats land (default: ``fit_cfg.device``); the
    backend is ``fit_cfg.backend`` on it. ``epoch``: the first epoch to read. ``fit_misses``:
    False serves only what the cache holds (the rest is skipped as ``not_cached``).
    With ``data_cfg.fit == "none"`` nothing is fitted: ``fit_cfg`` is not used (may be None)
    and batches carry ``rgb`` on ``device`` (default: the CPU) instead of splats.
    """
    stats = LoaderStats()
    reader = build_reader(data_cfg, rank, world_size, epoch, stats)
    cache = None
    if data_cfg.fit == "none":
        decoder = Decoder(data_cfg.image_size, data_cfg.max_image_pixels, need_image=True)
        where = "pixels only (data.fit: none)"

        stage = DeviceStage(device or "cpu", data_cfg.fit_stream)

        def last_node(batches: SampleBatcher) -> BaseNode[dict]:
            return PixelNode(batches, stage, stats)

    else:
        if fit_cfg is None:
            raise ValueError("build_loader: a FitConfig is needed unless data.fit is none")
        fit_device = str(device) if device is not None else fit_cfg.device
        backend = get_backend(fit_cfg.backend, fit_device)
        stage = DeviceStage(backend.device, data_cfg.fit_stream)
        fitter = FitGraphs(fit_cfg, backend, enabled=data_cfg.fit_graphs)
        source = SplatSource.of(data_cfg, fit_cfg, fitter)
        if not fit_misses:
            source = replace(source, fitter=None)
        cache, settings = source.cache, source.settings
        if cache is not None and data_cfg.cache_key == "key":
            logger.warning(
                "data.cache_key=key: splats are found by sample key alone, so keys must be "
                "unique over every shard this cache sees (img2dataset runs all start at "
                "000000000; cache_key=content is safe)"
            )
        decoder = Decoder(
            data_cfg.image_size,
            data_cfg.max_image_pixels,
            need_image=data_cfg.yield_rgb,
            cache_key=data_cfg.cache_key,
            probe=cache.probe(settings) if cache is not None else None,
        )
        where = (
            f"{backend.name} backend on {backend.device}, "
            f"cache {cache.path if cache is not None else 'off'}"
        )

        def last_node(batches: SampleBatcher) -> BaseNode[dict]:
            return FitNode(
                batches, source, stage, decoder, data_cfg.yield_rgb, stats, data_cfg.log_every
            )

    decoded = ParallelMapper(
        reader,
        decoder,
        num_workers=data_cfg.decode_workers,
        in_order=True,  # the order must not depend on timing, or resume would not be exact
        method=data_cfg.decode_method,
        snapshot_frequency=1,
    )
    batches = SampleBatcher(decoded, data_cfg.batch_size, data_cfg.drop_last, stats)
    node = Mapper(last_node(batches), Tokenize(data_cfg.tokenizer, data_cfg.context_length))
    if data_cfg.prefetch:
        node = Prefetcher(node, prefetch_factor=data_cfg.prefetch, snapshot_frequency=1)
    logger.info(
        "data: rank %d/%d reads %d of %d shards in epoch %d, %s",
        rank,
        world_size,
        len(reader.epoch_shards(epoch)),
        len(reader.shards),
        epoch,
        where,
    )
    matched = ", ".join(reader.shards[:3]) + (", ..." if len(reader.shards) > 3 else "")
    describe = f"data.shards {data_cfg.shards!r} matched {len(reader.shards)} ({matched})"
    if world_size > 1:
        describe = f"rank {rank}/{world_size}: {describe}"
    # one rank raising alone would leave the others waiting in a collective: with several
    # ranks an empty epoch is logged, and the recipes' sample count stops a run over nothing
    meter = EpochMeter(node, stats, describe, fail_empty=world_size == 1)
    return StreamLoader(meter, reader, stats, cache)
