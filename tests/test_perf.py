"""The speed switches on CPU: each computes what the plain path computes, to float rounding.

The compiled path is exercised for real (torch.compile with inductor, on the tiny model): a restyle actor
compiles once, serves a short last batch without a second compile, and a second actor start loads the
kernels from the persistent cache. GPU figures for the same switches are in benchmarks/RESULTS.md.
"""

import contextlib
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from v2v.bench import actor_rates, kernel_kinds, profiler_kernels
from v2v.models import load_components
from v2v.perf import FixedBatch, PadFrames, UNetCall, apply_perf_settings
from v2v.sampler import ClipSettings, restyle

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _video(b, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (b, 8, 64, 64, 3), dtype=np.uint8))


CLIPS = [ClipSettings("a red fox", seed=1, num_inference_steps=4), ClipSettings("ink", seed=2, num_inference_steps=4)]


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


def _small_unet(**config):
    """A random UNet3D of the tiny model's kind (the tiny one has one layer per block; zeroscope has two)."""
    from diffusers import UNet3DConditionModel

    from v2v.bench import unzero_temporal_layers

    torch.manual_seed(0)
    unet = UNet3DConditionModel(**{"block_out_channels": (32, 64), "layers_per_block": 2, "cross_attention_dim": 32,
                                   "attention_head_dim": 8, "norm_num_groups": 8,
                                   "down_block_types": ("CrossAttnDownBlock3D", "DownBlock3D"),
                                   "up_block_types": ("UpBlock3D", "CrossAttnUpBlock3D"), **config}).eval()
    unzero_temporal_layers(unet)  # diffusers starts them as identities: make them compute something
    return unet


@pytest.mark.parametrize("config, hw", [({}, (8, 8)), ({}, (6, 10)),  # 6 x 10: the forwarded upsample size
                                        ({"down_block_types": ("DownBlock3D", "CrossAttnDownBlock3D"),
                                          "up_block_types": ("CrossAttnUpBlock3D", "UpBlock3D")}, (8, 8))])
def test_unet_forward_shares_the_guided_prefix_and_equals_diffusers(config, hw):
    """v2v.unet.forward: with one embedding per latent, diffusers' forward bit for bit; with a guided step's pairs
    (2B embeddings for B latents), diffusers' forward on the latents stacked twice, its prefix run on B latents."""
    from v2v.unet import forward

    unet = _small_unet(**config)
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
    from v2v.unet import forward, splits_at_cross_attention

    unet = _small_unet()
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
    from v2v.unet import takes_pairs

    c = load_components("tiny", cache_dir=cache_dir)
    want = restyle(c, _video(2), CLIPS, output="latents")
    apply_perf_settings(c, shared_prefix=True)
    assert takes_pairs(c.unet)
    rows = []
    c.unet.conv_in.register_forward_hook(lambda m, i, o: rows.append(i[0].shape[0]))
    got = restyle(c, _video(2), CLIPS, output="latents")
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)  # B rows round as 2B rows may not, over 4 steps
    assert set(rows) == {2 * 8}  # 2 clips x 8 frames: the latents once per guided step (2 x 2 x 8 before)
    # a clip without guidance (one embedding per latent, nothing shared): what the plain model gives, bit for bit
    plain = [dataclasses.replace(CLIPS[0], guidance_scale=1.0)]
    torch.testing.assert_close(restyle(c, _video(1), plain, output="latents"),
                               restyle(load_components("tiny", cache_dir=cache_dir), _video(1), plain,
                                       output="latents"), rtol=0, atol=0)


def test_fixed_batch_over_pairs_pads_each_half_and_runs_unguided_calls_as_pairs(tiny):
    """FixedBatch over a forward that takes a guided step's pairs: `size` counts embeddings; one graph shape
    (size / 2 latents, size embeddings) serves short guided calls and unguided ones."""
    from v2v.unet import PairsForward

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


def test_kernel_kinds_sort_profiler_kernel_names():
    kinds = kernel_kinds([
        ("triton_red_fused_add_clone_native_group_norm_permute_12", 1.0),
        ("triton_poi_fused_gelu_mul_split_view_33", 2.0),
        ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3_64x64x64", 4.0),  # not a conv
        ("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize128x256x64", 8.0),
        ("void cudnn::engines_precompiled::nchwToNhwcKernel<__nv_bfloat16, __nv_bfloat16, float>", 16.0),
        ("nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_bias_TNT", 32.0),
        ("void at::native::vectorized_elementwise_kernel<4, at::native::GeluCUDAKernelImpl>", 64.0),
        ("void at::native::(anonymous namespace)::RowwiseMomentsCUDAKernel<c10::BFloat16>", 0.5),
        ("some_new_kernel", 128.0),
    ])
    assert kinds == {"generated: reduction (norm + fused elementwise)": 1.0, "generated: pointwise": 2.0,
                     "attention": 4.0, "convolution": 8.0, "layout conversion": 16.0, "matmul": 32.0,
                     "elementwise (eager)": 64.0, "norm (eager)": 0.5, "other": 128.0}


def test_profiler_kernels_lists_what_a_profile_ran_slowest_first():
    a, b = torch.randn(256, 256), torch.randn(64, 64)
    with torch.profiler.profile() as prof:
        for _ in range(3):
            a @ a
        b.relu()
    kernels = profiler_kernels(prof, cuda=False)  # on a CPU run: the operators
    by_name = {name: (secs, calls) for name, secs, calls in kernels}
    assert by_name["aten::mm"][1] == 3 and by_name["aten::relu"][1] == 1
    assert all(secs > 0 for _, secs, _ in kernels)
    assert [secs for _, secs, _ in kernels] == sorted((secs for _, secs, _ in kernels), reverse=True)
    assert profiler_kernels(prof, cuda=True) == []  # no GPU kernels ran


def test_benchmark_falls_back_to_what_the_job_runs():
    """With no sampler row to take the fastest from, the attention, start-up and Ray job sections measure the job's
    own GPU configuration (JobConfig's defaults as `resources` resolves them on a GPU cluster), or float32 on CPU."""
    from jobs.benchmark import JOB_GPU_VARIANT, _section_variant, _variant_cfg
    from v2v.config import JobConfig, resources

    assert _section_variant({"variant": "float16", "batch": 2}, cuda=True) == ("float16", 2)
    assert _section_variant(None, cuda=True) == (JOB_GPU_VARIANT, 4)
    assert _section_variant(None, cuda=False) == ("float32", 1)
    assert _section_variant({"variant": "float16", "batch": 2}, True, "bfloat16", None) == ("bfloat16", 2)
    dtype, switches = _variant_cfg(JOB_GPU_VARIANT)
    job = resources(JobConfig(manifest="m", output="o"), {"CPU": 8, "GPU": 1})
    assert dtype == job.dtype
    resolved = [k for k in switches if hasattr(job, k)]  # the switches `resources` decides
    assert {k: getattr(job, k) for k in resolved} == {k: switches[k] for k in resolved}
    assert (JobConfig.channels_last, JobConfig.fuse_qkv) == (switches["channels_last"], switches["fuse_qkv"])


