"""Splat codecs: the bytes one image's splats are stored and sent as.

Three formats, all self-describing blobs that :func:`decode` reads back:

========== ============ ====================================================================
format     bytes        what it is for
========== ============ ====================================================================
``fp16``   16 a splat   the 8 parameters as float16: lossless against the float16 the
                        project always stored
``q64``    8 a splat    fixed rate, the splat cache's and splat shards' default: every
                        quantity uniformly quantised between its per-image range (stored,
                        float16) and bit-packed into one 64-bit word; a batch decodes in a
                        few vectorised torch ops on any device
``compact`` ~5.5 a      transmission: splats in a canonical (raster) order, positions
            splat       delta-coded, every attribute entropy-coded with an adaptive
                        per-image model; at most 6 bytes a splat (rate control coarsens the
                        quantisation of an image that would not fit)
========== ============ ====================================================================

Quantities. A splat's covariance is coded as ``(log sx, rho, log sy)``: the standard
deviations along x and y and their correlation, an exact reparametrisation of the Cholesky
factor (``sx = l11``, ``sy = |(l21, l22)|``, ``rho = l21 / sy``) whose ranges do not depend on
the image size and whose ``rho`` is bounded by 1.

Colours are re-solved after the geometry is quantised. For fixed positions and covariances the
image is linear in the colours, so given the target image (``target`` and a fitting
``backend``) the encoder replaces the colours by the exact least-squares solution for the
*quantised* geometry (:func:`streamfit.fit.colour.exact_colours`) before quantising them: the
colour solve absorbs most of the geometry's quantisation error (BENCHMARKS.md). Without a
target the colours are quantised as they are.

Blob layout (little-endian)::

    0   2  magic b"GS"
    2   1  version << 4 | format id (0 fp16, 1 q64, 2 compact)
    3   2  image height, pixels
    5   2  image width, pixels
    7   2  splat count n
    9   .. payload, the format's own (see _FP16, _Q64, _Compact below)
    -4  4  CRC-32 of every byte before it

Limits: image sides 1..:data:`MAX_SIDE`, 0..:data:`MAX_SPLATS` splats an image; any other
size is a clear ``ValueError`` when encoding. Bytes that are not such a blob (foreign,
truncated, corrupted, a newer version) raise :class:`CodecError`, never garbage splats.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import constriction
import numpy as np
import torch

from streamfit.splats import PARAMS_PER_SPLAT, Splats, unpack_params

if TYPE_CHECKING:
    from streamfit.fit import FitBackend

FORMATS: tuple[str, ...] = ("fp16", "q64", "compact")
# formats the splat cache and splat shards may store: fixed rate, batch-decodable
STORAGE_FORMATS: tuple[str, ...] = ("q64", "fp16")
DEFAULT_FORMAT = "q64"

MAGIC = b"GS"
VERSION = 1
MAX_SIDE = 16384  # float16 (ranges, fp16 positions) is useless beyond this anyway
MAX_SPLATS = 65535
DEFAULT_RIDGE = 1e-3  # the colour solve's regularisation, as FitConfig.colour_ridge

_HEADER = struct.Struct("<2sBHHH")
_CRC = struct.Struct("<I")
_FORMAT_IDS = {name: i for i, name in enumerate(FORMATS)}
_RHO_MAX = 0.9999  # |rho| = 1 is a degenerate (flat) ellipse: kept just inside


class CodecError(ValueError):
    """Bytes that do not decode as a splat blob; the message says why."""


@dataclass(frozen=True)
class BlobInfo:
    """What a blob's header says: its format, the image size its splats refer to, how many
    splats it holds and its size in bytes."""

    format: str
    height: int
    width: int
    count: int
    nbytes: int


# ---------------------------------------------------------------------------- quantities
def shape_quantities(params: torch.Tensor) -> torch.Tensor:
    """``[..., 8]`` parameters -> ``[..., 5]`` ``(x, y, log sx, rho, log sy)``."""
    l22 = params[..., 4].exp()
    sy = torch.hypot(params[..., 3], l22)
    rho = (params[..., 3] / sy).clamp(-_RHO_MAX, _RHO_MAX)
    return torch.stack([params[..., 0], params[..., 1], params[..., 2], rho, sy.log()], -1)


def params_from_quantities(shape: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`shape_quantities`: ``[..., 5]`` shape + ``[..., 3]`` colour ->
    ``[..., 8]`` parameters."""
    rho = shape[..., 3].clamp(-_RHO_MAX, _RHO_MAX)
    log_sy = shape[..., 4]
    l21 = rho * log_sy.exp()
    log_l22 = log_sy + 0.5 * torch.log1p(-rho * rho)
    return torch.cat(
        [shape[..., :3], l21[..., None], log_l22[..., None], colour], dim=-1
    ).contiguous()


# ---------------------------------------------------------------------------- public API
@dataclass
class Quantised:
    """Splats quantised by one format.

    ``splats``: the values :func:`decode` of the blobs returns (on the input's device; for
    ``compact`` each image's splats are in the canonical order). ``ok [B]`` bool, on the same
    device (no host sync for ``fp16`` and ``q64``): False for an image the format cannot hold
    (non-finite parameters, or values beyond its float16 ranges); its row of ``splats`` is
    empty and it has no blob. :meth:`to_bytes` makes the blobs (host work, which can run off a
    training step's critical path).
    """

    format: str
    splats: Splats
    ok: torch.Tensor
    _codes: object

    def to_bytes(self) -> list[bytes | None]:
        """One blob per image (None where ``ok`` is False)."""
        return _CODECS[self.format].to_bytes(self)


