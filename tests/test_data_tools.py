"""The data tools end to end, small: make_shards (folder, table, synthetic, a labelled split
in clip_benchmark's layout), benchmark_loader,
export_splats and reading the exported splat shards back without fitting."""

from __future__ import annotations

import csv
import io
import json
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from streamfit import codec
from streamfit.data import DataConfig, SplatCache, build_loader
from streamfit.data.shards import ShardReader, expand_shards
from streamfit.data.writer import ShardWriter
from streamfit.fit import FitConfig

TOOLS = Path(__file__).resolve().parents[1] / "tools"
TINY = [
    "--backend",
    "torch",
    "--device",
    "cpu",
    "--gaussians",
    "4",
    "--iters",
    "2",
    "--image-size",
    "8",
]


def test_make_shards_from_folder_and_table(tmp_path: Path, program) -> None:
    src = tmp_path / "photos"
    (src / "sub").mkdir(parents=True)
    for i, colour in enumerate(["red", "green", "blue"]):
        Image.new("RGB", (10 + i, 8), colour).save(src / "sub" / f"{colour}.png")
    (src / "sub" / "red.txt").write_text("a red picture")
    (src / "sub" / "green.txt").write_text("a green picture")  # blue has no caption
    (src / "sub" / "broken.jpg").write_bytes(b"not a jpeg")
    (src / "sub" / "broken.txt").write_text("broken")
    out = tmp_path / "shards"
    summary = tmp_path / "summary.json"
    assert (
        program("tools/make_shards").main(
            ["folder", str(src), "--out", str(out), "--shard-size", "1", "--json", str(summary)]
        )
        == 0
    )
    result = json.loads(summary.read_text())
    assert result["samples"] == 2 and result["skipped"] == {"no_caption": 1, "bad_image": 1}
    samples = list(
        ShardReader(expand_shards(result["shards"]), shuffle_shards=False, shuffle_buffer=1)
    )
    assert [s.members["txt"] for s in samples] == [b"a green picture", b"a red picture"]
    assert json.loads(samples[1].members["json"])["original_width"] == 10

    table = tmp_path / "captions.csv"
    with table.open("w", newline="") as f:
        csv.writer(f).writerows(
            [["path", "caption"], ["sub/blue.png", "blue!"], ["sub/red.png", "red!"]]
        )
    program("tools/make_shards").main(
        ["folder", str(src), "--captions", str(table), "--out", str(tmp_path / "t")]
    )
    samples = list(
        ShardReader(
            expand_shards(str(tmp_path / "t" / "shard-000000.tar")),
            shuffle_buffer=1,
            shuffle_shards=False,
        )
    )
    assert [s.members["txt"] for s in samples] == [b"blue!", b"red!"]
    assert Image.open(io.BytesIO(samples[0].members["png"])).getpixel((0, 0)) == (0, 0, 255)


def test_make_shards_table_with_absolute_and_file_urls(tmp_path: Path, program) -> None:
    photos, elsewhere = tmp_path / "photos", tmp_path / "elsewhere"
    photos.mkdir()
    elsewhere.mkdir()
    Image.new("RGB", (9, 9), "red").save(photos / "red.png")
    Image.new("RGB", (9, 9), "green").save(elsewhere / "green.png")
    Image.new("RGB", (9, 9), "blue").save(elsewhere / "blue dot.png")
    table = tmp_path / "urls.csv"
    with table.open("w", newline="", encoding="utf-8-sig") as f:  # as Excel writes it
        csv.writer(f).writerows(
            [
                ["url", "caption", "extra"],
                [str(photos / "red.png"), "absolute", "x"],
                [(elsewhere / "green.png").as_uri(), "a file:// URL", "x"],
                [(elsewhere / "blue dot.png").as_uri(), "a quoted file:// URL", "x"],
                ["https://example.com/a.jpg", "remote", "x"],
                [str(elsewhere / "gone.png"), "missing", "x"],
            ]
        )
    summary = tmp_path / "s.json"
    args = ["folder", str(photos), "--captions", str(table), "--path-column", "url"]
    assert (
        program("tools/make_shards").main(
            [*args, "--out", str(tmp_path / "out"), "--json", str(summary)]
        )
        == 0
    )
    result = json.loads(summary.read_text())
    assert result["samples"] == 3 and result["skipped"] == {"not_local": 1, "missing_file": 1}
    samples = list(ShardReader(expand_shards(result["shards"]), shuffle_buffer=1))
    sources = sorted(json.loads(s.members["json"])["source"] for s in samples)
    assert sources == [str(elsewhere / "blue dot.png"), str(elsewhere / "green.png"), "red.png"]


