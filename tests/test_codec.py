"""The splat codecs: round trips of every format, what each costs in bytes and quality, rate
control, the canonical order, and clear errors for bytes that are not a whole splat blob and
for sizes outside the limits."""

from __future__ import annotations

import itertools
import struct
import zlib
from collections import Counter

import pytest
import torch

from streamfit import codec
from streamfit.fit import FitConfig, fit, get_backend
from streamfit.render import psnr
from streamfit.splats import Splats


def random_splats(batch: int = 3, n: int = 40, size: int = 32, seed: int = 0) -> Splats:
    """Plausible splats of ``size x size`` images; image ``b`` keeps ``n - 7 b`` of them."""
    g = torch.Generator().manual_seed(seed)
    params = torch.empty(batch, n, 8)
    params[..., :2] = torch.rand(batch, n, 2, generator=g) * size
    params[..., 2:5] = torch.randn(batch, n, 3, generator=g) * 0.4 + torch.tensor([0.7, 0.0, 0.7])
    params[..., 5:] = torch.rand(batch, n, 3, generator=g)
    mask = torch.arange(n)[None, :] < torch.tensor([n - 7 * b for b in range(batch)])[:, None]
    return Splats(params * mask[..., None], mask, size, size)


@pytest.fixture(scope="module")
def fitted() -> tuple[Splats, torch.Tensor, object]:
    """Splats fitted to smooth random images (torch backend, tiny)."""
    g = torch.Generator().manual_seed(1)
    low = torch.rand(3, 3, 4, 4, generator=g)
    images = torch.nn.functional.interpolate(low, size=(24, 24), mode="bilinear")
    images = images.permute(0, 2, 3, 1).contiguous()
    backend = get_backend("torch", "cpu")
    result = fit(images, FitConfig(gaussians=24, iters=10, backend="torch", device="cpu"), backend)
    return result.splats, images, backend


@pytest.mark.parametrize("fmt", codec.FORMATS)
def test_decode_returns_exactly_what_quantise_promised(fmt: str) -> None:
    splats = random_splats()
    quantised = codec.quantise(fmt, splats)
    blobs = quantised.to_bytes()
    back = codec.decode_batch(blobs)
    assert (back.height, back.width) == (32, 32)
    assert back.counts().tolist() == splats.counts().tolist()
    width = back.params.shape[1]
    torch.testing.assert_close(back.params, quantised.splats.params[:, :width], rtol=0, atol=0)
    for b, blob in enumerate(blobs):
        meta = codec.info(blob)
        assert (meta.format, meta.count, meta.nbytes) == (fmt, int(splats.counts()[b]), len(blob))


@pytest.mark.parametrize("fmt", codec.FORMATS)
@pytest.mark.parametrize(("height", "width", "n"), [(24, 40, 30), (4096, 3000, 5), (7, 7, 1)])
def test_any_image_size_and_splat_count_round_trips(fmt: str, height: int, width: int, n: int):
    """q64 stores its ranges and compact its grid origin and width: nothing is fixed to
    224^2 or 400 splats (5 splats on a 4096-pixel image make position deltas of > 16 bits)."""
    g = torch.Generator().manual_seed(n)
    params = torch.randn(1, n, 8, generator=g) * 0.3
    params[..., 0] = torch.rand(1, n, generator=g) * width
    params[..., 1] = torch.rand(1, n, generator=g) * height
    params[..., 2:5] += torch.log(torch.tensor(max(height, width) / 8.0))
    splats = Splats(params, torch.ones(1, n, dtype=torch.bool), height, width)
    (blob,) = codec.encode(fmt, splats)
    back = codec.decode(blob)
    assert (back.height, back.width, back.params.shape[1]) == (height, width, n)
    ours = codec.shape_quantities(splats.params[0])
    theirs = codec.shape_quantities(back.params[0])
    if fmt == "compact":  # another order (the canonical one): pair each with its nearest
        gaps = (ours[:, None, :2] - theirs[None, :, :2]).abs().amax(-1)
        theirs = theirs[gaps.argmin(1)]
    if fmt == "q64":  # half a step of the stored range, plus the range's float16 rounding
        span = ours[:, :2].amax(0) - ours[:, :2].amin(0)
        bound = span / 2047 / 2 + 2**-10 * ours[:, :2].abs().amax(0)
    elif fmt == "compact":  # half the position step of the level the blob was coded at
        bound = codec.compact_steps(blob[9])["position"] / 2 + 1e-4
    else:
        bound = 2**-11 * ours[:, :2].abs().amax(0)
    assert ((ours[:, :2] - theirs[:, :2]).abs() <= bound).all()


