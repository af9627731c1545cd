"""Performance switches, applied in this one place after the model loads (gpt-fast style).

Each is a JobConfig setting; none changes what is computed beyond floating-point rounding. Their measured
gains are in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import os


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")


def apply_perf_settings(components, *, channels_last: bool = False, fuse_qkv: bool = False,
                        compile: bool = False, unet_batch: int | None = None, compile_mode: str = "default",
                        compile_freeze: bool = False, compile_tuning: bool = False, compile_vae: bool = False,
                        vae_chunk: int = 8) -> None:
    """The switches as JobConfig names them (with `compile` decided, see config.resources).

    unet_batch: latents per UNet forward the compiled graph is built for (2 x clips per batch with guidance);
    smaller calls are padded up to it so a short last batch does not trigger a second compile.
    compile_mode: torch.compile's mode ("reduce-overhead" replays CUDA graphs; "max-autotune-no-cudagraphs"
    benchmarks Triton templates against cuBLAS/cuDNN for every product and convolution: a far longer compile).
    compile_freeze: inductor freezing (weights become constants: folded, and laid out for the convolutions).
    compile_tuning: coordinate-descent tuning of the generated kernels' launch configs, 1x1 convolutions as
    matrix products. compile_vae: the VAE's encoder and decoder too, padded to `vae_chunk` frames per call.
    """
    if compile_mode not in COMPILE_MODES:
        raise ValueError(f"compile_mode must be one of {COMPILE_MODES}, got {compile_mode!r}")
    import torch

    unet = components.unet
    if unet.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    if channels_last:
        # UNet3D's 2D convolutions see (B*F, C, H, W); channels-last weights let cuDNN skip layout conversions.
        # Only rank-4 (Conv2d) weights: the temporal Conv3d layers have no channels-last layout.
        for model in (unet, components.vae):
            for m in model.modules():
                if isinstance(m, torch.nn.Conv2d):
                    m.to(memory_format=torch.channels_last)
    if fuse_qkv:
        # One (D, 3D) projection instead of three (D, D) in self-attention, one (D', 2D) for cross-attention's
        # key and value: fewer, larger matrix products over the same weights.
        unet.fuse_qkv_projections()
    if compile:
        # A persistent cache: an actor's second start reuses compiled kernels instead of recompiling. Set
        # outright: torch writes its own /tmp default into TORCHINDUCTOR_CACHE_DIR the first time it asks.
        from v2v.models import default_cache_dir

        cache = os.environ.get("V2V_COMPILE_CACHE") or str(default_cache_dir() / "inductor")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
        os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
        os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")
        options = dict(torch._inductor.list_mode_options(compile_mode))
        if compile_tuning:
            options.update(coordinate_descent_tuning=True, conv_1x1_as_mm=True)
        if compile_freeze:
            # Dynamo reads this flag while tracing (not only inductor), so it is set for the process: an
            # actor process holds one model. Freezing applies to graphs traced under no_grad.
            torch._inductor.config.freezing = True
        eager = unet.forward
        compiled = torch.compile(eager, fullgraph=False, dynamic=False, options=options or None)
        # CUDA graphs need every input on the GPU: the sampler's 0-d CPU timestep moves there first.
        unet.forward = FixedBatch(compiled, unet_batch, eager,
                                  timestep_to_device=bool(options.get("triton.cudagraphs")))
        if compile_vae:
            vae = components.vae
            for part in (vae.encoder, vae.decoder):
                part.forward = PadFrames(torch.compile(part.forward, fullgraph=False, dynamic=False,
                                                       options=options or None), vae_chunk, part.forward)


class FixedBatch:
    """Calls a shape-specialized (compiled) UNet forward at one batch size and one clip shape.

    A call with fewer than `size` latents is padded by repeating its last latent (and text embedding) and the
    result is cut back, so every call reuses the one compiled graph; padded rows cost compute, not a compile.
    Larger calls, or `size=None`, pass through unchanged (and compile for their own shape).
    The first call fixes the clip shape (C, F, h, w). Latents of another shape (a video's shorter last clip)
    go to `eager` when given: each new frame count would otherwise cost a full compile.
    """

    def __init__(self, forward, size: int | None, eager=None, timestep_to_device: bool = False):
        self.forward = forward
        self.size = size
        self.eager = eager
        self.shape = None
        self.timestep_to_device = timestep_to_device

    def __call__(self, sample, timestep, encoder_hidden_states, **kwargs):
        import torch

        if self.shape is None:
            self.shape = tuple(sample.shape[1:])
        elif tuple(sample.shape[1:]) != self.shape and self.eager is not None:
            return self.eager(sample, timestep, encoder_hidden_states=encoder_hidden_states, **kwargs)
        if self.timestep_to_device and isinstance(timestep, torch.Tensor):
            timestep = timestep.to(sample.device)
        n = sample.shape[0]
        pad = (self.size or n) - n
        if pad <= 0:
            return self.forward(sample, timestep, encoder_hidden_states=encoder_hidden_states, **kwargs)

        def grow(x):  # (n, ...) -> (size, ...)
            return torch.cat([x, x[-1:].expand(pad, *x.shape[1:])])

        if isinstance(timestep, torch.Tensor) and timestep.ndim == 1 and timestep.shape[0] == n:
            timestep = grow(timestep)
        out = self.forward(grow(sample), timestep, encoder_hidden_states=grow(encoder_hidden_states), **kwargs)
        if isinstance(out, tuple):  # return_dict=False
            return (out[0][:n],) + tuple(out[1:])
        out.sample = out.sample[:n]
        return out


class PadFrames:
    """Calls a shape-specialized (compiled) VAE encoder or decoder on exactly `size` frames.

    The VAE is 2-D: each frame is computed alone (its GroupNorms are per frame), so a short chunk (a batch's
    last) is padded with copies of its last frame and the result cut back; larger chunks and other frame
    sizes go to `eager`. One compiled graph per part, never a compile mid-job.
    """

    def __init__(self, forward, size: int, eager):
        self.forward, self.size, self.eager = forward, size, eager
        self.shape = None

    def __call__(self, sample, *args, **kwargs):
        import torch

        if self.shape is None:
            self.shape = tuple(sample.shape[1:])
        n = sample.shape[0]
        if n > self.size or tuple(sample.shape[1:]) != self.shape:
            return self.eager(sample, *args, **kwargs)
        if n < self.size:
            sample = torch.cat([sample, sample[-1:].expand(self.size - n, *sample.shape[1:])])
        return self.forward(sample, *args, **kwargs)[:n]


def warm_up(components, unet_batch: int, frames: int, height: int, width: int) -> None:
    """One UNet forward at the working shape (and one VAE encoder and decoder call where those are compiled),
    so compilation and autotuning happen at actor start-up rather than inside the first batch (the actor is
    'ready' once this returns)."""
    import torch

    from v2v.sampler import schedule

    unet = components.unet
    h8, w8 = height // components.vae_scale_factor, width // components.vae_scale_factor
    g = torch.Generator("cpu").manual_seed(0)
    x = torch.randn(unet_batch, unet.config.in_channels, frames, h8, w8, generator=g).to(unet.device, unet.dtype)
    dim = components.text_encoder.config.hidden_size
    e = torch.randn(unet_batch, components.tokenizer.model_max_length, dim, generator=g).to(unet.device, unet.dtype)
    # A timestep exactly as the sampler passes it (a 0-d CPU tensor of the scheduler's dtype): another device or
    # dtype would be another compiled graph.
    t = schedule(components.scheduler, 10, 1.0)[1][0]
    vae = components.vae
    with torch.no_grad():
        unet(x, t, encoder_hidden_states=e, return_dict=False)
        for part, channels, size in ((vae.encoder, 3, (height, width)), (vae.decoder, vae.config.latent_channels,
                                                                        (h8, w8))):
            if isinstance(part.forward, PadFrames):
                part(torch.randn(part.forward.size, channels, *size, generator=g).to(vae.device, vae.dtype))
    if unet.device.type == "cuda":
        torch.cuda.synchronize()
