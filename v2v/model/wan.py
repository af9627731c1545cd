"""Wan 2.1 video-to-video (Apache-2.0), as plain functions in the order one clip flows through them.

The same computation as diffusers' `WanVideoToVideoPipeline` (0.42.1), one clip at a time or several in one
transformer forward: each clip's prompt embedded by the UMT5 text encoder and zero-padded to `max_sequence_length`
tokens; its frames encoded by the causal 3-D VAE (the posterior's mode) and normalized by the VAE's per-channel
latent statistics; noise from the clip's own generator added at its strength by the flow-matching scheduler; then
each step one transformer forward (the text and the negative prompt's halves in one batch) and the clip's own
scheduler step; finally the VAE decode. A clip's draws come from its own generator in the reference's order, so a
clip in a batch equals the clip alone.

Geometry: the VAE compresses 8x in space and 4x in time (causally: the first frame alone, then 4 frames per latent
frame), the transformer patches 2x2, so frames are 4k+1 and sides multiples of 16.
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from v2v.model.loading import WAN, Family, Loaded
from v2v.model.sampler import ClipSettings, SamplerInputError, check_settings, draw, to_device, unit_range
from v2v.model.sampler import add_noise as sampler_add_noise

MAX_SEQUENCE_LENGTH = 512  # the reference's default: every prompt's embeddings padded (with zeros) to this many


@dataclass
class WanComponents(Loaded):
    family: ClassVar[Family] = WAN
    transformer: object
    vae: object
    text_encoder: object
    tokenizer: object
    scheduler: object

    @property
    def vae_scale_factor(self) -> int:  # spatial
        return 2 ** len(self.vae.temperal_downsample)

    @property
    def vae_scale_factor_temporal(self) -> int:
        return 2 ** sum(self.vae.temperal_downsample)

    @property
    def patch(self) -> int:
        return self.transformer.config.patch_size[1]

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(C, f, h, w) of a clip's latents: time compressed 4k+1 -> k+1 frames, sides by vae_scale_factor."""
        s = self.vae_scale_factor
        return (self.transformer.config.in_channels, (frames - 1) // self.vae_scale_factor_temporal + 1, height // s,
                width // s)


# 1. Checks ---------------------------------------------------------------------------------------------


def check_inputs(c: WanComponents, video: torch.Tensor, clips: list[ClipSettings]) -> None:
    """uint8 (B, F, H, W, 3) frames: F = 4k+1 (the VAE's time compression), H and W multiples of 16."""
    if not isinstance(video, torch.Tensor) or video.dtype != torch.uint8 or video.ndim != 5 or video.shape[-1] != 3:
        raise SamplerInputError(f"video must be uint8 (B, F, H, W, 3) frames, got "
                                f"{getattr(video, 'dtype', type(video).__name__)} {tuple(getattr(video, 'shape', ()))}")
    if video.shape[0] != len(clips):
        raise SamplerInputError(f"video holds {video.shape[0]} clips but {len(clips)} clip settings were given")
    f, h, w = video.shape[1:4]
    t = c.vae_scale_factor_temporal
    if (f - 1) % t:
        raise SamplerInputError(f"a clip of {f} frames: this model takes {t}k+1 frames (e.g. {(f - 1) // t * t + 1})")
    side = c.vae_scale_factor * c.patch
    if h % side or w % side:
        raise SamplerInputError(f"frame size {w}x{h} (WxH) is not a multiple of {side}; resize to "
                                f"{max(side, round(w / side) * side)}x{max(side, round(h / side) * side)}")
    check_settings(clips)


# 2. Text ------------------------------------------------------------------------------------------------


def clean_prompt(text: str) -> str:
    """The reference's prompt_clean: ftfy's fixes, HTML entities undone twice, whitespace collapsed."""
    import ftfy

    return re.sub(r"\s+", " ", html.unescape(html.unescape(ftfy.fix_text(text))).strip()).strip()


@torch.no_grad()
def encode_prompts(tokenizer, text_encoder, prompts: list[str],
                   max_sequence_length: int = MAX_SEQUENCE_LENGTH) -> torch.Tensor:
    """(B, max_sequence_length, D) embeddings: each prompt's tokens encoded with its attention mask, its own
    tokens kept and the rest zeros."""
    inputs = tokenizer([clean_prompt(p) for p in prompts], padding="max_length", max_length=max_sequence_length,
                       truncation=True, add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
    ids, mask = inputs.input_ids, inputs.attention_mask
    lens = mask.gt(0).sum(dim=1).long()
    out = text_encoder(to_device(ids, text_encoder.device), to_device(mask, text_encoder.device)).last_hidden_state
    return torch.stack([torch.cat([u[:n], u.new_zeros(max_sequence_length - n, u.size(1))])
                        for u, n in zip(out, lens)])


# 3. VAE --------------------------------------------------------------------------------------------------


def frames_to_pixels(frames: torch.Tensor) -> torch.Tensor:
    """uint8 (F, H, W, 3) -> float32 (1, 3, F, H, W) in [-1, 1], as the reference's video processor makes them."""
    return (unit_range(frames.permute(3, 0, 1, 2)) * 2.0 - 1.0).unsqueeze(0)


def _latent_stats(vae, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, 1 / std), each (1, z, 1, 1, 1), as the reference computes them."""
    z = vae.config.z_dim
    mean = to_device(torch.tensor(vae.config.latents_mean).view(1, z, 1, 1, 1), like.device).to(like.dtype)
    inv_std = 1.0 / to_device(torch.tensor(vae.config.latents_std).view(1, z, 1, 1, 1), like.device).to(like.dtype)
    return mean, inv_std


@torch.no_grad()
def encode_latents(vae, pixels: torch.Tensor) -> torch.Tensor:
    """(1, 3, F, H, W) pixels -> (1, z, (F - 1) / 4 + 1, H / 8, W / 8) float32 normalized latents (the posterior's
    mode: the reference's `sample_mode="argmax"`)."""
    x = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.mode().to(torch.float32)
    mean, inv_std = _latent_stats(vae, x)
    return (x - mean) * inv_std


def add_noise(sched, latents: torch.Tensor, timestep: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The clip's starting point: its latents noised to `timestep` with noise from its own generator."""
    return sampler_add_noise(sched, latents, draw(latents.shape, generator, torch.float32, latents.device),
                             timestep.reshape(1))


@torch.no_grad()
def decode_frames(vae, latents: torch.Tensor) -> torch.Tensor:
    """(B, z, f, h, w) latents -> float32 (B, F, H, W, 3) frames in [0, 1]."""
    x = latents.to(vae.dtype)
    mean, inv_std = _latent_stats(vae, x)
    video = vae.decode(x / inv_std + mean, return_dict=False)[0]
    return (video.to(torch.float32) / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 4, 1)


# 4. Denoising --------------------------------------------------------------------------------------------


@torch.no_grad()
def predict(transformer, latents: torch.Tensor, timesteps: torch.Tensor, cond: torch.Tensor,
            uncond: torch.Tensor | None, scales: list[float]) -> torch.Tensor:
    """Each clip's guided flow prediction, float32 (B, z, f, h, w), from one transformer forward: latents
    (B, z, f, h, w), timesteps (B,) (each clip its own), cond (B, L, D); uncond (B, L, D) or None (no clip guided).
    A clip whose scale is <= 1 keeps its text prediction (its uncond row, if any, is not used)."""
    dtype = transformer.dtype
    x = latents.to(dtype)
    # float32 whatever the scheduler's (int64 for some): the same values (the time embedding computes in float32),
    # and one compiled graph for every scheduler
    t = to_device(timesteps.to(torch.float32), latents.device)
    # (latents, timesteps) positional, as the speed layer's fixed-batch call takes them
    if uncond is None:
        return transformer(x, t, encoder_hidden_states=cond.to(dtype), return_dict=False)[0].float()
    both = transformer(torch.cat([x, x]), torch.cat([t, t]), encoder_hidden_states=torch.cat([cond, uncond]).to(dtype),
                       return_dict=False)[0]
    text, plain = both.chunk(2)
    out = []
    for i, g in enumerate(scales):
        u, v = plain[i : i + 1], text[i : i + 1]
        out.append(u + g * (v - u) if g > 1.0 else v)
    return torch.cat(out).float()


def restyle(c: WanComponents, video: torch.Tensor, clips: list[ClipSettings], *, scheduler=None,
            output: str = "frames") -> torch.Tensor:
    """Restyle B clips, uint8 (B, F, H, W, 3), each with its own settings, all in flight at once
    (v2v.model.continuous over this family's backbone): clips of different step counts or strengths run their own
    schedules side by side, each forward carrying every clip still denoising.
    output "frames": float32 (B, F, H, W, 3) in [0, 1]; "latents": the final latents (B, z, f, h, w)."""
    from v2v.model.continuous import StepBatcher, run_all  # (it reaches this module through v2v.model.backbone)

    check_inputs(c, video, clips)
    out = run_all(StepBatcher(c, len(clips)), [(i, video[i], s, scheduler) for i, s in enumerate(clips)])
    failed = next((v for v in out.values() if isinstance(v, BaseException)), None)
    if failed is not None:
        raise failed
    latents = torch.cat([out[i] for i in range(len(clips))])
    return latents if output == "latents" else decode_frames(c.vae, latents)


def load_wan_components(folder: str | Path, device: str = "cpu", dtype: str = "float32",
                        scheduler: str | None = None, reference: str = "") -> WanComponents:
    """A Wan model folder in the diffusers layout (Wan-AI/Wan2.1-T2V-1.3B-Diffusers, or tiny-wan): its transformer and
    text encoder in `dtype`, its VAE in float32 (the reference keeps the Wan VAE in float32), safetensors only."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import AutoTokenizer, UMT5EncoderModel

    from v2v.model.loading import make_scheduler, native_geometry, parse_dtype, scheduler_class

    folder = Path(folder)
    torch_dtype = parse_dtype(dtype)
    transformer = WanTransformer3DModel.from_pretrained(folder, subfolder="transformer", torch_dtype=torch_dtype,
                                                        use_safetensors=True)
    vae = AutoencoderKLWan.from_pretrained(folder, subfolder="vae", torch_dtype=torch.float32, use_safetensors=True)
    text_encoder = UMT5EncoderModel.from_pretrained(folder / "text_encoder", dtype=torch_dtype, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
    config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    base = scheduler_class(config["_class_name"]).from_pretrained(folder, subfolder="scheduler")
    for m in (transformer, vae, text_encoder):
        m.to(device).eval().requires_grad_(False)
    width, height, frames = native_geometry(folder)
    return WanComponents(transformer=transformer, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                         scheduler=make_scheduler(base, scheduler), reference=reference or str(folder), folder=folder,
                         width=width, height=height, frames=frames)
