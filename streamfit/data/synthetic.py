"""A procedurally generated image-caption dataset for the offline demo and the tests: one
dark shape on a light plain background, with captions such as "a picture of the star.".

The 16 zero-shot classes are the shapes, chosen for distinct silhouettes
(``{"label", "classname"}`` in each sample's ``.json``, as in the imagenet-sample shards).
Colour, size, position and background vary at random and are recorded in the ``.json`` but
never named in the caption, so the only thing a caption tells a contrastive loss about its
image is the silhouette: a model that learns colour gains nothing. Shapes are dark and
backgrounds light, so a silhouette is a luminance edge a small ViT finds within a few hundred
steps. Train, validation and held-out splits are drawn from independent random streams; the
held-out split is also written in clip_benchmark's ``wds/`` layout (``clip_benchmark/``), so
clip_benchmark evaluates the same images ``tools/zeroshot_eval.py`` does.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from streamfit.data.writer import (
    CLIP_BENCHMARK_WORKERS,
    ClipBenchmarkWriter,
    ShardWriter,
    shard_pattern,
)

Polygon = list[tuple[float, float]]


def _regular(n: int, r: float = 1.0, phase: float = -90.0) -> Polygon:
    """``n`` points on a circle of radius ``r`` (first at ``phase`` degrees, y down)."""
    return [
        (
            r * math.cos(math.radians(phase + 360 * i / n)),
            r * math.sin(math.radians(phase + 360 * i / n)),
        )
        for i in range(n)
    ]


def _star(points: int, inner: float) -> Polygon:
    outer, inside = _regular(points), _regular(points, inner, -90 + 180 / points)
    return [p for pair in zip(outer, inside, strict=True) for p in pair]


def _box(x0: float, y0: float, x1: float, y1: float) -> Polygon:
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def _rotated(polygon: Polygon, degrees: float) -> Polygon:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return [(c * x - s * y, s * x + c * y) for x, y in polygon]


_PLUS = [(-0.3, -1), (0.3, -1), (0.3, -0.3), (1, -0.3), (1, 0.3), (0.3, 0.3)]
_PLUS += [(-x, -y) for x, y in _PLUS]  # point symmetric
_CIRCLE = _regular(48)
_ARROW = [(-1, -0.25), (0.15, -0.25), (0.15, -0.7), (1, 0), (0.15, 0.7), (0.15, 0.25), (-1, 0.25)]
_T = [(-1, -0.9), (1, -0.9), (1, -0.4), (0.25, -0.4), (0.25, 1), (-0.25, 1), (-0.25, -0.4)]
_T += [(-1, -0.4)]
_L = [(-0.7, -1), (-0.2, -1), (-0.2, 0.5), (0.8, 0.5), (0.8, 1), (-0.7, 1)]
_HEART = [
    [(0.45 * x - 0.48, 0.45 * y - 0.4) for x, y in _CIRCLE],
    [(0.45 * x + 0.48, 0.45 * y - 0.4) for x, y in _CIRCLE],
    [(-0.9, -0.25), (0.9, -0.25), (0, 0.95)],
]

# Each shape: (filled polygons, holes cut back to the background) in [-1, 1]^2, y down.
SHAPE_GEOMETRY: dict[str, tuple[list[Polygon], list[Polygon]]] = {
    "circle": ([_CIRCLE], []),
    "square": ([_box(-0.85, -0.85, 0.85, 0.85)], []),
    "triangle": ([[(0, -1), (1, 0.8), (-1, 0.8)]], []),
    "diamond": ([[(0, -1), (0.75, 0), (0, 1), (-0.75, 0)]], []),
    "plus": ([_PLUS], []),
    "cross": ([_rotated(_PLUS, 45)], []),
    "star": ([_star(5, 0.42)], []),
    "hexagon": ([_regular(6, 1.0, 0)], []),
    "ring": ([_CIRCLE], [_regular(48, 0.55)]),
    "frame": ([_box(-0.85, -0.85, 0.85, 0.85)], [_box(-0.45, -0.45, 0.45, 0.45)]),
    "crescent": ([_CIRCLE], [[(x + 0.55, y - 0.2) for x, y in _regular(48, 0.85)]]),
    "heart": (_HEART, []),
    "arrow": ([_ARROW], []),
    "letter T": ([_T], []),
    "letter L": ([_L], []),
    "hourglass": ([[(-0.8, -1), (0.8, -1), (0, 0), (0.8, 1), (-0.8, 1), (0, 0)]], []),
}
SHAPES: tuple[str, ...] = tuple(SHAPE_GEOMETRY)
CLASSNAMES: tuple[str, ...] = SHAPES
# Nuisances: drawn at random, never named in a caption.
COLOURS = {
    "red": (190, 30, 30),
    "green": (30, 130, 50),
    "blue": (30, 50, 190),
    "purple": (110, 40, 130),
    "brown": (120, 70, 20),
    "black": (20, 20, 20),
}
BACKGROUNDS = {
    "white": (245, 245, 245),
    "yellow": (240, 225, 120),
    "cyan": (150, 225, 230),
    "pink": (245, 185, 200),
    "light gray": (200, 200, 200),
    "light green": (185, 235, 165),
}
SIZE_RANGE = (0.5, 0.8)  # shape extent as a fraction of the image side
# largest offset of the shape's centre from the image centre, in image sides (less where a
# large shape would leave the image: a silhouette is always whole)
SHIFT = 0.12
# Captions and zero-shot templates are the same patterns: what pairs an image with its caption
# is the shape name alone.
TEMPLATES: tuple[str, ...] = (
    "the {}.",
    "a picture of the {}.",
    "a drawing of the {}.",
    "the {} shape.",
    "an image of the {}.",
)
_SUPERSAMPLE = 4  # draw larger, then downscale: anti-aliased edges


@dataclass
class SyntheticDataset:
    """Where the shards went and what a zero-shot evaluation needs: ``classnames[label]`` and
    ``templates`` (``str.format`` with the class name). ``val`` is empty without a
    validation split. ``clip_benchmark``: the folder holding the held-out split in
    clip_benchmark's layout (its ``--dataset_root``; empty when not written)."""

    train: str
    heldout: str
    classnames: list[str]
    templates: list[str]
    n_train: int
    n_heldout: int
    val: str = ""
    n_val: int = 0
    clip_benchmark: str = ""


