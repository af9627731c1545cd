"""The batched video-to-video sampler: B clips, one UNet forward per step, each clip with its own generator.

Numerically this is diffusers' deprecated `VideoToVideoSDPipeline` run once per clip: the same
preprocessing, the same strength -> start timestep rule, the same random draws from each clip's own CPU
generator in the same order and layout (VAE posterior sample, initial noise, scheduler noise). What differs is
that B clips share every UNet forward (cond and uncond together), and the VAE runs in frame chunks.

Every function here is plain tensors in, tensors out; Ray only wraps `restyle`.
"""

from __future__ import annotations

import copy
import inspect
import logging
import math
from dataclasses import dataclass
from itertools import groupby

import numpy as np
import torch

from v2v.config import denoising_steps

logger = logging.getLogger(__name__)


class SamplerInputError(ValueError):
    """Inputs the sampler cannot run on; the message says what is wrong and how to fix it."""


@dataclass(frozen=True)
class ClipSettings:
    """How one clip is restyled. `name` only appears in messages (e.g. "clip3 / 00002")."""

    prompt: str
    seed: int
    negative_prompt: str = ""
    strength: float = 0.6
    num_inference_steps: int = 40
    guidance_scale: float = 15.0
    eta: float = 0.0  # DDIM's eta; ignored by schedulers that take none
    name: str = ""


# 1. Checks ---------------------------------------------------------------------------------------------


def check_inputs(video: torch.Tensor, clips: list[ClipSettings], vae_scale_factor: int) -> None:
    if not isinstance(video, torch.Tensor):
        raise SamplerInputError(f"video must be a torch.Tensor, got {type(video).__name__}; use torch.from_numpy")
    if len(clips) == 0:
        raise SamplerInputError("no clips given")
    if video.shape[0] != len(clips):
        raise SamplerInputError(f"video holds {video.shape[0]} clips but {len(clips)} clip settings were given")
    if video.dtype == torch.uint8:
        if video.ndim != 5 or video.shape[-1] != 3:
            raise SamplerInputError(f"uint8 frames must be (B, F, H, W, 3) RGB, got shape {tuple(video.shape)}")
        h, w = video.shape[2], video.shape[3]
        if h % vae_scale_factor or w % vae_scale_factor:
            fix_h = max(vae_scale_factor, round(h / vae_scale_factor) * vae_scale_factor)
            fix_w = max(vae_scale_factor, round(w / vae_scale_factor) * vae_scale_factor)
            raise SamplerInputError(
                f"frame size {w}x{h} (WxH) is not a multiple of {vae_scale_factor}; resize to {fix_w}x{fix_h}"
            )
    elif video.is_floating_point():
        if video.ndim != 5 or video.shape[1] != 4:
            raise SamplerInputError(f"latents must be (B, 4, F, h, w) floats, got shape {tuple(video.shape)}")
        if torch.isnan(video).any():
            raise SamplerInputError("latents contain NaN")
    else:
        raise SamplerInputError(f"video must be uint8 frames or float latents, got dtype {video.dtype}")
    if video.shape[1 if video.dtype == torch.uint8 else 2] < 1:
        raise SamplerInputError("a clip needs at least one frame")
    check_settings(clips)


def check_settings(clips: list[ClipSettings]) -> None:
    """Each clip's settings, whatever the model: strength, steps, guidance, seed and prompts."""
    for i, c in enumerate(clips):
        who = c.name or f"clip {i}"
        if not isinstance(c.strength, (int, float)) or math.isnan(c.strength) or not 0 < c.strength <= 1:
            raise SamplerInputError(f"{who}: strength must be in (0, 1], got {c.strength}")
        if not isinstance(c.num_inference_steps, int) or c.num_inference_steps < 1:
            raise SamplerInputError(f"{who}: num_inference_steps must be an integer >= 1, got {c.num_inference_steps}")
        if int(c.num_inference_steps * c.strength) < 1:
            raise SamplerInputError(
                f"{who}: strength {c.strength} x {c.num_inference_steps} steps leaves no denoising step; "
                f"raise either so that their product is at least 1"
            )
        if not math.isfinite(c.guidance_scale):
            raise SamplerInputError(f"{who}: guidance_scale must be finite, got {c.guidance_scale}")
        if not isinstance(c.seed, int) or not 0 <= c.seed < 2**64:
            raise SamplerInputError(f"{who}: seed must be an integer in [0, 2**64), got {c.seed!r}")
        if not isinstance(c.prompt, str) or not isinstance(c.negative_prompt, str):
            raise SamplerInputError(f"{who}: prompt and negative_prompt must be strings")