def test_make_shards_skips_bad_sidecars(tmp_path: Path, program) -> None:
    src = tmp_path / "photos"
    src.mkdir()
    for name in ("a", "b", "c"):
        Image.new("RGB", (9, 9), "red").save(src / f"{name}.png")
        (src / f"{name}.txt").write_text(f"picture {name}")
    (src / "b.txt").write_bytes(b"caf\xe9")  # Latin-1, not UTF-8
    (src / "c.json").write_text("[1, 2]")  # JSON, but not an object
    summary = tmp_path / "s.json"
    assert (
        program("tools/make_shards").main(
            ["folder", str(src), "--out", str(tmp_path / "o"), "--json", str(summary)]
        )
        == 0
    )
    result = json.loads(summary.read_text())
    assert result["samples"] == 1 and result["skipped"] == {"bad_caption": 1, "bad_json": 1}


def test_make_shards_with_nothing_to_write_is_an_error(tmp_path: Path, capsys, program) -> None:
    (tmp_path / "empty").mkdir()
    assert (
        program("tools/make_shards").main(
            ["folder", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]
        )
        == 1
    )
    assert "error: no samples written" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args",
    [
        ["folder", "{src}", "--out", "{out}", "--shard-size", "0"],
        ["synthetic", "--out", "{out}", "--shard-size", "0"],
        ["folder", "{src}", "--out", "{out}", "--captions", "{src}/none.csv"],
    ],
)
def test_make_shards_usage_errors(tmp_path: Path, capsys, args: list[str], program) -> None:
    args = [a.format(src=tmp_path, out=tmp_path / "out") for a in args]
    with pytest.raises(SystemExit) as exit_info:
        program("tools/make_shards").main(args)
    assert exit_info.value.code == 2 and "Traceback" not in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory, program) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    args = [
        "synthetic",
        "--out",
        str(out),
        "--n-train",
        "24",
        "--n-heldout",
        "16",
        "--shard-size",
        "10",
        "--image-size",
        "16",
    ]
    program("tools/make_shards").main(args)
    return out


def test_synthetic_dataset_layout(synthetic: Path) -> None:
    classes = json.loads((synthetic / "classes.json").read_text())
    assert len(classes["classnames"]) == 16 and all("{}" in t for t in classes["templates"])
    train = list(ShardReader(expand_shards(classes["train"]), shuffle_buffer=1))
    heldout = list(ShardReader(expand_shards(classes["heldout"]), shuffle_buffer=1))
    assert (len(train), len(heldout)) == (24, 16)
    labels = [json.loads(s.members["json"])["label"] for s in heldout]
    assert sorted(labels) == list(range(16))  # classes balanced
    for sample in train:
        meta = json.loads(sample.members["json"])
        assert classes["classnames"][meta["label"]] == meta["classname"] == meta["shape"]
        caption = sample.members["txt"].decode()
        assert caption in {t.format(meta["classname"]) for t in classes["templates"]}


def _clip_benchmark_split(root: Path) -> tuple[dict[str, tuple[str, bytes, int]], list[str]]:
    """``key -> (image ext, image bytes, label)`` of a split in clip_benchmark's layout as its
    wds reader sees it ({0..nshards-1}.tar, .cls members), and its class names."""
    nshards = int((root / "test" / "nshards.txt").read_text())
    samples: dict[str, tuple[str, bytes, int]] = {}
    for i in range(nshards):
        with tarfile.open(root / "test" / f"{i}.tar") as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}
        for name, data in members.items():
            key, ext = name.rsplit(".", 1)
            if ext != "cls":
                samples[key] = (ext, data, int(members[f"{key}.cls"]))
    return samples, (root / "classnames.txt").read_text().splitlines()


def test_the_held_out_split_in_clip_benchmarks_layout(synthetic: Path) -> None:
    classes = json.loads((synthetic / "classes.json").read_text())
    root = Path(classes["clip_benchmark"])
    assert root == synthetic / "clip_benchmark"
    samples, classnames = _clip_benchmark_split(root)
    assert classnames == classes["classnames"]
    templates = (root / "zeroshot_classification_templates.txt").read_text().splitlines()
    assert templates == [t.replace("{}", "{c}") for t in classes["templates"]]
    # enough shards for clip_benchmark's 4 default loader workers
    assert int((root / "test" / "nshards.txt").read_text()) == 4
    heldout = list(ShardReader(expand_shards(classes["heldout"]), shuffle_buffer=1))
    assert len(samples) == len(heldout) == 16
    for sample in heldout:  # the same images, byte for byte, with their labels
        label = json.loads(sample.members["json"])["label"]
        assert samples[sample.key] == ("png", sample.members["png"], label)


