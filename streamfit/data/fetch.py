"""Splats for a batch of samples, from the cache or fitted: the one path the training loader's
fit node and the labelled evaluation loader share. Cached entries are looked up together,
the misses fitted together as one batch, and only finite fits are written back, so neither
caller can put a failed fit into the cache the other reads."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from streamfit import codec
from streamfit.data.cache import SplatCache
from streamfit.fit import FitBackend, FitConfig, fit, get_backend


@dataclass
class Fetched:
    """What :func:`fetch_or_fit` found and made for one batch.

    ``blobs[i]``: sample ``i``'s splat blob (:mod:`streamfit.codec`), or None when it has none
    (a miss that was not fitted, had no image, or whose fit failed). ``misses``: samples looked
    up and not found; ``fitted``: the misses fitted now (those with an image); ``failed``: fits
    with a non-finite result, or one the splat format cannot hold, neither returned nor cached.
    """

    blobs: list[bytes | None]
    hits: int = 0
    misses: list[int] = field(default_factory=list)
    fitted: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    evictions: int = 0
    psnr: float = float("nan")  # mean PSNR of the successful fits


def fetch_or_fit(
    ids: Sequence[str],
    known: Sequence[bytes | None],
    image: Callable[[int], np.ndarray | None],
    cache: SplatCache | None,
    settings: str,
    fit_cfg: FitConfig | None,
    backend: FitBackend | None,
    splat_format: str = codec.DEFAULT_FORMAT,
) -> Fetched:
    """Splats of each sample: ``known[i]`` when given (a splat shard's own, never looked up),
    else the cache's entry under ``(ids[i], settings)``, else a fit of ``image(i)`` (``[S, S,
    3]`` uint8, or None when it cannot be had). ``fit_cfg=None`` fits nothing. Fits are
    encoded in ``splat_format`` (the format ``settings`` was made for), their colours re-solved
    against the image for the quantised geometry.

    A cache that cannot be read or written costs fitting time, never the run
    (:meth:`SplatCache.lookup` and :meth:`SplatCache.store` turn its errors into misses).
    """
    blobs = list(known)
    lookup = [i for i, b in enumerate(blobs) if b is None]
    if cache is not None and lookup:
        for i, blob in zip(lookup, cache.lookup([ids[i] for i in lookup], settings), strict=True):
            blobs[i] = blob
    out = Fetched(blobs, misses=[i for i in lookup if blobs[i] is None])
    out.hits = len(lookup) - len(out.misses)
    if fit_cfg is None or not out.misses:
        return out
    images = {i: image(i) for i in out.misses}
    out.fitted = [i for i in out.misses if images[i] is not None]
    if not out.fitted:
        return out
    pixels = torch.from_numpy(np.stack([images[i] for i in out.fitted])).float().div_(255.0)
    backend = backend or get_backend(fit_cfg.backend, fit_cfg.device)
    result = fit(pixels, fit_cfg, backend)
    encoded = codec.encode(splat_format, result.splats, pixels, backend, fit_cfg.colour_ridge)
    fresh: list[tuple[str, bytes]] = []
    for j, i in enumerate(out.fitted):
        blob = encoded[j] if bool(result.ok[j]) else None
        if blob is not None:
            blobs[i] = blob
            fresh.append((ids[i], blob))
        else:
            out.failed.append(i)
    if cache is not None and fresh:
        out.evictions = cache.store(fresh, settings)
    ok = result.ok
    out.psnr = float(result.psnr[ok].mean()) if bool(ok.any()) else float("nan")
    return out
