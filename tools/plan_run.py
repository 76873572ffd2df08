#!/usr/bin/env python
"""Plan a run before buying it: wall time per epoch, the share of GPU time spent fitting
splats, splat-cache bytes per node, storage for a sidecar splat store, and the resource that
bounds the run, from a cluster, measured rates, a dataset and a recipe (the model:
:mod:`streamfit.plan`).

    python tools/plan_run.py --preset datacomp-small --fit-json runs/bench_fit_gpu.json \\
        --train-rate 1800 --json runs/plan_small.json
    python tools/plan_run.py --preset imagenet-1k --nodes 4 --schedule global \\
        --fit-json docs/benchmarks/fit_h100.json --train-rate 1800   # the old schedule's cost
    python tools/plan_run.py --preset demo            # the offline demo on this machine

Rates: the flags; ``--fit-json`` (a ``tools/benchmark_fit.py`` JSON: the row of the recipe's
splats, iterations and size at the best batch, else the nearest row scaled by iterations,
cost per iteration and pixels); else the GPU check's report (``gpu_report=``, default
``docs/benchmarks/gpu_report.json``: the default fit at the loader's batch and the
warm-cache training step). A GPU rate found nowhere is an error naming its flag; CPU rates
not given are measured here (decoding synthetic JPEGs, the cached loader path). Each rate's
source is listed under ``sources``. ``--preset demo`` measures all its rates on this machine
(a fit, the library's GS training step on the recipe's DeepSpeed engine fed from the cache,
a zero-shot evaluation, a checkpoint) and checks the planned epoch times against the shrunk
demo run right after and the offline demo's stage times (``docs/benchmarks/demo.json``, or
``--demo-summary``); ``--check-demo`` adds that check to any preset. The tool exits 1 when the
check against the run right after is off by more than 25%.
"""

from __future__ import annotations

import streamfit.openmp  # noqa: F401 (first: before torch loads its OpenMP runtime)

# isort: split

import argparse
import sys
from dataclasses import asdict
from pathlib import Path

from streamfit import codec
from streamfit.cli import parse_tool_args, tool_parser
from streamfit.plan import (
    DEMO_REFERENCE,
    DEMO_TOLERANCE,
    GIB,
    PRESETS,
    Cluster,
    Dataset,
    PlanConfig,
    Rates,
    Recipe,
    demo_checks,
    plan,
    resolve,
)
from streamfit.report import print_key_values, print_table, write_json
from streamfit.train.distributed import shutdown


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, PlanConfig]:
    p = tool_parser(__doc__, PlanConfig)
    p.add_argument("--preset", choices=sorted(PRESETS), help="default datacomp-small")
    g = p.add_argument_group("cluster")
    g.add_argument("--nodes", type=int)
    g.add_argument("--gpus-per-node", type=int)
    g.add_argument("--cpus-per-node", type=int)
    g.add_argument("--read-gbps", type=float, help="shard reading, GB/s per node")
    g.add_argument("--cache-max-bytes", type=float, help="splat cache per node")
    g = p.add_argument_group("measured rates")
    g.add_argument("--gpu-report", help="the GPU check's gpu_report.json (default GPU rates)")
    g.add_argument("--fit-json", help="tools/benchmark_fit.py JSON")
    g.add_argument("--fit-rate", type=float, help="fit images/s per GPU")
    g.add_argument("--train-rate", type=float, help="training samples/s per GPU")
    g.add_argument("--eval-rate", type=float, help="evaluation images/s per GPU")
    g.add_argument("--decode-rate", type=float, help="image decodes/s per CPU core")
    g.add_argument("--loader-rate", type=float, help="cached samples/s per CPU core")
    g = p.add_argument_group("dataset and recipe")
    g.add_argument("--samples", type=int)
    g.add_argument("--shards", type=int)
    g.add_argument("--bytes-per-sample", type=float)
    g.add_argument("--epochs", type=int)
    g.add_argument("--gaussians", type=int)
    g.add_argument("--iters", type=int)
    g.add_argument("--image-size", type=int)
    g.add_argument("--eval-samples", type=int)
    g.add_argument("--schedule", choices=("node", "global"))
    g.add_argument("--splat-format", choices=codec.STORAGE_FORMATS, help="default q64")
    p.add_argument(
        "--check-demo",
        action="store_true",
        help="also plan the offline demo from rates measured here and compare (exit 1 if >25%%)",
    )
    p.add_argument(
        "--demo-summary",
        type=Path,
        default=DEMO_REFERENCE,
        help="compare with this demo run's summary.json (default: the committed reference)",
    )
    p.add_argument("--json", type=Path, help="write the plan here")
    return parse_tool_args(p, PlanConfig, argv)