def test_benchmark_loads_give_each_unet_its_own_forward_code(cache_dir):
    """Dynamo keeps compiled graphs per code object and guards neither hooks nor inductor settings, so every model
    the benchmark loads gets its own copy of the UNet's forward (else two variants could share one graph)."""
    import torch

    from jobs.benchmark import _load
    from v2v.models import resolve_model

    folder = str(resolve_model("tiny"))
    a, b = _load(folder, "cpu", "float32"), _load(folder, "cpu", "float32")
    codes = [a.unet.forward.__func__.__code__, b.unet.forward.__func__.__code__, type(a.unet).forward.__code__]
    assert len({id(c) for c in codes}) == 3  # distinct objects (code objects compare equal by content)
    x = torch.randn(2, a.unet.config.in_channels, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    e = torch.randn(2, 77, a.text_encoder.config.hidden_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # the copy computes what the class's forward does
        got = a.unet(x, 10, encoder_hidden_states=e, return_dict=False)[0]
        want = type(a.unet).forward(a.unet, x, 10, encoder_hidden_states=e, return_dict=False)[0]
    assert torch.equal(got, want)


def test_benchmark_unet_step_is_one_guided_step_of_the_variant(cache_dir):
    from jobs.benchmark import _load, _step_inputs, unet_step
    from v2v.group_norm import ChannelStatsGroupNorm
    from v2v.models import resolve_model

    folder = str(resolve_model("tiny"))
    plain = _load(folder, "cpu", "float32")
    x, e, t = _step_inputs(plain, 2)
    assert torch.equal(x[:2], x[2:])  # a guided step: the same latents for both halves
    with torch.no_grad():
        want = plain.unet(x, t, encoder_hidden_states=e, return_dict=False)[0]
    assert want.shape[0] == 4  # cond + uncond latents for 2 clips
    for variant in ("float32+chanstats", "float32+chanstats+prefix"):
        c, step = unet_step(folder, "cpu", variant, batch=2)
        assert any(isinstance(m, ChannelStatsGroupNorm) for m in c.unet.modules())  # the variant's switches
        assert _step_inputs(c, 2)[0].shape[0] == (2 if variant.endswith("prefix") else 4)  # latents once, or twice
        torch.testing.assert_close(step(), want, rtol=0, atol=1e-4)


def test_benchmark_model_folder_builds_the_random_model_once_and_resolves_the_rest(tmp_path):
    from jobs.benchmark import model_folder

    kept = tmp_path / "random-576w"
    kept.mkdir()
    (kept / "model_index.json").write_text("{}")  # an earlier run's model: reused, not rebuilt
    assert model_folder("random-576w", str(tmp_path), "cpu") == (str(kept), None)
    folder, built = model_folder("tiny", str(tmp_path / "unused"), "cpu")
    assert built is None and (Path(folder) / "model_index.json").exists() and not (tmp_path / "unused").exists()


def test_benchmark_variants_name_config_switches():
    from jobs.benchmark import _variant_cfg

    off = {"channels_last": False, "fuse_qkv": False, "temporal_layers": False, "frame_attention": False,
           "channel_stats": False, "shared_prefix": False, "upsample_phases": False, "cuda_graphs": False,
           "compile": False, "compile_aot": False, "precompile": False, "compile_vae": False, "cudnn_benchmark": True}
    assert _variant_cfg("bfloat16+compile+vae") == ("bfloat16", {**off, "compile": True, "compile_vae": True})
    assert _variant_cfg("float16")[1] == off
    # pre and aot are ways of compiling: each implies compile
    assert _variant_cfg("bfloat16+aot+vae")[1] == {**off, "compile": True, "compile_aot": True, "compile_vae": True}
    assert _variant_cfg("bfloat16+pre+vae")[1] == {**off, "compile": True, "precompile": True, "compile_vae": True}
    assert _variant_cfg("bfloat16+temporal+compile")[1] == {**off, "temporal_layers": True, "compile": True}
    assert _variant_cfg("bfloat16+temporal+frameattn")[1] == {**off, "temporal_layers": True,
                                                              "frame_attention": True}
    assert _variant_cfg("bfloat16+chanstats")[1] == {**off, "channel_stats": True}
    assert _variant_cfg("bfloat16+prefix")[1] == {**off, "shared_prefix": True}
    assert _variant_cfg("bfloat16+phaseup")[1] == {**off, "upsample_phases": True}
    assert _variant_cfg("bfloat16+graph+compile")[1] == {**off, "cuda_graphs": True, "compile": True}
    assert _variant_cfg("bfloat16+compile+nobench")[1] == {**off, "compile": True, "cudnn_benchmark": False}
    for bad, says in [("bfloat16+turbo", "turbo"), ("bfloat16+vae", "vae needs compile"),
                      ("bfloat16+pre+aot", "pick one")]:
        try:
            _variant_cfg(bad)
        except ValueError as e:
            assert says in str(e) and bad in str(e)
        else:
            raise AssertionError(f"{bad} was accepted")


def test_fused_projections_compute_the_same_latents(cache_dir):
    c = load_components("tiny", cache_dir=cache_dir)
    want = restyle(c, _video(2), CLIPS, output="latents")
    apply_perf_settings(c, fuse_qkv=True)
    assert any(hasattr(m, "to_qkv") or hasattr(m, "to_kv") for m in c.unet.modules())  # really fused
    got = restyle(c, _video(2), CLIPS, output="latents")
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_channels_last_computes_the_same_latents(cache_dir):
    c = load_components("tiny", cache_dir=cache_dir)
    want = restyle(c, _video(2), CLIPS, output="latents")
    apply_perf_settings(c, channels_last=True)
    conv = next(m for m in c.unet.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    got = restyle(c, _video(2), CLIPS, output="latents")
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)  # other convolution algorithms, other rounding


@pytest.mark.parametrize("affine", [True, False])
def test_group_norm_over_frames_is_groupnorm_over_the_5d_clip(affine):
    from v2v.temporal import group_norm_over_frames

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
    from v2v.group_norm import group_norm_by_channel

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
    had not laid out yet (the up blocks' skip concatenations) to NCHW on the GPU (RESULTS.md, twenty-third section):
    the input's only uses in the traced graph are the statistics and the apply, on x as it is."""
    from torch.fx.experimental.proxy_tensor import make_fx

    from v2v.group_norm import group_norm_by_channel

    norm = torch.nn.GroupNorm(4, 16).bfloat16()
    x = torch.randn(2 * frames, 16, 3, 5).bfloat16().contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        graph = make_fx(lambda t: group_norm_by_channel(t, frames, norm))(x).graph
    (placeholder,) = [n for n in graph.nodes if n.op == "placeholder"]
    uses = {str(n.target) for n in placeholder.users}
    assert uses and not any(("view" in u or "reshape" in u or "as_strided" in u) for u in uses), uses
    # what the traced graph computes from x alone is the norm: not a graph that ignores part of it
    assert any("var_mean" in str(n.target) for n in graph.nodes)


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


def test_channel_stats_norms_compute_the_same_latents(cache_dir, monkeypatch):
    """Every GroupNorm of the UNet (spatial ones as ChannelStatsGroupNorm, the temporal layers' through them)."""
    from v2v.group_norm import ChannelStatsGroupNorm, group_norm_by_channel
    from v2v.temporal import TemporalConvFrames, TransformerTemporalFrames

    c = _tiny_with_norm_and_temporal_weights(cache_dir, seed=6)
    keys = set(c.unet.state_dict())
    norms = sum(isinstance(m, torch.nn.GroupNorm) for m in c.unet.modules())
    vae_norms = sum(isinstance(m, torch.nn.GroupNorm) for m in c.vae.modules())
    want = restyle(c, _video(2), CLIPS, output="latents")
    want_frames = restyle(c, _video(2), CLIPS)  # through the VAE's decoder too
    apply_perf_settings(c, temporal_layers=True, channel_stats=True)
    assert sum(type(m) is ChannelStatsGroupNorm for m in c.unet.modules()) == norms > 0
    assert sum(type(m) is ChannelStatsGroupNorm for m in c.vae.modules()) == vae_norms > 0
    assert set(c.unet.state_dict()) == keys
    got = restyle(c, _video(2), CLIPS, output="latents")
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)  # other reductions, other rounding
    torch.testing.assert_close(restyle(c, _video(2), CLIPS), want_frames, rtol=0, atol=1e-4)
    # the temporal layers' norms go through group_norm_by_channel too (every one of them, on every call)
    from v2v import temporal

    calls = []
    monkeypatch.setattr(temporal, "group_norm_by_channel", lambda *a: calls.append(a[1]) or group_norm_by_channel(*a))
    forwards = []
    c.unet.register_forward_hook(lambda *_: forwards.append(1))
    restyle(c, _video(1), CLIPS[:1], output="latents")
    temporal_norms = sum(4 if isinstance(m, TemporalConvFrames) else 1 for m in c.unet.modules()
                         if isinstance(m, (TemporalConvFrames, TransformerTemporalFrames)))
    assert len(calls) == temporal_norms * len(forwards) > 0 and set(calls) == {_video(1).shape[1]}  # frames


def test_channel_stats_norms_without_the_temporal_layers(cache_dir):
    # diffusers' own temporal layers hand their GroupNorms 5-D views: those stay torch's, the spatial ones swap
    c = _tiny_with_norm_and_temporal_weights(cache_dir, seed=7)
    want = restyle(c, _video(2), CLIPS, output="latents")
    apply_perf_settings(c, channel_stats=True)
    got = restyle(c, _video(2), CLIPS, output="latents")
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)


@pytest.mark.parametrize("hw, bias, layout", [((4, 6), True, torch.contiguous_format),
                                              ((1, 1), True, torch.channels_last),
                                              ((5, 3), False, torch.channels_last)])
def test_upsample_conv_is_nearest_upsampling_then_the_3x3_convolution(hw, bias, layout):
    from v2v.upsample import phase_weights, upsample_conv

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

    from v2v.upsample import PhaseUpsample2D, use_upsample_phases

    c = _tiny_with_norm_and_temporal_weights(cache_dir, seed=8)
    ups, vae_ups = (sum(type(m) is Upsample2D for m in model.modules()) for model in (c.unet, c.vae))
    keys = set(c.unet.state_dict())
    want = restyle(c, _video(2), CLIPS, output="latents")
    want_frames = restyle(c, _video(2), CLIPS)
    apply_perf_settings(c, upsample_phases=True)
    # the UNet's upsamplers swap; the VAE's stay diffusers' (slower by phase on a GPU)
    assert sum(type(m) is PhaseUpsample2D for m in c.unet.modules()) == ups > 0
    assert sum(type(m) is Upsample2D for m in c.vae.modules()) == vae_ups > 0
    assert set(c.unet.state_dict()) == keys
    torch.testing.assert_close(restyle(c, _video(2), CLIPS, output="latents"), want, rtol=0, atol=1e-4)
    torch.testing.assert_close(restyle(c, _video(2), CLIPS), want_frames, rtol=0, atol=1e-4)
    # the VAE decoder's upsamplers by phase (what the switch leaves out) decode the same frames
    assert use_upsample_phases(c.vae) == vae_ups
    torch.testing.assert_close(restyle(c, _video(2), CLIPS), want_frames, rtol=0, atol=1e-4)
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

    from v2v.temporal import TemporalConvFrames, TransformerTemporalFrames

    c = _tiny_with_norm_and_temporal_weights(cache_dir, seed=5)
    convs = sum(isinstance(m, TemporalConvLayer) for m in c.unet.modules())
    attns = sum(isinstance(m, TransformerTemporalModel) for m in c.unet.modules())
    keys = set(c.unet.state_dict())
    want = restyle(c, _video(2), CLIPS, output="latents")
    apply_perf_settings(c, temporal_layers=True)
    swapped = [m for m in c.unet.modules() if isinstance(m, TemporalConvFrames)]
    assert len(swapped) == convs > 0 and sum(isinstance(m, TransformerTemporalFrames) for m in c.unet.modules()) \
        == attns > 0
    assert not any(type(m) in (TemporalConvLayer, TransformerTemporalModel) for m in c.unet.modules())
    assert set(c.unet.state_dict()) == keys  # the same parameters under the same names
    assert swapped[0].conv1[-1].weight.is_contiguous(memory_format=torch.channels_last_3d)
    got = restyle(c, _video(2), CLIPS, output="latents")
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)  # other reductions, other rounding
    with torch.no_grad():  # and a swap that went wrong would move the latents far more than that
        for m in swapped:
            m.conv2[-1].weight.mul_(-1)
    assert (restyle(c, _video(2), CLIPS, output="latents") - want).abs().max() > 1e-2


