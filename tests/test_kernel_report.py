"""``tools/kernel_report.py``: every CUDA kernel compiles for sm_90 without a GPU, without
spills, and the compiled code predicts the throughput the fitter is built for."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from streamfit.kernel_analysis import find_tool

REPO = Path(__file__).resolve().parents[1]


def test_kernels_compile_without_spills_and_predict_3000_images_per_s(tmp_path: Path):
    if find_tool("ptxas") is None or find_tool("nvdisasm") is None:
        pytest.skip("needs ptxas and nvdisasm")
    out = tmp_path / "kernels.json"
    run = subprocess.run(
        [sys.executable, str(REPO / "tools" / "kernel_report.py"), "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.read_text())
    from cuda_kernels.gpu import TILES

    assert report["tiles"] == list(TILES)
    names = {(k["name"], k["tile"]) for k in report["kernels"]}
    for tile in TILES:
        assert {("raster_tiles", tile), ("render_tiles", tile)} <= names
    for kernel in report["kernels"]:
        assert kernel["spill_bytes"] == 0, kernel["name"]
        # the initialisation's float64 cos/sin keep libdevice's 40-byte array for reducing
        # huge arguments (its angles lie within +-pi/2); every other kernel has no stack
        stack = 40 if kernel["name"] == "adaptive_layout" else 0
        assert kernel["stack_bytes"] <= stack, kernel["name"]
        assert kernel["occupancy"] >= 0.25, kernel
    for model in report["model"].values():
        # the hot loops were found in the SASS: the per-pair counts are real, not defaults
        assert 4 < model["sass_per_pair_forward"] < model["sass_per_pair_backward"] < 100
    assert report["predicted_images_per_s"] >= 3000
