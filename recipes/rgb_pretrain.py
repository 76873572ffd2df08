"""RGB CLIP pre-training, the first stage: an open_clip CLIP trained contrastively on the RGB
batches of the streaming data graph, evaluated zero-shot every epoch; the best epoch's
weights (``best_model.pt``) are the teacher ``gsclip_adapt.py`` loads. The stage itself is
:func:`streamfit.train.rgb.pretrain_rgb`.

    deepspeed recipes/rgb_pretrain.py --config recipes/configs/datacomp_small_rgb.yaml
    python recipes/rgb_pretrain.py train.epochs=2           # one process, no launcher

With no ``--config`` it trains the small CPU teacher of the offline demo.
"""

from __future__ import annotations

import streamfit.openmp  # noqa: F401 (first: before torch loads its OpenMP runtime)

# isort: split

import sys
from pathlib import Path

from streamfit.cli import parse_recipe_args
from streamfit.config import ConfigError
from streamfit.data import EmptyEpoch
from streamfit.train.config import RGBPretrainConfig
from streamfit.train.distributed import shutdown
from streamfit.train.rgb import pretrain_rgb

DEFAULT_CONFIG = str(Path(__file__).parent / "configs" / "tiny_cpu_rgb.yaml")


def main(argv: list[str] | None = None) -> None:
    cfg = parse_recipe_args(RGBPretrainConfig, argv, DEFAULT_CONFIG, __doc__)
    try:
        summary = pretrain_rgb(cfg)
    except (ConfigError, FileNotFoundError, EmptyEpoch) as err:
        sys.exit(f"error: {err}")
    if "best_top1" in summary:
        chosen = "" if summary["val_top1"] is None else f", validation {summary['val_top1']:.3f}"
        top1 = "n/a" if summary["best_top1"] is None else f"{summary['best_top1']:.3f}"
        print(f"teacher top-1 {top1}{chosen}")
    print(f"teacher weights: {summary.get('best_model')}")


if __name__ == "__main__":
    try:
        main()
    finally:
        shutdown()  # the process group goes before the interpreter's teardown
