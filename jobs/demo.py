"""The demo: generate a few sample videos and a manifest, restyle them with the embedded tiny model.

    python -m jobs.demo [--output demo-out] [--model tiny-wan]

Runs end to end on a laptop CPU in well under a minute: a local Ray, the real stages, the real index.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from fractions import Fraction

import av
import numpy as np


# Synthetic sample videos (the demo's, the benchmark's and the tests'): generated, never downloaded.
def pattern_frame(i: int, width: int, height: int, seed: int = 0) -> np.ndarray:
    """Frame i of a moving pattern: a gradient, a drifting square, and frame i's index in the red channel of
    the top-left 16x16 block as gray level 4 * i (so tests can tell which source frame they got)."""
    y, x = np.mgrid[0:height, 0:width]
    r = (x * 255 // max(1, width - 1)).astype(np.uint8)
    g = (y * 255 // max(1, height - 1)).astype(np.uint8)
    b = np.full((height, width), (seed * 53) % 256, np.uint8)
    frame = np.stack([r, g, b], -1)
    s = max(4, min(width, height) // 4)
    cx = (i * 3 + seed * 7) % max(1, width - s)
    cy = (i * 2 + seed * 5) % max(1, height - s)
    frame[cy : cy + s, cx : cx + s] = (255, 255 - (seed * 40) % 256, 0)
    frame[:16, :16] = (i * 4) % 256  # gray, so chroma subsampling leaves it alone
    return frame


def make_video(path: str, num_frames: int = 24, width: int = 64, height: int = 64, fps: float = 24,
               codec: str = "libx264", pix_fmt: str = "yuv420p", seed: int = 0, audio: bool = False,
               rotation: int | None = None, pts: list[int] | None = None, time_base: Fraction | None = None) -> str:
    """Write a synthetic video. `pts` (in `time_base`) makes a variable-frame-rate file."""
    fmt = "matroska" if path.endswith(".mkv") else None
    with av.open(path, "w", format=fmt) as c:
        vs = c.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        vs.width, vs.height, vs.pix_fmt = width, height, pix_fmt
        if time_base is not None:
            vs.time_base = vs.codec_context.time_base = time_base
        if rotation is not None:
            vs.set_display_rotation(rotation)
        if codec == "libx264":
            vs.options = {"crf": "10", "preset": "ultrafast"}
        a_stream = c.add_stream("aac", rate=16000) if audio else None
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(pattern_frame(i, width, height, seed), format="rgb24")
            frame = frame.reformat(format=pix_fmt)
            frame.pts = pts[i] if pts is not None else i
            if time_base is not None:
                frame.time_base = time_base
            for p in vs.encode(frame):
                c.mux(p)
        for p in vs.encode():
            c.mux(p)
        if a_stream is not None:
            n = int(16000 * num_frames / fps)
            t = np.arange(n) / 16000
            samples = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
            for k in range(0, n, 1024):
                af = av.AudioFrame.from_ndarray(samples[:, k : k + 1024], format="fltp", layout="mono")
                af.sample_rate, af.pts = 16000, k
                for p in a_stream.encode(af):
                    c.mux(p)
            for p in a_stream.encode():
                c.mux(p)
    return path


PROMPTS = ["a watercolor painting of a city at dusk", "an ink sketch, high contrast", "neon cyberpunk, rain"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--output", default="demo-out", help="where inputs/, clips/, videos/, previews/, index/ go")
    p.add_argument("--model", default="tiny", choices=["tiny", "tiny-wan"],
                   help="the embedded model: tiny (the zeroscope family's mechanics) or tiny-wan (Wan 2.1's)")
    a = p.parse_args(argv)
    inputs = os.path.join(a.output, "inputs")
    os.makedirs(inputs, exist_ok=True)
    with open(os.path.join(inputs, "manifest.csv"), "w", newline="") as f:
        rows = csv.writer(f)  # quotes the prompts' commas
        rows.writerow(["video", "prompt", "seed"])
        for i, prompt in enumerate(PROMPTS):
            # three whole clips of the model's: 8 frames (tiny), 9 (tiny-wan: 4k+1)
            make_video(os.path.join(inputs, f"sample{i}.mp4"), num_frames=27 if a.model == "tiny-wan" else 24,
                       width=96, height=64, seed=i)
            rows.writerow([f"sample{i}.mp4", prompt, 1000 + i])
    print(f"v2v demo: wrote {len(PROMPTS)} sample videos and {inputs}/manifest.csv")
    from jobs.restyle import main as restyle

    return restyle(["--manifest", os.path.join(inputs, "manifest.csv"), "--output", a.output, "--model", a.model,
                    "--steps", "10", "--stitch", "--preview"])


if __name__ == "__main__":
    sys.exit(main())
