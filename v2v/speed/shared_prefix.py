"""The UNet3D's forward for a guided step, with what its two halves share computed once (`shared_prefix`).

A guided step runs the UNet on each clip's latents twice, with the unconditional and with the text embeddings
(diffusers' pipeline and the plain sampler stack them into one batch of 2B). The embeddings first enter at the
first cross-attention; everything before it computes the same values for both halves: `conv_in`, the input
temporal transformer (`transformer_in`, attention over frames only), the first down block's first ResNet and
temporal convolution, and in that block's first spatial transformer its GroupNorm, input projection, LayerNorm
and self-attention (with its residual add), all at full resolution. This forward runs that prefix once, on the B
latents, and repeats its output (and the skip connection it leaves for the last up block) for both halves. At
zeroscope_v2_576w size the prefix is 3.6 % of a guided step's FLOPs (torch's FlopCounterMode), half of it saved
(benchmarks/RESULTS.md, decisions table). The arithmetic per row is unchanged;
batched kernels may round differently for B rows than for 2B (the sampler's batching already does).

Otherwise it is UNet3DConditionModel.forward (diffusers 0.42) for what the sampler passes: no class labels,
attention mask, ControlNet residuals or cross_attention_kwargs; and Transformer2DModel's and
BasicTransformerBlock's forwards for the first spatial transformer (one LayerNorm block on continuous input, as
UNet3D builds it; a transformer of another kind runs whole on both halves, `splits_at_cross_attention`).
"""

from __future__ import annotations

import torch


def forward(unet, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor,
            share_self_attention: bool = True) -> torch.Tensor:
    """UNet3DConditionModel's noise prediction, where the embeddings may be a guided step's pairs.

    sample (B, C, F, h, w); timestep a number, a 0-d tensor or one per latent (B,); encoder_hidden_states
    (B, 77, D), one per latent, or (2B, 77, D): a guided step's unconditional then text embeddings, both for the
    same B latents. share_self_attention: with pairs, the first spatial transformer's layers before its
    cross-attention are shared too (off: the prefix ends at the first temporal convolution, as in the
    twenty-second session; for the benchmark's comparison). Returns (rows of encoder_hidden_states, C, F, h, w).
    """
    b, _, frames = sample.shape[:3]
    rows = encoder_hidden_states.shape[0]
    if rows not in (b, 2 * b):
        raise ValueError(f"v2v.speed.shared_prefix.forward: {rows} embeddings for {b} latents (want {b}, or {2 * b} for a "
                         "guided step's pairs)")
    # an output size forwarded where the latents are not a multiple of the UNet's overall upsampling
    odd = any(s % 2**unet.num_upsamplers for s in sample.shape[-2:])

    # 1. time, as diffusers makes it: one embedding per latent, repeated per frame -> (B*F, 1280)
    t = timestep
    if not torch.is_tensor(t):
        t = torch.tensor([t], dtype=torch.float64 if isinstance(t, float) else torch.int64, device=sample.device)
    elif t.ndim == 0:
        t = t[None].to(sample.device)
    emb = unet.time_embedding(unet.time_proj(t.expand(b)).to(dtype=unet.dtype))
    emb = emb.repeat_interleave(frames, dim=0, output_size=b * frames)
    enc = encoder_hidden_states.repeat_interleave(frames, dim=0, output_size=rows * frames)  # (rows*F, 77, D)

    # 2. the prefix, on the B latents: (B, C, F, h, w) -> (B*F, C, h, w) frames as images
    x = sample.permute(0, 2, 1, 3, 4).reshape((b * frames, -1) + sample.shape[3:])
    x = unet.conv_in(x)
    x = unet.transformer_in(x, num_frames=frames, return_dict=False)[0]
    skip = x
    first = unet.down_blocks[0]
    shared_layer = getattr(first, "has_cross_attention", False)  # CrossAttnDownBlock3D: attention comes third
    tokens = None  # the first spatial transformer's (B*F, h*w, inner) after its self-attention, where shared
    if shared_layer:
        x = first.resnets[0](x, emb)
        x = first.temp_convs[0](x, num_frames=frames)
        if rows == 2 * b and share_self_attention and splits_at_cross_attention(first.attentions[0]):
            tokens, inner = before_cross_attention(first.attentions[0], x)
    if rows == 2 * b:  # both halves from here: (2B*F, ...), the unconditional half first
        x, skip, emb = torch.cat([x, x]), torch.cat([skip, skip]), torch.cat([emb, emb])
        if tokens is not None:
            tokens = torch.cat([tokens, tokens])

    # 3. down
    res = (skip,)
    blocks = list(unet.down_blocks)
    if shared_layer:  # the rest of the first down block (CrossAttnDownBlock3D.forward from its first attention)
        for i, (resnet, temp_conv, attn, temp_attn) in enumerate(
                zip(first.resnets, first.temp_convs, first.attentions, first.temp_attentions)):
            if i > 0:
                x = resnet(x, emb)
                x = temp_conv(x, num_frames=frames)
            if i == 0 and tokens is not None:  # x, the transformer's input, is its residual
                x = after_self_attention(attn, tokens, inner, x, enc)
            else:
                x = attn(x, encoder_hidden_states=enc, return_dict=False)[0]
            x = temp_attn(x, num_frames=frames, return_dict=False)[0]
            res += (x,)
        if first.downsamplers is not None:
            for down in first.downsamplers:
                x = down(x)
            res += (x,)
        blocks = blocks[1:]
    for block in blocks:
        if getattr(block, "has_cross_attention", False):
            x, block_res = block(hidden_states=x, temb=emb, encoder_hidden_states=enc, num_frames=frames)
        else:
            x, block_res = block(hidden_states=x, temb=emb, num_frames=frames)
        res += block_res

    # 4. mid
    if unet.mid_block is not None:
        x = unet.mid_block(x, emb, encoder_hidden_states=enc, num_frames=frames)

    # 5. up
    upsample_size = None
    for i, block in enumerate(unet.up_blocks):
        block_res, res = res[-len(block.resnets):], res[: -len(block.resnets)]
        if i < len(unet.up_blocks) - 1 and odd:
            upsample_size = res[-1].shape[2:]
        if getattr(block, "has_cross_attention", False):
            x = block(hidden_states=x, temb=emb, res_hidden_states_tuple=block_res, encoder_hidden_states=enc,
                      upsample_size=upsample_size, num_frames=frames)
        else:
            x = block(hidden_states=x, temb=emb, res_hidden_states_tuple=block_res, upsample_size=upsample_size,
                      num_frames=frames)

    # 6. out: (rows*F, C, h, w) -> (rows, C, F, h, w)
    if unet.conv_norm_out:
        x = unet.conv_act(unet.conv_norm_out(x))
    x = unet.conv_out(x)
    return x[None, :].reshape((-1, frames) + x.shape[1:]).permute(0, 2, 1, 3, 4)


