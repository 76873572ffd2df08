"""Rate-distortion beside image codecs: BD-PSNR, the best image-codec file under a byte
budget, and tools/codec_compare.py end to end on tiny images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from streamfit.rd import ImageCodec, available_image_codecs, bd_psnr, psnr_8bit

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def test_bd_psnr_is_the_mean_gap_over_the_range_on_a_log_axis() -> None:
    reference = [(500.0, 22.0), (1000.0, 24.0), (2000.0, 26.0), (4000.0, 28.0), (8000.0, 30.0)]
    assert bd_psnr(reference, reference, 1500, 3000) == pytest.approx(0.0)
    better = [(b, p + 1.5) for b, p in reference]
    assert bd_psnr(better, reference, 1500, 3000) == pytest.approx(1.5)
    # half the bytes for the same quality: one step of this curve, 2 dB better throughout
    cheaper = [(b / 2, p) for b, p in reference]
    assert bd_psnr(cheaper, reference, 1500, 3000) == pytest.approx(2.0)
    assert bd_psnr(reference, better, 1500, 3000) == pytest.approx(-1.5)


def test_bd_psnr_never_extrapolates() -> None:
    reference = [(1000.0, 24.0), (4000.0, 28.0)]
    assert bd_psnr([(1600.0, 25.0), (6400.0, 29.0)], reference, 1500, 3000) is None
    assert bd_psnr([(1000.0, 25.0)], reference, 1500, 3000) is None
    with pytest.raises(ValueError):
        bd_psnr(reference, reference, 3000, 1500)


def test_psnr_8bit() -> None:
    a = np.zeros((1, 4, 4, 3), np.uint8)
    b = a + 5  # mse 25
    assert psnr_8bit(b, a)[0] == pytest.approx(10 * np.log10(255**2 / 25))


def photo_like(count: int, size: int) -> np.ndarray:
    """Smooth colour fields with some texture: small files at low quality, larger at high."""
    rng = np.random.default_rng(0)
    low = rng.integers(0, 256, (count, 4, 4, 3), dtype=np.uint8)
    images = [np.asarray(Image.fromarray(im).resize((size, size), Image.BICUBIC)) for im in low]
    noise = rng.integers(-12, 13, (count, size, size, 3))
    return np.clip(np.stack(images).astype(int) + noise, 0, 255).astype(np.uint8)


def test_best_under_a_budget_is_the_highest_quality_that_fits() -> None:
    images = photo_like(2, 48)
    jpeg = ImageCodec("jpeg", images)
    smallest = jpeg.encode(0, 1)[0]
    largest = jpeg.encode(0, 95)[0]
    budget = (smallest + largest) // 2
    size, quality = jpeg.best_under(0, budget)
    assert size <= budget
    fitting = [q for q in range(1, 96) if jpeg.encode(0, q)[0] <= budget]
    assert (size, quality) == jpeg.encode(0, max(fitting))
    assert jpeg.best_under(0, smallest - 1) is None
    curve = jpeg.curve(step=10)
    assert [p["bytes_mean"] for p in curve] == sorted(p["bytes_mean"] for p in curve)
    with pytest.raises(ValueError, match="unknown image codec"):
        ImageCodec("gif", images)


def test_codec_compare_end_to_end(tmp_path: Path, program) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, image in enumerate(photo_like(3, 32)):
        Image.fromarray(image).save(folder / f"p{i}.png")
    tool = program("tools/codec_compare")
    out, picture = tmp_path / "rd.json", tmp_path / "rd.png"
    argv = [str(folder), "--size", "32", "--gaussians", "8,16,32", "--iters", "2", "--backend"]
    argv += ["torch", "--device", "cpu", "--bd-range", "600,900", "--json", str(out)]
    assert tool.main([*argv, "--plot", str(picture)]) == 0
    result = json.loads(out.read_text())
    codecs = {"fp16", "q64", "compact", *available_image_codecs()}
    assert {r["codec"] for r in result["rows"]} == codecs
    for row in result["rows"]:
        assert {
            "codec",
            "gaussians",
            "iters",
            "bytes_mean",
            "psnr_mean",
            "fit",
            "bytes_max",
        } <= set(row)
        if row["codec"] == row["budget"]:  # a splat row: every image, and its bytes
            assert row["fit"] == 3 and row["bytes_mean"] > 0 and row["psnr_mean"] > 10
    splat = {(r["codec"], r["gaussians"]): r["bytes_mean"] for r in result["rows"]}
    assert splat[("q64", 16)] == 9 + 32 + 8 * 16 + 4 and splat[("fp16", 16)] == 9 + 16 * 16 + 4
    for row in result["rows"]:  # an image codec stays within the splat file's bytes
        if row["codec"] not in ("fp16", "q64", "compact") and row["fit"]:
            assert row["bytes_mean"] <= splat[(row["budget"], row["gaussians"])]
    assert set(result["bd_psnr_vs_jpeg"]) == {"fp16@2", "q64@2", "compact@2"}
    assert picture.stat().st_size > 10_000
    assert tool.main([str(tmp_path / "nothing"), "--backend", "torch"]) == 1
