"""The fitting tools run end to end on small generated inputs, bad files included."""

import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from streamfit.splats import Splats
from tools import fit_images, prune_sweep


def write_inputs(folder):
    rng = np.random.default_rng(0)
    folder.mkdir()
    Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(folder / "rgb.png")
    Image.fromarray(rng.integers(0, 255, (18, 18), dtype=np.uint8)).save(folder / "grey.jpg")
    Image.fromarray(rng.integers(0, 255, (16, 24, 4), dtype=np.uint8), "RGBA").save(
        folder / "rgba.png"
    )
    Image.fromarray(np.full((1, 1, 3), 200, dtype=np.uint8)).save(folder / "one_pixel.png")
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    (folder / "empty.png").write_bytes(b"")


def test_fit_images_folder_with_bad_files(tmp_path):
    write_inputs(tmp_path / "imgs")
    out = tmp_path / "out"
    code = fit_images.main(
        [
            str(tmp_path / "imgs"),
            "--size",
            "16",
            "--gaussians",
            "8",
            "--iters",
            "10",
            "--backend",
            "torch",
            "--out",
            str(out),
            "--json",
            str(out / "s.json"),
            "--record-at",
            "0,10",
        ]
    )
    assert code == 0
    summary = json.loads((out / "s.json").read_text())
    keys = sorted(r["key"] for r in summary["images"])
    assert keys == ["grey", "one_pixel", "rgb", "rgba"]
    assert sum(summary["skipped"].values()) == 2
    for row in summary["images"]:
        assert row["splats"] == 8 and row["psnr"] > 10
        assert row["compression_ratio"] == pytest.approx(16 * 16 * 3 / (16 * 8))
    assert summary["psnr_at"]["10"] > summary["psnr_at"]["0"]
    assert {"mean_psnr", "mean_splats", "compression_ratio", "backend", "iters"} <= set(summary)
    splats, saved_keys = Splats.load(out / "rgb.splats")
    assert saved_keys == ["rgb"] and splats.counts().tolist() == [8]
    assert Image.open(out / "rgb.png").size == (48, 16)  # original | reconstruction | splats


def test_fit_images_reads_shards_and_limits(tmp_path):
    shard = tmp_path / "s.tar"
    with tarfile.open(shard, "w") as tar:
        for i in range(3):
            buf = io.BytesIO()
            Image.fromarray(np.full((12, 12, 3), 40 * i, dtype=np.uint8)).save(buf, "JPEG")
            for name, data in ((f"{i:04d}.jpg", buf.getvalue()), (f"{i:04d}.txt", b"a caption")):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    out = tmp_path / "s.json"
    assert (
        fit_images.main(
            [
                str(shard),
                "--size",
                "12",
                "--gaussians",
                "4",
                "--iters",
                "5",
                "--backend",
                "torch",
                "--limit",
                "2",
                "--json",
                str(out),
                "init_normalize_color=false",  # key=value overrides may follow the flags
            ]
        )
        == 0
    )
    assert [r["key"] for r in json.loads(out.read_text())["images"]] == ["s/0000", "s/0001"]


def test_images_too_small_for_the_splats_are_skipped_and_counted(tmp_path, capsys):
    write_inputs(tmp_path / "imgs")  # rgb 20x30, grey 18x18, rgba 16x24, one_pixel 1x1
    out = tmp_path / "s.json"
    args = [str(tmp_path / "imgs"), "--size", "0", "--gaussians", "300", "--iters", "2"]
    assert fit_images.main([*args, "--backend", "torch", "--json", str(out)]) == 0
    summary = json.loads(out.read_text())
    assert sorted(r["key"] for r in summary["images"]) == ["grey", "rgb", "rgba"]
    assert summary["skipped"]["too_small"] == 1 and summary["fitted"] == 3
    assert "mean" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--size", "-5"], "--size must be 0"),
        (["--size", "7"], "--size must be 0"),
        (["--size", "8", "--gaussians", "65"], "more splats than pixels"),
        (["--gaussians", "0"], "gaussians"),
        (["--limit", "0"], "--limit must be >= 1"),
    ],
)
def test_bad_arguments_are_usage_errors(tmp_path, capsys, args, message):
    write_inputs(tmp_path / "imgs")
    with pytest.raises(SystemExit) as exit_info:
        fit_images.main([str(tmp_path / "imgs"), *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_missing_file_and_empty_folder_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        fit_images.main([str(tmp_path / "nope.jpg")])
    assert exit_info.value.code == 2
    assert "no such image, folder or shard" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert fit_images.main([str(tmp_path / "empty"), "--backend", "torch"]) == 1
    assert "error: no images in" in capsys.readouterr().err


def test_unreadable_files_are_counted(tmp_path):
    write_inputs(tmp_path / "imgs")
    (tmp_path / "imgs" / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")
    (tmp_path / "imgs" / "folder.png").mkdir()
    (tmp_path / "imgs" / "junk.tar").write_bytes(b"not a tar at all" * 64)
    out = tmp_path / "s.json"
    args = [str(tmp_path / "imgs"), "--size", "16", "--gaussians", "8", "--iters", "1"]
    assert fit_images.main([*args, "--backend", "torch", "--json", str(out)]) == 0
    summary = json.loads(out.read_text())
    assert summary["fitted"] == 4 and summary["skipped"]["unreadable"] == 2
    assert summary["skipped"]["not a tar"] == 1


def test_no_compression_is_said(tmp_path, caplog):
    write_inputs(tmp_path / "imgs")
    args = [str(tmp_path / "imgs" / "rgb.png"), "--size", "8", "--gaussians", "16", "--iters", "1"]
    with caplog.at_level("WARNING"):
        assert fit_images.main([*args, "--backend", "torch"]) == 0
    assert "no compression" in caplog.text


def test_prune_sweep_table_json_and_plot(tmp_path):
    write_inputs(tmp_path / "imgs")
    out = tmp_path / "sweep.json"
    png = tmp_path / "sweep.png"
    assert (
        prune_sweep.main(
            [
                str(tmp_path / "imgs"),
                "--size",
                "16",
                "--gaussians",
                "16",
                "--iters",
                "30",
                "--backend",
                "torch",
                "--thresholds",
                "0,0.2",
                "--l1",
                "0.05",
                "--json",
                str(out),
                "--png",
                str(png),
            ]
        )
        == 0
    )
    rows = json.loads(out.read_text())["rows"]
    assert rows[0]["mean_splats"] == 16
    assert rows[1]["mean_splats"] < 16
    assert rows[1]["compression_ratio"] > rows[0]["compression_ratio"]
    # total pixel bytes over total splat bytes (16 bytes a splat)
    assert rows[1]["compression_ratio"] == pytest.approx(
        16 * 16 * 3 / (16 * rows[1]["mean_splats"])
    )
    assert png.stat().st_size > 1000
