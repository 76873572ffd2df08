#!/usr/bin/env python
"""Write DataComp-style webdataset shards (``<key>.jpg|png|webp`` + ``<key>.txt`` +
``<key>.json``), from a folder of images with captions or from the synthetic shapes dataset;
or a labelled split in clip_benchmark's ``wds/`` layout.

    # images with sidecar captions (photo.jpg + photo.txt, optional photo.json)
    python tools/make_shards.py folder photos/ --out shards/ --shard-size 1000
    # captions from a table (CSV, TSV or Parquet) of path + caption, paths relative to photos/
    python tools/make_shards.py folder photos/ --captions captions.csv --out shards/
    # the procedural shapes dataset: train + heldout shards, classes.json, and the held-out
    # split in clip_benchmark's layout (data/shapes/clip_benchmark)
    python tools/make_shards.py synthetic --out data/shapes --n-train 4000 --n-heldout 800
    # a labelled split (ImageFolder, or shards with .cls / .json label) for clip_benchmark:
    # OUT/test/{0..n-1}.tar (.cls labels), classnames.txt, zeroshot_classification_templates.txt
    python tools/make_shards.py labelled /datasets/imagenet/val --out wds_imagenet \
        --classnames imagenet --templates openai
    python -m clip_benchmark.cli eval --dataset wds/imagenet --dataset_root wds_imagenet ...

Images are stored as they are (no re-encoding); files that do not open as images, lack a
caption, or are not listed in the table are skipped and counted.

The caption table (``--captions``) needs two columns, other columns are ignored:

- ``--path-column`` (default ``path``): the image, relative to the folder, absolute, or a
  ``file://`` URL (remote URLs are skipped as ``not_local``: download them with img2dataset);
- ``--caption-column`` (default ``caption``): its caption (empty ones are skipped).

``labelled`` copies JPEG/PNG/WebP images byte for byte (others are re-encoded as PNG) and
takes class names and templates as ``tools/zeroshot_eval.py`` does (``--classnames imagenet |
FILE``, ``--templates openai | simple | FILE``, default the class file's own, else openai).
"""

from __future__ import annotations

import streamfit.openmp  # noqa: F401 (first: before torch loads its OpenMP runtime)

# isort: split

import argparse
import csv
import json
import logging
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

from PIL import Image
from tqdm.auto import tqdm

from streamfit.cli import parse_tool_args, tool_parser
from streamfit.data.shards import parse_meta
from streamfit.data.synthetic import write_synthetic_dataset
from streamfit.data.writer import ShardWriter, shard_pattern
from streamfit.report import print_key_values, write_json

log = logging.getLogger("streamfit.make_shards")
IMAGE_SUFFIXES = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png", ".webp": "webp"}


@dataclass
class ShardsConfig:
    """Shard size and names, a caption table's columns (``folder``), the shapes dataset's
    size (``synthetic``), a labelled split's classes, templates and split name
    (``labelled``)."""

    shard_size: int = 1000
    """Samples a shard."""
    prefix: str = "shard"
    """Shard names: ``PREFIX-000000.tar``."""
    path_column: str = "path"
    """``folder``: the caption table's column of image paths."""
    caption_column: str = "caption"
    """``folder``: the caption table's column of captions."""
    n_train: int = 4000
    """``synthetic``: training samples."""
    n_heldout: int = 800
    """``synthetic``: held-out samples."""
    image_size: int = 64
    """``synthetic``: side of the square images."""
    seed: int = 0
    """``synthetic``: seed of the dataset."""
    classnames: str = "imagenet"
    """``labelled``: imagenet, or a .txt / .json file of class names."""
    templates: str = ""
    """``labelled``: openai | simple | a .txt file ("": the class file's own, else openai)."""
    split: str = "test"
    """``labelled``: the split's folder name."""