# 2. Text ------------------------------------------------------------------------------------------------


def _tokenize(tokenizer, texts: list[str], names: list[str]) -> torch.Tensor:
    ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    for text, name in zip(texts, names):
        n = len(tokenizer(text).input_ids)
        if n > tokenizer.model_max_length:
            logger.warning("%s: prompt has %d tokens; truncated to the text encoder's %d: %r", name, n,
                           tokenizer.model_max_length, text[:80])
    return ids  # (B, 77)


@torch.no_grad()
def encode_prompts(tokenizer, text_encoder, prompts: list[str], negative_prompts: list[str] | None,
                   clip_skip: int | None = None, names: list[str] | None = None):
    """(B, 77, D) prompt embeddings and, if negative prompts are given, (B, 77, D) negative ones.

    As in the reference, `clip_skip` applies to the prompt only; negative prompts use the last layer.
    """
    names = names or [f"clip {i}" for i in range(len(prompts))]
    device = text_encoder.device
    ids = to_device(_tokenize(tokenizer, prompts, names), device)
    if clip_skip is None:
        cond = text_encoder(ids)[0]
    else:
        layers = text_encoder.config.num_hidden_layers
        if not 0 <= clip_skip < layers:
            raise SamplerInputError(f"clip_skip must be in [0, {layers}) for this text encoder of {layers} layers, "
                                    f"got {clip_skip}")
        # hidden_states: the embeddings, then each layer's output; the last layer's output is
        # last_hidden_state before the final norm, so clip_skip 0 gives the same as None.
        hidden = text_encoder(ids, output_hidden_states=True).hidden_states[-(clip_skip + 1)]
        # transformers 5 keeps CLIPTextModel's parts on the model itself; 4.x under .text_model (the reference's
        # path, which therefore fails with clip_skip on transformers 5)
        cond = getattr(text_encoder, "text_model", text_encoder).final_layer_norm(hidden)
    if negative_prompts is None:
        return cond, None
    neg_ids = to_device(_tokenize(tokenizer, negative_prompts, [f"{n} (negative)" for n in names]), device)
    return cond, text_encoder(neg_ids)[0]


# 3. Timesteps --------------------------------------------------------------------------------------------


def schedule(base_scheduler, num_inference_steps: int, strength: float):
    """A fresh scheduler for one clip, set to start where `strength` says, and its timesteps.

    strength 1 runs all steps from pure noise; strength s skips the first (1 - s) of them.
    """
    sched = copy.deepcopy(base_scheduler)
    sched.set_timesteps(num_inference_steps, device="cpu")
    t_start = max(num_inference_steps - denoising_steps(num_inference_steps, strength), 0)
    timesteps = sched.timesteps[t_start * sched.order :]
    if hasattr(sched, "set_begin_index"):
        sched.set_begin_index(t_start * sched.order)
    return sched, timesteps


def _step_kwargs(sched, generator, eta: float) -> dict:
    params = set(inspect.signature(sched.step).parameters)
    kw = {}
    if "eta" in params:
        kw["eta"] = eta
    if "generator" in params:
        kw["generator"] = generator
    return kw


# 4. VAE --------------------------------------------------------------------------------------------------


def to_device(x: torch.Tensor, device) -> torch.Tensor:
    """`x` on `device`. From the CPU to a GPU through pinned memory, without waiting: a copy from pageable memory
    that blocks (`x.to(device)`) first waits for all the work queued on the GPU, which then idles while the host
    prepares the next. The same values either way."""
    device = torch.device(device)
    if device.type != "cuda" or x.device.type != "cpu":
        return x.to(device)
    return x.pin_memory().to(device, non_blocking=True)  # torch keeps the pinned block until the copy is done


