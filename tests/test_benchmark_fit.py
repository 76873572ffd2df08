"""tools/benchmark_fit.py end to end, tiny: the table, the JSON rows and the plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "benchmark_fit.py"
FIELDS = (
    "backend", "batch", "gaussians", "iters", "images_per_s", "ms_per_iter_image", "psnr",
    "speedup_vs_single", "speedup_vs_torch",
)  # fmt: skip


def test_cpu_benchmark_writes_rows_and_plot(tmp_path, capsys, program):
    out = tmp_path / "bench.json"
    rows = program("tools/benchmark_fit").main(
        [
            "--device", "cpu", "--backends", "cpu", "--batches", "1,3", "--gaussians", "16",
            "--size", "24", "--iters", "4", "--single-images", "2", "--torch-images", "1",
            "--repeats", "2", "--shards", "--json", str(out), "--plot", str(tmp_path / "b.png"),
            "lr_color=0.03",
        ]
    )  # fmt: skip
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(rows))
    assert [(r["batch"], r["gaussians"], r["iters"]) for r in saved] == [(1, 16, 4), (3, 16, 4)]
    for row in saved:
        assert all(row[k] is not None for k in FIELDS)
        assert row["images_per_s"] > 0 and row["speedup_vs_single"] > 0
        assert row["speedup_vs_torch"] > 0 and abs(row["psnr_delta_vs_torch"]) < 0.1
        # the torch reference: the same batch, iterations and repeats as ours, total / total
        assert row["torch_images"] == 1
        assert row["speedup_vs_torch"] == row["torch_seconds"] / row["torch_our_seconds"]
        # cpu rows: the cut-off pairs of the initial layout at 50 FLOP each, against the
        # float32 matmul rate measured in the same run
        assert row["cutoff_pairs_per_image"] > 0 and row["matmul_gflops"] > 0
        assert row["flops_per_iter"] == round(row["cutoff_pairs_per_image"] * 50 * row["batch"])
        assert row["peak_fraction"] == pytest.approx(row["gflops"] / row["matmul_gflops"])
    assert (tmp_path / "b.png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert "x torch" in printed and "peak_fraction" in printed


def test_bad_arguments_are_clear_errors(capsys, program):
    tool = program("tools/benchmark_fit")
    for argv in (["--batches", "1,x"], ["--iters", "0"], ["no_such_field=1"]):
        try:
            tool.parse_args(["--device", "cpu", *argv])
        except SystemExit as stop:
            assert stop.code == 2
        else:
            raise AssertionError(f"{argv} was accepted")
    assert "error" in capsys.readouterr().err
