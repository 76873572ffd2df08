"""The graph's own torchdata.nodes: batching that drops skipped samples, the fit node (cache
lookup, batched fitting of the misses, write-back), tokenisation, and the epoch meter at the
root. Each node's state is its source's state, so the reader's small state resumes all."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torchdata.nodes import BaseNode

from streamfit.data.decode import Decoded, Decoder, Skipped
from streamfit.data.fetch import CacheWriter, SplatSource, upload
from streamfit.data.stats import LoaderStats

logger = logging.getLogger("streamfit.data")


class SampleBatcher(BaseNode[list[Decoded]]):
    """Lists of ``batch_size`` decoded samples; :class:`Skipped` records are counted in
    ``stats`` (and logged) instead. The last short batch is kept unless ``drop_last`` (then
    its samples are counted as ``drop_last``)."""

    def __init__(
        self, source: BaseNode, batch_size: int, drop_last: bool, stats: LoaderStats
    ) -> None:
        super().__init__()
        self.source, self.stats = source, stats
        self.batch_size, self.drop_last = batch_size, drop_last

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        self.source.reset(None if initial_state is None else initial_state["source"])

    def get_state(self) -> dict[str, Any]:
        return {"source": self.source.state_dict()}

    def next(self) -> list[Decoded]:
        batch: list[Decoded] = []
        while len(batch) < self.batch_size:
            try:
                item = next(self.source)
            except StopIteration:
                break
            if isinstance(item, Skipped):
                self.stats.skip(item.reason, item.shard, item.key, item.detail)
            else:
                batch.append(item)
        if batch and self.drop_last and len(batch) < self.batch_size:
            last = batch[-1]
            detail = f"the short last batch of {len(batch)} (data.drop_last)"
            self.stats.skip("drop_last", last.shard, last.key, detail, count=len(batch))
            raise StopIteration
        if not batch:
            raise StopIteration
        return batch


FIT_STREAMS = ("own", "default")


@dataclass
class StageTime:
    """How long a batch's device work took: wall seconds of the loader's thread, and on a GPU
    the seconds between CUDA events around it on its stream."""

    wall_s: float = 0.0
    gpu_s: float = 0.0


class DeviceStage:
    """Where the loader puts a batch on the device. On a GPU: on a CUDA stream of its own
    (``own``: fitting overlaps training) or the device's default stream (``default``: the
    training stream, so fitting and training take turns), timed by CUDA events; the loader's
    thread waits at the end for this stream alone, so a batch is complete when it is yielded
    (its consumer calls :func:`claim`). On a CPU: as it is, timed by the clock."""

    def __init__(self, device: torch.device | str, stream: str = "own") -> None:
        if stream not in FIT_STREAMS:
            raise ValueError(f"data.fit_stream must be one of {FIT_STREAMS}, got {stream!r}")
        self.device = torch.device(device)
        self.stream = None
        if self.device.type == "cuda":
            with torch.cuda.device(self.device):
                own = stream == "own"
                self.stream = torch.cuda.Stream() if own else torch.cuda.default_stream()

    @contextmanager
    def run(self) -> Iterator[StageTime]:
        timing = StageTime()
        start = time.perf_counter()
        if self.stream is None:
            yield timing
            timing.wall_s = time.perf_counter() - start
            return
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            yield timing
            end.record()
        end.synchronize()
        timing.wall_s = time.perf_counter() - start
        timing.gpu_s = begin.elapsed_time(end) / 1e3

    def upload(self, array: np.ndarray) -> torch.Tensor:
        """``array`` on the device (from pinned memory, without blocking, on a GPU)."""
        return upload(torch.from_numpy(array), self.device)


def claim(batch: dict, device: torch.device) -> dict:
    """Make a loader batch safe to use on ``device``'s current stream: its tokens go up
    without blocking, and the caching allocator learns that the tensors the loader's stream
    made are used on this one (else it could hand their memory back to the loader while
    this stream still reads them). The loader finished the batch's work before yielding it."""
    tokens = batch.get("tokens")
    if tokens is not None and tokens.device != device:
        batch["tokens"] = upload(tokens, device)
    if device.type == "cuda":
        stream = torch.cuda.current_stream(device)
        tensors = [batch.get("rgb")]
        if batch.get("splats") is not None:
            tensors += [batch["splats"].params, batch["splats"].mask]
        for tensor in tensors:
            if tensor is not None and tensor.device.type == "cuda":
                tensor.record_stream(stream)
    return batch


# Counters of the fit node and the nodes before it, carried in its state. ``skipped`` may
# count again, after a resume, the few samples the reader had read ahead of the checkpoint.
FIT_COUNTS = (
    "cache_hits",
    "cache_misses",
    "cache_evictions",
    "precomputed",
    "fit_seconds",
    "fit_gpu_seconds",
    "data_wait_seconds",
    "skipped",
)