# The child builds the job's restyle actor with --compile (which compiles the UNet and the VAE's encoder and
# decoder and warms them up in its constructor), restyles a full batch of 2 clips, a short batch of 1 and a
# shorter clip, and reports outputs, torch's compile counters and, with --compile-aot or --precompile, what each
# part's stored compiled form did. Frame attention comes with compile by default: on the CPU its op is SDPA, traced
# into the graphs.
_ACTOR = """
import dataclasses, json, sys, time
import numpy as np, torch
from torch._dynamo.utils import counters
from v2v.config import JobConfig, resources
from v2v.sampler import ClipSettings, restyle
from v2v.stages import Restyle
from v2v.unet import takes_pairs

t0 = time.perf_counter()
cfg = JobConfig(manifest="-", output="-", batch_size=2, compile=True, batch_invariant=False,
                compile_aot=sys.argv[2] == "aot", precompile=sys.argv[2] == "pre",
                shared_compile_cache=sys.argv[3] or None)
actor = Restyle(cfg, resources(cfg, {"CPU": 2}))
ready_s = time.perf_counter() - t0
graphs_after_start = counters["stats"]["unique_graphs"]
video = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 8, 64, 64, 3), dtype=np.uint8))
clips = [ClipSettings("a red fox", seed=1, num_inference_steps=4), ClipSettings("ink", seed=2, num_inference_steps=4)]
two = restyle(actor.components, video, clips, output="latents")
one = restyle(actor.components, video[1:], clips[1:], output="latents")
short = restyle(actor.components, video[1:, :5], clips[1:], output="latents")  # a shorter last clip: eager
frames = restyle(actor.components, video, clips)  # through the compiled VAE decoder
plain = [dataclasses.replace(c, guidance_scale=1.0) for c in clips]
unguided = restyle(actor.components, video, plain, output="latents")  # no guidance: the same compiled graph
np.save(sys.argv[1], torch.cat([two, one, unguided]).numpy())
np.save(sys.argv[1] + ".frames.npy", frames.numpy())
np.save(sys.argv[1] + ".short.npy", short.numpy())
print("RESULT " + json.dumps({"ready_s": ready_s, "start_s": actor.start_s, "report": actor.start_report(),
                              "graphs_after_start": graphs_after_start,
                              "takes_pairs": takes_pairs(actor.components.unet),
                              "graphs_at_end": counters["stats"]["unique_graphs"],
                              "cache_hits": counters["inductor"]["fxgraph_cache_hit"],
                              "cache_misses": counters["inductor"]["fxgraph_cache_miss"],
                              "temporal": sorted({type(m).__name__ for m in actor.components.unet.modules()
                                                  if "Temporal" in type(m).__name__}),
                              "frame_attention": sum(type(getattr(m, "processor", None)).__name__
                                                     == "FrameAttnProcessor" for m in actor.components.unet.modules()),
                              "norms": sorted({type(m).__name__ for m in actor.components.unet.modules()
                                               if isinstance(m, torch.nn.GroupNorm)}),
                              "upsamplers": [sorted({type(m).__name__ for m in model.modules()
                                                     if "Upsample" in type(m).__name__})
                                             for model in (actor.components.unet, actor.components.vae)],
                              "aot": {k: {"built": len(a.built), "fetched": len(a.fetched), "loaded": len(a.runners),
                                          "failed": a.failed} for k, a in actor.aot.items()}}))
"""


