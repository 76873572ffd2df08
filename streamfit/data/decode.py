"""Turning a raw shard sample into a training sample: caption and metadata parsing, image
decode + resize + centre crop (uint8, fixed size), or the splats of a splat shard.

Runs in the graph's parallel decode workers (threads or processes), so it touches no shared
state: a sample that cannot be used comes back as a :class:`Skipped` record, counted and
logged by the node that receives it.
"""

from __future__ import annotations

import hashlib
import io
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from streamfit import codec
from streamfit.data.cache import CacheProbe
from streamfit.data.shards import (
    CAPTION_EXT,
    IMAGE_EXTS,
    JSON_EXT,
    SPLATS_EXT,
    RawSample,
    parse_caption,
    parse_meta,
)

# Part of the cache's settings hash: bump when decoding changes the pixels handed to the fitter.
DECODE_VERSION = 2


@dataclass
class Decoded:
    """A usable sample. ``image``: ``[S, S, 3]`` uint8, or None for a splat-shard sample and
    for a sample the cache already holds (then ``encoded`` keeps the image bytes, should the
    entry be evicted before the fit node reads it); ``splats``: the splat blob of a splat shard
    (:mod:`streamfit.codec`, checked to decode; else None); ``cache_id``: the sample's id in the splat cache (a hex digest
    of the encoded image or splat bytes, or the sample key)."""

    key: str
    shard: str
    caption: str
    meta: dict[str, Any]
    image: np.ndarray | None
    splats: bytes | None
    cache_id: str
    encoded: bytes | None = None


@dataclass
class Skipped:
    """A sample dropped during decoding, with the reason it was dropped."""

    key: str
    shard: str
    reason: str
    detail: str = ""


@dataclass(frozen=True)
class Decoder:
    """Picklable decode function (``image_size`` square output; images above
    ``max_pixels`` are refused from their header, before any pixel is decoded).

    With a ``probe`` of the splat cache and no need for RGB, images whose splats are cached
    are not decoded at all: a cached epoch then costs reading and hashing, not JPEG decoding.
    """

    image_size: int
    max_pixels: int
    need_image: bool = False
    cache_key: str = "content"  # content | key
    probe: CacheProbe | None = None

    def __call__(self, raw: RawSample) -> Decoded | Skipped:
        try:
            caption = parse_caption(raw.members[CAPTION_EXT])
        except ValueError as err:
            return Skipped(raw.key, raw.shard, "bad_caption", str(err))
        try:
            meta = parse_meta(raw.members[JSON_EXT]) if JSON_EXT in raw.members else {}
        except ValueError as err:
            return Skipped(raw.key, raw.shard, "bad_json", str(err))

        splats = raw.members.get(SPLATS_EXT)
        if splats is not None:
            problem = self._check_splats(splats)
            if problem:
                return Skipped(raw.key, raw.shard, "bad_splats", problem)
        image_ext = next((e for e in IMAGE_EXTS if e in raw.members), None)
        if image_ext is None and (self.need_image or splats is None):
            return Skipped(raw.key, raw.shard, "no_image", "RGB requested but the sample has none")
        encoded = raw.members[image_ext] if image_ext is not None else b""
        sample_id = cache_id(raw.key, splats if splats is not None else encoded, self.cache_key)
        sample = Decoded(raw.key, raw.shard, caption, meta, None, splats, sample_id)
        if splats is not None and not self.need_image:
            return sample
        if not self.need_image and self.probe is not None and sample_id in self.probe:
            sample.encoded = encoded
            return sample
        try:
            sample.image = self.decode_image(encoded)
        except (ImageTooLarge, Image.DecompressionBombError) as err:
            return Skipped(raw.key, raw.shard, "too_large", str(err))
        except (OSError, ValueError, SyntaxError) as err:
            return Skipped(raw.key, raw.shard, "decode_error", f"{type(err).__name__}: {err}")
        return sample

    def decode_image(self, encoded: bytes) -> np.ndarray:
        """Encoded image -> ``[S, S, 3]`` uint8: shorter side resized to ``S``, centre crop."""
        return decode_image(encoded, self.image_size, self.max_pixels)

    def _check_splats(self, blob: bytes) -> str:
        """Why a splat shard's blob cannot be used ('' when it can): it must decode (so the fit
        node never meets one that does not) and be for the loader's image size (its header
        says which)."""
        try:
            splats = codec.decode(blob)
        except codec.CodecError as err:
            return str(err)
        if (splats.height, splats.width) != (self.image_size, self.image_size):
            return (
                f"splats are for a {splats.height}x{splats.width} image, "
                f"the loader makes {self.image_size}"
            )
        return ""