def quantise(
    fmt: str,
    splats: Splats,
    target: torch.Tensor | None = None,
    backend: FitBackend | None = None,
    ridge: float = DEFAULT_RIDGE,
    max_bytes: int | None = None,
    level: int | None = None,
) -> Quantised:
    """Quantise a batch of splat sets with format ``fmt`` (one of :data:`FORMATS`).

    ``target``: ``[B, H, W, 3]`` float 0..1, the images the splats were fitted to: colours are
    re-solved for the quantised geometry (``backend`` builds the colour system; default the
    ``auto`` backend on the splats' device).

    ``compact`` only: ``max_bytes`` is one blob's budget (default :data:`COMPACT_BYTES_PER_SPLAT`
    a splat, at least 64) and each image is coded at the finest level whose blob fits it (the
    search starts at :data:`COMPACT_DEFAULT_LEVEL`); ``level`` fixes the level instead (then a
    blob over an explicit ``max_bytes`` is a ``ValueError``).
    """
    if fmt not in _CODECS:
        raise ValueError(f"unknown splat format {fmt!r}; choose one of {', '.join(FORMATS)}")
    check_size(splats.height, splats.width, splats.params.shape[1])
    if target is not None:
        expected = (len(splats), splats.height, splats.width, 3)
        if tuple(target.shape) != expected:
            raise ValueError(f"target must be {list(expected)}, got {list(target.shape)}")
        if backend is None:
            from streamfit.fit import get_backend

            backend = get_backend("auto", str(splats.params.device))
    if fmt != "compact" and (max_bytes is not None or level is not None):
        raise ValueError("max_bytes and level apply to the compact format only")
    refit = _Refit(target, backend, ridge)
    if fmt == "compact":
        return _Compact.quantise(splats, refit, max_bytes, level)
    return _CODECS[fmt].quantise(splats, refit)


def encode(
    fmt: str,
    splats: Splats,
    target: torch.Tensor | None = None,
    backend: FitBackend | None = None,
    ridge: float = DEFAULT_RIDGE,
    **compact_options: int | None,
) -> list[bytes | None]:
    """``quantise(...).to_bytes()``: one blob per image (None for an image the format cannot
    hold)."""
    return quantise(fmt, splats, target, backend, ridge, **compact_options).to_bytes()


def info(blob: bytes) -> BlobInfo:
    """Read and check a blob's header, length and CRC; :class:`CodecError` if it is not a
    whole splat blob."""
    data = bytes(blob)
    if len(data) < _HEADER.size + _CRC.size:
        raise CodecError(f"{len(data)} bytes is too short for a splat blob")
    magic, tag, height, width, count = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise CodecError(
            f"not a splat blob (starts {data[:2]!r}, not {MAGIC!r}); raw float16 splats from "
            "before the codec must be fitted or exported again"
        )
    version, format_id = tag >> 4, tag & 15
    if version != VERSION:
        raise CodecError(f"splat blob version {version}; this code reads version {VERSION}")
    if format_id >= len(FORMATS):
        raise CodecError(f"unknown splat format id {format_id}")
    (crc,) = _CRC.unpack_from(data, len(data) - _CRC.size)
    if zlib.crc32(memoryview(data)[: -_CRC.size]) != crc:
        raise CodecError(f"splat blob of {len(data)} bytes fails its CRC (truncated or damaged)")
    if not (1 <= height <= MAX_SIDE and 1 <= width <= MAX_SIDE):
        raise CodecError(f"splat blob for a {height}x{width} image is outside the limits")
    fmt = FORMATS[format_id]
    expected = _CODECS[fmt].fixed_size(count)
    if expected is not None and len(data) != expected:
        raise CodecError(f"{fmt} blob of {count} splats must be {expected} bytes, got {len(data)}")
    return BlobInfo(fmt, height, width, count, len(data))


def decode(blob: bytes, device: torch.device | str | None = None) -> Splats:
    """One blob -> a batch of one image's splats (float32, on ``device``, default CPU)."""
    return decode_batch([blob], device)


def decode_batch(blobs: Sequence[bytes], device: torch.device | str | None = None) -> Splats:
    """Blobs of images of one size -> :class:`Splats` ``[B, N, 8]`` on ``device``.

    ``q64`` blobs go to the device packed (8 bytes a splat) and are unpacked there in one
    vectorised pass; other formats are decoded on the host. Raises :class:`CodecError` for any
    blob that does not decode, ``ValueError`` for blobs of different image sizes.
    """
    device = torch.device(device or "cpu")
    infos = [info(b) for b in blobs]
    sizes = {(i.height, i.width) for i in infos}
    if len(sizes) > 1:
        raise ValueError(f"blobs of different image sizes in one batch: {sorted(sizes)}")
    if not infos:
        raise ValueError("decode_batch needs at least one blob")
    height, width = sizes.pop()
    if all(i.format == "q64" for i in infos):
        return _Q64.decode_batch(blobs, infos, height, width, device)
    sets = [_CODECS[i.format].decode_one(bytes(b), i) for b, i in zip(blobs, infos, strict=True)]
    return Splats.from_list(sets, height, width).to(device)


