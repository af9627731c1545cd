"""Inductor's tuning settings on the UNet's blocks (zeroscope_v2_576w size, random weights, the job's switches:
temporal layers, frame kernel, channel statistics), each block compiled alone on the inputs it gets in a real
4-clip guided step: ms per call, compile seconds, kernel time by kind, and the output against the default compile.

    python benchmarks/autotune_probe.py OUT_DIR [PLAN ...]

PLAN: MODE:BLOCK[,BLOCK...] with BLOCK one of down0..down3, mid, up0..up3 (or `all`), MODE one of MODES below;
default: the plan the eighteenth session ran. Rows are appended to OUT_DIR/autotune_probe.json as each finishes,
so a run cut off by the machine's time limit still reports what it measured.

Why per block: the whole UNet under max-autotune did not finish compiling in 9-10 minutes (third session); with
saved compiled functions and a shared compile cache (v2v.shared_cache) a fleet pays a compile once per model and
setting, so a slow compile that makes every step faster might now pay. The blocks say whether it does.
(On a machine without CUDA it runs on the CPU at a small size: a check of the script itself.) As run in the
eighteenth session the switches and the timing loop were written out inline; they now call apply_perf_settings
and v2v.bench's cuda_seconds_per_call, which do the same.
"""

from __future__ import annotations

import json
import sys
import time

import torch

from v2v.bench import (ZEROSCOPE_UNET, cuda_seconds_per_call, kernel_kinds, profiler_kernels, timed,
                       unzero_temporal_layers)

MODES = {
    "default": {},
    "pointwise": {"max_autotune_pointwise": True},  # each generated Triton kernel's launch config benchmarked
    "coord": {"coordinate_descent_tuning": True},  # then walked to a local optimum, one parameter at a time
    "gemm": {"max_autotune_gemm": True},  # products/convolutions: Triton templates (epilogues fused) vs cuBLAS/cuDNN
    "gemm_tma": {"max_autotune_gemm": True, "triton.enable_persistent_tma_matmul": True},  # + Hopper TMA template
    "max": {"max_autotune": True, "coordinate_descent_tuning": True},  # mode="max-autotune-no-cudagraphs"
}
BLOCKS = ["down0", "down1", "down2", "down3", "mid", "up0", "up1", "up2", "up3"]
# the top level's blocks first (most of the step's memory-bound kernels), then every block's share of the step
PLAN = ["default:down0,up3", "max:down0,up3", "default:down1,down2,down3,mid,up0,up1,up2", "gemm:down0,up3",
        "pointwise:down0,up3", "coord:down0,up3", "max:down1,up2", "gemm_tma:down0,up3"]


def block_inputs(unet, sample, timestep, enc) -> dict[str, tuple]:
    """{block name: (args, kwargs)} each of the UNet's blocks receives in one forward (eager)."""
    named = {f"down{i}": b for i, b in enumerate(unet.down_blocks)}
    named.update({"mid": unet.mid_block}, **{f"up{i}": b for i, b in enumerate(unet.up_blocks)})
    seen, hooks = {}, []

    def keep(name):
        def hook(module, args, kwargs):
            clone = lambda v: v.detach().clone() if isinstance(v, torch.Tensor) else (
                tuple(clone(t) for t in v) if isinstance(v, tuple) else v)
            seen[name] = (clone(args), {k: clone(v) for k, v in kwargs.items()})
        return hook

    for name, block in named.items():
        hooks.append(block.register_forward_pre_hook(keep(name), with_kwargs=True))
    with torch.no_grad():
        unet(sample, timestep, encoder_hidden_states=enc)
    for h in hooks:
        h.remove()
    return {name: (named[name], *seen[name]) for name in BLOCKS}


