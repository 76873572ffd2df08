"""Per-epoch counters of the streaming graph: samples, skips by reason, cache hits/misses,
time waiting for data vs fitting. Shared by the graph's nodes (several threads), read by the
training loop and the benchmark."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

logger = logging.getLogger("streamfit.data")

# Per reason and epoch, this many skips are logged one by one; the rest are only counted, so a
# shard full of bad samples cannot flood the log.
MAX_SKIP_WARNINGS = 50


@dataclass
class EpochStats:
    """What one epoch of one rank did. A resumed epoch carries on from the counts its
    checkpoint holds (:meth:`LoaderStats.snapshot` and :meth:`LoaderStats.restore`).

    ``samples``: samples yielded to the consumer; ``skipped``: reason -> count;
    ``cache_hits``/``cache_misses``: samples served from / fitted into the cache
    (``precomputed`` samples came with splats from splat shards and touch neither);
    ``fit_seconds``: fitting misses (the loader's thread: fetching, fitting, assembling the
    batch on the device); ``fit_gpu_seconds``: the same work timed by CUDA events on the
    loader's stream (0 on a CPU); ``data_wait_seconds``: the fit node waiting for decoded
    samples; ``consumer_wait_seconds``: the training loop waiting for batches;
    ``seconds``: wall time from the epoch's first request to its end.
    """

    epoch: int
    samples: int = 0
    batches: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    cache_hits: int = 0
    cache_misses: int = 0
    cache_evictions: int = 0
    precomputed: int = 0
    fit_seconds: float = 0.0
    fit_gpu_seconds: float = 0.0
    data_wait_seconds: float = 0.0
    consumer_wait_seconds: float = 0.0
    seconds: float = 0.0
    complete: bool = False

    @property
    def hit_rate(self) -> float:
        looked_up = self.cache_hits + self.cache_misses
        return self.cache_hits / looked_up if looked_up else float("nan")

    def to_dict(self) -> dict:
        out = asdict(self)
        out["hit_rate"] = self.hit_rate
        return out


class LoaderStats:
    """Thread-safe per-epoch counters; ``epochs`` maps epoch -> :class:`EpochStats`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.epochs: dict[int, EpochStats] = {}
        self.current = EpochStats(epoch=0)
        self._warned: Counter[str] = Counter()
        self._started: float | None = None

    def begin_epoch(self, epoch: int) -> None:
        with self._lock:
            self.current = EpochStats(epoch=epoch)
            self.epochs[epoch] = self.current
            self._warned.clear()
            self._started = None

    def mark_request(self) -> None:
        """The consumer asked for a batch: the epoch's clock starts at the first request."""
        with self._lock:
            if self._started is None:
                self._started = time.perf_counter()

    def end_epoch(self) -> EpochStats:
        with self._lock:
            if self._started is not None:
                # += : a resumed epoch starts from the seconds its checkpoint counted
                self.current.seconds += time.perf_counter() - self._started
            self.current.complete = True
            return self.current

    def skip(self, reason: str, shard: str, key: str, detail: str = "", count: int = 1) -> None:
        """Count ``count`` skipped samples (one log line), naming shard and key (``<shard>``:
        the whole shard; ``<bytes A-B>``, ``<rest>``: a part of it no key names)."""
        with self._lock:
            self.current.skipped[reason] = self.current.skipped.get(reason, 0) + count
            self._warned[reason] += 1
            n = self._warned[reason]
        if n <= MAX_SKIP_WARNINGS:
            suffix = f": {detail}" if detail else ""
            if key == "<shard>":
                logger.warning("skipped shard %s (%s)%s", shard, reason, suffix)
            elif key.startswith("<"):  # a part of a shard with no sample key: <bytes A-B>, <rest>
                logger.warning("skipped %s of shard %s (%s)%s", key[1:-1], shard, reason, suffix)
            else:
                logger.warning("skipped sample %r in shard %s (%s)%s", key, shard, reason, suffix)
            if n == MAX_SKIP_WARNINGS:
                logger.warning("further %r skips this epoch are counted without a log line", reason)

    def add(self, **counts: float) -> None:
        """Add to the named counters of the current epoch (``samples=64, fit_seconds=1.2``)."""
        with self._lock:
            for name, value in counts.items():
                setattr(self.current, name, getattr(self.current, name) + value)

    def snapshot(self, *names: str) -> dict:
        """The named counters of the current epoch so far (``seconds``: wall time until now),
        for a node's state: restored with :meth:`restore`, a resumed epoch goes on counting
        from there instead of from 0."""
        with self._lock:
            out = {n: getattr(self.current, n) for n in names if n != "seconds"}
            if "skipped" in out:
                out["skipped"] = dict(out["skipped"])
            if "seconds" in names:
                running = time.perf_counter() - self._started if self._started else 0.0
                out["seconds"] = self.current.seconds + running
            return out

    def restore(self, counts: dict) -> None:
        """Add a :meth:`snapshot` (taken by the checkpointed run) to the current epoch."""
        with self._lock:
            for name, value in counts.items():
                if name == "skipped":
                    for reason, n in value.items():
                        self.current.skipped[reason] = self.current.skipped.get(reason, 0) + n
                else:
                    setattr(self.current, name, getattr(self.current, name) + value)

    def history(self) -> dict[int, dict]:
        """The finished epochs' stats, as plain data (part of the loader's state)."""
        with self._lock:
            return {e: asdict(s) for e, s in self.epochs.items() if s.complete}

    def load_history(self, history: dict[int, dict]) -> None:
        """Put back finished epochs saved by :meth:`history` (the current one is kept)."""
        with self._lock:
            for epoch, values in history.items():
                if self.epochs.get(int(epoch)) is not self.current:
                    self.epochs[int(epoch)] = EpochStats(**values)
