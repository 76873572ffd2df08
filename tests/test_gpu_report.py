"""``tools/gpu_report.py``: the GPU check's figures from its output folder, steady rates as
totals over totals without the start-up window, and null fields for what is missing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "gpu_report.py"


@pytest.fixture(scope="module")
def gpu_report(program):
    return program("tools/gpu_report")


def window(epoch: int, samples: int, seconds: float, fit_gpu: float, steps_gpu: float) -> dict:
    return {
        "kind": "train",
        "epoch": epoch,
        "samples": samples,
        "seconds": seconds,
        "samples_per_s": samples / seconds,
        "data_wait_share": 0.1,
        "fit_gpu_s": fit_gpu,
        "steps_gpu_s": steps_gpu,
        "steps": 5,
        "gpu_memory_gb": 20.0 + epoch,
    }


def write_run(out: Path, mode: str, windows: list[dict]) -> None:
    run = out / "runs" / mode
    run.mkdir(parents=True)
    lines = [json.dumps(w) for w in windows] + [json.dumps({"kind": "eval", "step": 9})]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def test_the_report_from_a_check_folder(tmp_path, gpu_report):
    out = tmp_path
    (out / "device.json").write_text(json.dumps({"name": "NVIDIA H200", "date": "2026-12-04"}))
    rows = [{"batch": 256, "images_per_s": 12000.0}, {"batch": 4096, "images_per_s": 14000.0}]
    (out / "bench_default.json").write_text(json.dumps(rows))
    (out / "psnr_cuda.json").write_text(json.dumps({"mean_psnr": 25.90}))
    (out / "psnr_cpu.json").write_text(json.dumps({"mean_psnr": 25.88}))
    # the first window of the measured (last) epoch is start-up and is left out
    write_run(out, "rgb", [window(0, 1280, 10.0, 0, 1), window(0, 1280, 0.25, 0, 0.2)])
    write_run(out, "cold", [window(0, 9, 9, 9, 9), window(0, 1280, 0.4, 0.1, 0.3)])
    warm = [window(0, 1280, 1.0, 0.5, 0.2), window(1, 1, 1, 1, 1), window(1, 1280, 0.3, 0.0, 0.3)]
    write_run(out, "warm", warm + [window(1, 1280, 0.2, 0.0, 0.2)])
    (out / "tests.xml").write_text(
        '<testsuites><testsuite><testcase classname="t" name="a"/>'
        '<testcase classname="t" name="b"><failure message="boom">trace</failure></testcase>'
        '<testcase classname="t" name="c"><skipped/></testcase></testsuite></testsuites>'
    )
    report = gpu_report.build_report(out)
    assert report["device"] == "NVIDIA H200" and report["date"] == "2026-12-04"
    assert report["default_fit_images_per_s"] == {"256": 12000.0, "4096": 14000.0}
    assert report["psnr_db"] == {"cuda": 25.90, "cpu": 25.88}
    rates = report["train_samples_per_s"]
    assert rates["rgb"] == pytest.approx(1280 / 0.25)
    assert rates["cold"] == pytest.approx(1280 / 0.4)
    assert rates["warm"] == pytest.approx(2560 / 0.5)  # totals over totals
    assert report["fit_share_cold"] == pytest.approx(0.1 / 0.4)
    assert report["peak_gpu_memory_gb"] == 21.0
    assert report["cold_over_warm"] == pytest.approx((1280 / 0.4) / (2560 / 0.5))
    assert report["tests"]["passed"] == 1 and report["tests"]["skipped"] == 1
    assert list(report["tests"]["failures"]) == ["t::b"]


def test_missing_inputs_leave_null_fields(tmp_path, gpu_report, capsys):
    report = gpu_report.main([str(tmp_path)])
    assert report["train_samples_per_s"] == {"rgb": None, "cold": None, "warm": None}
    assert report["default_fit_images_per_s"] == {"256": None, "4096": None}
    assert report["tests"] is None and report["fit_share_cold"] is None
    assert json.loads((tmp_path / "gpu_report.json").read_text())["device"] is None
    assert "cold / warm" in capsys.readouterr().out
