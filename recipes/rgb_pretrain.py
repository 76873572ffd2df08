"""RGB CLIP pre-training, the first stage: an open_clip CLIP trained contrastively on the RGB
batches of the streaming data graph, evaluated zero-shot every epoch; the best epoch's
weights (``best_model.pt``) are the teacher ``gsclip_adapt.py`` loads. The stage itself is
:func:`streamfit.train.rgb.pretrain_rgb`.

    deepspeed recipes/rgb_pretrain.py --config recipes/configs/datacomp_small_rgb.yaml
    python recipes/rgb_pretrain.py train.epochs=2           # one process, no launcher

With no ``--config`` it trains the small CPU teacher of the offline demo.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Loader threads and training threads share the cores: idle OpenMP workers must sleep rather
# than spin. Set before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from streamfit.config import ConfigError  # noqa: E402
from streamfit.data import EmptyEpoch  # noqa: E402
from streamfit.train.config import RGBPretrainConfig, parse_args  # noqa: E402
from streamfit.train.rgb import pretrain_rgb  # noqa: E402

DEFAULT_CONFIG = str(Path(__file__).parent / "configs" / "tiny_cpu_rgb.yaml")


def main(argv: list[str] | None = None) -> None:
    cfg = parse_args(RGBPretrainConfig, argv, DEFAULT_CONFIG)
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
    main()