def test_make_shards_labelled_writes_clip_benchmarks_layout(tmp_path: Path, program) -> None:
    src = tmp_path / "imagefolder"
    for name, colour in (("cat", "red"), ("dog", "blue")):
        (src / name).mkdir(parents=True)
        Image.new("RGB", (9, 7), colour).save(src / name / "a.jpg")
        Image.new("RGB", (9, 7), colour).save(src / name / "b.bmp")  # re-encoded as PNG
    (src / "dog" / "c.png").write_bytes(b"not a png")
    (tmp_path / "names.txt").write_text("cat\ndog\n")
    out, summary = tmp_path / "wds", tmp_path / "summary.json"
    argv = ["labelled", str(src), "--out", str(out), "--classnames", str(tmp_path / "names.txt"),
            "--templates", "simple", "--shard-size", "2", "--json", str(summary)]  # fmt: skip
    assert program("tools/make_shards").main(argv) == 0
    result = json.loads(summary.read_text())
    assert (result["samples"], result["shards"], result["reencoded"]) == (4, 2, 2)
    assert result["skipped"] == {"bad_image": 1}
    samples, classnames = _clip_benchmark_split(out)
    assert classnames == ["cat", "dog"]
    assert sorted((ext, label) for ext, _, label in samples.values()) == [
        ("jpg", 0), ("jpg", 1), ("png", 0), ("png", 1),
    ]  # fmt: skip
    for ext, data, _ in samples.values():
        assert Image.open(io.BytesIO(data)).format == {"jpg": "JPEG", "png": "PNG"}[ext]
    templates = (out / "zeroshot_classification_templates.txt").read_text().splitlines()
    assert templates[0] == "itap of a {c}." and len(templates) == 7


def test_benchmark_then_export_then_read_splat_shards(
    synthetic: Path, tmp_path: Path, program
) -> None:
    shards = json.loads((synthetic / "classes.json").read_text())["train"]
    cache, report = tmp_path / "cache", tmp_path / "bench.json"
    argv = [
        "--shards",
        shards,
        "--epochs",
        "2",
        "--cache",
        str(cache),
        "--batch-size",
        "8",
        *TINY,
        "--json",
        str(report),
    ]
    assert program("tools/benchmark_loader").main(argv) == 0
    epochs = json.loads(report.read_text())["epochs"]
    assert [(e["samples"], e["cache_hits"], e["cache_misses"], e["skipped"]) for e in epochs] == [
        (24, 0, 24, {}),
        (24, 24, 0, {}),
    ]
    assert all(e["seconds"] > 0 for e in epochs)

    out, summary = tmp_path / "splat_shards", tmp_path / "export.json"
    program("tools/export_splats").main(
        [
            "--shards",
            shards,
            "--cache",
            str(cache),
            "--out",
            str(out),
            "--shard-size",
            "10",
            *TINY,
            "--json",
            str(summary),
        ]
    )
    exported = json.loads(summary.read_text())
    assert (exported["exported"], exported["from_cache"], exported["n_shards"]) == (24, 24, 3)
    empty_cache = ["--cache", str(tmp_path / "empty_cache"), "--out", str(tmp_path / "none")]
    assert program("tools/export_splats").main(["--shards", shards, *empty_cache, *TINY]) == 1

    data = DataConfig(shards=shards, image_size=8, batch_size=8, cache_dir=str(cache), log_every=0)
    fit_cfg = FitConfig(gaussians=4, iters=2, backend="torch", device="cpu")
    cached = {
        k: s
        for b in build_loader(data, fit_cfg)
        for k, s in zip(b["keys"], b["splats"].to_list(), strict=True)
    }
    direct = build_loader(
        DataConfig(shards=exported["shards"], image_size=8, batch_size=8, log_every=0), fit_cfg
    )
    read = {k: s for b in direct for k, s in zip(b["keys"], b["splats"].to_list(), strict=True)}
    stats = direct.epoch_stats(0)
    assert (stats.precomputed, stats.cache_misses, stats.samples) == (24, 0, 24)
    assert read.keys() == cached.keys()
    assert all((read[k] == cached[k]).all() for k in read)

    # the shards hold the cache's own q64 blobs, byte for byte
    stored = {blob for _, _, blob in SplatCache(cache, 1 << 30).entries()}
    members = dict(_members(Path(exported["shards"].split("{")[0] + "000000.tar")))
    splat_blobs = [m for name, m in members.items() if name.endswith(".splats")]
    assert splat_blobs and set(splat_blobs) <= stored
    assert {codec.info(b).format for b in splat_blobs} == {"q64"}
    metas = [json.loads(m) for name, m in members.items() if name.endswith(".json")]
    assert {m["splats"]["format"] for m in metas} == {"q64"}

    # a truncated and a foreign blob cost their own samples only, counted as bad_splats
    first = sorted(name for name in members if name.endswith(".splats"))[:2]
    members[first[0]] = members[first[0]][:-3]
    members[first[1]] = b"\xff\xd8\xff\xe0" + bytes(40)
    damaged = tmp_path / "damaged"
    with ShardWriter(damaged, prefix="d", shard_size=100) as writer:
        for key in sorted({name.rsplit(".", 1)[0] for name in members}):
            writer.write(key, {e: members[f"{key}.{e}"] for e in ("splats", "txt", "json")})
    loader = build_loader(
        DataConfig(shards=str(writer.paths[0]), image_size=8, batch_size=8, log_every=0), fit_cfg
    )
    assert sum(len(b["keys"]) for b in loader) == 8
    assert loader.epoch_stats(0).skipped == {"bad_splats": 2}


def _members(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar if m.isfile()]
