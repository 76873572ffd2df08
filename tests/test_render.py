import math

import pytest
import torch

from streamfit.render import (
    Q_CUTOFF,
    WEIGHT_CUTOFF,
    covariance,
    footprint_radius,
    psnr,
    render,
)


def random_params(b, n, h, w, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    p = torch.empty(b, n, 8, dtype=dtype)
    p[..., 0] = torch.rand(b, n, generator=g, dtype=dtype) * w
    p[..., 1] = torch.rand(b, n, generator=g, dtype=dtype) * h
    p[..., 2] = torch.rand(b, n, generator=g, dtype=dtype) * 2 - 0.3
    p[..., 3] = torch.randn(b, n, generator=g, dtype=dtype)
    p[..., 4] = torch.rand(b, n, generator=g, dtype=dtype) * 2 - 0.3
    p[..., 5:] = torch.randn(b, n, 3, generator=g, dtype=dtype)
    return p


def direct_render(params, mask, h, w):
    """Float64 evaluation of the model straight from its definition: explicit inverse of Sigma."""
    out = torch.zeros(params.shape[0], h, w, 3, dtype=torch.float64)
    sigma = covariance(params.to(torch.float64))
    for b in range(params.shape[0]):
        for i in range(params.shape[1]):
            if mask is not None and not mask[b, i]:
                continue
            inv = torch.linalg.inv(sigma[b, i])
            for y in range(h):
                for x in range(w):
                    d = (
                        torch.tensor([x + 0.5, y + 0.5], dtype=torch.float64)
                        - params[b, i, :2].double()
                    )
                    q = d @ inv @ d
                    if q <= Q_CUTOFF:
                        out[b, y, x] += params[b, i, 5:].double() * torch.exp(-0.5 * q)
    return out


def test_cutoff_is_one_eight_bit_step():
    assert math.exp(-0.5 * Q_CUTOFF) == pytest.approx(WEIGHT_CUTOFF)


def test_matches_direct_float64_evaluation():
    h, w = 9, 13
    params = random_params(2, 5, h, w)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 3] = False
    expected = direct_render(params, mask, h, w)
    got64 = render(params, mask, h, w)
    torch.testing.assert_close(got64, expected, rtol=1e-10, atol=1e-12)
    got32 = render(params.float(), mask, h, w)
    torch.testing.assert_close(got32.double(), expected, rtol=1e-4, atol=1e-5)


def test_masked_splats_contribute_nothing():
    params = random_params(1, 6, 8, 8)
    mask = torch.tensor([[True, False, True, False, True, True]])
    torch.testing.assert_close(render(params, mask, 8, 8), render(params[:, mask[0]], None, 8, 8))


def test_covariance_is_positive_definite_for_any_parameters():
    params = torch.randn(1000, 8, dtype=torch.float64) * 5
    eig = torch.linalg.eigvalsh(covariance(params))
    assert (eig > 0).all()


def test_footprint_radius_bounds_the_cutoff_ellipse():
    params = random_params(1, 20, 50, 50)[0]
    radius = footprint_radius(params)
    sigma = covariance(params)
    # the extreme points of the ellipse q = Q along x and y sit exactly at the radius
    for i in range(params.shape[0]):
        inv = torch.linalg.inv(sigma[i])
        # maximise x over the ellipse: d = sqrt(Q) * Sigma e_x / sqrt(e_x^T Sigma e_x)
        for axis in range(2):
            e = torch.zeros(2, dtype=torch.float64)
            e[axis] = 1
            d = math.sqrt(Q_CUTOFF) * sigma[i] @ e / torch.sqrt(e @ sigma[i] @ e)
            assert d @ inv @ d == pytest.approx(Q_CUTOFF)
            assert d[axis].abs().item() == pytest.approx(radius[i, axis].item())


def test_gradients_pass_gradcheck():
    h, w = 5, 6
    params = random_params(1, 3, h, w, seed=3).requires_grad_(True)
    mask = torch.ones(1, 3, dtype=torch.bool)
    assert torch.autograd.gradcheck(lambda p: render(p, mask, h, w, cutoff=False), (params,))
    # with the cut-off: wide splats keep every pixel far inside the cut-off, so it is smooth there
    wide = params.detach().clone()
    wide[..., 2] = wide[..., 4] = 2.5
    wide.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: render(p, mask, h, w), (wide,))


def test_psnr():
    target = torch.full((2, 4, 4, 3), 0.5)
    pred = target.clone()
    pred[0] += 0.1
    pred[1] = 2.0  # clamped to 1 before comparison
    got = psnr(pred, target)
    assert got[0].item() == pytest.approx(20.0, abs=1e-4)
    assert got[1].item() == pytest.approx(10 * math.log10(1 / 0.25), abs=1e-4)
