"""GS-CLIP model tests: splat features, set invariances, freezing, lr groups, teacher loading,
and the paper's ViT-M-16 shapes and counts (random weights, CPU)."""

from __future__ import annotations

import math

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from streamfit.models import (
    GSModelConfig,
    PerceiverResampler,
    build_gs_clip,
    input_bytes,
    load_teacher,
    num_splat_features,
    splat_features,
)

H = W = 32
# A tiny open_clip CLIP (ViT image tower, 4 blocks of width 64; text tower of width 32).
TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 4, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 100, "width": 32, "heads": 2, "layers": 2},
}
TINY_CFG = {
    "model_name": "ViT-M-16",
    "model_kwargs": TINY,
    "fourier_freqs": 4,
    "stem_dim": 32,
    "num_tokens": 8,
    "latent_dim": 32,
    "resampler_heads": 2,
}
TOL = {"atol": 1e-5, "rtol": 1e-5}  # float32, sums over a few hundred terms in another order


def tiny_config(**changes) -> GSModelConfig:
    return GSModelConfig(**{**TINY_CFG, **changes})


def random_splats(n: int, generator: torch.Generator, height: int = H, width: int = W):
    """``[n, 8]`` plausible splats: centres inside the image, 1-4 px scales, colours in [0, 1]."""
    u = torch.rand(n, 8, generator=generator)
    xy = u[:, :2] * torch.tensor([width, height])
    log_diag = torch.log(1.0 + 3.0 * u[:, 2:5:2])
    l21 = 2.0 * u[:, 3:4] - 1.0
    return torch.cat([xy, log_diag[:, :1], l21, log_diag[:, 1:], u[:, 5:]], dim=1)


