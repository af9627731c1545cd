"""Quality signals of a restyled clip, from the frames the restyle actor already holds (no decode, no model
weights): plain tensor functions, on whatever device the frames are on.

    temporal_flicker  mean |frame t+1 - frame t| of the output over the same of the source: ~1 keeps the source's
                      motion energy, >> 1 flickers, << 1 froze
    source_ssim       mean SSIM of luminance between output and source frames: how much structure the restyle
                      kept (falls as strength rises)
    blank             the output is (near-)constant or its value range collapsed: a broken model or an overflow

Frames are (F, H, W, 3), uint8 or float in [0, 1]; every signal is computed on luminance (BT.601) in [0, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Motion below this (mean absolute difference per pixel, on [0, 1]) counts as none: a still source and a still
# output give a flicker of 1, not 0/0.
MOTION_FLOOR = 1e-3
# SSIM as Wang et al. 2004: an 11-tap Gaussian window of sigma 1.5, K1 = 0.01, K2 = 0.03, dynamic range 1.
SSIM_WINDOW, SSIM_SIGMA, SSIM_C1, SSIM_C2 = 11, 1.5, 0.01**2, 0.03**2
# A blank output: luminance spread (std) under 1/255, or 98 % of its values within 2/255 of each other.
BLANK_STD, BLANK_RANGE = 1 / 255, 2 / 255


def _on(values: list[float], device) -> torch.Tensor:
    """A float32 constant on `device`, copied without waiting for the GPU's queued work (sampler.to_device)."""
    from v2v.model.sampler import to_device

    return to_device(torch.tensor(values, dtype=torch.float32), device)


def luminance(frames: torch.Tensor) -> torch.Tensor:
    """(F, H, W, 3) uint8 or [0, 1] float -> (F, H, W) float32 luminance in [0, 1]."""
    x = frames.float()
    if not frames.is_floating_point():
        x = x / 255
    return x @ _on([0.299, 0.587, 0.114], x.device)


def temporal_flicker(output: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """Output motion energy over source motion energy, a 0-d tensor on the frames' device (NaN for a clip of one
    frame)."""
    y, s = luminance(output), luminance(source)
    if y.shape[0] < 2:
        return torch.full((), float("nan"), device=y.device)
    out_motion = (y[1:] - y[:-1]).abs().mean()
    src_motion = (s[1:] - s[:-1]).abs().mean()
    return (out_motion + MOTION_FLOOR) / (src_motion + MOTION_FLOOR)


def _gaussian(device) -> torch.Tensor:
    k = torch.arange(SSIM_WINDOW, dtype=torch.float32, device=device) - SSIM_WINDOW // 2
    g = torch.exp(-(k**2) / (2 * SSIM_SIGMA**2))
    return g / g.sum()


def source_ssim(output: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """Mean SSIM between the output's and the source's luminance, frame by frame (frames smaller than the window
    are compared whole, window shrunk to their size), a 0-d tensor on the frames' device."""
    x, y = luminance(output)[:, None], luminance(source)[:, None]  # (F, 1, H, W)
    g = _gaussian(x.device)
    size = min(SSIM_WINDOW, x.shape[-2], x.shape[-1])
    g = g[SSIM_WINDOW // 2 - size // 2: SSIM_WINDOW // 2 - size // 2 + size]
    g = g / g.sum()
    gh, gw = g.view(1, 1, -1, 1), g.view(1, 1, 1, -1)

    def blur(t: torch.Tensor) -> torch.Tensor:  # separable Gaussian, valid positions only
        return F.conv2d(F.conv2d(t, gh), gw)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    ssim = ((2 * mx * my + SSIM_C1) * (2 * cxy + SSIM_C2)) / ((mx**2 + my**2 + SSIM_C1) * (vx + vy + SSIM_C2))
    return ssim.mean()


def blank(output: torch.Tensor) -> torch.Tensor:
    """Whether the output is (near-)constant, or its values collapsed into a sliver of the range: a 0-d bool
    tensor on the frames' device."""
    y = luminance(output).flatten()
    if y.numel() > 1_000_000:  # a quantile over a whole 576x320x24 clip needs no more than a sample
        y = y[:: y.numel() // 1_000_000 + 1]
    lo, hi = torch.quantile(y, _on([0.01, 0.99], y.device))
    return (y.std() < BLANK_STD) | (hi - lo < BLANK_RANGE)


def signal_tensors(output: torch.Tensor, source: torch.Tensor) -> dict[str, torch.Tensor]:
    """The index's quality columns for one clip as 0-d tensors on the frames' device, computed without waiting
    for the device (the job reads them back with the clip's frames, v2v.model.sampler.Readback)."""
    return {"temporal_flicker": temporal_flicker(output, source), "source_ssim": source_ssim(output, source),
            "blank": blank(output)}


def signal_values(tensors: dict[str, torch.Tensor]) -> dict:
    """`signal_tensors`' values as the index stores them: temporal_flicker and source_ssim floats, blank a bool."""
    return {k: bool(v) if v.dtype == torch.bool else float(v) for k, v in tensors.items()}


def signals(output: torch.Tensor, source: torch.Tensor) -> dict:
    """The index's quality columns for one clip: temporal_flicker, source_ssim, blank."""
    return signal_values(signal_tensors(output, source))
