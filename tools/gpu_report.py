#!/usr/bin/env python
"""The report of ``tools/gpu_check.sh``: one JSON of what a GPU measured, from the files the
check wrote into its output folder.

    python tools/gpu_report.py OUT [--json OUT/gpu_report.json]

Reads ``OUT/device.json`` (the GPU, its clocks, the date), ``OUT/bench_default.json`` (the
default fit at batches 256 and 4096, ``tools/benchmark_fit.py``), ``OUT/bench_eager.json``
and ``OUT/bench_cholesky.json`` (the same fit launched op by op, and with the Cholesky colour
solver), ``OUT/psnr_{cuda,cpu}.json`` (``tools/fit_images.py`` on the first 48 held-out
photos) and the training runs' ``metrics.jsonl`` under ``OUT/runs/{rgb,cold,warm,...}``.

A run's steady rate is its samples over its seconds in the log windows of its last epoch,
leaving out that epoch's first window (start-up: graph captures, the first batches): a ratio
of totals. The fitting share of the cold run is the CUDA-event time of the loader's device
work over that and the training steps' CUDA-event time, in the same windows. Missing inputs
leave their fields null; the table printed last says what came out.
"""

from __future__ import annotations

import streamfit.openmp  # noqa: F401 (first: before torch loads its OpenMP runtime)

# isort: split

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

from streamfit.cli import parse_tool_args, tool_parser
from streamfit.config import check_at_least
from streamfit.report import print_table, write_json

MODES = ("rgb", "cold", "warm", "cold_default_stream")


@dataclass
class GPUReportConfig:
    """How the report reads the training runs."""

    skip_windows: int = 1
    """Log windows at the start of each run's measured epoch left out (start-up: graph
    captures, the first batches)."""

    def __post_init__(self) -> None:
        check_at_least(skip_windows=(self.skip_windows, 0))


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def steady_windows(metrics: Path, skip: int = 1) -> list[dict]:
    """The training log windows of the run's last epoch but its first ``skip``."""
    try:
        lines = metrics.read_text().splitlines()
    except OSError:
        return []
    windows = [r for r in map(json.loads, lines) if r.get("kind") == "train"]
    if not windows:
        return []
    last = max(w["epoch"] for w in windows)
    return [w for w in windows if w["epoch"] == last][skip:]


def run_figures(metrics: Path, skip: int = 1) -> dict[str, float] | None:
    """Steady samples/s, fitting shares and peak memory of one run; None without windows."""
    windows = steady_windows(metrics, skip)
    if not windows:
        return None
    seconds = sum(w["seconds"] for w in windows)
    fit_gpu = sum(w.get("fit_gpu_s", 0.0) for w in windows)
    steps_gpu = sum(w.get("steps_gpu_s", 0.0) for w in windows)
    return {
        "samples_per_s": sum(w["samples"] for w in windows) / seconds,
        "windows": len(windows),
        "seconds": seconds,
        "fit_share_gpu_time": fit_gpu / (fit_gpu + steps_gpu) if fit_gpu + steps_gpu else None,
        "fit_gpu_share_of_wall": fit_gpu / seconds,
        "data_wait_share": sum(w["data_wait_share"] * w["seconds"] for w in windows) / seconds,
        "step_gpu_ms": 1e3 * steps_gpu / max(1, sum(w.get("steps", 0) for w in windows)),
        "peak_gpu_memory_gb": max(w.get("gpu_memory_gb", 0.0) for w in windows),
    }


def bench_rates(rows: list[dict] | None) -> dict[str, float]:
    """``{batch: images/s}`` of benchmark rows."""
    return {str(r["batch"]): r["images_per_s"] for r in rows or []}


