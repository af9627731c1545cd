"""A guided step's two halves sharing the UNet's prefix (v2v.speed.shared_prefix): diffusers' numbers, computed once."""


import dataclasses

import pytest
import torch

from tests.helpers import CLIPS, random_video, small_unet
from v2v.config import SpeedSettings
from v2v.model.loading import load_components
from v2v.model.sampler import restyle
from v2v.speed import apply_speed_settings


@pytest.mark.parametrize("config, hw", [({}, (8, 8)), ({}, (6, 10)),  # 6 x 10: the forwarded upsample size
                                        ({"down_block_types": ("DownBlock3D", "CrossAttnDownBlock3D"),
                                          "up_block_types": ("CrossAttnUpBlock3D", "UpBlock3D")}, (8, 8))])
def test_unet_forward_shares_the_guided_prefix_and_equals_diffusers(config, hw):
    """v2v.speed.shared_prefix.forward: with one embedding per latent, diffusers' forward bit for bit; with a guided step's pairs
    (2B embeddings for B latents), diffusers' forward on the latents stacked twice, its prefix run on B latents."""
    from v2v.speed.shared_prefix import forward

    unet = small_unet(**config)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 5, *hw, generator=g)
    e = torch.randn(4, 77, 32, generator=g)
    t = torch.tensor(500)
    rows, attn_rows = [], []
    unet.conv_in.register_forward_hook(lambda m, i, o: rows.append(i[0].shape[0]))
    first = unet.down_blocks[0]
    shares_attention = hasattr(first, "attentions")  # a CrossAttnDownBlock3D first: its first self-attention too
    if shares_attention:
        block = first.attentions[0].transformer_blocks[0]
        for name in ("attn1", "attn2"):
            getattr(block, name).register_forward_hook(
                lambda m, i, o, name=name: attn_rows.append((name, i[0].shape[0])))
    with torch.no_grad():
        want = unet(torch.cat([x, x]), t, encoder_hidden_states=e).sample
        plain = forward(unet, torch.cat([x, x]), t, e)
        pairs = forward(unet, x, t, e)
        per_latent_t = forward(unet, x, torch.tensor([500, 500]), e)
        to_resnet = forward(unet, x, t, e, share_self_attention=False)
    assert torch.equal(plain, want)
    assert pairs.shape == want.shape == (4, 4, 5, *hw)
    torch.testing.assert_close(pairs, want, rtol=0, atol=1e-5)  # B rows round as 2B rows may not
    torch.testing.assert_close(per_latent_t, pairs, rtol=0, atol=0)
    torch.testing.assert_close(to_resnet, want, rtol=0, atol=1e-5)
    assert rows == [20, 20, 10, 10, 10]  # conv_in saw the 2 latents x 5 frames once where given as pairs
    if shares_attention:  # self-attention on the B latents' frames with pairs, unless told not to; cross on 2B
        assert attn_rows == [("attn1", 20), ("attn2", 20)] * 2 + [("attn1", 10), ("attn2", 20)] * 2 + [
            ("attn1", 20), ("attn2", 20)]
    # the halves really differ (the text embeddings reach them), so the equality above is not of a constant
    assert (pairs[:2] - pairs[2:]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="3 embeddings for 2 latents"):
        forward(unet, x, t, e[:3])


def test_unet_forward_shares_no_transformer_it_cannot_split():
    """A first spatial transformer that `after_self_attention` would not compute as diffusers does (here a chunked
    feed-forward) is run whole on both halves: only the layers before it are shared, the result still diffusers'."""
    from v2v.speed.shared_prefix import forward, splits_at_cross_attention

    unet = small_unet()
    transformer = unet.down_blocks[0].attentions[0]
    assert splits_at_cross_attention(transformer)
    transformer.transformer_blocks[0].set_chunk_feed_forward(2, dim=1)
    assert not splits_at_cross_attention(transformer)
    rows = []
    transformer.transformer_blocks[0].attn1.register_forward_hook(lambda m, i, o: rows.append(i[0].shape[0]))
    g = torch.Generator().manual_seed(2)
    x, e = torch.randn(2, 4, 5, 8, 8, generator=g), torch.randn(4, 77, 32, generator=g)
    with torch.no_grad():
        want = unet(torch.cat([x, x]), torch.tensor(500), encoder_hidden_states=e).sample
        pairs = forward(unet, x, torch.tensor(500), e)
    torch.testing.assert_close(pairs, want, rtol=0, atol=1e-5)
    assert rows == [20, 20]  # the self-attention on both halves' 2 x 2 x 5 frames each time


def test_shared_prefix_computes_the_same_latents_with_the_latents_once(cache_dir):
    from v2v.model.sampler import takes_pairs

    c = load_components("tiny", cache_dir=cache_dir)
    want = restyle(c, random_video(2), CLIPS, output="latents")
    apply_speed_settings(c, SpeedSettings(shared_prefix=True))
    assert takes_pairs(c.unet)
    rows = []
    c.unet.conv_in.register_forward_hook(lambda m, i, o: rows.append(i[0].shape[0]))
    got = restyle(c, random_video(2), CLIPS, output="latents")
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)  # B rows round as 2B rows may not, over 4 steps
    assert set(rows) == {2 * 8}  # 2 clips x 8 frames: the latents once per guided step (2 x 2 x 8 before)
    # a clip without guidance (one embedding per latent, nothing shared): what the plain model gives, bit for bit
    plain = [dataclasses.replace(CLIPS[0], guidance_scale=1.0)]
    torch.testing.assert_close(restyle(c, random_video(1), plain, output="latents"),
                               restyle(load_components("tiny", cache_dir=cache_dir), random_video(1), plain,
                                       output="latents"), rtol=0, atol=0)

