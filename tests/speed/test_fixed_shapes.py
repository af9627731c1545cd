"""The compiled parts' fixed shapes (v2v.speed.fixed_shapes): short calls padded, results cut back."""










import torch

from v2v.speed.fixed_shapes import FixedBatch, PadFrames


def test_fixed_batch_pads_short_calls_and_cuts_the_result(tiny):
    unet = tiny.unet
    seen = []

    def forward(sample, timestep, **kw):  # the real forward, recording the batch it was given
        seen.append(sample.shape[0])
        return unet.forward(sample, timestep, **kw)

    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 4, 8, 8, 8, generator=g)
    e = torch.randn(3, 77, tiny.text_encoder.config.hidden_size, generator=g)
    t = torch.tensor(500)
    fixed = FixedBatch(forward, 8)
    with torch.no_grad():
        want = unet(x, t, encoder_hidden_states=e).sample
        got = fixed(x, t, encoder_hidden_states=e, return_dict=False)[0]
        got_dict = fixed(x, t, encoder_hidden_states=e).sample
        per_row_t = fixed(x, t.repeat(3), encoder_hidden_states=e, return_dict=False)[0]
    assert seen == [8, 8, 8]
    assert got.shape == want.shape == got_dict.shape == per_row_t.shape
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    torch.testing.assert_close(got_dict, want, rtol=0, atol=1e-5)
    torch.testing.assert_close(per_row_t, want, rtol=0, atol=1e-5)
    with torch.no_grad():
        FixedBatch(forward, 2)(x, t, encoder_hidden_states=e)  # larger than its size: passed through whole
    assert seen[-1] == 3


def test_fixed_batch_over_pairs_pads_each_half_and_runs_unguided_calls_as_pairs(tiny):
    """FixedBatch over a forward that takes a guided step's pairs: `size` counts embeddings; one graph shape
    (size / 2 latents, size embeddings) serves short guided calls and unguided ones."""
    from v2v.speed.shared_prefix import PairsForward

    pairs = PairsForward(tiny.unet)
    seen = []

    def forward(sample, timestep, encoder_hidden_states, **kw):  # the pairs forward, recording its shapes
        seen.append((sample.shape[0], encoder_hidden_states.shape[0]))
        return pairs(sample, timestep, encoder_hidden_states, **kw)

    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 4, 8, 8, 8, generator=g)
    e = torch.randn(6, 77, tiny.text_encoder.config.hidden_size, generator=g)
    t = torch.tensor(500)
    fixed = FixedBatch(forward, 8, eager=pairs)
    assert fixed.takes_pairs
    with torch.no_grad():
        want = pairs(x, t, e, return_dict=False)[0]  # (6, ...): 3 uncond then 3 text predictions
        got = fixed(x, t, encoder_hidden_states=e, return_dict=False)[0]
        want_plain = tiny.unet(x[:2], t, encoder_hidden_states=e[3:5]).sample
        got_plain = fixed(x[:2], t, encoder_hidden_states=e[3:5]).sample  # unguided: 2 latents, 2 embeddings
        full = fixed(torch.cat([x, x[:1]]), t, encoder_hidden_states=torch.cat([e[:3], e[:1], e[3:], e[3:4]]),
                     return_dict=False)[0]
    assert seen == [(4, 8), (4, 8), (4, 8)]  # one shape for all three
    assert got.shape == want.shape and got_plain.shape == want_plain.shape and full.shape[0] == 8
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    torch.testing.assert_close(got_plain, want_plain, rtol=0, atol=1e-5)
    torch.testing.assert_close(full[:3], want[:3], rtol=0, atol=1e-5)
    torch.testing.assert_close(full[4:7], want[3:], rtol=0, atol=1e-5)


def test_pad_frames_pads_short_vae_chunks_and_cuts_the_result(tiny):
    decoder = tiny.vae.decoder
    seen = []

    def forward(z):  # the real decoder, recording the frames and layout it was given
        seen.append((z.shape[0], z.is_contiguous()))
        return decoder.forward(z)

    def eager(z):
        seen.append(("eager", z.shape[0]))
        return decoder.forward(z)

    c = tiny.vae.config.latent_channels
    g = torch.Generator().manual_seed(4)
    z = torch.randn(3, c, 8, 8, generator=g)
    strided = torch.randn(8, 8, 8, c, generator=g).permute(0, 3, 1, 2)  # (8, C, 8, 8) as a channels-last view
    pad = PadFrames(forward, 8, eager)
    with torch.no_grad():
        want = decoder(z)
        got = pad(z)
        full = pad(strided)
        pad(torch.randn(9, *z.shape[1:]))  # more frames than the compiled size
        pad(torch.randn(2, c, 4, 4))  # another frame size
    # the compiled forward only ever sees 8 contiguous frames: one graph
    assert seen == [(8, True), (8, True), ("eager", 9), ("eager", 2)]
    assert got.shape == want.shape
    # each frame is decoded alone (per-frame GroupNorm), so the padding frames change nothing
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    torch.testing.assert_close(full, decoder(strided), rtol=0, atol=1e-5)

