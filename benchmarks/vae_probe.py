"""The VAE's part of a clip, alone: its rate, and whether the UNet's layout switches pay there too.

A 4-clip sampler call on an H200 takes 2.71 s a clip, of which the 24 UNet steps are 2.50 s (twentieth section of
RESULTS.md); the rest, ~0.21 s a clip, is the VAE's encoder (24 frames in), its decoder (24 frames out), the
decoded frames' copy to the host, the text encoder and the schedulers. The VAE is ~61 TFLOP a clip at 576x320
(encoder 0.78, decoder 1.76 TFLOP a frame: torch's FlopCounterMode on meta tensors), so at the convolutions' 700
TFLOP/s in the UNet it would take ~0.09 s. This times it as the job runs it (bf16, each part compiled on
`vae_chunk` = 8 frames a call through v2v.perf.PadFrames, the sampler's own encode_posterior/decode_frames), and
with the UNet's switches applied to it:

- `default`: as the job ships (no switch touches the VAE)
- `chanstats`: its GroupNorms from per-channel statistics (v2v.group_norm; 128-512 channels in 32 groups)
- `cl`: its Conv2d weights channels-last (the `channels_last` switch's VAE half)
- `cl+chanstats`: both
- `chanstats+phaseup`: per-channel statistics and the upsamplers by output phase (v2v.upsample's
  `use_upsample_phases` on the decoder's three upsamplers, 512, 512 and 256 channels); the twenty-fourth section of
  RESULTS.md measured its decoder 23 % slower, so the job applies `upsample_phases` to the UNet only
- `chanstats+phaseidx`, `chanstats+phasenhwc`: the same convolutions with the phases interleaved otherwise (the
  slowdown above is in the interleaving copies, written with the channels outermost): by indexing the convolution's
  output with computed indices (`upsample_conv_index`), or stacked with the channels innermost
  (`upsample_conv_nhwc`); probe-only forms

Per variant: the first call's seconds (compile), ms a clip for the encoder (24 frames to the posterior), the
decoder (latents to float32 frames on the GPU), the frames' copy to the host, TFLOP/s, kernel time by kind over one
clip's encode and decode, the slowest kernels, and the output against `default`'s. OUT/vae_probe.json.

    python benchmarks/vae_probe.py OUT [VARIANT...]          # GPU, zeroscope_v2_576w's VAE with random weights
    python benchmarks/vae_probe.py OUT --cpu [VARIANT...]    # smoke run: the tiny model's VAE, float32, eager

Every variant unless named; the first one run is the reference the outputs are compared with.
"""
import copy
import json
import sys
import time
from pathlib import Path

import torch

from v2v.bench import kernel_kinds, profiler_kernels, timed
from v2v.group_norm import use_channel_stats
from v2v.perf import PadFrames
from v2v.upsample import PhaseUpsample2D, phase_conv, use_upsample_phases
from v2v.sampler import decode_frames, encode_posterior, frames_to_pixels

VARIANTS = ("default", "chanstats", "cl", "cl+chanstats", "chanstats+phaseup", "chanstats+phaseidx",
            "chanstats+phasenhwc")
CHUNK = 8


def _vae(cpu: bool):
    from diffusers import AutoencoderKL

    if cpu:
        from v2v.tiny import build_tiny_components

        return build_tiny_components()["vae"], (24, 64, 64)
    from v2v.bench import ZEROSCOPE_VAE

    torch.manual_seed(0)
    return AutoencoderKL(**ZEROSCOPE_VAE).to("cuda", torch.bfloat16).eval(), (24, 320, 576)