def read_caption_table(path: Path, path_column: str, caption_column: str) -> dict[str, str]:
    """``image path entry -> caption`` from a CSV, TSV or Parquet file."""
    if path.suffix.lower() == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise SystemExit("reading Parquet needs pyarrow: pip install pyarrow") from None
        names = pq.read_schema(path).names
        missing = {path_column, caption_column} - set(names)
        if missing:
            raise SystemExit(f"{path}: no column(s) {sorted(missing)}; has {names}")
        table = pq.read_table(path, columns=[path_column, caption_column]).to_pydict()
        rows = zip(table[path_column], table[caption_column], strict=True)
        return {str(p): str(c) for p, c in rows}
    delimiter = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:  # -sig: a BOM is no column
            reader = csv.DictReader(f, delimiter=delimiter)
            missing = {path_column, caption_column} - set(reader.fieldnames or ())
            if missing:
                raise SystemExit(f"{path}: no column(s) {sorted(missing)}; has {reader.fieldnames}")
            return {row[path_column]: row[caption_column] or "" for row in reader}
    except UnicodeDecodeError as err:
        raise SystemExit(f"{path}: not UTF-8 text ({err})") from None


def table_path(root: Path, entry: str) -> Path | None:
    """The local file a table entry names: relative to ``root``, absolute, or a ``file://``
    URL; None for a remote URL."""
    if entry.startswith("file://"):
        return Path(url2pathname(urlparse(entry).path))
    if "://" in entry:
        return None
    path = Path(entry)
    return path if path.is_absolute() else root / path


