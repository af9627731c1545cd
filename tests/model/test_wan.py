"""Wan 2.1 video-to-video (v2v.model.wan) against diffusers' WanVideoToVideoPipeline, on the tiny Wan model built in
code (float32, CPU): one clip equals the reference; a clip in a batch equals the clip alone."""

import numpy as np
import pytest
import torch
from PIL import Image

from v2v.model.sampler import ClipSettings, SamplerInputError
from v2v.model.tiny import TINY_WAN_FRAMES, TINY_WAN_SIZE, tiny_wan_dir
from v2v.model.wan import load_wan_components, restyle


@pytest.fixture(scope="module")
def wan(tmp_path_factory):
    return load_wan_components(tiny_wan_dir(tmp_path_factory.mktemp("cache")))


def _video(n, frames=TINY_WAN_FRAMES, size=TINY_WAN_SIZE, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, frames, size, size, 3), dtype=np.uint8))


def _reference(wan, video, clip, scheduler):
    from diffusers import WanVideoToVideoPipeline

    pipe = WanVideoToVideoPipeline(tokenizer=wan.tokenizer, text_encoder=wan.text_encoder,
                                   transformer=wan.transformer, vae=wan.vae, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    frames = [Image.fromarray(f) for f in video.numpy()]
    out = pipe(video=frames, prompt=clip.prompt, negative_prompt=clip.negative_prompt, height=video.shape[1],
               width=video.shape[2], num_inference_steps=clip.num_inference_steps, strength=clip.strength,
               guidance_scale=clip.guidance_scale, generator=torch.Generator().manual_seed(clip.seed),
               output_type="pt").frames  # (1, F, 3, H, W)
    return out[0].permute(0, 2, 3, 1)


@pytest.mark.parametrize("which", ["unipc", "flow_euler", "dpm"])
def test_one_clip_equals_the_reference_pipeline(wan, which):
    import copy

    from diffusers import FlowMatchEulerDiscreteScheduler

    from v2v.model.loading import make_scheduler

    sched = {"unipc": copy.deepcopy(wan.scheduler), "flow_euler": FlowMatchEulerDiscreteScheduler(shift=3.0),
             "dpm": make_scheduler(wan.scheduler, "dpm")}[which]  # dpm: as a row's `dpm` builds it
    clip = ClipSettings("a red fox in ink", seed=3, negative_prompt="blurry", strength=0.7, num_inference_steps=6,
                        guidance_scale=5.0)
    video = _video(1)
    want = _reference(wan, video[0], clip, copy.deepcopy(sched))
    got = restyle(wan, video, [clip], scheduler=sched)[0]
    assert got.shape == (TINY_WAN_FRAMES, TINY_WAN_SIZE, TINY_WAN_SIZE, 3)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
    # the clip's seed and prompt are what it depends on
    other = restyle(wan, video, [ClipSettings(**{**clip.__dict__, "seed": 4})], scheduler=sched)[0]
    assert (other - got).abs().max() > 1e-3


def test_a_clip_in_a_batch_of_mixed_settings_equals_the_clip_alone(wan):
    clips = [ClipSettings("ink", seed=1, strength=0.5, num_inference_steps=8, guidance_scale=5.0),
             ClipSettings("watercolor", seed=2, strength=0.9, num_inference_steps=4, guidance_scale=1.0),
             ClipSettings("charcoal", seed=3, strength=0.6, num_inference_steps=5, guidance_scale=9.0,
                          negative_prompt="noise")]
    video = _video(3, seed=1)
    together = restyle(wan, video, clips, output="latents")
    for i, c in enumerate(clips):
        alone = restyle(wan, video[i : i + 1], [c], output="latents")
        torch.testing.assert_close(together[i : i + 1], alone, rtol=0, atol=1e-5)


@pytest.mark.parametrize("shape, says", [((1, 8, 32, 32, 3), r"4k\+1 frames"), ((1, 9, 24, 32, 3), "multiple of 16")])
def test_geometry_the_model_cannot_take_is_named(wan, shape, says):
    with pytest.raises(SamplerInputError, match=says):
        restyle(wan, torch.zeros(shape, dtype=torch.uint8), [ClipSettings("a", seed=0)])


def test_clips_in_flight_on_wan_equal_each_clip_alone(wan):
    """The continuous batcher over the Wan backbone: clips of different strengths, step counts, guidance (off
    beside on) and schedulers, admitted as slots free, each end where the clip alone ends."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from v2v.model.continuous import StepBatcher, run_all

    euler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    clips = [ClipSettings("ink", seed=1, strength=0.5, num_inference_steps=8, guidance_scale=5.0),
             ClipSettings("watercolor", seed=2, strength=0.9, num_inference_steps=4, guidance_scale=1.0),
             ClipSettings("charcoal", seed=3, strength=0.6, num_inference_steps=5, guidance_scale=9.0),
             ClipSettings("pastel", seed=4, strength=0.8, num_inference_steps=5, guidance_scale=3.0)]
    scheds = [None, euler, None, euler]
    video = _video(4, seed=2)
    batcher = StepBatcher(wan, 2)
    out = run_all(batcher, [(i, video[i], c, s) for i, (c, s) in enumerate(zip(clips, scheds))],
                  on_done=lambda b, clip: b.finish(clip))
    assert batcher.forwards < sum(int(c.strength * c.num_inference_steps) for c in clips)  # forwards were shared
    for i, (c, s) in enumerate(zip(clips, scheds)):
        alone = restyle(wan, video[i : i + 1], [c], scheduler=s, output="latents")
        torch.testing.assert_close(out[i], alone, rtol=0, atol=1e-5)
    frames = batcher.backbone.decode(out[0])
    torch.testing.assert_close(frames, restyle(wan, video[:1], clips[:1])[0], rtol=0, atol=1e-5)


def test_a_lora_on_the_transformer_equals_the_reference_on_merged_weights(tmp_path):
    """A Wan LoRA (diffusers' `transformer.` keys) merged by the job's Adapters restyles as WanVideoToVideoPipeline on
    weights with W + scale * alpha / rank * B @ A merged in; a UNet LoRA on a Wan model is refused, naming the file."""
    from safetensors.torch import save_file

    from v2v.model.adapters import AdapterError, Adapters, LoraRef

    folder = tiny_wan_dir(tmp_path / "cache")
    c, ref = load_wan_components(folder), load_wan_components(folder)
    g, tensors = torch.Generator().manual_seed(5), {}
    for name in ("blocks.0.attn1.to_q", "blocks.1.attn2.to_v", "blocks.0.ffn.net.0.proj"):
        out_f, in_f = c.transformer.get_submodule(name).weight.shape
        a, b = torch.randn(4, in_f, generator=g) * 0.3, torch.randn(out_f, 4, generator=g) * 0.3
        tensors.update({f"transformer.{name}.lora_A.weight": a, f"transformer.{name}.lora_B.weight": b,
                        f"transformer.{name}.alpha": torch.tensor(2.0)})
        with torch.no_grad():
            ref.transformer.get_submodule(name).weight += 0.8 * 2.0 / 4 * b @ a
    save_file(tensors, str(tmp_path / "style.safetensors"))
    Adapters(c).use([LoraRef(str(tmp_path / "style.safetensors"), 0.8)])
    clip = ClipSettings("a fox", seed=2, strength=0.8, num_inference_steps=4, guidance_scale=5.0)
    video = _video(1, seed=3)
    got = restyle(c, video, [clip])[0]
    torch.testing.assert_close(got, _reference(ref, video[0], clip, ref.scheduler), rtol=0, atol=1e-4)
    assert (got - restyle(load_wan_components(folder), video, [clip])[0]).abs().max() > 1e-3  # it did apply
    save_file({"unet.down_blocks.0.proj.lora_A.weight": torch.zeros(2, 4),
               "unet.down_blocks.0.proj.lora_B.weight": torch.zeros(4, 2)}, str(tmp_path / "unet.safetensors"))
    with pytest.raises(AdapterError, match=r"unet.safetensors: unet.down_blocks.0.proj: a LoRA for a unet, and this "
                                           r"wan model has none \(its denoiser is its transformer\)"):
        Adapters(c).use([LoraRef(str(tmp_path / "unet.safetensors"))])