def test_fp16_is_float16_exact_and_q64_is_8_bytes_a_splat() -> None:
    splats = random_splats()
    fp16 = codec.encode("fp16", splats)
    q64 = codec.encode("q64", splats)
    header = 9 + 4  # header + CRC
    for b, n in enumerate(splats.counts().tolist()):
        assert len(fp16[b]) == header + 16 * n
        assert len(q64[b]) == header + 32 + 8 * n  # + the 8 float16 ranges
        assert codec.decode(q64[b]).params.shape == (1, n, 8)
    back = codec.decode_batch(fp16)
    valid = splats.mask
    torch.testing.assert_close(back.params[valid], splats.params.half().float()[valid])


def test_q64_error_is_within_half_a_step_of_each_range() -> None:
    splats = random_splats(n=200)
    back = codec.decode_batch(codec.encode("q64", splats))
    for b in range(len(splats)):
        ours = codec.shape_quantities(splats.params[b][splats.mask[b]])
        theirs = codec.shape_quantities(back.params[b][back.mask[b]])
        span = ours.amax(0) - ours.amin(0)
        bits = torch.tensor([w for _, w in codec.Q64_FIELDS[:5]])
        step = span / (2.0**bits - 1)
        # half a step, plus the float16 rounding of the range's ends
        assert ((ours - theirs).abs() <= step / 2 + 2e-3 * (ours.abs() + 1)).all()
        colour = (
            splats.params[b][splats.mask[b]][:, 5:] - back.params[b][back.mask[b]][:, 5:]
        ).abs()
        assert colour.max() <= 1.0 / 127 / 2 + 1e-3


@pytest.mark.parametrize("fmt", ["fp16", "q64"])
def test_encoding_decoded_splats_again_gives_the_same_bytes(fmt: str) -> None:
    blobs = codec.encode(fmt, random_splats(n=120))
    assert codec.encode(fmt, codec.decode_batch(blobs)) == blobs


def test_compact_at_a_fixed_level_is_idempotent_and_order_free() -> None:
    splats = random_splats(batch=1, n=150)
    blob = codec.encode("compact", splats, level=20)[0]
    assert codec.encode("compact", codec.decode(blob), level=20) == [blob]
    shuffled = Splats(splats.params[:, torch.randperm(150)], splats.mask, 32, 32)
    assert codec.encode("compact", shuffled, level=20) == [blob]  # the canonical order


def test_colours_are_resolved_for_the_quantised_geometry(fitted) -> None:
    splats, images, backend = fitted
    for fmt in ("q64", "compact"):
        plain = codec.quantise(fmt, splats).splats
        solved = codec.quantise(fmt, splats, images, backend).splats
        render = backend.render
        before = psnr(render(plain.params, plain.mask, 24, 24), images).mean()
        after = psnr(render(solved.params, solved.mask, 24, 24), images).mean()
        assert after > before


def test_compact_rate_control_keeps_each_blob_within_its_budget() -> None:
    splats = random_splats(batch=2, n=300, size=64)
    generous = codec.encode("compact", splats, max_bytes=100_000)
    default = codec.encode("compact", splats)
    tight = codec.encode("compact", splats, max_bytes=600)
    for b, n in enumerate(splats.counts().tolist()):
        assert len(default[b]) <= codec.COMPACT_BYTES_PER_SPLAT * n
        assert len(tight[b]) <= 600 < len(default[b]) <= len(generous[b])
        # the level byte follows the header: a tighter budget codes more coarsely
        assert tight[b][9] < default[b][9] <= generous[b][9]
    with pytest.raises(ValueError, match="coarsest level"):
        codec.encode("compact", splats, max_bytes=70)
    with pytest.raises(ValueError, match="over max_bytes"):
        codec.encode("compact", splats, level=31, max_bytes=600)
    with pytest.raises(ValueError, match="compact format only"):
        codec.encode("q64", splats, level=3)


def test_images_the_format_cannot_hold_are_left_out_alone() -> None:
    splats = random_splats()
    splats.params[0, 0, 0] = float("nan")
    splats.params[1, 0, 1] = 1e6  # beyond float16: q64's ranges and fp16 cannot hold it
    for fmt in ("fp16", "q64"):
        quantised = codec.quantise(fmt, splats)
        assert quantised.ok.tolist() == [False, False, True]
        blobs = quantised.to_bytes()
        assert blobs[:2] == [None, None] and blobs[2] is not None
        assert not quantised.splats.mask[:2].any()
    compact = codec.quantise("compact", splats)
    assert compact.ok.tolist() == [False, True, True]  # compact has no float16 range


@pytest.mark.parametrize("fmt", codec.FORMATS)
def test_an_image_without_splats_round_trips(fmt: str) -> None:
    empty = Splats(torch.zeros(1, 5, 8), torch.zeros(1, 5, dtype=torch.bool), 16, 16)
    (blob,) = codec.encode(fmt, empty)
    back = codec.decode(blob)
    assert back.params.shape == (1, 0, 8) and (back.height, back.width) == (16, 16)