class FitNode(BaseNode[dict]):
    """Batches of decoded samples -> batch dicts with splats on the backend's device.

    Every sample is looked up in ``splats``' cache; the misses are fitted together as one
    batch and written back; samples of splat shards pass through unfitted. An image whose
    fit fails numerically is skipped (``fit_failed``) and never cached. A source without a
    fitter skips misses (``not_cached``) instead. Splats are always the values the cache
    stores (fits are quantised to the source's splat format on the device), so a cached
    epoch and a fitted one give identical batches.
    """

    def __init__(
        self,
        source: BaseNode[list[Decoded]],
        splats: SplatSource,
        stage: DeviceStage,
        decoder: Decoder,
        yield_rgb: bool,
        stats: LoaderStats,
        log_every: int = 1,
    ) -> None:
        super().__init__()
        self.source, self.stage, self.decoder = source, stage, decoder
        self.yield_rgb, self.stats, self.log_every = yield_rgb, stats, log_every
        self.fit_misses = splats.fitter is not None
        # on a GPU the database is written from a thread of its own: the loader's thread
        # goes on to the next batch
        if splats.cache is not None and stage.stream:
            splats = replace(splats, writer=CacheWriter(splats.cache))
        self.splats = splats
        self.writer = splats.writer
        self._batches = 0

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        self.source.reset(None if initial_state is None else initial_state["source"])
        if initial_state is not None:
            self.stats.restore(initial_state.get("counts", {}))
        self._batches = 0

    def get_state(self) -> dict[str, Any]:
        # taken right after a batch (the prefetcher's snapshot), so the counts are those of
        # the batches up to it: a resumed epoch goes on counting hits and fits from there
        return {"source": self.source.state_dict(), "counts": self.stats.snapshot(*FIT_COUNTS)}

    def next(self) -> dict:
        while True:
            start = time.perf_counter()
            try:
                samples = next(self.source)
            except StopIteration:
                if self.writer is not None:  # the epoch's fits are in the cache when it ends
                    self.writer.flush()
                    self.stats.add(cache_evictions=self.writer.take_evictions())
                raise
            waited = time.perf_counter() - start
            batch = self._fit_batch(samples, waited)
            if batch is not None:
                return batch

    def _image(self, sample: Decoded) -> np.ndarray | None:
        """The sample's pixels; decoded here when the decode worker left them out (the cache
        held its splats then, but evicted them before this lookup)."""
        if sample.image is None:
            try:
                sample.image = self.decoder.decode_image(sample.encoded or b"")
            except (OSError, ValueError, SyntaxError) as err:
                self.stats.skip("decode_error", sample.shard, sample.key, str(err))
        return sample.image

    def _fit_batch(self, samples: list[Decoded], waited: float) -> dict | None:
        with self.stage.run() as timing:
            got = self.splats.fetch(
                [s.cache_id for s in samples],
                lambda i: self._image(samples[i]),
                [s.splats for s in samples],
            )
            keep = got.kept
            rgb = None
            if self.yield_rgb and keep:
                rgb = self.stage.upload(np.stack([samples[i].image for i in keep]))
                rgb = rgb.permute(0, 3, 1, 2).float().div_(255.0)
        hits, fitted = got.hits, len(got.fitted)
        if not self.fit_misses:
            for i in got.misses:
                self.stats.skip("not_cached", samples[i].shard, samples[i].key)
        for i in got.failed:
            self.stats.skip("fit_failed", samples[i].shard, samples[i].key, "non-finite splats")
        evictions = got.evictions + (self.writer.take_evictions() if self.writer else 0)
        if evictions:
            self.stats.add(cache_evictions=evictions)
        psnr = got.psnr
        self.stats.add(
            cache_hits=hits,
            cache_misses=fitted if self.fit_misses else len(got.misses),
            precomputed=sum(s.splats is not None for s in samples),
            fit_seconds=timing.wall_s,
            fit_gpu_seconds=timing.gpu_s,
            data_wait_seconds=waited,
        )
        self._batches += 1
        if self.log_every and self._batches % self.log_every == 0:
            logger.info(
                "epoch %d batch %d: %d samples (%d cached, %d fitted%s) | "
                "waited %.3f s for data, fitting %.3f s (%.3f s on the GPU)",
                self.stats.current.epoch,
                self._batches,
                len(keep),
                hits,
                fitted,
                f", psnr {psnr:.2f} dB" if fitted else "",
                waited,
                timing.wall_s,
                timing.gpu_s,
            )
        if not keep:
            return None
        batch = {
            "keys": [samples[i].key for i in keep],
            "shards": [samples[i].shard for i in keep],
            "captions": [samples[i].caption for i in keep],
            "json": [samples[i].meta for i in keep],
            "splats": got.splats,
            "timing": {
                "data_wait_s": waited,
                "fit_s": timing.wall_s,
                "fit_gpu_s": timing.gpu_s,
                "hits": hits,
                "fitted": fitted,
            },
        }
        if rgb is not None:
            batch["rgb"] = rgb
        return batch


