"""Hostile input to the data side, one test per case: img2dataset output folders, damaged and
odd shards, damaged splat caches, repeated keys, odd image modes. Each ends in a clear
one-line error or a counted skip with the run going on."""

from __future__ import annotations

import io
import json
import logging
import os
import sqlite3
import struct
import tarfile
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from streamfit import codec
from streamfit.config import ConfigError, load_config
from streamfit.data import DataConfig, EmptyEpoch, SplatCache, build_loader
from streamfit.data import cache as cache_module
from streamfit.data.decode import decode_image
from streamfit.data.shards import ShardReader, count_shard, expand_shards
from streamfit.fit import FitConfig
from streamfit.splats import Splats
from streamfit.train.run import count_samples

TOOLS = Path(__file__).resolve().parents[1] / "tools"
TINY_FIT = FitConfig(gaussians=4, iters=2, backend="torch", device="cpu")


def tiny_data(shards: str, **overrides) -> DataConfig:
    base = dict(shards=shards, image_size=8, batch_size=4, shuffle_buffer=3, log_every=0)
    return DataConfig(**{**base, **overrides})


def jpeg(colour: tuple[int, int, int], size: tuple[int, int] = (12, 10), **save) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="JPEG", **save)
    return out.getvalue()


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def img2dataset_shard(path: Path, n: int, first: int = 0, colour: int = 0) -> Path:
    """A shard as img2dataset writes it: ``000000000.jpg/.txt/.json`` per sample."""
    members = []
    for i in range(first, first + n):
        key = f"{i:09d}"
        meta = {"url": f"http://x/{i}.jpg", "key": key, "status": "success", "width": 12}
        members += [
            (f"{key}.jpg", jpeg((colour, 10 * i % 256, 90))),
            (f"{key}.txt", f"picture {i}".encode()),
            (f"{key}.json", json.dumps(meta).encode()),
        ]
    return write_tar(path, members)


def epoch_keys(loader) -> list[str]:
    return [k for batch in loader for k in batch["keys"]]


# ---------------------------------------------------------------------- listing and counting
@pytest.fixture()
def bad_folder(tmp_path: Path) -> Path:
    """img2dataset's output plus every kind of broken shard a pattern can match."""
    folder = tmp_path / "out"
    folder.mkdir()
    img2dataset_shard(folder / "00000.tar", 5)
    (folder / "00000.parquet").write_bytes(b"PAR1" + b"\1" * 600 + b"PAR1")
    (folder / "00000_stats.json").write_text(json.dumps({"count": 5, "successes": 5}))
    cut = img2dataset_shard(folder / "00001.tar", 5, first=5)
    with tarfile.open(cut) as tar:
        offset = tar.getmember("000000008.jpg").offset_data
    cut.write_bytes(cut.read_bytes()[: offset + 10])  # 3 whole samples, then cut
    (folder / "00002.tar").write_bytes(os.urandom(3000))  # not a tar
    (folder / "00003.tar").write_bytes(b"")  # an interrupted download
    (folder / "00004.tar").mkdir()  # a directory
    return folder


def test_glob_leaves_out_img2dataset_side_files(bad_folder: Path) -> None:
    names = [Path(p).name for p in expand_shards(f"{bad_folder}/*")]
    assert names == ["00000.tar", "00001.tar", "00002.tar", "00003.tar", "00004.tar"]


def test_counting_skips_what_the_loader_skips(bad_folder: Path) -> None:
    pattern = f"{bad_folder}/*::{bad_folder}/00009.tar"  # and a missing shard
    expected_skips = {
        "truncated_shard": 1,
        "not_a_tar": 2,  # the random bytes and the directory
        "empty_shard": 1,
        "missing_shard": 1,
    }
    assert count_samples(pattern) == 8
    loader = build_loader(tiny_data(pattern), TINY_FIT)
    assert len(epoch_keys(loader)) == 8
    assert loader.epoch_stats(0).skipped == expected_skips
    totals: dict[str, int] = {}
    for shard in expand_shards(pattern):
        for reason, n in count_shard(shard)[1].items():
            totals[reason] = totals.get(reason, 0) + n
    assert totals == expected_skips


