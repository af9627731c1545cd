"""Regional compilation (`compile_regions`): the UNet's and the VAE's blocks compiled one by one, each distinct
block compiled once, instead of the whole network as one graph.

A whole-graph torch.compile of the zeroscope UNet traces, lowers and schedules every one of its ~80 blocks, though
most repeat: at 576x320 its 22 ResNet blocks have 14 distinct shapes, its 22 temporal convolutions 4, its 16 spatial
transformers 4 and its 17 temporal transformers 5. Here each block's forward is compiled for the shapes it sees;
a block with the shapes (and parameter shapes) of one compiled before reuses that compiled code (dynamo's cache is
per forward function, its guards check the input and parameter shapes), so a first start compiles ~35 small graphs
instead of one very large one. What runs between the blocks (the time embedding, the skip connections' concatenation,
conv_in and conv_out) stays eager; under CUDA graphs (`cuda_graphs`) its launches are recorded with the blocks'.

What it costs per step is what fusions across block boundaries the whole graph made (a block's last op with the next
one's first); benchmarks/RESULTS.md has the measured trade.
"""

from __future__ import annotations

import torch

# The ModuleLists of a diffusers UNet or VAE block that hold its repeated layers.
_LAYER_LISTS = ("resnets", "temp_convs", "attentions", "temp_attentions", "downsamplers", "upsamplers")


def regions(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The layers compiled one by one: every module of the `_LAYER_LISTS` of `model`'s down, mid and up blocks, and
    the UNet's input transformer where it has one. Works for diffusers' UNet3DConditionModel and the VAE's Encoder
    and Decoder, with v2v's swapped layers in place (it goes by where a layer sits, not by its class)."""
    blocks = [*getattr(model, "down_blocks", ()), getattr(model, "mid_block", None), *getattr(model, "up_blocks", ())]
    out = [getattr(model, "transformer_in", None)]
    for block in blocks:
        if block is None:
            continue
        for name in _LAYER_LISTS:
            out.extend(getattr(block, name, None) or ())
    return [m for m in out if m is not None]


def compile_regions(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Compile each of `regions(model)` in place (its `forward` becomes a torch.compile of it, at fixed shapes) and
    return them. Compiles nothing yet: each block compiles at its first call with shapes it has not seen."""
    layers = regions(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no down/mid/up blocks with layers to compile")
    # One cache entry per distinct (class, shapes): at most one per layer. dynamo's default limit (8 per forward
    # function) would send the ResNet blocks' ninth shape to eager code without a word.
    limit = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
    needed = len(layers) + 8
    if getattr(torch._dynamo.config, limit) < needed:
        setattr(torch._dynamo.config, limit, needed)
    for m in layers:
        m.forward = torch.compile(m.forward, fullgraph=True, dynamic=False)
    return layers


class Uncompiled:
    """Calls `fn` with every torch.compile'd function running its original code (torch.compiler.set_stance
    "force_eager"): the path for calls at shapes nothing was compiled for (a video's shorter last clip, a clip retried
    unpadded after an out-of-memory error). Over compiled regions each such shape would otherwise compile every block
    again, mid-job."""

    def __init__(self, fn):
        self.fn = fn
        self.takes_pairs = getattr(fn, "takes_pairs", False)

    def __call__(self, *args, **kwargs):
        with torch.compiler.set_stance("force_eager"):
            return self.fn(*args, **kwargs)