def _start_actor(tmp_path, name, cache, mode="jit", shared=""):
    out = tmp_path / f"{name}.npy"
    env = {**os.environ, "V2V_COMPILE_CACHE": str(cache), "TORCHINDUCTOR_COMPILE_THREADS": "1"}
    p = subprocess.run([sys.executable, "-c", _ACTOR, str(out), mode, shared], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    line = next(ln for ln in p.stdout.splitlines() if ln.startswith("RESULT "))
    return (json.loads(line[7:]), torch.from_numpy(np.load(out)), torch.from_numpy(np.load(f"{out}.short.npy")),
            torch.from_numpy(np.load(f"{out}.frames.npy")))


def _assert_matches_eager(tiny, got, short, frames):
    """What a compiled actor restyled (see _ACTOR) against the eager tiny model on the same inputs."""
    video = _video(2)
    plain = [dataclasses.replace(c, guidance_scale=1.0) for c in CLIPS]
    want = torch.cat([restyle(tiny, video, CLIPS, output="latents"),
                      restyle(tiny, video[1:], CLIPS[1:], output="latents"),
                      restyle(tiny, video, plain, output="latents")])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)  # inductor's fused kernels round differently
    torch.testing.assert_close(short, restyle(tiny, video[1:, :5], CLIPS[1:], output="latents"), rtol=0, atol=1e-4)
    torch.testing.assert_close(frames, restyle(tiny, video, CLIPS), rtol=0, atol=1e-3)


def test_compiled_actor_matches_eager_compiles_once_and_restarts_from_the_cache(tiny, tmp_path):
    cache = tmp_path / "inductor"
    first, got, short, frames = _start_actor(tmp_path, "first", cache)
    # three graphs (UNet, VAE encoder, VAE decoder), compiled in the constructor; the 1-clip batch was padded
    # onto the UNet's, the 5-frame clip's UNet calls ran eager and its VAE chunks were padded: none compiled again
    assert first["graphs_after_start"] == 3 and first["graphs_at_end"] == 3, first
    assert first["aot"] == {}, first
    # compile brings the temporal layers of v2v.temporal with it (the eager model below keeps diffusers')
    assert first["temporal"] == ["TemporalConvFrames", "TransformerTemporalFrames"], first
    assert first["frame_attention"] > 0, first  # the default (on with compile) reached the model
    assert first["norms"] == ["ChannelStatsGroupNorm"], first  # so did per-channel GroupNorm statistics
    # and the UNet's upsamplers by output phase (the VAE's stay diffusers')
    assert first["upsamplers"] == [["PhaseUpsample2D"], ["Upsample2D"]], first
    assert first["takes_pairs"], first  # and the guided step's shared prefix (the unguided batch: no new graph)
    assert first["cache_misses"] >= 1 and any(cache.iterdir())
    # the start's phases, each timed once: they add up to (at most) the whole start
    assert list(first["start_s"]) == ["imports", "load", "switches", "warm_up_unet", "warm_up_vae_encoder",
                                      "warm_up_vae_decoder", "fingerprint"], first
    assert 0 < sum(first["start_s"].values()) <= first["ready_s"]
    _assert_matches_eager(tiny, got, short, frames)

    second, again, _, _ = _start_actor(tmp_path, "second", cache)
    assert second["cache_hits"] >= 1 and second["cache_misses"] == 0, second  # no kernel compiled again
    assert second["ready_s"] < first["ready_s"], (first, second)
    torch.testing.assert_close(again, got, rtol=0, atol=1e-6)