def test_side_files_named_directly_are_not_a_tar(bad_folder: Path) -> None:
    pattern = f"{bad_folder}/00000.tar::{bad_folder}/00000_stats.json::{bad_folder}/00000.parquet"
    reader = ShardReader(expand_shards(pattern), shuffle_buffer=1)
    assert len(list(reader)) == 5
    assert reader.stats.current.skipped == {"not_a_tar": 2}


@pytest.mark.parametrize("pattern", ["{dir}", "{dir}/missing-{{000..003}}.tar"])
def test_an_epoch_of_nothing_is_an_error_naming_the_pattern(
    tmp_path: Path, capsys, pattern: str, program
) -> None:
    pattern = pattern.format(dir=tmp_path)
    with pytest.raises(EmptyEpoch, match="yielded no samples"):
        epoch_keys(build_loader(tiny_data(pattern), TINY_FIT))
    with pytest.raises(ConfigError, match="no usable sample"):
        count_samples(pattern)
    bench = program("tools/benchmark_loader")
    args = ["--shards", pattern, "--backend", "torch", "--gaussians", "4", "--iters", "1"]
    assert bench.main([*args, "--image-size", "8", "--epochs", "1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: epoch 0 yielded no samples") and repr(pattern) in err


def test_unbalanced_braces_are_one_line_errors(tmp_path: Path, capsys, program) -> None:
    pattern = f"{tmp_path}/{{00000..00003.tar"
    with pytest.raises(ValueError, match="unbalanced braces"):
        expand_shards(pattern)
    with pytest.raises(ValueError, match="data.shards: .*unbalanced braces"):
        DataConfig(shards=pattern)
    with pytest.raises(ValueError, match="data.shards: .*unbalanced braces"):
        load_config(DataConfig, None, [f"shards={pattern}"])
    with pytest.raises(SystemExit) as exit_info:
        program("tools/benchmark_loader").main(["--shards", pattern])
    assert exit_info.value.code == 2 and "unbalanced braces" in capsys.readouterr().err


# ---------------------------------------------------------------------- repeated keys
def test_repeated_member_is_counted_and_dropped(tmp_path: Path) -> None:
    shard = write_tar(
        tmp_path / "dup.tar",
        [
            ("a.jpg", jpeg((200, 0, 0))),
            ("a.txt", b"first"),
            ("a.jpg", jpeg((0, 200, 0))),  # the same key again, back to back
            ("a.txt", b"second"),
            ("b.jpg", jpeg((0, 0, 200))),
            ("b.txt", b"third"),
        ],
    )
    loader = build_loader(tiny_data(str(shard)), TINY_FIT)
    assert epoch_keys(loader) == ["b"]
    assert loader.epoch_stats(0).skipped == {"duplicate_member": 2}
    assert count_shard(str(shard)) == (1, {"duplicate_member": 2})


def test_content_keys_keep_two_img2dataset_runs_apart(tmp_path: Path, caplog) -> None:
    # img2dataset restarts keys at 000000000 on every run: the same keys, other images
    one = img2dataset_shard(tmp_path / "run1-00000.tar", 3, colour=0)
    two = img2dataset_shard(tmp_path / "run2-00000.tar", 3, colour=250)
    cfg = tiny_data(f"{one}::{two}", cache_dir=str(tmp_path / "cache"), shuffle_shards=False)
    loader = build_loader(cfg, TINY_FIT)
    batches = list(loader)
    keys = [k for b in batches for k in b["keys"]]
    assert sorted(keys) == sorted(2 * [f"{i:09d}" for i in range(3)])
    assert len(loader.cache) == 6  # six entries, none served to the wrong image
    colour = {
        (b["shards"][j], k): float(b["splats"].params[j, :, 5].mean())
        for b in batches
        for j, k in enumerate(b["keys"])
    }
    for i in range(3):
        assert colour[(str(two), f"{i:09d}")] > colour[(str(one), f"{i:09d}")] + 0.5
    with caplog.at_level(logging.WARNING, logger="streamfit.data"):
        build_loader(tiny_data(cfg.shards, cache_dir=cfg.cache_dir, cache_key="key"), TINY_FIT)
    assert "cache_key=content is safe" in caplog.text


# ---------------------------------------------------------------------- the splat cache
@pytest.fixture()
def shard(tmp_path: Path) -> str:
    return str(img2dataset_shard(tmp_path / "00000.tar", 6))


def filled_cache(shard: str, cache_dir: Path) -> DataConfig:
    cfg = tiny_data(shard, cache_dir=str(cache_dir))
    loader = build_loader(cfg, TINY_FIT)
    assert len(epoch_keys(loader)) == 6
    loader.cache.close()
    return cfg


@pytest.mark.parametrize("damage", ["garbage", "zeroed_header", "halved"])
def test_damaged_cache_is_moved_aside(tmp_path: Path, shard: str, caplog, damage: str) -> None:
    cfg = filled_cache(shard, tmp_path / "cache")
    path = tmp_path / "cache" / "splats.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("VACUUM")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    for suffix in ("-wal", "-shm"):  # as a run that ended cleanly leaves it
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    data = path.read_bytes()
    damaged = {
        "garbage": os.urandom(len(data)),
        "zeroed_header": bytes(100) + data[100:],
        "halved": data[: len(data) // 2],
    }[damage]
    path.write_bytes(damaged)
    with caplog.at_level(logging.WARNING, logger="streamfit.data"):
        loader = build_loader(cfg, TINY_FIT)
        assert len(epoch_keys(loader)) == 6 and loader.cache.enabled
    (aside,) = [
        p
        for p in path.parent.iterdir()
        if p.name.startswith("splats.sqlite.damaged-") and not p.name.endswith(("-wal", "-shm"))
    ]
    assert aside.read_bytes() == damaged  # kept for a post-mortem
    warning = next(r.getMessage() for r in caplog.records if "does not open" in r.getMessage())
    assert str(path) in warning and str(aside) in warning
    assert len(epoch_keys(loader)) == 6 and loader.epoch_stats(1).hit_rate == 1.0


@pytest.mark.parametrize("damage", ["emptied", "deleted"])
def test_cache_damaged_during_a_run(tmp_path: Path, shard: str, caplog, damage: str) -> None:
    cfg = tiny_data(shard, cache_dir=str(tmp_path / "cache"), batch_size=2)
    loader = build_loader(cfg, TINY_FIT)
    assert len(epoch_keys(loader)) == 6
    path = tmp_path / "cache" / "splats.sqlite"
    if damage == "emptied":
        path.write_bytes(b"")
    else:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    start = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="streamfit.data"):
        assert len(epoch_keys(loader)) == 6  # refitted
        assert len(epoch_keys(loader)) == 6  # and kept again
    assert time.perf_counter() - start < 30
    assert loader.epoch_stats(2).hit_rate == 1.0
    warnings = [r.getMessage() for r in caplog.records]
    assert sum(f"was {damage} during the run" in w for w in warnings) == 1, warnings
    assert not any("switched off" in w or "failed" in w for w in warnings), warnings


def test_failing_cache_is_switched_off_once(tmp_path: Path, shard: str, caplog) -> None:
    cfg = tiny_data(shard, cache_dir=str(tmp_path / "cache"), batch_size=1)
    loader = build_loader(cfg, TINY_FIT)
    loader.cache.busy_timeout_s = 0.2  # the loader's connections open from here on
    loader.cache.close()
    blocker = sqlite3.connect(loader.cache.path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process holding the write lock for good
    start = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="streamfit.data"):
        assert len(epoch_keys(loader)) == 6
        assert len(epoch_keys(loader)) == 6
    assert time.perf_counter() - start < 20
    warnings = [r.getMessage() for r in caplog.records]
    assert sum("switched off" in w for w in warnings) == 1
    assert sum("failed" in w and "switched off" not in w for w in warnings) <= 2
    assert not loader.cache.enabled and loader.epoch_stats(1).cache_misses == 6
    blocker.execute("ROLLBACK")


def test_read_only_cache_serves_hits_and_writes_nothing(
    tmp_path: Path, shard: str, caplog, monkeypatch
) -> None:
    cfg = filled_cache(shard, tmp_path / "filled")
    conn = sqlite3.connect(tmp_path / "filled" / "splats.sqlite")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    folder = tmp_path / "cache"  # a copy of the store, made read-only
    folder.mkdir()
    (folder / "splats.sqlite").write_bytes((tmp_path / "filled" / "splats.sqlite").read_bytes())
    cfg = tiny_data(shard, cache_dir=str(folder))
    if os.geteuid() == 0:  # root writes through permission bits: pretend it cannot
        monkeypatch.setattr(cache_module, "_can_write", lambda path: False)
    os.chmod(folder / "splats.sqlite", 0o444)
    other = str(img2dataset_shard(tmp_path / "00001.tar", 2, first=6))
    try:
        with caplog.at_level(logging.WARNING, logger="streamfit.data"):
            loader = build_loader(tiny_data(f"{shard}::{other}", cache_dir=cfg.cache_dir), TINY_FIT)
            assert len(epoch_keys(loader)) == 8
            assert len(epoch_keys(loader)) == 8
        assert loader.cache.read_only and loader.cache.enabled
        for epoch in (0, 1):  # the 6 stored samples are hits, the 2 new ones never kept
            stats = loader.epoch_stats(epoch)
            assert (stats.cache_hits, stats.cache_misses) == (6, 2)
        warnings = [r.getMessage() for r in caplog.records]
        assert sum("read-only" in w for w in warnings) == 1, warnings
        assert sorted(p.name for p in folder.iterdir()) == ["splats.sqlite"]  # no -shm left
    finally:
        os.chmod(folder / "splats.sqlite", 0o644)
    monkeypatch.undo()
    loader = build_loader(cfg, TINY_FIT)  # writable again: works as before
    assert len(epoch_keys(loader)) == 6 and not loader.cache.read_only


def test_stale_read_only_shm_is_removed(tmp_path: Path, monkeypatch, caplog) -> None:
    cache = SplatCache(tmp_path, 10_000)
    cache.close()
    shm = tmp_path / "splats.sqlite-shm"
    shm.write_bytes(b"")
    os.chmod(shm, 0o444)
    real = cache_module._can_write
    monkeypatch.setattr(cache_module, "_can_write", lambda p: p != shm and real(p))
    with caplog.at_level(logging.WARNING, logger="streamfit.data"):
        fresh = SplatCache(tmp_path, 10_000)
    assert fresh.enabled and not fresh.read_only and "stale read-only" in caplog.text
    blob = codec.encode("fp16", Splats.from_list([torch.zeros(1, 8)], 8, 8))[0]
    assert fresh.store([("k", blob)], "s") == 0 and fresh.lookup(["k"], "s") == [blob]


# ---------------------------------------------------------------------- decoding
def encode(image: Image.Image, fmt: str, **save) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **save)
    return out.getvalue()