def text_tokens(batch: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(1, 100, (batch, 16), generator=generator)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return build_gs_clip(tiny_config()).eval()


# ---------------------------------------------------------------------------- stem features
def test_splat_features_geometry():
    """Known splats: an isotropic one and one with axes (6, 2) px rotated by 30 degrees."""
    sigma1, sigma2, t = 6.0, 2.0, math.pi / 6
    rot = torch.tensor(
        [[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]], dtype=torch.float64
    )
    cov = rot @ torch.diag(torch.tensor([sigma1**2, sigma2**2], dtype=torch.float64)) @ rot.T
    chol = torch.linalg.cholesky(cov)
    rotated = [16.0, 8.0, chol[0, 0].log(), chol[1, 0], chol[1, 1].log(), 1.0, 0.5, 0.0]
    round_ = [0.5, 31.5, math.log(3.0), 0.0, math.log(3.0), 0.2, 0.2, 0.2]
    params = torch.tensor([rotated, round_], dtype=torch.float32)

    f = splat_features(params, H, W, fourier_freqs=3)
    assert f.shape == (2, num_splat_features(3)) and f.dtype == torch.float32
    pos, fourier, log_std, orient, color = f[:, :2], f[:, 2:14], f[:, 14:16], f[:, 16:18], f[:, 18:]
    torch.testing.assert_close(pos, torch.tensor([[0.5, 0.25], [0.5 / 32, 31.5 / 32]]))
    # sin(pi * 2^k * x) for x = 0.5, k = 0, 1, 2 -> 1, 0, 0 (first 3 entries are x's sines)
    torch.testing.assert_close(fourier[0, :3], torch.tensor([1.0, 0.0, 0.0]), atol=1e-6, rtol=0)
    expected_std = torch.tensor([[math.log(6 / 32), math.log(2 / 32)], [math.log(3 / 32)] * 2])
    torch.testing.assert_close(log_std, expected_std, atol=1e-5, rtol=0)
    anisotropy = (sigma1**2 - sigma2**2) / (sigma1**2 + sigma2**2)
    expected_orient = torch.tensor(
        [[anisotropy * math.cos(2 * t), anisotropy * math.sin(2 * t)], [0.0, 0.0]]
    )
    torch.testing.assert_close(orient, expected_orient, atol=1e-6, rtol=0)
    torch.testing.assert_close(color, params[:, 5:] - 0.5)


def test_splat_features_gradient_finite_for_round_splats():
    params = torch.tensor([[4.0, 4.0, 0.5, 0.0, 0.5, 0.1, 0.2, 0.3]], requires_grad=True)
    splat_features(params, H, W, fourier_freqs=2).sum().backward()
    assert torch.isfinite(params.grad).all()


# ---------------------------------------------------------------------------- set invariances
def test_permuting_splats_leaves_embedding_unchanged(tiny_model):
    g = torch.Generator().manual_seed(1)
    params = torch.stack([random_splats(60, g), random_splats(60, g)])
    mask = torch.ones(2, 60, dtype=torch.bool)
    mask[1, 45:] = False  # the second image is padded
    perm = torch.stack([torch.randperm(60, generator=g) for _ in range(2)])
    with torch.no_grad():
        ref = tiny_model.encode_image(params, mask, H, W)
        out = tiny_model.encode_image(
            params.gather(1, perm[..., None].expand(-1, -1, 8)), mask.gather(1, perm), H, W
        )
    assert ref.shape == (2, 32)
    torch.testing.assert_close(out, ref, **TOL)


def test_padding_splats_leave_embedding_unchanged(tiny_model):
    g = torch.Generator().manual_seed(2)
    a, b = random_splats(30, g), random_splats(50, g)
    with torch.no_grad():
        alone_a = tiny_model.encode_image(a[None], torch.ones(1, 30, dtype=torch.bool), H, W)
        alone_b = tiny_model.encode_image(b[None], torch.ones(1, 50, dtype=torch.bool), H, W)
        # Batched with 70 padding rows holding garbage (huge values, NaN) after a's splats.
        params = torch.zeros(2, 100, 8)
        params[0, :30], params[1, :50] = a, b
        params[0, 30:] = 1e4
        params[0, 60, 2] = float("nan")
        mask = torch.arange(100)[None] < torch.tensor([[30], [50]])
        batched = tiny_model.encode_image(params, mask, H, W)
    torch.testing.assert_close(batched, torch.cat([alone_a, alone_b]), **TOL)


def test_resampler_output_length_is_fixed_and_empty_sets_are_finite():
    resampler = PerceiverResampler(dim=16, num_tokens=5, layers=2, heads=2)
    for n in (0, 1, 37):
        tokens = torch.randn(3, n, 16)
        mask = torch.ones(3, n, dtype=torch.bool)
        out = resampler(tokens, mask)
        assert out.shape == (3, 6, 16)
        assert torch.isfinite(out).all()


# ---------------------------------------------------------------------------- freezing and lrs
def _train_steps(model, optimizer, steps: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    loss_fn = open_clip.ClipLoss()
    for _ in range(steps):
        params = torch.stack([random_splats(40, g) for _ in range(4)])
        mask = torch.ones(4, 40, dtype=torch.bool)
        loss = loss_fn(**model(params, mask, text_tokens(4, g), H, W))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_frozen_parameters_stay_unchanged_after_optimizer_steps():
    torch.manual_seed(3)
    model = build_gs_clip(tiny_config(unfrozen_blocks=2))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(model.param_groups(base_lr=1e-2, weight_decay=0.1))
    _train_steps(model, optimizer, steps=3, seed=4)

    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected_prefixes = (
        "visual.stem.", "visual.resampler.", "visual.token_proj.", "visual.positional_embedding",
        "visual.transformer.resblocks.0.", "visual.transformer.resblocks.1.", "visual.ln_post.",
        "visual.proj",
    )  # fmt: skip
    for name, p in model.named_parameters():
        if name.startswith(expected_prefixes):
            assert name in trainable, name
            assert not torch.equal(p, before[name]), f"{name} did not train"
        else:
            assert name not in trainable, name
            assert p.grad is None, name
            assert torch.equal(p, before[name]), f"frozen {name} changed"
    # The frozen side covers the text tower, the temperature and the later vision blocks.
    assert any(n.startswith("clip.transformer.") for n in before if n not in trainable)
    assert "clip.logit_scale" not in trainable
    assert "visual.transformer.resblocks.2.attn.in_proj_weight" not in trainable


def test_param_groups_carry_and_apply_their_learning_rates():
    torch.manual_seed(5)
    model = build_gs_clip(tiny_config(backbone_lr_scale=0.25))
    base_lr = 0.01
    groups = model.param_groups(base_lr=base_lr, weight_decay=0.2)
    names = [g["name"] for g in groups]
    assert names == ["gs_input", "gs_input_no_decay", "backbone", "backbone_no_decay"]
    expected_lr = {"gs_input": base_lr, "backbone": 0.25 * base_lr}
    for g in groups:
        lr = expected_lr[g["name"].removesuffix("_no_decay")]
        assert g["lr"] == pytest.approx(lr) and g["base_lr"] == pytest.approx(lr)
        assert g["weight_decay"] == (0.0 if g["name"].endswith("_no_decay") else 0.2)
    grouped = [p for g in groups for p in g["params"]]
    assert len({id(p) for p in grouped}) == len(grouped)  # disjoint
    assert {id(p) for p in grouped} == {id(p) for p in model.parameters() if p.requires_grad}

    # One plain SGD step moves every parameter by exactly -lr * grad of its own group.
    optimizer = torch.optim.SGD([{k: v for k, v in g.items()} for g in groups], lr=123.0)
    for g in optimizer.param_groups:
        g["weight_decay"] = 0.0  # isolate the lr
    before = [[p.detach().clone() for p in g["params"]] for g in optimizer.param_groups]
    g_ = torch.Generator().manual_seed(6)
    params = torch.stack([random_splats(40, g_) for _ in range(4)])
    loss = open_clip.ClipLoss()(
        **model(params, torch.ones(4, 40, dtype=torch.bool), text_tokens(4, g_), H, W)
    )
    loss.backward()
    grads = [[p.grad.clone() for p in g["params"]] for g in optimizer.param_groups]
    optimizer.step()
    for g, old, grad in zip(optimizer.param_groups, before, grads, strict=True):
        lr = expected_lr[g["name"].removesuffix("_no_decay")]
        for p, p0, dp in zip(g["params"], old, grad, strict=True):
            torch.testing.assert_close(p.detach(), p0 - lr * dp, atol=1e-7, rtol=1e-6)


def test_from_scratch_trains_everything_at_the_base_lr():
    torch.manual_seed(7)
    model = build_gs_clip(tiny_config(from_scratch=True))
    assert all(p.requires_grad for p in model.parameters())
    groups = model.param_groups(base_lr=1e-3, weight_decay=0.1)
    assert {g["name"].removesuffix("_no_decay") for g in groups} == {
        "gs_input", "backbone", "text", "logit_scale",
    }  # fmt: skip
    assert all(g["lr"] == pytest.approx(1e-3) for g in groups)
    with pytest.raises(ValueError, match="from_scratch"):
        tiny_config(from_scratch=True, pretrained="laion2b_s34b_b88k")


def test_rejects_image_towers_that_are_not_vision_transformers():
    resnet = {**TINY, "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8}}
    with pytest.raises(ValueError, match="VisionTransformer"):
        build_gs_clip(tiny_config(model_kwargs=resnet))


# ---------------------------------------------------------------------------- teacher loading
@pytest.mark.parametrize("fmt", ["torch", "safetensors", "open_clip_train"])
def test_teacher_and_gs_clip_load_a_local_rgb_checkpoint(tmp_path, fmt):
    torch.manual_seed(8)
    rgb = open_clip.create_model("ViT-M-16", **TINY)  # 0-dim logit_scale, like most checkpoints
    with torch.no_grad():
        rgb.logit_scale.fill_(2.5)
    state = rgb.state_dict()
    if fmt == "torch":
        path = tmp_path / "rgb.pt"
        torch.save(state, path)
    elif fmt == "safetensors":
        path = tmp_path / "rgb.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        path = tmp_path / "epoch_3.pt"
        torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)

    teacher = load_teacher("ViT-M-16", path, **TINY)
    assert teacher.logit_scale.shape == (1,)
    for name, value in teacher.state_dict().items():
        torch.testing.assert_close(value, state[name].reshape(value.shape), atol=0, rtol=0)

    gs = build_gs_clip(tiny_config(pretrained=str(path)))
    block0 = "transformer.resblocks.0.attn.in_proj_weight"
    torch.testing.assert_close(gs.state_dict()[f"visual.{block0}"], state[f"visual.{block0}"])
    torch.testing.assert_close(gs.clip.token_embedding.weight, state["token_embedding.weight"])
    # The queries' positions start from the RGB patch positions (8 queries = 4x4 patches / 2,
    # resampled); the pooled token takes the class token's.
    torch.testing.assert_close(
        gs.visual.positional_embedding[0], state["visual.positional_embedding"][0]
    )


def test_load_teacher_reports_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_teacher("ViT-M-16", tmp_path / "missing.pt", **TINY)


# ---------------------------------------------------------------------------- accounting
def test_input_bytes_matches_the_paper_ratio():
    mask = torch.zeros(2, 500, dtype=torch.bool)
    mask[:, :400] = True
    acc = input_bytes(mask, 224, 224)
    assert acc["splat_bytes"] == 2 * 400 * 16 and acc["rgb_bytes"] == 2 * 224 * 224 * 3
    assert acc["compression"] == pytest.approx(23.52, abs=0.005)
    assert acc["splats_per_image"] == 400


# ---------------------------------------------------------------------------- the paper's model
def test_vit_m16_counts_and_forward_backward_on_cpu(capsys):
    torch.manual_seed(9)
    teacher = load_teacher("ViT-M-16")
    vision_params = sum(p.numel() for p in teacher.visual.parameters())
    assert round(vision_params / 1e6, 1) == 38.6
    grid_positions = teacher.visual.positional_embedding.detach().clone()

    model = build_gs_clip(GSModelConfig(), teacher=teacher)
    counts = model.parameter_counts()["all"]
    fraction = counts["trainable"] / counts["total"]
    with capsys.disabled():
        print(
            f"\nViT-M-16: vision {vision_params / 1e6:.1f}M, GS-CLIP {counts['total'] / 1e6:.1f}M,"
            f" trainable {counts['trainable'] / 1e6:.2f}M = {100 * fraction:.2f}%"
        )
    assert 0.06 < fraction < 0.085
    # 196 queries = 14 x 14 patches: the RGB positions are copied as they are.
    torch.testing.assert_close(model.visual.positional_embedding.detach(), grid_positions)

    g = torch.Generator().manual_seed(10)
    params = torch.stack([random_splats(400, g, 224, 224) for _ in range(2)])
    mask = torch.ones(2, 400, dtype=torch.bool)
    tokens = open_clip.get_tokenizer("ViT-M-16")(["a photo of a cat", "a red square"])
    out = model(params, mask, tokens, 224, 224)
    assert out["image_features"].shape == out["text_features"].shape == (2, 512)
    open_clip.ClipLoss()(**out).backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, name
    assert model.visual.stem.linear.weight.grad.abs().sum() > 0
    assert model.visual.transformer.resblocks[1].mlp.c_fc.weight.grad.abs().sum() > 0