@pytest.mark.parametrize("fmt", codec.FORMATS)
def test_truncated_damaged_or_foreign_bytes_are_a_clear_error(fmt: str) -> None:
    (blob,) = codec.encode(fmt, random_splats(batch=1))
    for cut in (0, 1, 8, 13, len(blob) // 2, len(blob) - 1):
        with pytest.raises(codec.CodecError):
            codec.decode(blob[:cut])
    for at in (3, 11, len(blob) // 2, len(blob) - 5):
        damaged = bytearray(blob)
        damaged[at] ^= 0x10
        with pytest.raises(codec.CodecError, match="CRC|limits"):
            codec.decode(bytes(damaged))
    with pytest.raises(codec.CodecError, match="version"):
        codec.decode(_reframed(blob, tag=(codec.VERSION + 1) << 4))
    with pytest.raises(codec.CodecError, match="unknown splat format"):
        codec.decode(_reframed(blob, tag=codec.VERSION << 4 | 9))


def test_foreign_bytes_name_what_they_are_not() -> None:
    jpeg = b"\xff\xd8\xff\xe0" + bytes(60)
    raw_fp16 = random_splats(batch=1).pack(0)  # splats from before the codec
    for data in (b"", jpeg, raw_fp16, b"GS"):
        with pytest.raises(codec.CodecError, match="too short|not a splat blob"):
            codec.decode(data)
    with pytest.raises(codec.CodecError, match="fails its CRC"):
        codec.decode(b"GS" + bytes([codec.VERSION << 4 | 1]) + bytes(40))


def _reframed(blob: bytes, tag: int) -> bytes:
    """``blob`` with another version/format byte and a CRC that matches it again."""
    body = blob[:2] + bytes([tag]) + blob[3:-4]
    return body + struct.pack("<I", zlib.crc32(body))


def test_sizes_outside_the_limits_are_refused_with_the_limits() -> None:
    for size in (0, codec.MAX_SIDE + 1):
        splats = Splats(torch.zeros(1, 2, 8), torch.ones(1, 2, dtype=torch.bool), size, 8)
        with pytest.raises(ValueError, match=f"1..{codec.MAX_SIDE} pixels"):
            codec.encode("q64", splats)
    many = codec.MAX_SPLATS + 1
    splats = Splats(torch.zeros(1, many, 8), torch.ones(1, many, dtype=torch.bool), 8, 8)
    with pytest.raises(ValueError, match=f"0..{codec.MAX_SPLATS} splats"):
        codec.encode("fp16", splats)
    with pytest.raises(ValueError, match="unknown splat format"):
        codec.encode("png", random_splats())


def test_a_batch_mixes_formats_but_not_image_sizes() -> None:
    splats = random_splats()
    blobs = [codec.encode(f, splats.select([b]))[0] for b, f in enumerate(codec.FORMATS)]
    back = codec.decode_batch(blobs)
    assert back.counts().tolist() == splats.counts().tolist()
    other = codec.encode("q64", random_splats(batch=1, size=48))
    with pytest.raises(ValueError, match="different image sizes"):
        codec.decode_batch([blobs[0], *other])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_q64_decodes_on_the_gpu_as_on_the_cpu() -> None:
    blobs = codec.encode("q64", random_splats(n=300))
    here = codec.decode_batch(blobs)
    there = codec.decode_batch(blobs, "cuda")
    assert there.params.device.type == "cuda"
    torch.testing.assert_close(there.params.cpu(), here.params, rtol=1e-6, atol=1e-5)


def test_on_real_photos_q64_and_compact_cost_little_quality(imagenet_sample) -> None:
    """Four train photos at 224^2, 400 splats, 20 iterations: q64 within 0.1 dB of float16,
    compact within 2,400 bytes and 0.3 dB."""
    from streamfit.data.local_images import ImageSource, iter_decoded

    decoded = iter_decoded(ImageSource([imagenet_sample / "train-000002.tar"]), 224, Counter())
    images = torch.stack([image for _, image in itertools.islice(decoded, 4)])
    backend = get_backend("cpu", "cpu")
    splats = fit(images, FitConfig(gaussians=400, iters=20, backend="cpu"), backend).splats

    def quality(s: Splats) -> float:
        shown = backend.render(s.params.contiguous(), s.mask, 224, 224).clamp(0, 1)
        return float(psnr((shown * 255).round() / 255, images).mean())

    fp16 = quality(codec.decode_batch(codec.encode("fp16", splats)))
    q64 = quality(codec.decode_batch(codec.encode("q64", splats, images, backend)))
    compact_blobs = codec.encode("compact", splats, images, backend)
    compact = quality(codec.decode_batch(compact_blobs))
    assert q64 >= fp16 - 0.1
    assert max(len(b) for b in compact_blobs) <= 2400 and compact >= fp16 - 0.3
