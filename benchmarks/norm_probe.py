"""GroupNorm + SiLU on the UNet's channels-last activations, alone: each formulation compiled, timed and profiled.

The eleventh section's kernel list has the GroupNorm statistics reductions at ~1.1-1.3 TB/s (rows of C/G
channels read C apart) and their apply kernels at ~1.6-1.7 TB/s. This times, on the step's own shapes (8 latents
x 24 frames; the top three levels), what each way of writing the norm compiles to:

- `torch`: F.group_norm (the spatial norms as diffusers runs them; frames=1 only)
- `frame_group`: v2v.temporal.group_norm_over_frames (statistics per frame and group: the temporal layers without
  `channel_stats`)
- `channel`: v2v.group_norm.group_norm_by_channel as the `channel_stats` switch runs it (statistics per frame and
  channel, combined per group as sums times 1/count; scale and shift stacked into one tensor before the apply),
  taken on the 4-D input since the twenty-fourth session
- `channel_view5`: the same through a (B, F, G, C/G, H*W) view of the input, as it shipped from the thirteenth to the
  twenty-third session (`group_norm_view5`; RESULTS.md's twenty-third section: on a concatenation inductor has not
  laid out yet, that view fixes it NCHW; `cat_` before a form: its input is the concatenation of two halves of x
  made in the compiled function, followed by a 1x1 convolution of it, as the up blocks' ResNets have them)
- its earlier forms: `channel_unstacked` (the combination as means, scale and shift apart: `channel` in the first
  run, norm13), `channel_sums` (as sums, apart), `channel_barrier` (as sums, each of scale and shift written to
  memory through a 16-copy max instead of the stack); the thirteenth section of RESULTS.md has what each measured
- `apply`: x * scale + shift with scale, shift per (latent, channel) given: the apply kernel alone (no statistics);
  `apply_sig`: with SiLU written y * sigmoid(y)
- `copy`: x.clone(): one read and one write at the card's copy rate

each followed by SiLU (as every norm of the UNet is), output bf16 channels-last. Per run: ms per call (median
of 50, `v2v.bench.timed`), the effective TB/s of moving x once in and once out, each kernel's share, the error
against float32 torch.nn.functional.group_norm. OUT/norm.json, OUT/code-*.py (inductor's output code of the top level).

    python benchmarks/norm_probe.py OUT [FORM...]          # GPU (every form unless named)
    python benchmarks/norm_probe.py OUT --cpu [FORM...]    # smoke run, small shapes
"""
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from v2v.bench import profiler_kernels, timed
from v2v.group_norm import channel_scale_shift, fold_affine, group_norm_by_channel, group_stats
from v2v.temporal import group_norm_over_frames

SHAPES = [(192, 320, 40, 72), (192, 640, 20, 36), (192, 1280, 10, 18)]  # (8 latents x 24 frames, C, h, w)
GROUPS, FRAMES = 32, 24


def _torch(x, frames, norm, s, t):
    return F.silu(F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps))


def _frame_group(x, frames, norm, s, t):
    return F.silu(group_norm_over_frames(x, frames, norm))


def _channel(x, frames, norm, s, t):
    return F.silu(group_norm_by_channel(x, frames, norm))