def _flops(vae, frames: int, h: int, w: int) -> float:
    """FLOPs of one clip's encode and decode, counted on meta tensors."""
    from torch.utils.flop_counter import FlopCounterMode

    meta = copy.deepcopy(vae).to("meta")
    f = vae.vae_scale_factor if hasattr(vae, "vae_scale_factor") else 2 ** (len(vae.config.block_out_channels) - 1)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        meta.encode(torch.empty(CHUNK, 3, h, w, device="meta", dtype=vae.dtype))
        meta.decode(torch.empty(CHUNK, vae.config.latent_channels, h // f, w // f, device="meta", dtype=vae.dtype))
    return counter.get_total_flops() * frames / CHUNK


def upsample_conv_index(x, weight, bias):
    """v2v.upsample.upsample_conv with its phases interleaved by indexing: out[:, c, Y, X] is the convolution's
    output y[:, (2 (Y % 2) + X % 2) C' + c, (Y + 1) // 2, (X + 1) // 2]."""
    n, _, h, w = x.shape
    c = weight.shape[0]
    y6 = phase_conv(x, weight, bias).unflatten(1, (2, 2, c)).permute(0, 3, 1, 2, 4, 5)  # (N, C', 2, 2, H+1, W+1)
    rows, cols = torch.arange(2 * h, device=x.device)[:, None], torch.arange(2 * w, device=x.device)[None, :]
    return y6[:, :, rows % 2, cols % 2, (rows + 1) // 2, (cols + 1) // 2]  # (N, C', 2H, 2W)


def upsample_conv_nhwc(x, weight, bias):
    """v2v.upsample.upsample_conv with its phases stacked channels-innermost: (N, H, W, 4, C') before interleaving."""
    n, _, h, w = x.shape
    c = weight.shape[0]
    y = phase_conv(x, weight, bias)
    phases = [y[:, k * c:(k + 1) * c, a:a + h, b:b + w].permute(0, 2, 3, 1)
              for k, (a, b) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1)))]
    st = torch.stack(phases, 3).reshape(n, h, w, 2, 2, c).permute(0, 1, 3, 2, 4, 5)  # (N, H, 2, W, 2, C')
    return st.reshape(n, 2 * h, 2 * w, c).permute(0, 3, 1, 2)


class IndexUpsample2D(PhaseUpsample2D):
    def forward(self, hidden_states, output_size=None, *args, **kwargs):
        return upsample_conv_index(hidden_states, self.conv.weight, self.conv.bias)


class NhwcUpsample2D(PhaseUpsample2D):
    def forward(self, hidden_states, output_size=None, *args, **kwargs):
        return upsample_conv_nhwc(hidden_states, self.conv.weight, self.conv.bias)


def _prepare(base, variant: str, compile: bool):
    vae = copy.deepcopy(base)
    if "chanstats" in variant:
        use_channel_stats(vae)
    if "phase" in variant:
        use_upsample_phases(vae)
    for part, form in (("phaseidx", IndexUpsample2D), ("phasenhwc", NhwcUpsample2D)):
        if part in variant:
            for m in vae.modules():
                if type(m) is PhaseUpsample2D:
                    m.__class__ = form
    if variant.startswith("cl"):
        for m in vae.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.to(memory_format=torch.channels_last)
    if compile:  # as v2v.perf.apply_perf_settings compiles the parts (compile_vae)
        for part in (vae.encoder, vae.decoder):
            part.forward = PadFrames(torch.compile(part.forward, fullgraph=False, dynamic=False), CHUNK, part.forward)
    return vae