def check_size(height: int, width: int, count: int) -> None:
    """``ValueError`` unless an image of ``height x width`` with ``count`` splats is within
    the codecs' limits."""
    if not (1 <= height <= MAX_SIDE and 1 <= width <= MAX_SIDE):
        raise ValueError(
            f"splat codecs take images of 1..{MAX_SIDE} pixels a side, got {height}x{width}"
        )
    if not 0 <= count <= MAX_SPLATS:
        raise ValueError(f"splat codecs take 0..{MAX_SPLATS} splats an image, got {count}")


def stored_size(fmt: str, count: int) -> int:
    """Bytes of a blob of ``count`` splats in a fixed-rate format (header and CRC included)."""
    if fmt not in STORAGE_FORMATS:
        raise ValueError(f"{fmt!r} has no fixed size; fixed-rate formats: {STORAGE_FORMATS}")
    return _CODECS[fmt].fixed_size(count)


# ---------------------------------------------------------------------------- helpers
def _frame(fmt: str, height: int, width: int, count: int, payload: bytes) -> bytes:
    head = _HEADER.pack(MAGIC, VERSION << 4 | _FORMAT_IDS[fmt], height, width, count)
    body = head + payload
    return body + _CRC.pack(zlib.crc32(body))


def _payload(blob: bytes) -> memoryview:
    return memoryview(blob)[_HEADER.size : -_CRC.size]


def _valid_rows(splats: Splats) -> torch.Tensor:
    """``[B]`` bool: images whose valid splats are all finite."""
    finite = torch.isfinite(splats.params).all(-1) | ~splats.mask
    return finite.all(1)


@dataclass
class _Refit:
    """What the colours are re-solved against after the geometry is quantised: ``target``
    ``[B, H, W, 3]`` (None: the colours are kept), the ``backend`` building the systems and
    the solve's relative ``ridge``."""

    target: torch.Tensor | None
    backend: FitBackend | None
    ridge: float

    def rows(self, index: torch.Tensor) -> _Refit:
        """The same for the images at ``index``."""
        target = None if self.target is None else self.target[index.to(self.target.device)]
        return _Refit(target, self.backend, self.ridge)


def _resolve_colours(params: torch.Tensor, mask: torch.Tensor, refit: _Refit) -> torch.Tensor:
    """``params`` with the colours re-solved for ``refit.target`` (a copy; unchanged without
    one)."""
    if refit.target is None:
        return params
    from streamfit.fit.colour import ColourSolve, exact_colours

    backend = refit.backend
    device = backend.device
    solved = params.to(device, torch.float32).contiguous().clone()
    # the backend's own solver: conjugate gradients on a GPU, no host sync there
    how = ColourSolve(refit.ridge, backend.colour_solver)
    exact_colours(backend, solved, mask.to(device), refit.target.to(device, torch.float32), how)
    return solved.to(params.device)


# ---------------------------------------------------------------------------- fp16
class _FP16:
    """Payload: ``n x 8`` little-endian float16 (:func:`streamfit.splats.pack_params`)."""

    @staticmethod
    def fixed_size(count: int) -> int:
        return _HEADER.size + 16 * count + _CRC.size

    @staticmethod
    def quantise(splats: Splats, refit: _Refit) -> Quantised:
        del refit  # float16 keeps the fitted colours as they are
        rounded = splats.params.to(torch.float16)
        ok = _valid_rows(splats) & (torch.isfinite(rounded).all(-1) | ~splats.mask).all(1)
        mask = splats.mask & ok[:, None]
        params = torch.where(mask[..., None], rounded.float(), torch.zeros_like(splats.params))
        return Quantised("fp16", Splats(params, mask, splats.height, splats.width), ok, None)

    @staticmethod
    def to_bytes(q: Quantised) -> list[bytes | None]:
        s, ok = q.splats.to("cpu"), q.ok.tolist()  # one copy to the host for the batch
        return [
            _frame("fp16", s.height, s.width, int(s.mask[b].sum()), s.pack(b)) if ok[b] else None
            for b in range(len(s))
        ]

    @staticmethod
    def decode_one(blob: bytes, meta: BlobInfo) -> torch.Tensor:
        params = unpack_params(bytes(_payload(blob)))
        if not torch.isfinite(params).all():
            raise CodecError("fp16 splat blob holds non-finite parameters")
        return params


# ---------------------------------------------------------------------------- q64
Q64_FIELDS: tuple[tuple[str, int], ...] = (
    ("x", 11),
    ("y", 11),
    ("log_sx", 7),
    ("rho", 7),
    ("log_sy", 7),
    ("r", 7),
    ("g", 7),
    ("b", 7),
)
_Q64_WIDTHS = tuple(w for _, w in Q64_FIELDS)
_Q64_OFFSETS = tuple(sum(_Q64_WIDTHS[:i]) for i in range(len(_Q64_WIDTHS)))
assert sum(_Q64_WIDTHS) == 64
_F16_MAX = 65504.0
_RANGE_SLACK = 2.0**-16  # relative; float16 steps are 2^-11..2^-10 of a value