def test_exif_orientation_is_applied() -> None:
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = 255  # stored: white on the left half of a wide picture
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    data = encode(image, "JPEG", exif=exif.tobytes(), quality=95)
    upright = decode_image(data, None, 10**6)
    assert upright.shape == (40, 20, 3)  # tall, as a viewer shows it
    assert upright[:18].mean() > 240 and upright[-18:].mean() < 15  # white on top
    square = decode_image(data, 16, 10**6)  # the centre square, upright
    assert square[:6].mean() > 230 and square[-6:].mean() < 25


def test_sixteen_bit_greyscale_keeps_its_tones() -> None:
    ramp = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    data = encode(Image.fromarray(ramp), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    out = decode_image(data, None, 10**6)
    expected = np.rint(ramp / 257.0).astype(np.uint8)
    assert np.abs(out[..., 0].astype(int) - expected).max() <= 1
    assert 120 < out.mean() < 135  # mid grey on average, not 98% white


@pytest.mark.parametrize(
    ("image", "fmt", "rgb"),
    [
        (Image.new("CMYK", (5, 7), (0, 255, 255, 0)), "JPEG", (255, 0, 0)),
        (Image.new("LA", (5, 7), (128, 255)), "PNG", (128, 128, 128)),
        (Image.new("P", (5, 7), 0), "PNG", (0, 0, 0)),
        (Image.new("1", (5, 7), 1), "PNG", (255, 255, 255)),
        (Image.new("RGB", (1, 1), (10, 200, 30)), "PNG", (10, 200, 30)),
        (Image.new("F", (5, 7), 0.5), "TIFF", (128, 128, 128)),
        (Image.new("I", (5, 7), 40000), "TIFF", (156, 156, 156)),
    ],
    ids=["cmyk", "la", "palette", "1-bit", "1x1", "float", "int32"],
)
def test_unusual_modes_decode_to_their_colour(image: Image.Image, fmt: str, rgb) -> None:
    out = decode_image(encode(image, fmt), 8, 10**6)
    assert out.shape == (8, 8, 3)
    assert np.abs(out.reshape(-1, 3).mean(0) - np.array(rgb)).max() <= 3


def test_hostile_samples_are_counted_skips(tmp_path: Path) -> None:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    bomb = (  # a 60000 x 60000 PNG header: 3.6 G pixels from a few bytes
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 60000, 60000, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(bytes(64)))
        + chunk(b"IEND", b"")
    )
    shard = write_tar(
        tmp_path / "hostile.tar",
        [
            ("ok.jpg", jpeg((1, 2, 3))),
            ("ok.txt", b"fine"),
            ("zero.jpg", b""),
            ("zero.txt", b"an empty image"),
            ("bomb.png", bomb),
            ("bomb.txt", b"a decompression bomb"),
            ("latin.jpg", jpeg((1, 2, 3))),
            ("latin.txt", "caf\xe9".encode("latin-1")),
            ("list.jpg", jpeg((1, 2, 3))),
            ("list.txt", b"json that is a list"),
            ("list.json", b"[1, 2]"),
            ("gif.jpg", b"GIF89a" + bytes(40)),
            ("gif.txt", b"not what it says"),
        ],
    )
    loader = build_loader(tiny_data(str(shard)), TINY_FIT)
    assert epoch_keys(loader) == ["ok"]
    assert loader.epoch_stats(0).skipped == {
        "empty_image": 1,
        "too_large": 1,
        "bad_caption": 1,
        "bad_json": 1,
        "decode_error": 1,
    }
    assert count_shard(str(shard)) == (
        3,  # the oversized and undecodable images are only found when decoding
        {"empty_image": 1, "bad_caption": 1, "bad_json": 1},
    )