def group_norm_view5(x, frames, norm):
    """group_norm_by_channel as it shipped from the thirteenth to the twenty-third session: x viewed as
    (B, F, G, C/G, H*W) for the statistics and the apply."""
    bf, c, h, w = x.shape
    g, cg = norm.num_groups, c // norm.num_groups
    x5 = x.reshape(bf // frames, frames, g, cg, h * w)
    var_c, mean_c = torch.var_mean(x5.float(), dim=4, correction=0, keepdim=True)
    scale, shift = fold_affine(*group_stats(var_c, mean_c), norm)
    ss = torch.stack(torch.broadcast_tensors(scale, shift))
    return (x5 * ss[0] + ss[1]).to(x.dtype).reshape(x.shape)


def _channel_view5(x, frames, norm, s, t):
    return F.silu(group_norm_view5(x, frames, norm))


def _channel_unstacked(x, frames, norm, s, t):
    # group_norm_by_channel's first form: the per-channel statistics combined as means
    bf, c, h, w = x.shape
    g, cg = norm.num_groups, c // norm.num_groups
    x5 = x.reshape(bf // frames, frames, g, cg, h * w)
    var_c, mean_c = torch.var_mean(x5.float(), dim=4, correction=0, keepdim=True)
    mean = mean_c.mean((1, 3), keepdim=True)
    var = var_c.mean((1, 3), keepdim=True) + (mean_c - mean).square().mean((1, 3), keepdim=True)
    scale = torch.rsqrt(var + norm.eps) * norm.weight.float().reshape(1, 1, g, cg, 1)
    shift = norm.bias.float().reshape(1, 1, g, cg, 1) - mean * scale
    return F.silu((x5 * scale + shift).to(x.dtype).reshape(x.shape))


def _channel_sums(x, frames, norm, s, t):
    scale, shift = channel_scale_shift(x, frames, norm)  # what ships, less the stacking
    return F.silu((x * scale + shift).to(x.dtype))


def _barrier(t):
    # the max of 16 copies: a reduction, so inductor writes t to memory instead of recomputing it per element
    return t.unsqueeze(-1).expand(*t.shape, 16).amax(-1)


def _channel_barrier(x, frames, norm, s, t):
    scale, shift = channel_scale_shift(x, frames, norm)
    return F.silu((x * _barrier(scale) + _barrier(shift)).to(x.dtype))


def _apply(x, frames, norm, s, t):
    return F.silu((x.float() * s + t).to(x.dtype))


def _apply_sig(x, frames, norm, s, t):
    y = x.float() * s + t
    return (y * torch.sigmoid(y)).to(x.dtype)


def _copy(x, frames, norm, s, t):
    return x.clone()


# 1x1 shortcut convolution weights of the `cat_` forms, per channel count (made in main)
_SHORTCUT = {}


def _cat_fragment(norm_fn):
    """An up block ResNet's start: its input a concatenation made in the compiled function (of x's two channel halves,
    one with an add that inductor fuses into the concatenation's writer, as the upsampler's bias add is in the step),
    normalised and activated, and the same concatenation through the 1x1 shortcut convolution."""
    def fn(x, frames, norm, s, t):
        a, b = x.chunk(2, dim=1)
        cat = torch.cat([a + 1.0, b], dim=1)
        return F.silu(norm_fn(cat, frames, norm)) + F.conv2d(cat, _SHORTCUT[x.shape[1]])
    return fn


FORMS = {"torch": _torch, "frame_group": _frame_group, "channel": _channel, "channel_view5": _channel_view5,
         "channel_unstacked": _channel_unstacked,
         "channel_sums": _channel_sums, "channel_barrier": _channel_barrier, "apply": _apply, "apply_sig": _apply_sig,
         "copy": _copy, "cat_channel": _cat_fragment(group_norm_by_channel),
         "cat_channel_view5": _cat_fragment(group_norm_view5)}
NORM_ONLY_AT_1 = ("torch", "apply", "apply_sig", "copy", "cat_channel", "cat_channel_view5")


def reference(x, frames, norm):
    b = x.shape[0] // frames
    x5 = x.float().reshape(b, frames, *x.shape[1:]).permute(0, 2, 1, 3, 4)
    y = F.group_norm(x5, norm.num_groups, norm.weight.float(), norm.bias.float(), norm.eps)
    return F.silu(y.permute(0, 2, 1, 3, 4).reshape(x.shape))


def main(out: str, *args: str) -> None:
    from torch._inductor.utils import run_and_get_code

    cpu = "--cpu" in args
    names = [a for a in args if a != "--cpu"] or list(FORMS)
    unknown = [n for n in names if n not in FORMS]
    if unknown:
        raise ValueError(f"{unknown}: unknown form(s) (known: {list(FORMS)})")

    Path(out).mkdir(parents=True, exist_ok=True)
    dev = "cpu" if cpu else "cuda"
    cuda = dev == "cuda"
    shapes = SHAPES if cuda else [(48, 64, 5, 9)]

    def sync():
        if cuda:
            torch.cuda.synchronize()

    g = torch.Generator(dev).manual_seed(0)
    runs = []
    for shape in shapes:
        n, c, h, w = shape
        x = (torch.randn(shape, device=dev, generator=g) * 2 + 0.5).to(torch.bfloat16)
        x = x.contiguous(memory_format=torch.channels_last)
        norm = torch.nn.GroupNorm(GROUPS, c).to(dev, torch.bfloat16)
        with torch.no_grad():
            norm.weight.copy_(1 + 0.2 * torch.randn(c, device=dev, generator=g))
            norm.bias.copy_(0.2 * torch.randn(c, device=dev, generator=g))
        s = torch.rand(n, c, 1, 1, device=dev, generator=g) + 0.5
        t = torch.randn(n, c, 1, 1, device=dev, generator=g)
        moved = 2 * x.numel() * x.element_size()
        _SHORTCUT[c] = (torch.randn(c, c, 1, 1, device=dev, generator=g) / c ** 0.5).to(torch.bfloat16)
        _SHORTCUT[c] = _SHORTCUT[c].contiguous(memory_format=torch.channels_last)
        a, b = x.float().chunk(2, dim=1)
        cat = torch.cat([a + 1.0, b], dim=1)
        want_cat = reference(cat, 1, norm) + F.conv2d(cat, _SHORTCUT[c].float())
        for frames in (FRAMES, 1):
            want = reference(x, frames, norm)
            for name in names:
                fn = FORMS[name]
                if name in NORM_ONLY_AT_1 and frames != 1:
                    continue
                torch._dynamo.reset()
                comp = torch.compile(fn, dynamic=False)
                with torch.no_grad():
                    y, code = run_and_get_code(comp, x, frames, norm, s, t)
                    if shape == shapes[0]:
                        Path(out, f"code-{name}-f{frames}.py").write_text("\n\n".join(code))
                    secs, _ = timed(lambda: comp(x, frames, norm, s, t), repeat=50 if cuda else 3, warmup=5)
                    with torch.profiler.profile() as prof:
                        for _ in range(10):
                            comp(x, frames, norm, s, t)
                        sync()
                kernels = [(k[:60], round(1e3 * sec / 10, 4), calls // 10)
                           for k, sec, calls in profiler_kernels(prof, cuda)]
                ms = 1e3 * secs
                err = None
                if name.startswith("cat_"):
                    err = float((y.float() - want_cat).norm() / want_cat.norm())
                elif not name.startswith(("apply", "copy")):
                    err = float((y.float() - want).norm() / want.norm())
                run = {"shape": shape, "frames": frames, "form": name, "ms": round(ms, 4),
                       "tb_s": round(moved / ms / 1e9, 2), "rel_err": err,
                       "channels_last_out": y.is_contiguous(memory_format=torch.channels_last),
                       "kernels_ms": kernels}
                runs.append(run)
                print(f"{str(shape):22} f={frames:2d} {name:17} {ms:7.3f} ms {run['tb_s']:5.2f} TB/s "
                      f"err {err if err is None else f'{err:.1e}'}  CL out {run['channels_last_out']}  "
                      + "; ".join(f"{k} {m} ms" for k, m, _ in kernels), flush=True)
    info = {"card": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__, "runs": runs}
    Path(out, "norm.json").write_text(json.dumps(info, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:])
