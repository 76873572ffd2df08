import pytest
import torch

from streamfit.splats import (
    BYTES_PER_SPLAT,
    Splats,
    compression_ratio,
    pack_params,
    unpack_params,
)


def random_sets(counts, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 8, generator=g) * 10 for n in counts]


def test_compression_figures_match_the_paper():
    assert round(compression_ratio(224, 224, 400), 2) == 23.52
    assert round(compression_ratio(224, 224, 3136), 2) == 3.0
    assert compression_ratio(224, 224, 0) == float("inf")
    splats = Splats.from_list(random_sets([400, 100]), 224, 224)
    assert splats.nbytes().tolist() == [400 * BYTES_PER_SPLAT, 100 * BYTES_PER_SPLAT]
    assert splats.compression_ratios()[0].item() == pytest.approx(150528 / 6400)
    assert splats.rgb_nbytes() == 150528


def test_padding_and_mask():
    sets = random_sets([3, 0, 5])
    splats = Splats.from_list(sets, 32, 48)
    assert splats.params.shape == (3, 5, 8)
    assert splats.counts().tolist() == [3, 0, 5]
    assert not splats.params[0, 3:].any()
    for a, b in zip(splats.to_list(), sets, strict=True):
        torch.testing.assert_close(a, b)


def test_pack_unpack_round_trip_is_float16_exact():
    params = torch.randn(17, 8) * 50
    blob = pack_params(params)
    assert len(blob) == 17 * BYTES_PER_SPLAT
    back = unpack_params(blob)
    torch.testing.assert_close(back, params.half().float(), rtol=0, atol=0)
    # relative error of float16: 2^-11
    torch.testing.assert_close(back, params, rtol=2**-11, atol=1e-4)


def test_unpack_rejects_truncated_bytes():
    with pytest.raises(ValueError, match="multiple of 16"):
        unpack_params(b"\x00" * 20)


def test_batch_pack_unpack():
    splats = Splats.from_list(random_sets([4, 2]), 10, 12)
    again = Splats.unpack([splats.pack(0), splats.pack(1)], 10, 12)
    assert again.counts().tolist() == [4, 2]
    torch.testing.assert_close(again.params, splats.params.half().float())


def test_save_load_round_trip(tmp_path):
    splats = Splats.from_list(random_sets([6, 1, 3]), 224, 160)
    # a non-compact batch: masked-out rows in the middle must not survive saving
    splats.mask[0, 2] = False
    path = tmp_path / "batch.splats"
    splats.save(path, keys=["a", "b", "c"])
    loaded, keys = Splats.load(path)
    assert keys == ["a", "b", "c"]
    assert (loaded.height, loaded.width) == (224, 160)
    assert loaded.counts().tolist() == [5, 1, 3]
    for a, b in zip(loaded.to_list(), splats.to_list(), strict=True):
        torch.testing.assert_close(a, b.half().float())
    # the file is safetensors: readable without pickle
    raw = path.read_bytes()
    assert b"streamfit.splats" in raw[:4096]


def test_load_rejects_foreign_files(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(2)}, str(path))
    with pytest.raises(ValueError, match="not a streamfit splats file"):
        Splats.load(path)


def test_shape_validation():
    with pytest.raises(ValueError, match=r"\[B, N, 8\]"):
        Splats(torch.zeros(2, 3, 7), torch.ones(2, 3, dtype=torch.bool), 4, 4)
    with pytest.raises(ValueError, match="mask"):
        Splats(torch.zeros(2, 3, 8), torch.ones(2, 3), 4, 4)
