"""A procedurally generated image-caption dataset for the offline demo and the tests: coloured
shapes of two sizes at five positions on plain backgrounds, with captions such as
"a small red triangle on a white background, at the top left".

Zero-shot classes are shape x colour (16 classes, ``{"label", "classname"}`` in each sample's
``.json``, as in the imagenet-sample shards); backgrounds never use a shape colour, so the
class is always visible. Train and held-out splits are drawn from independent streams.
"""

from __future__ import annotations

import io
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from streamfit.data.writer import ShardWriter, shard_pattern

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (235, 210, 40),
}
BACKGROUNDS = {
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    "gray": (128, 128, 128),
    "purple": (120, 50, 140),
    "orange": (240, 140, 30),
    "cyan": (60, 200, 210),
}
SIZES = {"small": 0.28, "large": 0.55}  # shape extent as a fraction of the image side
POSITIONS = {
    "in the centre": (0.5, 0.5),
    "at the top left": (0.3, 0.3),
    "at the top right": (0.7, 0.3),
    "at the bottom left": (0.3, 0.7),
    "at the bottom right": (0.7, 0.7),
}
CLASSNAMES: tuple[str, ...] = tuple(f"{c} {s}" for s in SHAPES for c in COLOURS)
TEMPLATES: tuple[str, ...] = (
    "a {}.",
    "a picture of a {}.",
    "a {} on a plain background.",
    "a small {}.",
    "a large {}.",
)
_CAPTIONS = (
    "a {size} {colour} {shape} on a {bg} background, {pos}",
    "{size} {colour} {shape}, {bg} background",
)
_SUPERSAMPLE = 4  # draw larger, then downscale: anti-aliased edges


@dataclass
class SyntheticDataset:
    """Where the shards went and what a zero-shot evaluation needs: ``classnames[label]`` and
    ``templates`` (``str.format`` with the class name)."""

    train: str
    heldout: str
    classnames: list[str]
    templates: list[str]
    n_train: int
    n_heldout: int


def label_of(shape: str, colour: str) -> int:
    return SHAPES.index(shape) * len(COLOURS) + list(COLOURS).index(colour)


def render_sample(rng: random.Random, label: int, image_size: int) -> tuple[Image.Image, str, dict]:
    """One image of class ``label`` with random size, position, background and colour
    jitter; returns (RGB image ``image_size`` square, caption, json metadata)."""
    shape, colour = SHAPES[label // len(COLOURS)], list(COLOURS)[label % len(COLOURS)]
    size, bg, pos = (
        rng.choice(list(SIZES)),
        rng.choice(list(BACKGROUNDS)),
        rng.choice(list(POSITIONS)),
    )
    big = image_size * _SUPERSAMPLE

    def jitter(rgb: tuple[int, int, int], amount: int) -> tuple[int, int, int]:
        return tuple(min(255, max(0, v + rng.randint(-amount, amount))) for v in rgb)  # type: ignore[return-value]

    image = Image.new("RGB", (big, big), jitter(BACKGROUNDS[bg], 12))
    draw = ImageDraw.Draw(image)
    fill = jitter(COLOURS[colour], 20)
    cx = (POSITIONS[pos][0] + rng.uniform(-0.05, 0.05)) * big
    cy = (POSITIONS[pos][1] + rng.uniform(-0.05, 0.05)) * big
    r = SIZES[size] * big / 2 * rng.uniform(0.9, 1.1)
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        draw.rectangle((cx - r * 0.85, cy - r * 0.85, cx + r * 0.85, cy + r * 0.85), fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r * 0.8), (cx + r, cy + r * 0.8)], fill=fill)
    else:
        w = r * 0.35
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fill)
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fill)
    image = image.resize((image_size, image_size), Image.Resampling.BOX)
    caption = rng.choice(_CAPTIONS).format(size=size, colour=colour, shape=shape, bg=bg, pos=pos)
    meta = {
        "label": label,
        "classname": CLASSNAMES[label],
        "shape": shape,
        "colour": colour,
        "size": size,
        "background": bg,
        "position": pos,
    }
    return image, caption, meta


def write_split(
    out_dir: str | Path, split: str, n: int, image_size: int, shard_size: int, seed: int
) -> str:
    """``n`` samples (classes balanced, order shuffled) as ``{split}-NNNNNN.tar`` shards;
    returns their brace pattern."""
    rng = random.Random(f"streamfit-synthetic/{seed}/{split}")
    labels = [i % len(CLASSNAMES) for i in range(n)]
    rng.shuffle(labels)
    with ShardWriter(out_dir, prefix=split, shard_size=shard_size) as writer:
        for i, label in enumerate(labels):
            image, caption, meta = render_sample(rng, label, image_size)
            png = io.BytesIO()
            image.save(png, format="PNG")
            writer.write(
                f"{split}{i:07d}",
                {"png": png.getvalue(), "txt": caption.encode(), "json": json.dumps(meta).encode()},
            )
    return shard_pattern(writer.paths)


def write_synthetic_dataset(
    out_dir: str | Path,
    n_train: int = 2000,
    n_heldout: int = 400,
    image_size: int = 64,
    shard_size: int = 500,
    seed: int = 0,
) -> SyntheticDataset:
    """Write ``train-*.tar`` and ``heldout-*.tar`` shards and ``classes.json`` (class names and
    zero-shot templates) into ``out_dir``."""
    if n_train < 1 or n_heldout < 1:
        raise ValueError("need at least one train and one held-out sample")
    out = Path(out_dir)
    dataset = SyntheticDataset(
        train=write_split(out, "train", n_train, image_size, shard_size, seed),
        heldout=write_split(out, "heldout", n_heldout, image_size, shard_size, seed),
        classnames=list(CLASSNAMES),
        templates=list(TEMPLATES),
        n_train=n_train,
        n_heldout=n_heldout,
    )
    (out / "classes.json").write_text(json.dumps(asdict(dataset), indent=2))
    return dataset
