"""The streaming graph end to end: batches, cache-served epochs, exact resume (2 ranks), bad
input counted and skipped, real photos from imagenet-sample."""

from __future__ import annotations

import gc
import io
import json
import struct
import tarfile
import zlib
from pathlib import Path

import pytest
from PIL import Image

from streamfit.data import DataConfig, SplatCache, build_loader
from streamfit.data.synthetic import render_sample, write_split
from streamfit.data.writer import ShardWriter
from streamfit.fit import FitConfig

IMAGENET = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "imagenet-sample"
TINY_FIT = FitConfig(gaussians=4, iters=2, backend="torch", device="cpu")


def tiny_data(shards: str, **overrides) -> DataConfig:
    base = dict(
        shards=shards,
        image_size=8,
        batch_size=4,
        shuffle_buffer=5,
        decode_workers=2,
        prefetch=2,
        log_every=0,
    )
    return DataConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> str:
    return write_split(
        tmp_path_factory.mktemp("shards"), "train", 30, image_size=12, shard_size=7, seed=0
    )


def epoch_keys(loader) -> list[str]:
    return [k for batch in loader for k in batch["keys"]]


def test_batches_and_cached_second_epoch(shards: str, tmp_path) -> None:
    cfg = tiny_data(shards, cache_dir=str(tmp_path / "cache"), yield_rgb=True)
    loader = build_loader(cfg, TINY_FIT)
    it = iter(loader)
    batch = next(it)
    assert batch["splats"].params.shape == (4, 4, 8) and batch["splats"].mask.all()
    assert batch["tokens"].shape == (4, 77) and batch["rgb"].shape == (4, 3, 8, 8)
    assert 0.0 <= float(batch["rgb"].min()) and float(batch["rgb"].max()) <= 1.0
    assert batch["json"][0]["classname"] in batch["captions"][0] and batch["epoch"] == 0
    first = {
        k: s for b in [batch, *it] for k, s in zip(b["keys"], b["splats"].to_list(), strict=True)
    }
    assert len(first) == 30
    stats0 = loader.epoch_stats(0)
    assert (stats0.samples, stats0.cache_misses, stats0.cache_hits) == (30, 30, 0)
    second = {k: s for b in loader for k, s in zip(b["keys"], b["splats"].to_list(), strict=True)}
    stats1 = loader.epoch_stats(1)
    assert (stats1.samples, stats1.cache_hits, stats1.cache_misses, stats1.hit_rate) == (
        30,
        30,
        0,
        1.0,
    )
    for key, splats in first.items():  # the cache serves exactly what the fit produced
        assert (second[key] == splats).all()
    # a setting that changes the fit never returns the stored splats
    changed = build_loader(cfg, FitConfig(gaussians=4, iters=3, backend="torch", device="cpu"))
    epoch_keys(changed)
    assert changed.epoch_stats(0).cache_hits == 0 and changed.epoch_stats(0).cache_misses == 30


@pytest.mark.parametrize("stop_batches", [1, 2])
def test_resume_is_exact_with_two_ranks(shards: str, stop_batches: int) -> None:
    cfg = tiny_data(shards)
    seen: list[str] = []
    for rank in range(2):
        full = build_loader(cfg, TINY_FIT, rank=rank, world_size=2)
        expected = [epoch_keys(full), epoch_keys(full)]  # epochs 0 and 1
        run = build_loader(cfg, TINY_FIT, rank=rank, world_size=2)
        head: list[str] = []
        for i, batch in enumerate(run):
            head += batch["keys"]
            if i + 1 == stop_batches:
                break
        assert len(head) == 4 * stop_batches
        state = json.loads(json.dumps(run.state_dict()))  # what a checkpoint would hold
        assert len(json.dumps(state)) < 4000
        del run  # the killed run
        gc.collect()  # here, not in one of its own threads (which cannot join themselves)
        resumed = build_loader(cfg, TINY_FIT, rank=rank, world_size=2)
        resumed.load_state_dict(state)
        rest = epoch_keys(resumed)
        assert head + rest == expected[0]
        assert epoch_keys(resumed) == expected[1]  # and the next epoch follows
        seen += expected[0]
    assert len(seen) == len(set(seen)) == 30  # every sample exactly once across the ranks


