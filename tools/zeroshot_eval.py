"""Zero-shot top-1/top-5 of an RGB or a GS-CLIP checkpoint on a labelled split (ImageNet-1k
validation as an ImageFolder, or webdataset shards with a ``.cls`` or ``.json`` label), with
open_clip's class names and templates or any class list from a file. GS models get their
splats fitted on the fly, through the run's splat cache.

    python tools/zeroshot_eval.py --run runs/tiny_cpu --data 'data/synthetic/heldout-*.tar' \
        --classnames data/synthetic/classes.json --json out.json --per-class-csv classes.csv
    python tools/zeroshot_eval.py --run runs/rgb --data /datasets/imagenet/val      # ImageNet
    python tools/zeroshot_eval.py --model ViT-B-32 --pretrained openai --data /datasets/imagenet/val

``--run DIR`` takes a run directory (its ``config.yaml``; an RGB run's ``best_model.pt``,
else the latest checkpoint), ``--checkpoint DIR`` one checkpoint directory, ``--model`` a plain
open_clip model. A run or checkpoint without ``--config`` evaluates as its own ``eval:``
section says (split, class names, templates), so ``--run runs/tiny_cpu`` alone measures the
demo's held-out split; flags and ``key=value`` still override.

The text classifier (class names x templates through the text tower) is cached on disk,
keyed by the text tower's weights, the tokenizer, the context length, the class names and the
prompts: a second evaluation of the same model, or of a GS-CLIP run of the same teacher,
skips it (``--classifier-cache DIR``, default ``~/.cache/streamfit/zeroshot_classifiers``;
``none`` turns it off). The cached ``.pt`` file is what clip_benchmark's ``--load_clfs`` reads.
"""

from __future__ import annotations

import streamfit.openmp  # noqa: F401 (first: before torch loads its OpenMP runtime)

# isort: split

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch
import yaml
from open_clip.model import get_model_preprocess_cfg

from streamfit.cli import parse_tool_args, tool_parser
from streamfit.data import DataConfig
from streamfit.eval import EvalConfig, zero_shot, zero_shot_setup
from streamfit.eval.run_model import EXPECTED, NotARun, load_run
from streamfit.eval.weights import CheckpointReadError, locate_weights
from streamfit.fit import FitConfig
from streamfit.hardware import resolve_device
from streamfit.models import load_teacher, zero_shot_encoder
from streamfit.report import print_key_values, setup_logging, write_json


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, EvalConfig]:
    argv = list(sys.argv[1:] if argv is None else argv)
    run_config = _run_config(argv)
    has_eval = run_config is not None and "eval" in (yaml.safe_load(run_config.read_text()) or {})
    if has_eval and "--config" not in argv:
        argv = ["--config", str(run_config), *argv]  # the run's own eval: section
    p = tool_parser(__doc__, EvalConfig)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="run directory (config.yaml + weights)")
    src.add_argument("--checkpoint", help="checkpoint directory (step-N with config.yaml)")
    src.add_argument("--model", help="open_clip model name (RGB)")
    p.add_argument("--pretrained", help="with --model: open_clip tag or weights file")
    p.add_argument("--model-kwargs", default="{}", help="with --model: JSON config overrides")
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="with --model: the seed of weights --pretrained leaves random (default 0)",
    )
    p.add_argument("--data", help="ImageFolder directory or shard pattern")
    p.add_argument("--classnames", help="imagenet (default) | .txt | .json file")
    p.add_argument("--templates", help="openai | simple | .txt file (default: auto)")
    p.add_argument("--batch-size", type=int, help="default 128")
    p.add_argument("--max-samples", type=int, help="0 (default): all")
    p.add_argument("--cache-dir", help="GS: splat cache (default: the run's)")
    p.add_argument(
        "--classifier-cache",
        help="zero-shot classifier cache directory (default ~/.cache/streamfit/"
        "zeroshot_classifiers; none: off)",
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--per-class-csv", help="write per-class top-1 here")
    args, cfg = parse_tool_args(p, EvalConfig, argv, section="eval")
    if not cfg.data:
        p.error("no labelled data: give --data or data=...")
    return args, cfg


def _run_config(argv: list[str]) -> Path | None:
    """The ``config.yaml`` of the ``--run``/``--checkpoint`` on the line (None without one);
    exits naming what was expected when that directory is no run or checkpoint."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--run")
    pre.add_argument("--checkpoint")
    known, _ = pre.parse_known_args(argv)
    if not (known.run or known.checkpoint):
        return None
    try:
        return locate_weights(Path(known.run or known.checkpoint), bool(known.run))[0]
    except FileNotFoundError as err:
        sys.exit(f"error: {err}; expected {EXPECTED}")


def load_model(args: argparse.Namespace) -> tuple[torch.nn.Module, DataConfig, FitConfig | None]:
    """(model in eval mode on the CPU with every parameter frozen, the data settings to decode
    with, the fitting settings of a GS model or None for RGB models)."""
    if args.model:
        # seeded: two evaluations of a random model are evaluations of the same model
        torch.manual_seed(args.seed)
        try:
            model = load_teacher(args.model, args.pretrained, **json.loads(args.model_kwargs))
        except FileNotFoundError as err:
            sys.exit(f"error: {err}")
        size = get_model_preprocess_cfg(model)["size"]
        data = DataConfig(
            image_size=size if isinstance(size, int) else size[0],
            tokenizer=args.model,
            context_length=model.context_length,
        )
        return model.eval().requires_grad_(False), data, None
    try:
        run = load_run(args.run or args.checkpoint, is_run=bool(args.run))
    except (NotARun, CheckpointReadError) as err:  # one line, no traceback
        sys.exit(f"error: {err}")
    return run.model, run.data, run.fit


def main(argv: list[str] | None = None) -> dict:
    args, eval_cfg = parse(argv)
    setup_logging(stream=sys.stderr)
    device = resolve_device(args.device)
    model, data_cfg, gs_fit = load_model(args)
    model.to(device)
    if args.cache_dir is not None:
        data_cfg = replace(data_cfg, cache_dir=args.cache_dir)
    setup = zero_shot_setup(eval_cfg)
    fit_cfg = None if gs_fit is None else replace(gs_fit, device=str(device))
    encode = zero_shot_encoder(model)
    result, extras = zero_shot(model, encode, setup, data_cfg, device, 0, 1, fit_cfg)
    out = {**result.to_dict(), **extras, "model": "gs" if gs_fit else "rgb", "data": eval_cfg.data}
    classifier = "from the cache" if extras["classifier_from_cache"] else "built"
    rows = {
        "top-1": f"{100 * result.top1:.2f}%",
        "top-5": f"{100 * result.top5:.2f}%",
        "chance top-1": f"{100 * result.chance_top1:.2f}%",
        "samples": result.samples,
        "classes": len(result.classnames),
        "text classifier": f"{classifier} in {extras['classifier_seconds']:.1f} s",
        "seconds": f"{extras['seconds']:.1f}",
    }
    if "splats_per_image" in extras:
        rows["splats per image"] = f"{extras['splats_per_image']:.1f}"
        rows["compression ratio"] = f"{extras['compression_ratio']:.1f}x"
        rows["cache hit rate"] = f"{100 * extras['cache_hit_rate']:.1f}%"
    print_key_values(rows)
    if args.json:
        write_json(args.json, out)
        print(f"json: {args.json}")
    if args.per_class_csv:
        result.write_per_class_csv(args.per_class_csv)
        print(f"per-class csv: {args.per_class_csv}")
    return {**out, "per_class_top1": result.per_class_top1}


if __name__ == "__main__":
    main()
