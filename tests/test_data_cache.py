"""The splat cache: round trip, settings isolation, bounded size with LRU eviction, checksum
verification, and durability when writer processes are killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from streamfit import codec
from streamfit.data.cache import DB_NAME, SplatCache
from streamfit.splats import Splats


def blob_for(i: int, n: int | None = None) -> bytes:
    """A deterministic q64 splat blob for entry ``i`` (1..50 splats, or ``n``)."""
    n = 1 + i % 50 if n is None else n
    params = torch.from_numpy(np.random.default_rng(i).standard_normal((n, 8)).astype("f4"))
    return codec.encode("q64", Splats.from_list([params], 32, 32))[0]


def test_round_trip_and_settings_isolation(tmp_path) -> None:
    cache = SplatCache(tmp_path, max_bytes=1 << 20)
    params = torch.randn(7, 8)
    blob = codec.encode("fp16", Splats.from_list([params], 32, 32))[0]
    cache.put_many([("a", blob), ("b", blob_for(2))], settings="s1")
    got = cache.get_many(["a", "b", "c"], settings="s1")
    torch.testing.assert_close(codec.decode(got[0]).params[0], params.half().float())
    assert got[1] == blob_for(2) and got[2] is None
    assert cache.get_many(["a"], settings="s2") == [None]  # other settings never see s1 entries
    assert (cache.counters.hits, cache.counters.misses, cache.counters.writes) == (2, 2, 2)
    # a second handle (another rank) sees the committed entries
    assert SplatCache(tmp_path, max_bytes=1 << 20).get_many(["b"], "s1") == [blob_for(2)]


def test_a_blob_that_is_not_a_splat_blob_is_refused(tmp_path) -> None:
    cache = SplatCache(tmp_path, max_bytes=1 << 20)
    with pytest.raises(ValueError, match="a: not a splat blob"):
        cache.put_many([("a", bytes(16 * 10))], "s")
    assert len(cache) == 0


def test_bounded_with_lru_eviction(tmp_path) -> None:
    entry = blob_for(0, n=10)
    size = len(entry)
    cache = SplatCache(tmp_path, max_bytes=size * 10)
    cache.put_many([(f"k{i}", entry) for i in range(10)], "s")
    assert cache.total_bytes() == size * 10 and cache.counters.evictions == 0
    cache.get_many(["k0"], "s")  # k0 becomes the most recently used
    cache.put_many([("new", entry)], "s")
    assert cache.total_bytes() <= size * 10
    kept = {k for k, _, _ in cache.entries()}
    assert "k0" in kept and "new" in kept and "k1" not in kept
    assert cache.counters.evictions == 11 - len(kept)
    assert cache.total_bytes() == size * len(kept)


def test_corrupt_row_is_never_returned(tmp_path) -> None:
    cache = SplatCache(tmp_path, max_bytes=1 << 20)
    cache.put_many([("a", blob_for(1)), ("b", blob_for(2))], "s")
    with sqlite3.connect(tmp_path / DB_NAME) as conn:
        conn.execute("UPDATE splats SET params = ? WHERE key = 'a'", (b"\1" * len(blob_for(1)),))
    assert cache.get_many(["a", "b"], "s") == [None, blob_for(2)]
    assert cache.counters.corrupt == 1 and len(cache) == 1


WRITER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    from test_data_cache import blob_for
    from streamfit.data.cache import SplatCache
    cache = SplatCache({path!r}, max_bytes=200_000)
    start, step = int(sys.argv[1]), int(sys.argv[2])
    i = start
    while True:
        cache.put_many([(f"k{{j}}", blob_for(j)) for j in range(i, i + 8 * step, step)], "s")
        cache.get_many([f"k{{j}}" for j in range(max(0, i - 40), i)], "s")
        i += 8 * step
    """
)


def test_sigkill_while_writing_never_corrupts(tmp_path) -> None:
    script = WRITER.format(tests=os.path.dirname(__file__), path=str(tmp_path))
    rng = np.random.default_rng(0)
    for round_ in range(3):
        # two writer processes share the cache, as two ranks on one machine do
        procs = [
            subprocess.Popen([sys.executable, "-c", script, str(10_000 * round_ + r), "2"])
            for r in range(2)
        ]
        deadline = time.monotonic() + 60
        while (
            len(SplatCache(tmp_path, 200_000)) < 50 * (round_ + 1) and time.monotonic() < deadline
        ):
            time.sleep(0.05)
        time.sleep(float(rng.uniform(0.0, 0.3)))
        for proc in procs:
            os.kill(proc.pid, signal.SIGKILL)
        for proc in procs:
            proc.wait()
        cache = SplatCache(tmp_path, max_bytes=200_000)
        entries = list(cache.entries())
        assert entries, "the writers committed nothing"
        for key, _, blob in entries:
            assert blob == blob_for(int(key[1:]))
        keys = [key for key, _, _ in entries]
        assert all(b is not None for b in cache.get_many(keys, "s"))
        assert cache.counters.corrupt == 0
        assert cache.total_bytes() == sum(len(b) for _, _, b in entries) <= 200_000