def shape_mask(shape: str, image_size: int) -> Image.Image:
    """The silhouette of ``shape`` filling an ``image_size`` square (mode ``L``, 255 inside):
    the reference the tests compare rendered samples against."""
    big = image_size * _SUPERSAMPLE
    mask = Image.new("L", (big, big), 0)
    _draw(ImageDraw.Draw(mask), shape, big / 2, big / 2, big / 2, 255, 0)
    return mask.resize((image_size, image_size), Image.Resampling.BOX)


def _draw(
    draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill, hole
) -> None:
    filled, holes = SHAPE_GEOMETRY[shape]
    for polygons, colour in ((filled, fill), (holes, hole)):
        for polygon in polygons:
            draw.polygon([(cx + r * x, cy + r * y) for x, y in polygon], fill=colour)


def render_sample(rng: random.Random, label: int, image_size: int) -> tuple[Image.Image, str, dict]:
    """One image of class ``label`` with random colour, size, position and background;
    returns (RGB image ``image_size`` square, caption, json metadata)."""
    shape = SHAPES[label]
    colour, bg = rng.choice(list(COLOURS)), rng.choice(list(BACKGROUNDS))
    extent = rng.uniform(*SIZE_RANGE)
    big = image_size * _SUPERSAMPLE
    r = extent * big / 2
    shift = min(SHIFT, (1 - extent) / 2)
    cx, cy = ((0.5 + rng.uniform(-shift, shift)) * big for _ in range(2))

    def jitter(rgb: tuple[int, int, int], amount: int) -> tuple[int, int, int]:
        return tuple(min(255, max(0, v + rng.randint(-amount, amount))) for v in rgb)  # type: ignore[return-value]

    background = jitter(BACKGROUNDS[bg], 12)
    image = Image.new("RGB", (big, big), background)
    _draw(ImageDraw.Draw(image), shape, cx, cy, r, jitter(COLOURS[colour], 20), background)
    image = image.resize((image_size, image_size), Image.Resampling.BOX)
    caption = rng.choice(TEMPLATES).format(shape)
    meta = {
        "label": label,
        "classname": CLASSNAMES[label],
        "shape": shape,
        "colour": colour,
        "background": bg,
        "size": round(extent, 3),
        "centre": [round(cx / big, 3), round(cy / big, 3)],
    }
    return image, caption, meta


