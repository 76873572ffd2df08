"""Loader modes: ``data.fit: none`` (pixels only), and per-epoch counters that survive a
resume, on the node-affine schedule of two single-rank nodes."""

from __future__ import annotations

import gc
import json

import pytest

from streamfit.data import DataConfig, build_loader
from streamfit.data.synthetic import write_split
from streamfit.fit import FitConfig

TINY_FIT = FitConfig(gaussians=4, iters=2, backend="torch", device="cpu")


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> str:
    return write_split(
        tmp_path_factory.mktemp("modes"), "train", 30, image_size=12, shard_size=7, seed=0
    )


def tiny_data(shards: str, **overrides) -> DataConfig:
    base = dict(shards=shards, image_size=8, batch_size=4, shuffle_buffer=5, log_every=0)
    return DataConfig(**{**base, **overrides})


def test_fit_none_yields_pixels_without_fitting(shards: str, tmp_path) -> None:
    cfg = tiny_data(shards, fit="none", cache_dir=str(tmp_path / "unused"))
    loader = build_loader(cfg, None)
    batches = list(loader)
    assert sum(len(b["keys"]) for b in batches) == 30
    assert all("splats" not in b and b["rgb"].shape[1:] == (3, 8, 8) for b in batches)
    assert batches[0]["tokens"].shape == (4, 77) and loader.cache is None
    stats = loader.epoch_stats(0)
    assert (stats.samples, stats.cache_hits, stats.cache_misses, stats.fit_seconds) == (30, 0, 0, 0)
    assert not (tmp_path / "unused").exists()
    with pytest.raises(ValueError, match="data.fit"):
        DataConfig(fit="nothing")


def counters(loader, epoch: int) -> tuple:
    """What a resume must not change. (Hits and misses are compared as their sum: batches the
    killed run prefetched after its checkpoint were fitted and cached, so they come back as
    hits.)"""
    s = loader.epoch_stats(epoch)
    return s.samples, s.batches, s.cache_hits + s.cache_misses, s.skipped, s.complete


@pytest.mark.parametrize(("epoch", "stop"), [(0, 1), (0, 3), (1, 2)])
def test_counters_survive_a_resume(shards: str, tmp_path, epoch: int, stop: int) -> None:
    """Rank 1 of 2 nodes: run to batch ``stop`` of ``epoch``, checkpoint, resume in a fresh
    loader: the epoch ends with the counts of an uninterrupted run, earlier epochs kept."""
    kw = dict(world_size=2)

    def cfg(name: str) -> DataConfig:
        return tiny_data(shards, cache_dir=str(tmp_path / name), ranks_per_node=1, schedule="node")

    full = build_loader(cfg("full"), TINY_FIT, rank=1, **kw)
    expected = []
    for e in range(epoch + 1):
        keys = [k for b in full for k in b["keys"]]
        expected.append(counters(full, e))
    run = build_loader(cfg("run"), TINY_FIT, rank=1, **kw)
    for _ in range(epoch):
        list(run)
    head = []
    for i, batch in enumerate(run):
        head += batch["keys"]
        if i + 1 == stop:
            break
    state = json.loads(json.dumps(run.state_dict()))  # what a checkpoint holds
    del run
    gc.collect()
    resumed = build_loader(cfg("run"), TINY_FIT, rank=1, **kw)
    resumed.load_state_dict(state)
    rest = [k for b in resumed for k in b["keys"]]
    assert head + rest == keys
    for e in range(epoch + 1):
        assert counters(resumed, e) == expected[e]
    if epoch:  # the second epoch comes from the cache, before and after the resume
        assert resumed.epoch_stats(epoch).cache_hits == len(keys)
        assert resumed.epoch_stats(0).cache_misses == expected[0][2]
    else:  # the fits before the checkpoint are still counted
        assert resumed.epoch_stats(0).cache_misses >= 4 * stop
