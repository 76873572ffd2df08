"""Splats for a batch of samples, from the cache or fitted: the one path the training loader's
fit node and the labelled evaluation loader share. Cached entries are looked up together,
the misses fitted together as one batch, and only finite fits are written back, so neither
caller can put a failed fit into the cache the other reads.

Fitted splats stay on the fitting device: the batch is assembled there from the fits and
from the cached entries (copied up from pinned memory), so a cold batch and a warm one reach
the model alike. Only the cache's copy of a fit, and the few numbers that say which fits
failed, come back to the host, in one copy at the end of the batch's work on the current
stream (the loader's own stream on a GPU: waiting for it never waits for training).
"""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from streamfit import codec
from streamfit.data.cache import SplatCache
from streamfit.data.config import DataConfig
from streamfit.data.decode import DECODE_VERSION
from streamfit.fit import FitConfig, FitGraphs
from streamfit.splats import PARAMS_PER_SPLAT, Splats


@dataclass
class Fetched:
    """What :meth:`SplatSource.fetch` found and made for one batch.

    ``splats``: the splats of the samples in ``kept`` (ascending batch positions), on the
    device, valid splats first in each row: the values the cache's blobs decode to
    (:mod:`streamfit.codec`), so a cached epoch and a fitted one give identical batches.
    ``misses``: samples looked up and not found; ``fitted``: the misses fitted now (those
    with an image); ``failed``: fits with a non-finite result, or one the splat format cannot
    hold, neither returned nor cached.
    """

    splats: Splats
    kept: list[int]
    hits: int = 0
    misses: list[int] = field(default_factory=list)
    fitted: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    evictions: int = 0
    psnr: float = float("nan")  # mean PSNR of the successful fits