# The two stored forms of the compiled parts: AOTInductor packages (--compile-aot; exported, so no dynamo graph
# ever) and torch.compile's saved functions (the default; dynamo traces each part on the first start only). Each
# start is told of a shared compile cache on a real S3-compatible server, which the first start fills.
@pytest.mark.parametrize("mode, folder, pattern, graphs_first", [("aot", "aot", "*.pt2", 0),
                                                                 ("pre", "precompiled", "*.dynamo", 3)])
def test_stored_compiled_actor_matches_eager_and_its_later_starts_trace_nothing(tiny, tmp_path, s3_endpoint, mode,
                                                                                folder, pattern, graphs_first):
    import tarfile

    import s3fs

    s3 = s3fs.S3FileSystem()
    s3.mkdir(f"v2v-compile-{mode}")
    shared = f"s3://v2v-compile-{mode}/cache"
    cache = tmp_path / "compiled"
    first, got, short, frames = _start_actor(tmp_path, "first", cache, mode, shared)
    # each part compiled once at start and stored in the cache, and put in the shared cache
    built = {"built": 1, "fetched": 0, "loaded": 1, "failed": None}
    assert first["aot"] == {"unet": built, "vae_encoder": built, "vae_decoder": built}, first
    assert first["graphs_after_start"] == first["graphs_at_end"] == graphs_first, first  # none mid-job
    assert first["frame_attention"] > 0, first  # compiled with the op in the UNet
    assert len(list((cache / folder).glob(pattern))) == 3
    archives = s3.ls(shared)
    assert sorted(os.path.basename(a).split("-")[0] for a in archives) == ["unet", "vae_decoder", "vae_encoder"]
    assert ("stored parts: unet built" in first["report"]
            and "shared compile cache: stored 3 archives" in first["report"]), first
    _assert_matches_eager(tiny, got, short, frames)

    second, again, _, _ = _start_actor(tmp_path, "second", cache, mode, shared)
    loaded = {"built": 0, "fetched": 0, "loaded": 1, "failed": None}
    assert second["aot"] == {"unet": loaded, "vae_encoder": loaded, "vae_decoder": loaded}, second
    assert second["graphs_at_end"] == 0, second  # dynamo traced nothing: the stored parts ran
    assert second["start_s"]["warm_up_unet"] < first["start_s"]["warm_up_unet"] / 5, (first, second)
    torch.testing.assert_close(again, got, rtol=0, atol=0)  # the same kernels on the same weights

    # another machine (an empty compile cache of its own): its parts come from the shared cache, nothing compiles
    other = tmp_path / "other-machine"
    third, elsewhere, _, _ = _start_actor(tmp_path, "third", other, mode, shared)
    fetched = {"built": 0, "fetched": 1, "loaded": 1, "failed": None}
    assert third["aot"] == {"unet": fetched, "vae_encoder": fetched, "vae_decoder": fetched}, third
    assert third["graphs_at_end"] == 0, third
    assert "shared compile cache: fetched 3 archives" in third["report"], third
    assert third["start_s"]["warm_up_unet"] < first["start_s"]["warm_up_unet"] / 5, (first, third)
    torch.testing.assert_close(elsewhere, got, rtol=0, atol=0)
    # what it ran came whole from the archives: its cache holds their files and nothing it wrote itself
    held = set()
    for a in archives:
        with s3.open(a, "rb") as f, tarfile.open(fileobj=f) as tar:
            held |= set(tar.getnames())
    from v2v.shared_cache import SharedCache

    assert SharedCache(shared, other).files() == held


class _SmallHead(torch.nn.Module):
    """A 1x1 convolution to 4 channels: inductor writes a bias of 4 values into its kernel as literals."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return torch.nn.functional.silu(self.conv(x))


# A compiled part's two stored forms (v2v.aot): AOTInductor packages, torch.compile's saved functions.
STORED_FORMS = [("AotForward", ".pt2"), ("PrecompiledForward", ".dynamo")]


def _head_part(form: str, head, folder, shared=None):
    """`head` as a stored part of `form` ("AotForward" or "PrecompiledForward") kept in `folder`, no fallback.
    shared: a v2v.shared_cache.SharedCache for it."""
    import v2v.aot

    return getattr(v2v.aot, form)(head, v2v.aot.part_tensors, "head", {"model": "a"}, folder, fallback=None,
                                  shared=shared)


def _stored_head(form: str, suffix: str, tmp_path, shared=None):
    """A small head, an input, the head as a stored part of `form`, its first call's output (which stored it) and
    the file it stored. shared: a v2v.shared_cache.SharedCache for the part."""
    torch.manual_seed(0)
    head = _SmallHead().eval()
    x = torch.randn(2, 8, 4, 4)
    part = _head_part(form, head, tmp_path, shared)
    with torch.no_grad():
        first = part(x)
    (saved,) = tmp_path.glob(f"head-*{suffix}")
    return head, x, part, first, saved


@contextlib.contextmanager
def _machine(tmp_path, shared_uri: str):
    """Within: as on another machine, inductor's kernels go to a compile cache of their own (none of this process's
    compiled kernels kept in memory). Yields the folder for saved functions (`precompiled`, as the job puts them)
    and the machine's view of the shared cache."""
    from torch._inductor.utils import fresh_cache

    from v2v.shared_cache import SharedCache

    with fresh_cache(dir=str(tmp_path), delete=False):
        root = Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
        yield root / "precompiled", SharedCache(shared_uri, root)


def _members(archive) -> list[str]:
    import tarfile

    with tarfile.open(archive) as tar:
        return sorted(tar.getnames())


