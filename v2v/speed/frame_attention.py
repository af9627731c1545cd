"""Attention across the frames of each pixel (the temporal transformers' self-attention) as one Triton kernel.

The temporal transformers attend over F = 24 frames: N = B*H*W sequences of 24 tokens, heads of 64 — 23,040
sequences of 5 heads at the top level for 4 clips with guidance. Flash-attention kernels are built for long
sequences: a 64- or 128-row tile of which 24 rows are used, one short tile loop per head and sequence, so these
calls run far below both the matrix rate and the memory bandwidth. Here one program takes one sequence, all of
its heads: it loads each head's (F, D) queries, keys and values once (rows padded to a power of two, masked),
forms the (F, F) scores with one small matrix product, softmaxes them in float32 and multiplies by the values —
the same arithmetic as flash attention (probabilities rounded to the input dtype before the product with V,
divided by their sum after), so it differs only by rounding. The kernel reads q, k, v and writes the output
once: memory-bound, as attention over 24 tokens should be.

`frame_attention(q, k, v)` is a `torch.library.triton_op`: torch.compile and AOTInductor see the kernel call.
On the CPU, without Triton, or for shapes the kernel does not take, it is scaled_dot_product_attention.

Its gain is in benchmarks/RESULTS.md (decisions table): several times faster than torch's choice (cuDNN) on these
shapes, the same error against float32. Every argument but the four pointers is a compile-time constant, the softmax scale
included: inductor passes a Python float to a user kernel as float64, and with a float64 scale the whole softmax
ran in float64, twice as slow inside compiled graphs as alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.library import triton_op, wrap_triton

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the op computes with SDPA
    triton = None

MAX_FRAMES = 64  # longer sequences go to SDPA, where flash attention's tiles fill

if triton is not None:

    @triton.jit
    def _frame_attention_kernel(q_ptr, k_ptr, v_ptr, o_ptr, scale_log2: tl.constexpr,
                                sq_n: tl.constexpr, sq_h: tl.constexpr, sq_l: tl.constexpr,
                                sk_n: tl.constexpr, sk_h: tl.constexpr, sk_l: tl.constexpr,
                                sv_n: tl.constexpr, sv_h: tl.constexpr, sv_l: tl.constexpr,
                                length: tl.constexpr, HEADS: tl.constexpr, DIM: tl.constexpr, LP: tl.constexpr):
        # one program: sequence n, all heads; q/k/v element (n, h, l, d) at n*s_n + h*s_h + l*s_l + d;
        # the output (N, L, H*D) contiguous. Strides and length are compile-time constants: the compiler then
        # knows each row's alignment and loads it in 16-byte pieces (a handful of shapes per UNet). The scale
        # is one too: as a runtime float, inductor would pass it as float64 (module docstring).
        n = tl.program_id(0).to(tl.int64)
        rows = tl.arange(0, LP)
        cols = tl.arange(0, DIM)
        valid = rows < length
        for h in tl.static_range(HEADS):
            q = tl.load(q_ptr + n * sq_n + h * sq_h + rows[:, None] * sq_l + cols[None, :],
                        mask=valid[:, None], other=0.0)
            k = tl.load(k_ptr + n * sk_n + h * sk_h + rows[:, None] * sk_l + cols[None, :],
                        mask=valid[:, None], other=0.0)
            v = tl.load(v_ptr + n * sv_n + h * sv_h + rows[:, None] * sv_l + cols[None, :],
                        mask=valid[:, None], other=0.0)
            s = tl.dot(q, tl.trans(k)) * scale_log2  # (LP, LP) float32, in log2 units
            s = tl.where(valid[None, :], s, float("-inf"))  # padded keys take no weight
            p = tl.math.exp2(s - tl.max(s, 1)[:, None])
            o = tl.dot(p.to(v.dtype), v) / tl.sum(p, 1)[:, None]  # (LP, DIM) float32
            o_offs = n * (length * HEADS * DIM) + rows[:, None] * (HEADS * DIM) + h * DIM + cols[None, :]
            tl.store(o_ptr + o_offs, o.to(o_ptr.dtype.element_ty), mask=valid[:, None])


def kernel_takes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether the Triton kernel computes this call: CUDA, half precision, self-attention shapes of at most
    MAX_FRAMES tokens, a power-of-two head size of at least 16 (tl.dot's smallest), contiguous last dims."""
    return (triton is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)
            and q.shape == k.shape == v.shape and q.dtype == k.dtype == v.dtype
            and q.shape[2] <= MAX_FRAMES and q.shape[3] >= 16 and q.shape[3] & (q.shape[3] - 1) == 0
            and q.stride(3) == k.stride(3) == v.stride(3) == 1)