def cache_id(key: str, data: bytes, cache_key: str) -> str:
    """A sample's id in the splat cache: a hash of its encoded image (or splat) bytes
    (``cache_key="content"``), or its key. A key that is not UTF-8 (tar names are decoded
    with surrogate escapes) cannot be an SQLite text key as it is, so it goes in hex."""
    if cache_key == "content":
        return hashlib.blake2b(data, digest_size=16).hexdigest()
    raw = key.encode("utf-8", "surrogateescape")
    return key if raw.decode("utf-8", "replace") == key else "key:" + raw.hex()


def decode_image(encoded: bytes, size: int | None, max_pixels: int) -> np.ndarray:
    """Encoded image -> ``[S, S, 3]`` uint8 RGB: shorter side resized to ``size`` (bicubic),
    centre crop; ``size=None`` keeps the image as it is. The EXIF orientation is applied (a
    phone photo comes out upright); greyscale, palette, CMYK and RGBA images become RGB
    (alpha dropped); 16-bit and other high-depth modes are scaled to 8 bits. Raises
    :class:`ImageTooLarge` (or PIL's ``DecompressionBombError``) from the header alone, and
    ``ValueError`` naming what PIL raised for bytes that do not decode."""
    try:
        return _decode(encoded, size, max_pixels)
    except (ImageTooLarge, Image.DecompressionBombError):
        raise
    except Exception as err:  # PIL raises many types (OSError, EOFError, struct.error, ...)
        raise ValueError(f"{type(err).__name__}: {err}") from err


def _decode(encoded: bytes, size: int | None, max_pixels: int) -> np.ndarray:
    with Image.open(io.BytesIO(encoded)) as im:
        width, height = im.size
        if width < 1 or height < 1:
            raise ValueError(f"image has no pixels ({width}x{height})")
        if width * height > max_pixels:
            raise ImageTooLarge(f"{width}x{height} pixels exceeds {max_pixels}")
        orientation = exif_orientation(im)
        if size is not None:
            short = min(width, height)
            # JPEG: let libjpeg decode at a reduced scale (still >= size on the shorter side),
            # much faster than full decode + resize for large photos
            im.draft("RGB", (math.ceil(width * size / short), math.ceil(height * size / short)))
        rgb = _to_rgb(im)
    return square_pixels(rgb, size, orientation)


def exif_orientation(im: Image.Image) -> int:
    """The EXIF orientation tag of ``im`` (1, upright, when absent or unreadable)."""
    try:
        return int(im.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:  # a damaged EXIF block costs the orientation, not the image
        return 1


def square_pixels(rgb: Image.Image, size: int | None, orientation: int = 1) -> np.ndarray:
    """A decoded RGB image -> ``[S, S, 3]`` uint8: the centre square of the shorter side,
    resized to ``size`` (bicubic), then turned upright by its EXIF ``orientation``;
    ``size=None`` keeps the image as it is. The decoder's last step, and the whole of it for
    callers handed a PIL image (clip_benchmark's datasets)."""
    if size is not None:
        width, height = rgb.size
        short = min(width, height)
        left, top = (width - short) / 2, (height - short) / 2
        rgb = rgb.resize(
            (size, size), Image.Resampling.BICUBIC, box=(left, top, left + short, top + short)
        )
    if orientation in _ORIENT:
        # after the centre crop: cropping the centre square commutes with these flips and
        # quarter turns, and turning S x S pixels is cheaper than the whole photo
        rgb = rgb.transpose(_ORIENT[orientation])
    return np.asarray(rgb, dtype=np.uint8)


def _to_rgb(im: Image.Image) -> Image.Image:
    """8-bit RGB of any PIL mode. ``convert("RGB")`` clips 16-bit and float values at 255
    (a 16-bit greyscale PNG comes out almost white), so those are scaled first: 16-bit modes
    by 1/257, 32-bit integers by their apparent depth (8 or 16 bits, else their maximum),
    floats from 0..1 (else clipped to 0..255)."""
    if im.mode.startswith("I") or im.mode == "F":
        values = np.asarray(im, dtype=np.float64)
        top = float(values.max(initial=0.0))
        if im.mode.startswith("I;16"):
            scale = 255.0 / 65535.0
        elif im.mode == "F":
            scale = 255.0 if top <= 1.0 else 1.0
        else:
            scale = 1.0 if top <= 255 else 255.0 / (65535.0 if top <= 65535 else top)
        grey = np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    return im.convert("RGB")


EXIF_ORIENTATION = 0x0112
_ORIENT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class ImageTooLarge(ValueError):
    """An image whose header announces more pixels than allowed."""