def test_shared_cache_archive_is_completed_by_a_machine_that_fetched_part_of_it(tmp_path):
    """A machine whose cache already held some kernels puts an archive without them; the next machine fetches it,
    compiles what it lacked and puts the archive back whole, so the machine after that compiles nothing."""
    import tarfile

    shared = tmp_path / "shared"
    with _machine(tmp_path, str(shared)) as (folder, cache):
        head, x, part, first, saved = _stored_head("PrecompiledForward", ".dynamo", folder, cache)
        assert sorted(cache.files()) == _members(next(shared.glob("head-*.tar")))  # all it compiled for the part
    (archive,) = shared.glob("head-*.tar")
    whole = _members(archive)
    assert f"precompiled/{saved.name}" in whole and len(whole) > 1  # the saved function and its kernels
    with tarfile.open(archive) as tar, tarfile.open(tmp_path / "part.tar", "w") as cut:  # the function alone
        m = tar.getmember(f"precompiled/{saved.name}")
        cut.addfile(m, tar.extractfile(m))
    os.replace(tmp_path / "part.tar", archive)

    with _machine(tmp_path, str(shared)) as (folder, cache), torch.no_grad():
        b = _head_part("PrecompiledForward", head, folder, cache)
        torch.testing.assert_close(b(x), first, rtol=0, atol=0)
    assert b.fetched and not b.built
    completed = _members(archive)  # put back with the kernels machine b compiled for it
    assert len(completed) > 1 and f"precompiled/{saved.name}" in completed

    with _machine(tmp_path, str(shared)) as (folder, cache), torch.no_grad():
        c = _head_part("PrecompiledForward", head, folder, cache)
        torch.testing.assert_close(c(x), first, rtol=0, atol=0)
        assert c.fetched and sorted(cache.files()) == completed  # it wrote nothing of its own: nothing compiled
    assert _members(archive) == completed  # and, having compiled nothing, put nothing back


def _escaping_archive(path):
    import io
    import tarfile

    with tarfile.open(path, "w") as tar:
        m = tarfile.TarInfo("../outside.py")
        m.size = 4
        tar.addfile(m, io.BytesIO(b"boom"))


@pytest.mark.parametrize("bad", ["cut short", "escapes the cache"])
def test_shared_cache_archive_that_cannot_be_used_costs_a_warning_and_a_compile(tmp_path, caplog, bad):
    shared = tmp_path / "shared"
    with _machine(tmp_path, str(shared)) as (folder, cache):
        head, x, _, first, _ = _stored_head("PrecompiledForward", ".dynamo", folder, cache)
    (archive,) = shared.glob("head-*.tar")
    if bad == "cut short":  # an interrupted copy into a shared folder
        archive.write_bytes(archive.read_bytes()[:3000])
    else:
        _escaping_archive(archive)
    with _machine(tmp_path, str(shared)) as (folder, cache), torch.no_grad(), caplog.at_level("WARNING"):
        b = _head_part("PrecompiledForward", head, folder, cache)
        torch.testing.assert_close(b(x), first, rtol=0, atol=0)
        assert _members(archive) == sorted(cache.files())  # replaced by what machine b built
    assert archive.name in caplog.text and "compiling here instead" in caplog.text
    assert b.built and not b.fetched and not (tmp_path / "outside.py").exists()


