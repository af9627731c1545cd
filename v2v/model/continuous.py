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
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager

import torch

from v2v.model.backbone import PromptCache, backbone_for
from v2v.model.sampler import ClipSettings, SamplerInputError, _step_kwargs, schedule


@dataclass(eq=False)
class InFlight:
    """One clip between admission and its last step."""

    key: Any  # the caller's handle
    settings: ClipSettings
    sched: Any  # its own scheduler instance (state: step index, a multistep solver's history)
    timesteps: torch.Tensor  # (S,) the steps its strength leaves
    latents: torch.Tensor  # (1, C, f, h, w)
    cond: torch.Tensor  # (1, L, D) prompt embeddings
    uncond: torch.Tensor | None  # (1, L, D); None: guidance off (scale <= 1)
    step_kwargs: dict  # its generator (and eta) for schedulers that draw noise
    done: int = 0  # steps taken
    # its share of the model's time: of each round it took part in, the wall time from that round's start to the
    # next's (its forward, and the admissions and decodes done between rounds), shared equally among the round's
    # clips; the last round's once the next starts or the caller `settle`s
    model_s: float = 0.0
    admitted_at: float = field(default_factory=time.time)  # unix time its admission began

    @property
    def remaining(self) -> int:
        return len(self.timesteps) - self.done

    @property
    def stream(self) -> tuple:
        """Clips that can share a forward: those of one latent shape (C, f, h, w)."""
        return tuple(self.latents.shape[1:])