def write_split(
    out_dir: str | Path,
    split: str,
    n: int,
    image_size: int,
    shard_size: int,
    seed: int,
    clip_benchmark: ClipBenchmarkWriter | None = None,
) -> str:
    """``n`` samples (classes balanced, order shuffled) as ``{split}-NNNNNN.tar`` shards from
    the random stream of ``(seed, split)``, each image also given to ``clip_benchmark`` when
    set (the same bytes, under the same key); returns the shards' brace pattern."""
    rng = random.Random(f"streamfit-synthetic/{seed}/{split}")
    labels = [i % len(CLASSNAMES) for i in range(n)]
    rng.shuffle(labels)
    with ShardWriter(out_dir, prefix=split, shard_size=shard_size) as writer:
        for i, label in enumerate(labels):
            image, caption, meta = render_sample(rng, label, image_size)
            out = io.BytesIO()
            image.save(out, format="PNG")
            png, key = out.getvalue(), f"{split}{i:07d}"
            writer.write(
                key, {"png": png, "txt": caption.encode(), "json": json.dumps(meta).encode()}
            )
            if clip_benchmark is not None:
                clip_benchmark.write(key, "png", png, label)
    return shard_pattern(writer.paths)


def write_synthetic_dataset(
    out_dir: str | Path,
    n_train: int = 2000,
    n_heldout: int = 400,
    image_size: int = 64,
    shard_size: int = 500,
    seed: int = 0,
    n_val: int = 0,
    clip_benchmark: bool = True,
) -> SyntheticDataset:
    """Write ``train-*.tar``, ``heldout-*.tar``, with ``n_val`` > 0 ``val-*.tar`` (for choosing
    epochs and settings, so the held-out split only measures), and ``classes.json`` (class
    names and zero-shot templates) into ``out_dir``; with ``clip_benchmark`` the held-out
    split also as ``clip_benchmark/test/*.tar`` in clip_benchmark's layout
    (:class:`~streamfit.data.writer.ClipBenchmarkWriter`)."""
    if n_train < 1 or n_heldout < 1:
        raise ValueError("need at least one train and one held-out sample")
    if n_val < 0:
        raise ValueError(f"n_val must be >= 0, got {n_val}")
    out = Path(out_dir)
    # enough shards for clip_benchmark's default loader workers
    copy_shard_size = min(shard_size, -(-n_heldout // CLIP_BENCHMARK_WORKERS))
    heldout_copy = (
        ClipBenchmarkWriter(
            out / "clip_benchmark", list(CLASSNAMES), list(TEMPLATES), "test", copy_shard_size
        )
        if clip_benchmark
        else None
    )
    with heldout_copy or contextlib.nullcontext():
        dataset = SyntheticDataset(
            train=write_split(out, "train", n_train, image_size, shard_size, seed),
            heldout=write_split(
                out, "heldout", n_heldout, image_size, shard_size, seed, heldout_copy
            ),
            classnames=list(CLASSNAMES),
            templates=list(TEMPLATES),
            n_train=n_train,
            n_heldout=n_heldout,
            val=write_split(out, "val", n_val, image_size, shard_size, seed) if n_val else "",
            n_val=n_val,
            clip_benchmark=str(heldout_copy.root) if heldout_copy is not None else "",
        )
    (out / "classes.json").write_text(json.dumps(asdict(dataset), indent=2))
    return dataset