def test_oversized_member_is_never_read(tmp_path: Path, monkeypatch) -> None:
    from streamfit.data import shards

    monkeypatch.setattr(shards, "MAX_MEMBER_BYTES", 2000)
    shard = write_tar(
        tmp_path / "big.tar",
        [
            (
                "big.png",
                encode(
                    Image.fromarray(
                        np.random.default_rng(0).integers(0, 255, (40, 40, 3), np.uint8)
                    ),
                    "PNG",
                ),
            ),
            ("big.txt", b"a member over the bound"),
            ("ok.jpg", jpeg((1, 2, 3))),
            ("ok.txt", b"fine"),
        ],
    )
    reader = ShardReader([str(shard)], shuffle_buffer=1)
    samples = list(reader)
    assert [s.key for s in samples] == ["ok"] and reader.stats.current.skipped == {"too_large": 1}
    assert count_shard(str(shard)) == (1, {"too_large": 1})


def test_odd_keys_json_and_exif_are_handled(tmp_path: Path) -> None:
    image = Image.new("RGB", (12, 10), (200, 10, 10))
    exif = image.getexif()
    exif[0x0112] = 9  # no such orientation
    shard = write_tar(
        tmp_path / "odd.tar",
        [
            ("deep.jpg", jpeg((1, 2, 3))),
            ("deep.txt", b"json nested too deeply"),
            ("deep.json", b"[" * 100_000),
            ("caf\udce9.jpg", jpeg((9, 9, 9))),  # a name that is not UTF-8 (b"caf\xe9")
            ("caf\udce9.txt", b"a Latin-1 file name"),
            ("exif.jpg", encode(image, "JPEG", exif=exif.tobytes())),
            ("exif.txt", b"odd exif"),
        ],
    )
    loader = build_loader(
        tiny_data(str(shard), cache_dir=str(tmp_path / "c"), cache_key="key"), TINY_FIT
    )
    assert sorted(epoch_keys(loader)) == ["caf\udce9", "exif"]
    assert loader.epoch_stats(0).skipped == {"bad_json": 1}
    assert len(epoch_keys(loader)) == 2 and loader.epoch_stats(1).hit_rate == 1.0


