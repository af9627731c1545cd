"""v2v.speed.frame_attention: the Triton kernel's arithmetic (run by Triton's interpreter on the CPU), the op's SDPA
path, and the processor inside the tiny UNet. GPU timings: benchmarks/RESULTS.md."""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import CLIPS, REPO, random_video, speed_only
from v2v.model.loading import load_components
from v2v.model.sampler import restyle
from v2v.speed import apply_speed_settings
from v2v.speed.frame_attention import FrameAttnProcessor, frame_attention, install_frame_attention

# Under TRITON_INTERPRET=1 triton.jit builds kernels that numpy runs on CPU tensors: the kernel's own code,
# launched as the op launches it, against float32 attention. Shapes: the UNet's (24 frames of 5 heads of 64,
# in diffusers' (N, L, H, D)-in-memory layout), a length that is no power of two and below tl.dot's 16 (the
# padded rows and keys must take no weight), and plain contiguous (N, H, L, D) inputs.
_KERNEL = """
import json, torch, torch.nn.functional as F
from v2v.speed.frame_attention import kernel_attention
torch.manual_seed(0)
errs = []
for n, h, l, d, layout in [(6, 5, 24, 64, "nlhd"), (3, 2, 7, 16, "nlhd"), (4, 3, 33, 32, "nhld")]:
    if layout == "nlhd":  # q, k, v each a (N, L, H, D) projection output, seen as (N, H, L, D)
        q, k, v = (torch.randn(n, l, h, d, dtype=torch.float16).transpose(1, 2) for _ in range(3))
    else:
        q, k, v = (torch.randn(n, h, l, d, dtype=torch.float16) for _ in range(3))
    want = F.scaled_dot_product_attention(q.float(), k.float(), v.float()).transpose(1, 2).reshape(n, l, h * d)
    got = kernel_attention(q, k, v)
    errs.append([list(got.shape), ((got.float() - want).norm() / want.norm()).item()])
print(json.dumps(errs))
"""


def test_kernel_computes_attention_in_the_triton_interpreter():
    pytest.importorskip("triton")  # a test dependency ([test] installs it); the kernel's module needs it
    out = subprocess.run([sys.executable, "-c", _KERNEL], capture_output=True, text=True, cwd=REPO,
                         env={**os.environ, "TRITON_INTERPRET": "1"}, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    errs = json.loads(out.stdout.strip().splitlines()[-1])
    assert [shape for shape, _ in errs] == [[6, 24, 320], [3, 7, 32], [4, 33, 96]]
    for _, err in errs:  # float16 inputs and probabilities: ~3e-4 of float32
        assert err < 2e-3, errs


def test_kernel_takes_no_runtime_numbers():
    # inductor hands a user kernel's Python float arguments over as float64: a runtime softmax scale made the
    # compiled UNet's softmax float64 and the kernel twice as slow there (benchmarks/RESULTS.md).
    # Only the tensors may be runtime arguments; everything else is a compile-time constant.
    pytest.importorskip("triton")
    from v2v.speed.frame_attention import _frame_attention_kernel

    runtime = [p.name for p in _frame_attention_kernel.params if not p.is_constexpr]
    assert runtime == ["q_ptr", "k_ptr", "v_ptr", "o_ptr"]


def test_op_is_sdpa_with_heads_merged_where_the_kernel_does_not_apply():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 4, 24, 16, generator=g) for _ in range(3))  # CPU, float32: SDPA
    want = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(3, 24, 64)
    torch.testing.assert_close(frame_attention(q, k, v), want)


def _tiny_with_temporal_weights(cache_dir):
    # diffusers starts each temporal transformer's output projection at zero (an identity layer): give the
    # zeroed layers weights, so the temporal attention moves the latents
    c = load_components("tiny", cache_dir=cache_dir)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for m in c.unet.modules():
            if isinstance(m, torch.nn.Linear) and not m.weight.abs().sum():
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.05)
    return c


def test_processor_computes_the_same_latents(cache_dir, monkeypatch):
    from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel

    c = _tiny_with_temporal_weights(cache_dir)
    want = restyle(c, random_video(2), CLIPS, output="latents")
    temporal_attns = sum(len(t.transformer_blocks) * 2 for t in c.unet.modules()
                         if isinstance(t, TransformerTemporalModel))  # attn1 and attn2, both over the frames
    apply_speed_settings(c, speed_only(temporal_layers=True, frame_attention=True))
    processors = [m.processor for m in c.unet.modules() if hasattr(m, "set_processor")]
    assert sum(isinstance(p, FrameAttnProcessor) for p in processors) == temporal_attns > 0
    assert len(processors) > temporal_attns  # the spatial attention keeps diffusers' processor
    got = restyle(c, random_video(2), CLIPS, output="latents")
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
    # and an attention that went wrong (the values passed through unweighted) moves them far more
    monkeypatch.setattr("v2v.speed.frame_attention.frame_attention",
                        lambda q, k, v: v.transpose(1, 2).reshape(v.shape[0], v.shape[2], -1))
    assert (restyle(c, random_video(2), CLIPS, output="latents") - want).abs().max() > 1e-2


def test_install_refuses_attention_it_does_not_compute():
    from diffusers.models.attention_processor import Attention
    from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel

    layer = TransformerTemporalModel(num_attention_heads=2, attention_head_dim=8, in_channels=16,
                                     norm_num_groups=4)
    attn = next(m for m in layer.modules() if isinstance(m, Attention))
    attn.residual_connection = True
    with pytest.raises(ValueError, match="residual_connection"):
        install_frame_attention(layer)