def png(size: tuple[int, int] = (12, 12)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(out, format="PNG")
    return out.getvalue()


def huge_png_header(width: int = 20000, height: int = 20000) -> bytes:
    """A PNG whose header announces ``width x height`` pixels (the pixel data is absent)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def write_bad_shards(directory: Path) -> tuple[str, set[str]]:
    import random

    rng = random.Random(0)
    good: set[str] = set()
    jpeg = io.BytesIO()
    render_sample(rng, 1, 64)[0].save(jpeg, format="JPEG")
    with ShardWriter(directory, prefix="bad", shard_size=100) as writer:
        for i in range(6):
            writer.write(f"good{i}", {"png": png(), "txt": b"a red square", "json": b"{}"})
            good.add(f"good{i}")
        writer.write("corrupt", {"jpg": jpeg.getvalue()[: len(jpeg.getvalue()) // 2], "txt": b"x"})
        writer.write("garbage", {"jpg": b"this is not an image", "txt": b"x"})
        writer.write("noimage", {"txt": b"a caption without an image", "json": b"{}"})
        writer.write("nocaption", {"png": png(), "json": b"{}"})
        writer.write("emptycaption", {"png": png(), "txt": b"  \n"})
        writer.write("zerobytes", {"jpg": b"", "txt": b"x"})
        writer.write("huge", {"png": huge_png_header(), "txt": b"a huge image"})
        writer.write("badjson", {"png": png(), "txt": b"x", "json": b"{not json"})
    with ShardWriter(directory, prefix="cut", shard_size=100) as writer:
        for i in range(5):
            writer.write(f"cut{i}", {"png": png((40, 40)), "txt": b"a red square"})
    cut = writer.paths[0]
    with tarfile.open(cut) as tar:
        offset = tar.getmember("cut3.png").offset_data
    cut.write_bytes(cut.read_bytes()[: offset + 20])  # ends inside the 4th sample's image
    good |= {"cut0", "cut1", "cut2"}
    return f"{directory}/bad-000000.tar::{cut}", good


def test_bad_input_is_counted_skipped_and_never_cached(tmp_path, caplog) -> None:
    pattern, good = write_bad_shards(tmp_path / "shards")
    cfg = tiny_data(pattern, cache_dir=str(tmp_path / "cache"), shuffle_buffer=3, cache_key="key")
    loader = build_loader(cfg, TINY_FIT)
    with caplog.at_level("WARNING", logger="streamfit.data"):
        yielded = set(epoch_keys(loader))
    assert yielded == good
    assert loader.epoch_stats(0).skipped == {
        "decode_error": 2,
        "no_image": 1,
        "no_caption": 2,
        "empty_image": 1,
        "too_large": 1,
        "bad_json": 1,
        "truncated_shard": 1,
    }
    warnings = "\n".join(r.getMessage() for r in caplog.records)
    assert "'huge' in shard" in warnings and "bad-000000.tar" in warnings and "'cut3'" in warnings
    cache = SplatCache(tmp_path / "cache", cfg.cache_max_bytes)
    assert len(cache) == len(good)


@pytest.mark.skipif(not IMAGENET.is_dir(), reason="../shared/data/imagenet-sample is absent")
def test_imagenet_sample_second_epoch_from_cache(tmp_path) -> None:
    cfg = DataConfig(
        shards=str(IMAGENET / "train-000000.tar"),
        image_size=48,
        batch_size=50,
        cache_dir=str(tmp_path / "cache"),
        log_every=0,
    )
    # how much faster a cached epoch runs is measured by tools/benchmark_loader.py
    # (BENCHMARKS.md), not here
    fit_cfg = FitConfig(gaussians=36, iters=4, backend="cpu")
    loader = build_loader(cfg, fit_cfg)
    batch = next(iter(loader))
    assert batch["splats"].params.shape[0] == 50 and batch["tokens"].shape == (50, 77)
    assert len(epoch_keys(loader)) == 200
    assert len(epoch_keys(loader)) == 200
    first, second = loader.epoch_stats(0), loader.epoch_stats(1)
    assert first.skipped == {} and second.hit_rate == 1.0
    assert second.cache_misses == 0


def test_cached_epoch_decodes_no_pixels(shards: str, tmp_path, monkeypatch) -> None:
    from streamfit.data.decode import Decoder

    cfg = tiny_data(shards, cache_dir=str(tmp_path / "cache"))
    assert len(epoch_keys(build_loader(cfg, TINY_FIT))) == 30

    def refuse(self, encoded: bytes):
        raise AssertionError("a cached sample was decoded")

    monkeypatch.setattr(Decoder, "decode_image", refuse)
    loader = build_loader(cfg, TINY_FIT)
    assert len(epoch_keys(loader)) == 30 and loader.epoch_stats(0).hit_rate == 1.0


def test_cache_failures_cost_time_not_the_run(shards: str, tmp_path, monkeypatch) -> None:
    import sqlite3

    def locked(*args, **kwargs):
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(SplatCache, "get_many", locked)
    monkeypatch.setattr(SplatCache, "put_many", locked)
    loader = build_loader(tiny_data(shards, cache_dir=str(tmp_path / "cache")), TINY_FIT)
    assert len(epoch_keys(loader)) == 30 and loader.epoch_stats(0).cache_misses == 30


def test_set_epoch_starts_that_epoch(shards: str) -> None:
    cfg = tiny_data(shards)
    loader = build_loader(cfg, TINY_FIT)
    next(iter(loader))  # part of epoch 0, then abandoned
    loader.set_epoch(3)
    batches = list(loader)
    assert {b["epoch"] for b in batches} == {3} and loader.epoch == 3
    assert [k for b in batches for k in b["keys"]] == epoch_keys(
        build_loader(cfg, TINY_FIT, epoch=3)
    )