def test_drop_last_is_counted_and_one_rank_of_several_only_warns(tmp_path: Path, caplog) -> None:
    shard = str(img2dataset_shard(tmp_path / "00000.tar", 6))
    loader = build_loader(tiny_data(shard, drop_last=True), TINY_FIT)
    assert len(epoch_keys(loader)) == 4
    assert loader.epoch_stats(0).skipped == {"drop_last": 2}
    (tmp_path / "dir.tar").mkdir()
    pattern = f"{shard}::{tmp_path}/dir.tar"
    with caplog.at_level(logging.WARNING, logger="streamfit.data"):
        ranks = [
            build_loader(tiny_data(pattern, shuffle_shards=False), TINY_FIT, rank=r, world_size=2)
            for r in range(2)
        ]
        assert [len(epoch_keys(loader)) for loader in ranks] == [6, 0]
    assert "rank 1/2: data.shards" in caplog.text and "yielded no samples" in caplog.text


def test_eval_shards_skip_damage_and_bad_labels(tmp_path: Path) -> None:
    from streamfit.eval.labelled import iter_labelled

    good = write_tar(
        tmp_path / "val-0.tar",
        [
            ("a.jpg", jpeg((1, 2, 3))),
            ("a.cls", b"7"),
            ("b.jpg", jpeg((1, 2, 3))),
            ("b.cls", b"seven"),
            ("c.jpg", jpeg((1, 2, 3))),
            ("c.json", b'{"label": [1]}'),
            ("d.jpg", jpeg((1, 2, 3))),
            ("d.json", b'{"label": 3}'),
        ],
    )
    with tarfile.open(good) as tar:
        cut = tar.getmember("b.jpg").offset_data + 10
    (tmp_path / "val-1.tar").write_bytes(good.read_bytes()[:cut])  # cut inside sample b
    pattern = f"{tmp_path}/val-{{0..2}}.tar"  # val-2.tar is missing
    assert [(k, label) for k, _, label in iter_labelled(pattern)] == [("a", 7), ("d", 3), ("a", 7)]


@pytest.mark.parametrize("where", ["a_file", "store_is_a_folder"])
def test_unusable_cache_place_switches_the_cache_off(tmp_path: Path, caplog, where: str) -> None:
    place = tmp_path / "cache"
    if where == "a_file":
        place.write_text("not a folder")
    else:
        (place / "splats.sqlite").mkdir(parents=True)
    shard = str(img2dataset_shard(tmp_path / "00000.tar", 3))
    with caplog.at_level(logging.WARNING, logger="streamfit.data"):
        loader = build_loader(tiny_data(shard, cache_dir=str(place)), TINY_FIT)
        assert len(epoch_keys(loader)) == 3 and not loader.cache.enabled
    assert caplog.text.count("switched off") == 1