def unit_range(frames: torch.Tensor) -> torch.Tensor:
    """uint8 -> float32 `frames / 255` in [0, 1], on their device, the bits of the reference's division on the CPU.
    On a GPU the divisor is a tensor there: torch divides a GPU tensor by a Python number as a multiply by its
    reciprocal, which rounds some values differently in the last bit."""
    x = frames.to(torch.float32)
    return x / (255.0 if x.device.type == "cpu" else torch.full((), 255.0, device=x.device))


def frames_to_pixels(frames: torch.Tensor) -> torch.Tensor:
    """uint8 (F, H, W, 3) -> float32 (F, 3, H, W) in [-1, 1], the reference preprocessing exactly."""
    return (2.0 * unit_range(frames) - 1.0).permute(0, 3, 1, 2)


@torch.no_grad()
def encode_posterior(vae, pixels: torch.Tensor, chunk: int):
    """VAE posterior of (F, 3, H, W) pixels, encoded `chunk` frames at a time; one distribution over F."""
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    params = [vae.encode(pixels[i : i + chunk]).latent_dist.parameters for i in range(0, pixels.shape[0], chunk)]
    return DiagonalGaussianDistribution(torch.cat(params))  # mean/logvar of (F, 4, h, w)


@torch.no_grad()
def decode_frames(vae, latents: torch.Tensor, chunk: int) -> torch.Tensor:
    """(B, 4, F, h, w) latents -> float32 (B, F, H, W, 3) frames in [0, 1] on the VAE's device, `chunk` frames
    per VAE call."""
    b, c, f, h, w = latents.shape
    flat = (latents / vae.config.scaling_factor).permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
    images = torch.cat([vae.decode(flat[i : i + chunk]).sample.float() for i in range(0, b * f, chunk)])
    images = (images / 2 + 0.5).clamp(0, 1)  # (B*F, 3, H, W)
    return images.reshape(b, f, *images.shape[1:]).permute(0, 1, 3, 4, 2)


def clip_sums(frames: torch.Tensor) -> torch.Tensor:
    """(B,) float32 sums of each clip's values, e.g. of (B, F, H, W, 3) frames: one sum carries any NaN or infinity
    of its clip (NaN stays NaN; +inf and -inf give inf or NaN). 6 ms for 4 clips of 24 x 320 x 576 x 3 frames on
    one CPU thread, where `isfinite` over every value takes 200 ms. (A sum of finite values past float32's range
    would count too; frames lie in [0, 1].)"""
    return frames.sum(dim=tuple(range(1, frames.ndim)), dtype=torch.float32)  # any layout (a permuted view too)


def nonfinite_clips(frames: torch.Tensor) -> list[int]:
    """Indices along dim 0 of the clips that hold a NaN or an infinity anywhere (`clip_sums`). Decoded frames come
    clamped to [0, 1], which keeps NaN, so NaN latents (float16 overflow in the UNet or the VAE, NaN weights) show
    here."""
    return nonfinite(clip_sums(frames))


def nonfinite(sums: torch.Tensor) -> list[int]:
    """Indices of the NaN or infinite values of (B,) `clip_sums`."""
    return (~torch.isfinite(sums)).nonzero().flatten().tolist()


def uint8_frames(frames: torch.Tensor) -> torch.Tensor:
    """float frames in [0, 1] -> uint8, on their device, rounded as the reference's postprocessing rounds (IEEE
    multiply, round half to even; NaN would turn into 0: black, check `clip_sums` first). On a GPU a quarter of
    the bytes then cross to the host."""
    return (frames * 255).round().to(torch.uint8)


