"""Performance switches, applied in this one place after the model loads (gpt-fast style).

Each is a JobConfig setting; none changes what is computed beyond floating-point rounding.
"""

from __future__ import annotations

import os


def apply_perf_settings(components, cfg) -> None:
    import torch

    unet = components.unet
    if unet.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    if cfg.channels_last:
        # UNet3D's 2D convolutions see (B*F, C, H, W); channels-last weights let cuDNN skip layout conversions.
        # Only rank-4 (Conv2d) weights: the temporal Conv3d layers have no channels-last layout.
        for model in (unet, components.vae):
            for m in model.modules():
                if isinstance(m, torch.nn.Conv2d):
                    m.to(memory_format=torch.channels_last)
    if cfg.compile:
        # A persistent cache: an actor's second start reuses compiled kernels instead of recompiling.
        cache = os.environ.get("V2V_COMPILE_CACHE", os.path.expanduser("~/.cache/v2v/inductor"))
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", cache)
        os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
        os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")
        unet.forward = torch.compile(unet.forward, fullgraph=False, dynamic=False)
