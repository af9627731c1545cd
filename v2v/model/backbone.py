"""The model-specific half of clips in flight: what `v2v.model.continuous.StepBatcher` asks of a model family.

A backbone turns one clip's frames and settings into its starting latents and prompt embeddings (`admit`), predicts
the guided noise (or flow) of several clips at their own timesteps in one forward (`predict`), takes one clip's
scheduler step (`step`) and decodes its final latents (`decode`). The batcher keeps the clips, their schedules and
the rounds; it never touches a UNet or a transformer. Two families: the zeroscope / ModelScope UNet3D
(`ZeroscopeBackbone`, over v2v.model.sampler) and Wan 2.1 (`WanBackbone`, over v2v.model.wan).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import torch

from v2v.model import sampler, wan
from v2v.model.sampler import ClipSettings


class PromptCache:
    """Prompt embeddings by the text they encode, the least recently used dropped beyond `max_bytes`: a night's
    manifest has a few dozen styles over thousands of clips, and each admission would otherwise run the text encoder
    (Wan's UMT5 also waits for the GPU once a prompt). An entry is the encoder's own output for that text alone, so
    a hit equals a fresh encode bit for bit. Its owner clears it when the text encoder's weights change (a LoRA
    merged in or out, job.stages.Restyle)."""

    MAX_BYTES = 256 << 20  # 1,600 of zeroscope's (77, 1024) fp16 embeddings, 64 of Wan's (512, 4096) bf16

    def __init__(self, max_bytes: int = MAX_BYTES):
        self.max_bytes = max_bytes
        self.entries: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self.bytes = 0
        self.hits = self.misses = 0

    def get(self, key: tuple, encode: Callable[[], torch.Tensor]) -> torch.Tensor:
        if key in self.entries:
            self.entries.move_to_end(key)
            self.hits += 1
            return self.entries[key]
        self.misses += 1
        value = encode()
        self.entries[key] = value
        self.bytes += value.numel() * value.element_size()
        while self.bytes > self.max_bytes and len(self.entries) > 1:
            _, old = self.entries.popitem(last=False)
            self.bytes -= old.numel() * old.element_size()
        return value

    def clear(self) -> None:
        self.entries.clear()
        self.bytes = 0


def backbone_for(components, *, clip_skip: int | None = None, vae_chunk: int = 8, prompts: PromptCache | None = None):
    """The backbone of loaded components: WanComponents -> WanBackbone, model.loading's Components -> Zeroscope.
    prompts: the embeddings kept across batchers (an actor's, across its calls); by default its own."""
    if isinstance(components, wan.WanComponents):
        if clip_skip is not None:
            raise sampler.SamplerInputError("clip_skip applies to CLIP text encoders; this model's is UMT5")
        return WanBackbone(components, prompts)
    return ZeroscopeBackbone(components, clip_skip=clip_skip, vae_chunk=vae_chunk, prompts=prompts)


class ZeroscopeBackbone:
    """UNet3D, the SD VAE (2-D, per frame), CLIP text: the reference is diffusers' VideoToVideoSDPipeline."""

    def __init__(self, components, clip_skip: int | None = None, vae_chunk: int = 8,
                 prompts: PromptCache | None = None):
        self.c, self.clip_skip, self.vae_chunk = components, clip_skip, vae_chunk
        self.prompts = prompts if prompts is not None else PromptCache()

    def stream_of(self, video: torch.Tensor) -> tuple:
        """The latent shape (C, F, h, w) of uint8 (F, H, W, 3) frames or float (C, F, h, w) latents."""
        if video.dtype != torch.uint8:
            return tuple(video.shape)
        s = self.c.vae_scale_factor
        return (self.c.unet.config.in_channels, video.shape[0], video.shape[1] // s, video.shape[2] // s)

    def check(self, video: torch.Tensor, settings: ClipSettings) -> None:
        """SamplerInputError for a clip the model cannot run on (before any of its work)."""
        sampler.check_inputs(video[None], [settings], self.c.vae_scale_factor)

    def admit(self, video: torch.Tensor, settings: ClipSettings, sched, timesteps, generator, name: str):
        """(starting latents (1, 4, F, h, w), cond (1, 77, D), uncond (1, 77, D) or None), the draws from
        `generator` in the reference's order."""
        c, dtype = self.c, self.c.unet.dtype

        def encoded(text: str, negative: bool) -> torch.Tensor:
            # as sampler.encode_prompts gives them together: clip_skip for the prompt only, the negative's last layer
            key = ("negative", None, text) if negative else ("prompt", self.clip_skip, text)
            return self.prompts.get(key, lambda: sampler.encode_prompts(
                c.tokenizer, c.text_encoder, [text], None, None if negative else self.clip_skip,
                [f"{name} (negative)" if negative else name])[0].to(dtype))

        cond = encoded(settings.prompt, negative=False)
        uncond = encoded(settings.negative_prompt, negative=True) if settings.guidance_scale > 1.0 else None
        latents = sampler.prepare_latents(c.vae, sched, video, timesteps, generator, dtype, self.vae_chunk)
        return latents, cond, uncond

    def predict(self, latents: list[torch.Tensor], scheds: list, t: list[torch.Tensor], cond: torch.Tensor,
                uncond: torch.Tensor | None, scales: list[float]) -> list[torch.Tensor]:
        """Each clip's guided noise prediction (1, 4, F, h, w) from one UNet forward. uncond: (B, 77, D) with an
        unguided clip's own text embedding in its row (it runs as the pair of itself and keeps its text half), or
        None where no clip is guided."""
        unet = self.c.unet
        scaled = torch.cat([s.scale_model_input(x, ti) for s, x, ti in zip(scheds, latents, t)])
        steps = sampler.clip_timesteps(t, scaled.device)
        if uncond is None:
            return list(sampler._predict_noise(unet, scaled, steps, cond, None).split(1))
        noise_uncond, noise_text = sampler._predict_noise(unet, scaled, steps, cond, uncond).chunk(2)
        out = []
        for i, g in enumerate(scales):
            u, x = noise_uncond[i : i + 1], noise_text[i : i + 1]
            scale = sampler.to_device(torch.tensor(g, dtype=torch.float32), x.device).to(x.dtype)
            out.append(u + scale * (x - u) if g > 1.0 else x)
        return out

    def step(self, sched, eps: torch.Tensor, t: torch.Tensor, latents: torch.Tensor, step_kwargs: dict):
        # (1, 4, F, h, w) -> (F, 4, h, w): the scheduler sees frames as a batch of images
        x = sched.step(eps[0].permute(1, 0, 2, 3), t, latents[0].permute(1, 0, 2, 3), **step_kwargs)
        return x.prev_sample.permute(1, 0, 2, 3).unsqueeze(0).contiguous()  # as the sampler stacks them

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(1, 4, F, h, w) -> float32 (F, H, W, 3) frames in [0, 1] on the model's device."""
        return sampler.decode_frames(self.c.vae, latents, self.vae_chunk)[0]


class WanBackbone:
    """Wan 2.1: a flow-matching transformer, the causal 3-D Wan VAE, UMT5 text: the reference is diffusers'
    WanVideoToVideoPipeline."""

    def __init__(self, components: wan.WanComponents, prompts: PromptCache | None = None):
        self.c = components
        self.prompts = prompts if prompts is not None else PromptCache()

    def stream_of(self, video: torch.Tensor) -> tuple:
        return self.c.latent_shape(*video.shape[:3])

    def check(self, video: torch.Tensor, settings: ClipSettings) -> None:
        wan.check_inputs(self.c, video[None], [settings])

    def admit(self, video: torch.Tensor, settings: ClipSettings, sched, timesteps, generator, name: str):
        c = self.c

        def encoded(text: str) -> torch.Tensor:
            return self.prompts.get(("text", text), lambda: wan.encode_prompts(c.tokenizer, c.text_encoder, [text]))

        cond = encoded(settings.prompt)
        uncond = encoded(settings.negative_prompt) if settings.guidance_scale > 1.0 else None
        x = wan.encode_latents(c.vae, wan.frames_to_pixels(sampler.to_device(video, c.device)))
        return wan.add_noise(sched, x, timesteps[0], generator), cond, uncond

    def predict(self, latents, scheds, t, cond, uncond, scales) -> list[torch.Tensor]:
        eps = wan.predict(self.c.transformer, torch.cat(latents), torch.stack(t), cond, uncond, scales)
        return list(eps.split(1))

    def step(self, sched, eps, t, latents, step_kwargs):
        return sched.step(eps, t, latents, return_dict=False, **step_kwargs)[0]

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return wan.decode_frames(self.c.vae, latents)[0]