class Readback:
    """Tensors on their way to the host: `Readback(name=tensor, ...)`, then `.wait()` -> {name: CPU tensor}.

    From a GPU, each is copied into pinned memory behind the work queued so far, with an event after the copies;
    `wait` waits for that event only, not for the work queued after it. So the host can queue the GPU's next work
    (the next round's forward) first and read these while it runs: a blocking read (`.cpu()`, `.item()`) would
    wait for everything queued, and the GPU would idle while the host then does its part. On the CPU they are the
    tensors themselves.
    """

    def __init__(self, **tensors: torch.Tensor):
        self.event = None
        if not any(t.is_cuda for t in tensors.values()):
            self.host = tensors
            return
        # torch's host allocator reuses the pinned blocks once their copies are done
        self.host = {k: torch.empty(t.shape, dtype=t.dtype, pin_memory=True).copy_(t, non_blocking=True)
                     for k, t in tensors.items()}
        self.event = torch.cuda.Event()
        self.event.record()

    def wait(self) -> dict[str, torch.Tensor]:
        if self.event is not None:
            self.event.synchronize()
        return self.host


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """float frames in [0, 1] -> uint8 on the CPU (`uint8_frames`, converted where the frames are)."""
    return Readback(u8=uint8_frames(frames)).wait()["u8"].numpy()


def to_uint8_checked(frames: torch.Tensor) -> tuple[np.ndarray, list[int]]:
    """What the job does with restyled frames (B, F, H, W, 3), on their device: (uint8 frames on the CPU, the
    indices of the clips that hold NaN or infinities, whose frames mean nothing)."""
    got = Readback(u8=uint8_frames(frames), sums=clip_sums(frames)).wait()
    return got["u8"].numpy(), nonfinite(got["sums"])


# 5. Latents ----------------------------------------------------------------------------------------------


def draw(shape: tuple, generator: torch.Generator, dtype: torch.dtype, device) -> torch.Tensor:
    """Standard normal noise from a CPU generator, drawn as diffusers' `randn_tensor` draws it (on the CPU in
    `dtype`, then moved), moved without waiting for the GPU (`to_device`)."""
    return to_device(torch.randn(shape, generator=generator, device="cpu", dtype=dtype), device)