def _masked_range(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[B, N, F]`` -> ``[B, F, 2]`` per-image ``(lo, hi)`` over the valid splats: float16
    values rounded *inwards* from the min and max (0 for an image without splats).

    Inwards, so the extreme values clamp onto ``lo`` and ``hi`` and take the extreme codes:
    decoding gives back exactly ``lo`` and ``hi``, and encoding decoded splats again finds the
    same ranges and the same codes. The slack ``_RANGE_SLACK`` absorbs the float32 noise of
    the shape quantities' round trip; what is clamped off is below one float16 step.
    """
    inf = torch.tensor(float("inf"), device=values.device)
    lo = torch.where(mask[..., None], values, inf).amin(1)
    hi = torch.where(mask[..., None], values, -inf).amax(1)
    empty = ~mask.any(1)[:, None]
    lo = torch.where(empty, torch.zeros_like(lo), lo)
    hi = torch.where(empty, torch.zeros_like(hi), hi)
    lo16 = _f16_round(lo - _RANGE_SLACK * lo.abs(), up=True)
    hi16 = _f16_round(hi + _RANGE_SLACK * hi.abs(), up=False)
    middle = ((lo + hi) / 2).to(torch.float16).float()
    crossed = lo16 > hi16  # a range narrower than one float16 step: one value
    return torch.stack([torch.where(crossed, middle, lo16), torch.where(crossed, middle, hi16)], -1)


def _f16_round(values: torch.Tensor, up: bool) -> torch.Tensor:
    """The float16 value nearest ``values`` (float32, within float16's range) in the direction
    ``up`` (ceiling) or down (floor), as float32. Steps through the bit patterns, so it works
    on every device."""
    half = values.clamp(-_F16_MAX, _F16_MAX).to(torch.float16)
    wrong = half.float() < values if up else half.float() > values
    bits = half.view(torch.int16).to(torch.int32)
    zero = half == 0
    positive = half > 0
    if up:  # towards +inf: larger magnitude when positive, smaller when negative
        stepped = torch.where(
            zero, torch.ones_like(bits), torch.where(positive, bits + 1, bits - 1)
        )
    else:
        stepped = torch.where(
            zero, torch.full_like(bits, -32767), torch.where(positive, bits - 1, bits + 1)
        )
    stepped = stepped.to(torch.int16).view(torch.float16)
    return torch.where(wrong, stepped, half).float()


def _uniform_codes(values: torch.Tensor, ranges: torch.Tensor, widths: Sequence[int]):
    """``[B, N, F]`` values, ``[B, F, 2]`` ranges -> ``[B, N, F]`` int64 codes in
    ``0..2^w-1`` (values outside a range are clamped to it)."""
    levels = torch.tensor([(1 << w) - 1 for w in widths], device=values.device)
    lo, hi = ranges[..., 0][:, None, :], ranges[..., 1][:, None, :]
    span = hi - lo
    unit = torch.where(span > 0, (values - lo) / torch.where(span > 0, span, 1.0), 0.0)
    return torch.round(unit.clamp(0.0, 1.0) * levels).to(torch.int64)


def _uniform_values(codes: torch.Tensor, ranges: torch.Tensor, widths: Sequence[int]):
    """Inverse of :func:`_uniform_codes`: ``lerp(lo, hi, code / (2^w - 1))``."""
    levels = torch.tensor([(1 << w) - 1 for w in widths], device=codes.device)
    lo, hi = ranges[..., 0][:, None, :], ranges[..., 1][:, None, :]
    return torch.lerp(lo, hi, codes.to(torch.float32) / levels)


class _Q64:
    """Payload: 8 ranges ``(lo, hi)`` as float16 (32 bytes, the quantities in
    :data:`Q64_FIELDS` order), then ``n`` little-endian 64-bit words, each quantity a
    ``w``-bit uniform code from bit :data:`_Q64_OFFSETS` up."""

    RANGE_BYTES = 8 * 2 * 2

    @staticmethod
    def fixed_size(count: int) -> int:
        return _HEADER.size + _Q64.RANGE_BYTES + 8 * count + _CRC.size

    @staticmethod
    def quantise(splats: Splats, refit: _Refit) -> Quantised:
        params, mask = splats.params.float(), splats.mask
        shape = shape_quantities(params)
        ok = _valid_rows(splats) & _fits_f16(shape, mask)
        mask = mask & ok[:, None]
        params = torch.where(mask[..., None], params, torch.zeros_like(params))
        shape = torch.where(mask[..., None], shape, torch.zeros_like(shape))
        geo_ranges = _masked_range(shape, mask)
        geo_codes = _uniform_codes(shape, geo_ranges, _Q64_WIDTHS[:5])
        geometry = _uniform_values(geo_codes, geo_ranges, _Q64_WIDTHS[:5])
        solved = _resolve_colours(params_from_quantities(geometry, params[..., 5:]), mask, refit)
        colour = torch.where(mask[..., None], solved[..., 5:], torch.zeros_like(solved[..., 5:]))
        ok &= _fits_f16(colour, mask)
        mask = mask & ok[:, None]
        col_ranges = _masked_range(colour, mask)
        col_codes = _uniform_codes(colour, col_ranges, _Q64_WIDTHS[5:])
        codes = torch.cat([geo_codes, col_codes], -1) * mask[..., None]
        ranges = torch.cat([geo_ranges, col_ranges], 1)
        values = _Q64.values(codes, ranges, mask)
        return Quantised(
            "q64", Splats(values, mask, splats.height, splats.width), ok, (codes, ranges)
        )

    @staticmethod
    def values(codes: torch.Tensor, ranges: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``[B, N, 8]`` codes + ``[B, 8, 2]`` ranges -> ``[B, N, 8]`` parameters (zero rows
        where ``mask`` is False)."""
        quantities = _uniform_values(codes, ranges, _Q64_WIDTHS)
        params = params_from_quantities(quantities[..., :5], quantities[..., 5:])
        return torch.where(mask[..., None], params, torch.zeros_like(params))

    @staticmethod
    def to_bytes(q: Quantised) -> list[bytes | None]:
        codes, ranges = q._codes  # type: ignore[misc]
        words = _pack_words(codes).cpu().numpy()
        ranges16 = ranges.cpu().numpy().astype("<f2")
        mask = q.splats.mask.cpu().numpy()
        s, ok = q.splats, q.ok.tolist()
        return [
            _frame(
                "q64",
                s.height,
                s.width,
                int(mask[b].sum()),
                ranges16[b].tobytes() + words[b][mask[b]].tobytes(),
            )
            if ok[b]
            else None
            for b in range(len(s))
        ]

    @staticmethod
    def decode_one(blob: bytes, meta: BlobInfo) -> torch.Tensor:
        return _Q64.decode_batch([blob], [meta], meta.height, meta.width, "cpu").params[0]

    @staticmethod
    def decode_batch(
        blobs: Sequence[bytes],
        infos: Sequence[BlobInfo],
        height: int,
        width: int,
        device: torch.device | str,
    ) -> Splats:
        n_max = max(i.count for i in infos)
        packed = np.zeros((len(blobs), n_max, 8), dtype=np.uint8)
        ranges = np.zeros((len(blobs), 8, 2), dtype=np.float16)
        for b, (blob, meta) in enumerate(zip(blobs, infos, strict=True)):
            payload = _payload(bytes(blob))
            ranges[b] = np.frombuffer(payload[: _Q64.RANGE_BYTES], dtype="<f2").reshape(8, 2)
            words = np.frombuffer(payload[_Q64.RANGE_BYTES :], dtype=np.uint8)
            packed[b, : meta.count] = words.reshape(meta.count, 8)
        if not np.isfinite(ranges).all() or (ranges[..., 1] < ranges[..., 0]).any():
            raise CodecError("q64 splat blob has non-finite or inverted ranges")
        counts = torch.tensor([i.count for i in infos], device=device)
        mask = torch.arange(n_max, device=device)[None, :] < counts[:, None]
        codes = _unpack_words(torch.from_numpy(packed).to(device))
        ranges_t = torch.from_numpy(ranges.astype(np.float32)).to(device)
        return Splats(_Q64.values(codes, ranges_t, mask), mask, height, width)


def _fits_f16(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[B]`` bool: every valid value finite and within float16's range."""
    good = torch.isfinite(values) & (values.abs() <= _F16_MAX)
    return (good.all(-1) | ~mask).all(1)


def _pack_words(codes: torch.Tensor) -> torch.Tensor:
    """``[B, N, 8]`` int64 codes -> ``[B, N, 8]`` uint8: the little-endian bytes of each
    64-bit word (built as two 32-bit halves, so no int64 overflows)."""
    halves = [torch.zeros_like(codes[..., 0]) for _ in range(2)]
    for i, (offset, width) in enumerate(zip(_Q64_OFFSETS, _Q64_WIDTHS, strict=True)):
        code = codes[..., i]
        for half in (0, 1):
            lo, hi = max(offset, 32 * half), min(offset + width, 32 * half + 32)
            if lo < hi:  # the part of this field that lies in this half
                part = (code >> (lo - offset)) & ((1 << (hi - lo)) - 1)
                halves[half] = halves[half] | (part << (lo - 32 * half))
    shifts = torch.arange(0, 32, 8, device=codes.device)
    return torch.cat([(h[..., None] >> shifts) & 255 for h in halves], -1).to(torch.uint8)


def _unpack_words(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_pack_words`: ``[B, N, 8]`` uint8 -> ``[B, N, 8]`` int64 codes."""
    shifts = torch.arange(0, 32, 8, device=packed.device)
    wide = packed.to(torch.int64)
    halves = [(wide[..., 4 * h : 4 * h + 4] << shifts).sum(-1) for h in (0, 1)]
    fields = []
    for offset, width in zip(_Q64_OFFSETS, _Q64_WIDTHS, strict=True):
        code = torch.zeros_like(halves[0])
        for half in (0, 1):
            lo, hi = max(offset, 32 * half), min(offset + width, 32 * half + 32)
            if lo < hi:
                part = (halves[half] >> (lo - 32 * half)) & ((1 << (hi - lo)) - 1)
                code = code | (part << (lo - offset))
        fields.append(code)
    return torch.stack(fields, -1)


# ---------------------------------------------------------------------------- compact
COMPACT_BYTES_PER_SPLAT = 6
COMPACT_LEVELS = 32
COMPACT_DEFAULT_LEVEL = 16
# quantisation steps at level 16: position (pixels), log sx / log sy, rho, colour (an
# orthonormal opponent transform of r g b, 0..1 scale); each level finer divides them by
# 2^(1/4). Tuned on the train shards (BENCHMARKS.md).
_COMPACT_STEPS = {"position": 7 / 32, "log_scale": 0.07, "rho": 0.035, "colour": 0.014}
# rows: luminance-like (r+g+b)/sqrt(3), then two opponent axes; orthonormal, so a colour
# error keeps its size through the transform
_OPPONENT = torch.tensor(
    [
        [1 / math.sqrt(3)] * 3,
        [1 / math.sqrt(2), 0.0, -1 / math.sqrt(2)],
        [-1 / math.sqrt(6), 2 / math.sqrt(6), -1 / math.sqrt(6)],
    ]
)
# the symbol streams coded after the positions, and the model family of each
_STREAMS = ("bucket", "log_sx", "rho", "log_sy", "c0", "c1", "c2")
_LAPLACE = frozenset({"c0", "c1", "c2"})
_SUPPORT = 1 << 15  # symbols are coded on -2^15 .. 2^15 - 1
_UNIFORM_BITS = 16  # a delta's raw bits go in pieces of at most this many
_MODEL = struct.Struct("<hB")  # a stream's model: mean * 8, 16 * log2(scale / 0.25)


def compact_steps(level: int) -> dict[str, float]:
    """The quantisation steps of ``compact`` at ``level`` (0 coarsest .. 31 finest)."""
    factor = 2.0 ** ((COMPACT_DEFAULT_LEVEL - level) / 4)
    return {name: step * factor for name, step in _COMPACT_STEPS.items()}


@dataclass
class _CompactImage:
    """One image's compact codes in canonical order."""

    level: int
    grid: np.ndarray  # [n, 2] int64 position codes (x, y)
    symbols: np.ndarray  # [n, 6] int64: log_sx, rho, log_sy, c0, c1, c2
    blob: bytes


class _Compact:
    """Payload::

        level            u8
        origin x, y      zigzag varints: the smallest position codes
        columns          varint: the position grid's width, in codes
        models           7 x (mean i16, scale u8), one per stream in _STREAMS order
        range coder      uint32 words (constriction's RangeEncoder)

    Splats are sorted by their raster index on the position grid ``(y - y0) * columns + (x -
    x0)``; the index's differences (>= 0) are coded as a bit length ("bucket", entropy-coded)
    and the bits below the leading one (uniform). Every other quantity is an integer code
    ``round(q / step)`` coded with a quantised Gaussian (shape) or Laplace (colour) whose mean
    and scale are the image's own, stored in ``models``.
    """

    @staticmethod
    def fixed_size(count: int) -> None:
        return None

    @staticmethod
    def quantise(
        splats: Splats, refit: _Refit, max_bytes: int | None, level: int | None
    ) -> Quantised:
        if level is not None and not 0 <= level < COMPACT_LEVELS:
            raise ValueError(f"compact level must lie in 0..{COMPACT_LEVELS - 1}, got {level}")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
        params, mask = splats.params.float(), splats.mask
        ok = _valid_rows(splats).cpu()
        mask = mask & ok.to(mask.device)[:, None]
        counts = mask.sum(1).tolist()
        budgets = [max_bytes or _compact_budget(n) for n in counts]
        images: list[_CompactImage | None] = [None] * len(splats)
        # image -> (level to code next, direction of the search: 0 first try, +1 finer, -1 coarser)
        search = {
            b: (COMPACT_DEFAULT_LEVEL if level is None else level, 0)
            for b in range(len(splats))
            if ok[b]
        }
        while search:
            for current in sorted({lv for lv, _ in search.values()}):
                batch = [b for b, (lv, _) in search.items() if lv == current]
                index = torch.tensor(batch, device=params.device)
                coded = _Compact._code_level(
                    params[index],
                    mask[index],
                    refit.rows(index),
                    current,
                    splats.height,
                    splats.width,
                )
                for b, image in zip(batch, coded, strict=True):
                    fits = len(image.blob) <= budgets[b]
                    direction = search.pop(b)[1] or (1 if fits else -1)
                    if level is not None:  # a fixed level: no search
                        if not fits and max_bytes is not None:
                            raise ValueError(
                                f"image {b}: compact blob of {len(image.blob)} bytes at level "
                                f"{level}, over max_bytes={max_bytes}"
                            )
                        images[b] = image
                    elif fits:
                        images[b] = image  # finer than any fitting level tried before
                        if direction == 1 and current + 1 < COMPACT_LEVELS:
                            search[b] = (current + 1, 1)
                    elif direction == -1:
                        if current == 0:
                            raise ValueError(
                                f"image {b}: compact blob of {len(image.blob)} bytes even at "
                                f"the coarsest level, over the budget of {budgets[b]}"
                            )
                        search[b] = (current - 1, -1)
        sets = [
            _Compact.values(im.grid, im.symbols, im.level) if im is not None else torch.zeros(0, 8)
            for im in images
        ]
        out = Splats.from_list(sets, splats.height, splats.width).to(splats.params.device)
        if out.params.shape[1] < splats.params.shape[1]:  # keep the input's padded width
            pad = splats.params.shape[1] - out.params.shape[1]
            out = Splats(
                torch.nn.functional.pad(out.params, (0, 0, 0, pad)),
                torch.nn.functional.pad(out.mask, (0, pad)),
                out.height,
                out.width,
            )
        return Quantised("compact", out, ok, images)

    @staticmethod
    def _code_level(
        params: torch.Tensor,
        mask: torch.Tensor,
        refit: _Refit,
        level: int,
        height: int,
        width: int,
    ) -> list[_CompactImage]:
        """Quantise the geometry at ``level``, re-solve the colours, quantise them and code
        every image of the batch."""
        steps = compact_steps(level)
        shape = shape_quantities(params)
        grid = torch.round(shape[..., :2] / steps["position"]).to(torch.int64)
        rho_limit = math.floor(_RHO_MAX / steps["rho"])
        geo = torch.stack(
            [
                torch.round(shape[..., 2] / steps["log_scale"]),
                torch.round(shape[..., 3] / steps["rho"]).clamp(-rho_limit, rho_limit),
                torch.round(shape[..., 4] / steps["log_scale"]),
            ],
            -1,
        ).to(torch.int64)
        geo = geo.clamp(-_SUPPORT, _SUPPORT - 1)
        geometry = _Compact.shape_values(grid, geo, steps)
        solved = _resolve_colours(params_from_quantities(geometry, params[..., 5:]), mask, refit)
        opponent = solved[..., 5:] @ _OPPONENT.to(solved.device).T
        colour = torch.round(opponent / steps["colour"]).clamp(-_SUPPORT, _SUPPORT - 1)
        symbols = torch.cat([geo, colour.to(torch.int64)], -1)
        grid_np, symbols_np, mask_np = grid.cpu().numpy(), symbols.cpu().numpy(), mask.cpu().numpy()
        return [
            _Compact.code_image(
                grid_np[b][mask_np[b]], symbols_np[b][mask_np[b]], level, height, width
            )
            for b in range(len(params))
        ]

    @staticmethod
    def shape_values(grid: torch.Tensor, geo: torch.Tensor, steps: dict[str, float]):
        """Position codes ``[..., 2]`` + shape codes ``[..., 3]`` -> ``[..., 5]`` quantities."""
        return torch.cat(
            [
                grid.to(torch.float32) * steps["position"],
                geo[..., 0:1].to(torch.float32) * steps["log_scale"],
                geo[..., 1:2].to(torch.float32) * steps["rho"],
                geo[..., 2:3].to(torch.float32) * steps["log_scale"],
            ],
            -1,
        )

    @staticmethod
    def values(grid: np.ndarray, symbols: np.ndarray, level: int) -> torch.Tensor:
        """One image's codes -> ``[n, 8]`` parameters (float32, CPU)."""
        steps = compact_steps(level)
        grid_t = torch.from_numpy(np.ascontiguousarray(grid, dtype=np.int64))
        sym = torch.from_numpy(np.ascontiguousarray(symbols, dtype=np.int64))
        shape = _Compact.shape_values(grid_t, sym[:, :3], steps)
        colour = (sym[:, 3:].to(torch.float32) * steps["colour"]) @ _OPPONENT
        return params_from_quantities(shape, colour)

    @staticmethod
    def code_image(
        grid: np.ndarray, symbols: np.ndarray, level: int, height: int, width: int
    ) -> _CompactImage:
        """Sort one image's codes into the canonical order and entropy-code them."""
        n = len(grid)
        if n == 0:
            blob = _frame("compact", height, width, 0, bytes([level]))
            return _CompactImage(level, grid, symbols, blob)
        origin = grid.min(0)
        local = grid - origin
        columns = int(local[:, 0].max()) + 1
        raster = local[:, 1] * columns + local[:, 0]
        order = np.lexsort((*symbols.T[::-1], raster))
        grid, symbols, raster = grid[order], symbols[order], raster[order]
        delta = np.diff(raster, prepend=0)
        bucket = _bit_length(delta)
        streams = [bucket, *symbols.T]
        head = bytearray([level])
        head += _zigzag_varint(int(origin[0])) + _zigzag_varint(int(origin[1]))
        head += _varint(columns)
        encoder = constriction.stream.queue.RangeEncoder()
        models = []
        for name, values in zip(_STREAMS, streams, strict=True):
            mean_q, scale_q = _fit_model(values, name in _LAPLACE)
            head += _MODEL.pack(mean_q, scale_q)
            models.append(_model(name, mean_q, scale_q))
        encoder.encode(bucket.astype(np.int32), models[0])
        raw, sizes = _split_raw_bits(delta, bucket)
        if len(raw):
            encoder.encode(raw, constriction.stream.model.Uniform(), sizes)
        for model, values in zip(models[1:], symbols.T, strict=True):
            encoder.encode(values.astype(np.int32), model)
        words = encoder.get_compressed().astype("<u4").tobytes()
        blob = _frame("compact", height, width, n, bytes(head) + words)
        return _CompactImage(level, grid, symbols, blob)

    @staticmethod
    def to_bytes(q: Quantised) -> list[bytes | None]:
        return [im.blob if im is not None else None for im in q._codes]  # type: ignore[union-attr]

    @staticmethod
    def decode_one(blob: bytes, meta: BlobInfo) -> torch.Tensor:
        payload = bytes(_payload(blob))
        try:
            level, at = payload[0], 1
            if level >= COMPACT_LEVELS:
                raise CodecError(f"compact level {level} is outside 0..{COMPACT_LEVELS - 1}")
            if meta.count == 0:
                if len(payload) != 1:
                    raise CodecError("compact blob of 0 splats has trailing bytes")
                return torch.zeros(0, PARAMS_PER_SPLAT)
            x0, at = _read_zigzag(payload, at)
            y0, at = _read_zigzag(payload, at)
            columns, at = _read_varint(payload, at)
            models = []
            for name in _STREAMS:
                mean_q, scale_q = _MODEL.unpack_from(payload, at)
                at += _MODEL.size
                models.append(_model(name, mean_q, scale_q))
            words = payload[at:]
            if len(words) % 4 or columns < 1:
                raise CodecError("compact blob's coded part is not whole words")
        except (IndexError, struct.error) as err:
            raise CodecError(f"compact blob header is cut short ({err})") from None
        n = meta.count
        decoder = constriction.stream.queue.RangeDecoder(np.frombuffer(words, dtype="<u4"))
        bucket = decoder.decode(models[0], n).astype(np.int64)
        if (bucket < 0).any() or (bucket > 62).any():
            raise CodecError("compact blob decodes to impossible position deltas")
        sizes, pieces = _raw_sizes(bucket)
        raw = decoder.decode(constriction.stream.model.Uniform(), sizes) if len(sizes) else []
        delta = _join_raw_bits(bucket, np.asarray(raw, dtype=np.int64), pieces)
        symbols = np.stack([decoder.decode(m, n) for m in models[1:]], -1).astype(np.int64)
        if not decoder.maybe_exhausted():
            raise CodecError("compact blob has data left after its splats")
        raster = np.cumsum(delta)
        grid = np.stack([raster % columns + x0, raster // columns + y0], -1)
        params = _Compact.values(grid, symbols, level)
        if not torch.isfinite(params).all():
            raise CodecError("compact blob decodes to non-finite parameters")
        return params


def _compact_budget(count: int) -> int:
    """The default byte budget of a compact blob of ``count`` splats."""
    return max(COMPACT_BYTES_PER_SPLAT * count, 64)


def _bit_length(values: np.ndarray) -> np.ndarray:
    """Bits needed for each non-negative int64 (0 for 0)."""
    out = np.zeros(values.shape, dtype=np.int64)
    rest = values.copy()
    while (rest > 0).any():
        out += rest > 0
        rest >>= 1
    return out


def _raw_sizes(bucket: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The uniform pieces carrying each delta's bits below its leading one: sizes (``2^k``
    per piece, int32) and the number of pieces of each delta."""
    bits = np.maximum(bucket - 1, 0)
    pieces = -(-bits // _UNIFORM_BITS)
    sizes = []
    for b, p in zip(bits.tolist(), pieces.tolist(), strict=True):
        for i in range(p):
            sizes.append(1 << min(_UNIFORM_BITS, b - i * _UNIFORM_BITS))
    return np.asarray(sizes, dtype=np.int32), pieces


def _split_raw_bits(delta: np.ndarray, bucket: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The uniform symbols (low pieces first) and their sizes for ``delta``'s raw bits."""
    sizes, pieces = _raw_sizes(bucket)
    raw = []
    for d, b, p in zip(delta.tolist(), bucket.tolist(), pieces.tolist(), strict=True):
        rest = d - (1 << (b - 1)) if b else 0
        for _ in range(p):
            raw.append(rest & ((1 << _UNIFORM_BITS) - 1))
            rest >>= _UNIFORM_BITS
    return np.asarray(raw, dtype=np.int32), sizes


def _join_raw_bits(bucket: np.ndarray, raw: np.ndarray, pieces: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_split_raw_bits`: the deltas."""
    delta = np.zeros(len(bucket), dtype=np.int64)
    at = 0
    for i, (b, p) in enumerate(zip(bucket.tolist(), pieces.tolist(), strict=True)):
        rest = 0
        for j in range(p):
            rest |= int(raw[at + j]) << (j * _UNIFORM_BITS)
        at += p
        delta[i] = (1 << (b - 1)) + rest if b else 0
    return delta


def _fit_model(values: np.ndarray, laplace: bool) -> tuple[int, int]:
    """A stream's model parameters, quantised as stored: ``(round(8 mean), round(16
    log2(scale / 0.25)))``, mean and scale the Gaussian's or Laplace's estimates."""
    values = values.astype(np.float64)
    if laplace:
        centre = float(np.median(values))
        scale = float(np.mean(np.abs(values - centre)))
    else:
        centre, scale = float(values.mean()), float(values.std())
    mean_q = int(np.clip(round(centre * 8), -32768, 32767))
    scale_q = int(np.clip(round(16 * math.log2(max(scale, 0.25) / 0.25)), 0, 255))
    return mean_q, scale_q


def _model(name: str, mean_q: int, scale_q: int):
    """The constriction model of a stream from its stored parameters."""
    mean, scale = mean_q / 8.0, 0.25 * 2.0 ** (scale_q / 16.0)
    family = (
        constriction.stream.model.QuantizedLaplace
        if name in _LAPLACE
        else constriction.stream.model.QuantizedGaussian
    )
    return family(-_SUPPORT, _SUPPORT - 1, mean, scale)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 127, value >> 7
        out.append(byte | (128 if value else 0))
        if not value:
            return bytes(out)


def _zigzag_varint(value: int) -> bytes:
    return _varint(value * 2 if value >= 0 else -value * 2 - 1)


def _read_varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if shift > 63:
            raise CodecError("varint longer than 64 bits")
        byte = data[at]
        at += 1
        value |= (byte & 127) << shift
        shift += 7
        if not byte & 128:
            return value, at


def _read_zigzag(data: bytes, at: int) -> tuple[int, int]:
    value, at = _read_varint(data, at)
    return (value >> 1) ^ -(value & 1), at


_CODECS = {"fp16": _FP16, "q64": _Q64, "compact": _Compact}
