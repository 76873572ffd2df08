"""The graph's own torchdata.nodes: batching that drops skipped samples, the fit node (cache
lookup, batched fitting of the misses, write-back), tokenisation, and the epoch meter at the
root. Each node's state is its source's state, so the reader's small state resumes all."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torchdata.nodes import BaseNode

from streamfit import codec
from streamfit.data.cache import SplatCache
from streamfit.data.decode import Decoded, Decoder, Skipped
from streamfit.data.fetch import fetch_or_fit
from streamfit.data.stats import LoaderStats
from streamfit.fit import FitBackend, FitConfig

logger = logging.getLogger("streamfit.data")


class SampleBatcher(BaseNode[list[Decoded]]):
    """Lists of ``batch_size`` decoded samples; :class:`Skipped` records are counted in
    ``stats`` (and logged) instead. The last short batch is kept unless ``drop_last`` (then
    its samples are counted as ``drop_last``)."""

    def __init__(
        self, source: BaseNode, batch_size: int, drop_last: bool, stats: LoaderStats
    ) -> None:
        super().__init__()
        self.source, self.batch_size, self.drop_last, self.stats = (
            source,
            batch_size,
            drop_last,
            stats,
        )

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


# Counters of the fit node and the nodes before it, carried in its state. ``skipped`` may
# count again, after a resume, the few samples the reader had read ahead of the checkpoint.
FIT_COUNTS = (
    "cache_hits",
    "cache_misses",
    "cache_evictions",
    "precomputed",
    "fit_seconds",
    "data_wait_seconds",
    "skipped",
)


class FitNode(BaseNode[dict]):
    """Batches of decoded samples -> batch dicts with splats on the backend's device.

    Every sample is looked up in ``cache`` under ``settings``; the misses are fitted together
    as one batch and written back; samples of splat shards pass through unfitted. An image
    whose fit fails numerically is skipped (``fit_failed``) and never cached. With
    ``fit_misses=False`` misses are skipped (``not_cached``) instead of fitted. Splats are
    always the values the cache stores (fits are encoded in ``splat_format``, then decoded),
    so a cached epoch and a fitted one give identical batches.
    """

    def __init__(
        self,
        source: BaseNode[list[Decoded]],
        fit_cfg: FitConfig,
        backend: FitBackend,
        cache: SplatCache | None,
        settings: str,
        image_size: int,
        decoder: Decoder,
        yield_rgb: bool,
        stats: LoaderStats,
        log_every: int = 1,
        fit_misses: bool = True,
        splat_format: str = codec.DEFAULT_FORMAT,
    ) -> None:
        super().__init__()
        self.fit_misses, self.splat_format = fit_misses, splat_format
        self.source, self.fit_cfg, self.backend, self.cache = source, fit_cfg, backend, cache
        self.settings, self.image_size, self.decoder = settings, image_size, decoder
        self.yield_rgb, self.stats, self.log_every = yield_rgb, stats, log_every
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
            samples = next(self.source)
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
        start = time.perf_counter()
        got = fetch_or_fit(
            [s.cache_id for s in samples],
            [s.splats for s in samples],
            lambda i: self._image(samples[i]),
            self.cache,
            self.settings,
            self.fit_cfg if self.fit_misses else None,
            self.backend,
            self.splat_format,
        )
        blobs, hits, fitted = got.blobs, got.hits, len(got.fitted)
        if not self.fit_misses:
            for i in got.misses:
                self.stats.skip("not_cached", samples[i].shard, samples[i].key)
        for i in got.failed:
            self.stats.skip("fit_failed", samples[i].shard, samples[i].key, "non-finite splats")
        if got.evictions:
            self.stats.add(cache_evictions=got.evictions)
        psnr = got.psnr
        keep = [i for i, b in enumerate(blobs) if b is not None]
        fit_seconds = time.perf_counter() - start
        self.stats.add(
            cache_hits=hits,
            cache_misses=fitted if self.fit_misses else len(got.misses),
            precomputed=sum(s.splats is not None for s in samples),
            fit_seconds=fit_seconds,
            data_wait_seconds=waited,
        )
        self._batches += 1
        if self.log_every and self._batches % self.log_every == 0:
            logger.info(
                "epoch %d batch %d: %d samples (%d cached, %d fitted%s) | "
                "waited %.3f s for data, fitting %.3f s",
                self.stats.current.epoch,
                self._batches,
                len(keep),
                hits,
                fitted,
                f", psnr {psnr:.2f} dB" if fitted else "",
                waited,
                fit_seconds,
            )
        if not keep:
            return None
        device = self.backend.device
        splats = codec.decode_batch([blobs[i] for i in keep], device)
        batch = {
            "keys": [samples[i].key for i in keep],
            "shards": [samples[i].shard for i in keep],
            "captions": [samples[i].caption for i in keep],
            "json": [samples[i].meta for i in keep],
            "splats": splats,
            "timing": {
                "data_wait_s": waited,
                "fit_s": fit_seconds,
                "hits": hits,
                "fitted": fitted,
            },
        }
        if self.yield_rgb:
            rgb = torch.from_numpy(np.stack([samples[i].image for i in keep]))
            batch["rgb"] = rgb.to(device).permute(0, 3, 1, 2).float().div_(255.0)
        return batch


class PixelNode(BaseNode[dict]):
    """Batches of decoded samples -> batch dicts with ``rgb`` only (``data.fit: none``): no
    cache, no fitting backend, no splats. The RGB stage and RGB evaluation read this."""

    def __init__(
        self, source: BaseNode[list[Decoded]], device: torch.device | str, stats: LoaderStats
    ) -> None:
        super().__init__()
        self.source, self.device, self.stats = source, device, stats

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
        rgb = torch.from_numpy(np.stack([s.image for s in samples]))
        return {
            "keys": [s.key for s in samples],
            "shards": [s.shard for s in samples],
            "captions": [s.caption for s in samples],
            "json": [s.meta for s in samples],
            "rgb": rgb.to(self.device).permute(0, 3, 1, 2).float().div_(255.0),
            "timing": {"data_wait_s": waited, "fit_s": 0.0, "hits": 0, "fitted": 0},
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
        self.source, self.stats, self.describe, self.fail_empty = (
            source,
            stats,
            describe,
            fail_empty,
        )
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