def main(out: str, cpu: bool, variants: list[str]) -> None:
    cuda = not cpu
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"{unknown}: unknown variant(s) (known: {list(VARIANTS)})")
    base, (frames, h, w) = _vae(cpu)
    flops = _flops(base, frames, h, w)
    g = torch.Generator().manual_seed(0)
    video = torch.randint(0, 256, (frames, h, w, 3), generator=g, dtype=torch.uint8)
    scale = 2 ** (len(base.config.block_out_channels) - 1)
    latents = torch.randn(1, base.config.latent_channels, frames, h // scale, w // scale, generator=g)
    latents = (latents * base.config.scaling_factor).to(base.device, base.dtype)
    pixels = frames_to_pixels(video).to(base.device, base.dtype)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    rows, ref = [], {}
    for variant in variants:
        vae = _prepare(base, variant, compile=cuda)
        t0 = time.perf_counter()
        with torch.no_grad():
            encode_posterior(vae, pixels[:CHUNK], CHUNK)
            decode_frames(vae, latents[:, :, :CHUNK], CHUNK)
        sync()
        first_s = time.perf_counter() - t0

        # The decoder on the GPU, and with the float32 frames' copy to fresh host memory (what the sampler's
        # decode_latents did before this section). h200-twentyfirst/vae21 ran a copy of decode_frames without its
        # final scale and clamp (under a millisecond) and the since-removed decode_latents.
        def decode_gpu():
            return decode_frames(vae, latents, CHUNK)

        def decode_to_host():
            return decode_frames(vae, latents, CHUNK).cpu()

        with torch.no_grad():
            enc_s, _ = timed(lambda: encode_posterior(vae, pixels, CHUNK).mean, repeat=7)
            dec_s, _ = timed(decode_gpu, repeat=7)
            whole_s, _ = timed(decode_to_host, repeat=7)
            images = decode_gpu()
            host = torch.empty(images.shape, dtype=images.dtype, pin_memory=False)
            copy_s, _ = timed(lambda: host.copy_(images), repeat=7)
            mean = encode_posterior(vae, pixels, CHUNK).mean.float()
            decoded = decode_to_host()
            acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
            with torch.profiler.profile(activities=acts) as prof:
                encode_posterior(vae, pixels, CHUNK)
                decode_gpu()
                sync()
        kernels = profiler_kernels(prof, cuda)
        if not ref:
            ref = {"variant": variant, "mean": mean, "decoded": decoded}
        row = {"variant": variant, "first_call_s": first_s, "encode_ms": enc_s * 1e3, "decode_ms": dec_s * 1e3,
               "decode_latents_ms": whole_s * 1e3, "copy_to_host_ms": copy_s * 1e3,
               "tflops": flops / (enc_s + dec_s) / 1e12,
               "reference": ref["variant"],
               "encode_rel_vs_default": float((mean - ref["mean"]).norm() / ref["mean"].norm()),
               "decoded_max_abs_vs_default": float((decoded - ref["decoded"]).abs().max()),
               "kinds_ms": {k: v * 1e3 for k, v in sorted(kernel_kinds([(n, s) for n, s, _ in kernels]).items(),
                                                           key=lambda kv: -kv[1])},
               "slowest": [(n[:110], s * 1e3, c) for n, s, c in kernels[:15]]}
        rows.append(row)
        print(f"{variant:14s} first {first_s:6.1f} s | encode {row['encode_ms']:7.1f} ms  decode {row['decode_ms']:7.1f}"
              f"  decode_latents {row['decode_latents_ms']:7.1f}  copy {row['copy_to_host_ms']:6.1f} ms a clip | "
              f"{row['tflops']:6.1f} TFLOP/s | vs {ref['variant']}: encode {row['encode_rel_vs_default']:.1e}, "
              f"frames {row['decoded_max_abs_vs_default']:.1e}", flush=True)
        print("   kinds (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in row["kinds_ms"].items()), flush=True)
        for n, s, c in row["slowest"][:8]:
            print(f"   {s:7.2f} ms {c:4d}x {n}", flush=True)
        del vae
        if cuda:
            torch.cuda.empty_cache()
    info = {"device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
            "clip": {"frames": frames, "height": h, "width": w, "chunk": CHUNK}, "tflop_per_clip": flops / 1e12,
            "command": " ".join(["python"] + sys.argv)}
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "vae_probe.json").write_text(json.dumps({"info": info, "rows": rows}, indent=1))
    print(json.dumps(info))


if __name__ == "__main__":
    main(sys.argv[1], "--cpu" in sys.argv[2:], [a for a in sys.argv[2:] if a != "--cpu"] or list(VARIANTS))
