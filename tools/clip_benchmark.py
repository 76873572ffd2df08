#!/usr/bin/env python
"""clip_benchmark's own command line (``clip_benchmark eval`` and ``build``, every flag),
with two more model types: ``streamfit_gs`` (a GS-CLIP run; images are fitted into splats)
and ``streamfit_rgb`` (an RGB CLIP run, e.g. a GS-CLIP's teacher). ``--model`` takes a run
directory or a checkpoint directory, as ``tools/zeroshot_eval.py --run/--checkpoint`` do.
Needs the optional extra: ``pip install -e ".[eval]"``.

    python tools/make_shards.py labelled /datasets/imagenet/val --out wds_imagenet
    python tools/clip_benchmark.py eval --model_type streamfit_gs --model runs/tiny_cpu \\
        --dataset wds/shapes --dataset_root data/synthetic/clip_benchmark --output gs.json
    python tools/clip_benchmark.py eval --model_type streamfit_rgb --model runs/tiny_cpu/teacher \\
        --dataset wds/shapes --dataset_root data/synthetic/clip_benchmark --output rgb.json

Flags of this tool (taken out before clip_benchmark parses the line):

    --classifier-cache DIR  cached zero-shot classifiers, shared with tools/zeroshot_eval.py
                            and training (default ~/.cache/streamfit/zeroshot_classifiers;
                            none: off). clip_benchmark's --load_clfs FILE still wins.
    --splat-cache DIR       GS: the splat cache (default: the run's data.cache_dir)

What differs from clip_benchmark run alone, and why:

- The streamfit types build their zero-shot classifier through streamfit's classifier cache
  (keyed by the text tower's weights, tokenizer, context length, class names and prompts),
  so a second evaluation, or one of a GS-CLIP run of the same teacher, encodes no prompt.
- On a machine without CUDA the streamfit types run with ``--no_amp``: clip_benchmark's
  autocast on a CPU means bfloat16, which rounds the logits (and is slower than float32 on
  most CPUs), so its figures would differ from ``zeroshot_eval.py``'s. On a GPU, ``--amp``
  stays clip_benchmark's default for the network; splat fitting always runs in float32.
- ``--pretrained`` means nothing to the streamfit types: unless given it is set to
  ``streamfit``, so result files do not name an unrelated LAION tag.
- clip_benchmark 1.6.2's ``accuracy()`` calls ``float()`` on a one-element NumPy array, which
  NumPy >= 2.4 refuses (LAION-AI/CLIP_benchmark#147, unfixed in any release). This tool
  replaces that function, in clip_benchmark's zero-shot and linear-probe modules, by one that
  computes the same top-k accuracies with ``Tensor.item()``, for every model type.
"""

from __future__ import annotations

import streamfit.openmp  # noqa: F401 (first: before torch loads its OpenMP runtime)

# isort: split

import argparse
import logging
import os
import sys
from functools import partial

import torch

from streamfit.eval.benchmark_model import BenchmarkModel, load_benchmark_model
from streamfit.eval.run_model import NotARun
from streamfit.report import print_key_values, setup_logging

MODEL_TYPES = {"streamfit_gs": "gs", "streamfit_rgb": "rgb"}
logger = logging.getLogger("streamfit.clip_benchmark")


def topk_accuracy(output: torch.Tensor, target: torch.Tensor, topk=(1,)) -> list[float]:
    """clip_benchmark's ``accuracy(output [N, C] logits, target [N] labels, topk)``: the share
    of samples whose label is among the ``k`` highest logits, for each ``k``, as floats."""
    top = output.topk(max(topk), dim=1).indices
    hits = top == target.view(-1, 1)
    return [hits[:, :k].any(dim=1).sum().item() / len(target) for k in topk]


def install(classifier_cache: str, splat_cache: str | None, loaded: list[BenchmarkModel]) -> None:
    """Register the streamfit model types with clip_benchmark, route their zero-shot classifier
    through streamfit's classifier cache and mend ``accuracy()`` (module docstring)."""
    import clip_benchmark.metrics.linear_probe as linear_probe
    import clip_benchmark.metrics.zeroshot_classification as zeroshot_classification
    import clip_benchmark.models as models

    def loader(kind: str, model_name: str, pretrained: str, cache_dir: str | None, device="cuda"):
        model, transform, tokenizer = load_benchmark_model(
            kind, model_name, device, classifier_cache, splat_cache
        )
        if not loaded and not torch.cuda.is_available():
            logger.info("no CUDA: %s evaluated in float32 (--no_amp)", model_name)
        loaded.append(model)
        return model, transform, tokenizer

    for name, kind in MODEL_TYPES.items():
        models.TYPE2FUNC[name] = partial(loader, kind)
        if name not in models.MODEL_TYPES:
            models.MODEL_TYPES.append(name)  # the CLI's --model_type choices are this list

    current = zeroshot_classification.zero_shot_classifier
    build = getattr(current, "__wrapped__", current)  # clip_benchmark's own, if installed twice

    def cached_classifier(model, tokenizer, classnames, templates, device, amp=True):
        if not isinstance(model, BenchmarkModel):
            return build(model, tokenizer, classnames, templates, device, amp=amp)
        if isinstance(templates, dict):  # class-specific prompts (CuPL)
            prompts = [list(templates[name]) for name in classnames]
        else:
            prompts = [[t.format(c=name) for t in templates] for name in classnames]
        return model.zero_shot_classifier(classnames, prompts).weights

    cached_classifier.__wrapped__ = build
    zeroshot_classification.zero_shot_classifier = cached_classifier
    zeroshot_classification.accuracy = topk_accuracy
    linear_probe.accuracy = topk_accuracy


def clip_benchmark_argv(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """(this tool's own flags, the line clip_benchmark parses), with the streamfit types'
    defaults added (module docstring)."""
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--classifier-cache", default="")
    own.add_argument("--splat-cache")
    args, rest = own.parse_known_args(argv)
    model_type = _flag_value(rest, "--model_type")
    if rest[:1] == ["eval"] and model_type in MODEL_TYPES:
        if _flag_value(rest, "--pretrained") is None and not _flag_value(
            rest, "--pretrained_model"
        ):
            rest += ["--pretrained", "streamfit"]
        if not torch.cuda.is_available() and "--no_amp" not in rest:
            rest.append("--no_amp")
    return args, rest


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    setup_logging(stream=sys.stderr)
    # this file is named like the package it drives: its folder must not shadow that package
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    if {"-h", "--help"} & set(argv):
        print(__doc__)
    try:
        import clip_benchmark.cli
    except ImportError as err:
        print(
            f"error: clip_benchmark is not installed ({err}): pip install -e '.[eval]'",
            file=sys.stderr,
        )
        return 1
    args, rest = clip_benchmark_argv(argv)
    loaded: list[BenchmarkModel] = []
    install(args.classifier_cache, args.splat_cache, loaded)
    sys.argv = ["clip_benchmark", *rest]
    try:
        clip_benchmark.cli.main()
    except NotARun as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for model in loaded:
        summary = model.splat_summary()
        if summary:
            print_key_values({f"splats, {k.replace('_', ' ')}": v for k, v in summary.items()})
    return 0


def _flag_value(argv: list[str], flag: str) -> str | None:
    for i, item in enumerate(argv):
        if item == flag and i + 1 < len(argv):
            return argv[i + 1]
        if item.startswith(flag + "="):
            return item.split("=", 1)[1]
    return None


if __name__ == "__main__":
    sys.exit(main())
