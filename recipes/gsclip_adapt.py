"""GS-CLIP adaptation, the main job: splats fitted inside the data loader (with the
persistent cache) feed a GS-CLIP built around an RGB teacher; the GS stem, the resampler and
the first vision blocks train under DeepSpeed, evaluated zero-shot every epoch.

    deepspeed recipes/gsclip_adapt.py                     # the offline CPU demo
    deepspeed recipes/gsclip_adapt.py --config recipes/configs/datacomp_small_gs_adapt.yaml
    python recipes/gsclip_adapt.py train.epochs=2         # one process, no launcher

Without a teacher (``model.pretrained`` unset) it first runs the RGB pre-training
(:func:`streamfit.train.rgb.pretrain_rgb`) with ``teacher_config`` into ``{run}/teacher``.
With ``eval.val_data`` set, each stage's best epoch is chosen on that split and only the
chosen model is measured on ``eval.data``. It ends with a table of the RGB and GS zero-shot
accuracies and writes it as ``{run}/summary.json``.
"""

from __future__ import annotations

import streamfit.openmp  # noqa: F401 (first: before torch loads its OpenMP runtime)

# isort: split

import sys
import time
from pathlib import Path

from streamfit.cli import parse_recipe_args
from streamfit.config import ConfigError
from streamfit.data import EmptyEpoch
from streamfit.train.config import AdaptConfig
from streamfit.train.distributed import is_main_process, shutdown
from streamfit.train.gs import adapt_gs

DEFAULT_CONFIG = str(Path(__file__).parent / "configs" / "tiny_cpu.yaml")


def print_summary(summary: dict, path: Path) -> None:
    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:.1f}%"

    rows = [
        ("zero-shot top-1, RGB teacher", pct(summary["rgb_top1"])),
        ("zero-shot top-5, RGB teacher", pct(summary.get("rgb_top5"))),
        ("zero-shot top-1, GS-CLIP", pct(summary["gs_top1"])),
        ("zero-shot top-5, GS-CLIP", pct(summary["gs_top5"])),
        *(
            (f"validation top-1, {name} (chose it)", pct(summary[key]))
            for name, key in (("RGB teacher", "rgb_val_top1"), ("GS-CLIP", "gs_val_top1"))
            if summary.get(key) is not None
        ),
        ("chance top-1", pct(summary["chance_top1"])),
        ("compression ratio (vs 8-bit RGB)", f"{summary['compression_ratio'] or 0:.1f}x"),
        ("splats per image", f"{summary['splats_per_image'] or 0:.1f}"),
        ("fit cache hit rate (training)", pct(summary["cache_hit_rate"])),
        *((f"  {name} time", f"{s:.0f} s") for name, s in summary["stage_seconds"].items()),
        ("wall time", f"{summary['wall_seconds']:.0f} s"),
    ]
    width = max(len(name) for name, _ in rows)
    print("\n" + "\n".join(f"{name:<{width}}  {value:>8}" for name, value in rows))
    print(f"\nsummary: {path}")


def main(argv: list[str] | None = None) -> None:
    wall_start = time.perf_counter()
    cfg = parse_recipe_args(AdaptConfig, argv, DEFAULT_CONFIG, __doc__)
    try:
        summary = adapt_gs(cfg, wall_start)
    except (ConfigError, FileNotFoundError, EmptyEpoch) as err:
        sys.exit(f"error: {err}")
    if "stopped_at_step" not in summary and is_main_process():
        print_summary(summary, cfg.run.path / "summary.json")


if __name__ == "__main__":
    try:
        main()
    finally:
        shutdown()  # the process group goes before the interpreter's teardown
