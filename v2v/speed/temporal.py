"""UNet3D's temporal layers without permuted copies or layout conversions (the `temporal_layers` switch).

diffusers' temporal layers (`TemporalConvLayer`, `TransformerTemporalModel`) reshape the UNet's (B*F, C, H, W)
activations into a permuted 5-D (B, C, F, H, W) view and GroupNorm it: statistics per clip and group over
(C/G, F, H, W). Compiled, each such norm is one reduction kernel per (clip, group) — B*G = 256 rows of 691,200
values at the top level for 4 clips with guidance — fused with the permuted copy the next layer needs, and those
kernels ran at a tenth of the memory bandwidth (benchmarks/RESULTS.md).

`group_norm_over_frames` computes the same normalisation in two reductions that parallelise well: statistics per
frame and group (B*F*G rows, like the spatial layers' norms), then combined over the frames (exact: every frame
holds the same number of values). The normalised values are written in whatever layout the next operation
wants, by a pointwise kernel. And the temporal (3, 1, 1) Conv3d layers run channels-last (`channels_last_3d`):
(B, F, H, W, C) memory, the same bytes as the UNet's channels-last 2-D activations (B*F, H, W, C), so cuDNN no
longer converts each one's input, weight and output between layouts (30 ms of a 4-clip step).
Its gain: benchmarks/RESULTS.md, decisions table.
"""

from __future__ import annotations

import torch

from v2v.speed.group_norm import ChannelStatsGroupNorm, fold_affine, group_norm_by_channel


def group_norm_over_frames(x: torch.Tensor, frames: int, norm: torch.nn.GroupNorm) -> torch.Tensor:
    """(B*F, C, H, W) -> (B*F, C, H, W): `norm` applied to x viewed as (B, C, F, H, W), i.e. one mean and variance
    per clip and channel group, taken over all of the clip's frames.

    The reshape into (B, F, G, C/G, H*W) is a view of both NCHW and channels-last memory. Statistics are float32
    (as torch's GroupNorm keeps them for half inputs); the result has x's dtype.
    """
    bf, c, h, w = x.shape
    g = norm.num_groups
    x5 = x.reshape(bf // frames, frames, g, c // g, h * w)
    # per frame and group: (B, F, G, 1, 1)
    var_f, mean_f = torch.var_mean(x5.float(), dim=(3, 4), correction=0, keepdim=True)
    # over the frames (equal counts): mean of means; mean of variances + variance of the means
    mean = mean_f.mean(1, keepdim=True)
    var = var_f.mean(1, keepdim=True) + (mean_f - mean).square().mean(1, keepdim=True)
    scale, shift = fold_affine(mean, var, norm)  # per (clip, channel), or per (clip, group) without affine
    return (x5 * scale + shift).to(x.dtype).reshape(bf, c, h, w)


def frames_norm(x: torch.Tensor, frames: int, norm: torch.nn.GroupNorm) -> torch.Tensor:
    """The temporal layers' GroupNorm over (C/G, F, H, W): statistics per channel where `norm` asks for them
    (v2v.speed.group_norm, the `channel_stats` switch), else per frame and group."""
    if isinstance(norm, ChannelStatsGroupNorm):
        return group_norm_by_channel(x, frames, norm)
    return group_norm_over_frames(x, frames, norm)


def swap_temporal_layers(unet) -> int:
    """Replace each of the UNet's `TemporalConvLayer` and `TransformerTemporalModel` with the versions below (the
    same modules under the same names, so the state dict is unchanged; the Conv3d weights are stored
    channels-last). Returns how many were swapped."""
    from diffusers.models.resnet import TemporalConvLayer
    from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel

    swaps = [(parent, name, layer) for parent in unet.modules() for name, layer in parent.named_children()
             if type(layer) in (TemporalConvLayer, TransformerTemporalModel)]
    for parent, name, layer in swaps:
        if isinstance(layer, TemporalConvLayer):
            setattr(parent, name, TemporalConvFrames(layer))
        else:
            setattr(parent, name, TransformerTemporalFrames(layer))
    return len(swaps)


class TemporalConvFrames(torch.nn.Module):
    """diffusers' TemporalConvLayer: four stages of GroupNorm, SiLU, (Dropout,) Conv3d (k, 1, 1) over the frames,
    then a residual add. The norms run on the 4-D activations (`group_norm_over_frames`); each Conv3d, its weight
    stored channels-last, gets the (B, C, F, H, W) view of their output made channels-last."""

    def __init__(self, layer):
        super().__init__()
        for name in ("conv1", "conv2", "conv3", "conv4"):
            stage = getattr(layer, name)
            if not (isinstance(stage[0], torch.nn.GroupNorm) and isinstance(stage[-1], torch.nn.Conv3d)):
                raise ValueError(f"TemporalConvFrames: {name} is {stage!r}, not GroupNorm ... Conv3d")
            stage[-1].to(memory_format=torch.channels_last_3d)
            setattr(self, name, stage)

    def forward(self, hidden_states: torch.Tensor, num_frames: int = 1) -> torch.Tensor:
        bf, c, h, w = hidden_states.shape  # (B*F, C, H, W)
        y = hidden_states
        for stage in (self.conv1, self.conv2, self.conv3, self.conv4):
            norm, *pointwise, conv = stage  # GroupNorm, SiLU (, Dropout), Conv3d
            y = frames_norm(y, num_frames, norm)
            for m in pointwise:
                y = m(y)
            # (B, C, F, H, W), in memory (B, F, H, W, C): a view where y is channels-last, else one copy
            y5 = y.reshape(bf // num_frames, num_frames, c, h, w).permute(0, 2, 1, 3, 4)
            y5 = y5.contiguous(memory_format=torch.channels_last_3d)
            y = conv(y5).permute(0, 2, 1, 3, 4).reshape(bf, c, h, w)
        return hidden_states + y


class TransformerTemporalFrames(torch.nn.Module):
    """diffusers' TransformerTemporalModel (attention across the frames of each pixel): its input GroupNorm on the
    4-D activations (`group_norm_over_frames`), and its output added to the residual without first being made
    contiguous in (B*F, C, H, W) order, so the compiler picks the layout the next layer wants."""

    def __init__(self, layer):
        super().__init__()
        if not isinstance(layer.norm, torch.nn.GroupNorm):
            raise ValueError(f"TransformerTemporalFrames: norm is {layer.norm!r}, not a GroupNorm")
        self.norm, self.proj_in, self.proj_out = layer.norm, layer.proj_in, layer.proj_out
        self.transformer_blocks = layer.transformer_blocks

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states=None, timestep=None, class_labels=None,
                num_frames: int = 1, cross_attention_kwargs=None, return_dict: bool = True):
        bf, c, h, w = hidden_states.shape  # (B*F, C, H, W)
        b = bf // num_frames
        x = frames_norm(hidden_states, num_frames, self.norm)
        # one sequence of F tokens per clip and pixel: (B*H*W, F, C)
        x = x.reshape(b, num_frames, c, h * w).permute(0, 3, 1, 2).reshape(b * h * w, num_frames, c)
        x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = block(x, encoder_hidden_states=encoder_hidden_states, timestep=timestep,
                      cross_attention_kwargs=cross_attention_kwargs, class_labels=class_labels)
        x = self.proj_out(x)
        x = x.reshape(b, h * w, num_frames, c).permute(0, 2, 3, 1).reshape(bf, c, h, w)
        out = x + hidden_states
        if not return_dict:
            return (out,)
        from diffusers.models.transformers.transformer_temporal import TransformerTemporalModelOutput

        return TransformerTemporalModelOutput(sample=out)