class PixelNode(BaseNode[dict]):
    """Batches of decoded samples -> batch dicts with ``rgb`` only (``data.fit: none``): no
    cache, no fitting backend, no splats. The RGB stage and RGB evaluation read this."""

    def __init__(
        self, source: BaseNode[list[Decoded]], stage: DeviceStage, stats: LoaderStats
    ) -> None:
        super().__init__()
        self.source, self.stage, self.stats = source, stage, stats

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        self.source.reset(None if initial_state is None else initial_state["source"])
        if initial_state is not None:
            self.stats.restore(initial_state.get("counts", {}))

    def get_state(self) -> dict[str, Any]:
        counts = self.stats.snapshot("data_wait_seconds", "skipped")
        return {"source": self.source.state_dict(), "counts": counts}

    def next(self) -> dict:
        start = time.perf_counter()
        samples = next(self.source)
        waited = time.perf_counter() - start
        self.stats.add(data_wait_seconds=waited)
        with self.stage.run():
            rgb = self.stage.upload(np.stack([s.image for s in samples]))
            rgb = rgb.permute(0, 3, 1, 2).float().div_(255.0)
        return {
            "keys": [s.key for s in samples],
            "shards": [s.shard for s in samples],
            "captions": [s.caption for s in samples],
            "json": [s.meta for s in samples],
            "rgb": rgb,
            "timing": {
                "data_wait_s": waited,
                "fit_s": 0.0,
                "fit_gpu_s": 0.0,
                "hits": 0,
                "fitted": 0,
            },
        }


class Tokenize:
    """Adds ``tokens`` (``[B, context_length]`` int64, CPU) for ``captions`` with the
    open_clip tokenizer of ``model_name``."""

    def __init__(self, model_name: str, context_length: int) -> None:
        import open_clip

        self.tokenizer: Callable[..., torch.Tensor] = open_clip.get_tokenizer(model_name)
        self.context_length = context_length

    def __call__(self, batch: dict) -> dict:
        batch["tokens"] = self.tokenizer(batch["captions"], context_length=self.context_length)
        return batch


class EmptyEpoch(RuntimeError):
    """An epoch, read from its start, yielded no sample at all."""


class EpochMeter(BaseNode[dict]):
    """Root node: counts yielded samples, times how long the consumer waits for each batch,
    and closes the epoch's stats (with a summary log line) when the epoch ends.

    An epoch read from its start that yields nothing raises :class:`EmptyEpoch`, naming
    ``describe`` (the pattern and what it matched) and the skips, rather than ending quietly:
    a run over nothing is a mistake, not a result. With ``fail_empty=False`` (one rank of
    several, whose peers may wait for it in a collective) it is a warning instead.
    """

    def __init__(
        self,
        source: BaseNode[dict],
        stats: LoaderStats,
        describe: str = "",
        fail_empty: bool = True,
    ) -> None:
        super().__init__()
        self.source, self.stats = source, stats
        self.describe, self.fail_empty = describe, fail_empty
        self._resumed = False

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        self._resumed = initial_state is not None
        self.source.reset(None if initial_state is None else initial_state["source"])
        if initial_state is not None:
            self.stats.restore(initial_state.get("counts", {}))

    def get_state(self) -> dict[str, Any]:
        counts = self.stats.snapshot("samples", "batches", "consumer_wait_seconds", "seconds")
        return {"source": self.source.state_dict(), "counts": counts}

    def next(self) -> dict:
        self.stats.mark_request()
        start = time.perf_counter()
        try:
            batch = next(self.source)
        except StopIteration:
            if not self.stats.current.complete:
                done = self.stats.end_epoch()
                logger.info(
                    "epoch %d done: %d samples in %.1f s, skipped %s, cache %d hits / %d misses "
                    "(%d evicted), fitting %.1f s, fit node waited %.1f s, consumer waited %.1f s",
                    done.epoch,
                    done.samples,
                    done.seconds,
                    done.skipped or "none",
                    done.cache_hits,
                    done.cache_misses,
                    done.cache_evictions,
                    done.fit_seconds,
                    done.data_wait_seconds,
                    done.consumer_wait_seconds,
                )
                if not done.samples and not self._resumed:
                    skipped = ", ".join(f"{k}: {v}" for k, v in sorted(done.skipped.items()))
                    message = (
                        f"epoch {done.epoch} yielded no samples: {self.describe}; "
                        f"skipped {skipped or 'nothing'}"
                    )
                    if self.fail_empty:
                        raise EmptyEpoch(message) from None
                    logger.warning(message)
            raise
        self.stats.add(
            samples=len(batch["keys"]), batches=1, consumer_wait_seconds=time.perf_counter() - start
        )
        batch["epoch"] = self.stats.current.epoch
        return batch