def cache_settings(data_cfg: DataConfig, fit_cfg: FitConfig) -> str:
    """The settings part of a cache key: every fitting setting that changes the splats, the
    image size and the decoder version that define the pixels being fitted, and the splat
    format the entries are stored in."""
    blob = (
        f"{fit_cfg.settings_hash()}/size={data_cfg.image_size}/decode={DECODE_VERSION}"
        f"/format={data_cfg.splat_format}"
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class SplatSource:
    """Where :meth:`fetch` finds a batch's splats: ``cache``'s entries under ``settings``,
    else fits by ``fitter`` (None: misses stay unfitted) on ``device``, quantised to
    ``splat_format`` (the format ``settings`` was made for; colours re-solved against the
    image for the quantised geometry) and stored through ``writer`` (default: ``cache``).

    A cache that cannot be read or written costs fitting time, never the run
    (:meth:`SplatCache.lookup` and :meth:`SplatCache.store` turn its errors into misses).
    """

    cache: SplatCache | None
    settings: str
    fitter: FitGraphs | None
    device: torch.device
    image_size: int
    splat_format: str = codec.DEFAULT_FORMAT
    writer: SplatCache | CacheWriter | None = None

    @classmethod
    def of(
        cls,
        data_cfg: DataConfig,
        fit_cfg: FitConfig,
        fitter: FitGraphs | None,
        cache_dir: str | None = None,
    ) -> SplatSource:
        """The training loader's source for these configs: its cache (``data_cfg.cache_dir``
        unless ``cache_dir`` is given; ``""``: none), settings, image size and splat format;
        fits on ``fitter``'s device (the CPU when ``fitter`` is None)."""
        cache_dir = data_cfg.cache_dir if cache_dir is None else cache_dir
        return cls(
            cache=SplatCache(cache_dir, data_cfg.cache_max_bytes) if cache_dir else None,
            settings=cache_settings(data_cfg, fit_cfg),
            fitter=fitter,
            device=fitter.backend.device if fitter is not None else torch.device("cpu"),
            image_size=data_cfg.image_size,
            splat_format=data_cfg.splat_format,
        )

    def fetch(
        self,
        ids: Sequence[str],
        image: Callable[[int], np.ndarray | None],
        known: Sequence[bytes | None] | None = None,
    ) -> Fetched:
        """Splats of each sample: ``known[i]`` when given (a splat shard's own, never looked
        up), else the cache's entry under ``(ids[i], settings)``, else a fit of ``image(i)``
        (``[S, S, 3]`` uint8, or None when it cannot be had)."""
        known = [None] * len(ids) if known is None else known
        cache, settings, fitter = self.cache, self.settings, self.fitter
        device, image_size, writer = self.device, self.image_size, self.writer
        blobs = list(known)
        lookup = [i for i, b in enumerate(blobs) if b is None]
        if cache is not None and lookup:
            for i, blob in zip(
                lookup, cache.lookup([ids[i] for i in lookup], settings), strict=True
            ):
                blobs[i] = blob
        out = Fetched(Splats.from_list([], image_size, image_size), [])
        out.misses = [i for i in lookup if blobs[i] is None]
        out.hits = len(lookup) - len(out.misses)
        rows: list[tuple[list[int], torch.Tensor, torch.Tensor]] = []  # (positions, params, mask)
        stored = [i for i, b in enumerate(blobs) if b is not None]
        if stored:
            cached = codec.decode_batch([blobs[i] for i in stored], device)
            rows.append((stored, cached.params, cached.mask))
        images = {i: image(i) for i in out.misses} if fitter is not None else {}
        out.fitted = [i for i in out.misses if images.get(i) is not None]
        if out.fitted:
            pixels = upload(torch.from_numpy(np.stack([images[i] for i in out.fitted])), device)
            pixels = pixels.float().div_(255.0)
            done = fitter(pixels)
            fitted = Splats(done.params, done.mask, image_size, image_size)
            ridge = fitter.cfg.colour_ridge
            quantised = codec.quantise(self.splat_format, fitted, pixels, fitter.backend, ridge)
            good = done.ok & quantised.ok
            # the batch's read-back: which fits failed, and the cache's copy of the rest
            host_good, host_psnr = _download(good, done.psnr)
            encoded = quantised.to_bytes()
            fresh: list[tuple[str, bytes]] = []
            kept = []
            for j, i in enumerate(out.fitted):
                if host_good[j] and encoded[j] is not None:
                    kept.append(j)
                    fresh.append((ids[i], encoded[j]))
                else:
                    out.failed.append(i)
            if kept:
                index = upload(torch.tensor(kept), device)
                values = quantised.splats
                params, mask = _valid_first(values.params[index], values.mask[index])
                rows.append(([out.fitted[j] for j in kept], params, mask))
                out.psnr = float(host_psnr[kept].mean())
            if fresh and (writer or cache) is not None:
                out.evictions = (writer or cache).store(fresh, settings)
        out.kept, out.splats = _assemble(rows, device, image_size)
        return out


def _assemble(
    rows: list[tuple[list[int], torch.Tensor, torch.Tensor]], device: torch.device, size: int
) -> tuple[list[int], Splats]:
    """The batch's splats in ascending sample order from groups of ``(positions, params [k,
    n, 8], mask [k, n])`` on ``device``."""
    kept = sorted(i for positions, _, _ in rows for i in positions)
    if not kept:
        return [], Splats.from_list([], size, size).to(device)
    if len(rows) == 1:
        return kept, Splats(rows[0][1], rows[0][2], size, size)
    order = {i: k for k, i in enumerate(kept)}
    width = max(params.shape[1] for _, params, _ in rows)
    params = torch.zeros(len(kept), width, PARAMS_PER_SPLAT, device=device)
    mask = torch.zeros(len(kept), width, dtype=torch.bool, device=device)
    for positions, p, m in rows:
        index = upload(torch.tensor([order[i] for i in positions]), device)
        params[:, : p.shape[1]].index_copy_(0, index, p)
        mask[:, : m.shape[1]].index_copy_(0, index, m)
    return kept, Splats(params, mask, size, size)


def _valid_first(params: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows with their valid splats first, in their order (as a cached entry unpacks), and
    zeros after them: a stable sort on the device, no host sync."""
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)
    mask = mask.gather(1, order)
    params = params.gather(1, order[..., None].expand_as(params))
    return params * mask[..., None], mask


def upload(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``; from pinned memory without blocking on a GPU."""
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def _download(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """Host copies of ``tensors``: one wait for the current stream on a GPU (no device-wide
    synchronisation)."""
    if tensors[0].device.type != "cuda":
        return [t.cpu() for t in tensors]
    copies = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for t in tensors]
    for copy, t in zip(copies, tensors, strict=True):
        copy.copy_(t, non_blocking=True)
    done = torch.cuda.Event()
    done.record(torch.cuda.current_stream(tensors[0].device))
    done.synchronize()
    return copies


class CacheWriter:
    """Stores fresh splats in ``cache`` from a thread of its own, so the loader's thread
    never waits for the database. At most ``depth`` batches wait to be written (then
    :meth:`store` waits); :meth:`flush` waits until all are written. Evictions are counted
    as they happen and handed out by :meth:`take_evictions`."""

    def __init__(self, cache: SplatCache, depth: int = 4) -> None:
        self.cache = cache
        self._queue: queue.Queue[tuple[list[tuple[str, bytes]], str]] = queue.Queue(depth)
        self._evictions = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._run, name="splat-cache-writer", daemon=True).start()

    def store(self, items: Sequence[tuple[str, bytes]], settings: str) -> int:
        """Queue ``items``; returns 0 (evictions come later, see :meth:`take_evictions`)."""
        self._queue.put((list(items), settings))
        return 0

    def flush(self) -> None:
        self._queue.join()

    def take_evictions(self) -> int:
        with self._lock:
            count, self._evictions = self._evictions, 0
        return count

    def _run(self) -> None:
        while True:
            items, settings = self._queue.get()
            try:
                evicted = self.cache.store(items, settings)  # never raises a database error
                with self._lock:
                    self._evictions += evicted
            finally:
                self._queue.task_done()
