"""Calls at fixed shapes, so that one compiled graph serves every batch: short calls padded, results cut back."""

from __future__ import annotations

import contextlib
import contextvars

import torch

from v2v.speed.shared_prefix import as_unet_output

_UNPADDED = contextvars.ContextVar("v2v_unpadded", default=False)


@contextlib.contextmanager
def unpadded():
    """Within: FixedBatch and PadFrames call the eager forward at the call's own size instead of padding it to the
    compiled batch. For a clip retried alone after its batch ran out of GPU memory: padded back to the full
    batch, it would run out again."""
    token = _UNPADDED.set(True)
    try:
        yield
    finally:
        _UNPADDED.reset(token)


class DenoiserCall:
    """The denoiser's call convention (sample, timestep, encoder_hidden_states=..., return_dict=...), the UNet's and
    Wan's transformer's alike, over a function of three tensors, all on the model's device (a stored part or a CUDA
    graph takes tensors only). output(sample, return_dict): the model's own output (as_unet_output,
    as_transformer_output)."""

    def __init__(self, fn, eager, output=as_unet_output):
        self.fn, self.eager, self.output = fn, eager, output

    @staticmethod
    def tensors_only(forward):
        return lambda sample, t, e: forward(sample, t, encoder_hidden_states=e, return_dict=False)[0]

    def __call__(self, sample, timestep, encoder_hidden_states, return_dict: bool = True, **kwargs):
        if kwargs:  # the sampler passes none; anything else (e.g. cross_attention_kwargs) runs eager
            return self.eager(sample, timestep, encoder_hidden_states=encoder_hidden_states,
                              return_dict=return_dict, **kwargs)
        # diffusers moves a 0-d timestep to the sample's device itself: same values either way
        out = self.fn(sample, torch.as_tensor(timestep, device=sample.device), encoder_hidden_states)
        return self.output(out, return_dict)


def as_transformer_output(sample: torch.Tensor, return_dict: bool):
    """A noise (flow) prediction as diffusers' Wan transformer returns it: its output class, or a 1-tuple."""
    if return_dict:
        from diffusers.models.modeling_outputs import Transformer2DModelOutput

        return Transformer2DModelOutput(sample=sample)
    return (sample,)


def pad_rows(x, size: int):
    """(n, ...) -> (size, ...) by repeating the last row (n <= size): what the padded rows compute is cut away."""
    return x if x.shape[0] >= size else torch.cat([x, x[-1:].expand(size - x.shape[0], *x.shape[1:])])


class FixedBatch:
    """Calls a shape-specialized (compiled) UNet forward at one batch size and one clip shape.

    A call with fewer than `size` latents is padded by repeating its last latent (and text embedding) and the
    result is cut back, so every call reuses the one compiled graph; padded rows cost compute, not a compile.
    Larger calls, or `size=None`, pass through unchanged (and compile for their own shape).
    The first call fixes the clip shape (C, F, h, w). Latents of another shape (a video's shorter last clip)
    go to `eager` when given: each new frame count would otherwise cost a full compile.

    Over a forward that takes a guided step's pairs (`eager.takes_pairs`, v2v.speed.shared_prefix), `size` counts embeddings and
    the graph takes size / 2 latents: a guided call's two halves of embeddings are padded each to size / 2; an
    unguided call of up to size / 2 latents runs as a pair of itself and keeps the first half (one graph for
    both, at the cost an unguided call padded to `size` had before).
    """

    def __init__(self, forward, size: int | None, eager=None):
        self.forward = forward
        self.size = size
        self.eager = eager
        self.shape = None
        self.takes_pairs = getattr(eager, "takes_pairs", False)

    def __call__(self, sample, timestep, encoder_hidden_states, **kwargs):
        if _UNPADDED.get() and self.eager is not None:
            return self.eager(sample, timestep, encoder_hidden_states=encoder_hidden_states, **kwargs)
        if self.shape is None:
            self.shape = tuple(sample.shape[1:])
        elif tuple(sample.shape[1:]) != self.shape and self.eager is not None:
            return self.eager(sample, timestep, encoder_hidden_states=encoder_hidden_states, **kwargs)
        n, e = sample.shape[0], encoder_hidden_states
        latents = self.size // 2 if self.takes_pairs and self.size else self.size  # the graph's
        if latents is None or n > latents or (n == latents and e.shape[0] == self.size):
            return self.forward(sample, timestep, encoder_hidden_states=e, **kwargs)
        if isinstance(timestep, torch.Tensor) and timestep.ndim == 1 and timestep.shape[0] == n:
            timestep = pad_rows(timestep, latents)
        if not self.takes_pairs:
            keep = slice(0, n)
        else:  # (uncond, text) halves padded each; an unguided call as the pair of itself
            pairs = e.shape[0] == 2 * n
            e = torch.cat([pad_rows(h, latents) for h in (e.chunk(2) if pairs else (e, e))])
            keep = [*range(n), *range(latents, latents + n)] if pairs else slice(0, n)
        out = self.forward(pad_rows(sample, latents), timestep, encoder_hidden_states=pad_rows(e, self.size),
                           **kwargs)
        if isinstance(out, tuple):  # return_dict=False
            return (out[0][keep],) + tuple(out[1:])
        out.sample = out.sample[keep]
        return out


class PadFrames:
    """Calls a shape-specialized (compiled) VAE encoder or decoder on exactly `size` contiguous frames.

    The VAE is 2-D: each frame is computed alone (its GroupNorms are per frame), so a short chunk (a batch's
    last) is padded with copies of its last frame and the result cut back; larger chunks and other frame
    sizes go to `eager`. One compiled graph per part, never a compile mid-job.
    """

    def __init__(self, forward, size: int, eager):
        self.forward, self.size, self.eager = forward, size, eager
        self.shape = None

    def __call__(self, sample, *args, **kwargs):
        if _UNPADDED.get():
            return self.eager(sample, *args, **kwargs)
        if self.shape is None:
            self.shape = tuple(sample.shape[1:])
        n = sample.shape[0]
        if n > self.size or tuple(sample.shape[1:]) != self.shape:
            return self.eager(sample, *args, **kwargs)
        # One memory layout too: the sampler's pixels are a permuted view of (F, H, W, 3) frames, and a graph
        # is specialized to its input's strides (another layout would compile a second graph mid-job).
        return self.forward(pad_rows(sample, self.size).contiguous(), *args, **kwargs)[:n]
