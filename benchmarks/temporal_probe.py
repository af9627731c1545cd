"""The UNet's first down block (zeroscope_v2_576w size, random weights) compiled as diffusers builds it and with
v2v.temporal's layers swapped in: time per call, kernel time by kind, the slowest kernels, and the error against
float32 eager. A quick look (each compile is one block, not the whole UNet) before the full benchmark.

    python benchmarks/temporal_probe.py OUT_DIR [clips] [height width frames]

(On a machine without CUDA it runs on the CPU: a check of the script itself at a small size.) As run in the
eighth session (commit bb3ae36; ms per call then the mean of 10 calls, now the median) it had three variants: diffusers, the norms alone (`temporal_norms`) and the norms
with channels-last Conv3d (`temporal_cl3d`), which became `temporal_layers`.
"""

from __future__ import annotations

import copy
import json
import sys
import time

import torch

from v2v.bench import ZEROSCOPE_UNET, kernel_kinds, profiler_kernels, timed, unzero_temporal_layers
from v2v.temporal import swap_temporal_layers


def main(out: str, clips: int = 4, height: int = 40, width: int = 72, frames: int = 24) -> None:
    from diffusers import UNet3DConditionModel

    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    with torch.device(dev):
        unet = UNet3DConditionModel(**ZEROSCOPE_UNET)
    block32 = unet.down_blocks[0].eval()  # CrossAttnDownBlock3D, 320 channels, 2 layers + downsampler
    del unet
    unzero_temporal_layers(block32)
    n = 2 * clips  # cond + uncond
    g = torch.Generator(dev).manual_seed(1)
    x = torch.randn(n * frames, 320, height, width, device=dev, generator=g)
    temb = torch.randn(n * frames, 1280, device=dev, generator=g)
    enc = torch.randn(n * frames, 77, 1024, device=dev, generator=g)

    def run(forward, dtype):
        return forward(x.to(dtype), temb.to(dtype), encoder_hidden_states=enc.to(dtype), num_frames=frames)[0]

    with torch.no_grad():
        want = run(block32, torch.float32).float()
    x, temb, enc = x.bfloat16(), temb.bfloat16(), enc.bfloat16()
    rows = []
    for name in ("diffusers", "temporal_layers"):
        block = copy.deepcopy(block32).to(torch.bfloat16)
        if name != "diffusers":
            swap_temporal_layers(block)
        fn = torch.compile(block.forward, dynamic=False)
        with torch.no_grad():
            t0 = time.perf_counter()
            got = run(fn, torch.bfloat16)
            sync()
            compile_s = time.perf_counter() - t0
            err = float((got.float() - want).norm() / want.norm())
            ms = timed(lambda: run(fn, torch.bfloat16), repeat=10, warmup=3)[0] * 1e3
            with torch.profiler.profile() as prof:
                run(fn, torch.bfloat16)
                sync()
        kernels = [(k, secs * 1e3, calls) for k, secs, calls in profiler_kernels(prof, dev == "cuda")]  # ms
        kinds = kernel_kinds([(k, v) for k, v, _ in kernels])
        row = dict(variant=name, ms=ms, compile_s=compile_s, rel_err_vs_fp32=err, kernel_ms=sum(kinds.values()),
                   kinds_ms=kinds, top=kernels[:30])
        rows.append(row)
        print(f"{name:16s} {ms:8.2f} ms/call  kernels {row['kernel_ms']:.2f} ms  err {err:.4f}  "
              f"compile {compile_s:.0f} s", flush=True)
        for k, v in sorted(kinds.items(), key=lambda kv: -kv[1]):
            print(f"    {k:50s} {v:8.2f} ms", flush=True)
        for k, v, c in row["top"][:15]:
            print(f"    {v:8.2f} ms {c:4d}x  {k[:110]}", flush=True)
    with open(f"{out}/temporal_probe.json", "w") as f:
        card = torch.cuda.get_device_name() if dev == "cuda" else "cpu"
        json.dump(dict(card=card, torch=torch.__version__, clips=clips, rows=rows), f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) for a in sys.argv[2:]))