def splits_at_cross_attention(transformer) -> bool:
    """Whether `before_cross_attention` and `after_self_attention` compute this Transformer2DModel: continuous input
    and one LayerNorm block (as UNet3D builds them) whose self-attention does not see the embeddings, feed-forward
    unchunked."""
    blocks = getattr(transformer, "transformer_blocks", None)
    if not getattr(transformer, "is_input_continuous", False) or blocks is None or len(blocks) != 1:
        return False
    blk = blocks[0]
    return (blk.norm_type in ("layer_norm", "layer_norm_i2vgen") and blk.pos_embed is None
            and not blk.only_cross_attention and blk.attn2 is not None and blk._chunk_size is None)


def before_cross_attention(transformer, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Transformer2DModel.forward up to its first block's cross-attention: x (N, C, h, w) -> (the tokens after the
    norm, the input projection and the self-attention with its residual add (N, h*w, inner), inner)."""
    h, inner = transformer._operate_on_continuous_inputs(x)  # GroupNorm, proj_in -> (N, h*w, inner)
    blk = transformer.transformer_blocks[0]
    h = blk.attn1(blk.norm1(h), encoder_hidden_states=None, attention_mask=None) + h
    return (h.squeeze(1) if h.ndim == 4 else h), inner


def after_self_attention(transformer, h: torch.Tensor, inner: int, residual: torch.Tensor,
                         enc: torch.Tensor) -> torch.Tensor:
    """The rest of Transformer2DModel.forward: its block's cross-attention and feed-forward on the tokens
    `before_cross_attention` left, the output projection and the residual (N, C, h, w)."""
    blk = transformer.transformer_blocks[0]
    h = blk.attn2(blk.norm2(h), encoder_hidden_states=enc, attention_mask=None) + h
    h = blk.ff(blk.norm3(h)) + h
    h = h.squeeze(1) if h.ndim == 4 else h
    n, _, height, width = residual.shape
    return transformer._get_output_for_continuous_inputs(h, residual, n, height, width, inner)


class PairsForward:
    """A UNet's `forward` (diffusers' call convention) that also takes a guided step's latents once: with twice as
    many embeddings as latents (unconditional, then text) it computes both halves, sharing their prefix (`forward`
    above). The sampler reads `takes_pairs` to pass B latents instead of 2B. Other arguments (e.g.
    cross_attention_kwargs) go to diffusers' forward, on latents repeated for both halves.
    share_self_attention: as `forward` takes it."""

    takes_pairs = True

    def __init__(self, unet, share_self_attention: bool = True):
        self.unet = unet
        self.share_self_attention = share_self_attention

    def __call__(self, sample, timestep, encoder_hidden_states, return_dict: bool = True, **kwargs):
        if kwargs:
            if encoder_hidden_states.shape[0] == 2 * sample.shape[0]:
                sample = torch.cat([sample, sample])
            return type(self.unet).forward(self.unet, sample, timestep, encoder_hidden_states=encoder_hidden_states,
                                           return_dict=return_dict, **kwargs)
        return as_unet_output(forward(self.unet, sample, timestep, encoder_hidden_states, self.share_self_attention),
                              return_dict)


def as_unet_output(sample: torch.Tensor, return_dict: bool):
    """A noise prediction as diffusers' UNet3D forward returns it: its output class, or a 1-tuple."""
    if return_dict:
        from diffusers.models.unets.unet_3d_condition import UNet3DConditionOutput

        return UNet3DConditionOutput(sample=sample)
    return (sample,)
