"""The index's quality signals on inputs whose answer is known."""

import math

import numpy as np
import pytest
import torch

from v2v.model.quality import blank, luminance, signals, source_ssim, temporal_flicker


def moving_texture(frames=8, h=48, w=64, step=2, seed=0) -> torch.Tensor:
    """A smooth random texture panning `step` px a frame: uint8 (F, H, W, 3)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 3, h // 4, (w + frames * step) // 4, generator=g)
    base = torch.nn.functional.interpolate(base, scale_factor=4, mode="bilinear")[0].permute(1, 2, 0)
    return torch.stack([(base[:, k * step: k * step + w] * 255).round().to(torch.uint8) for k in range(frames)])


def test_an_untouched_clip_scores_as_its_source():
    src = moving_texture()
    q = signals(src, src)
    assert q["temporal_flicker"] == pytest.approx(1.0) and q["source_ssim"] == pytest.approx(1.0, abs=1e-5)
    assert not q["blank"]
    assert signals(src.float() / 255, src)["source_ssim"] == pytest.approx(1.0, abs=1e-5)  # float frames in [0, 1]


def test_a_shifted_copy_keeps_motion_but_not_all_structure():
    src = moving_texture()
    shifted = torch.roll(src, shifts=3, dims=2)
    assert temporal_flicker(shifted, src) == pytest.approx(1.0, rel=0.05)
    assert 0.2 < source_ssim(shifted, src) < 0.9


def test_noise_flickers_and_keeps_no_structure():
    src = moving_texture()
    noise = torch.randint(0, 256, src.shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    assert temporal_flicker(noise, src) > 2
    flashing = src.clone()
    flashing[1::2] = (flashing[1::2].int() + 60).clamp(max=255).to(torch.uint8)  # every other frame brighter
    assert temporal_flicker(flashing, src) > 2 and source_ssim(flashing, src) > 0.5
    assert abs(source_ssim(noise, src)) < 0.1
    assert not blank(noise)


def test_a_frozen_or_constant_output():
    src = moving_texture()
    frozen = src[:1].expand_as(src)
    assert temporal_flicker(frozen, src) < 0.1  # the source moves, the output does not
    gray = torch.full_like(src, 128)
    assert blank(gray) and blank(gray + torch.randint(0, 2, src.shape, dtype=torch.uint8))  # a 1-level dither
    assert not blank(src)
    still = src[:1].expand_as(src)
    assert temporal_flicker(still, still) == pytest.approx(1.0)  # a still source restyled still: no flicker
    assert math.isnan(temporal_flicker(src[:1], src[:1]))


def test_luminance_weights_and_range():
    white = torch.full((1, 2, 2, 3), 255, dtype=torch.uint8)
    assert torch.allclose(luminance(white), torch.ones(1, 2, 2))
    red = torch.zeros(1, 1, 1, 3)
    red[..., 0] = 1.0
    assert float(luminance(red)) == pytest.approx(0.299)
    assert source_ssim(torch.from_numpy(np.zeros((2, 4, 4, 3), np.uint8)), torch.zeros(2, 4, 4, 3)) == \
        pytest.approx(1.0)  # frames smaller than the window: compared whole