@pytest.mark.parametrize("form, suffix", STORED_FORMS)
def test_stored_part_runs_on_the_module_weights_and_is_keyed_by_the_model(tmp_path, form, suffix):
    import v2v.aot
    from v2v.aot import part_tensors

    stored = getattr(v2v.aot, form)
    head, x, part, first, saved = _stored_head(form, suffix, tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(first, head(x))
        # it reads the module's own weight tensor (shared, not a copy): an in-place update shows
        head.conv.weight.mul_(2)
        torch.testing.assert_close(part(x), head(x))
        # a later start with the same key loads what was stored instead of compiling
        again = _head_part(form, head, tmp_path)
        torch.testing.assert_close(again(x), head(x))
        assert not again.built and again.failed is None
        # other weights (a fine-tune of the same architecture) are another model, another input shape another
        # call: each its own file
        head.conv.bias.add_(1)
        other = stored(head, part_tensors, "head", {"model": "b"}, tmp_path, fallback=None)
        torch.testing.assert_close(other(x), head(x))
        torch.testing.assert_close(other(x[:1]), head(x[:1]))
    assert len(other.built) == 2 and len(list(tmp_path.glob(f"head-*{suffix}"))) == 3 and saved.exists()
    # readable like any file made here (the lock beside it follows the umask), not torch's private 0600
    assert saved.stat().st_mode & 0o777 == saved.with_suffix(".lock").stat().st_mode & 0o777 != 0o600


class _DataDependent(torch.nn.Module):
    def forward(self, x):
        return x * 2 if x.sum() > 0 else x * 3  # a branch on values: neither export nor a whole-graph trace takes it


@pytest.mark.parametrize("form, suffix", STORED_FORMS)
def test_stored_part_that_cannot_be_traced_whole_runs_through_the_fallback(tmp_path, caplog, form, suffix):
    import v2v.aot
    from v2v.aot import part_tensors

    m = _DataDependent()
    part = getattr(v2v.aot, form)(m, part_tensors, "branchy", {"model": "a"}, tmp_path, fallback=m.forward)
    x = torch.ones(3)
    with caplog.at_level("WARNING"):
        assert torch.equal(part(x), x * 2) and torch.equal(part(-x), -x * 3)
    assert part.failed and "branchy" in caplog.text and "torch.compile instead" in caplog.text
    assert not list(tmp_path.glob(f"*{suffix}"))  # nothing half-written left behind


def test_aot_package_key_names_what_the_package_depends_on(tmp_path, monkeypatch):
    import torch._inductor.config

    from v2v.aot import package_key

    x = torch.zeros(2, 3)
    key = package_key({"model": "a"}, [x])
    assert package_key({"model": "b"}, [x]) != key  # other weights
    assert package_key({"model": "a"}, [torch.zeros(2, 4)]) != key  # another shape
    assert package_key({"model": "a"}, [torch.zeros(3, 2).t()]) != key  # same shape, another layout
    assert package_key({"model": "a"}, [x.half()]) != key  # another dtype
    # another C++ compiler (inductor's setting, which CXX gives at import; the key's compiler only answers --version)
    other = tmp_path / "other-c++"
    other.write_text("#!/bin/sh\necho other-c++ 1.0\n")
    other.chmod(0o755)
    (tmp_path / "alias-c++").symlink_to(other)
    with torch._inductor.config.patch({"cpp.cxx": (None, str(other))}):
        other_key = package_key({"model": "a"}, [x])
    assert other_key != key
    with torch._inductor.config.patch({"cpp.cxx": (None, str(tmp_path / "alias-c++"))}):
        assert package_key({"model": "a"}, [x]) == other_key  # one compiler under two names
    assert package_key({"model": "a"}, [torch.ones(2, 3)]) == key  # values do not matter
    # inductor's variables: where its caches live and its threads are per machine; a tuning setting is another part
    for name, value in [("TORCHINDUCTOR_CACHE_DIR", str(tmp_path)), ("TORCHINDUCTOR_FX_GRAPH_CACHE", "0"),
                        ("TORCHINDUCTOR_COMPILE_THREADS", "1")]:
        monkeypatch.setenv(name, value)
    assert package_key({"model": "a"}, [x]) == key
    monkeypatch.setenv("TORCHINDUCTOR_COORDINATE_DESCENT_TUNING", "1")
    assert package_key({"model": "a"}, [x]) != key


def test_aot_package_key_names_the_code_it_runs(tmp_path, monkeypatch):
    """A stored part keeps only its input guards: v2v code or a diffusers release that changes what it traces must
    give another key, or an upgraded fleet would run the old parts."""
    import ast

    import diffusers

    from v2v import aot

    # every v2v module the switches bring in is either traced (in the key) or named here as not traced
    not_traced = {"v2v.models": "the cache folder's default", "v2v.shared_cache": "where parts are shared",
                  "v2v.sampler": "warm_up's timestep", "v2v.cuda_graph": "replays the part, outside it"}
    tree = ast.parse(Path(aot.__file__).with_name("perf.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module.startswith("v2v.")}
    imported |= {f"v2v.{a.name}" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "v2v"
                 for a in n.names}
    assert "v2v.upsample" in imported and "v2v.unet" in imported
    assert imported - set(aot.TRACED_MODULES) == set(not_traced)
    # a change to a traced module's source, and another diffusers, are other keys
    pkg = tmp_path / "tracedpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "layer.py").write_text("def f(x):\n    return x + 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    first = aot.code_digest(("tracedpkg.layer",))
    (pkg / "layer.py").write_text("def f(x):\n    return x + 2\n")
    aot.code_digest.cache_clear()
    assert aot.code_digest(("tracedpkg.layer",)) != first
    # comments and docstrings alone are not code: the same key, nothing compiled again
    second = aot.code_digest(("tracedpkg.layer",))
    (pkg / "layer.py").write_text('"""A layer."""\n\n\ndef f(x):\n    """Adds two."""\n    return x + 2  # why\n')
    aot.code_digest.cache_clear()
    assert aot.code_digest(("tracedpkg.layer",)) == second
    x = torch.zeros(2, 3)
    key = aot.package_key({"model": "a"}, [x])
    monkeypatch.setattr(diffusers, "__version__", "0.0.1")
    aot.code_digest.cache_clear()
    assert aot.package_key({"model": "a"}, [x]) != key
    monkeypatch.undo()
    aot.code_digest.cache_clear()
    assert aot.package_key({"model": "a"}, [x]) == key


def test_aot_package_that_does_not_load_runs_through_the_fallback(tmp_path, caplog):
    from v2v.aot import AotForward, part_tensors

    head, x, _, _, package = _stored_head("AotForward", ".pt2", tmp_path)
    with torch.no_grad():
        assert package.with_suffix(".loads").exists()  # checked in a test process once
        # a package cut short (a full disk, a copy interrupted): found, checked again, not loaded in-process
        package.write_bytes(package.read_bytes()[:1000])
        package.with_suffix(".loads").unlink()
        calls = []
        part = AotForward(head, part_tensors, "head", {"model": "a"}, tmp_path,
                          fallback=lambda t: calls.append(t) or head(t))
        with caplog.at_level("WARNING"):
            torch.testing.assert_close(part(x), head(x))
    assert calls and part.failed and package.name in part.failed and "delete the file" in part.failed
    assert not part.built and package.name in caplog.text


def test_precompiled_file_that_does_not_load_is_compiled_again(tmp_path, caplog):
    head, x, _, _, saved = _stored_head("PrecompiledForward", ".dynamo", tmp_path)
    with torch.no_grad():
        saved.write_bytes(saved.read_bytes()[:1000])  # cut short (a full disk, an interrupted copy)
        part = _head_part("PrecompiledForward", head, tmp_path)
        with caplog.at_level("WARNING"):
            torch.testing.assert_close(part(x), head(x))
    assert part.built == [saved] and part.failed is None and saved.name in caplog.text
    assert "does not load" in caplog.text and saved.stat().st_size > 1000


def test_a_torch_that_cannot_save_compiled_functions_gets_torch_compile_said_once(cache_dir, tmp_path, monkeypatch,
                                                                                   caplog):
    """An older torch has no saved compiled functions: precompile (on by default with compile) turns into
    plain torch.compile with one line in the log, instead of each part failing over with a warning at every start."""
    monkeypatch.setenv("V2V_COMPILE_CACHE", str(tmp_path))
    # apply_perf_settings points inductor at that cache in os.environ: recorded here, so restored after the test
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    for flag in ("TORCHINDUCTOR_FX_GRAPH_CACHE", "TORCHINDUCTOR_AUTOGRAD_CACHE"):
        monkeypatch.setenv(flag, os.environ.get(flag, "1"))
    have = apply_perf_settings(load_components("tiny", cache_dir=cache_dir), compile=True, precompile=True)
    assert set(have) == {"unet"}  # this torch can: the UNet is a stored part (built lazily, at its first call)
    monkeypatch.delattr(torch.compiler, "load_compiled_function")  # as in a torch before the API
    c = load_components("tiny", cache_dir=cache_dir)
    with caplog.at_level("INFO", logger="v2v.perf"):
        assert apply_perf_settings(c, compile=True, precompile=True) == {}
    assert [r.levelname for r in caplog.records] == ["INFO"] and "cannot save compiled functions" in caplog.text
    assert isinstance(c.unet.forward, FixedBatch) and not isinstance(c.unet.forward.forward, UNetCall)


def test_every_switch_that_changes_the_model_is_in_its_stored_parts_key(cache_dir, tmp_path, monkeypatch):
    """A stored part is found by its key, and apply_perf_settings lists the switches for it by hand: one that
    changes what the model computes but is left out would load a part built without it."""
    import inspect

    monkeypatch.setenv("V2V_COMPILE_CACHE", str(tmp_path))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))  # set by apply_perf_settings: restored after
    for flag in ("TORCHINDUCTOR_FX_GRAPH_CACHE", "TORCHINDUCTOR_AUTOGRAD_CACHE"):
        monkeypatch.setenv(flag, os.environ.get(flag, "1"))
    # how a part is built, stored or called, not what it computes
    not_in_key = {"compile", "compile_vae", "compile_aot", "precompile", "cuda_graphs", "cudnn_benchmark"}
    switches = [n for n, p in inspect.signature(apply_perf_settings).parameters.items() if isinstance(p.default, bool)]
    on = {n: True for n in switches if n not in not_in_key}
    assert len(on) >= 7
    stored = apply_perf_settings(load_components("tiny", cache_dir=cache_dir), compile=True, precompile=True, **on)
    for part in stored.values():  # built lazily, at their first call: nothing compiles here
        assert {k: v for k, v in part.base.items() if k in switches} == on, part.name


def test_a_shared_compile_cache_without_stored_parts_is_said_unused(cache_dir, caplog):
    """--shared-compile-cache holds stored compiled parts; an actor that stores none (no compile, as CPU actors by
    default, or --no-precompile) says so instead of ignoring the setting silently."""
    with caplog.at_level("WARNING", logger="v2v.perf"):
        assert apply_perf_settings(load_components("tiny", cache_dir=cache_dir), shared_cache="s3://b/c") == {}
    assert "shared compile cache s3://b/c unused" in caplog.text


def test_cudnn_benchmark_setting_reaches_torch(cache_dir):
    """--no-cudnn-benchmark: the actor leaves each convolution's algorithm to cuDNN's heuristics (no timing search
    at start; on an H200 the same speed per clip and ~3 s sooner ready, RESULTS.md sixteenth section)."""
    from jobs.restyle import config_from_args
    from v2v.config import JobConfig, resources
    from v2v.stages import Restyle

    cfg, _ = config_from_args(["--manifest", "m.csv", "--output", "out", "--no-cudnn-benchmark"])
    assert cfg.cudnn_benchmark is False and JobConfig().cudnn_benchmark is True
    was = torch.backends.cudnn.benchmark
    try:
        Restyle(cfg, resources(cfg, {"CPU": 2}))
        assert torch.backends.cudnn.benchmark is False
        apply_perf_settings(load_components("tiny", cache_dir=cache_dir))
        assert torch.backends.cudnn.benchmark is True
    finally:
        torch.backends.cudnn.benchmark = was


def test_actor_rates_count_batches_after_each_actors_first():
    rows = []
    # actor A: batches of 2 clips every 10 s, the first after a long start-up; actor B: one batch only
    for k, start in enumerate([100.0, 110.0, 120.0]):
        rows += [{"status": "ok", "worker": "h/1/gpu0", "restyle_started_at": start,
                  "restyle_finished_at": start + 8.0}] * 2
    rows.append({"status": "ok", "worker": "h/2/gpu1", "restyle_started_at": 105.0, "restyle_finished_at": 113.0})
    rows.append({"status": "failed", "worker": None, "restyle_started_at": None, "restyle_finished_at": None})
    r = actor_rates(rows)
    a = r["actors"]["h/1/gpu0"]
    # 4 clips after the first batch, from its end (108) to the last end (128): 20 s; inside the model 16 s
    assert a["clips_per_hour"] == 3600 * 4 / 20 and a["busy"] == 16 / 20 and a["batches"] == 3
    assert "h/2/gpu1" not in r["actors"] and r["clips_per_hour"] == a["clips_per_hour"]


def test_gpu_actors_compile_by_default_and_cpu_actors_do_not():
    from v2v.config import JobConfig, auto_dtype, resources

    gpu = resources(JobConfig(manifest="m", output="o"), {"CPU": 16, "GPU": 2})
    cpu = resources(JobConfig(manifest="m", output="o"), {"CPU": 16})
    assert (gpu.device, gpu.compile, gpu.compile_vae, gpu.batch_invariant, gpu.num_actors) == ("cuda", True, True,
                                                                                                False, 2)
    assert (cpu.device, cpu.compile, cpu.compile_vae, cpu.batch_invariant) == ("cpu", False, False, True)
    # auto dtype: bfloat16 on GPUs (float16 on cards without native bf16), float32 on the CPU; a set one stays
    assert (gpu.dtype, cpu.dtype) == ("bfloat16", "float32")
    assert auto_dtype("cuda", bf16_native=False) == "float16"
    assert resources(JobConfig(manifest="m", output="o", dtype="float16"), {"GPU": 1}).dtype == "float16"
    forced = resources(JobConfig(manifest="m", output="o", compile=False, batch_invariant=True), {"GPU": 1})
    assert (forced.compile, forced.compile_vae, forced.batch_invariant) == (False, False, True)
    unet_only = resources(JobConfig(manifest="m", output="o", compile_vae=False), {"GPU": 1})
    assert (unet_only.compile, unet_only.compile_vae) == (True, False)
    # compiled parts are saved as torch.compile's functions unless AOTInductor packages are asked for
    assert (gpu.precompile, cpu.precompile, forced.precompile) == (True, False, False)
    aot = resources(JobConfig(manifest="m", output="o", compile_aot=True), {"GPU": 1})
    assert (aot.compile_aot, aot.precompile) == (True, False)
    assert not resources(JobConfig(manifest="m", output="o", precompile=False), {"GPU": 1}).precompile
    # the temporal layers follow compile unless set
    assert (gpu.temporal_layers, cpu.temporal_layers, forced.temporal_layers) == (True, False, False)
    assert resources(JobConfig(manifest="m", output="o", temporal_layers=False), {"GPU": 1}).temporal_layers is False
    assert resources(JobConfig(manifest="m", output="o", temporal_layers=True), {"CPU": 2}).temporal_layers is True
    # so does the frame attention kernel
    assert (gpu.frame_attention, cpu.frame_attention, forced.frame_attention) == (True, False, False)
    assert resources(JobConfig(manifest="m", output="o", frame_attention=False), {"GPU": 1}).frame_attention is False
    assert resources(JobConfig(manifest="m", output="o", frame_attention=True), {"CPU": 2}).frame_attention is True
    # and the GroupNorms' per-channel statistics
    assert (gpu.channel_stats, cpu.channel_stats, forced.channel_stats) == (True, False, False)
    assert resources(JobConfig(manifest="m", output="o", channel_stats=False), {"GPU": 1}).channel_stats is False
    assert resources(JobConfig(manifest="m", output="o", channel_stats=True), {"CPU": 2}).channel_stats is True
    # and the guided step's shared prefix
    assert (gpu.shared_prefix, cpu.shared_prefix, forced.shared_prefix) == (True, False, False)
    assert resources(JobConfig(manifest="m", output="o", shared_prefix=False), {"GPU": 1}).shared_prefix is False
    assert resources(JobConfig(manifest="m", output="o", shared_prefix=True), {"CPU": 2}).shared_prefix is True
    # and the upsamplers by output phase
    assert (gpu.upsample_phases, cpu.upsample_phases, forced.upsample_phases) == (True, False, False)
    assert resources(JobConfig(manifest="m", output="o", upsample_phases=False), {"GPU": 1}).upsample_phases is False
    assert resources(JobConfig(manifest="m", output="o", upsample_phases=True), {"CPU": 2}).upsample_phases is True
    # and the CUDA graph (which apply_perf_settings leaves off on a CPU actor: tests/test_cuda_graph.py)
    assert (gpu.cuda_graphs, cpu.cuda_graphs, forced.cuda_graphs) == (True, False, False)
    assert resources(JobConfig(manifest="m", output="o", cuda_graphs=False), {"GPU": 1}).cuda_graphs is False