class StepBatcher:
    """Up to `capacity` clips in flight on one model (`components`, as model.loading or model.wan loads them; what
    is particular to its family is its backbone's, v2v.model.backbone).

    fatal(e): errors that no retry can help (a broken GPU); they propagate. Any other RuntimeError of a forward
    (torch's errors, out-of-memory among them) is retried clip by clip, inside `own_size()` (the speed layer's
    `unpadded`: a clip alone at its own size, not padded to a compiled batch); a clip that fails alone leaves as
    failed, and after an out-of-memory every later forward runs clip by clip (`alone`).
    prompts: the prompt embeddings kept for later clips (backbone.PromptCache), shared across batchers; by default
    the batcher's own.
    """

    def __init__(self, components, capacity: int, *, clip_skip: int | None = None, vae_chunk: int = 8,
                 batch_invariant: bool = False, fatal: Callable[[BaseException], bool] = lambda e: False,
                 own_size: Callable[[], ContextManager] = contextlib.nullcontext, prompts: PromptCache | None = None):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.components, self.capacity = components, capacity
        self.backbone = backbone_for(components, clip_skip=clip_skip, vae_chunk=vae_chunk, prompts=prompts)
        self.batch_invariant, self.fatal = batch_invariant, fatal
        self.own_size = own_size
        self.active: list[InFlight] = []
        self.alone = False
        self.main: tuple | None = None  # the main stream (`_main`)
        self.forwards = 0  # UNet forwards run, and the clip-steps they carried (their ratio: clips per forward)
        self.clip_steps = 0
        self._round: tuple[float, list[InFlight]] | None = None  # the last round's start and clips, until closed

    @property
    def free(self) -> int:
        """Free slots of the main stream."""
        main = self._main([])
        return self.capacity - sum(c.stream == main for c in self.active)

    def _main(self, streams: list[tuple]) -> tuple | None:
        """The main stream (the full-length clips', in a job): it stays main while any of its clips is in flight or
        waits (`streams`: the waiting clips', oldest first); then the one most clips in flight are in, or with none
        in flight, the one most waiting clips are in, the oldest's on a tie."""
        if self.main is not None and (self.main in streams or any(c.stream == self.main for c in self.active)):
            return self.main
        counts = Counter(c.stream for c in self.active)
        if counts:
            self.main = max(counts, key=counts.get)
        elif streams:
            self.main = max(dict.fromkeys(streams), key=streams.count)
        return self.main

    def wants(self, streams: list[tuple]) -> bool:
        """Whether the caller should read another clip to wait beside `streams` (the waiting clips', oldest first):
        until 2 x capacity of them are in the main stream or 2 x capacity in other streams (clips set aside until a
        forward's worth of one length gathers, see `admissible`). So at most 4 x capacity decoded clips wait."""
        main = self._main(streams)
        in_main = sum(k == main for k in streams)
        return in_main < 2 * self.capacity and len(streams) - in_main < 2 * self.capacity

    def stream_of(self, video: torch.Tensor) -> tuple:
        """The stream a clip would join: its latent shape, from uint8 (F, H, W, 3) frames (or, for the UNet3D
        family, float (C, F, h, w) latents)."""
        return self.backbone.stream_of(video)

    def admissible(self, streams: list[tuple], last: bool = False) -> list[int]:
        """Which waiting clips (given by their streams, oldest first) to admit now. `last`: no more clips will come
        to wait beside these (the input, or a group of them, ends).

        The main stream's clips, oldest first, as many as its slots are free. A clip of another stream (a video's
        shorter last clip, of its own length) runs in a forward of its own beside the main one, up to `capacity`
        clips a stream, and takes no slot of the main stream. Such a stream takes clips only to fill its forward:
        once as many of its clips wait as it has free slots (`capacity` for one not in flight), or when 2 x
        capacity clips wait outside the main stream (the stream most of them are in; `wants` stops reading there),
        or with `last`. Draining the main stream to switch streams would leave its slots empty while its clips
        finish at their own steps; a stream running for one clip would cost a forward each round for it alone."""
        if not streams:
            return []
        counts = Counter(c.stream for c in self.active)
        main = self._main(streams)
        waiting: dict[tuple, list[int]] = {}
        for i, k in enumerate(streams):
            waiting.setdefault(k, []).append(i)
        out = waiting.pop(main, [])[: self.capacity - counts.get(main, 0)]
        crowded = sum(len(v) for v in waiting.values()) >= 2 * self.capacity
        for k, idx in sorted(waiting.items(), key=lambda kv: -len(kv[1])):  # most waiting first; stable on ties
            free = self.capacity - counts.get(k, 0)
            if free and (len(idx) >= free or last or crowded):
                out += idx[:free]
                crowded = False  # one stream filled makes room
        return sorted(out)

    @torch.no_grad()
    def admit(self, key, video: torch.Tensor, settings: ClipSettings, scheduler=None) -> InFlight:
        """Take one clip in: `video` uint8 (F, H, W, 3) frames or float (4, F, h, w) latents. `scheduler` (a
        configured diffusers scheduler, copied) defaults to the model's. Raises SamplerInputError for inputs the
        sampler cannot run on; the clip is not admitted then."""
        stream = self.stream_of(video)
        if sum(c.stream == stream for c in self.active) >= self.capacity:
            raise RuntimeError(f"StepBatcher.admit: all {self.capacity} slots of its stream are in use; step until "
                               "one frees")
        self.backbone.check(video, settings)
        wall0 = time.time()
        sched, timesteps = schedule(scheduler if scheduler is not None else self.components.scheduler,
                                    settings.num_inference_steps, settings.strength)
        gen = torch.Generator("cpu").manual_seed(settings.seed)
        latents, cond, uncond = self.backbone.admit(video, settings, sched, timesteps, gen, settings.name or str(key))
        clip = InFlight(key, settings, sched, timesteps, latents, cond, uncond, _step_kwargs(sched, gen, settings.eta),
                        admitted_at=wall0)
        self.active.append(clip)
        return clip

    def step(self) -> tuple[list[InFlight], list[tuple[InFlight, BaseException]]]:
        """One round: every clip in flight takes its next step. Returns (the clips whose last step this was,
        the clips that failed with their errors); both have left.

        Nothing here waits for the GPU (with the job's schedulers: one whose step draws noise, DDIM at eta > 0, copies
        its draw there blocking): the round is queued, and the host goes on to admit and decode while it runs."""
        self.settle()
        self._round = (time.perf_counter(), list(self.active))
        streams: dict[tuple, list[InFlight]] = {}
        for clip in self.active:
            streams.setdefault(clip.stream, []).append(clip)
        failed: list[tuple[InFlight, BaseException]] = []
        for clips in streams.values():
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
        gone = {id(c) for c, _ in failed}
        done = [c for c in self.active if id(c) not in gone and c.remaining == 0]
        gone |= {id(c) for c in done}
        self.active = [c for c in self.active if id(c) not in gone]
        return done, failed

    def settle(self) -> None:
        """Share the last round's wall time, up to now, among its clips (`InFlight.model_s`): the next `step` does
        it, or the caller once no step follows (the last clips' decodes done)."""
        if self._round is not None:
            t0, clips = self._round
            share = (time.perf_counter() - t0) / max(1, len(clips))
            for clip in clips:
                clip.model_s += share
            self._round = None

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
        """One forward for `clips` (one stream), then each clip's own scheduler step. A forward that raises
        changes no clip."""
        t = [c.timesteps[c.done] for c in clips]
        if self.batch_invariant and len(clips) > 1:  # one forward per clip: its bits never depend on the others
            eps = [self._predict([c], [ti])[0] for c, ti in zip(clips, t)]
            self.forwards += len(clips)
        else:
            eps = self._predict(clips, t)
            self.forwards += 1
        self.clip_steps += len(clips)
        for c, ti, e in zip(clips, t, eps):
            c.latents = self.backbone.step(c.sched, e, ti, c.latents, c.step_kwargs)
            c.done += 1

    def _predict(self, clips: list[InFlight], t: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each clip's guided prediction from one forward. Where some clips are guided, a clip without guidance
        runs as the pair of itself (its text embedding in both halves) and keeps the text half: one forward for
        all, as a compiled UNet takes pairs."""
        cond = torch.cat([c.cond for c in clips])
        guided = [c.uncond is not None for c in clips]
        uncond = torch.cat([c.uncond if g else c.cond for c, g in zip(clips, guided)]) if any(guided) else None
        return self.backbone.predict([c.latents for c in clips], [c.sched for c in clips], t, cond, uncond,
                                     [c.settings.guidance_scale for c in clips])

    @torch.no_grad()
    def finish(self, clip: InFlight) -> torch.Tensor:
        """A finished clip's frames: float32 (F, H, W, 3) in [0, 1] on the model's device."""
        if clip.remaining:
            raise SamplerInputError(f"{clip.settings.name or clip.key}: {clip.remaining} steps remain")
        return self.backbone.decode(clip.latents)


def fill_order(steps: list[int], groups: list | None = None) -> list[int]:
    """The order to admit a call's clips in (indices into `steps`, each clip's denoising steps): longest first.

    An actor's call ends when its last clip does, so the clips admitted last decide how long the slots of a
    part-filled batch stay empty: admitted longest first, the call's last clips are its shortest and finish close
    together (the longest-processing-time-first rule) rather than one long clip running alone at the end. `groups`
    (a key per clip, its LoRA set) keeps each run of one group together and in place: a change of group drains the
    clips in flight anyway."""
    groups = groups if groups is not None else [None] * len(steps)
    if len(groups) != len(steps):
        raise ValueError(f"fill_order: {len(steps)} step counts but {len(groups)} groups")
    order, start = [], 0
    for i in range(1, len(steps) + 1):
        if i == len(steps) or groups[i] != groups[start]:
            order += sorted(range(start, i), key=lambda j: -steps[j])  # stable: the manifest's order on ties
            start = i
    return order


def run_all(batcher: StepBatcher, items: list, as_actor: bool = False, on_done=None) -> dict:
    """Every item (key, video, settings[, scheduler]) through `batcher`: {key: final latents (1, 4, F, h, w)}, or the
    exception for a clip that failed. Clips are admitted as `admissible` says, among all items at once, or with
    `as_actor`, among those read so far as the job's actor reads its rows (`wants`). `on_done(batcher, clip)` sees
    each finished clip (to decode it, say). What tests and the benchmark drive; the job's actor does the same over
    its rows."""
    feed, waiting, streams, out = iter(items), [], [], {}
    exhausted = False
    while True:
        while not exhausted and (not as_actor or batcher.wants(streams)):
            item = next(feed, None)
            if item is None:
                exhausted = True
            else:
                waiting.append(item)
                streams.append(batcher.stream_of(item[1]))
        chosen = set(batcher.admissible(streams, last=exhausted))
        for item in [it for j, it in enumerate(waiting) if j in chosen]:
            try:
                batcher.admit(*item)
            except SamplerInputError as e:
                out[item[0]] = e
        waiting = [it for j, it in enumerate(waiting) if j not in chosen]
        streams = [k for j, k in enumerate(streams) if j not in chosen]
        if not batcher.active:
            if exhausted and not waiting:
                batcher.settle()
                return out
            continue
        done, failed = batcher.step()
        for c in done:
            out[c.key] = c.latents
            if on_done:
                on_done(batcher, c)
        out.update({c.key: e for c, e in failed})