@triton_op("v2v::frame_attention", mutates_args=())
def frame_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(N, H, L, D) queries, keys, values (any strides) -> (N, L, H*D): softmax(q k^T / sqrt(D)) v, heads merged
    (the layout the attention's output projection takes)."""
    if not kernel_takes(q, k, v):
        n, h, length, d = q.shape
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, length, h * d)
    return kernel_attention(q, k, v)


def kernel_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """`frame_attention` by the Triton kernel, unconditionally (tests call it under TRITON_INTERPRET=1 on CPU
    tensors)."""
    n, h, length, d = q.shape
    out = torch.empty((n, length, h * d), device=q.device, dtype=q.dtype)
    lp = max(16, triton.next_power_of_2(length))
    wrap_triton(_frame_attention_kernel)[(n,)](
        q, k, v, out, 1.4426950408889634 / d ** 0.5,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), length, HEADS=h, DIM=d, LP=lp, num_warps=4)
    return out


class FrameAttnProcessor:
    """diffusers' attention processor for the temporal transformers' self-attention, with `frame_attention` in
    place of scaled_dot_product_attention. Takes only what those layers use (no mask, no norms of its own, no
    residual inside); `install_frame_attention` checks each layer before handing it this processor."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        if attention_mask is not None or encoder_hidden_states is not None:
            raise ValueError("FrameAttnProcessor: self-attention without a mask only")
        q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        n, length, inner = q.shape  # (B*H*W, F, heads*D)
        # (N, heads, F, D) views of the projections' outputs
        q, k, v = (t.view(n, length, attn.heads, inner // attn.heads).transpose(1, 2) for t in (q, k, v))
        out = frame_attention(q, k, v)  # (N, F, heads*D)
        return attn.to_out[1](attn.to_out[0](out))  # projection, dropout


def install_frame_attention(unet) -> int:
    """Give every self-attention inside the UNet's temporal transformers (diffusers' TransformerTemporalModel or
    v2v.speed.temporal's TransformerTemporalFrames) the FrameAttnProcessor. Returns how many. Raises ValueError for an
    attention layer that uses something the processor does not compute."""
    from diffusers.models.attention_processor import Attention
    from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel

    from v2v.speed.temporal import TransformerTemporalFrames

    layers = [m for t in unet.modules() if isinstance(t, (TransformerTemporalModel, TransformerTemporalFrames))
              for m in t.modules() if isinstance(m, Attention)]
    for attn in layers:
        extras = {"is_cross_attention": attn.is_cross_attention, "group_norm": attn.group_norm is not None,
                  "spatial_norm": attn.spatial_norm is not None, "norm_q": attn.norm_q is not None,
                  "residual_connection": attn.residual_connection,
                  "rescale_output_factor": attn.rescale_output_factor != 1.0,
                  "scale": abs(attn.scale - (attn.inner_dim // attn.heads) ** -0.5) > 1e-12}
        if any(extras.values()):
            raise ValueError(f"install_frame_attention: a temporal attention layer uses "
                             f"{[k for k, on in extras.items() if on]}, which FrameAttnProcessor does not compute")
        attn.set_processor(FrameAttnProcessor())
    return len(layers)
