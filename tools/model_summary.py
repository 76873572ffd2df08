"""Parameter counts of the RGB CLIP image encoder and of the GS-CLIP built from it.

Examples::

    python tools/model_summary.py                          # ViT-M-16, default GS-CLIP
    python tools/model_summary.py --model ViT-B-16 num_tokens=98 --json summary.json
    python tools/model_summary.py --config recipes/configs/gsclip.yaml from_scratch=true

``--config`` takes a YAML file of :class:`~streamfit.models.GSModelConfig` fields, or a recipe
file whose ``model:`` section holds them; ``key=value`` overrides apply on top. Weights are
never loaded (``pretrained`` is ignored): the counts do not depend on them, and the tool runs
offline in seconds.
"""

from __future__ import annotations

import streamfit.openmp  # noqa: F401 (first: before torch loads its OpenMP runtime)

# isort: split

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from streamfit.cli import parse_tool_args, tool_parser
from streamfit.models import GSModelConfig
from streamfit.models.summary import summarize
from streamfit.report import format_table, write_json


def _m(n: int) -> float:
    return n / 1e6


def format_summary(summary: dict[str, Any]) -> str:
    cfg = summary["config"]
    rgb = [*summary["rgb_vision_parts"].items(), ("total", summary["vision_params_rgb"])]
    gs = [[part, row["total"], row["trainable"]] for part, row in summary["gs_parts"].items()]
    gs += [
        ["total", summary["gs_total_params"], summary["gs_trainable_params"]],
        ["vision encoder", summary["gs_vision_params"], summary["gs_vision_trainable_params"]],
    ]
    groups = [[g["name"], g["params"], f"x{g['lr_scale']:g}"] for g in summary["param_groups"]]
    vision_fraction = summary["gs_vision_trainable_params"] / summary["gs_vision_params"]
    return "\n".join(
        [
            f"model {cfg['model_name']}  ({'from scratch' if cfg['from_scratch'] else 'adapted'})",
            "",
            "RGB image encoder",
            format_table(["part", "params (M)"], [[p, _m(n)] for p, n in rgb], ["", ".3f"]),
            "",
            "GS-CLIP",
            format_table(
                ["part", "params (M)", "trainable (M)"],
                [[p, _m(a), _m(b)] for p, a, b in gs],
                ["", ".3f", ".3f"],
            ),
            "",
            "optimiser groups (lr = base lr x scale)",
            format_table(
                ["group", "params (M)", "lr scale"],
                [[n, _m(p), x] for n, p, x in groups],
                ["", ".3f"],
            ),
            "",
            f"trainable fraction of GS-CLIP: {100 * summary['trainable_fraction']:.2f}%"
            f" (of its image encoder: {100 * vision_fraction:.2f}%)",
            f"embedding width: {summary['embed_dim']}, resampler tokens: {summary['num_tokens']}",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = tool_parser(__doc__.split("\n\n")[0], GSModelConfig)
    parser.add_argument("--model", dest="model_name", help="open_clip model name")
    parser.add_argument("--json", type=Path, help="write the summary as JSON here")
    args, cfg = parse_tool_args(parser, GSModelConfig, argv, section="model")
    summary = summarize(cfg)
    print(format_summary(summary))
    if args.json is not None:
        write_json(args.json, summary)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
