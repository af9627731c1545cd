"""The speed layer's swapped layers on the CPU (group_norm, upsample, temporal): each computes what diffusers' layer
computes, to float rounding, and a broken one is caught."""









import pytest
import torch

from tests.helpers import CLIPS, random_video
from v2v.config import SpeedSettings
from v2v.model.loading import load_components
from v2v.model.sampler import restyle
from v2v.speed import apply_speed_settings


def _tiny_with_norm_and_temporal_weights(cache_dir, seed):
    """The tiny model with weights in its GroupNorms and temporal convolutions: diffusers starts each temporal
    convolution layer as an identity (its last convolution zeroed) and each GroupNorm as (1, 0), so a wrong swap
    of either would not show in the latents."""
    c = load_components("tiny", cache_dir=cache_dir)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in c.unet.modules():
            if isinstance(m, torch.nn.Conv3d):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.05)
            if isinstance(m, torch.nn.GroupNorm):
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
    return c


@pytest.mark.parametrize("affine", [True, False])
def test_group_norm_over_frames_is_groupnorm_over_the_5d_clip(affine):
    from v2v.speed.temporal import group_norm_over_frames

    g = torch.Generator().manual_seed(0)
    b, f, c, h, w = 2, 5, 16, 3, 4
    x = torch.randn(b * f, c, h, w, generator=g) * 2 + torch.arange(b * f).reshape(-1, 1, 1, 1)  # frames differ
    norm = torch.nn.GroupNorm(4, c, affine=affine)
    if affine:
        with torch.no_grad():
            norm.weight.copy_(torch.randn(c, generator=g))
            norm.bias.copy_(torch.randn(c, generator=g))
    # what diffusers' temporal layers compute: the GroupNorm of the (B, C, F, H, W) view
    want = norm(x.reshape(b, f, c, h, w).permute(0, 2, 1, 3, 4)).permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
    with torch.no_grad():
        for layout in (torch.contiguous_format, torch.channels_last):
            got = group_norm_over_frames(x.contiguous(memory_format=layout), f, norm)
            torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
        # statistics per frame instead of per clip would differ (the frames above have different means)
        per_frame = torch.nn.functional.group_norm(x, 4, norm.weight, norm.bias, norm.eps)
        assert (per_frame - want).abs().max() > 0.1
        # half inputs: float32 statistics, the result in the input's dtype
        half = group_norm_over_frames(x.bfloat16(), f, norm)
        assert half.dtype == torch.bfloat16
        torch.testing.assert_close(half.float(), want, rtol=0.02, atol=0.05)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("frames", [1, 5])
def test_group_norm_by_channel_is_groupnorm_over_the_clip(affine, frames):
    from v2v.speed.group_norm import group_norm_by_channel

    g = torch.Generator().manual_seed(1)
    b, c, h, w = 2, 24, 3, 5
    # channels and frames with their own offsets and spreads: the per-channel statistics differ from the group's
    spread = torch.linspace(0.5, 3, c).reshape(1, c, 1, 1)
    x = (torch.randn(b * frames, c, h, w, generator=g, dtype=torch.float64) * spread
         + torch.arange(c).reshape(1, c, 1, 1) + torch.arange(b * frames).reshape(-1, 1, 1, 1))
    norm = torch.nn.GroupNorm(4, c, affine=affine).double()
    if affine:
        with torch.no_grad():
            norm.weight.copy_(torch.randn(c, generator=g))
            norm.bias.copy_(torch.randn(c, generator=g))
    want = norm(x.reshape(b, frames, c, h, w).transpose(1, 2)).transpose(1, 2).reshape(b * frames, c, h, w)
    with torch.no_grad():
        for layout in (torch.contiguous_format, torch.channels_last):
            got = group_norm_by_channel(x.contiguous(memory_format=layout), frames, norm)
            torch.testing.assert_close(got, want, rtol=0, atol=1e-5)  # float32 statistics
            assert got.is_contiguous(memory_format=layout)  # the input's layout, for the convolution after it
        # a per-channel norm (the statistics not combined per group) would differ
        per_channel = torch.nn.functional.group_norm(x, c, norm.weight, norm.bias, norm.eps)
        assert (per_channel - want).abs().max() > 0.1
        half = group_norm_by_channel(x.bfloat16(), frames, norm)
        assert half.dtype == torch.bfloat16
        torch.testing.assert_close(half.double(), want, rtol=0.02, atol=0.05)


