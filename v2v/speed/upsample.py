"""Nearest 2x upsampling followed by a 3x3 convolution, computed on the low-resolution input (`upsample_phases`).

diffusers' Upsample2D repeats each pixel into a 2x2 block (F.interpolate, nearest) and convolves the result with a
3x3 kernel (padding 1). Each output pixel (2i + a, 2j + b) then sees only a 2x2 window of the input: along one
dimension, output row 2i reads input rows i-1 (tap 0) and i (taps 1 and 2), row 2i+1 reads rows i (taps 0 and 1)
and i+1 (tap 2), zero padding included. So the same convolution is four 2x2 convolutions of the input, one per
output phase (a, b), with the taps that land on one input pixel summed into one weight. Computed as one 2x2
convolution (padding 1) with four times the output channels, on the input's (H+1) x (W+1) positions: 16 taps per
input pixel instead of 36 (the 3x3 kernel over the four upsampled pixels), and no upsampled copy of the input.
The phases are then interleaved into (2H, 2W): compiled for the GPU, a stacked copy of them (channels outermost)
that the next operation reads back, a fraction of what the convolutions save (benchmarks/RESULTS.md). Same sums, the weights summed first: equal up to rounding (in bfloat16, of the summed
weights).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.upsampling import Upsample2D


def _fold(w: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A kernel's 3 taps along `dim` -> the 2 taps of output phase 0 (over input pixels i-1, i: tap 0, taps 1 + 2)
    and of phase 1 (over i, i+1: taps 0 + 1, tap 2). Slices and adds, no constant tensor (which AOTInductor's
    export would lift out of the module's parameters)."""
    t0, t1, t2 = w.split(1, dim)
    return torch.cat([t0, t1 + t2], dim), torch.cat([t0 + t1, t2], dim)


def phase_weights(weight: torch.Tensor) -> torch.Tensor:
    """A 3x3 convolution's weight (C', C, 3, 3) -> (4 C', C, 2, 2): phase (a, b)'s kernel in output channels
    [(2a + b) C', (2a + b + 1) C'). Summed in float32 at least, returned in the weight's dtype."""
    w = weight.to(torch.promote_types(weight.dtype, torch.float32))
    # rows folded for phase a, then columns for phase b: order (0, 0), (0, 1), (1, 0), (1, 1)
    kernels = [k for rows in _fold(w, 2) for k in _fold(rows, 3)]
    return torch.cat(kernels, 0).to(weight.dtype)


def phase_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """(N, C, H, W) -> (N, 4 C', H+1, W+1): the four phases' 2x2 convolutions of x for a 3x3 `weight` (C', C, 3, 3);
    position (r, s) of phase (a, b) reads input rows r-1+a, r+a and columns s-1+b, s+b (zero outside)."""
    return F.conv2d(x, phase_weights(weight), None if bias is None else bias.repeat(4), padding=1)


def upsample_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """(N, C, H, W) -> (N, C', 2H, 2W): conv2d(interpolate(x, scale_factor=2, mode="nearest"), weight, bias,
    padding=1) for a 3x3 `weight` (C', C, 3, 3), computed as four 2x2 convolutions of x (module docstring)."""
    n, _, h, w = x.shape
    c = weight.shape[0]
    y = phase_conv(x, weight, bias)
    # phase (a, b) at output (2i + a, 2j + b) is y[:, (2a + b) C' + c, i + a, j + b]
    offsets = ((0, 0), (0, 1), (1, 0), (1, 1))
    phases = [y[:, k * c:(k + 1) * c, a:a + h, b:b + w] for k, (a, b) in enumerate(offsets)]
    # (N, C', H, W, 2, 2) -> (N, C', H, 2, W, 2) -> (N, C', 2H, 2W)
    out = torch.stack(phases, dim=-1).reshape(n, c, h, w, 2, 2).permute(0, 1, 2, 4, 3, 5)
    return out.reshape(n, c, 2 * h, 2 * w)


def _conv(m):
    """An Upsample2D's convolution (diffusers stores it under one of two names), or None."""
    return getattr(m, "conv" if m.name == "conv" else "Conv2d_0", None)


def _phased(m) -> bool:
    """Whether an Upsample2D is the nearest-2x + 3x3-convolution (padding 1) kind `upsample_conv` computes."""
    conv = _conv(m)
    return (m.use_conv and not m.use_conv_transpose and m.interpolate and m.norm is None
            and isinstance(conv, torch.nn.Conv2d) and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.padding == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros")


class PhaseUpsample2D(Upsample2D):
    """diffusers' Upsample2D (same parameters, same state dict) computed by `upsample_conv` where the output is
    twice the input's size; an explicit other output size (latents not a multiple of the UNet's overall
    upsampling) goes to diffusers' forward."""

    def forward(self, hidden_states: torch.Tensor, output_size=None, *args, **kwargs) -> torch.Tensor:
        h, w = hidden_states.shape[-2:]
        if output_size is not None and tuple(output_size) != (2 * h, 2 * w):
            return super().forward(hidden_states, output_size, *args, **kwargs)
        conv = _conv(self)
        return upsample_conv(hidden_states, conv.weight, conv.bias)


def use_upsample_phases(model: torch.nn.Module) -> int:
    """Make every Upsample2D of `model` of the kind `upsample_conv` computes a PhaseUpsample2D (in place: the class
    changes, the parameters stay). Returns how many."""
    ups = [m for m in model.modules() if type(m) is Upsample2D and _phased(m)]
    for m in ups:
        m.__class__ = PhaseUpsample2D
    return len(ups)
