"""FLOPs of one 4-clip guided UNet step by kind (convolutions, products, attention), against a profiled step's
kernel time of the same kinds: each kind's TFLOP/s and its share of the measured bf16 matmul ceiling.

    python benchmarks/flops_by_kind.py KERNELS_JSON [CEILING_TFLOPS]

KERNELS_JSON: one profiled step's kernels as benchmarks/layout_probe.py writes them ([[name, seconds, calls]...],
e.g. benchmarks/h200-nineteenth/kernels-0.json). The FLOPs are counted on the CPU with meta tensors (no weights,
no GPU): diffusers' UNet3D at zeroscope_v2_576w size, 8 latents (4 clips, cond + uncond) × 24 frames × 40 × 72, by
torch's FlopCounterMode, whose total is the one `jobs.benchmark` divides by the step time for a variant without
`prefix` (with it, 3.6 % fewer: v2v.unet). The job's other switches change how attention and the temporal layers
run, not their arithmetic. Attention's FLOPs are the batched products
(`bmm`) inside diffusers' attention modules (the CPU runs SDPA as its math), split into the spatial attention
(cuDNN's SDPA kernels in the profile) and the temporal one (modules under `temp_attentions`/`transformer_in`; v2v's
frame kernel in the profile).
"""
from __future__ import annotations

import json
import sys

import torch

from v2v.bench import ZEROSCOPE_UNET, kernel_kinds, unet_step_flop_counts
from v2v.bench import kernel_kind as bench_kernel_kind

# FlopCounterMode's aten ops -> the profile's kernel kinds (v2v.bench.KERNEL_KINDS); attention split below
OP_KIND = {"convolution": "convolution", "addmm": "matmul", "mm": "matmul", "bmm": "attention"}
TEMPORAL = ("temp_attentions", "transformer_in")  # the UNet's temporal transformers (24-token sequences)


def _kind(op: str, module: str) -> str:
    kind = OP_KIND[op]  # an op the table lacks raises: count it somewhere on purpose
    if kind == "attention":
        return "attention (temporal)" if any(t in module for t in TEMPORAL) else "attention (spatial)"
    return kind


def kernel_kind(name: str) -> str:
    """v2v.bench.kernel_kind, with attention split as the FLOPs are."""
    kind = bench_kernel_kind(name)
    if kind == "attention":
        return "attention (temporal)" if "frame_attention" in name else "attention (spatial)"
    return kind


def step_flops_by_kind(clips: int = 4, frames: int = 24, h: int = 40, w: int = 72) -> dict[str, float]:
    """{kind: FLOPs} of one guided step (2 x clips latents) of the zeroscope-size UNet3D, counted on meta tensors."""
    from diffusers import UNet3DConditionModel

    n = 2 * clips
    with torch.device("meta"):
        unet = UNet3DConditionModel(**ZEROSCOPE_UNET).to(torch.bfloat16)
        sample = torch.empty(n, 4, frames, h, w, dtype=torch.bfloat16)
        enc = torch.empty(n, 77, 1024, dtype=torch.bfloat16)
        t = torch.full((n,), 500)
    counts = unet_step_flop_counts(unet, sample, t, enc)
    # every op from Global but bmm; bmm from the attention modules (attn1/attn2), where the module says which kind
    # (their parents' counts repeat them)
    found = [(str(op).split(".")[1], "", f) for op, f in counts["Global"].items() if str(op) != "aten.bmm"]
    found += [("bmm", module, f) for module, ops in counts.items() if module.endswith((".attn1", ".attn2"))
              for op, f in ops.items() if str(op) == "aten.bmm"]
    out: dict[str, float] = {}
    for op, module, flops in found:
        out[_kind(op, module)] = out.get(_kind(op, module), 0.0) + flops
    total = sum(counts["Global"].values())
    assert abs(sum(out.values()) - total) < 1e-6 * total, \
        "products outside the attention modules' bmm: count them"
    return out


def main(kernels_json: str, ceiling_tflops: float = 799.0) -> None:
    kernels = json.load(open(kernels_json))
    ms = kernel_kinds([(name, seconds * 1e3) for name, seconds, _calls in kernels], kind_of=kernel_kind)
    flops = step_flops_by_kind()
    print(f"| kind | TFLOP a step | kernel ms | TFLOP/s | of the {ceiling_tflops:.0f} TFLOP/s ceiling |")
    print("|---|---|---|---|---|")
    for kind, f in sorted(flops.items(), key=lambda kv: -kv[1]):
        rate = f / 1e12 / (ms[kind] / 1e3)
        print(f"| {kind} | {f / 1e12:.1f} | {ms[kind]:.1f} | {rate:.0f} | {rate / ceiling_tflops:.0%} |")
    rest = {k: v for k, v in ms.items() if k not in flops}
    print(f"| the rest ({', '.join(sorted(rest))}) | | {sum(rest.values()):.1f} | | |")
    print(f"total: {sum(flops.values()) / 1e12:.2f} TFLOP, {sum(ms.values()):.1f} ms of kernels")


if __name__ == "__main__":
    main(sys.argv[1], *(float(a) for a in sys.argv[2:]))