def report(
    title: str, cluster: Cluster, rates: Rates, data: Dataset, recipe: Recipe, out: dict
) -> None:
    print(
        f"# {title}: {cluster.nodes} nodes x {cluster.gpus_per_node} GPUs, "
        f"{cluster.cpus_per_node} cores and {cluster.read_gbps:g} GB/s of shard reads a node; "
        f"{recipe.schedule} schedule; {recipe.epochs} epochs x {data.samples} samples, "
        f"{recipe.gaussians} splats, {recipe.iters} iterations"
    )
    print_table(
        ["epoch", "seconds", "hit%", "fit s", "train s", "cpu s", "io s", "bound"],
        [
            [
                e["epoch"], e["seconds"], 100 * e["cache_hit_rate"], e["fit_s"],
                e["train_s"] + e["eval_s"], e["cpu_s"], e["io_s"], e["bound"],
            ]
            for e in out["epochs"]
        ],
        ["", ".1f", ".0f", ".1f", ".1f", ".1f", ".1f"],
    )  # fmt: skip
    print_key_values(
        {
            "wall time": f"{out['wall_hours']:.2f} h ({out['wall_seconds']:.0f} s)",
            "GPU time fitting": f"{100 * out['fit_share_of_gpu_time']:.1f}%",
            "cache per node": f"{out['cache_bytes_per_node'] / GIB:.1f} GiB "
            f"(holds {100 * out['cache_holds_share']:.0f}% of the node's share)",
            "sidecar store": f"{out['sidecar_store_bytes'] / GIB:.1f} GiB",
            "bounded by": out["bound_by"],
        }
    )
    print("rates:")
    print_table(
        ["rate", "per s", "source"],
        [[name, getattr(rates, name), source] for name, source in rates.sources.items()],
        ["", ".1f"],
    )


def main(argv: list[str] | None = None) -> int:
    args, cfg = parse_args(argv)
    demo = cfg.preset == "demo"
    try:
        # a preset's own rates first (a missing one is an error before minutes of measuring)
        planned = None if demo else resolve(cfg)
        live = None
        if demo or args.check_demo:
            from streamfit.plan_measure import demo_check_live

            live = demo_check_live(Path(cfg.fit_json) if cfg.fit_json and demo else None)
        cluster, rates, data, recipe = resolve(cfg, live) if demo else planned
        if not rates.decode or not rates.loader:
            from streamfit.plan_measure import measure_cpu_rates

            print("measuring the CPU rates here (--decode-rate, --loader-rate)", file=sys.stderr)
            rates = measure_cpu_rates(rates, data, recipe)
        out = plan(cluster, rates, data, recipe)
    except (ValueError, KeyError, OSError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    report(PRESETS[cfg.preset][3], cluster, rates, data, recipe, out)
    result = {
        "preset": cfg.preset,
        "cluster": asdict(cluster),
        "dataset": asdict(data),
        "recipe": asdict(recipe),
        "rates": asdict(rates),
        **out,
    }
    code = 0
    if live is not None:
        checks = demo_checks(live, args.demo_summary)
        result["demo_check"] = {
            **checks,
            "rates": asdict(live["rates"]),
            "tolerance": DEMO_TOLERANCE,
        }
        print("\ndemo check: the demo planned from rates measured here, against")
        for check in checks.values():
            errors = ", ".join(
                f"{k} {check['planned'][k]:.1f} vs {check['measured'][k]:.1f} ({100 * v:+.0f}%)"
                for k, v in check["relative_error"].items()
            )
            verdict = "ok" if check["ok"] else f"off by more than {DEMO_TOLERANCE:.0%}"
            print(f"  {check['measured_by']}: {errors}: {verdict}")
        code = 0 if checks["now"]["ok"] else 1
    if args.json:
        write_json(args.json, result)
    return code


if __name__ == "__main__":
    try:
        status = main()
    finally:
        shutdown()  # --measure joins a process group: it goes before the interpreter's teardown
    sys.exit(status)
