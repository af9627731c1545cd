"""Where an actor's model load goes on a GPU machine: CUDA start, reading and casting on the CPU, the copy.

    python3 benchmarks/load_probe.py MODEL_FOLDER

Prints seconds for: CUDA's first use; v2v's `load_components` (from_pretrained on the CPU, then `.to(cuda)`),
twice (the second with the files in the page cache); and the same three models read by from_pretrained with
`device_map="cuda"` (safetensors straight to the GPU, cast there).
"""

import sys
import time

import torch


def timed(what, fn):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    print(f"{what}: {time.perf_counter() - t0:.2f} s", flush=True)
    return out


def main():
    folder = sys.argv[1]
    from pathlib import Path

    from diffusers import AutoencoderKL, UNet3DConditionModel
    from transformers import CLIPTextModel

    from v2v.models import load_components

    t0 = time.perf_counter()
    torch.zeros(1, device="cuda")
    print(f"cuda first use: {time.perf_counter() - t0:.2f} s", flush=True)
    for i in range(2):
        c = timed(f"load_components (cpu read + cast, then .to) #{i}", lambda: load_components(folder, "cuda", "bfloat16"))
        del c
        torch.cuda.empty_cache()
    c = timed("load_components on cpu only", lambda: load_components(folder, "cpu", "bfloat16"))
    timed("  .to(cuda) of the three models", lambda: [m.to("cuda") for m in (c.unet, c.vae, c.text_encoder)])
    del c
    torch.cuda.empty_cache()
    kw = dict(torch_dtype=torch.bfloat16, use_safetensors=True, device_map="cuda")
    for i in range(2):
        timed(f"from_pretrained device_map=cuda, three models #{i}", lambda: (
            UNet3DConditionModel.from_pretrained(folder, subfolder="unet", **kw),
            AutoencoderKL.from_pretrained(folder, subfolder="vae", **kw),
            CLIPTextModel.from_pretrained(Path(folder) / "text_encoder", dtype=torch.bfloat16, device_map="cuda")))
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
