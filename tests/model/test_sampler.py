"""The engine's contract: equal to diffusers' VideoToVideoSDPipeline, batch-independent, deterministic."""

import logging

import numpy as np
import pytest
import torch
from diffusers.pipelines.deprecated.text_to_video_synthesis.pipeline_text_to_video_synth_img2img import (
    VideoToVideoSDPipeline,
)

from v2v.model.loading import make_scheduler
from v2v.model.sampler import ClipSettings, SamplerInputError, restyle, schedule


def _frames(b, f=8, h=64, w=64, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (b, f, h, w, 3), dtype=np.uint8))


def _reference(tiny, sched, frames_u8, clip: ClipSettings, output_type="np"):
    pipe = VideoToVideoSDPipeline(vae=tiny.vae, text_encoder=tiny.text_encoder, tokenizer=tiny.tokenizer,
                                  unet=tiny.unet, scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    video = (frames_u8.numpy().astype(np.float32) / 255.0)[None]  # (1, F, H, W, 3) in [0, 1]
    return pipe(clip.prompt, video=video, strength=clip.strength, num_inference_steps=clip.num_inference_steps,
                guidance_scale=clip.guidance_scale, negative_prompt=clip.negative_prompt or None, eta=clip.eta,
                generator=torch.Generator().manual_seed(clip.seed), output_type=output_type).frames


@pytest.mark.parametrize("scheduler,eta", [("ddim", 0.0), ("ddim", 0.7), ("dpm", 0.0), ("euler_a", 0.0)])
def test_equals_reference_pipeline(tiny, scheduler, eta):
    sched = make_scheduler(tiny.scheduler, scheduler)
    frames = _frames(1)
    clip = ClipSettings("a watercolor fox", seed=1234, negative_prompt="blurry", strength=0.7,
                        num_inference_steps=8, guidance_scale=9.0, eta=eta)
    ref = _reference(tiny, sched, frames[0], clip)[0]  # (F, H, W, 3) floats in [0, 1]
    ours = restyle(tiny, frames, [clip], scheduler=sched)[0].numpy()
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= 1e-4
    # and the output really depends on the input: a different seed changes it
    other = restyle(tiny, frames, [ClipSettings(**{**clip.__dict__, "seed": 1235})], scheduler=sched)[0].numpy()
    assert np.abs(other - ref).max() > 1e-3


def test_equals_reference_without_guidance_and_with_latent_input(tiny):
    sched = make_scheduler(tiny.scheduler, "ddim")
    frames = _frames(1, seed=3)
    clip = ClipSettings("ink sketch", seed=9, strength=0.5, num_inference_steps=6, guidance_scale=1.0)
    ref = _reference(tiny, sched, frames[0], clip, output_type="latent")  # (1, 4, F, h, w)
    ours = restyle(tiny, frames, [clip], scheduler=sched, output="latents")
    assert ours.shape == ref.shape == (1, 4, 8, 8, 8)
    assert (ours - ref).abs().max() <= 1e-5
    # Latent input skips the VAE: compare against the reference given the same latents.
    lat_in = torch.randn(1, 4, 8, 8, 8, generator=torch.Generator().manual_seed(0))
    pipe = VideoToVideoSDPipeline(vae=tiny.vae, text_encoder=tiny.text_encoder, tokenizer=tiny.tokenizer,
                                  unet=tiny.unet, scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    ref2 = pipe("ink sketch", video=lat_in.permute(0, 2, 1, 3, 4), strength=0.5, num_inference_steps=6,
                guidance_scale=1.0, generator=torch.Generator().manual_seed(9), output_type="latent").frames
    ours2 = restyle(tiny, lat_in, [clip], scheduler=sched, output="latents")
    assert (ours2 - ref2).abs().max() <= 1e-5


@pytest.mark.parametrize("scheduler,eta", [("ddim", 0.0), ("ddim", 1.0), ("euler_a", 0.0)])
def test_clip_in_batch_equals_clip_alone(tiny, scheduler, eta):
    sched = make_scheduler(tiny.scheduler, scheduler)
    frames = _frames(4, seed=5)
    clips = [
        ClipSettings("a", seed=1, strength=0.6, num_inference_steps=8, guidance_scale=7.0, eta=eta),
        ClipSettings("b b b", seed=2, negative_prompt="c", strength=0.6, num_inference_steps=8, guidance_scale=12.0, eta=eta),
        ClipSettings("", seed=3, strength=0.9, num_inference_steps=5, guidance_scale=7.0, eta=eta),  # another group
        ClipSettings("d", seed=4, strength=0.6, num_inference_steps=8, guidance_scale=1.0, eta=eta),  # no CFG
    ]
    batched = restyle(tiny, frames, clips, scheduler=sched)
    for i, c in enumerate(clips):
        alone = restyle(tiny, frames[i : i + 1], [c], scheduler=sched)
        assert (batched[i] - alone[0]).abs().max() <= 1e-5, f"clip {i} differs in the batch"
    # clips really are different from each other
    assert (batched[0] - batched[1]).abs().max() > 1e-3
    # batch-invariant mode: bit for bit what each clip gives alone
    invariant = restyle(tiny, frames, clips, scheduler=sched, batch_invariant=True)
    for i, c in enumerate(clips):
        assert torch.equal(invariant[i], restyle(tiny, frames[i : i + 1], [c], scheduler=sched)[0])


def test_same_call_twice_is_bitwise_identical(tiny):
    frames = _frames(2, seed=8)
    clips = [ClipSettings("x", seed=11, num_inference_steps=5, eta=0.5), ClipSettings("y", seed=12, num_inference_steps=5)]
    a = restyle(tiny, frames, clips)
    b = restyle(tiny, frames, clips)
    assert torch.equal(a, b)


def test_vae_chunk_size_does_not_change_result(tiny):
    frames = _frames(2, seed=2)
    clips = [ClipSettings("x", seed=1, num_inference_steps=4), ClipSettings("y", seed=2, num_inference_steps=4)]
    a = restyle(tiny, frames, clips, vae_chunk=1)
    b = restyle(tiny, frames, clips, vae_chunk=16)
    # conv batching differs with chunk size, so float32 rounding differs a little
    assert (a - b).abs().max() <= 1e-4


def test_draw_order_posterior_then_noise(tiny):
    """The first draw of a clip's generator is the VAE posterior sample, the second the initial noise."""
    from diffusers.utils.torch_utils import randn_tensor

    from v2v.model.sampler import encode_posterior, frames_to_pixels, prepare_latents

    frames = _frames(1, seed=4)[0]
    sched, timesteps = schedule(tiny.scheduler, 10, 0.5)
    got = prepare_latents(tiny.vae, sched, frames, timesteps, torch.Generator().manual_seed(5), torch.float32, 8)
    g = torch.Generator().manual_seed(5)
    post = encode_posterior(tiny.vae, frames_to_pixels(frames), 8)
    init = (post.mean + post.std * randn_tensor(post.mean.shape, generator=g)) * tiny.vae.config.scaling_factor
    noise = randn_tensor(init.shape, generator=g)
    want = sched.add_noise(init, noise, timesteps[:1]).permute(1, 0, 2, 3)[None]
    assert (got - want).abs().max() <= 1e-6


def test_strength_selects_start_timestep(tiny):
    sched, ts = schedule(tiny.scheduler, 40, 0.6)
    assert len(ts) == 24  # 40 steps x 0.6
    full, ts_full = schedule(tiny.scheduler, 40, 1.0)
    assert len(ts_full) == 40 and torch.equal(ts, ts_full[16:])


def test_long_prompt_truncated_with_warning_naming_clip(tiny, caplog):
    frames = _frames(1)
    with caplog.at_level(logging.WARNING, logger="v2v.model.sampler"):
        out = restyle(tiny, frames, [ClipSettings("z" * 200, seed=1, num_inference_steps=2, name="vid7/00003")])
    assert out.shape == (1, 8, 64, 64, 3)
    assert any("vid7/00003" in r.message and "truncated" in r.message for r in caplog.records)


@pytest.mark.parametrize(
    "video,clips,match",
    [
        (torch.zeros(1, 8, 64, 64, 3, dtype=torch.int32), None, "uint8 frames or float latents"),
        (torch.zeros(1, 8, 64, 64, dtype=torch.uint8), None, r"\(B, F, H, W, 3\)"),
        (torch.zeros(1, 8, 60, 70, 3, dtype=torch.uint8), None, "resize to 72x64"),
        (torch.zeros(1, 0, 64, 64, 3, dtype=torch.uint8), None, "at least one frame"),
        (torch.zeros(2, 8, 64, 64, 3, dtype=torch.uint8), None, "2 clips but 1 clip settings"),
        (torch.full((1, 4, 8, 8, 8), float("nan")), None, "NaN"),
        (None, [ClipSettings("a", 1, strength=0.0)], r"strength must be in \(0, 1\]"),
        (None, [ClipSettings("a", 1, strength=1.5)], r"strength must be in \(0, 1\]"),
        (None, [ClipSettings("a", 1, num_inference_steps=0)], "num_inference_steps must be"),
        (None, [ClipSettings("a", 1, strength=0.1, num_inference_steps=5)], "leaves no denoising step"),
        (None, [ClipSettings("a", -1)], "seed must be"),
    ],
)
def test_bad_input_raises_clear_error(tiny, video, clips, match):
    video = _frames(1) if video is None else video
    clips = clips or [ClipSettings("a", 1)]
    with pytest.raises(SamplerInputError, match=match):
        restyle(tiny, video, clips)


def test_clip_skip_takes_an_earlier_layer_through_the_final_norm(tiny):
    """clip_skip k: the text encoder's (k+1)-th last hidden state through its final norm. The last hidden state
    is the output before that norm, so clip_skip 0 must equal no clip_skip; 1 must not; too many is an error."""
    from v2v.model.sampler import encode_prompts

    def embed(k):
        return encode_prompts(tiny.tokenizer, tiny.text_encoder, ["a watercolor fox"], None, clip_skip=k)[0]

    assert torch.equal(embed(0), embed(None))
    assert (embed(1) - embed(None)).abs().max() > 1e-2
    layers = tiny.text_encoder.config.num_hidden_layers
    with pytest.raises(SamplerInputError, match=f"clip_skip must be in \\[0, {layers}\\)"):
        embed(layers)
    # and through the whole sampler: the prompt's embedding changes the result
    frames, clip = _frames(1), ClipSettings("a watercolor fox", seed=5, num_inference_steps=4)
    assert (restyle(tiny, frames, [clip], clip_skip=1, output="latents")
            - restyle(tiny, frames, [clip], output="latents")).abs().max() > 1e-4


def test_nonfinite_clips_finds_nan_and_infinities_per_clip():
    from v2v.model.sampler import nonfinite_clips

    frames = torch.rand(5, 3, 8, 8, 3)
    assert nonfinite_clips(frames) == []
    frames[1, 2, 3, 4, 0] = float("nan")
    frames[2, 0, 0, 0, 0] = float("inf")
    frames[4, 0, 0, 0, 1], frames[4, 1, 0, 0, 1] = float("inf"), float("-inf")  # sum NaN, still found
    assert nonfinite_clips(frames) == [1, 2, 4]


def test_device_frames_are_the_frames_and_uint8_as_the_job_takes_them(tiny):
    from v2v.model.sampler import to_uint8, to_uint8_checked

    frames, clip = _frames(2), [ClipSettings("a", seed=1, num_inference_steps=4), ClipSettings("b", seed=2)]
    on_device = restyle(tiny, frames, clip, output="device_frames")
    assert torch.equal(on_device, restyle(tiny, frames, clip))  # the CPU is the device here
    u8, bad = to_uint8_checked(on_device)
    assert bad == [] and u8.dtype == np.uint8 and u8.shape == (2, 8, 64, 64, 3)
    assert np.array_equal(u8, to_uint8(on_device)) and 0 < u8.mean() < 255
    with pytest.raises(SamplerInputError, match="output must be"):
        restyle(tiny, frames, clip, output="pixels")
