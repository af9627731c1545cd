"""The demo: generate a few sample videos and a manifest, restyle them with the embedded tiny model.

    python -m jobs.demo [--output demo-out]

Runs end to end on a laptop CPU in well under a minute: a local Ray, the real stages, the real index.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys

from v2v.samples import make_video

PROMPTS = ["a watercolor painting of a city at dusk", "an ink sketch, high contrast", "neon cyberpunk, rain"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--output", default="demo-out", help="where inputs/, clips/, videos/, index/ go")
    a = p.parse_args(argv)
    inputs = os.path.join(a.output, "inputs")
    os.makedirs(inputs, exist_ok=True)
    with open(os.path.join(inputs, "manifest.csv"), "w", newline="") as f:
        rows = csv.writer(f)  # quotes the prompts' commas
        rows.writerow(["video", "prompt", "seed"])
        for i, prompt in enumerate(PROMPTS):
            make_video(os.path.join(inputs, f"sample{i}.mp4"), num_frames=24, width=96, height=64, seed=i)
            rows.writerow([f"sample{i}.mp4", prompt, 1000 + i])
    print(f"v2v demo: wrote {len(PROMPTS)} sample videos and {inputs}/manifest.csv")
    from jobs.restyle import main as restyle

    return restyle(["--manifest", os.path.join(inputs, "manifest.csv"), "--output", a.output, "--model", "tiny",
                    "--steps", "10", "--stitch"])


if __name__ == "__main__":
    sys.exit(main())
