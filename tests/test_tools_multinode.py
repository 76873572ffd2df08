"""Many-node tools, small: benchmark_loader simulating all ranks of several nodes (exactly
once per epoch, the second epoch from the nodes' caches, bad layouts refused)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from streamfit import plan as planner
from streamfit.data.synthetic import write_split

TOOLS = Path(__file__).resolve().parents[1] / "tools"
TINY = ["--backend", "torch", "--device", "cpu", "--gaussians", "4", "--iters", "2"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> str:
    """7 shards of unequal sizes (6 of 7 samples, one of 3)."""
    return write_split(
        tmp_path_factory.mktemp("multinode"), "train", 45, image_size=8, shard_size=7, seed=0
    )


def bench(program, shards: str, tmp_path: Path, *extra: str) -> list[dict]:
    report = tmp_path / "bench.json"
    argv = ["--shards", shards, "--cache", str(tmp_path / "cache"), "--image-size", "8"]
    argv += ["--batch-size", "4", "--json", str(report), *TINY, *extra]
    assert program("tools/benchmark_loader").main(argv) == 0
    return json.loads(report.read_text())["epochs"]


def test_all_ranks_of_four_nodes(shards: str, tmp_path: Path, program) -> None:
    epochs = bench(program, shards, tmp_path, "--world-size", "8", "--nodes", "4", "--epochs", "3")
    for e in epochs:
        assert (e["samples"], e["distinct"], e["duplicates"], e["skipped"]) == (45, 45, 0, {})
        assert len(e["ranks"]) == 8 and sum(r["samples"] for r in e["ranks"]) == 45
    assert (epochs[0]["cache_hits"], epochs[0]["cache_misses"]) == (0, 45)
    assert [(e["cache_hits"], e["cache_misses"]) for e in epochs[1:]] == [(45, 0), (45, 0)]
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [
        f"node00{n}" for n in range(4)
    ]


def test_bad_layouts_are_refused(shards: str, tmp_path: Path, capsys, program) -> None:
    with pytest.raises(SystemExit):  # 3 nodes cannot hold 8 ranks equally
        bench(program, shards, tmp_path, "--world-size", "8", "--nodes", "3")
    assert "must divide --world-size" in capsys.readouterr().err
    argv = ["--shards", shards, "--cache", str(tmp_path / "c"), "--world-size", "8"]
    assert program("tools/benchmark_loader").main([*argv, "--nodes", "8", *TINY]) == 2
    assert "7 shards cannot give each of 8 nodes a share" in capsys.readouterr().err


RATES = [
    "--fit-rate",
    "1000",
    "--train-rate",
    "2000",
    "--decode-rate",
    "300",
    "--loader-rate",
    "800",
]


def test_plan_run_preset_with_measured_rates(tmp_path: Path, program) -> None:
    plan_run = program("tools/plan_run")
    out = tmp_path / "plan.json"
    assert plan_run.main(["--preset", "datacomp-small", *RATES, "--json", str(out)]) == 0
    plan = json.loads(out.read_text())
    epochs = plan["epochs"]
    assert len(epochs) == 6 and plan["gpus"] == 64
    # 12.8M samples on 64 GPUs: epoch 0 fits all at 1000/s per GPU, later epochs hit the cache
    assert epochs[0]["fit_s"] == pytest.approx((12_800_000 + 50_000) / 64 / 1000)
    assert [e["cache_hit_rate"] for e in epochs] == [0, 1, 1, 1, 1, 1]
    assert plan["fit_share_of_gpu_time"] == pytest.approx(
        epochs[0]["fit_s"] / sum(e["fit_s"] + e["train_s"] + e["eval_s"] for e in epochs)
    )
    # 1.6M samples a node x (a q64 blob of 400 splats, 3,245 B, x 1.30 + 167 B)
    assert plan["cache_bytes_per_node"] == pytest.approx(1.6e6 * (3245 * 1.30 + 167))
    assert plan["sidecar_store_bytes"] == 12_800_000 * (512 + 3584) + 1288 * 1024
    assert plan["bound_by"] == "GPU training"
    assert plan["rates"]["sources"]["fit"] == "given (fit_rate)"


def test_plan_run_global_schedule_and_small_cache_refit() -> None:
    rates = planner.Rates(fit=100, train=1000, eval=3000, decode=300, loader=800)
    data = planner.Dataset(1_000_000, 1000, 100e3)
    recipe = planner.Recipe(epochs=3, gaussians=400, iters=100, schedule="global")
    cluster = planner.Cluster(nodes=4, cache_max_bytes=1e15)
    hits = [e["cache_hit_rate"] for e in planner.plan(cluster, rates, data, recipe)["epochs"]]
    assert hits == pytest.approx([0, 0.25, 1 - 0.75**2])
    # a cache a quarter of a node's share keeps a quarter of it
    cluster = planner.Cluster(nodes=4, cache_max_bytes=250_000 * (3245 * 1.30 + 167) / 4)
    out = planner.plan(cluster, rates, data, replace(recipe, schedule="node"))
    assert out["cache_holds_share"] == pytest.approx(0.25)
    assert out["epochs"][1]["cache_hit_rate"] == pytest.approx(0.25)
    assert out["bound_by"] == "GPU fitting"


def test_plan_run_fit_rate_from_benchmark_fit_rows(tmp_path: Path) -> None:
    rows = [
        {"batch": 16, "gaussians": 400, "iters": 100, "height": 224, "images_per_s": 300.0},
        {"batch": 256, "gaussians": 400, "iters": 100, "height": 224, "images_per_s": 900.0},
    ]
    path = tmp_path / "fit.json"
    path.write_text(json.dumps(rows))
    recipe = planner.Recipe(epochs=1, gaussians=400, iters=100)
    assert planner.fit_rate_from_json(path, recipe)[0] == 900.0  # the best batch
    rate, label = planner.fit_rate_from_json(path, replace(recipe, iters=200))
    assert rate == pytest.approx(450.0) and "scaled" in label


def test_plan_run_bad_input(tmp_path: Path, capsys, program) -> None:
    plan_run = program("tools/plan_run")
    assert plan_run.main(["--preset", "imagenet-1k", "--nodes", "2000", *RATES]) == 2
    assert "cannot give each of 2000 nodes" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        plan_run.main(["--preset", "imagenet-1k", "--train-rate", "0"])
    missing = tmp_path / "none.json"
    assert plan_run.main(["--preset", "imagenet-1k", "--fit-json", str(missing)]) == 2


def test_demo_comparison_tolerance() -> None:
    epochs = [{"seconds": 23.0, "fit_s": 3.7, "eval_fit_s": 0.0}] * 10
    check = planner.compare({"wall_seconds": 230.0, "epochs": epochs}, 232.0, 37.0, "ref")
    assert check["ok"] and check["measured"]["mean_epoch_seconds"] == pytest.approx(23.2)
    epochs = [{"seconds": 15.0, "fit_s": 3.7, "eval_fit_s": 0.0}] * 10
    assert not planner.compare({"wall_seconds": 150.0, "epochs": epochs}, 232.0, 37.0, "ref")["ok"]
    # the loader's own fitting seconds are reported but do not decide (they stretch by the
    # overlap with training on a CPU-only machine)
    epochs = [{"seconds": 23.0, "fit_s": 1.0, "eval_fit_s": 0.0}] * 10
    check = planner.compare({"wall_seconds": 230.0, "epochs": epochs}, 232.0, 37.0, "ref")
    assert check["ok"] and check["relative_error"]["fit_seconds"] < -0.5


def test_plan_run_gpu_rates_from_the_gpu_report(tmp_path: Path, capsys, program) -> None:
    rows = [
        {"batch": b, "gaussians": 400, "iters": 16, "height": 224, "images_per_s": rate}
        for b, rate in ((256, 8000.0), (4096, 10000.0))
    ]
    report = {"device": "GPU X", "date": "2026-12-05", "default_fit_rows": rows}
    report["train_samples_per_s"] = {"rgb": 900.0, "cold": 500.0, "warm": 700.0}
    path = tmp_path / "gpu_report.json"
    path.write_text(json.dumps(report))
    out = tmp_path / "plan.json"
    argv = ["--preset", "imagenet-1k", "--decode-rate", "300", "--loader-rate", "800"]
    assert program("tools/plan_run").main([*argv, f"gpu_report={path}", "--json", str(out)]) == 0
    rates = json.loads(out.read_text())["rates"]
    # the loader's batch of 256, carried from 16 to the recipe's 200 iterations
    assert rates["fit"] == pytest.approx(8000.0 * 16 / 200)
    assert (rates["train"], rates["eval"]) == (700.0, 2100.0)
    assert "GPU X" in rates["sources"]["fit"] and "warm" in rates["sources"]["train"]
    # without a report, a GPU rate found nowhere is an error naming its flags
    argv += ["--gpu-report", str(tmp_path / "none.json")]
    assert program("tools/plan_run").main([*argv, "--train-rate", "700"]) == 2
    assert "no fit rate: give --fit-json FILE" in capsys.readouterr().err


def test_plan_splat_scaling_and_demo_reference_come_from_committed_reports() -> None:
    grid = json.loads(planner.FIT_GRID.read_text())["rows"]
    rate = {r["gaussians"]: r["images_per_s"] for r in grid if r["batch"] == 4096}
    row = {"images_per_s": rate[1024], "gaussians": 1024, "iters": 100, "height": 224}
    recipe = planner.Recipe(epochs=1, gaussians=400, iters=100)
    assert planner.scale_fit_rate(row, recipe) == pytest.approx(rate[400])
    reference = json.loads(planner.DEMO_REFERENCE.read_text())
    assert {"date", "machine", "command"} <= set(reference)
    rates = planner.Rates(fit=50, train=200, eval=600, decode=2000, loader=300)
    stages = {"gs_adapt": 8.0, "gs_fitting_in_loader": 2.0}
    checks = planner.demo_checks({"rates": rates, "checkpoint_s": 0.1, "stages": stages})
    assert (
        checks["reference"]["measured"]["gs_adapt_seconds"]
        == (reference["stage_seconds"]["gs_adapt"])
    )
    assert checks["reference"]["measured_by"] == str(planner.DEMO_REFERENCE)