def build_report(out: Path, cfg: GPUReportConfig | None = None) -> dict:
    skip = (cfg or GPUReportConfig()).skip_windows
    device = _read(out / "device.json") or {}
    bench = _read(out / "bench_default.json")
    runs = {mode: run_figures(out / "runs" / mode / "metrics.jsonl", skip) for mode in MODES}
    rates = {mode: (figures or {}).get("samples_per_s") for mode, figures in runs.items()}
    psnr = {
        name: (_read(out / f"psnr_{name}.json") or {}).get("mean_psnr") for name in ("cuda", "cpu")
    }
    default = bench_rates(bench)
    memory = [f["peak_gpu_memory_gb"] for f in runs.values() if f]
    report = {
        "device": device.get("name"),
        "date": device.get("date"),
        "default_fit_images_per_s": {k: default.get(k) for k in ("256", "4096")},
        "psnr_db": psnr,
        "train_samples_per_s": {k: rates[k] for k in ("rgb", "cold", "warm")},
        "fit_share_cold": (runs["cold"] or {}).get("fit_share_gpu_time"),
        "peak_gpu_memory_gb": max(memory) if memory else None,
        # what the judged figures stand on, and the variants measured beside them
        "gpu": device,
        "default_fit_256_over_4096": _ratio(default.get("256"), default.get("4096")),
        "cold_over_warm": _ratio(rates["cold"], rates["warm"]),
        "psnr_cuda_minus_cpu_db": _difference(psnr["cuda"], psnr["cpu"]),
        "default_fit_eager_images_per_s": bench_rates(_read(out / "bench_eager.json")),
        "default_fit_cholesky_images_per_s": bench_rates(_read(out / "bench_cholesky.json")),
        "default_fit_rows": bench,
        "runs": runs,
        "tests": test_results(out / "tests.xml"),
    }
    return report


def test_results(junit: Path) -> dict | None:
    """Counts and failures (name, the first lines of the message) of a pytest JUnit report."""
    try:
        root = ElementTree.parse(junit).getroot()
    except (OSError, ElementTree.ParseError):
        return None
    cases = root.iter("testcase")
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    failures = {}
    for case in cases:
        problem = case.find("failure")
        problem = case.find("error") if problem is None else problem
        if problem is not None:
            counts["failed"] += 1
            text = (problem.get("message") or "") + "\n" + (problem.text or "")
            failures[f"{case.get('classname')}::{case.get('name')}"] = text[-3000:]
        elif case.find("skipped") is not None:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return {**counts, "failures": failures}


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _difference(a: float | None, b: float | None) -> float | None:
    return a - b if a is not None and b is not None else None


def print_summary(report: dict) -> None:
    def fmt(x: Any) -> str:
        return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:,.4g}"

    fits, psnr, train = (
        report["default_fit_images_per_s"],
        report["psnr_db"],
        report["train_samples_per_s"],
    )
    rows = [
        ["device", report["device"] or "-"],
        ["default fit, batch 256 (img/s)", fmt(fits["256"])],
        ["default fit, batch 4096 (img/s)", fmt(fits["4096"])],
        ["256 / 4096", fmt(report["default_fit_256_over_4096"])],
        ["PSNR cuda / cpu (dB)", f"{fmt(psnr['cuda'])} / {fmt(psnr['cpu'])}"],
        ["train samples/s rgb", fmt(train["rgb"])],
        ["train samples/s cold", fmt(train["cold"])],
        ["train samples/s warm", fmt(train["warm"])],
        ["cold / warm", fmt(report["cold_over_warm"])],
        ["fit share of GPU time, cold", fmt(report["fit_share_cold"])],
        ["peak GPU memory (GB)", fmt(report["peak_gpu_memory_gb"])],
    ]
    print_table(["figure", "value"], rows, ["", ""])


def main(argv: list[str] | None = None) -> dict:
    parser = tool_parser(__doc__.split("\n\n")[0], GPUReportConfig)
    parser.add_argument("out", type=Path, help="the work folder of tools/gpu_check.sh")
    parser.add_argument("--json", type=Path, help="where to write (default OUT/gpu_report.json)")
    args, cfg = parse_tool_args(parser, GPUReportConfig, argv)
    report = build_report(args.out, cfg)
    write_json(args.json or args.out / "gpu_report.json", report)
    print_summary(report)
    return report


if __name__ == "__main__":
    main()
