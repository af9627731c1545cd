"""Step-level continuous batching: clips in flight, each at its own step of its own schedule, sharing forwards.

The idea of an LLM server's continuous batching, applied to denoising. A clip is admitted (its prompt embeddings,
its VAE posterior sample and noise at its strength, drawn from its own generator in the reference's order), takes
part in rounds, and leaves after its last step; the next clip takes its slot at once. Each round advances every
clip in flight by one of its own steps: one UNet forward per stream (clips of one latent shape; a clip without
guidance beside guided ones runs as the pair of itself), a timestep per clip, a guidance scale per clip, then each
clip's own scheduler step. So clips of different strengths, step counts, guidance scales, prompts and schedulers
share forwards, and the batch stays full until the input runs out.

Per clip the result is what `sampler.restyle` gives for the clip alone: the same draws in the same order; with
`batch_invariant` (one forward per clip) the same bits, else equal up to batched kernels' rounding.

    batcher = StepBatcher(components, capacity=4)
    batcher.admit("a", frames, ClipSettings("ink", seed=1))
    while batcher.active:
        done, failed = batcher.step()
        frames = [batcher.finish(c) for c in done]
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager

import torch

from v2v.model.sampler import (
    ClipSettings,
    SamplerInputError,
    _predict_noise,
    _step_kwargs,
    check_inputs,
    clip_timesteps,
    decode_frames,
    encode_prompts,
    prepare_latents,
    schedule,
)


@dataclass(eq=False)
class InFlight:
    """One clip between admission and its last step."""

    key: Any  # the caller's handle
    settings: ClipSettings
    sched: Any  # its own scheduler instance (state: step index, a multistep solver's history)
    timesteps: torch.Tensor  # (S,) the steps its strength leaves
    latents: torch.Tensor  # (1, 4, F, h, w)
    cond: torch.Tensor  # (1, 77, D)
    uncond: torch.Tensor | None  # (1, 77, D); None: guidance off (scale <= 1)
    step_kwargs: dict  # its generator (and eta) for schedulers that draw noise
    done: int = 0  # steps taken
    model_s: float = 0.0  # its share of the model's time: admission, its share of each forward it was in, decode
    admitted_at: float = field(default_factory=time.time)  # unix time its admission began

    @property
    def remaining(self) -> int:
        return len(self.timesteps) - self.done

    @property
    def stream(self) -> tuple:
        """Clips that can share a forward: those of one latent shape (C, F, h, w)."""
        return tuple(self.latents.shape[1:])


class StepBatcher:
    """Up to `capacity` clips in flight on one model (`components`, as model.loading loads them).

    fatal(e): errors that no retry can help (a broken GPU); they propagate. Any other RuntimeError of a forward
    (torch's errors, out-of-memory among them) is retried clip by clip, inside `own_size()` (the speed layer's
    `unpadded`: a clip alone at its own size, not padded to a compiled batch); a clip that fails alone leaves as
    failed, and after an out-of-memory every later forward runs clip by clip (`alone`).
    """

    def __init__(self, components, capacity: int, *, clip_skip: int | None = None, vae_chunk: int = 8,
                 batch_invariant: bool = False, fatal: Callable[[BaseException], bool] = lambda e: False,
                 own_size: Callable[[], ContextManager] = contextlib.nullcontext):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.components, self.capacity = components, capacity
        self.clip_skip, self.vae_chunk, self.batch_invariant, self.fatal = clip_skip, vae_chunk, batch_invariant, fatal
        self.own_size = own_size
        self.active: list[InFlight] = []
        self.alone = False
        self.forwards = 0  # UNet forwards run, and the clip-steps they carried (their ratio: clips per forward)
        self.clip_steps = 0

    @property
    def free(self) -> int:
        return self.capacity - len(self.active)

    def stream_of(self, video: torch.Tensor) -> tuple:
        """The stream a clip would join: its latent shape (C, F, h, w), from uint8 (F, H, W, 3) frames or float
        (C, F, h, w) latents."""
        if video.dtype != torch.uint8:
            return tuple(video.shape)
        s = self.components.vae_scale_factor
        return (self.components.unet.config.in_channels, video.shape[0], video.shape[1] // s, video.shape[2] // s)

    def admissible(self, streams: list[tuple]) -> list[int]:
        """Which waiting clips (given by their streams, oldest first) to admit now: those of the stream in flight
        (with none in flight, of the stream most of them wait in, the oldest's on a tie), oldest first, as many as
        slots are free. A clip of another stream waits until this one drains: taking it in would cost a second
        forward every round (a video's shorter last clip), where leaving a slot empty costs only that slot."""
        if not streams or not self.free:
            return []
        if self.active:
            now = max({c.stream for c in self.active}, key=lambda k: sum(c.stream == k for c in self.active))
        else:
            now = max(dict.fromkeys(streams), key=streams.count)  # dict: first-seen order breaks ties
        return [i for i, k in enumerate(streams) if k == now][: self.free]

    @torch.no_grad()
    def admit(self, key, video: torch.Tensor, settings: ClipSettings, scheduler=None) -> InFlight:
        """Take one clip in: `video` uint8 (F, H, W, 3) frames or float (4, F, h, w) latents. `scheduler` (a
        configured diffusers scheduler, copied) defaults to the model's. Raises SamplerInputError for inputs the
        sampler cannot run on; the clip is not admitted then."""
        if self.free <= 0:
            raise RuntimeError(f"StepBatcher.admit: all {self.capacity} slots are in use; step until one frees")
        c = self.components
        check_inputs(video[None], [settings], c.vae_scale_factor)
        t0, wall0 = time.perf_counter(), time.time()
        name = settings.name or str(key)
        guided = settings.guidance_scale > 1.0
        cond, uncond = encode_prompts(c.tokenizer, c.text_encoder, [settings.prompt],
                                      [settings.negative_prompt] if guided else None, self.clip_skip, [name])
        dtype = c.unet.dtype
        sched, timesteps = schedule(scheduler if scheduler is not None else c.scheduler,
                                    settings.num_inference_steps, settings.strength)
        gen = torch.Generator("cpu").manual_seed(settings.seed)
        latents = prepare_latents(c.vae, sched, video, timesteps, gen, dtype, self.vae_chunk)
        clip = InFlight(key, settings, sched, timesteps, latents, cond.to(dtype),
                        uncond.to(dtype) if guided else None, _step_kwargs(sched, gen, settings.eta), admitted_at=wall0)
        clip.model_s = time.perf_counter() - t0
        self.active.append(clip)
        return clip

    def step(self) -> tuple[list[InFlight], list[tuple[InFlight, BaseException]]]:
        """One round: every clip in flight takes its next step. Returns (the clips whose last step this was,
        the clips that failed with their errors); both have left."""
        streams: dict[tuple, list[InFlight]] = {}
        for clip in self.active:
            streams.setdefault(clip.stream, []).append(clip)
        failed: list[tuple[InFlight, BaseException]] = []
        for clips in streams.values():
            t0 = time.perf_counter()
            try:
                if self.alone:
                    self._each_alone(clips, failed)
                else:
                    self._advance(clips)
            except RuntimeError as e:  # fatal ones propagate; nothing has changed for any clip
                if self.fatal(e):
                    raise
                if isinstance(e, torch.cuda.OutOfMemoryError):
                    torch.cuda.empty_cache()
                    self.alone = True
                self._each_alone(clips, failed)
            share = (time.perf_counter() - t0) / len(clips)
            for clip in clips:
                clip.model_s += share
        gone = {id(c) for c, _ in failed}
        done = [c for c in self.active if id(c) not in gone and c.remaining == 0]
        gone |= {id(c) for c in done}
        self.active = [c for c in self.active if id(c) not in gone]
        return done, failed

    def _each_alone(self, clips: list[InFlight], failed: list) -> None:
        """Each clip's forward on its own, at its own size; a clip that fails alone joins `failed`."""
        for clip in clips:
            try:
                with self.own_size():
                    self._advance([clip])
            except RuntimeError as e:
                if self.fatal(e):
                    raise
                if isinstance(e, torch.cuda.OutOfMemoryError):
                    torch.cuda.empty_cache()
                failed.append((clip, e))

    @torch.no_grad()
    def _advance(self, clips: list[InFlight]) -> None:
        """One UNet forward for `clips` (one stream), then each clip's own scheduler step. A forward that raises
        changes no clip."""
        t = [c.timesteps[c.done] for c in clips]
        scaled = torch.cat([c.sched.scale_model_input(c.latents, ti) for c, ti in zip(clips, t)])
        if self.batch_invariant and len(clips) > 1:  # one forward per clip: its bits never depend on the others
            eps = [self._noise([c], scaled[i : i + 1], t[i : i + 1])[0] for i, c in enumerate(clips)]
            self.forwards += len(clips)
        else:
            eps = self._noise(clips, scaled, t)
            self.forwards += 1
        self.clip_steps += len(clips)
        for c, ti, e in zip(clips, t, eps):
            # (1, 4, F, h, w) -> (F, 4, h, w): the scheduler sees frames as a batch of images
            x = c.sched.step(e[0].permute(1, 0, 2, 3), ti, c.latents[0].permute(1, 0, 2, 3), **c.step_kwargs)
            c.latents = x.prev_sample.permute(1, 0, 2, 3).unsqueeze(0).contiguous()  # as the sampler stacks them
            c.done += 1

    def _noise(self, clips: list[InFlight], scaled: torch.Tensor, t: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each clip's guided noise prediction (1, 4, F, h, w) from one UNet forward over `scaled` (B, 4, F, h, w).
        Where some clips are guided, a clip without guidance runs as the pair of itself (its text embedding in
        both halves) and keeps the text half: one forward for all, as the compiled UNet takes pairs."""
        unet = self.components.unet
        cond = torch.cat([c.cond for c in clips])
        guided = [c.uncond is not None for c in clips]
        if not any(guided):
            return list(_predict_noise(unet, scaled, clip_timesteps(t), cond, None).split(1))
        uncond = torch.cat([c.uncond if g else c.cond for c, g in zip(clips, guided)])
        noise_uncond, noise_text = _predict_noise(unet, scaled, clip_timesteps(t), cond, uncond).chunk(2)
        out = []
        for i, (c, g) in enumerate(zip(clips, guided)):
            u, x = noise_uncond[i : i + 1], noise_text[i : i + 1]
            scale = torch.tensor(c.settings.guidance_scale, dtype=torch.float32).to(x.device, x.dtype)
            out.append(u + scale * (x - u) if g else x)
        return out

    @torch.no_grad()
    def finish(self, clip: InFlight) -> torch.Tensor:
        """A finished clip's frames: float32 (F, H, W, 3) in [0, 1] on the model's device."""
        if clip.remaining:
            raise SamplerInputError(f"{clip.settings.name or clip.key}: {clip.remaining} steps remain")
        t0 = time.perf_counter()
        frames = decode_frames(self.components.vae, clip.latents, self.vae_chunk)[0]
        clip.model_s += time.perf_counter() - t0
        return frames


def run_all(batcher: StepBatcher, items: list, window: int | None = None, on_done=None) -> dict:
    """Every item (key, video, settings[, scheduler]) through `batcher`, admitted as `admissible` says among the
    oldest `window` waiting (all, by default): {key: final latents (1, 4, F, h, w)}, or the exception for a clip
    that failed. `on_done(batcher, clip)` sees each finished clip (to decode it, say). What tests and the benchmark
    drive; the job's actor does the same over its rows."""
    waiting, out = list(items), {}
    while waiting or batcher.active:
        seen = waiting[:window] if window else waiting
        chosen = batcher.admissible([batcher.stream_of(it[1]) for it in seen])
        for item in [seen[i] for i in chosen]:
            try:
                batcher.admit(*item)
            except SamplerInputError as e:
                out[item[0]] = e
        waiting = [it for j, it in enumerate(waiting) if j not in chosen]  # `seen` is its head
        if batcher.active:
            done, failed = batcher.step()
            for c in done:
                out[c.key] = c.latents
                if on_done:
                    on_done(batcher, c)
            out.update({c.key: e for c, e in failed})
    return out