@pytest.mark.parametrize("frames", [1, 4])
def test_group_norm_by_channel_reads_its_input_without_viewing_it(frames):
    """A view of the norm's input that merges or splits its dimensions made inductor fix the layout of an input it
    had not laid out yet (the up blocks' skip concatenations) to NCHW on the GPU (benchmarks/RESULTS.md):
    the input's only uses in the traced graph are the statistics and the apply, on x as it is."""
    from torch.fx.experimental.proxy_tensor import make_fx

    from v2v.speed.group_norm import group_norm_by_channel

    norm = torch.nn.GroupNorm(4, 16).bfloat16()
    x = torch.randn(2 * frames, 16, 3, 5).bfloat16().contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        graph = make_fx(lambda t: group_norm_by_channel(t, frames, norm))(x).graph
    (placeholder,) = [n for n in graph.nodes if n.op == "placeholder"]
    uses = {str(n.target) for n in placeholder.users}
    assert uses and not any(("view" in u or "reshape" in u or "as_strided" in u) for u in uses), uses
    # what the traced graph computes from x alone is the norm: not a graph that ignores part of it
    assert any("var_mean" in str(n.target) for n in graph.nodes)


def test_channel_stats_norms_compute_the_same_latents(cache_dir, monkeypatch):
    """Every GroupNorm of the UNet (spatial ones as ChannelStatsGroupNorm, the temporal layers' through them)."""
    from v2v.speed.group_norm import ChannelStatsGroupNorm, group_norm_by_channel
    from v2v.speed.temporal import TemporalConvFrames, TransformerTemporalFrames

    c = _tiny_with_norm_and_temporal_weights(cache_dir, seed=6)
    keys = set(c.unet.state_dict())
    norms = sum(isinstance(m, torch.nn.GroupNorm) for m in c.unet.modules())
    vae_norms = sum(isinstance(m, torch.nn.GroupNorm) for m in c.vae.modules())
    want = restyle(c, random_video(2), CLIPS, output="latents")
    want_frames = restyle(c, random_video(2), CLIPS)  # through the VAE's decoder too
    apply_speed_settings(c, SpeedSettings(temporal_layers=True, channel_stats=True))
    assert sum(type(m) is ChannelStatsGroupNorm for m in c.unet.modules()) == norms > 0
    assert sum(type(m) is ChannelStatsGroupNorm for m in c.vae.modules()) == vae_norms > 0
    assert set(c.unet.state_dict()) == keys
    got = restyle(c, random_video(2), CLIPS, output="latents")
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)  # other reductions, other rounding
    torch.testing.assert_close(restyle(c, random_video(2), CLIPS), want_frames, rtol=0, atol=1e-4)
    # the temporal layers' norms go through group_norm_by_channel too (every one of them, on every call)
    from v2v.speed import temporal

    calls = []
    monkeypatch.setattr(temporal, "group_norm_by_channel", lambda *a: calls.append(a[1]) or group_norm_by_channel(*a))
    forwards = []
    c.unet.register_forward_hook(lambda *_: forwards.append(1))
    restyle(c, random_video(1), CLIPS[:1], output="latents")
    temporal_norms = sum(4 if isinstance(m, TemporalConvFrames) else 1 for m in c.unet.modules()
                         if isinstance(m, (TemporalConvFrames, TransformerTemporalFrames)))
    assert len(calls) == temporal_norms * len(forwards) > 0 and set(calls) == {random_video(1).shape[1]}  # frames


def test_channel_stats_norms_without_the_temporal_layers(cache_dir):
    # diffusers' own temporal layers hand their GroupNorms 5-D views: those stay torch's, the spatial ones swap
    c = _tiny_with_norm_and_temporal_weights(cache_dir, seed=7)
    want = restyle(c, random_video(2), CLIPS, output="latents")
    apply_speed_settings(c, SpeedSettings(channel_stats=True))
    got = restyle(c, random_video(2), CLIPS, output="latents")
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)


@pytest.mark.parametrize("hw, bias, layout", [((4, 6), True, torch.contiguous_format),
                                              ((1, 1), True, torch.channels_last),
                                              ((5, 3), False, torch.channels_last)])
