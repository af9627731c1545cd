"""One top-level temporal transformer (zeroscope_v2_576w size: 320 channels, 5 heads of 64, 4 clips with
guidance = 8 x 24 frames of 40 x 72 latents, bf16) with v2v.frame_attention's kernel, eager and compiled: the
kernel's time per call in each (profiler), and the compiled block against the block with torch's SDPA.

    python benchmarks/frame_attention_probe.py OUT_DIR

The ninth session found the kernel ~3x slower inside the compiled UNet than called alone; this checked whether
passing its strides as compile-time constants (so rows load in 16-byte pieces) closes that gap. It did not: 0.44 ms
per call eager, 1.02 ms compiled (RESULTS.md, ninth section). Added after that session, for the next one: the op
alone, eager and compiled, on inputs laid out as diffusers lays them out (if compiled-alone is slow too, the cause
is how inductor compiles or launches a user-defined kernel; if not, it is the buffers the block's graph hands it),
and inductor's generated code for the compiled block (`output_code` logs, since removed). Tenth session: the block
compiled with the kernel behind an opaque custom op (inductor calls the eager launcher, as an extern kernel), and,
where TRITON_KERNEL_DUMP=1 and TRITON_DUMP_DIR are set, each compiled copy of the kernel's launch metadata and the
widths of its global loads and its float64 instructions in PTX — how eager Triton's compile and inductor's differ.
That run found the cause (the softmax scale, a runtime float, passed by inductor as float64: the PTX's softmax in
f64); the scale is now a compile-time constant. Since: the block through an AOTInductor package (v2v.aot), the
form `--compile-aot` actors run.
"""

from __future__ import annotations

import collections
import copy
import json
import os
import re
import sys
from pathlib import Path

import torch

from v2v.aot import AotForward
from v2v.bench import cuda_seconds_per_call, kernel_kind, profiler_kernels
import v2v.frame_attention as fa
from v2v.frame_attention import frame_attention, install_frame_attention, kernel_attention
from v2v.temporal import TransformerTemporalFrames


def main(out: str) -> None:
    from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel

    torch.manual_seed(0)
    with torch.device("cuda"):
        base = TransformerTemporalModel(num_attention_heads=5, attention_head_dim=64, in_channels=320,
                                        norm_num_groups=32).to(torch.bfloat16).eval()
    x = torch.randn(8 * 24, 320, 40, 72, device="cuda", dtype=torch.bfloat16)
    rows = {}

    def measure(name, fn):
        with torch.no_grad():
            block_s = cuda_seconds_per_call(lambda: fn(x), repeat=10)
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                fn(x)
                torch.cuda.synchronize()
        kernels = profiler_kernels(prof, True)
        attn = [(k, 1e3 * s) for k, s, _ in kernels if kernel_kind(k) == "attention"]
        rows[name] = {"block_ms": 1e3 * block_s, "attention_kernels_ms": attn,
                      "kernel_ms": 1e3 * sum(s for _, s, _ in kernels)}
        print(name, json.dumps(rows[name]), flush=True)

    sdpa = TransformerTemporalFrames(copy.deepcopy(base))
    frame = TransformerTemporalFrames(copy.deepcopy(base))
    install_frame_attention(frame)
    call = lambda m: (lambda t: m(t, num_frames=24, return_dict=False)[0])  # noqa: E731
    # the op alone: (N, H, L, D) views of (N, L, H*D) projections, N = 8 latents x 40 x 72 pixels
    q, k, v = (torch.randn(8 * 40 * 72, 24, 5, 64, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
               for _ in range(3))
    op = torch.compile(lambda q, k, v: frame_attention(q, k, v), dynamic=False)
    measure("op eager", lambda _: frame_attention(q, k, v))
    measure("op compiled", lambda _: op(q, k, v))
    measure("frame eager", call(frame))
    measure("frame compiled", torch.compile(call(frame), dynamic=False))
    measure("sdpa compiled", torch.compile(call(sdpa), dynamic=False))

    # the kernel behind an opaque op: inductor cannot look inside and calls it as an extern kernel, so eager
    # Triton compiles and launches it. FrameAttnProcessor looks `frame_attention` up in its module on each call:
    # swapped there while this block compiles.
    @torch.library.custom_op("v2vprobe::frame_attention_opaque", mutates_args=())
    def opaque(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return kernel_attention(q, k, v)

    @opaque.register_fake
    def _(q, k, v):
        n, h, length, d = q.shape
        return q.new_empty((n, length, h * d))

    fa.frame_attention = opaque
    measure("opaque compiled", torch.compile(call(frame), dynamic=False))
    fa.frame_attention = frame_attention
    aot = AotForward(frame, lambda m, t: call(m)(t), "frame-block", {"probe": 1}, "/tmp/aot-probe",
                     fallback=call(frame))
    measure("frame aot", aot)
    rows["frame aot"]["failed"] = aot.failed
    rows["compiled kernels"] = triton_dumps(os.environ.get("TRITON_DUMP_DIR"))
    print(json.dumps(rows["compiled kernels"], indent=1), flush=True)
    with open(f"{out}/frame_attention_probe.json", "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, f, indent=1)


def triton_dumps(folder: str | None) -> list[dict]:
    """Each compiled copy of the frame kernel under Triton's dump folder: launch metadata and PTX global-load
    forms (e.g. ld.global.v4.b32 = 16 bytes per thread, ld.global.b16 = 2)."""
    found = []
    for root, _, files in os.walk(folder or "/nonexistent"):
        names = {f.rsplit(".", 1)[-1]: f for f in files if f.startswith("_frame_attention_kernel")}
        if "ptx" not in names:
            continue
        text = {ext: Path(root, f).read_text() for ext, f in names.items() if ext in ("ptx", "json", "ttir")}
        ptx, ttir = text["ptx"], text.get("ttir", "")
        meta = json.loads(text["json"]) if "json" in text else {}
        found.append({"dir": os.path.basename(root),
                      "meta": {k: meta.get(k) for k in ("num_warps", "num_stages", "shared", "debug",
                                                        "enable_fp_fusion", "maxnreg", "launch_pdl")},
                      "loads": dict(collections.Counter(re.findall(r"ld\.global[.\w]*", ptx))),
                      "stores": dict(collections.Counter(re.findall(r"st\.global[.\w]*", ptx))),
                      "f64_instructions": len(re.findall(r"^\s*[a-z][\w.]*\.f64\b", ptx, re.M)),
                      "signature": re.findall(r"tt\.func public @_frame_attention_kernel\(([^)]*)\)", ttir)[:1]})
    return found


if __name__ == "__main__":
    main(sys.argv[1])
