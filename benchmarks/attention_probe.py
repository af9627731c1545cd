"""Every attention shape of one guided UNet step (zeroscope_v2_576w size, random weights, bf16, 4 clips = 8
latents, eager) timed under each SDPA backend and, for the temporal transformers' short sequences, under
v2v.frame_attention's Triton kernel; each kernel's error against float32 attention on the same inputs.

    python benchmarks/attention_probe.py OUT_DIR [clips]

Writes OUT_DIR/attention_probe.json and prints a table. Needs CUDA (the kernel and the backends are GPU code).
"""

from __future__ import annotations

import json
import sys

import torch
import torch.nn.functional as F

from v2v.bench import ZEROSCOPE_UNET, attention_flops, cuda_seconds_per_call, sdpa_calls, sdpa_inputs, time_sdpa
from v2v.frame_attention import frame_attention, kernel_takes


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want).norm() / want.norm()).item()


def main(out: str, clips: int = 4) -> None:
    from diffusers import UNet3DConditionModel

    torch.manual_seed(0)
    with torch.device("cuda"):
        unet = UNet3DConditionModel(**ZEROSCOPE_UNET).to(torch.bfloat16).eval()
    g = torch.Generator("cuda").manual_seed(1)
    x = torch.randn(2 * clips, 4, 24, 40, 72, device="cuda", dtype=torch.bfloat16, generator=g)
    e = torch.randn(2 * clips, 77, 1024, device="cuda", dtype=torch.bfloat16, generator=g)
    calls = sdpa_calls(lambda: unet(x, torch.tensor(500), encoder_hidden_states=e))
    unet = None  # the shapes are all this needed
    torch.cuda.empty_cache()
    rows, totals = [], {"default": 0.0, "best_sdpa": 0.0, "with_kernel": 0.0}
    for call in calls:
        secs = time_sdpa(call, "cuda", repeat=20)
        q, k, v = sdpa_inputs(call, "cuda", g)
        n, h, length, d = q.shape
        want = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
        row = {"q": "x".join(map(str, q.shape)), "kv_len": k.shape[2], "calls": call["calls"],
               **{f"{b}_ms": 1e3 * s for b, s in secs.items()},
               "default_err": rel_err(F.scaled_dot_product_attention(q, k, v), want),
               "default_tflops": attention_flops(call) / secs["default"] / 1e12}
        best = min(s for s in secs.values() if s == s)
        kernel = None
        if kernel_takes(q, k, v):
            kernel = cuda_seconds_per_call(lambda: frame_attention(q, k, v), repeat=20)
            got = frame_attention(q, k, v)  # (N, L, H*D)
            row["kernel_ms"] = 1e3 * kernel
            row["kernel_err"] = rel_err(got, want.transpose(1, 2).reshape(n, length, h * d))
            row["kernel_gbps"] = 4 * q.numel() * q.element_size() / kernel / 1e9  # q, k, v read, out written
        totals["default"] += call["calls"] * secs["default"]
        totals["best_sdpa"] += call["calls"] * best
        totals["with_kernel"] += call["calls"] * (kernel if kernel is not None else secs["default"])
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("per step (ms):", {k: round(1e3 * v, 2) for k, v in totals.items()})
    with open(f"{out}/attention_probe.json", "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "clips": clips,
                   "rows": rows, "per_step_ms": {k: 1e3 * v for k, v in totals.items()}}, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1], *map(int, sys.argv[2:]))