def main(out: str, *plan: str) -> None:
    from types import SimpleNamespace

    from diffusers import UNet3DConditionModel

    from v2v.perf import apply_perf_settings

    cuda = torch.cuda.is_available()
    dev = "cuda" if cuda else "cpu"
    clips, frames, h, w = (4, 24, 40, 72) if cuda else (1, 2, 8, 8)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if cuda else torch.float32  # (CPU bf16: an inductor NaN, see RESULTS)
    with torch.device(dev):
        unet = UNet3DConditionModel(**ZEROSCOPE_UNET).to(dtype).eval()
    unzero_temporal_layers(unet)
    # the job's switches that change the UNet's modules (and its process-wide cuDNN/TF32 flags); not compile, nor the
    # shared prefix (the blocks alone see what the plain forward gives them); no VAE here (channel_stats swaps its
    # norms too: an empty module has none)
    apply_perf_settings(SimpleNamespace(unet=unet, vae=torch.nn.Module()), temporal_layers=True, frame_attention=True,
                        channel_stats=True)
    g = torch.Generator(dev).manual_seed(1)
    n = 2 * clips  # cond + uncond
    sample = torch.randn(n, 4, frames, h, w, device=dev, generator=g).to(dtype)
    enc = torch.randn(n, 77, 1024, device=dev, generator=g).to(dtype)
    inputs = block_inputs(unet, sample, torch.tensor(500, device=dev), enc)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    plan = plan or tuple(PLAN)
    rows, want = [], {}
    for item in plan:
        mode, names = item.split(":")
        for name in BLOCKS if names == "all" else names.split(","):
            block, args, kwargs = inputs[name]
            torch._dynamo.reset()
            fn = torch.compile(block.forward, dynamic=False, options=dict(MODES[mode]))
            with torch.no_grad():
                t0 = time.perf_counter()
                got = fn(*args, **kwargs)
                sync()
                compile_s = time.perf_counter() - t0
                got = got[0] if isinstance(got, tuple) else got
                if mode == "default":
                    want[name] = got.float()
                # against the default compile's output; None on the default rows themselves (printed "-")
                err = None if mode == "default" else float((got.float() - want[name]).norm() / want[name].norm())
                call = lambda: fn(*args, **kwargs)  # noqa: E731
                # ms: 5 timings of 4 calls back to back (as within a step), sorted
                times = sorted(cuda_seconds_per_call(call, repeat=4) * 1e3 for _ in range(5)) if cuda else \
                    sorted(t * 1e3 for t in timed(call, repeat=5)[1])
                with torch.profiler.profile() as prof:
                    fn(*args, **kwargs)
                    sync()
            kernels = [(k, s * 1e3, c) for k, s, c in profiler_kernels(prof, cuda)]  # ms
            kinds = kernel_kinds([(k, v) for k, v, _ in kernels])
            row = dict(mode=mode, block=name, ms=times[2], ms_min=times[0], compile_s=compile_s,
                       rel_err_vs_default=err, kernel_ms=sum(kinds.values()), kinds_ms=kinds, top=kernels[:25])
            rows.append(row)
            print(f"{mode:10s} {name:6s} {row['ms']:8.2f} ms/call (min {times[0]:.2f})  kernels "
                  f"{row['kernel_ms']:.2f} ms  compile {compile_s:.0f} s  vs default "
                  f"{'-' if err is None else f'{err:.4f}'}  "
                  + "  ".join(f"{k} {v:.1f}" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])), flush=True)
            with open(f"{out}/autotune_probe.json", "w") as f:
                json.dump(dict(torch=torch.__version__, device=torch.cuda.get_device_name() if cuda else "cpu",
                               clips=clips, frames=frames, latent_hw=[h, w], rows=rows), f, indent=1)
    for mode in dict.fromkeys(r["mode"] for r in rows):
        done = {r["block"]: r["ms"] for r in rows if r["mode"] == mode}
        base = {r["block"]: r["ms"] for r in rows if r["mode"] == "default" and r["block"] in done}
        if mode != "default" and len(base) == len(done):
            print(f"{mode}: {sum(done.values()):.2f} ms over {sorted(done)} against default "
                  f"{sum(base.values()):.2f} ms ({sum(done.values()) / sum(base.values()):.3f})", flush=True)
    base = [r["ms"] for r in rows if r["mode"] == "default"]
    print(f"default: {sum(base):.2f} ms over {len(base)} of {len(BLOCKS)} blocks", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], *sys.argv[2:])
