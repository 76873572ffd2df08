"""The colour stage: the normal equations on both backends against the dense reference, and
the regularised solve (exact on a full-rank system, never NaN on a singular one)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from cudasim.colour_cases import colour_case, reference_system, relative_error

from streamfit.fit.backends.cpu import CpuBackend
from streamfit.fit.colour import ColourSolve, exact_colours, solve_colours
from streamfit.render import render

TESTS = Path(__file__).resolve().parent


@pytest.mark.parametrize(("tile", "height", "width", "n"), [(8, 12, 20, 14), (16, 40, 36, 60)])
def test_cpu_gram_matches_dense_reference(tile, height, width, n):
    params, mask, target = colour_case(3, n, height, width, seed=n)
    gram, rhs = CpuBackend(tile=tile).colour_system(params, mask, target)
    ref_gram, ref_rhs = reference_system(params, mask, target)
    assert relative_error(gram, ref_gram) < 1e-5
    assert relative_error(rhs, ref_rhs) < 1e-5
    assert (gram == gram.transpose(1, 2)).all()
    # masked and non-finite splats have zero rows
    assert not gram[0, 0].any() and not gram[-1, 1].any()


def test_exact_colours_recover_the_colours_that_made_the_image():
    params, mask, _ = colour_case(2, 30, 24, 28, seed=3)
    params = torch.nan_to_num(params)
    mask[:] = True
    # splats that touch the image, so every colour is determined by the pixels
    params[..., 0] = params[..., 0].clamp(2, 26)
    params[..., 1] = params[..., 1].clamp(2, 22)
    target = render(params, mask, 24, 28)
    start = params.clone()
    start[..., 5:] = 0.5
    exact_colours(CpuBackend(), start, mask, target, ColourSolve(ridge=1e-7))
    assert (start[..., 5:] - params[..., 5:]).abs().max() < 2e-2
    assert (start[..., :5] == params[..., :5]).all()


def test_singular_and_non_finite_systems_never_give_nan():
    current = torch.rand(3, 4, 3)
    gram = torch.zeros(3, 4, 4)
    rhs = torch.zeros(3, 4, 3)
    gram[1] = 1.0  # four identical splats: rank one
    rhs[1] = 2.0
    gram[2, 0, 0] = float("nan")
    solved = solve_colours(gram, rhs, current, ColourSolve(ridge=1e-3))
    assert torch.isfinite(solved).all()
    torch.testing.assert_close(solved[0], current[0])  # nothing seen: colours kept
    torch.testing.assert_close(solved[2], current[2])  # not finite: colours kept
    # rank one: the rendered sum matches, and the ridge splits it evenly about `current`
    torch.testing.assert_close(solved[1].sum(0), torch.full((3,), 2.0), rtol=1e-2, atol=1e-2)
    with pytest.raises(ValueError, match="ridge"):
        solve_colours(gram, rhs, current, ColourSolve(ridge=0.0))


def test_exact_colours_in_chunks_equal_one_solve(monkeypatch):
    """A memory budget smaller than the batch's Gram matrices splits the solve by images
    without changing its result."""
    import streamfit.fit.colour as colour

    params, mask, target = colour_case(5, 20, 16, 24, seed=7)
    whole = params.clone()
    exact_colours(CpuBackend(), whole, mask, target, ColourSolve())
    monkeypatch.setattr(colour, "GRAM_BYTES", 2 * 4 * 20 * 20)  # two images at a time
    chunked = params.clone()
    exact_colours(CpuBackend(), chunked, mask, target, ColourSolve())
    torch.testing.assert_close(chunked, whole, equal_nan=True)
    assert not torch.equal(whole, params)