def test_upsample_conv_is_nearest_upsampling_then_the_3x3_convolution(hw, bias, layout):
    from v2v.speed.upsample import phase_weights, upsample_conv

    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 5, *hw, generator=g, dtype=torch.float64).contiguous(memory_format=layout)
    weight = torch.randn(7, 5, 3, 3, generator=g, dtype=torch.float64)
    b = torch.randn(7, generator=g, dtype=torch.float64) if bias else None
    want = torch.nn.functional.conv2d(torch.nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"), weight,
                                      b, padding=1)
    got = upsample_conv(x, weight, b)
    assert got.shape == want.shape == (2, 7, 2 * hw[0], 2 * hw[1])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    # four 2x2 kernels (16 taps where the 3x3 kernel over four upsampled pixels has 36), each a sum of the 3x3's taps
    k = phase_weights(weight)
    assert k.shape == (28, 5, 2, 2)
    torch.testing.assert_close(k.sum((2, 3)), weight.sum((2, 3)).repeat(4, 1), rtol=0, atol=1e-12)


def test_upsample_phases_compute_the_same_latents(cache_dir):
    from diffusers.models.upsampling import Upsample2D

    from v2v.speed.upsample import PhaseUpsample2D, use_upsample_phases

    c = _tiny_with_norm_and_temporal_weights(cache_dir, seed=8)
    ups, vae_ups = (sum(type(m) is Upsample2D for m in model.modules()) for model in (c.unet, c.vae))
    keys = set(c.unet.state_dict())
    want = restyle(c, random_video(2), CLIPS, output="latents")
    want_frames = restyle(c, random_video(2), CLIPS)
    apply_speed_settings(c, SpeedSettings(upsample_phases=True))
    # the UNet's upsamplers swap; the VAE's stay diffusers' (slower by phase on a GPU)
    assert sum(type(m) is PhaseUpsample2D for m in c.unet.modules()) == ups > 0
    assert sum(type(m) is Upsample2D for m in c.vae.modules()) == vae_ups > 0
    assert set(c.unet.state_dict()) == keys
    torch.testing.assert_close(restyle(c, random_video(2), CLIPS, output="latents"), want, rtol=0, atol=1e-4)
    torch.testing.assert_close(restyle(c, random_video(2), CLIPS), want_frames, rtol=0, atol=1e-4)
    # the VAE decoder's upsamplers by phase (what the switch leaves out) decode the same frames
    assert use_upsample_phases(c.vae) == vae_ups
    torch.testing.assert_close(restyle(c, random_video(2), CLIPS), want_frames, rtol=0, atol=1e-4)
    # an output size other than twice the input's (latents not a multiple of the UNet's upsampling) goes to
    # diffusers' forward; twice the input's, given explicitly, to the phases
    up = next(m for m in c.unet.modules() if type(m) is PhaseUpsample2D)
    x = torch.randn(2, up.channels, 3, 5)
    for size in [(5, 9), (6, 10)]:
        with torch.no_grad():
            got = up(x, size)
            ref = Upsample2D.forward(up, x, size)
        assert got.shape[-2:] == size
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)


def test_temporal_layers_compute_the_same_latents(cache_dir):
    from diffusers.models.resnet import TemporalConvLayer
    from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel

    from v2v.speed.temporal import TemporalConvFrames, TransformerTemporalFrames

    c = _tiny_with_norm_and_temporal_weights(cache_dir, seed=5)
    convs = sum(isinstance(m, TemporalConvLayer) for m in c.unet.modules())
    attns = sum(isinstance(m, TransformerTemporalModel) for m in c.unet.modules())
    keys = set(c.unet.state_dict())
    want = restyle(c, random_video(2), CLIPS, output="latents")
    apply_speed_settings(c, SpeedSettings(temporal_layers=True))
    swapped = [m for m in c.unet.modules() if isinstance(m, TemporalConvFrames)]
    assert len(swapped) == convs > 0 and sum(isinstance(m, TransformerTemporalFrames) for m in c.unet.modules()) \
        == attns > 0
    assert not any(type(m) in (TemporalConvLayer, TransformerTemporalModel) for m in c.unet.modules())
    assert set(c.unet.state_dict()) == keys  # the same parameters under the same names
    assert swapped[0].conv1[-1].weight.is_contiguous(memory_format=torch.channels_last_3d)
    got = restyle(c, random_video(2), CLIPS, output="latents")
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)  # other reductions, other rounding
    with torch.no_grad():  # and a swap that went wrong would move the latents far more than that
        for m in swapped:
            m.conv2[-1].weight.mul_(-1)
    assert (restyle(c, random_video(2), CLIPS, output="latents") - want).abs().max() > 1e-2

