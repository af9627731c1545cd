"""GroupNorm from per-channel statistics (the `channel_stats` switch).

The UNet's activations are channels-last on the GPU: (N, C, H, W) with C contiguous. A GroupNorm's statistics are
per sample and group of C/G channels, so the compiled reduction reads, for each (sample, group) row, runs of C/G
values (20 bytes at 320 channels) C apart: inductor's kernels for it ran far below the memory bandwidth
(this module's gain: benchmarks/RESULTS.md, decisions table). Taken per channel
instead (mean and variance over H*W for each (sample, channel)), the reduction reads whole rows of C contiguous
values at a time; the per-channel figures are then combined into the group's exactly (every channel holds the
same number of values: the group's mean is the mean of the means, its variance the mean of the variances plus the
variance of the means). Same normalisation, another summation order: equal up to float32 rounding of the
statistics.
"""

from __future__ import annotations

import torch


def group_norm_by_channel(x: torch.Tensor, frames: int, norm: torch.nn.GroupNorm) -> torch.Tensor:
    """(B*F, C, H, W) -> (B*F, C, H, W): `norm` applied to x viewed as (B, C, F, H, W) (frames=1: an ordinary
    GroupNorm of x), i.e. one mean and variance per clip and channel group, taken over the group's channels and
    all of the clip's frames and pixels. The result has x's dtype and x's memory layout.
    """
    scale, shift = channel_scale_shift(x, frames, norm)
    # Stacked, scale and shift are written to memory (a few KB to 2 MB) before the apply, which then only multiplies
    # and adds; left apart, inductor recomputed them from the statistics for every element, and that apply kernel
    # took nearly twice as long at the top level.
    ss = torch.stack((scale, shift))
    return (x * ss[0] + ss[1]).to(x.dtype)


def channel_scale_shift(x: torch.Tensor, frames: int, norm: torch.nn.GroupNorm):
    """x (B*F, C, H, W) -> float32 (scale, shift), each (B*F, C, 1, 1): the norm is x * scale + shift, the same
    figures for every frame of a clip.

    The statistics are taken on x as it is, 4-D; only the small per-channel figures are reshaped. Viewing x itself
    as (B, F, G, C/G, H*W), this function's earlier form, fixed the memory layout of an input the compiler had not
    laid out yet (the up blocks' skip concatenations) to NCHW on the GPU, between channels-last neighbours
    (benchmarks/RESULTS.md). Statistics are float32 (as torch's GroupNorm keeps them for half
    inputs).
    """
    bf, c, h, w = x.shape
    g, cg = norm.num_groups, c // norm.num_groups
    # per frame and channel: (B*F, C) -> (B, F, G, C/G, 1)
    var_c, mean_c = (t.reshape(bf // frames, frames, g, cg, 1)
                     for t in torch.var_mean(x.float(), dim=(2, 3), correction=0))
    scale, shift = fold_affine(*group_stats(var_c, mean_c), norm)
    # per (clip, channel) -> per (frame, channel), as x broadcasts them: (B*F, C, 1, 1)
    return tuple(t.expand(bf // frames, frames, g, cg, 1).reshape(bf, c, 1, 1) for t in (scale, shift))


def group_stats(var_c: torch.Tensor, mean_c: torch.Tensor):
    """Per frame and channel variances and means (B, F, G, C/G, 1) -> the group's (mean, variance) over its channels
    and the frames (equal counts: the mean of the means; the mean of the variances plus the variance of the means),
    (B, 1, G, 1, 1). Sums times 1/count rather than means, which inductor would leave as divisions for the apply
    kernel to repeat for every element."""
    k = 1.0 / (mean_c.shape[1] * mean_c.shape[3])
    mean = mean_c.sum((1, 3), keepdim=True) * k
    return mean, (var_c + (mean_c - mean).square()).sum((1, 3), keepdim=True) * k


def fold_affine(mean: torch.Tensor, var: torch.Tensor, norm: torch.nn.GroupNorm):
    """Float32 group statistics (B, 1, G, 1, 1) -> (scale, shift) such that the norm is x * scale + shift: per
    (clip, channel) (B, 1, G, C/G, 1) with the norm's weight and bias folded in, per (clip, group) without."""
    scale = torch.rsqrt(var + norm.eps)
    shift = -mean * scale
    if norm.affine:
        g = norm.num_groups
        weight = norm.weight.float().reshape(1, 1, g, -1, 1)
        scale = scale * weight
        shift = shift * weight + norm.bias.float().reshape(1, 1, g, -1, 1)
    return scale, shift


class ChannelStatsGroupNorm(torch.nn.GroupNorm):
    """A GroupNorm (same parameters, same state dict) whose 4-D inputs are normalised by `group_norm_by_channel`.
    Other ranks (diffusers' own temporal layers hand it 5-D views) go to torch's GroupNorm. v2v.speed.temporal's layers
    take their norms' statistics per channel too when their norm is one of these."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            return super().forward(x)
        return group_norm_by_channel(x, 1, self)


def use_channel_stats(model: torch.nn.Module) -> int:
    """Make every GroupNorm in `model` a ChannelStatsGroupNorm (in place: the class changes, the parameters stay).
    Returns how many."""
    norms = [m for m in model.modules() if type(m) is torch.nn.GroupNorm]
    for m in norms:
        m.__class__ = ChannelStatsGroupNorm
    return len(norms)