def add_noise(sched, init: torch.Tensor, noise: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
    """`sched.add_noise(init, noise, timestep)` (a flow-matching scheduler's `scale_noise`), its copies to the GPU
    through `to_device`: DDIM, DDPM and PNDM move `alphas_cumprod` there (and keep it there) and the timestep, each
    copy blocking; here both are there before the call, so it does not wait for the GPU. The sigma and flow
    schedulers still wait once: they index their sigmas with a Python list, which torch copies to the GPU blocking.
    The same values either way."""
    if init.device.type == "cuda":
        if isinstance(getattr(sched, "alphas_cumprod", None), torch.Tensor):
            sched.alphas_cumprod = to_device(sched.alphas_cumprod, init.device)
        timestep = to_device(timestep, init.device)
    if hasattr(sched, "add_noise"):
        return sched.add_noise(init, noise, timestep)
    return sched.scale_noise(init, timestep, noise)


@torch.no_grad()
def prepare_latents(vae, sched, video: torch.Tensor, timestep: torch.Tensor, generator: torch.Generator,
                    dtype: torch.dtype, chunk: int) -> torch.Tensor:
    """One clip's noised starting latents (1, 4, F, h, w).

    `video` is uint8 (F, H, W, 3) frames, or float (4, F, h, w) latents that skip the VAE. Draws, in order,
    from `generator`: the posterior sample (F, 4, h, w), then the noise (F, 4, h, w). With the DDIM family's
    schedulers nothing here waits for the GPU: the clip is admitted while the forwards queued before it run
    (`add_noise` says where others wait).
    """
    device = vae.device
    if video.dtype == torch.uint8:
        # converted where the VAE runs: a quarter of the bytes cross, and no float pass over them on the host
        pixels = frames_to_pixels(to_device(video, device)).to(dtype)
        posterior = encode_posterior(vae, pixels, chunk)  # its .sample(generator), the draw moved without waiting
        sample = posterior.mean + posterior.std * draw(posterior.mean.shape, generator, posterior.parameters.dtype,
                                                       device)
        init = sample * vae.config.scaling_factor
    else:
        init = to_device(video, device).to(dtype).permute(1, 0, 2, 3)  # (4, F, h, w) -> (F, 4, h, w)
    noise = draw(init.shape, generator, dtype, device)
    noised = add_noise(sched, init, noise, timestep[:1])
    return noised.permute(1, 0, 2, 3).unsqueeze(0)  # (F, 4, h, w) -> (1, 4, F, h, w)


# 6. Denoising --------------------------------------------------------------------------------------------


def takes_pairs(unet) -> bool:
    """Whether `unet`'s forward takes a guided step's latents once beside its 2B embeddings (the speed layer's
    shared_prefix sets `takes_pairs` on the forward it installs), rather than stacked twice."""
    return getattr(unet.forward, "takes_pairs", False)


def guided_latents(unet, latents: torch.Tensor) -> torch.Tensor:
    """A guided step's latents (B, C, F, h, w) as `unet`'s forward takes them beside its 2B embeddings: once
    where it takes pairs, else stacked twice (2B, ...) for the unconditional and the text halves."""
    return latents if takes_pairs(unet) else torch.cat([latents, latents])


def clip_timesteps(timesteps: list[torch.Tensor], device) -> torch.Tensor:
    """B clips' current timesteps (0-d tensors of their schedulers' dtype) as one (B,) tensor on `device` (the
    latents'): the UNet embeds a timestep per latent, so clips at different steps share a forward. Every forward
    gets its timesteps in this form (one per clip, never one for all), so a compiled UNet sees one input layout.
    On the device because diffusers' UNet moves a 0-d timestep there itself but not a (B,) one, whose embedding
    would then meet the GPU's weights on the CPU."""
    return to_device(torch.stack(list(timesteps)), device)


def _predict_noise(unet, scaled: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
                   uncond: torch.Tensor | None) -> torch.Tensor:
    """Guided-noise inputs for B clips in one UNet forward: (B, 4, F, h, w) latents at their (B,) timesteps ->
    (2B, ...) uncond/text predictions (or (B, ...) text predictions without guidance)."""
    if uncond is None:
        return unet(scaled, t, encoder_hidden_states=cond, return_dict=False)[0]
    embeddings = torch.cat([uncond, cond])  # (2B, 77, D): uncond first, as the reference concatenates them
    # the latents (and their timesteps) twice, or once where the UNet shares the layers before the embeddings
    # enter (`shared_prefix`)
    return unet(guided_latents(unet, scaled), guided_latents(unet, t), encoder_hidden_states=embeddings,
                return_dict=False)[0]


@torch.no_grad()
def denoise(unet, scheds: list, timesteps: torch.Tensor, latents: torch.Tensor, cond: torch.Tensor,
            uncond: torch.Tensor | None, guidance: torch.Tensor, step_kwargs: list[dict],
            batch_invariant: bool = False) -> torch.Tensor:
    """Run B clips that share `timesteps` to the end: one UNet forward per step for all of them.

    latents (B, 4, F, h, w); cond/uncond (B, 77, D); guidance (B,). Each clip steps its own scheduler with
    its own generator, so its draws do not depend on the others. Batched matrix kernels round differently
    for different batch sizes (~1e-5 in float32); `batch_invariant` runs one forward per clip instead, so a
    clip's bits never depend on its neighbours (what lossless outputs across batch sizes need).
    """
    cfg = uncond is not None
    g = guidance.to(latents.device, latents.dtype).view(-1, 1, 1, 1, 1)
    for t in timesteps:
        scaled = torch.cat([s.scale_model_input(latents[i : i + 1], t) for i, s in enumerate(scheds)])
        if batch_invariant:
            one = clip_timesteps([t], latents.device)
            preds = [_predict_noise(unet, scaled[i : i + 1], one, cond[i : i + 1], uncond[i : i + 1] if cfg else None)
                     for i in range(len(scheds))]
            noise_pred = torch.cat([p.chunk(2)[k] for k in range(2) for p in preds]) if cfg else torch.cat(preds)
        else:
            noise_pred = _predict_noise(unet, scaled, clip_timesteps([t] * len(scheds), latents.device), cond, uncond)
        if cfg:
            noise_uncond, noise_text = noise_pred.chunk(2)
            noise_pred = noise_uncond + g * (noise_text - noise_uncond)
        stepped = []
        for i, s in enumerate(scheds):
            # (1, 4, F, h, w) -> (F, 4, h, w): the scheduler sees frames as a batch of images
            x = latents[i].permute(1, 0, 2, 3)
            eps = noise_pred[i].permute(1, 0, 2, 3)
            x = s.step(eps, t, x, **step_kwargs[i]).prev_sample
            stepped.append(x.permute(1, 0, 2, 3))
        latents = torch.stack(stepped)
    return latents


# 7. The whole thing --------------------------------------------------------------------------------------


@torch.no_grad()
def restyle(components, video: torch.Tensor, clips: list[ClipSettings], *, scheduler=None,
            clip_skip: int | None = None, vae_chunk: int = 8, output: str = "frames",
            batch_invariant: bool = False) -> torch.Tensor:
    """Restyle B clips together.

    video: uint8 (B, F, H, W, 3) RGB frames, or float (B, 4, F, h, w) latents (the VAE encode is skipped).
    Returns float32 (B, F, H, W, 3) frames in [0, 1] on the CPU; with output="device_frames" the same on the
    model's device (for `to_uint8_checked`, as the job does); with output="latents" the final (B, 4, F, h, w)
    latents. Clips with different step counts, strengths or guidance on/off run in groups.
    """
    if output not in ("frames", "device_frames", "latents"):
        raise SamplerInputError(f"output must be 'frames', 'device_frames' or 'latents', got {output!r}")
    if vae_chunk < 1:
        raise SamplerInputError(f"vae_chunk must be >= 1, got {vae_chunk}")
    check_inputs(video, clips, components.vae_scale_factor)
    unet, vae = components.unet, components.vae
    dtype = unet.dtype
    base = scheduler if scheduler is not None else components.scheduler
    names = [c.name or f"clip {i}" for i, c in enumerate(clips)]
    cfg = [c.guidance_scale > 1.0 for c in clips]

    # Text for all B clips: (B, 77, D) each; clip by clip when the result must not depend on the batch.
    negatives = [c.negative_prompt for c in clips] if any(cfg) else None
    if batch_invariant:
        pairs = [encode_prompts(components.tokenizer, components.text_encoder, [c.prompt],
                                [c.negative_prompt] if negatives else None, clip_skip, [n])
                 for c, n in zip(clips, names)]
        cond = torch.cat([p[0] for p in pairs])
        uncond = torch.cat([p[1] for p in pairs]) if negatives else None
    else:
        cond, uncond = encode_prompts(components.tokenizer, components.text_encoder, [c.prompt for c in clips],
                                      negatives, clip_skip, names)
    cond, uncond = cond.to(dtype), (uncond.to(dtype) if uncond is not None else None)

    results: list[torch.Tensor | None] = [None] * len(clips)
    key = lambda i: (clips[i].num_inference_steps, clips[i].strength, cfg[i])  # noqa: E731
    for (steps, strength, group_cfg), members in groupby(sorted(range(len(clips)), key=key), key=key):
        idx = list(members)
        scheds, starts, kwargs = [], [], []
        for i in idx:
            sched, timesteps = schedule(base, steps, strength)
            gen = torch.Generator("cpu").manual_seed(clips[i].seed)
            starts.append(prepare_latents(vae, sched, video[i], timesteps, gen, dtype, vae_chunk))
            scheds.append(sched)
            kwargs.append(_step_kwargs(sched, gen, clips[i].eta))
        guidance = torch.tensor([clips[i].guidance_scale for i in idx], dtype=torch.float32)
        latents = denoise(unet, scheds, timesteps, torch.cat(starts), cond[idx],
                          uncond[idx] if group_cfg else None, guidance, kwargs, batch_invariant)
        for j, i in enumerate(idx):
            results[i] = latents[j : j + 1]
    latents = torch.cat(results)  # (B, 4, F, h, w)
    if output == "latents":
        return latents
    frames = decode_frames(vae, latents, vae_chunk)
    return frames if output == "device_frames" else frames.cpu()