def source_name(path: Path, root: Path) -> str:
    """How a sample's ``source`` is recorded: relative to ``root`` when inside it."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def folder_samples(
    root: Path, captions: dict[str, str] | None, skipped: Counter[str]
) -> Iterator[tuple[Path, str, dict]]:
    """``(image path, caption, extra json)`` for each usable image under ``root`` (sorted) or
    in the caption table (in its order)."""
    if captions is not None:
        listed: list[tuple[Path, str]] = []
        for entry, caption in captions.items():
            path = table_path(root, entry)
            if path is None:
                skipped["not_local"] += 1
                log.warning("skipped %s: not a local file", entry)
            elif not path.is_file():
                skipped["missing_file"] += 1
                log.warning("skipped %s: no such file", entry)
            else:
                listed.append((path, caption))
    else:
        paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        listed = []
        for path in paths:
            sidecar = path.with_suffix(".txt")
            try:
                listed.append((path, sidecar.read_text("utf-8") if sidecar.is_file() else ""))
            except (OSError, UnicodeDecodeError) as err:
                skipped["bad_caption"] += 1
                log.warning("skipped %s: caption file unreadable (%s)", sidecar, err)
    for path, caption in listed:
        rel = source_name(path, root)
        if not caption.strip():
            skipped["no_caption"] += 1
            log.warning("skipped %s: no caption", rel)
            continue
        extra: dict = {}
        sidecar_json = path.with_suffix(".json")
        if sidecar_json.is_file():
            try:
                extra = parse_meta(sidecar_json.read_bytes())
            except (OSError, ValueError) as err:
                skipped["bad_json"] += 1
                log.warning("skipped %s: bad json sidecar (%s)", rel, err)
                continue
        yield path, caption.strip(), extra


def write_folder(args: argparse.Namespace, cfg: ShardsConfig) -> dict:
    skipped: Counter[str] = Counter()
    captions = None
    if args.captions:
        captions = read_caption_table(args.captions, cfg.path_column, cfg.caption_column)
    writer = ShardWriter(args.out, prefix=cfg.prefix, shard_size=cfg.shard_size)
    samples = list(folder_samples(args.src, captions, skipped))
    for path, caption, extra in tqdm(samples, desc="shards", unit="image"):
        rel = source_name(path, args.src)
        ext = IMAGE_SUFFIXES.get(path.suffix.lower())
        if ext is None:
            skipped["unsupported_format"] += 1
            log.warning("skipped %s: not jpg/png/webp", rel)
            continue
        try:
            data = path.read_bytes()
            with Image.open(path) as im:
                width, height = im.size
                im.verify()  # header and structure, without decoding every pixel
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            skipped["bad_image"] += 1
            log.warning("skipped %s: %s", rel, err)
            continue
        meta = {**extra, "source": rel, "original_width": width, "original_height": height}
        writer.write(
            f"{writer.samples:09d}",
            {ext: data, "txt": caption.encode(), "json": json.dumps(meta).encode()},
        )
    paths = writer.close()
    return {
        "shards": shard_pattern(paths) if paths else "",
        "n_shards": len(paths),
        "samples": writer.samples,
        "skipped": dict(skipped),
    }


def write_synthetic(args: argparse.Namespace, cfg: ShardsConfig) -> dict:
    dataset = write_synthetic_dataset(
        args.out, cfg.n_train, cfg.n_heldout, cfg.image_size, cfg.shard_size, cfg.seed
    )
    return {
        "train": dataset.train,
        "heldout": dataset.heldout,
        "clip_benchmark": dataset.clip_benchmark,
        "samples": dataset.n_train + dataset.n_heldout,
        "classes": len(dataset.classnames),
        "skipped": {},
    }


def write_labelled(args: argparse.Namespace, cfg: ShardsConfig) -> dict:
    # evaluation's reader brings torch, open_clip and the fitting code: only this needs them
    from streamfit.eval.labelled import write_clip_benchmark_split
    from streamfit.eval.zeroshot import load_classnames, load_templates

    try:
        classnames = load_classnames(cfg.classnames)
        templates = load_templates(cfg.templates, cfg.classnames)
    except (FileNotFoundError, ValueError, KeyError) as err:
        raise SystemExit(f"error: {err}") from None
    return write_clip_benchmark_split(
        args.src, args.out, classnames, templates, cfg.split, cfg.shard_size
    )


def main(argv: list[str] | None = None) -> int:
    parser = tool_parser(__doc__, ShardsConfig)
    sub = parser.add_subparsers(dest="source", required=True)
    folder = sub.add_parser("folder", help="a folder of images with captions")
    folder.add_argument("src", type=Path, help="folder of images")
    folder.add_argument(
        "--captions", type=Path, help="CSV/TSV/Parquet of image path + caption (columns above)"
    )
    folder.add_argument(
        "--path-column", help="relative to SRC, absolute, or file:// URL (default path)"
    )
    folder.add_argument("--caption-column", help="default caption")
    folder.add_argument("--prefix", help="shard names: PREFIX-000000.tar (default shard)")
    synthetic = sub.add_parser("synthetic", help="the procedural shapes dataset")
    synthetic.add_argument("--n-train", type=int, help="default 4000")
    synthetic.add_argument("--n-heldout", type=int, help="default 800")
    synthetic.add_argument("--image-size", type=int, help="default 64")
    synthetic.add_argument("--seed", type=int, help="default 0")
    labelled = sub.add_parser(
        "labelled", help="a labelled split in clip_benchmark's wds/ layout (.cls labels)"
    )
    labelled.add_argument("src", help="ImageFolder directory, or shards with .cls/.json labels")
    labelled.add_argument("--classnames", help="imagenet (default) | .txt | .json file")
    labelled.add_argument("--templates", help="openai | simple | .txt file (default: auto)")
    labelled.add_argument("--split", help="the split's folder name (default test)")
    for p in (folder, synthetic, labelled):
        p.add_argument("--out", type=Path, required=True, help="output folder")
        p.add_argument("--shard-size", type=int, help="samples per shard (default 1000)")
        p.add_argument("--json", type=Path, help="write the summary here")
    args, cfg = parse_tool_args(parser, ShardsConfig, argv)
    if cfg.shard_size < 1:
        parser.error(f"shard_size must be >= 1, got {cfg.shard_size}")
    if args.source == "folder" and not args.src.is_dir():
        parser.error(f"not a folder: {args.src}")
    if args.source == "folder" and args.captions and not args.captions.is_file():
        parser.error(f"no such caption table: {args.captions}")
    if args.source == "synthetic" and min(cfg.n_train, cfg.n_heldout) < 0:
        parser.error("n_train and n_heldout must be >= 0")
    write = {"folder": write_folder, "synthetic": write_synthetic, "labelled": write_labelled}
    summary = write[args.source](args, cfg)
    print_key_values(summary)
    if args.json:
        write_json(args.json, summary)
    if not summary["samples"]:
        print(
            f"error: no samples written (skipped {summary['skipped'] or 'nothing'})",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
